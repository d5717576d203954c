"""The flow every single-task adapter shares, so a dataset file holds only what differs.

    read the full splits -> few-shot draw (CoOp's cache) -> base/new -> Dassl DatasetBase

``FewShotDataset`` runs that flow; ``SplitFileDataset`` reads CoOp's
``split_zhou_*.json``. A CoOp dataset is then a dozen class attributes.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

from dassl.data.datasets import DatasetBase, Datum

from .errors import DOWNLOAD_CMD, DatasetError
from .fewshot import check_subsample, fewshot_splits, subsample_classes, warn_unscored_classes
from .files import data_root
from .splits import read_split_file
from .task_info import DEFAULT_TEMPLATE, TaskInfo

logger = logging.getLogger(__name__)

Splits = tuple[list[Datum], Optional[list[Datum]], list[Datum]]


class FewShotDataset(DatasetBase):
    """A single-task dataset with CoOp's few-shot and base/new behaviour.

    Subclasses set the class attributes and implement ``read_splits``.
    """

    dataset_dir = ""  # folder under $DATA (replaced by the absolute path on the instance, as CoOp)
    section = ""  # DATASETS.md section named in errors
    metric = "overall_acc"  # "overall_acc" or "mean_acc" (docs/benchmarks.md)
    template = DEFAULT_TEMPLATE  # zero-shot template with one {}
    task_name = ""  # default task name fed to SoftCPT's prompt
    val_is_test = False  # ImageNet: no val split, val = test, few-shot on train only

    def __init__(self, cfg):
        check_subsample(cfg.DATASET.SUBSAMPLE_CLASSES)
        self.root = data_root(cfg.DATASET.ROOT)
        self.dataset_dir = self.locate(cfg)
        train, val, test = self.read_splits()
        if not train:
            raise DatasetError(f"{self.key}: no training images in {self.dataset_dir}", self.section)
        train, val = fewshot_splits(train, val, num_shots=cfg.DATASET.NUM_SHOTS, seed=cfg.SEED,
                                    dataset_dir=self.dataset_dir, name=self.key, section=self.section)
        train, val, test = subsample_classes(train, val, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        warn_unscored_classes(self.key, train, None if self.val_is_test else val, test)
        super().__init__(train_x=train, val=test if self.val_is_test else val, test=test)
        self.task_info = self.make_task_info()

    @property
    def key(self) -> str:
        """Short identifier of the task (registry name by default)."""
        return type(self).__name__

    def locate(self, cfg) -> str:
        """Absolute dataset folder; fails if it is missing."""
        path = os.path.join(self.root, type(self).dataset_dir)
        self.require(path, "dataset folder")
        return path

    def require(self, path: str, what: str, download: bool = False) -> None:
        """Fail with a pointer to the docs (and the fetch command) if ``path`` is missing."""
        require(path, what, self.key, self.section, self.root if download else None)

    @classmethod
    def preflight(cls, cfg) -> None:
        """Cheap checks that MultiTask runs on every member before building any (which writes)."""
        if cls.dataset_dir:
            require(os.path.join(data_root(cfg.DATASET.ROOT), cls.dataset_dir), "dataset folder",
                    cls.__name__, cls.section)

    def read_splits(self) -> Splits:
        """The full (train, val, test) lists; val is None when ``val_is_test``."""
        raise NotImplementedError

    def make_task_info(self) -> TaskInfo:
        return TaskInfo.single(self.key, self.classnames, metric=self.metric,
                               name=self.task_name or self.key, template=self.template)


class SplitFileDataset(FewShotDataset):
    """A CoOp dataset with a published ``split_zhou_<Name>.json``."""

    image_dir = ""  # folder under dataset_dir that the split's paths start from
    split_file = ""  # e.g. "split_zhou_OxfordPets.json"
    classname_fixes: dict[str, str] = {}  # CoOp's renames (already applied in its split files)

    @classmethod
    def preflight(cls, cfg) -> None:
        super().preflight(cfg)
        root = data_root(cfg.DATASET.ROOT)
        require(os.path.join(root, cls.dataset_dir, cls.split_file), "split file", cls.__name__,
                cls.section, download_root=root)

    def read_splits(self) -> Splits:
        image_root = os.path.join(self.dataset_dir, self.image_dir)
        split_path = os.path.join(self.dataset_dir, self.split_file)
        self.require(image_root, "image folder")
        self.require(split_path, "split file", download=True)
        return read_split_file(split_path, image_root, self.section, self.classname_fixes)


def require(path: str, what: str, name: str, section: str, download_root: Optional[str] = None) -> None:
    """Fail if ``path`` is missing, naming it, the docs and (for split files) the fetch command."""
    if os.path.exists(path):
        return
    hint = ""
    if download_root is not None:
        hint = "; fetch it with `" + DOWNLOAD_CMD.format(root=download_root, name=name) + "`"
    raise DatasetError(f"{name}: {what} not found: {path}{hint}", section)
