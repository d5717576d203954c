"""ImageNet's test-only variants (CoOp's domain-generalisation targets).

Each folder holds a copy of ImageNet's classnames.txt; few-shot and base/new
do not apply, as in CoOp.
"""
from __future__ import annotations

import os

from dassl.data.datasets import DATASET_REGISTRY, DatasetBase, Datum

from .base import FewShotDataset
from .files import data_root
from .imagenet import read_class_folders, read_classnames, read_named_folders


class ImageNetTestSet(FewShotDataset):
    """Labels = position of the class folder among the sorted folders (CoOp)."""

    image_dir = ""
    section = "imagenet-variants"
    task_name = "object recognition"

    def __init__(self, cfg):
        self.root = data_root(cfg.DATASET.ROOT)
        self.dataset_dir = self.locate(cfg)
        names_path = os.path.join(self.dataset_dir, "classnames.txt")
        self.require(names_path, "classnames.txt (copy it from imagenet/)")
        data = self.read_data(read_classnames(names_path, self.section))
        DatasetBase.__init__(self, train_x=data, test=data)
        self.task_info = self.make_task_info()

    def read_data(self, classnames) -> list[Datum]:
        image_dir = os.path.join(self.dataset_dir, self.image_dir)
        self.require(image_dir, "image folder")
        return read_named_folders(image_dir, classnames, self.section)


@DATASET_REGISTRY.register()
class ImageNetV2(ImageNetTestSet):
    dataset_dir = "imagenetv2"
    image_dir = "imagenetv2-matched-frequency-format-val"

    def read_data(self, classnames) -> list[Datum]:
        """Folders are named by label (0..999), in classnames.txt order."""
        image_dir = os.path.join(self.dataset_dir, self.image_dir)
        self.require(image_dir, "image folder")
        names = list(classnames.values())
        labels = list(range(len(names)))
        return read_class_folders(image_dir, [str(y) for y in labels], labels, names, self.section)


@DATASET_REGISTRY.register()
class ImageNetSketch(ImageNetTestSet):
    dataset_dir = "imagenet-sketch"
    image_dir = "images"


@DATASET_REGISTRY.register()
class ImageNetA(ImageNetTestSet):
    dataset_dir = "imagenet-adversarial"
    image_dir = "imagenet-a"


@DATASET_REGISTRY.register()
class ImageNetR(ImageNetTestSet):
    dataset_dir = "imagenet-rendition"
    image_dir = "imagenet-r"
