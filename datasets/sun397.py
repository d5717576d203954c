"""SUN397 (CoOp's split of partition 01)."""
from dassl.data.datasets import DATASET_REGISTRY

from .base import SplitFileDataset


@DATASET_REGISTRY.register()
class SUN397(SplitFileDataset):
    dataset_dir = "sun397"
    image_dir = "SUN397"
    split_file = "split_zhou_SUN397.json"
    section = "sun397"
    template = "a photo of a {}."
    task_name = "scene recognition"
