"""CoOp's split files and the checks on the images they list.

A split file is JSON ``{"train": [[relpath, label, classname], ...], "val":
[...], "test": [...]}`` with paths relative to the dataset's image folder
(CoOp's ``OxfordPets.save_split`` format), so CoOp's published
``split_zhou_*.json`` files are read as they are.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Iterable, Sequence

from atomic_files import atomic_write
from dassl.data.datasets import Datum
from PIL import Image

from .errors import DatasetError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def make_datum(impath: str, label: int, classname: str, source: str, section: str,
               domain: int = 0) -> Datum:
    """A Dassl ``Datum``, failing with a message naming the file and where it was listed."""
    try:
        return Datum(impath=impath, label=label, domain=domain, classname=classname)
    except AssertionError:  # Dassl asserts the file exists, without a message
        raise DatasetError(f"{source} lists {impath}, which does not exist", section) from None


def read_split_file(path: str, image_root: str, section: str,
                    classname_fixes: dict[str, str] | None = None) -> tuple[list[Datum], ...]:
    """Read a split file into (train, val, test) lists of ``Datum``.

    Args:
        path: the JSON file.
        image_root: folder its relative paths start from.
        section: DATASETS.md section named in errors.
        classname_fixes: renames applied to the stored class names (a no-op on
            CoOp's files, which hold the cleaned names already).
    """
    fixes = classname_fixes or {}
    logger.info("Reading split from %s", path)
    try:
        with open(path) as f:
            split = json.load(f)
        entries = [split[name] for name in SPLITS]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DatasetError(f"cannot read split file {path}: {err!r}; delete it or fetch it again",
                           section) from None
    out = []
    for name, items in zip(SPLITS, entries):
        data = []
        for item in items:
            if not (isinstance(item, (list, tuple)) and len(item) == 3):
                raise DatasetError(f"split file {path}: {name} entry {item!r} is not "
                                   "[relpath, label, classname]", section)
            rel, label, cname = item
            data.append(make_datum(os.path.join(image_root, rel), int(label),
                                   fixes.get(cname, cname), path, section))
        out.append(data)
    return tuple(out)


def write_split_file(path: str, image_root: str, train: Sequence[Datum], val: Sequence[Datum],
                     test: Sequence[Datum]) -> None:
    """Write a split file in CoOp's format, paths relative to ``image_root``."""
    def rows(items: Iterable[Datum]) -> list:
        return [[os.path.relpath(d.impath, image_root).replace(os.sep, "/"), d.label, d.classname]
                for d in items]

    split = {"train": rows(train), "val": rows(val), "test": rows(test)}
    atomic_write(path, json.dumps(split))
    logger.info("Saved split to %s", path)


def check_images(paths: Iterable[str], section: str) -> None:
    """Open every image (header and, for PNG, checksums) and name the first bad one.

    A full decode of every image would cost minutes on large datasets, so this
    catches files that are not images or are damaged at the start; it runs on
    the images a split or few-shot draw is about to record.
    """
    for path in paths:
        problem = image_problem(path)
        if problem:
            raise DatasetError(f"cannot read image {path} ({problem}); replace the file or remove it",
                               section)


def image_problem(path: str, decode: bool = False) -> str:
    """Why ``path`` cannot be read as an image ("" if it can): its header and, for PNG, its
    checksums; with ``decode``, every pixel too (a file cut short after its header)."""
    try:
        with Image.open(path) as im:
            if decode:
                im.load()
            else:
                im.verify()
    except Exception as err:  # PIL raises many types for a bad file
        return f"{type(err).__name__}: {err}"
    return ""
