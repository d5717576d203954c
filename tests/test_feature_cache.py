"""The image-feature cache: keys, reads, corrupt files, the switch, atomic writes, and
every trainer's evaluation reading it (exact, and without encoding a single image)."""
from __future__ import annotations

import copy
import json
import logging
import os
import multiprocessing
import random
import re
import time
from types import SimpleNamespace

import numpy as np

import pytest
import torch
import torch.nn.functional as F

from trainers.parts import feature_cache as fc


@pytest.fixture
def log(caplog):
    """The cache's records (its logger may not propagate once train.main has set up logging)."""
    logger = logging.getLogger("trainers.parts.feature_cache")
    logger.addHandler(caplog.handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(old)


def parts(**changes) -> dict:
    base = {"weights": "abc", "backbone": ["tiny", ""], "precision": "fp32", "device": "cpu",
            "dataset": "MultiTask", "split": "test", "input": {"size": [32, 32]},
            "transform": ["Resize", {"size": 32}], "versions": fc.library_versions(),
            "images": [[f"c/{i}.jpg", label, 100 + i, 1_000 + i] for i, label in enumerate(LABELS)]}
    base.update(changes)
    return base


LABELS = [3, 1, 4, 1, 5, 2, 6, 0]  # distinctive int64 bytes, so that a test can find them in a file


def encoder(counter: list, dim: int = 4):
    """Batches of fixed pseudo-random features for the images of ``parts()``; counts the images
    it 'encodes'."""
    feats = torch.randn(len(LABELS), dim, generator=torch.Generator().manual_seed(7))

    def batches():
        for i in range(0, len(LABELS), 3):
            y = torch.tensor(LABELS[i:i + 3])
            counter.append(len(y))
            yield feats[i:i + 3], y
    return batches


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


def test_key_accepts_only_plain_values():
    """An object would enter the key by its repr, memory address included: refused."""
    class Step:
        pass
    with pytest.raises(TypeError):
        fc.cache_key(parts(transform=Step()))


# ------------------------------------------------------------ read/write
def test_second_call_reads_and_encodes_nothing(tmp_path, log):
    calls: list = []
    a = fc.cached_features(str(tmp_path), parts(), "MultiTask", "test", encoder(calls))
    assert sum(calls) == len(LABELS) and "computed" in log.text and "stored in" in log.text
    log.clear()
    b = fc.cached_features(str(tmp_path), parts(), "MultiTask", "test", encoder(calls))
    assert sum(calls) == len(LABELS) and "read from" in log.text
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    name = os.path.basename(fc.cache_path(str(tmp_path), "MultiTask", "test", fc.cache_key(parts())))
    assert [f for f in os.listdir(tmp_path) if not f.endswith(".lock")] == [name]


def flip(path: str, needle: bytes, offset: int = 0, count: int = 8) -> None:
    """Invert ``count`` bytes of the file at ``needle``'s only occurrence (plus ``offset``)."""
    blob = bytearray(open(path, "rb").read())
    at = blob.find(needle)
    assert at >= 0 and blob.find(needle, at + 1) < 0, "the bytes to damage are not unique"
    for i in range(at + offset, at + offset + count):
        blob[i] ^= 0xFF
    open(path, "wb").write(bytes(blob))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other key", "other size",
                                    "8 feature bytes flipped", "a label byte flipped",
                                    "labels and checksum rewritten"])
def test_damaged_file_is_never_used_but_encoded_again_with_a_warning_naming_it(tmp_path, log, damage):
    calls: list = []
    good = fc.cached_features(str(tmp_path), parts(), "MultiTask", "test", encoder(calls))
    path = fc.cache_path(str(tmp_path), "MultiTask", "test", fc.cache_key(parts()))
    if damage == "garbage":
        open(path, "wb").write(b"not a torch file")
    elif damage == "truncated":
        blob = open(path, "rb").read()
        open(path, "wb").write(blob[: len(blob) // 2])
    elif damage == "8 feature bytes flipped":
        flip(path, good[0].numpy().tobytes(), offset=12)
    elif damage == "a label byte flipped":  # once an IndexError in the evaluator
        flip(path, good[1].numpy().tobytes(), offset=8 * 2, count=1)
    else:
        data = torch.load(path, weights_only=True)
        if damage == "other key":
            data["key"] = "0" * 64
        elif damage == "other size":
            data["features"] = data["features"][:1]
        else:  # consistent with its checksum, but not the image list's labels
            data["labels"] = data["labels"].flip(0)
            data["checksum"] = fc.checksum(data["features"], data["labels"])
        torch.save(data, path)
    log.clear()
    again = fc.cached_features(str(tmp_path), parts(), "MultiTask", "test", encoder(calls))
    assert sum(calls) == 2 * len(LABELS), "the damaged file was used"
    assert path in log.text and "unusable" in log.text and "not used" in log.text
    assert torch.equal(again[0], good[0]) and torch.equal(again[1], good[1])
    assert fc.read(path, fc.cache_key(parts()), fc.expected_labels(parts())) is not None  # repaired


def test_failed_write_keeps_the_features_and_leaves_no_file(tmp_path, log, monkeypatch):
    def full_disk(obj, f):
        f.write(b"half")  # a file object: the atomic writer streams into its temporary file
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(fc.torch, "save", full_disk)
    feats, labels = fc.cached_features(str(tmp_path), parts(), "MultiTask", "test", encoder([]))
    assert feats.shape == (len(LABELS), 4) and labels.tolist() == LABELS
    assert [f for f in os.listdir(tmp_path) if not f.endswith(".lock")] == []
    assert "Could not store" in log.text


def test_unwritable_folder_still_gives_the_features(tmp_path, log):
    """A cache folder that cannot be made (a file is in the way; works as root too): no lock, no
    file, the features all the same."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    feats, labels = fc.cached_features(str(blocker / "features"), parts(), "MultiTask", "test",
                                       encoder([]))
    assert labels.tolist() == LABELS and "Could not store" in log.text


def write_and_read(folder: str, tag: float, rounds: int = 20) -> None:
    """Write the same entry ``rounds`` times with features all equal to ``tag``; read after each."""
    parts = {"images": [["x.jpg", 0]] * 64}
    key = fc.cache_key(parts)
    path = fc.cache_path(folder, "d", "test", key)
    labels = fc.expected_labels(parts)
    for _ in range(rounds):
        fc.write(path, key, parts, torch.full((64, 256), tag), labels)
        got = fc.read(path, key, labels)
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


def miss_together(folder: str, barrier, counter: str, out: str) -> None:
    """One job of a sweep: wait for the others, then ask the cache (slow encoding)."""
    calls: list = []
    slow = encoder(calls)

    def batches():
        for batch in slow():
            time.sleep(0.2)  # every job has looked for the file before the first one stores it
            yield batch
        with open(counter, "a") as f:
            f.write("encoded\n")
    barrier.wait(timeout=60)
    feats, labels = fc.cached_features(folder, parts(), "MultiTask", "test", batches)
    torch.save({"features": feats, "labels": labels}, out)


def test_jobs_that_miss_together_encode_once_and_all_read_it(tmp_path):
    ctx = multiprocessing.get_context("fork")
    jobs = 3
    barrier, counter = ctx.Barrier(jobs), str(tmp_path / "encodes.txt")
    folder = str(tmp_path / "features")
    procs = [ctx.Process(target=miss_together, args=(folder, barrier, counter, str(tmp_path / f"{i}.pt")))
             for i in range(jobs)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert open(counter).read().count("encoded") == 1
    got = [torch.load(tmp_path / f"{i}.pt", weights_only=True) for i in range(jobs)]
    expected = fc.compute(encoder([])())
    for g in got:
        assert torch.equal(g["features"], expected[0]) and g["labels"].tolist() == LABELS


# ------------------------------------------------------------ random state
def assert_random_state_kept(body) -> None:
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()
    body()
    assert torch.equal(torch.get_rng_state(), states[0]), "torch's global generator moved"
    assert random.getstate() == states[1], "Python's random moved"
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), states[2])), \
        "NumPy's random moved"


def test_iterating_the_ordered_loader_draws_nothing_from_the_global_generator(tmp_path):
    loader = real_loader(image_folder(tmp_path), base_cfg(tmp_path))
    assert_random_state_kept(lambda: list(fc.ordered_loader(loader)))


def test_encoding_keeps_every_random_state_even_with_a_random_transform(tmp_path):
    """A random transform (not cached, encoded on every evaluation) draws from torch and Python's
    random in this process: compute puts both back."""
    import torchvision.transforms as T
    cfg = base_cfg(tmp_path)
    loader = real_loader(image_folder(tmp_path), cfg, T.Compose([
        T.RandomResizedCrop(32), T.ColorJitter(0.4), T.ToTensor()]))

    def encode():
        for batch in fc.ordered_loader(loader):
            np.random.rand()  # what a user's encoder might do
            yield batch["img"].flatten(1), batch["label"]
    assert_random_state_kept(lambda: fc.compute(encode()))


# ------------------------------------------------------------ keys from real loaders
dassl = pytest.importorskip("dassl", reason="Dassl is not installed")

N_IMAGES = 4


def image_folder(root) -> list[str]:
    """``N_IMAGES`` small PNGs of different colours under ``root/images``."""
    from PIL import Image
    paths = []
    for i in range(N_IMAGES):
        path = os.path.join(root, "images", f"{i}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path):
            Image.new("RGB", (40, 40), (60 * i, 255 - 50 * i, 90)).save(path)
        paths.append(path)
    return paths


def base_cfg(root, **changes):
    from dassl.config import get_cfg_default
    cfg = get_cfg_default()
    cfg.INPUT.SIZE = (32, 32)
    cfg.INPUT.INTERPOLATION = "bicubic"
    cfg.INPUT.TRANSFORMS = ["normalize"]
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATASET.NAME = "MultiTask"
    cfg.DATASET.ROOT = str(root)
    cfg.MODEL.BACKBONE.NAME = "tiny"
    for key, value in changes.items():  # "INPUT.TRANSFORMS": [...]
        *path, name = key.split(".")
        node = cfg
        for part in path:
            node = node[part]
        node[name] = value
    return cfg


def real_loader(paths, cfg, transform=None, labels=None):
    """Dassl's test loader over ``paths`` with Dassl's test transform built from ``cfg``."""
    from dassl.data.data_manager import build_data_loader
    from dassl.data.datasets import Datum
    from dassl.data.transforms import build_transform
    labels = labels or [i % 2 for i in range(len(paths))]
    items = [Datum(impath=p, label=y, classname=str(y)) for p, y in zip(paths, labels)]
    return build_data_loader(cfg, sampler_type="SequentialSampler", data_source=items, batch_size=2,
                             tfm=transform or build_transform(cfg, is_train=False), is_train=False)


class Cache:
    """A cache folder and a counting encoder: ``misses(...)`` says whether a call encoded."""

    def __init__(self, folder):
        self.folder = str(folder)

    def misses(self, cfg, visual, loader, precision="fp32", split="test", device="cpu") -> bool:
        described = fc.describe(cfg, visual, precision, device, loader, split)
        encoded: list = []

        def batches():
            for batch in loader:
                encoded.append(len(batch["label"]))
                yield torch.zeros(len(batch["label"]), 4), batch["label"]
        fc.cached_features(self.folder, described, cfg.DATASET.NAME, split, batches)
        return bool(encoded)


@pytest.fixture
def warm(tmp_path, tiny_clip):
    """A cache holding the features of the reference loader; its images; a fresh copy of the
    reference model's image tower."""
    paths = image_folder(tmp_path)
    cache = Cache(tmp_path / "features")
    visual = copy.deepcopy(tiny_clip.visual)
    assert cache.misses(base_cfg(tmp_path), visual, real_loader(paths, base_cfg(tmp_path)))
    return SimpleNamespace(cache=cache, paths=paths, root=tmp_path, visual=visual,
                           fresh_visual=lambda: copy.deepcopy(tiny_clip.visual))


def test_nothing_changed_hits(warm):
    """Everything built again (config, loader, transform objects, model copy): a hit."""
    cfg = base_cfg(warm.root)
    assert not warm.cache.misses(cfg, warm.fresh_visual(), real_loader(warm.paths, cfg))


def test_instance_norm_transform_repeats_its_key(warm):
    """Dassl's InstanceNormalization (deterministic) is described by its eps, not its address."""
    cfg = base_cfg(warm.root, **{"INPUT.TRANSFORMS": ["normalize", "instance_norm"]})
    assert warm.cache.misses(cfg, warm.visual, real_loader(warm.paths, cfg))
    cfg = base_cfg(warm.root, **{"INPUT.TRANSFORMS": ["normalize", "instance_norm"]})
    assert not warm.cache.misses(cfg, warm.fresh_visual(), real_loader(warm.paths, cfg))


def test_changed_weights_miss(warm):
    visual = warm.fresh_visual()
    with torch.no_grad():
        next(visual.parameters()).view(-1)[0] += 1e-3
    assert warm.cache.misses(base_cfg(warm.root), visual, real_loader(warm.paths, base_cfg(warm.root)))


@pytest.mark.parametrize("name", ["tiny-b16", "ViT-B/16"])
def test_changed_backbone_name_misses(warm, name):
    cfg = base_cfg(warm.root, **{"MODEL.BACKBONE.NAME": name})
    assert warm.cache.misses(cfg, warm.visual, real_loader(warm.paths, cfg))


@pytest.mark.parametrize("precision", ["fp16", "bf16", "amp"])
def test_changed_precision_misses(warm, precision):
    cfg = base_cfg(warm.root)
    assert warm.cache.misses(cfg, warm.visual, real_loader(warm.paths, cfg), precision=precision)


def test_changed_split_misses(warm):
    cfg = base_cfg(warm.root)
    assert warm.cache.misses(cfg, warm.visual, real_loader(warm.paths, cfg), split="val")


@pytest.mark.parametrize("change", ["instance_norm added", "other resize", "other mean",
                                    "other interpolation"])
def test_changed_transform_misses(warm, change):
    """Transforms that differ where the config keys in the key (INPUT.SIZE, INTERPOLATION, MEAN,
    STD) do not: only the transform's own description can tell them apart."""
    import torchvision.transforms as T
    from torchvision.transforms import InterpolationMode as I
    cfg = base_cfg(warm.root)
    mean, std = cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD
    transform = {
        "instance_norm added": None,
        "other resize": T.Compose([T.Resize(36, interpolation=I.BICUBIC), T.CenterCrop(32),
                                   T.ToTensor(), T.Normalize(mean, std)]),
        "other mean": T.Compose([T.Resize(32, interpolation=I.BICUBIC), T.CenterCrop(32),
                                 T.ToTensor(), T.Normalize([0.5, 0.5, 0.5], std)]),
        "other interpolation": T.Compose([T.Resize(32, interpolation=I.BILINEAR), T.CenterCrop(32),
                                          T.ToTensor(), T.Normalize(mean, std)]),
    }[change]
    if transform is None:  # INPUT.TRANSFORMS is not in the key: the transform alone says it
        cfg.INPUT.TRANSFORMS = ["normalize", "instance_norm"]
    assert warm.cache.misses(base_cfg(warm.root), warm.visual, real_loader(warm.paths, cfg, transform))


def test_same_transform_built_by_hand_hits(warm):
    """The key describes what a transform does, not how it was built."""
    import torchvision.transforms as T
    from torchvision.transforms import InterpolationMode as I
    cfg = base_cfg(warm.root)
    transform = T.Compose([T.Resize(32, interpolation=I.BICUBIC), T.CenterCrop((32, 32)), T.ToTensor(),
                           T.Normalize(cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)])
    assert not warm.cache.misses(cfg, warm.visual, real_loader(warm.paths, cfg, transform))


def test_image_file_touched_misses(warm):
    """Same bytes, newer modification time (e.g. copied over with new contents of the same size)."""
    st = os.stat(warm.paths[2])
    os.utime(warm.paths[2], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    cfg = base_cfg(warm.root)
    assert warm.cache.misses(cfg, warm.visual, real_loader(warm.paths, cfg))


def test_image_file_replaced_keeping_its_time_misses(warm):
    """Other contents and size under the same name and modification time (cp -p, rsync -a)."""
    from PIL import Image
    st = os.stat(warm.paths[1])
    Image.new("RGB", (48, 40), (1, 2, 3)).save(warm.paths[1])
    os.utime(warm.paths[1], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(warm.paths[1]).st_size != st.st_size
    cfg = base_cfg(warm.root)
    assert warm.cache.misses(cfg, warm.visual, real_loader(warm.paths, cfg))


def test_other_images_or_labels_miss(warm):
    cfg = base_cfg(warm.root)
    assert warm.cache.misses(cfg, warm.visual, real_loader(warm.paths[:-1], cfg))
    assert warm.cache.misses(cfg, warm.visual, real_loader(warm.paths, cfg, labels=[1, 1, 0, 0]))


def test_moved_data_root_hits(warm, tmp_path_factory):
    """Paths are relative to $DATA and times are kept by a move: moving $DATA keeps the key."""
    new_root = tmp_path_factory.mktemp("moved")
    os.rename(os.path.join(warm.root, "images"), os.path.join(new_root, "images"))
    paths = [p.replace(str(warm.root), str(new_root)) for p in warm.paths]
    cfg = base_cfg(new_root)
    assert not warm.cache.misses(cfg, warm.visual, real_loader(paths, cfg))


# ------------------------------------------------------------ what the key sees (docs/speed.md)
def documented_key_parts() -> list[str]:
    """The first column of docs/speed.md's table under "What the cache key sees"."""
    text = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "docs", "speed.md")).read()
    section = text.split("### What the cache key sees", 1)[1].split("\n#", 1)[0]
    return re.findall(r"^\| `(\w+)` \|", section, flags=re.M)


class OtherReader:
    """Stands for another image reader (a subclass of Dassl's DatasetWrapper), built lazily."""

    @staticmethod
    def make():
        from dassl.data.data_manager import DatasetWrapper
        return type("OtherReader", (DatasetWrapper,), {})


def _changed_part(warm, part: str, monkeypatch) -> dict:
    """The arguments of ``Cache.misses`` with only ``part`` of the key changed, through the
    inputs a user changes (config, model, loader, library)."""
    import torchvision.transforms as T
    from dassl.data.data_manager import build_data_loader
    from dassl.data.datasets import Datum
    from dassl.data.transforms import build_transform
    cfg = base_cfg(warm.root)
    same_transform = build_transform(cfg, is_train=False)
    args = dict(cfg=cfg, visual=warm.fresh_visual(), loader=real_loader(warm.paths, cfg))
    if part == "weights":
        with torch.no_grad():
            next(args["visual"].parameters()).view(-1)[0] += 1e-3
    elif part == "backbone":
        args["cfg"] = base_cfg(warm.root, **{"MODEL.BACKBONE.PRETRAINED_TAG": "laion2b_s34b_b79k"})
    elif part == "precision":
        args["precision"] = "fp16"
    elif part == "device":
        args["device"] = "cuda"  # only its type enters the key: no GPU needed
    elif part == "dataset":
        args["cfg"] = base_cfg(warm.root, **{"DATASET.NAME": "Toy"})
    elif part == "split":
        args["split"] = "val"
    elif part == "input":  # the config's INPUT keys alone; the transform object kept the same
        args["cfg"] = base_cfg(warm.root, **{"INPUT.PIXEL_STD": [0.5, 0.5, 0.5]})
        args["loader"] = real_loader(warm.paths, cfg, same_transform)
    elif part == "reader":
        items = [Datum(impath=p, label=i % 2, classname=str(i % 2)) for i, p in enumerate(warm.paths)]
        args["loader"] = build_data_loader(cfg, sampler_type="SequentialSampler", data_source=items,
                                           batch_size=2, tfm=same_transform, is_train=False,
                                           dataset_wrapper=OtherReader.make())
    elif part == "transform":
        args["loader"] = real_loader(warm.paths, cfg, T.Compose([*same_transform.transforms[:-1]]))
    elif part == "images":
        args["loader"] = real_loader(warm.paths, cfg, labels=[1, 0, 1, 0])
    elif part == "versions":
        versions = dict(fc.library_versions(), pillow="0.0.1")
        monkeypatch.setattr(fc, "library_versions", lambda: versions)
    else:
        raise AssertionError(f"no change written for the documented key part {part!r}")
    return args


def test_the_documented_key_parts_are_the_keys_parts(warm):
    cfg = base_cfg(warm.root)
    described = fc.describe(cfg, warm.visual, "fp32", "cpu", real_loader(warm.paths, cfg), "test")
    assert sorted(documented_key_parts()) == sorted(described)


@pytest.mark.parametrize("part", documented_key_parts())
def test_each_documented_key_part_changed_alone_misses(warm, part, monkeypatch):
    """docs/speed.md#what-the-cache-key-sees, row by row: that part alone changed is a new key."""
    cfg = base_cfg(warm.root)
    before = fc.describe(cfg, warm.visual, "fp32", "cpu", real_loader(warm.paths, cfg), "test")
    args = _changed_part(warm, part, monkeypatch)
    after = fc.describe(args["cfg"], args["visual"], args.get("precision", "fp32"), args.get("device", "cpu"),
                        args["loader"], args.get("split", "test"))
    assert [k for k in before if before[k] != after[k]] == [part]  # that part, and only it, changed
    assert warm.cache.misses(**args)


def replace_keeping_size_and_time(path: str, colour) -> None:
    """Other pixels under ``path``, padded to the old size after the image's end, old time back."""
    from PIL import Image
    import io
    st = os.stat(path)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, "PNG")
    blob = buf.getvalue()
    assert len(blob) <= st.st_size
    with open(path, "wb") as f:
        f.write(blob + b"\0" * (st.st_size - len(blob)))  # PNG readers stop at IEND
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(path).st_size, os.stat(path).st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def test_by_default_a_replacement_keeping_size_and_time_is_not_seen(warm):
    """The documented limit of the default key (docs/speed.md#what-the-cache-key-sees)."""
    replace_keeping_size_and_time(warm.paths[1], (255, 0, 0))
    cfg = base_cfg(warm.root)
    assert not warm.cache.misses(cfg, warm.visual, real_loader(warm.paths, cfg))


def test_content_hash_sees_a_replacement_keeping_size_and_time(warm):
    hashed = base_cfg(warm.root, **{"TEST.FEATURE_CACHE_HASH": True})
    assert warm.cache.misses(hashed, warm.visual, real_loader(warm.paths, hashed))  # its own key
    assert not warm.cache.misses(hashed, warm.visual, real_loader(warm.paths, hashed))
    replace_keeping_size_and_time(warm.paths[1], (255, 0, 0))
    assert warm.cache.misses(hashed, warm.visual, real_loader(warm.paths, hashed))


def test_content_hash_ignores_a_new_time_on_the_same_bytes(warm):
    hashed = base_cfg(warm.root, **{"TEST.FEATURE_CACHE_HASH": True})
    assert warm.cache.misses(hashed, warm.visual, real_loader(warm.paths, hashed))
    st = os.stat(warm.paths[2])
    os.utime(warm.paths[2], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert not warm.cache.misses(hashed, warm.visual, real_loader(warm.paths, hashed))


def test_content_digest_is_the_sha256_of_the_bytes(tmp_path):
    import hashlib
    path = tmp_path / "a.bin"
    blob = bytes(range(256)) * 9000  # over two read chunks
    path.write_bytes(blob)
    assert fc.content_digest(str(path)) == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert fc.content_digest(str(tmp_path / "missing")) is None


# ------------------------------------------------------------ which transforms are cached
@pytest.mark.parametrize("choices", [["normalize"], ["normalize", "instance_norm"], []])
def test_dassl_test_transforms_are_deterministic(tmp_path, choices):
    from dassl.data.transforms import build_transform
    cfg = base_cfg(tmp_path, **{"INPUT.TRANSFORMS": choices})
    assert fc.is_deterministic(build_transform(cfg, is_train=False))


@pytest.mark.parametrize("choice", ["colorjitter", "gaussian_noise", "cutout", "randaugment",
                                    "randaugment_fixmatch", "random_flip", "random_crop",
                                    "random_resized_crop", "randomgrayscale", "gaussian_blur"])
def test_random_operations_are_not_deterministic(tmp_path, choice):
    """Dassl's training transform with one random operation; names without "Random" included."""
    from dassl.data.transforms import build_transform
    cfg = base_cfg(tmp_path, **{"INPUT.TRANSFORMS": [choice, "normalize"]})
    assert not fc.is_deterministic(build_transform(cfg, is_train=True))


def test_unknown_or_subclassed_steps_are_not_deterministic():
    import torchvision.transforms as T

    class JitteredResize(T.Resize):  # a subclass may draw at random: its type is not on the list
        pass
    assert fc.is_deterministic(T.Compose([T.Resize(32), T.ToTensor()]))
    assert not fc.is_deterministic(T.Compose([JitteredResize(32), T.ToTensor()]))
    assert not fc.is_deterministic(T.Compose([T.Resize(32), T.Lambda(lambda x: x), T.ToTensor()]))
    assert not fc.is_deterministic([T.ToTensor()])  # a list: Dassl gives several images


# ------------------------------------------------------------ trainers
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


@pytest.mark.slow  # 4 x 3 runs, about 3 s per trainer
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
    assert {f.split("-")[1] for f in os.listdir(cache) if f.endswith(".pt")} == splits


@pytest.mark.slow  # four zero-shot evaluations of the toy benchmark (about 17 s)
def test_images_replaced_keeping_size_and_time_are_seen_with_the_content_hash(tmp_path):
    """The issue's case end to end: 10 test images replaced in place, size and time kept. The
    default key serves the old features (documented); TEST.FEATURE_CACHE_HASH True encodes
    again, and exactly the 10 replaced images' features change."""
    root, cache = str(tmp_path / "data"), tmp_path / "features"

    def zero_shot(name, *opts):
        before = set(os.listdir(cache)) if cache.exists() else set()
        _, log = run("ZeroshotCLIP", root, tmp_path / name, cache, *opts)
        new = [f for f in set(os.listdir(cache)) - before if f.endswith(".pt")]
        return log, [torch.load(cache / f, weights_only=True)["features"] for f in new]

    _, (default,) = zero_shot("before")
    log, (hashed,) = zero_shot("hashed", "TEST.FEATURE_CACHE_HASH", "True")
    assert "computed in" in log and torch.equal(hashed, default)  # its own key; the same features
    folder = os.path.join(root, "toy", "colours")
    with open(os.path.join(folder, "split_imagefolder.json")) as f:
        test_rows = json.load(f)["test"]
    for rel, _, _ in test_rows[:10]:
        replace_keeping_size_and_time(os.path.join(folder, rel), (0, 0, 0))
    log, stored = zero_shot("stale")
    assert "computed in" not in log and stored == []  # the default's blind spot: old features
    log, (seen,) = zero_shot("seen", "TEST.FEATURE_CACHE_HASH", "True")
    assert "computed in" in log
    assert int((seen != hashed).any(dim=1).sum()) == 10


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
    (path,) = [cache / f for f in os.listdir(cache) if f.endswith(".pt")]
    stored = torch.load(path, weights_only=True)
    with torch.no_grad():
        ref = torch.cat([F.normalize(trainer.model.image_encoder(b["img"]), dim=-1)
                         for b in trainer.test_loader])
    labels = torch.tensor([d.label for d in trainer.dm.dataset.test])
    assert torch.equal(stored["labels"], labels)
    assert (stored["features"] - ref).abs().max() < 1e-5


@pytest.mark.slow  # two evaluation runs
@pytest.mark.parametrize("damage", ["8 feature bytes flipped", "a label byte flipped"])
def test_run_with_a_damaged_cache_file_warns_reencodes_and_scores_the_same(toy_root, tmp_path, damage):
    """What a user saw: a damaged file changed the score silently, or ended in an IndexError."""
    cache = tmp_path / "features"
    first, _ = run("ZeroshotCLIP", toy_root, tmp_path / "first", cache)
    (path,) = [str(cache / f) for f in os.listdir(cache) if f.endswith(".pt")]
    stored = torch.load(path, weights_only=True)
    if damage == "a label byte flipped":
        flip(path, stored["labels"].numpy().tobytes(), offset=8 * 5, count=1)
    else:
        flip(path, stored["features"].numpy().tobytes(), offset=40)
    again, log = run("ZeroshotCLIP", toy_root, tmp_path / "again", cache)
    assert f"Image-feature cache file {path} is unusable" in log and "computed in" in log
    assert again["score"] == first["score"] and again["tasks"] == first["tasks"]


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
    logger = logging.getLogger("trainers.parts.base")
    logger.addHandler(caplog.handler)
    try:
        trainer.test()
    finally:
        logger.removeHandler(caplog.handler)
    assert ImageOnly.calls == len(trainer.test_loader) and "overrides model_inference" in caplog.text
    assert not (tmp_path / "features").exists()


def trained(root, out, cache_dir, *opts) -> tuple[dict, dict, str]:
    """A 2-epoch SoftCPT training kept by best_val: results.json, every saved tensor, log.txt."""
    import glob
    train.main(["--root", root, "--seed", "1", "--trainer", "SoftCPT",
                "--dataset-config-file", "configs/datasets/toy.yaml",
                "--config-file", "configs/trainers/SoftCPT/tiny.yaml", "--output-dir", str(out),
                "DATASET.NUM_SHOTS", "2", "OPTIM.MAX_EPOCH", "2", "TEST.FINAL_MODEL", "best_val",
                "TEST.FEATURE_CACHE_DIR", str(cache_dir), *opts])
    saved = {}
    for path in sorted(glob.glob(os.path.join(out, "*", "model*.pth.tar*"))):
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        for name, tensor in ckpt["state_dict"].items():
            saved[f"{os.path.relpath(path, out)}:{name}"] = tensor
    with open(os.path.join(out, "results.json")) as f:
        report = json.load(f)
    with open(os.path.join(out, "log.txt")) as f:
        return report, saved, f.read()


@pytest.mark.slow
def test_training_is_bit_identical_with_the_cache_off_cold_and_warm_under_best_val(toy_root, tmp_path):
    """best_val evaluates the val split after every epoch, between the epochs' random draws:
    encoding (cache off or cold) must not move the training's random state, so the prompts
    learnt and the scores are the same bits as when the features are read (warm)."""
    cache = tmp_path / "features"
    off = trained(toy_root, tmp_path / "off", cache, "TEST.FEATURE_CACHE", "False")
    cold = trained(toy_root, tmp_path / "cold", cache)
    warm = trained(toy_root, tmp_path / "warm", cache)
    assert "computed in" in cold[2]
    assert "computed in" not in warm[2] and "read from" in warm[2]
    for name, (report, saved, _) in {"cold": cold, "warm": warm}.items():
        assert report["score"] == off[0]["score"], name
        assert report["tasks"] == off[0]["tasks"], name
        assert saved.keys() == off[1].keys() and saved, name
        differ = [k for k in saved if not torch.equal(saved[k], off[1][k])]
        assert differ == [], f"{name}: {differ}"
