"""ImageNet: class folders under images/{train,val}, names from CoOp's classnames.txt.

As in CoOp, the official val set is the test set (and the val set), only train
is sampled for few-shot, and the full listing is cached in ``preprocessed.pkl``
(CoOp's file is read as it is).
"""
from __future__ import annotations

import logging
import os
import pickle
from collections import OrderedDict

from atomic_files import atomic_write_stream
from dassl.data.datasets import DATASET_REGISTRY, Datum
from dassl.utils import listdir_nohidden

from .base import FewShotDataset, Splits
from .errors import DatasetError
from .splits import make_datum

logger = logging.getLogger(__name__)


def read_classnames(path: str, section: str) -> "OrderedDict[str, str]":
    """``classnames.txt``: lines ``<wnid> <class name>``, in label order."""
    out: OrderedDict[str, str] = OrderedDict()
    with open(path) as f:
        for line in f:
            folder, _, name = line.strip().partition(" ")
            if folder:
                out[folder] = name
    if not out:
        raise DatasetError(f"{path} lists no classes", section)
    return out


def read_class_folders(image_dir: str, folders: list[str], labels: list[int], classnames: list[str],
                       section: str) -> list[Datum]:
    """Every image of ``image_dir/<folder>`` with its label, in CoOp's listing order."""
    items = []
    for folder, label, cname in zip(folders, labels, classnames):
        folder_dir = os.path.join(image_dir, folder)
        for name in listdir_nohidden(folder_dir):
            items.append(make_datum(os.path.join(folder_dir, name), label, cname, folder_dir, section))
    return items


def read_named_folders(image_dir: str, classnames: "OrderedDict[str, str]", section: str) -> list[Datum]:
    """Class folders of ``image_dir``, labelled by their sorted order (CoOp), named by classnames.txt."""
    folders = sorted(e.name for e in os.scandir(image_dir) if e.is_dir())
    unknown = [f for f in folders if f not in classnames]
    if unknown:
        raise DatasetError(f"{image_dir}: folders {unknown[:5]} are not in classnames.txt", section)
    return read_class_folders(image_dir, folders, list(range(len(folders))),
                              [classnames[f] for f in folders], section)


@DATASET_REGISTRY.register()
class ImageNet(FewShotDataset):
    dataset_dir = "imagenet"
    section = "imagenet"
    template = "a photo of a {}."
    task_name = "object recognition"
    val_is_test = True

    def read_splits(self) -> Splits:
        names_path = os.path.join(self.dataset_dir, "classnames.txt")
        self.require(names_path, "classnames.txt", download=True)
        cached = os.path.join(self.dataset_dir, "preprocessed.pkl")
        if os.path.exists(cached):
            train, test = self._load_preprocessed(cached)
        else:
            classnames = read_classnames(names_path, self.section)
            train, test = self._list("train", classnames), self._list("val", classnames)
            data = {"train": train, "test": test}
            atomic_write_stream(cached, lambda f: pickle.dump(data, f, pickle.HIGHEST_PROTOCOL))
        return train, None, test

    def _list(self, split: str, classnames: "OrderedDict[str, str]") -> list[Datum]:
        split_dir = os.path.join(self.dataset_dir, "images", split)
        self.require(split_dir, f"{split} image folder")
        return read_named_folders(split_dir, classnames, self.section)

    def _load_preprocessed(self, path: str) -> tuple[list[Datum], list[Datum]]:
        """CoOp's cached listing, re-rooted: each path keeps its last three parts (split/wnid/file)."""
        with open(path, "rb") as f:
            data = pickle.load(f)
        image_dir = os.path.join(self.dataset_dir, "images")
        for d in data["train"] + data["test"]:
            # Datum has no setter; writing the private field skips 1.3M existence checks.
            d._impath = os.path.join(image_dir, *d.impath.replace("\\", "/").split("/")[-3:])
        probe = data["train"][0].impath
        if not os.path.isfile(probe):
            raise DatasetError(f"{path} lists {probe}, which does not exist; delete the file to list "
                               "the images again", self.section)
        return data["train"], data["test"]
