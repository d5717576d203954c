"""The CLIP backbone every trainer uses, loaded through open_clip.

``MODEL.BACKBONE.NAME`` accepts:

* CoOp's names (``RN50``, ``RN101``, ``ViT-B/32``, ``ViT-B/16``, ``ViT-L/14``, ...)
  with OpenAI's weights; a file CLIP already downloaded to ``~/.cache/clip`` is
  used before any download is tried;
* a path to an OpenAI-format checkpoint file (a JIT archive or a state dict);
* any open_clip model name, with ``MODEL.BACKBONE.PRETRAINED_TAG`` naming its
  weights (a tag such as ``laion2b_s34b_b79k`` or a file);
* ``tiny``: a small CLIP with seeded random weights, written to an OpenAI-format
  checkpoint and loaded through the same path as real weights. For tests and
  offline demos only: its accuracies mean nothing.
* ``tiny-b16``: the same idea with ViT-B/16's structure at small size (4 attention
  heads and 3 layers in each tower, open_clip's residual blocks), for tests whose
  code splits heads or stacks layers; ``tiny`` has one head and two layers.

``MODEL.BACKBONE.PRETRAINED False`` builds the architecture with random weights
(used by the benchmark script, which needs no download).
"""
from __future__ import annotations

import logging
import os
import os.path as osp
import pickle
import warnings
import zipfile
from typing import Optional

import open_clip
import torch
from torch import nn

from config import PRECISIONS, ConfigError
from trainers.parts.feature_cache import tensors_fingerprint
from trainers.run.atomic import atomic_torch_save

logger = logging.getLogger(__name__)

# CoOp's backbone names -> open_clip architecture names.
COOP_TO_OPENCLIP = {
    "RN50": "RN50",
    "RN101": "RN101",
    "RN50x4": "RN50x4",
    "RN50x16": "RN50x16",
    "RN50x64": "RN50x64",
    "ViT-B/32": "ViT-B-32",
    "ViT-B/16": "ViT-B-16",
    "ViT-L/14": "ViT-L-14",
    "ViT-L/14@336px": "ViT-L-14-336",
}
TINY = "tiny"
TINY_B16 = "tiny-b16"
OPENAI_CACHE = osp.expanduser("~/.cache/clip")


class WeightsError(RuntimeError):
    """CLIP's weights cannot be loaded: the message names the file and the fix (one line)."""


def openai_cache_file(name: str) -> str:
    """Where the ``clip`` package stores a CoOp-named model, e.g. ``~/.cache/clip/ViT-B-16.pt``."""
    return osp.join(OPENAI_CACHE, name.replace("/", "-") + ".pt")


def resolve_precision(prec: str, device: torch.device | str) -> str:
    """CoOp's PREC on this device: fp16 and amp need a GPU, so CPU runs use fp32."""
    if prec not in PRECISIONS:
        raise ValueError(f"PREC must be one of {PRECISIONS}, got {prec!r}")
    if prec != "fp32" and torch.device(device).type != "cuda":
        logger.warning("PREC %s needs a GPU; running in fp32 on %s", prec, device)
        return "fp32"
    return prec


def load_clip(
    name: str,
    pretrained_tag: str = "",
    precision: str = "fp32",
    device: torch.device | str = "cpu",
    pretrained: bool = True,
) -> nn.Module:
    """Build the frozen CLIP model a trainer prompts.

    Args:
        name: backbone name, checkpoint path or ``tiny`` (see module docstring).
        pretrained_tag: open_clip weights for a non-OpenAI model (a tag or a file).
        precision: ``fp16`` keeps CLIP in half precision (CoOp's default on GPU);
            ``fp32`` and ``amp`` keep it in float32. Call ``resolve_precision`` first.
        device: where the model goes.
        pretrained: False gives the architecture with random weights.

    Returns:
        An open_clip ``CLIP`` model in eval mode with every parameter frozen.
    """
    weights_dtype = "fp16" if precision == "fp16" else "fp32"
    with warnings.catch_warnings():
        # open_clip tries torch.jit.load first, which now warns that it is deprecated.
        warnings.simplefilter("ignore", FutureWarning)
        model = _build(name, pretrained_tag, weights_dtype, device, pretrained)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _build(name: str, pretrained_tag: str, weights_dtype: str, device: torch.device | str,
           pretrained: bool) -> nn.Module:
    if name in TINY_MODELS:
        logger.warning("Backbone %r has random weights: its accuracies mean nothing.", name)
        model = open_clip.load_openai_model(tiny_checkpoint(name=name), precision=weights_dtype,
                                            device=device)
    elif osp.isfile(name):
        model = load_weights_file(name, weights_dtype, device)
    elif name not in COOP_TO_OPENCLIP and (name.endswith((".pt", ".pth", ".bin", ".tar"))
                                          or name.startswith(("/", "~", "."))):
        raise WeightsError(f"MODEL.BACKBONE.NAME {name}: no such weights file (from {os.getcwd()}); "
                           "give the checkpoint's path, or a backbone name such as RN50 or ViT-B/16 "
                           "(INSTALL.md#clip-weights).")
    elif not pretrained:
        model = open_clip.create_model(_openclip_name(name), pretrained=None,
                                       precision=weights_dtype, device=device)
    elif name in COOP_TO_OPENCLIP and pretrained_tag in ("", "openai"):
        model = _load_openai_weights(name, weights_dtype, device)
    else:
        model = _load_openclip_weights(name, pretrained_tag, weights_dtype, device)
    return model


def check_backbone(name: str, pretrained_tag: str = "", pretrained: bool = True) -> None:
    """Refuse a backbone ``load_clip`` cannot build, before data or model is built: the same
    ConfigError ``load_clip`` would raise (the name, the valid ones, INSTALL.md#clip-weights)."""
    if name in TINY_MODELS or osp.isfile(name):
        return
    if not pretrained or (name in COOP_TO_OPENCLIP and pretrained_tag in ("", "openai")):
        _openclip_name(name)
        return
    _openclip_arch_and_tag(name, pretrained_tag)


def _openclip_name(name: str) -> str:
    if name in COOP_TO_OPENCLIP:
        return COOP_TO_OPENCLIP[name]
    if name not in open_clip.list_models():
        raise ConfigError(
            f"MODEL.BACKBONE.NAME {name!r} is not a file, 'tiny', one of CoOp's names "
            f"{sorted(COOP_TO_OPENCLIP)}, or an open_clip model (open_clip.list_models()). "
            "See INSTALL.md#clip-weights.")
    return name


def _load_openai_weights(name: str, precision: str, device: torch.device | str) -> nn.Module:
    cached = openai_cache_file(name)
    if osp.isfile(cached):
        logger.info("Loading %s from %s", name, cached)
        return load_weights_file(cached, precision, device)
    try:
        return open_clip.load_openai_model(COOP_TO_OPENCLIP[name], precision=precision, device=device)
    except Exception as err:  # no network, hub down, ...
        raise WeightsError(
            f"no weights file for MODEL.BACKBONE.NAME {name}: {cached} does not exist and the "
            f"download failed ({_first_line(err)}). Put the OpenAI checkpoint there (the file the "
            "'clip' package downloads, copied from a machine with network access), or set "
            "MODEL.BACKBONE.NAME to the file's path (INSTALL.md#clip-weights).") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:160]}" if text else type(err).__name__


# What a weights file starts with: a zip archive (TorchScript, as OpenAI ships them, or
# torch.save since PyTorch 1.6) or a pickle (older torch.save).
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_MAGIC = b"\x80"


def check_weights_file(path: str) -> None:
    """Refuse, naming the file and the fix, a weights file that is empty, truncated or not a
    checkpoint at all (a web page saved in its place), before torch reads it and advises
    ``weights_only=False`` (unsafe: it would run whatever the file holds)."""
    size = osp.getsize(path)
    with open(path, "rb") as f:
        head = f.read(64)
    fix = (f"download it again (or copy it from a machine that has it) to {path} "
           "(INSTALL.md#clip-weights)")
    if size == 0:
        raise WeightsError(f"the weights file {path} is empty: {fix}.")
    if head.startswith(ZIP_MAGIC):
        if not zipfile.is_zipfile(path):  # the archive's directory sits at its end
            raise WeightsError(f"the weights file {path} is truncated ({size:,} bytes, the end of "
                               f"its archive is missing): {fix}.")
        return
    if head.startswith(PICKLE_MAGIC):
        return
    shown = head[:32].decode("utf-8", "replace").strip().replace("\n", " ")
    what = "a web page" if shown.lower().startswith(("<!doctype", "<html", "<?xml", "<head")) else \
        "not a PyTorch checkpoint"
    raise WeightsError(f"the weights file {path} is {what} (it starts with {shown!r}): {fix}.")


def load_weights_file(path: str, precision: str, device: torch.device | str) -> nn.Module:
    """A CLIP from an OpenAI-format file (TorchScript or state dict), checked first; a file torch
    still cannot read is named with torch's first line, never with advice to load it unsafely."""
    check_weights_file(path)
    try:
        return open_clip.load_openai_model(path, precision=precision, device=device)
    except (RuntimeError, pickle.UnpicklingError, EOFError, KeyError, ValueError) as err:
        reason = _first_line(err).split(" Re-running `torch.load`")[0].split("(1) In PyTorch")[0]
        raise WeightsError(f"cannot read the weights file {path} ({reason.strip()}): it is damaged "
                           "or not a CLIP checkpoint; download it again (INSTALL.md#clip-weights).") \
            from None


def _load_openclip_weights(name: str, tag: str, precision: str,
                           device: torch.device | str) -> nn.Module:
    arch = _openclip_arch_and_tag(name, tag)
    try:
        return open_clip.create_model(arch, pretrained=tag, precision=precision, device=device)
    except Exception as err:
        raise RuntimeError(
            f"Could not load open_clip weights {arch}/{tag} ({err}). Download them on a machine "
            "with network access and set MODEL.BACKBONE.PRETRAINED_TAG to the file's path. "
            "See INSTALL.md#clip-weights.") from err


def _openclip_arch_and_tag(name: str, tag: str) -> str:
    """open_clip's architecture for ``name``; a ConfigError without weights to load into it."""
    arch = _openclip_name(name)
    if not tag:
        raise ConfigError(f"MODEL.BACKBONE.NAME {name!r} is an open_clip model: set "
                          f"MODEL.BACKBONE.PRETRAINED_TAG to one of "
                          f"{open_clip.list_pretrained_tags_by_model(arch)} or to a weights file "
                          "(INSTALL.md#clip-weights).")
    return arch


# ----------------------------------------------------------------------------
# Which weights: the file they come from, fingerprinted as stored
# ----------------------------------------------------------------------------
def weights_file(name: str, pretrained_tag: str = "", pretrained: bool = True) -> Optional[str]:
    """The file ``load_clip`` reads the weights from; None for random weights (``pretrained``
    False). Call it after ``load_clip``: a download has then put the file in its cache."""
    if name in TINY_MODELS:
        return tiny_checkpoint(name=name)
    if osp.isfile(name):
        return name
    if not pretrained:
        return None
    if name in COOP_TO_OPENCLIP and pretrained_tag in ("", "openai"):
        cached = openai_cache_file(name)
        if osp.isfile(cached):
            return cached
        # where open_clip's download of OpenAI's weights puts them
        url = open_clip.get_pretrained_url(COOP_TO_OPENCLIP[name], "openai")
        return osp.join(OPENAI_CACHE, osp.basename(url))
    if osp.isfile(pretrained_tag):
        return pretrained_tag
    cfg = open_clip.get_pretrained_cfg(_openclip_name(name), pretrained_tag)
    return open_clip.download_pretrained(cfg) or None  # the cached file, once downloaded


def file_fingerprint(path: str) -> str:
    """blake2b of the tensors a weights file stores (names, dtypes, shapes, bytes), read on the
    CPU as stored: the same file gives the same fingerprint whatever precision and device the
    model is then loaded in (docs/reliability.md#which-backbone-a-checkpoint-needs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated
        try:  # OpenAI's files are TorchScript archives, as open_clip reads them first
            state = torch.jit.load(path, map_location="cpu").state_dict()
        except RuntimeError:
            state = open_clip.factory.load_state_dict(path, device="cpu")
    return tensors_fingerprint(state.items())


# ----------------------------------------------------------------------------
# The tiny backbones
# ----------------------------------------------------------------------------
TINY_SEED = 0
# Bump a version when its architecture below changes (the file name carries it).
TINY_VERSIONS = {TINY: 1, TINY_B16: 1}


def tiny_checkpoint(directory: Optional[str] = None, name: str = TINY) -> str:
    """Path of a tiny CLIP's OpenAI-format checkpoint, written on first use.

    The file lives in ``$SOFTCPT_CACHE`` (default ``~/.cache/softcpt``); its
    weights depend only on ``TINY_SEED``, so every machine writes the same file.
    """
    directory = directory or os.environ.get("SOFTCPT_CACHE", osp.expanduser("~/.cache/softcpt"))
    stem = "tiny-clip" if name == TINY else f"{name}-clip"
    path = osp.join(directory, f"{stem}-v{TINY_VERSIONS[name]}.pt")
    if not osp.isfile(path):
        # Whole or not at all: a concurrent or interrupted run never reads half a file.
        atomic_torch_save(TINY_MODELS[name]().state_dict(), path)
    return path


def _seeded_clip(embed_dim: int, vision: open_clip.CLIPVisionCfg, text: open_clip.CLIPTextCfg) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        return open_clip.CLIP(embed_dim=embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=True)


def build_tiny_clip() -> nn.Module:
    """A 2-layer ViT image tower (32 px) and 2-layer text tower, seeded random weights.

    Widths are 64 because open_clip infers 64-wide attention heads from an
    OpenAI state dict; the vocabulary and context length are CLIP's, so the real
    tokenizer applies.
    """
    vision = open_clip.CLIPVisionCfg(layers=2, width=64, patch_size=8, image_size=32)
    text = open_clip.CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=2)
    return _seeded_clip(32, vision, text)


def build_tiny_b16_clip() -> nn.Module:
    """ViT-B/16's structure at small size: 4 heads of 64 dimensions and 3 layers per tower.

    As ViT-B/16: a ViT image tower with a class token, a causal text tower of
    open_clip's ResidualAttentionBlock with QuickGELU, CLIP's vocabulary and 77
    tokens, a joint embedding narrower than the text width. Widths are 4 x 64
    because an OpenAI state dict gives open_clip the head count as width / 64.
    """
    vision = open_clip.CLIPVisionCfg(layers=3, width=256, patch_size=8, image_size=32)
    text = open_clip.CLIPTextCfg(context_length=77, vocab_size=49408, width=256, heads=4, layers=3)
    return _seeded_clip(128, vision, text)


TINY_MODELS = {TINY: build_tiny_clip, TINY_B16: build_tiny_b16_clip}
