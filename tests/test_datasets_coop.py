"""CoOp's datasets on synthetic data in their real layouts: parsing, few-shot draws, the cache."""
from __future__ import annotations

import os
import pickle
import random
import shutil
from pathlib import Path

import pytest

pytest.importorskip("dassl", reason="Dassl is not installed")

from dassl.data.datasets import DATASET_REGISTRY, DatasetBase, Datum  # noqa: E402
from fixtures_data import GENERAL10, make_dataset_cfg, write_coop_dataset, write_imagenet  # noqa: E402

import datasets  # noqa: E402,F401  (registers the datasets)
from datasets import fewshot  # noqa: E402
from datasets.errors import DatasetError  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "datasets"

# docs/benchmarks.md#general-10: metric and zero-shot template per member.
BENCHMARK = {
    "Caltech101": ("mean_acc", "a photo of a {}."),
    "DescribableTextures": ("overall_acc", "{} texture."),
    "EuroSAT": ("overall_acc", "a centered satellite photo of {}."),
    "FGVCAircraft": ("mean_acc", "a photo of a {}, a type of aircraft."),
    "Food101": ("overall_acc", "a photo of {}, a type of food."),
    "OxfordFlowers": ("mean_acc", "a photo of a {}, a type of flower."),
    "OxfordPets": ("mean_acc", "a photo of a {}, a type of pet."),
    "StanfordCars": ("overall_acc", "a photo of a {}."),
    "SUN397": ("overall_acc", "a photo of a {}."),
    "UCF101": ("overall_acc", "a photo of a person doing {}."),
}


def rows(items, dataset_dir: str) -> list[tuple[str, int]]:
    """(path relative to the dataset folder, label) of each item, in order."""
    return [(os.path.relpath(d.impath, dataset_dir), d.label) for d in items]


def build(root: str, name: str, **kw):
    return DATASET_REGISTRY.get(name)(make_dataset_cfg(root, name, **kw))


def test_every_coop_dataset_is_registered():
    names = set(DATASET_REGISTRY.registered_names())
    expected = set(GENERAL10) | {"ImageNet", "ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR",
                                 "ImageFolder", "Fashion20", "MultiTask"}
    assert expected <= names


def test_dataset_configs_use_coop_names():
    """configs/datasets/<coop file>.yaml names the dataset as CoOp's does."""
    import yaml
    for path, name in [("oxford_pets", "OxfordPets"), ("dtd", "DescribableTextures"),
                       ("fgvc_aircraft", "FGVCAircraft"), ("imagenetv2", "ImageNetV2")]:
        assert yaml.safe_load((CONFIGS / f"{path}.yaml").read_text())["DATASET"]["NAME"] == name


@pytest.mark.parametrize("name", list(GENERAL10))
def test_adapter_parses_its_real_layout(name, general10_root):
    """Class count and names match the split file; every split is read; task info as docs/benchmarks.md."""
    root, fakes = general10_root
    ds = build(root, name)
    fake = fakes[name]
    assert ds.num_classes == len(fake.classnames)
    assert ds.classnames == fake.classnames
    for split, items in (("train", ds.train_x), ("val", ds.val), ("test", ds.test)):
        assert sorted(rows(items, ds.dataset_dir)) == sorted(
            (os.path.join(GENERAL10[name].image_dir, rel), y) for rel, y, _ in fake.split[split])
    info = ds.task_info
    assert (info.metrics[0], info.templates[0]) == BENCHMARK[name]
    assert info.keys == (name,) and info.classnames == (tuple(fake.classnames),)


def coop_draw(name: str, fake, shots: int, seed: int):
    """The oracle: CoOp's own procedure (Dassl's sampler on the global RNG seeded by set_random_seed)."""
    image_root = os.path.join(fake.dataset_dir, GENERAL10[name].image_dir)
    split = {s: [Datum(os.path.join(image_root, rel), y, 0, c) for rel, y, c in fake.split[s]]
             for s in ("train", "val")}
    sampler = DatasetBase.__new__(DatasetBase)
    random.seed(seed)
    train = sampler.generate_fewshot_dataset(split["train"], num_shots=shots)
    val = sampler.generate_fewshot_dataset(split["val"], num_shots=min(shots, 4))
    return rows(train, fake.dataset_dir), rows(val, fake.dataset_dir)


def test_fewshot_equal_alone_inside_general10_and_to_coop(tmp_path, monkeypatch):
    """Shots {1,2,4} x seeds {1,2}: member alone == member inside General-10 == CoOp's draw; cache reused."""
    alone_root, bench_root = str(tmp_path / "alone"), str(tmp_path / "bench")
    fakes = {n: write_coop_dataset(alone_root, n) for n in GENERAL10}
    for n in GENERAL10:
        write_coop_dataset(bench_root, n)
    yaml = str(CONFIGS / "general10.yaml")
    real_draw = fewshot.draw
    for shots in (1, 2, 4):
        for seed in (1, 2):
            alone = {}
            for name in GENERAL10:
                ds = build(alone_root, name, seed=seed, shots=shots)
                alone[name] = (rows(ds.train_x, ds.dataset_dir), rows(ds.val, ds.dataset_dir))
                assert alone[name] == coop_draw(name, fakes[name], shots, seed), (name, shots, seed)
                assert len(alone[name][0]) == shots * 3
            for attempt in ("drawn", "cached"):
                monkeypatch.setattr(fewshot, "draw", real_draw if attempt == "drawn" else _no_draw)
                bench = DATASET_REGISTRY.get("MultiTask")(
                    make_dataset_cfg(bench_root, seed=seed, shots=shots, yaml=yaml))
                assert bench.task_info.keys == tuple(GENERAL10)
                for t, name in enumerate(GENERAL10):
                    got = tuple(_task_rows(items, t, bench.task_info.offsets[t],
                                           os.path.join(bench_root, GENERAL10[name].dataset_dir))
                                for items in (bench.train_x, bench.val))
                    assert got == alone[name], (name, shots, seed, attempt)
            monkeypatch.setattr(fewshot, "draw", real_draw)


def _no_draw(*args, **kwargs):
    raise AssertionError("the cache should have been read")


def _task_rows(items, task: int, offset: int, dataset_dir: str) -> list[tuple[str, int]]:
    return [(os.path.relpath(d.impath, dataset_dir), d.label - offset) for d in items if d.domain == task]


def test_cache_file_is_coop_format(general10_root):
    root, fakes = general10_root
    ds = build(root, "OxfordPets", seed=3, shots=2)
    path = os.path.join(fakes["OxfordPets"].dataset_dir, "split_fewshot", "shot_2-seed_3.pkl")
    with open(path, "rb") as f:
        data = pickle.load(f)
    assert set(data) == {"train", "val"}
    assert all(isinstance(d, Datum) and os.path.isabs(d.impath) for d in data["train"] + data["val"])
    assert [d.impath for d in data["train"]] == [d.impath for d in ds.train_x]
    assert not [p for p in os.listdir(os.path.dirname(path)) if p.endswith(".tmp")]


def test_cache_survives_moving_data_root(tmp_path):
    """Cached absolute paths are re-rooted onto the current $DATA."""
    old, new = str(tmp_path / "old"), str(tmp_path / "new")
    write_coop_dataset(old, "EuroSAT")
    before = build(old, "EuroSAT", shots=2)
    expected = rows(before.train_x, before.dataset_dir), rows(before.val, before.dataset_dir)
    shutil.move(old, new)
    after = build(new, "EuroSAT", shots=2)
    assert (rows(after.train_x, after.dataset_dir), rows(after.val, after.dataset_dir)) == expected
    assert all(d.impath.startswith(new) and os.path.isfile(d.impath) for d in after.train_x + after.val)


def test_existing_coop_cache_is_used_as_is(general10_root):
    """A cache written by CoOp elsewhere (other $DATA, other choice of shots) wins over sampling."""
    root, fakes = general10_root
    fake = fakes["DescribableTextures"]
    full = build(root, "DescribableTextures")
    first = {y: next(d for d in full.train_x if d.label == y) for y in (0, 1)}
    chosen_train = [first[1], first[0]]
    chosen_val = full.val[:2]
    for d in chosen_train + chosen_val:  # as if pickled on another machine
        d._impath = d.impath.replace(root, "/elsewhere/DATA")
    path = os.path.join(fake.dataset_dir, "split_fewshot", "shot_1-seed_1.pkl")
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        pickle.dump({"train": chosen_train, "val": chosen_val}, f)
    ds = build(root, "DescribableTextures", shots=1)
    names = [os.path.basename(d.impath) for d in ds.train_x]
    assert names == [os.path.basename(d.impath) for d in chosen_train]
    assert all(d.impath.startswith(root) for d in ds.train_x + ds.val)


def test_cache_from_another_split_is_refused(general10_root):
    root, fakes = general10_root
    fake = fakes["Food101"]
    full = build(root, "Food101")
    path = os.path.join(fake.dataset_dir, "split_fewshot", "shot_1-seed_1.pkl")
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:  # a test image in the train list: not this split's cache
        pickle.dump({"train": full.test[:1], "val": full.val[:1]}, f)
    with pytest.raises(DatasetError, match=r"shot_1-seed_1.pkl.*delete it.*DATASETS.md#few-shot-sampling-and-cache"):
        build(root, "Food101", shots=1)


def test_imagenet_samples_train_only_and_tests_on_val(data_root):
    write_imagenet(data_root)
    ds = build(data_root, "ImageNet", shots=2)
    assert ds.classnames == ["tench", "goldfish", "great white shark"]
    assert len(ds.train_x) == 6 and ds.val is ds.test and len(ds.test) == 15
    with open(os.path.join(data_root, "imagenet", "split_fewshot", "shot_2-seed_1.pkl"), "rb") as f:
        assert set(pickle.load(f)) == {"train"}
    assert os.path.exists(os.path.join(data_root, "imagenet", "preprocessed.pkl"))
    again = build(data_root, "ImageNet", shots=2)  # from preprocessed.pkl and the cache
    assert rows(again.train_x, again.dataset_dir) == rows(ds.train_x, ds.dataset_dir)


def test_imagenet_variant_is_test_only(data_root):
    from fixtures_data import write_image_folder
    base = write_image_folder(data_root, "imagenet-sketch/images", ["n01443537", "n01440764"], 3)
    with open(os.path.join(os.path.dirname(base), "classnames.txt"), "w") as f:
        f.write("n01440764 tench\nn01443537 goldfish\n")
    ds = build(data_root, "ImageNetSketch", shots=1)
    assert ds.classnames == ["tench", "goldfish"] and len(ds.test) == 6 and ds.train_x == ds.test
