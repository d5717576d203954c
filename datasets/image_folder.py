"""Any folder of class folders as a dataset, configured by ``DATASET.IMAGE_FOLDER.*``.

    <DIR>/<class>/<image>                  (SUBDIRS empty)
    <DIR>/<subdir>/<class>/<image>         (SUBDIRS = the download's split folders, pooled)

The first build splits every class by ``SPLIT_RATIOS`` with an RNG seeded by
the class's own path (so adding a class leaves the others' split unchanged)
and writes ``<DIR>/<SPLIT_FILE>`` in CoOp's format; later builds read it. The
few-shot cache goes to ``<DIR>/split_fewshot/``, as for CoOp's datasets.
Plant-6, RS-8, the toy benchmark and users' folders are configs on this class.
"""
from __future__ import annotations

import logging
import math
import os
import random
import re
from dataclasses import dataclass, field
from typing import Mapping

from dassl.data.datasets import DATASET_REGISTRY

from .base import FewShotDataset, Splits, require
from .errors import DatasetError
from .files import data_root
from .splits import check_images, make_datum, read_split_file, write_split_file
from .task_info import DEFAULT_TEMPLATE, TaskInfo
from .toy import GENERATORS

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
CACHE_DIR = "split_fewshot"  # our cache may sit among the class folders: never a class


def readable(folder: str) -> str:
    """Default class name of a folder: ``BareLand`` / ``bare_land`` -> ``bare land``."""
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", folder).replace("_", " ")
    return " ".join(spaced.split()).lower()


def _natural(name: str) -> tuple:
    """Sort numbered class folders (0, 1, ..., 10) by number, the rest by name."""
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


@dataclass(frozen=True)
class FolderSpec:
    """What ``DATASET.IMAGE_FOLDER`` describes (see config.py for each key)."""

    dir: str
    subdirs: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    classnames: Mapping[str, str] = field(default_factory=dict)
    ratios: tuple[float, ...] = (0.5, 0.2, 0.3)
    split_file: str = "split_imagefolder.json"
    generate: str = ""
    docs: str = "image-folders"

    @classmethod
    def from_cfg(cls, node) -> "FolderSpec":
        spec = cls(dir=node.DIR, subdirs=tuple(node.SUBDIRS), ignore=tuple(node.IGNORE),
                   classnames=dict(node.CLASSNAMES), ratios=tuple(node.SPLIT_RATIOS),
                   split_file=node.SPLIT_FILE, generate=node.GENERATE, docs=node.DOCS)
        spec.validate()
        return spec

    def validate(self) -> None:
        key = "DATASET.IMAGE_FOLDER"
        if not self.dir:
            raise DatasetError(f"{key}.DIR is empty: give the image folder (relative to $DATA)", self.docs)
        r = self.ratios
        if len(r) != 3 or min(r) < 0 or r[0] <= 0 or not math.isclose(sum(r), 1.0, abs_tol=1e-6):
            raise DatasetError(f"{key}.SPLIT_RATIOS is {list(r)}: give three fractions "
                               "(train > 0, val, test) that sum to 1", self.docs)
        if not self.split_file or os.sep in self.split_file or "/" in self.split_file:
            raise DatasetError(f"{key}.SPLIT_FILE is {self.split_file!r}: give a file name", self.docs)
        if self.generate and self.generate not in GENERATORS:
            raise DatasetError(f"{key}.GENERATE is {self.generate!r}; valid: {sorted(GENERATORS)}", self.docs)

    def classname(self, folder: str) -> str:
        return self.classnames.get(folder) or readable(folder)


def list_images(folder: str) -> list[str]:
    """Sorted image files of a folder (other files, e.g. README.txt, are skipped)."""
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, e.name) for e in os.scandir(folder)
                  if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS))


def list_classes(image_root: str, spec: FolderSpec) -> list[str]:
    """Class folder names, pooled over the sub-folders, in label order."""
    names: set[str] = set()
    for sub in spec.subdirs or ("",):
        root = os.path.join(image_root, sub)
        if not os.path.isdir(root):
            raise DatasetError(f"{root} not found (DATASET.IMAGE_FOLDER.SUBDIRS lists {sub!r})", spec.docs)
        names.update(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    names -= set(spec.ignore) | {CACHE_DIR}
    unused = sorted(set(spec.classnames) - names)
    if unused:
        logger.warning("%s: DATASET.IMAGE_FOLDER.CLASSNAMES names folders that do not exist: %s (see "
                       "DATASETS.md#%s)", image_root, unused[:10], spec.docs)
    return sorted(names, key=_natural)


def split_counts(n: int, ratios: tuple[float, ...]) -> tuple[int, int]:
    """(train, val) sizes of a class with n images; train gets at least one image."""
    n_train = max(1, math.floor(n * ratios[0] + 0.5))
    n_val = min(n - n_train, math.floor(n * ratios[1] + 0.5))
    return n_train, n_val


def split_paths(paths: list[str], ratios: tuple[float, ...], seed: str) -> tuple[list[str], ...]:
    """(train, val, test) of one class folder, shuffled by an RNG of its own (deterministic, order-free)."""
    if not paths:
        return [], [], []
    paths = list(paths)
    random.Random(seed).shuffle(paths)
    n_train, n_val = split_counts(len(paths), ratios)
    return paths[:n_train], paths[n_train:n_train + n_val], paths[n_train + n_val:]


def build_split(image_root: str, spec: FolderSpec) -> Splits:
    """Split every class (each sub-folder separately, then pooled) into train/val/test."""
    train, val, test = [], [], []
    label = 0
    for folder in list_classes(image_root, spec):
        parts = ([], [], [])
        for sub in spec.subdirs or ("",):
            chunks = split_paths(list_images(os.path.join(image_root, sub, folder)), spec.ratios,
                                 seed=f"{sub}/{folder}")
            for part, chunk in zip(parts, chunks):
                part.extend(chunk)
        if not parts[0]:
            logger.warning("%s: class folder %r has no images and is skipped", image_root, folder)
            continue
        cname = spec.classname(folder)
        for out, part in zip((train, val, test), parts):
            out.extend(make_datum(p, label, cname, image_root, spec.docs) for p in part)
        label += 1
    if not train:
        layout = f"<{'|'.join(spec.subdirs)}>/<class>/<image>" if spec.subdirs else "<class>/<image>"
        raise DatasetError(f"{image_root}: no images found; expected {layout} with an extension in "
                           f"{IMAGE_EXTENSIONS}", spec.docs)
    check_images((d.impath for d in train + val + test), spec.docs)
    return train, val, test


@DATASET_REGISTRY.register()
class ImageFolder(FewShotDataset):
    """A folder of class folders; see the module docstring and DATASETS.md#image-folders."""

    section = "image-folders"

    def __init__(self, cfg):
        self.spec = self.folder_spec(cfg)
        self.section = self.spec.docs
        super().__init__(cfg)

    def folder_spec(self, cfg) -> FolderSpec:
        return FolderSpec.from_cfg(cfg.DATASET.IMAGE_FOLDER)

    @classmethod
    def preflight(cls, cfg) -> None:
        spec = FolderSpec.from_cfg(cfg.DATASET.IMAGE_FOLDER)
        path = os.path.join(data_root(cfg.DATASET.ROOT), spec.dir)
        if not spec.generate:
            require(path, "image folder", spec.dir, spec.docs)

    @property
    def key(self) -> str:
        return self.spec.dir.rstrip("/")

    def locate(self, cfg) -> str:
        path = os.path.join(self.root, self.spec.dir)
        if not os.path.exists(path) and self.spec.generate:
            GENERATORS[self.spec.generate](path)
        require(path, "image folder (DATASET.IMAGE_FOLDER.DIR)", self.key, self.section)
        return path

    def read_splits(self) -> Splits:
        path = os.path.join(self.dataset_dir, self.spec.split_file)
        if os.path.exists(path):
            return read_split_file(path, self.dataset_dir, self.section)
        logger.info("Splitting %s into %s train/val/test", self.dataset_dir, list(self.spec.ratios))
        train, val, test = build_split(self.dataset_dir, self.spec)
        write_split_file(path, self.dataset_dir, train, val, test, self.section)
        return train, val, test

    def make_task_info(self) -> TaskInfo:
        name = readable(os.path.basename(self.key))
        return TaskInfo.single(self.key, self.classnames, metric="overall_acc", name=name,
                               template=DEFAULT_TEMPLATE)
