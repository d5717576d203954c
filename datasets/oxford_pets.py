"""Oxford-IIIT Pets."""
from dassl.data.datasets import DATASET_REGISTRY

from .base import SplitFileDataset


@DATASET_REGISTRY.register()
class OxfordPets(SplitFileDataset):
    dataset_dir = "oxford_pets"
    image_dir = "images"
    split_file = "split_zhou_OxfordPets.json"
    section = "oxfordpets"
    metric = "mean_acc"
    template = "a photo of a {}, a type of pet."
    task_name = "pet breed recognition"
