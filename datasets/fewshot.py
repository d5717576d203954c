"""Few-shot draws equal to CoOp's, their cache, and base/new class subsampling.

CoOp seeds Python's global ``random`` right before building the dataset, then
calls Dassl's ``generate_fewshot_dataset`` on train (K shots) and val
(min(K, 4) shots). Drawing from a fresh ``random.Random(seed)`` repeats that
sequence exactly, and does not depend on what other datasets drew before: a
member of a benchmark gets the same images as when it is trained alone.
"""
from __future__ import annotations

import logging
import math
import os
import pickle
import random
from collections import defaultdict
from pathlib import PurePath
from typing import Optional, Sequence

from atomic_files import atomic_write_stream
from dassl.data.datasets import Datum

from .errors import DatasetError, see
from .splits import check_images

logger = logging.getLogger(__name__)

VAL_SHOTS = 4  # CoOp caps the few-shot validation set at 4 images per class
SUBSAMPLE_CHOICES = ("all", "base", "new")


def cache_path(dataset_dir: str, num_shots: int, seed: int) -> str:
    """CoOp's cache file: ``<dataset_dir>/split_fewshot/shot_{K}-seed_{S}.pkl``."""
    return os.path.join(dataset_dir, "split_fewshot", f"shot_{num_shots}-seed_{seed}.pkl")


def draw(items: Sequence[Datum], num_shots: int, rng: random.Random) -> tuple[list[Datum], list]:
    """Dassl's ``generate_fewshot_dataset`` (repeat=False) with an explicit RNG.

    Returns the draw and the (label, classname, available) of every class that
    has fewer than ``num_shots`` items; those classes keep all their items.
    """
    by_label: dict[int, list[Datum]] = defaultdict(list)  # first-appearance order, as Dassl
    for item in items:
        by_label[item.label].append(item)
    out, short = [], []
    for label, group in by_label.items():
        if len(group) >= num_shots:
            out.extend(rng.sample(group, num_shots))
        else:
            out.extend(group)
            short.append((label, group[0].classname, len(group)))
    return out, short


def fewshot_splits(train: list[Datum], val: Optional[list[Datum]], *, num_shots: int, seed: int,
                   dataset_dir: str, name: str, section: str) -> tuple[list[Datum], Optional[list[Datum]]]:
    """The K-shot train and val lists, read from CoOp's cache or drawn and cached.

    Args:
        train, val: the full splits (``val`` None: only train is sampled, as ImageNet).
        num_shots: ``DATASET.NUM_SHOTS``; 0 returns the splits unchanged (the whole
            training set, as Dassl does for any value below 1); negative is an error.
        seed: ``SEED``; the cache file is named after it.
        dataset_dir: where ``split_fewshot/`` lives.
        name: dataset name for messages.
        section: DATASETS.md section for messages.
    """
    if num_shots < 0:
        raise DatasetError(f"{name}: DATASET.NUM_SHOTS is {num_shots}; use a number of shots per "
                           "class >= 1, or 0 for the whole training set", "few-shot-sampling-and-cache")
    if num_shots == 0:
        logger.info("%s: DATASET.NUM_SHOTS 0: training on the whole training set (%d images), "
                    "no few-shot draw", name, len(train))
        return train, val
    path = cache_path(dataset_dir, num_shots, seed)
    if os.path.exists(path):
        return load_cache(path, train, val, dataset_dir, section)
    if seed < 0:
        logger.warning("%s: SEED is %d, so the %d-shot draw is not reproducible (CoOp caches it as "
                       "%s all the same)", name, seed, num_shots, path)
    rng = random.Random(seed) if seed >= 0 else random.Random()
    train_fs = _draw_warn(train, num_shots, rng, name, "train")
    val_fs = None if val is None else _draw_warn(val, min(num_shots, VAL_SHOTS), rng, name, "val")
    check_images((d.impath for d in train_fs + (val_fs or [])), section)
    save_cache(path, train_fs, val_fs)
    return train_fs, val_fs


def _draw_warn(items: list[Datum], num_shots: int, rng: random.Random, name: str, split: str) -> list[Datum]:
    out, short = draw(items, num_shots, rng)
    if short:
        listed = ", ".join(f"{c!r} ({n})" for _, c, n in short[:5]) + (" ..." if len(short) > 5 else "")
        logger.warning("%s: %d class(es) have fewer than %d %s images, all of them are used: %s "
                       "(DATASET.NUM_SHOTS, see %s)", name, len(short), num_shots, split, listed,
                       see("few-shot-sampling-and-cache"))
    return out


def save_cache(path: str, train: list[Datum], val: Optional[list[Datum]]) -> None:
    """Pickle the draw as CoOp does (``Datum`` objects), atomically."""
    data = {"train": train} if val is None else {"train": train, "val": val}
    atomic_write_stream(path, lambda f: pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL))
    logger.info("Saved few-shot data to %s", path)


def load_cache(path: str, train: list[Datum], val: Optional[list[Datum]], dataset_dir: str,
               section: str) -> tuple[list[Datum], Optional[list[Datum]]]:
    """Read a cache (ours or CoOp's), mapping its items onto the current split.

    Cached paths are absolute and go stale when $DATA moves; each one is matched
    to the split item with the same path relative to the dataset folder, which
    also catches a cache that belongs to another split.
    """
    logger.info("Loading few-shot data from %s", path)
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
        cached_train, cached_val = data["train"], data.get("val")
    except Exception as err:  # a truncated or foreign pickle raises anything
        raise DatasetError(f"cannot read few-shot cache {path} ({err!r}); delete it to redraw",
                           "few-shot-sampling-and-cache") from None
    train_out = _match(cached_train, train, dataset_dir, path, "train")
    if val is None:  # a train-only cache (ImageNet)
        return train_out, None
    if cached_val is None:
        raise DatasetError(f"few-shot cache {path} has no val list; delete it to redraw",
                           "few-shot-sampling-and-cache")
    return train_out, _match(cached_val, val, dataset_dir, path, "val")


def _match(cached: list[Datum], split: list[Datum], dataset_dir: str, path: str, which: str) -> list[Datum]:
    index = {_relkey(d.impath, dataset_dir): d for d in split}
    out = []
    for item in cached:
        found = _lookup(item.impath, index)
        if found is None or found.label != item.label:
            raise DatasetError(f"few-shot cache {path} holds {item.impath} (label {item.label}), which is "
                               f"not in the {which} split of {dataset_dir}; the cache was drawn from "
                               "another split: delete it to redraw", "few-shot-sampling-and-cache")
        out.append(found)
    return out


def _relkey(impath: str, dataset_dir: str) -> str:
    return PurePath(os.path.relpath(impath, dataset_dir)).as_posix()


def _lookup(impath: str, index: dict[str, Datum]) -> Optional[Datum]:
    """The split item whose relative path is the longest suffix of ``impath``."""
    parts = PurePath(impath.replace("\\", "/")).parts
    for i in range(len(parts)):
        hit = index.get("/".join(parts[i:]))
        if hit is not None:
            return hit
    return None


def warn_unscored_classes(name: str, train: list[Datum], val: Optional[list[Datum]],
                          test: list[Datum]) -> None:
    """Warn, naming them, about training classes that have no validation or no test image:
    they are trained but never scored (a class folder too small for its split ratios)."""
    classes = {d.label: d.classname for d in train}
    for split, items in (("validation", val), ("test", test)):
        if items is None:
            continue
        missing = sorted(set(classes) - {d.label for d in items})
        if missing:
            listed = ", ".join(repr(classes[y]) for y in missing[:10]) + (" ..." if len(missing) > 10 else "")
            logger.warning("%s: %d class(es) have training images but no %s image, so they are "
                           "never scored on it: %s (add images to these classes, or change the "
                           "split; see %s)", name, len(missing), split, listed, see("split-files"))


def subsample_classes(*splits: Optional[list[Datum]], subsample: str = "all") -> list:
    """CoOp's base/new split: base = first ceil(K/2) labels, new = the rest, relabelled from 0.

    Labels are those of the first split (train), as in CoOp; ``None`` splits pass through.
    """
    check_subsample(subsample)
    if subsample == "all":
        return list(splits)
    labels = sorted({d.label for d in splits[0]})
    m = math.ceil(len(labels) / 2)
    selected = labels[:m] if subsample == "base" else labels[m:]
    relabel = {y: i for i, y in enumerate(selected)}
    return [None if split is None else
            [Datum(d.impath, relabel[d.label], d.domain, d.classname) for d in split if d.label in relabel]
            for split in splits]


def check_subsample(subsample: str) -> None:
    """Validate ``DATASET.SUBSAMPLE_CLASSES`` (early, before anything is written)."""
    if subsample not in SUBSAMPLE_CHOICES:
        raise DatasetError(f"DATASET.SUBSAMPLE_CLASSES is {subsample!r}; use one of {SUBSAMPLE_CHOICES}",
                           "base-to-new")
