"""The image-feature cache: keys, reads, corrupt files, the switch, atomic writes, and
every trainer's evaluation reading it (exact, and without encoding a single image)."""
from __future__ import annotations

import copy
import json
import logging
import os
import multiprocessing
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from trainers import atomic
from trainers import feature_cache as fc

@pytest.fixture
def log(caplog):
    """The cache's records (its logger may not propagate once train.main has set up logging)."""
    logger = logging.getLogger("trainers.feature_cache")
    logger.addHandler(caplog.handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(old)


def parts(**changes) -> dict:
    base = {"weights": "abc", "backbone": ["tiny", ""], "precision": "fp32", "device": "cpu",
            "dataset": "MultiTask", "split": "test", "input": {"size": [32, 32]},
            "transform": "Compose(Resize(32))", "images": [["a/1.jpg", 0], ["b/2.jpg", 1]],
            "versions": fc.library_versions()}
    base.update(changes)
    return base


def encoder(counter: list):
    """Batches of fake features; counts the images it 'encodes'."""
    def batches():
        for y in ([0], [1]):
            counter.append(len(y))
            yield torch.full((len(y), 4), float(y[0]) + 0.5), torch.tensor(y)
    return batches


# ------------------------------------------------------------------ keys
@pytest.mark.parametrize("change", [
    {"weights": "abd"}, {"precision": "fp16"}, {"device": "cuda"}, {"dataset": "Other"},
    {"split": "val"}, {"input": {"size": [64, 64]}}, {"transform": "Compose(Resize(33))"},
    {"images": [["a/1.jpg", 0], ["b/3.jpg", 1]]}, {"images": [["a/1.jpg", 0], ["b/2.jpg", 0]]},
    {"images": [["a/1.jpg", 0]]}, {"backbone": ["ViT-B/16", ""]},
])
def test_any_changed_input_changes_the_key(change):
    assert fc.cache_key(parts()) == fc.cache_key(parts())
    assert fc.cache_key(parts(**change)) != fc.cache_key(parts())


def test_weights_fingerprint_sees_one_changed_weight(tiny_clip):
    visual = copy.deepcopy(tiny_clip.visual)
    same = copy.deepcopy(tiny_clip.visual)
    assert fc.weights_fingerprint(visual) == fc.weights_fingerprint(same)
    changed = copy.deepcopy(tiny_clip.visual)
    with torch.no_grad():
        next(changed.parameters()).view(-1)[0] += 1e-3
    assert fc.weights_fingerprint(changed) != fc.weights_fingerprint(visual)
    with torch.no_grad():  # in place, after the fingerprint was memoised
        next(visual.parameters()).view(-1)[0] += 1e-3
    assert fc.weights_fingerprint(visual) == fc.weights_fingerprint(changed)
    assert fc.weights_fingerprint(same.half()) != fc.weights_fingerprint(changed.half())
    assert fc.weights_fingerprint(visual.half()) != fc.weights_fingerprint(visual.float())


def test_describe_keys_on_root_relative_images_not_on_root_or_seed(tiny_clip, tmp_path):
    from yacs.config import CfgNode as CN
    cfg = CN({"INPUT": {"SIZE": (32, 32), "INTERPOLATION": "bicubic", "PIXEL_MEAN": [0.5] * 3,
                        "PIXEL_STD": [0.2] * 3},
              "MODEL": {"BACKBONE": {"NAME": "tiny", "PRETRAINED_TAG": ""}},
              "DATASET": {"NAME": "MultiTask", "ROOT": str(tmp_path / "a")}, "SEED": 1})
    items = [SimpleNamespace(impath=str(tmp_path / "a" / "x" / f"{i}.jpg"), label=i) for i in range(3)]
    loader = SimpleNamespace(dataset=SimpleNamespace(transform="T", data_source=items))
    first = fc.describe(cfg, tiny_clip.visual, "fp32", "cpu", loader, "test")
    assert first["images"] == [["x/0.jpg", 0], ["x/1.jpg", 1], ["x/2.jpg", 2]]
    moved = cfg.clone()
    moved.DATASET.ROOT, moved.SEED = str(tmp_path / "b"), 2
    for item in items:
        item.impath = item.impath.replace(f"{os.sep}a{os.sep}", f"{os.sep}b{os.sep}")
    assert fc.cache_key(fc.describe(moved, tiny_clip.visual, "fp32", "cpu", loader, "test")) == \
        fc.cache_key(first)


# ------------------------------------------------------------ read/write
def test_second_call_reads_and_encodes_nothing(tmp_path, log):
    calls: list = []
    a = fc.cached_features(str(tmp_path), parts(), "MultiTask", "test", encoder(calls))
    assert sum(calls) == 2 and "computed" in log.text and "stored in" in log.text
    log.clear()
    b = fc.cached_features(str(tmp_path), parts(), "MultiTask", "test", encoder(calls))
    assert sum(calls) == 2 and "read from" in log.text
    path = fc.cache_path(str(tmp_path), "MultiTask", "test", fc.cache_key(parts()))
    assert os.stat(path).st_mode & 0o044 == 0o044 & atomic._MODE  # readable by others, as umask allows
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert os.listdir(tmp_path) == [os.path.basename(fc.cache_path(str(tmp_path), "MultiTask", "test",
                                                                   fc.cache_key(parts())))]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other key", "other size"])
def test_unreadable_file_is_recomputed_with_a_warning_naming_it(tmp_path, log, damage):
    calls: list = []
    good = fc.cached_features(str(tmp_path), parts(), "MultiTask", "test", encoder(calls))
    path = fc.cache_path(str(tmp_path), "MultiTask", "test", fc.cache_key(parts()))
    if damage == "garbage":
        open(path, "wb").write(b"not a torch file")
    elif damage == "truncated":
        blob = open(path, "rb").read()
        open(path, "wb").write(blob[: len(blob) // 2])
    else:
        data = torch.load(path, weights_only=True)
        if damage == "other key":
            data["key"] = "0" * 64
        else:
            data["features"] = data["features"][:1]
        torch.save(data, path)
    log.clear()
    again = fc.cached_features(str(tmp_path), parts(), "MultiTask", "test", encoder(calls))
    assert sum(calls) == 4 and path in log.text and "unreadable" in log.text
    assert torch.equal(again[0], good[0])
    assert fc.read(path, fc.cache_key(parts()), 2) is not None  # repaired


def test_failed_write_keeps_the_features_and_leaves_no_file(tmp_path, log, monkeypatch):
    def full_disk(obj, f):
        f.write(b"half")  # a file object: the atomic writer streams into its temporary file
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(fc.torch, "save", full_disk)
    feats, labels = fc.cached_features(str(tmp_path), parts(), "MultiTask", "test", encoder([]))
    assert feats.shape == (2, 4) and labels.tolist() == [0, 1]
    assert os.listdir(tmp_path) == [] and "Could not store" in log.text


def write_and_read(folder: str, tag: float, rounds: int = 20) -> None:
    """Write the same entry ``rounds`` times with features all equal to ``tag``; read after each."""
    parts = {"images": [["x.jpg", 0]] * 64}
    key = fc.cache_key(parts)
    path = fc.cache_path(folder, "d", "test", key)
    for _ in range(rounds):
        fc.write(path, key, parts, torch.full((64, 256), tag), torch.zeros(64, dtype=torch.long))
        got = fc.read(path, key, 64)
        if got is None or got[0].unique().numel() != 1:
            raise SystemExit("read a partial or mixed file")


def test_parallel_writers_never_leave_a_partial_file(tmp_path):
    """Two processes write and read the same entry at once: every read sees one whole file."""
    ctx = multiprocessing.get_context("fork")  # cheap: torch is imported already
    procs = [ctx.Process(target=write_and_read, args=(str(tmp_path), tag)) for tag in (1.0, 2.0)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].endswith(".pt")  # no temporary file left


# ------------------------------------------------------------ trainers
dassl = pytest.importorskip("dassl", reason="Dassl is not installed")

import train  # noqa: E402

# trainer: (config, extra options, flags): evaluation-only where training is not needed. CoOp
# evaluates through exactly SoftCPT's code (MultiTaskPromptTrainer.feature_logits), so it is
# left out to keep the suite short.
TRAINER_RUNS = {
    "SoftCPT": ("tiny", (), ("--eval-only",)),
    "CoCoOp": ("tiny", (), ("--eval-only",)),
    "ZeroshotCLIP": ("tiny", (), ()),
    "LinearProbeCLIP": ("tiny", ("TRAINER.LINEAR_PROBE.C_GRID", "[0.1, 10.0]"), ()),  # + train, val
}


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture
def image_encodes(monkeypatch) -> list:
    """Images passed through any CLIP image tower (one entry per call: the batch size)."""
    from open_clip.transformer import VisionTransformer
    calls: list = []
    forward = VisionTransformer.forward

    def counting(self, x):
        calls.append(len(x))
        return forward(self, x)
    monkeypatch.setattr(VisionTransformer, "forward", counting)
    return calls


def run(trainer, root, out, cache_dir, *opts):
    cfg, extra, flags = TRAINER_RUNS[trainer]
    train.main(["--root", root, "--seed", "1", "--trainer", trainer,
                "--dataset-config-file", "configs/datasets/toy.yaml",
                "--config-file", f"configs/trainers/{trainer}/{cfg}.yaml", "--output-dir", str(out),
                *flags, "DATASET.NUM_SHOTS", "2", "TEST.FEATURE_CACHE_DIR", str(cache_dir), *extra, *opts])
    with open(os.path.join(out, "results.json")) as f:
        report = json.load(f)
    with open(os.path.join(out, "log.txt")) as f:
        return report, f.read()


@pytest.mark.parametrize("trainer", sorted(TRAINER_RUNS))
def test_every_trainer_reads_the_cache_exactly_and_encodes_no_image(trainer, toy_root, tmp_path,
                                                                    image_encodes):
    cache = tmp_path / "features"
    off, _ = run(trainer, toy_root, tmp_path / "off", cache, "TEST.FEATURE_CACHE", "False")
    assert image_encodes and not cache.exists()  # switched off: encoded, nothing stored
    image_encodes.clear()
    first, log1 = run(trainer, toy_root, tmp_path / "first", cache)
    encoded = sum(image_encodes)
    assert encoded > 0 and "computed in" in log1 and "read from" not in log1
    image_encodes.clear()
    second, log2 = run(trainer, toy_root, tmp_path / "second", cache)
    assert image_encodes == [] and "read from" in log2 and "computed in" not in log2
    for report in (first, second):  # identical accuracies, task by task
        assert report["score"] == off["score"]
        assert [t["correct"] for t in report["tasks"]] == [t["correct"] for t in off["tasks"]]
    splits = {"test"} | ({"train", "val"} if trainer == "LinearProbeCLIP" else set())
    assert {f.split("-")[1] for f in os.listdir(cache)} == splits


def zero_shot_trainer(toy_root, out, *opts):
    """A ZeroshotCLIP trainer on the toy benchmark, built as train.py builds it."""
    from dassl.engine import build_trainer
    args = train.build_parser().parse_args([
        "--root", toy_root, "--seed", "1", "--trainer", "ZeroshotCLIP", "--output-dir", str(out),
        "--dataset-config-file", "configs/datasets/toy.yaml",
        "--config-file", "configs/trainers/ZeroshotCLIP/tiny.yaml", "DATASET.NUM_SHOTS", "2", *opts])
    return build_trainer(train.setup_cfg(args))


def test_stored_features_equal_the_image_encoder_within_1e5(toy_root, tmp_path):
    """The cache file holds what CLIP's image tower gives for each test image, in order."""
    cache = tmp_path / "features"
    run("ZeroshotCLIP", toy_root, tmp_path / "run", cache)
    trainer = zero_shot_trainer(toy_root, tmp_path)
    (path,) = [cache / f for f in os.listdir(cache)]
    stored = torch.load(path, weights_only=True)
    with torch.no_grad():
        ref = torch.cat([F.normalize(trainer.model.image_encoder(b["img"]), dim=-1)
                         for b in trainer.test_loader])
    labels = torch.tensor([d.label for d in trainer.dm.dataset.test])
    assert torch.equal(stored["labels"], labels)
    assert (stored["features"] - ref).abs().max() < 1e-5


def test_trainer_overriding_only_model_inference_keeps_its_image_loop(toy_root, tmp_path, caplog):
    """A user trainer written for Dassl's loop (model_inference on images) still evaluates its way."""
    from trainers.zsclip import ZeroshotCLIP

    class ImageOnly(ZeroshotCLIP):
        calls = 0

        def model_inference(self, images):
            ImageOnly.calls += 1
            return super().model_inference(images)

    trainer = zero_shot_trainer(toy_root, tmp_path, "TEST.FEATURE_CACHE_DIR", str(tmp_path / "features"))
    trainer.__class__ = ImageOnly
    logger = logging.getLogger("trainers.base")
    logger.addHandler(caplog.handler)
    try:
        trainer.test()
    finally:
        logger.removeHandler(caplog.handler)
    assert ImageOnly.calls == len(trainer.test_loader) and "overrides model_inference" in caplog.text
    assert not (tmp_path / "features").exists()
