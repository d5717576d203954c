"""MultiTask: a benchmark from a YAML alone, through Dassl's DataManager; base/new; task selection."""
from __future__ import annotations

import hashlib
import math
import os
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("dassl", reason="Dassl is not installed")

from dassl.data import DataManager  # noqa: E402
from dassl.data.datasets import DATASET_REGISTRY  # noqa: E402
from fixtures_data import make_dataset_cfg, write_coop_dataset, write_fashion20, write_image_folder  # noqa: E402

import datasets  # noqa: E402,F401  (registers the datasets)
from datasets.errors import DatasetError  # noqa: E402
from datasets.multitask import parse_entries  # noqa: E402
from datasets.task_info import task_info_of  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "datasets"

USER_YAML = """
DATASET:
  NAME: "MultiTask"
  MULTITASK:
    TASKS:
      - KEY: "fruits"
        NAME: "fruit recognition"
        METRIC: "mean_acc"
        TEMPLATE: "a photo of a {}, a kind of fruit."
        IMAGE_FOLDER: {DIR: "mine/fruits", SUBDIRS: ["train", "test"]}
      - MEMBER: "OxfordPets"
      - KEY: "tools"
        NAME: "tool recognition"
        IMAGE_FOLDER:
          DIR: "mine/tools"
          CLASSNAMES: {"hammer_01": "claw hammer"}
"""


def write_yaml(tmp_path, text: str) -> str:
    path = tmp_path / "bench.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def build(cfg):
    return DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)


@pytest.fixture
def user_bench(data_root, tmp_path):
    """Two image folders and one registered dataset, described only by a YAML file."""
    write_image_folder(data_root, "mine/fruits", ["apple", "banana", "cherry"], 5, subdirs=("train", "test"))
    write_coop_dataset(data_root, "OxfordPets")
    write_image_folder(data_root, "mine/tools", ["hammer_01", "SawBlade"], 10)
    return data_root, write_yaml(tmp_path, USER_YAML)


def test_user_benchmark_builds_through_datamanager(user_bench):
    root, yaml = user_bench
    cfg = make_dataset_cfg(root, yaml=yaml, shots=2, DATALOADER__TRAIN_X__BATCH_SIZE=4)
    dm = DataManager(cfg)
    info = task_info_of(dm.dataset, cfg.DATASET.NAME)
    assert info.keys == ("fruits", "OxfordPets", "tools")
    assert info.names == ("fruit recognition", "pet breed recognition", "tool recognition")
    assert info.metrics == ("mean_acc", "mean_acc", "overall_acc")
    assert info.templates == ("a photo of a {}, a kind of fruit.", "a photo of a {}, a type of pet.",
                              "a photo of a {}.")
    assert info.classnames == (("apple", "banana", "cherry"), ("abyssinian", "american_bulldog", "beagle"),
                               ("saw blade", "claw hammer"))  # folders sort as CoOp: "SawBlade" < "hammer_01"
    assert info.offsets == [0, 3, 6, 8] and dm.num_classes == 8
    assert dm.dataset.classnames == info.all_classnames
    assert dm.lab2cname == dict(enumerate(info.all_classnames))
    assert len(dm.dataset.train_x) == 2 * 8
    for split in (dm.dataset.train_x, dm.dataset.val, dm.dataset.test):
        assert {d.domain for d in split} == {0, 1, 2}
        assert all(info.task_of_label(d.label) == d.domain for d in split)
    batch = next(iter(dm.train_loader_x))
    labels, domains = batch["label"].tolist(), batch["domain"].tolist()
    assert [info.task_of_label(y) for y in labels] == domains
    assert batch["img"].shape[1:] == (3, 8, 8)


def test_member_draw_does_not_depend_on_benchmark(user_bench):
    """OxfordPets inside the user benchmark has the draw it has alone."""
    root, yaml = user_bench
    bench = build(make_dataset_cfg(root, yaml=yaml, shots=2, seed=5))
    alone = build(make_dataset_cfg(root, "OxfordPets", shots=2, seed=5))
    inside = [(d.impath, d.label - 3) for d in bench.train_x if d.domain == 1]
    assert inside == [(d.impath, d.label) for d in alone.train_x]


@pytest.mark.parametrize("subsample", ["base", "new"])
def test_base_new_per_task(data_root, tmp_path, subsample):
    """Base = first ceil(K_t/2) classes of each task, new = the rest, relabelled from 0 in the task."""
    sizes = {"three": 3, "four": 4, "five": 5}
    tasks = ""
    for key, k in sizes.items():
        write_image_folder(data_root, f"b/{key}", [f"{key}{c}" for c in range(k)], 6)
        tasks += f'\n      - {{KEY: "{key}", IMAGE_FOLDER: {{DIR: "b/{key}"}}}}'
    yaml = write_yaml(tmp_path, 'DATASET:\n  NAME: "MultiTask"\n  MULTITASK:\n    TASKS:' + tasks + "\n")
    full = build(make_dataset_cfg(data_root, yaml=yaml, shots=2)).task_info
    part = build(make_dataset_cfg(data_root, yaml=yaml, shots=2, DATASET__SUBSAMPLE_CLASSES=subsample))
    info = part.task_info
    for t, (key, k) in enumerate(sizes.items()):
        m = math.ceil(k / 2)
        want = full.classnames[t][:m] if subsample == "base" else full.classnames[t][m:]
        assert info.classnames[t] == want
        local = sorted({d.label - info.offsets[t] for d in part.test if d.domain == t})
        assert local == list(range(len(want)))
    assert info.names == full.names and info.keys == full.keys  # same tasks: NATA evaluates new on them
    all_draw = {d.impath for d in build(make_dataset_cfg(data_root, yaml=yaml, shots=2)).train_x}
    assert {d.impath for d in part.train_x} <= all_draw  # base/new is applied after the draw (CoOp)


@pytest.mark.parametrize("selector, keys", [
    ("1", ("OxfordPets",)),
    ("OxfordPets", ("OxfordPets",)),
    ("tool recognition", ("tools",)),
    ("tools, 0", ("fruits", "tools")),
    ("all", ("fruits", "OxfordPets", "tools")),
])
def test_subsample_tasks_relabels(user_bench, selector, keys):
    root, yaml = user_bench
    ds = build(make_dataset_cfg(root, yaml=yaml, DATASET__SUBSAMPLE_TASKS=selector))
    info = ds.task_info
    assert info.keys == keys
    assert sorted({d.label for d in ds.test}) == list(range(info.offsets[-1]))
    assert {d.domain for d in ds.test} == set(range(len(keys)))
    assert all(info.task_of_label(d.label) == d.domain for d in ds.test)


def test_unselected_members_are_not_built(user_bench):
    """Selecting one task of a benchmark works without the others' data."""
    root, yaml = user_bench
    os.rename(os.path.join(root, "oxford_pets"), os.path.join(root, "elsewhere"))
    ds = build(make_dataset_cfg(root, yaml=yaml, DATASET__SUBSAMPLE_TASKS="fruits"))
    assert ds.task_info.keys == ("fruits",)


def test_fashion20_task_from_its_table(data_root):
    write_fashion20(data_root, [("pants_type", ["straight", "wide_leg"]), ("hat_style", ["a", "b", "c"])])
    ds = build(make_dataset_cfg(data_root, "Fashion20", DATASET__FASHION20__TASK=0))
    info = ds.task_info
    assert info.keys == ("pants_type",) and info.names == ("pants type",)
    assert info.classnames == (("straight", "wide leg"),) and info.metrics == ("mean_acc",)
    assert info.templates == ("a photo of {}, a type of pants.",)
    assert os.path.exists(os.path.join(data_root, "fashion20", "images", "0", "split_fashion20.json"))


def test_fashion20_yaml_members(data_root, tmp_path):
    write_fashion20(data_root, [("pants_type", ["straight", "wide_leg"]), ("pants_length", ["long", "x"])])
    yaml = write_yaml(tmp_path, """
        DATASET:
          NAME: "MultiTask"
          MULTITASK:
            TASKS:
              - {MEMBER: "Fashion20", KEY: "pants_type", OPTIONS: {FASHION20: {TASK: 0}}}
              - {MEMBER: "Fashion20", KEY: "pants_length", OPTIONS: {FASHION20: {TASK: 1}}}
        """)
    info = build(make_dataset_cfg(data_root, yaml=yaml)).task_info
    assert info.names == ("pants type", "pants length") and info.num_classes == [2, 2]


@pytest.mark.parametrize("name, n_tasks", [("general10", 10), ("plant6", 6), ("rs8", 8), ("fashion20", 20),
                                           ("toy", 3)])
def test_benchmark_configs_parse(name, n_tasks):
    """Every shipped benchmark YAML merges into the config and its entries validate."""
    cfg = make_dataset_cfg("/nonexistent", yaml=str(CONFIGS / f"{name}.yaml"))
    entries = parse_entries(cfg.DATASET.MULTITASK.TASKS)
    assert cfg.DATASET.NAME == "MultiTask" and len(entries) == n_tasks


def _tree_digest(folder: str) -> str:
    """Names and bytes of the images and split files (the caches hold absolute paths)."""
    h = hashlib.sha256()
    for dirpath, dirnames, files in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d != "split_fewshot")
        for f in sorted(files):
            h.update(os.path.relpath(os.path.join(dirpath, f), folder).encode())
            with open(os.path.join(dirpath, f), "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def test_toy_benchmark_written_on_first_use_deterministically(tmp_path):
    yaml = str(CONFIGS / "toy.yaml")
    digests = []
    for run in ("a", "b"):
        root = str(tmp_path / run)
        os.makedirs(root)
        dm = DataManager(make_dataset_cfg(root, yaml=yaml, shots=4))
        info = dm.dataset.task_info
        assert info.num_tasks >= 3 and all(k >= 3 for k in info.num_classes)
        assert len(dm.dataset.train_x) == 4 * sum(info.num_classes)
        digests.append(_tree_digest(os.path.join(root, "toy")))
    assert digests[0] == digests[1]
    again = build(make_dataset_cfg(str(tmp_path / "a"), yaml=yaml, shots=4))  # reads folders and caches
    assert again.task_info == info


def test_member_options_are_validated(data_root, tmp_path):
    yaml = write_yaml(tmp_path, """
        DATASET:
          NAME: "MultiTask"
          MULTITASK:
            TASKS:
              - {KEY: "x", IMAGE_FOLDER: {DIR: "x", SPLIT_RATIO: [0.5, 0.5, 0.0]}}
        """)
    with pytest.raises(DatasetError, match=r"TASKS\[0\].*IMAGE_FOLDER.SPLIT_RATIO.*#your-own-benchmark"):
        build(make_dataset_cfg(data_root, yaml=yaml))
