"""Caltech101 (CoOp's split; BACKGROUND_Google and Faces_easy are not in it)."""
from dassl.data.datasets import DATASET_REGISTRY

from .base import SplitFileDataset


@DATASET_REGISTRY.register()
class Caltech101(SplitFileDataset):
    dataset_dir = "caltech-101"
    image_dir = "101_ObjectCategories"
    split_file = "split_zhou_Caltech101.json"
    section = "caltech101"
    metric = "mean_acc"
    template = "a photo of a {}."
    task_name = "generic object recognition"
    # CoOp's renames of the raw folder names.
    classname_fixes = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard",
                       "Motorbikes": "motorbike"}
