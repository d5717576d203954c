"""Oxford Flowers-102 (class names come from CoOp's split, built with cat_to_name.json)."""
from dassl.data.datasets import DATASET_REGISTRY

from .base import SplitFileDataset


@DATASET_REGISTRY.register()
class OxfordFlowers(SplitFileDataset):
    dataset_dir = "oxford_flowers"
    image_dir = "jpg"
    split_file = "split_zhou_OxfordFlowers.json"
    section = "oxfordflowers"
    metric = "mean_acc"
    template = "a photo of a {}, a type of flower."
    task_name = "flower species recognition"
