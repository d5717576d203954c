"""The image-folder adapter: deterministic split written once, ratios, pooled sub-folders, names."""
from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("dassl", reason="Dassl is not installed")

from dassl.data.datasets import DATASET_REGISTRY  # noqa: E402
from fixtures_data import make_dataset_cfg, write_image_folder  # noqa: E402

import datasets  # noqa: E402,F401  (registers the datasets)
from datasets import image_folder  # noqa: E402
from datasets.image_folder import readable, split_counts  # noqa: E402


def build(root: str, shots: int = 0, **keys):
    keys = {f"DATASET__IMAGE_FOLDER__{k}": v for k, v in keys.items()}
    return DATASET_REGISTRY.get("ImageFolder")(make_dataset_cfg(root, "ImageFolder", shots=shots, **keys))


def split_of(root: str, rel: str, name: str = "split_imagefolder.json") -> dict:
    with open(os.path.join(root, rel, name)) as f:
        return json.load(f)


def test_split_is_deterministic_and_written_once(tmp_path, monkeypatch):
    roots = [str(tmp_path / r) for r in ("a", "b")]
    for root in roots:
        write_image_folder(root, "pics", ["dog", "cat", "owl"], 10)
        build(root, DIR="pics")
    assert split_of(roots[0], "pics") == split_of(roots[1], "pics")  # same split anywhere
    monkeypatch.setattr(image_folder, "build_split", lambda *a: pytest.fail("split file not reused"))
    again = build(roots[0], DIR="pics")
    assert sorted(d.impath for d in again.test) == sorted(
        os.path.join(roots[0], "pics", rel) for rel, _, _ in split_of(roots[0], "pics")["test"])


def test_ratios_per_class_and_custom_split_file(data_root):
    write_image_folder(data_root, "pics", ["a", "b"], 10)
    ds = build(data_root, DIR="pics")
    assert [len(ds.train_x), len(ds.val), len(ds.test)] == [10, 4, 6]  # 5/2/3 per class
    ds = build(data_root, DIR="pics", SPLIT_RATIOS=(0.6, 0.0, 0.4), SPLIT_FILE="split_60_40.json")
    assert [len(ds.train_x), len(ds.val), len(ds.test)] == [12, 0, 8]
    assert os.path.exists(os.path.join(data_root, "pics", "split_60_40.json"))


def test_split_subfolders_are_resplit_and_pooled(data_root):
    write_image_folder(data_root, "dl/images", ["pear", "fig"], 10, subdirs=("train", "validation"))
    write_image_folder(data_root, "dl/images", ["kiwi"], 10, subdirs=("train",))
    ds = build(data_root, DIR="dl/images", SUBDIRS=["train", "validation"])
    assert ds.classnames == ["fig", "kiwi", "pear"]
    per_class = [sum(d.label == y for d in ds.train_x) for y in range(3)]
    assert per_class == [10, 5, 10]  # 5 from each sub-folder a class has
    assert {d.impath.split(os.sep)[-3] for d in ds.test} == {"train", "validation"}


def test_class_names_map_ignore_and_numeric_order(data_root):
    write_image_folder(data_root, "n", ["10", "2", "1"], 4)
    assert build(data_root, DIR="n").classnames == ["1", "2", "10"]
    write_image_folder(data_root, "m", ["BareLand", "golf_course", "Background", "x"], 4)
    ds = build(data_root, DIR="m", IGNORE=["Background"], CLASSNAMES={"x": "the letter x"})
    assert ds.classnames == ["bare land", "golf course", "the letter x"]


def test_other_files_and_cache_folder_are_not_classes(data_root):
    folder = write_image_folder(data_root, "p", ["a", "b"], 4, ext=".png")
    open(os.path.join(folder, "README.txt"), "w").close()
    open(os.path.join(folder, "a", "notes.txt"), "w").close()
    ds = build(data_root, DIR="p", shots=1)
    assert ds.num_classes == 2 and len(ds.train_x) == 2
    assert os.path.isdir(os.path.join(folder, "split_fewshot"))
    ds = build(data_root, DIR="p", SPLIT_FILE="other.json")  # lists the classes again
    assert ds.classnames == ["a", "b"]


def test_readable_and_split_counts():
    assert readable("HerbaceousVegetation") == "herbaceous vegetation"
    assert readable("basketball_court") == "basketball court"
    assert split_counts(1, (0.5, 0.2, 0.3)) == (1, 0)
    assert split_counts(5, (0.5, 0.2, 0.3)) == (3, 1)


def test_task_info_defaults(data_root):
    write_image_folder(data_root, "kaggle/flowers", ["daisy", "rose"], 4)
    info = build(data_root, DIR="kaggle/flowers").task_info
    assert info.keys == ("kaggle/flowers",) and info.names == ("flowers",)
    assert info.metrics == ("overall_acc",)
