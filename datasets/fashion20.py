"""Fashion-20: one attribute task per folder, class names from ``task_info.csv``.

Layout (DATASETS.md#fashion-20): ``fashion20/images/<task id>/<class id>/*.jpg`` and
``fashion20/task_info.csv`` (tab-separated, one header row; columns: ignored,
task name, ignored, comma-separated class names in class-id order). One task
is one dataset (``DATASET.FASHION20.TASK``); configs/datasets/fashion20.yaml
lists the twenty as MultiTask members.
"""
from __future__ import annotations

import csv
import os

from dassl.data.datasets import DATASET_REGISTRY

from .base import Splits, require
from .errors import DatasetError
from .files import data_root
from .image_folder import FolderSpec, ImageFolder, list_classes
from .task_info import TaskInfo

CSV = os.path.join("fashion20", "task_info.csv")
SECTION = "fashion-20"
# The object each task's attribute belongs to, for the zero-shot template.
GROUPS = {**dict.fromkeys((0, 1, 2), "pants"), **dict.fromkeys((3, 4, 5, 6, 18), "tops"),
          **dict.fromkeys(range(7, 14), "shoes"), 14: "hat", 15: "socks", 16: "socks", 17: "skirt",
          19: "underwear"}


def read_task_table(path: str) -> list[tuple[str, list[str]]]:
    """(task name, class names) per row of task_info.csv, in task-id order."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    table = []
    for i, row in enumerate(rows):
        if len(row) < 4:
            raise DatasetError(f"{path}: row {i + 2} has {len(row)} tab-separated columns, expected 4",
                               SECTION)
        table.append((row[1].strip(), [c.strip() for c in row[3].split(",") if c.strip()]))
    return table


@DATASET_REGISTRY.register()
class Fashion20(ImageFolder):
    section = SECTION

    def folder_spec(self, cfg) -> FolderSpec:
        path = os.path.join(data_root(cfg.DATASET.ROOT), CSV)
        require(path, "task table", "Fashion20", SECTION)
        table = read_task_table(path)
        task = cfg.DATASET.FASHION20.TASK
        if not 0 <= task < len(table):
            raise DatasetError(f"DATASET.FASHION20.TASK is {task}; {path} has tasks 0..{len(table) - 1}",
                               SECTION)
        self.task_id = task
        self.raw_name, classes = table[task]
        return FolderSpec(dir=f"fashion20/images/{task}", split_file="split_fashion20.json", docs=SECTION,
                          classnames={str(i): c.replace("_", " ") for i, c in enumerate(classes)})

    @classmethod
    def preflight(cls, cfg) -> None:
        require(os.path.join(data_root(cfg.DATASET.ROOT), CSV), "task table", "Fashion20", SECTION)

    @property
    def key(self) -> str:
        return self.raw_name

    def read_splits(self) -> Splits:
        if not os.path.exists(os.path.join(self.dataset_dir, self.spec.split_file)):
            self._check_class_folders()
        return super().read_splits()

    def _check_class_folders(self) -> None:
        """Class folders must be exactly 0..n-1, or labels would not match the table."""
        found = list_classes(self.dataset_dir, self.spec)
        expected = [str(i) for i in range(len(self.spec.classnames))]
        if found != expected:
            raise DatasetError(f"{self.dataset_dir}: class folders {found} do not match the "
                               f"{len(expected)} classes of {CSV} (expected {expected})", SECTION)

    def make_task_info(self) -> TaskInfo:
        group = GROUPS.get(self.task_id, "clothing")
        return TaskInfo.single(self.key, self.classnames, metric="mean_acc",
                               name=self.raw_name.replace("_", " "),
                               template=f"a photo of {{}}, a type of {group}.")
