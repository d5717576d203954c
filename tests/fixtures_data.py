"""Synthetic datasets written in each dataset's real on-disk layout, plus split files.

Images are 8x8 JPEGs (one colour per class), so writing all of General-10 takes
a fraction of a second. Split lists are shuffled so that the first-appearance
order of labels differs from label order, as in CoOp's real split files.
Imported by conftest.py (``from fixtures_data import *``).
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from typing import Callable, Sequence

import pytest
from PIL import Image

__all__ = ["FakeDataset", "GENERAL10", "write_image", "write_coop_dataset", "write_general10",
           "write_image_folder", "write_fashion20", "write_imagenet", "make_dataset_cfg",
           "data_root", "general10_root"]

SHOTS = {"train": 6, "val": 5, "test": 2}  # images per class and split


def write_image(path: str, colour: Sequence[int] = (128, 64, 32), size: int = 8) -> str:
    """A tiny solid image; the format follows the extension."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (size, size), tuple(colour)).save(path)
    return path


def _colour(label: int) -> tuple[int, int, int]:
    return ((label * 70) % 256, (label * 130 + 40) % 256, (label * 200 + 90) % 256)


@dataclass
class FakeDataset:
    """What a writer produced: the folder and the expected content."""

    name: str
    dataset_dir: str
    classnames: list[str]  # expected class names, in label order
    split: dict = field(default_factory=dict)  # {"train": [[rel, label, cname]], ...} as written


@dataclass(frozen=True)
class Layout:
    """Where a CoOp dataset keeps its images and how it names them."""

    dataset_dir: str
    image_dir: str
    split_file: str  # "" = official lists (FGVCAircraft)
    stored_names: tuple[str, ...]  # class names as written in the split file
    relpath: Callable[[int, str, int], str]  # (label, split, running index) -> path under image_dir
    expected_names: tuple[str, ...] = ()  # after the adapter's clean-ups (default: stored_names)


GENERAL10: dict[str, Layout] = {
    "Caltech101": Layout(
        "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json",
        ("accordion", "airplanes", "Faces"),  # raw names, to exercise CoOp's renames
        lambda y, s, i: f"{['accordion', 'airplanes', 'Faces'][y]}/image_{i:04d}.jpg",
        ("accordion", "airplane", "face")),
    "DescribableTextures": Layout(
        "dtd", "images", "split_zhou_DescribableTextures.json", ("banded", "braided", "bubbly"),
        lambda y, s, i: "{0}/{0}_{1:04d}.jpg".format(['banded', 'braided', 'bubbly'][y], i)),
    "EuroSAT": Layout(
        "eurosat", "2750", "split_zhou_EuroSAT.json", ("Annual Crop Land", "Forest", "Highway or Road"),
        lambda y, s, i: "{0}/{0}_{1}.jpg".format(['AnnualCrop', 'Forest', 'Highway'][y], i)),
    "FGVCAircraft": Layout(
        "fgvc_aircraft", "images", "", ("707-320", "727-200", "A300B4"),
        lambda y, s, i: f"{1000000 + i}.jpg"),
    "Food101": Layout(
        "food-101", "images", "split_zhou_Food101.json", ("apple_pie", "baby_back_ribs", "baklava"),
        lambda y, s, i: f"{['apple_pie', 'baby_back_ribs', 'baklava'][y]}/{100000 + i}.jpg"),
    "OxfordFlowers": Layout(
        "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json",
        ("pink primrose", "hard-leaved pocket orchid", "canterbury bells"),
        lambda y, s, i: f"image_{i:05d}.jpg"),
    "OxfordPets": Layout(
        "oxford_pets", "images", "split_zhou_OxfordPets.json", ("abyssinian", "american_bulldog", "beagle"),
        lambda y, s, i: f"{['Abyssinian', 'american_bulldog', 'beagle'][y]}_{i}.jpg"),
    "StanfordCars": Layout(
        "stanford_cars", "", "split_zhou_StanfordCars.json",
        ("2012 AM General Hummer SUV", "2012 Acura RL Sedan", "2012 Acura TL Sedan"),
        lambda y, s, i: f"{'cars_test' if s == 'test' else 'cars_train'}/{i:05d}.jpg"),
    "SUN397": Layout(
        "sun397", "SUN397", "split_zhou_SUN397.json", ("abbey", "airplane cabin", "indoor apse"),
        lambda y, s, i: f"{['a/abbey', 'a/airplane_cabin', 'a/apse/indoor'][y]}/sun_{i:06d}.jpg"),
    "UCF101": Layout(
        "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json",
        ("Apply_Eye_Makeup", "Archery", "Baby_Crawling"),
        lambda y, s, i: f"{['Apply_Eye_Makeup', 'Archery', 'Baby_Crawling'][y]}/v_{y}_g{i:02d}_c01.jpg"),
}


def write_coop_dataset(root: str, name: str, shots: dict | None = None) -> FakeDataset:
    """One CoOp dataset in its real layout, with its split file (or official lists)."""
    layout = GENERAL10[name]
    shots = shots or SHOTS
    dataset_dir = os.path.join(root, layout.dataset_dir)
    image_root = os.path.join(dataset_dir, layout.image_dir)
    split, counter = {}, 0
    for s in ("train", "val", "test"):
        items = []
        for y, cname in enumerate(layout.stored_names):
            for _ in range(shots[s]):
                counter += 1
                rel = layout.relpath(y, s, counter)
                write_image(os.path.join(image_root, rel), _colour(y))
                items.append([rel, y, cname])
        random.Random(f"{name}/{s}").shuffle(items)  # first appearance != label order
        split[s] = items
    if layout.split_file:
        with open(os.path.join(dataset_dir, layout.split_file), "w") as f:
            json.dump(split, f)
    else:
        _write_fgvc_lists(dataset_dir, layout, split)
    return FakeDataset(name, dataset_dir, list(layout.expected_names or layout.stored_names), split)


def _write_fgvc_lists(dataset_dir: str, layout: Layout, split: dict) -> None:
    with open(os.path.join(dataset_dir, "variants.txt"), "w") as f:
        f.write("\n".join(layout.stored_names) + "\n")
    for s, items in split.items():
        with open(os.path.join(dataset_dir, f"images_variant_{s}.txt"), "w") as f:
            f.writelines(f"{rel[:-4]} {cname}\n" for rel, _, cname in items)


def write_general10(root: str) -> dict[str, FakeDataset]:
    return {name: write_coop_dataset(root, name) for name in GENERAL10}


def write_image_folder(root: str, rel: str, classes: Sequence[str], per_class: int = 10,
                       subdirs: Sequence[str] = (), ext: str = ".jpg") -> str:
    """``root/rel/[<subdir>/]<class>/<n>.jpg``; returns the folder."""
    folder = os.path.join(root, rel)
    for sub in subdirs or ("",):
        for y, cname in enumerate(classes):
            for i in range(per_class):
                write_image(os.path.join(folder, sub, cname, f"{sub or 'img'}_{i:03d}{ext}"), _colour(y))
    return folder


def write_fashion20(root: str, tasks: Sequence[tuple[str, Sequence[str]]], per_class: int = 6) -> str:
    """``fashion20/images/<task>/<class id>/`` and the tab-separated ``task_info.csv``."""
    base = os.path.join(root, "fashion20")
    rows = ["id\ttask\tcount\tclasses"]
    for t, (task, classes) in enumerate(tasks):
        write_image_folder(base, f"images/{t}", [str(c) for c in range(len(classes))], per_class)
        rows.append(f"{t}\t{task}\t{len(classes)}\t{','.join(classes)}")
    with open(os.path.join(base, "task_info.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    return base


def write_imagenet(root: str, per_class: int = 5) -> str:
    """Three ImageNet classes in images/{train,val} and their classnames.txt."""
    wnids = ("n01440764", "n01443537", "n01484850")
    names = ("tench", "goldfish", "great white shark")
    base = os.path.join(root, "imagenet")
    for split in ("train", "val"):
        write_image_folder(base, f"images/{split}", wnids, per_class)
    with open(os.path.join(base, "classnames.txt"), "w") as f:
        f.writelines(f"{w} {n}\n" for w, n in zip(wnids, names))
    return base


def make_dataset_cfg(root: str, name: str = "", seed: int = 1, shots: int = 0, yaml: str = "", **keys):
    """A Dassl default config with this project's dataset keys, for building datasets in tests.

    ``keys`` are dotted config keys with "__" for ".", e.g. DATASET__SUBSAMPLE_CLASSES="base".
    """
    from dassl.config import get_cfg_default

    from config.dataset import add_dataset_config
    cfg = get_cfg_default()
    add_dataset_config(cfg)
    if yaml:
        cfg.merge_from_file(yaml)
    cfg.DATASET.ROOT = root
    if name:
        cfg.DATASET.NAME = name
    cfg.SEED = seed
    cfg.DATASET.NUM_SHOTS = shots
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.SIZE = (8, 8)
    cfg.VERBOSE = False
    for key, value in keys.items():
        node = cfg
        *parents, last = key.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    cfg.freeze()
    return cfg


@pytest.fixture
def data_root(tmp_path) -> str:
    """An empty $DATA."""
    path = tmp_path / "data"
    path.mkdir()
    return str(path)


@pytest.fixture
def general10_root(data_root) -> tuple[str, dict[str, FakeDataset]]:
    """$DATA holding the ten General-10 members in their real layouts."""
    return data_root, write_general10(data_root)
