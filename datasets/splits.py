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
    for name, items in zip(SPLITS, entries):
        for i, item in enumerate(items):
            if not (isinstance(item, (list, tuple)) and len(item) == 3 and isinstance(item[0], str)
                    and isinstance(item[1], int) and not isinstance(item[1], bool)
                    and isinstance(item[2], str)):
                raise DatasetError(f"split file {path}: {name}[{i}] is {item!r}, not [relative path, "
                                   "integer label, class name]", section)
    check_split_labels(path, dict(zip(SPLITS, entries)), section)
    out = []
    for name, items in zip(SPLITS, entries):
        out.append([make_datum(os.path.join(image_root, rel), label, fixes.get(cname, cname), path,
                               section) for rel, label, cname in items])
    return tuple(out)


def check_split_labels(path: str, split: dict[str, list], section: str) -> None:
    """Every label of a split file in ``0 .. K-1`` (K: the file's distinct class names) and one
    label per class name and one class name per label, across train, val and test.

    A label edited out of its dataset's range would otherwise be read, and inside a
    multi-task benchmark the image would be scored as a class of another task.
    """
    names = {row[2] for rows in split.values() for row in rows}
    labels = {row[1] for rows in split.values() for row in rows}
    shared = (f"; {len(labels)} labels share these {len(names)} names: give every class its own name"
              if len(labels) > len(names) and all(0 <= y < len(labels) for y in labels) else "")
    label_of: dict[str, tuple[int, str]] = {}  # class name -> (label, where first seen)
    name_of: dict[int, tuple[str, str]] = {}  # label -> (class name, where first seen)
    for part, rows in split.items():
        for i, (_, label, cname) in enumerate(rows):
            where = f"{part}[{i}]"
            if not 0 <= label < len(names):
                raise DatasetError(f"split file {path}: {where} {rows[i]!r} has label {label}, outside "
                                   f"0..{len(names) - 1} (its {len(names)} class names){shared}", section)
            known_label, seen_at = label_of.setdefault(cname, (label, where))
            known_name, named_at = name_of.setdefault(label, (cname, where))
            if known_label != label:
                raise DatasetError(f"split file {path}: {where} {rows[i]!r} has label {label}, but "
                                   f"class {cname!r} is label {known_label} at {seen_at}", section)
            if known_name != cname:
                raise DatasetError(f"split file {path}: {where} {rows[i]!r} has label {label}, which "
                                   f"is class {known_name!r} at {named_at}, not {cname!r}", section)


def write_split_file(path: str, image_root: str, train: Sequence[Datum], val: Sequence[Datum],
                     test: Sequence[Datum], section: str = "split-files") -> None:
    """Write a split file in CoOp's format, paths relative to ``image_root``.

    It must pass the checks it will be read with (``check_split_labels``: e.g. two class
    folders given one class name): refused now, with nothing written, rather than at the
    next run's read.
    """
    def rows(items: Iterable[Datum]) -> list:
        return [[os.path.relpath(d.impath, image_root).replace(os.sep, "/"), d.label, d.classname]
                for d in items]

    split = {"train": rows(train), "val": rows(val), "test": rows(test)}
    check_split_labels(path, split, section)
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
