"""Describable Textures (DTD)."""
from dassl.data.datasets import DATASET_REGISTRY

from .base import SplitFileDataset


@DATASET_REGISTRY.register()
class DescribableTextures(SplitFileDataset):
    dataset_dir = "dtd"
    image_dir = "images"
    split_file = "split_zhou_DescribableTextures.json"
    section = "describabletextures"
    template = "{} texture."
    task_name = "texture recognition"
