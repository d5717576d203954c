"""UCF101 middle frames (CoOp's UCF-101-midframes)."""
from dassl.data.datasets import DATASET_REGISTRY

from .base import SplitFileDataset


@DATASET_REGISTRY.register()
class UCF101(SplitFileDataset):
    dataset_dir = "ucf101"
    image_dir = "UCF-101-midframes"
    split_file = "split_zhou_UCF101.json"
    section = "ucf101"
    template = "a photo of a person doing {}."
    task_name = "human action recognition"
