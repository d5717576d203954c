"""Food-101."""
from dassl.data.datasets import DATASET_REGISTRY

from .base import SplitFileDataset


@DATASET_REGISTRY.register()
class Food101(SplitFileDataset):
    dataset_dir = "food-101"
    image_dir = "images"
    split_file = "split_zhou_Food101.json"
    section = "food101"
    template = "a photo of {}, a type of food."
    task_name = "food recognition"
