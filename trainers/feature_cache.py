"""Image features of an evaluation split, encoded once and shared by every run of a sweep.

The test transform is deterministic and the image encoder frozen, so the
normalised features u of a split depend only on: the image encoder's weights
(a hash of its state), the precision and device type, the dataset and split,
the transform (its settings and the transform object itself) and the image list
(root-relative paths and labels); plus the torch and open_clip versions, whose
kernels could round differently. All of these make up the key of a file
``<folder>/<dataset>-<split>-<digest>.pt``; the seed, the shot count and the
trainer are not part of it, so every run of a sweep reads the same file.

Writes go to a temporary file in the same folder, then ``os.replace``: runs in
parallel never see half a file, and the last writer wins with the same content.
A file that cannot be read, or whose stored key differs, is encoded again with a
warning naming it. ``TEST.FEATURE_CACHE False`` turns the cache off and
``TEST.FEATURE_CACHE_DIR`` moves it (default ``$SOFTCPT_CACHE/features``).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import os.path as osp
import re
import time
from typing import Callable, Iterable, Iterator, Optional

import torch
from torch import nn

from trainers.atomic import atomic_torch_save

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when what is stored or how it is computed changes
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
    h = hashlib.blake2b(digest_size=20)
    for name, tensor in state:
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, no copy
    digest = h.hexdigest()
    object.__setattr__(module, _FINGERPRINT_ATTR, (signature, digest))  # not a submodule or buffer
    return digest


def image_list(data_source: Iterable, root: str) -> list[list]:
    """``[[path relative to root (absolute if outside), label], ...]`` of Dassl ``Datum``s."""
    root = osp.abspath(root) if root else ""
    out = []
    for item in data_source:
        path = osp.abspath(item.impath)
        if root and path.startswith(root + os.sep):
            path = osp.relpath(path, root)
        out.append([path, int(item.label)])
    return out


def cache_key(parts: dict) -> str:
    """sha256 of the parts as canonical JSON: any change of any part changes the key."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def library_versions() -> dict:
    try:
        open_clip = importlib.metadata.version("open_clip_torch")
    except importlib.metadata.PackageNotFoundError:  # a source checkout
        open_clip = "unknown"
    return {"torch": str(torch.__version__), "open_clip": open_clip, "format": FORMAT_VERSION}


def cache_path(folder: str, dataset: str, split: str, key: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{dataset}-{split}")
    return osp.join(folder, f"{safe}-{key[:24]}.pt")


def read(path: str, key: str, num_images: int) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """Features and labels stored at ``path`` under ``key``; None (with a warning) if unusable."""
    if not osp.exists(path):
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        feats, labels = data["features"], data["labels"]
        if data.get("key") != key:
            raise ValueError("its stored key differs from its name's")
        if feats.ndim != 2 or len(feats) != num_images or labels.shape != (num_images,):
            raise ValueError(f"it holds {tuple(feats.shape)} features for {num_images} images")
    except Exception as err:  # truncated, corrupt, another format, ...
        logger.warning("Image-feature cache %s is unreadable (%s): encoding the images again.",
                       path, err)
        return None
    return feats, labels


def write(path: str, key: str, parts: dict, feats: torch.Tensor, labels: torch.Tensor) -> bool:
    """Store atomically (temporary file in the same folder, then rename); False if it failed.

    A failure (read-only or full disk) only costs the cache: the run goes on.
    """
    try:
        # For whoever inspects the file: plain JSON types (torch.load(weights_only) reads them);
        # the image list only by its length.
        described = json.loads(json.dumps({k: v for k, v in parts.items() if k != "images"},
                                          default=str))
        described["num_images"] = len(labels)
        atomic_torch_save({"key": key, "parts": described, "features": feats, "labels": labels}, path)
        return True
    except OSError as err:
        logger.warning("Could not store image features at %s (%s): they will be encoded "
                       "again next time (TEST.FEATURE_CACHE_DIR sets the folder).", path, err)
        return False


def compute(batches: Batches) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate ``(features, labels)`` batches on the CPU, features in float32."""
    feats, labels = [], []
    for u, y in batches:
        feats.append(u.float().cpu())
        labels.append(y.cpu())
    return torch.cat(feats), torch.cat(labels)


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
    n = len(parts["images"])
    stored = read(path, key, n)
    if stored is not None:
        logger.info("Image features of %s/%s (%d images): read from %s", dataset, split, n, path)
        return stored
    start = time.perf_counter()
    feats, labels = compute(batches())
    wrote = write(path, key, parts, feats, labels)
    logger.info("Image features of %s/%s (%d images): computed in %.1f s%s", dataset, split, n,
                time.perf_counter() - start, f", stored in {path}" if wrote else "")
    return feats, labels


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
    """
    wrapper = loader.dataset  # Dassl's DatasetWrapper
    inp = cfg.INPUT
    return {
        "weights": weights_fingerprint(visual),
        "backbone": [cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.get("PRETRAINED_TAG", "")],
        "precision": precision,
        "device": torch.device(device).type,
        "dataset": cfg.DATASET.NAME,
        "split": split,
        "input": {"size": list(inp.SIZE), "interpolation": inp.INTERPOLATION,
                  "mean": list(inp.PIXEL_MEAN), "std": list(inp.PIXEL_STD)},
        "transform": repr(wrapper.transform),
        "images": image_list(wrapper.data_source, cfg.DATASET.ROOT),
        "versions": library_versions(),
    }


def is_deterministic(transform) -> bool:
    """False for a transform with random steps: its features must not be stored."""
    return "Random" not in repr(transform)
