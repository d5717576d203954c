"""Datasets: CoOp's datasets, image folders, Fashion-20, the toy benchmark and MultiTask.

Importing this package registers every dataset in Dassl's ``DATASET_REGISTRY``
(the imports below are for that side effect). Without Dassl nothing is
imported, so ``datasets.task_info`` and ``datasets.toy`` stay usable and
train.py can report the missing dependency itself.
"""
import logging

try:
    import dassl  # noqa: F401
except ImportError:
    pass
else:
    # Imported only to register their datasets.
    from . import (  # noqa: F401
        caltech101,
        dtd,
        eurosat,
        fashion20,
        fgvc_aircraft,
        food101,
        image_folder,
        imagenet,
        imagenet_variants,
        multitask,
        oxford_flowers,
        oxford_pets,
        stanford_cars,
        sun397,
        ucf101,
    )

    # Importing dassl.data runs logging.disable(logging.WARNING) (its wilds module), which
    # would hide this package's warnings (too few shots, unused class names): undo exactly that.
    if logging.root.manager.disable == logging.WARNING:
        logging.disable(logging.NOTSET)
