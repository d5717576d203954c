"""Image features of an evaluation split, encoded once and shared by every run of a sweep.

The image encoder is frozen, so when the evaluation transform is deterministic
the normalised features u of a split depend only on: the image encoder's weights
(a hash of its state), the backbone, the precision and device type, the dataset
and split, the transform (each step's type and parameters; see
``describe_transform``), the image list (root-relative paths, labels, and each
file's size and modification time, or with ``TEST.FEATURE_CACHE_HASH`` a hash of
its bytes: see ``image_list``), and the versions of torch, torchvision,
Pillow, Dassl and open_clip, which read, resize and encode the images. All of
these make up the key of a file ``<folder>/<dataset>-<split>-<digest>.pt``; the
seed, the shot count and the trainer are not part of it, so every run of a
sweep reads the same file.

A transform is deterministic only if every step is on a list of known
deterministic operations (``DETERMINISTIC``: torchvision's Compose, Resize,
CenterCrop, ToTensor, PILToTensor, ConvertImageDtype, Normalize and Dassl's
InstanceNormalization, the steps Dassl's test transform is built from);
anything else (ColorJitter, RandAugment, Dassl's GaussianNoise or Cutout, a
user's class) is encoded every time and never stored.

Encoding leaves the training's random state as it was (``rng_untouched``, and a
private generator for the loader), so a run gives the same numbers with the
cache cold, warm or off, also with ``TEST.FINAL_MODEL best_val``. Jobs that miss
the same file together encode it once: the first holds a lock
(``.<file>.lock``, filelock) while it encodes, the others wait and read.

Files are written by the project's atomic writer (atomic_files.py) and carry a
checksum of their features and labels: a file that cannot be read, whose key,
shape, labels or checksum differ is never used; it is encoded again with a
warning naming it. ``TEST.FEATURE_CACHE False`` turns the cache off and
``TEST.FEATURE_CACHE_DIR`` moves it (default ``$SOFTCPT_CACHE/features``).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import os.path as osp
import random
import re
import time
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from trainers.run.atomic import atomic_torch_save

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # bump when what is stored or how it is computed changes (2: checksum, stats)
_FINGERPRINT_ATTR = "_softcpt_weights_fingerprint"
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]  # (features (B, D), labels (B,))


def default_folder() -> str:
    """``$SOFTCPT_CACHE/features`` (``~/.cache/softcpt/features``), next to the tiny backbone."""
    root = os.environ.get("SOFTCPT_CACHE", osp.expanduser("~/.cache/softcpt"))
    return osp.join(root, "features")


def weights_fingerprint(module: nn.Module) -> str:
    """blake2b of every tensor of ``module``'s state (names, dtypes, shapes, bytes).

    Hashing the weights themselves (not the checkpoint file's name) also tells
    random-weight builds apart. Memoised on the module, and computed again when
    a tensor was replaced, cast or changed in place (its storage, dtype or
    version counter differs).
    """
    state = sorted(module.state_dict().items())
    signature = tuple((t.data_ptr(), t.dtype, t._version) for _, t in state)
    memo = getattr(module, _FINGERPRINT_ATTR, None)
    if memo is not None and memo[0] == signature:
        return memo[1]
    digest = tensors_fingerprint(state)
    object.__setattr__(module, _FINGERPRINT_ATTR, (signature, digest))  # not a submodule or buffer
    return digest


def tensors_fingerprint(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """blake2b (40 hex digits) of named tensors, sorted by name: each name, dtype, shape and bytes."""
    h = hashlib.blake2b(digest_size=20)
    for name, tensor in sorted(named, key=lambda item: item[0]):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, no copy
    return h.hexdigest()


HASH_THREADS = 8  # files read at once: on a network file system each file's latency dominates
_CHUNK = 1 << 20


def content_digest(path: str) -> Optional[str]:
    """``"sha256:<hex>"`` of the file's bytes; None if it cannot be read (reading it for the
    evaluation then fails with Dassl's own message). sha256 is the fastest of hashlib's
    digests on CPUs with SHA instructions (measured in scripts/bench/bench_feature_hash.py)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)  # releases the GIL: HASH_THREADS files hash in parallel
    except OSError:
        return None
    return "sha256:" + h.hexdigest()


def image_list(data_source: Iterable, root: str, content_hash: bool = False) -> list[list]:
    """``[[path, label, size, identity], ...]`` of Dassl ``Datum``s.

    The path is relative to ``root`` (absolute if outside it), so moving ``$DATA``
    keeps the key. ``identity`` is the modification time in ns (default) or, with
    ``content_hash`` (TEST.FEATURE_CACHE_HASH), the digest of the file's bytes
    (``content_digest``). With the time, a file replaced under the same name is a
    new key only if its size or time differ (``cp -p``, ``rsync -a``, ``touch -r``
    can keep both); with the digest, exactly when its bytes differ, at the cost
    of reading every file. None for a missing file.
    """
    root = osp.abspath(root) if root else ""
    items = list(data_source)
    paths = [osp.abspath(item.impath) for item in items]
    labels = [int(item.label) for item in items]
    digests: list = [None] * len(paths)
    if content_hash:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(HASH_THREADS) as pool:
            digests = list(pool.map(content_digest, paths))
    out = []
    for path, label, digest in zip(paths, labels, digests):
        try:
            st = os.stat(path)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:  # reading it will fail with Dassl's own message
            size = mtime = None
        if root and path.startswith(root + os.sep):
            path = osp.relpath(path, root)
        out.append([path, label, size, digest if content_hash else mtime])
    return out


def cache_key(parts: dict) -> str:
    """sha256 of the parts as canonical JSON: any change of any part changes the key.

    Only plain JSON values are accepted (no ``default=str``), so no object's repr,
    and with it no memory address, can slip into a key and make it unrepeatable.
    """
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _version(dist: str, module: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:  # a source checkout: ask the module
        try:
            return str(getattr(__import__(module), "__version__", "unknown"))
        except ImportError:
            return "absent"


@functools.lru_cache(maxsize=None)
def library_versions() -> dict:
    """Versions of what reads (Pillow, Dassl), resizes (torchvision) and encodes (torch, open_clip)."""
    return {"torch": str(torch.__version__), "torchvision": _version("torchvision", "torchvision"),
            "pillow": _version("pillow", "PIL"), "dassl": _version("dassl", "dassl"),
            "open_clip": _version("open_clip_torch", "open_clip"), "format": FORMAT_VERSION}


def cache_path(folder: str, dataset: str, split: str, key: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{dataset}-{split}")
    return osp.join(folder, f"{safe}-{key[:24]}.pt")


def checksum(feats: torch.Tensor, labels: torch.Tensor) -> str:
    """sha256 of the features' and labels' dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for t in (feats, labels):
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def expected_labels(parts: dict) -> torch.Tensor:
    """The labels of the image list, in order: what a stored file must hold."""
    return torch.tensor([entry[1] for entry in parts["images"]], dtype=torch.long)


def read(path: str, key: str,
         labels: torch.Tensor) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """Features and labels stored at ``path`` under ``key``; None (with a warning) if unusable.

    Unusable: not a torch file, another key, other shapes, labels other than
    ``labels`` (the image list's), or contents that do not match the stored
    checksum (bytes changed on disk). Such a file is never used.
    """
    if not osp.exists(path):
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        feats, stored = data["features"], data["labels"]
        if data.get("key") != key:
            raise ValueError("its stored key differs from its name's")
        n = len(labels)
        if feats.ndim != 2 or len(feats) != n or stored.shape != (n,):
            raise ValueError(f"it holds {tuple(feats.shape)} features for {n} images")
        if data.get("checksum") != checksum(feats, stored):
            raise ValueError("its contents do not match their checksum (damaged on disk)")
        if not torch.equal(stored.long(), labels):
            raise ValueError("its labels differ from the image list's")
    except Exception as err:  # truncated, corrupt, another format, ...
        logger.warning("Image-feature cache file %s is unusable (%s): not used; encoding the "
                       "images again.", path, err)
        return None
    return feats, stored


def write(path: str, key: str, parts: dict, feats: torch.Tensor, labels: torch.Tensor) -> bool:
    """Store atomically (temporary file in the same folder, then rename); False if it failed.

    A failure (read-only or full disk) only costs the cache: the run goes on.
    """
    try:
        # For whoever inspects the file: plain JSON types (torch.load(weights_only) reads them);
        # the image list only by its length.
        described = {k: v for k, v in parts.items() if k != "images"}
        described["num_images"] = len(labels)
        atomic_torch_save({"key": key, "parts": described, "features": feats, "labels": labels,
                           "checksum": checksum(feats, labels)}, path)
        return True
    except OSError as err:
        logger.warning("Could not store image features at %s (%s): they will be encoded "
                       "again next time (TEST.FEATURE_CACHE_DIR sets the folder).", path, err)
        return False


@contextlib.contextmanager
def rng_untouched() -> Iterator[None]:
    """Run the body and put every random state back: torch (CPU, and CUDA once initialised),
    Python's and NumPy's, so that encoding images never shifts the training's random draws."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        devices = list(range(torch.cuda.device_count()))
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def ordered_loader(loader: DataLoader) -> DataLoader:
    """The images of ``loader`` in data-source order, with its batch size and workers (and their
    init function: trainers/run/stops.py's, which makes them ignore the stop signals).

    Its own generator gives the base seed that iterating a DataLoader draws (and
    its workers' seeds), which would otherwise come from torch's global
    generator, i.e. the training's.
    """
    return DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=False,
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                      worker_init_fn=loader.worker_init_fn, generator=torch.Generator().manual_seed(0))


def compute(batches: Batches) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate ``(features, labels)`` batches on the CPU, features in float32.

    The random states are the same after as before (``rng_untouched``).
    """
    feats, labels = [], []
    with rng_untouched():
        for u, y in batches:
            feats.append(u.float().cpu())
            labels.append(y.cpu())
    return torch.cat(feats), torch.cat(labels)


def _file_signature(path: str) -> Optional[tuple]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


@contextlib.contextmanager
def _encoding_lock(path: str, what: str) -> Iterator[None]:
    """Hold ``.<file>.lock`` next to ``path`` while encoding it; wait if another job holds it.

    Where no lock can be taken (a read-only folder, a file system without locks),
    encode without one: the atomic write still keeps the file whole.
    """
    from filelock import FileLock, Timeout

    folder, name = osp.split(path)
    lock = FileLock(osp.join(folder, f".{name}.lock"))
    held = False
    try:
        os.makedirs(folder, exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            logger.info("Image features of %s: another job is encoding them (lock %s); waiting "
                        "to read its file.", what, lock.lock_file)
            lock.acquire()
        held = True
    except OSError as err:
        logger.debug("No lock for %s (%s): encoding without one.", path, err)
    try:
        yield
    finally:
        if held:
            lock.release()


def cached_features(folder: str, parts: dict, dataset: str, split: str,
                    batches: Callable[[], Batches]) -> tuple[torch.Tensor, torch.Tensor]:
    """Read the split's features from the cache, or compute them with ``batches()`` and store them.

    Args:
        folder: the cache folder.
        parts: everything the features depend on; ``parts["images"]`` is the image list.
        dataset, split: readable names for the file and the log.
        batches: yields ``(features (B, D), labels (B,))`` in image-list order.

    Returns:
        features ``(N, D)`` float32 and labels ``(N,)``, on the CPU.
    """
    key = cache_key(parts)
    path = cache_path(folder, dataset, split, key)
    labels = expected_labels(parts)
    n, what = len(labels), f"{dataset}/{split}"
    seen = _file_signature(path)
    stored = read(path, key, labels)
    if stored is None:
        with _encoding_lock(path, what):
            if _file_signature(path) != seen:  # another job wrote it while this one waited
                stored = read(path, key, labels)
            if stored is None:
                start = time.perf_counter()
                feats, got = compute(batches())
                wrote = write(path, key, parts, feats, got)
                logger.info("Image features of %s (%d images): computed in %.1f s%s", what, n,
                            time.perf_counter() - start, f", stored in {path}" if wrote else "")
                return feats, got
    logger.info("Image features of %s (%d images): read from %s", what, n, path)
    return stored


def chunks(feats: torch.Tensor, labels: torch.Tensor,
           size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The stored features in evaluation batches of ``size``."""
    for i in range(0, len(labels), size):
        yield feats[i:i + size], labels[i:i + size]


def describe(cfg, visual: nn.Module, precision: str, device: torch.device | str, loader,
             split: str) -> dict:
    """Everything the features of ``loader``'s images depend on (the cache key's parts).

    ``INPUT.TRANSFORMS`` is left out on purpose: it lists the training
    augmentations; what it changes at test time (normalisation) is in the
    transform's own description.

    Raises:
        ValueError: the loader's transform is not deterministic (``is_deterministic``).
    """
    wrapper = loader.dataset  # Dassl's DatasetWrapper
    transform = describe_transform(wrapper.transform)
    if transform is None:
        raise ValueError(f"the transform {wrapper.transform!r} is not deterministic: its features "
                         "cannot be cached")
    inp = cfg.INPUT
    return {
        "weights": weights_fingerprint(visual),
        "backbone": [cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.get("PRETRAINED_TAG", "")],
        "precision": str(precision),
        "device": torch.device(device).type,
        "dataset": cfg.DATASET.NAME,
        "split": split,
        "input": {"size": list(inp.SIZE), "interpolation": inp.INTERPOLATION,
                  "mean": list(inp.PIXEL_MEAN), "std": list(inp.PIXEL_STD)},
        "reader": _type_name(type(wrapper)),  # what reads the images and applies the transform
        "transform": transform,
        "images": image_list(wrapper.data_source, cfg.DATASET.ROOT,
                             content_hash=bool(cfg.TEST.get("FEATURE_CACHE_HASH", False))),
        "versions": library_versions(),
    }


# ------------------------------------------------------------------ transforms
def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _plain(value):
    """A transform parameter as plain JSON: numbers, strings, lists (an enum by its value)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, torch.dtype):
        return str(value)
    if hasattr(value, "value") and not isinstance(value, (int, float, str)):  # InterpolationMode
        return _plain(value.value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"no plain description of {type(value).__name__}")


@functools.lru_cache(maxsize=None)
def deterministic_steps() -> dict[type, tuple[str, ...]]:
    """Known deterministic transform types (exact types: a subclass may add randomness)
    and the attributes that decide their output."""
    import torchvision.transforms as T

    steps: dict[type, tuple[str, ...]] = {
        T.Resize: ("size", "interpolation", "max_size", "antialias"),
        T.CenterCrop: ("size",),
        T.ToTensor: (),
        T.PILToTensor: (),
        T.ConvertImageDtype: ("dtype",),
        T.Normalize: ("mean", "std"),
    }
    try:  # what Dassl's test transform adds for INPUT.TRANSFORMS ["instance_norm"]
        from dassl.data.transforms.transforms import InstanceNormalization
        steps[InstanceNormalization] = ("eps",)
    except ImportError:
        pass
    return steps


def describe_transform(transform) -> Optional[list]:
    """``[type, {parameter: value}]`` of each step, or None if any step is not known to be
    deterministic (then its features must not be stored). ``Compose`` lists its steps."""
    import torchvision.transforms as T

    if type(transform) is T.Compose:
        inner = [describe_transform(t) for t in transform.transforms]
        return None if any(d is None for d in inner) else [_type_name(T.Compose), inner]
    attrs = deterministic_steps().get(type(transform))
    if attrs is None:
        return None
    return [_type_name(type(transform)), {a: _plain(getattr(transform, a, None)) for a in attrs}]


def is_deterministic(transform) -> bool:
    """True if every step is a known deterministic operation (``describe_transform``)."""
    return describe_transform(transform) is not None
