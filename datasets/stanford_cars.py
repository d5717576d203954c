"""Stanford Cars (the split's paths start at the dataset folder: cars_train/, cars_test/)."""
from dassl.data.datasets import DATASET_REGISTRY

from .base import SplitFileDataset


@DATASET_REGISTRY.register()
class StanfordCars(SplitFileDataset):
    dataset_dir = "stanford_cars"
    image_dir = ""
    split_file = "split_zhou_StanfordCars.json"
    section = "stanfordcars"
    template = "a photo of a {}."
    task_name = "car model recognition"
