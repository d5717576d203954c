"""Does a checkpoint belong to this run? Who saved it, on which backbone, for which head.

A checkpoint records the trainer and (SoftCPT) variant that saved it, the frozen
CLIP it was trained on (name, open_clip tag and a fingerprint of its weights file,
the same under every PREC and device), and the classes and tasks of its benchmark.
``check_compatible`` compares them with this run's before a resume or an ``--eval-only`` load, and refuses with a
CheckpointError that says what to change: another trainer or variant, another
backbone, a parameter the head does not have, per-class (per-task) contexts
for other classes (tasks), or another shape (N_CTX, the backbone's width).

The effective config a checkpoint records is compared before the trainer is
built, by trainers/run/run_folder.py (``check_settings``).
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

from torch import nn

from datasets.task_info import TaskInfo
from trainers.parts import feature_cache
from trainers.parts.backbone import file_fingerprint, load_clip, weights_file
from trainers.parts.text_encoder import TextEncoder
from trainers.run.checkpoint import CheckpointError

logger = logging.getLogger(__name__)
# What a checkpoint's backbone "weights" hash: the tensors stored in the weights file, or (random
# weights, a bare trainer without a config) the loaded model's, which depend on its precision.
FROM_FILE, FROM_MODEL = "file", "model"
# An older version recorded no "fingerprint": it hashed the model as loaded (see legacy_weights).
LEGACY_DTYPES = ("fp16", "fp32")  # amp loads the weights in fp32
DOCS = "docs/reliability.md#which-backbone-a-checkpoint-needs"


def backbone_identity(model: nn.Module, backbone=None) -> dict:
    """The frozen CLIP of ``model`` (a MultiTaskCLIP) as the config ``backbone``
    (``MODEL.BACKBONE``) names it: name, open_clip tag and a fingerprint of the weights file as
    stored, whatever the precision it was loaded in. Without a file (random weights) or a
    config, the fingerprint is of ``model``'s image and text encoders as loaded."""
    path = (weights_file(backbone.NAME, backbone.PRETRAINED_TAG, getattr(backbone, "PRETRAINED", True))
            if backbone is not None else None)
    if path:
        weights, source = file_fingerprint(path)[:32], FROM_FILE
    else:
        weights, source = encoders_fingerprint(model.image_encoder, model.text_encoder), FROM_MODEL
    return {"name": backbone.NAME if backbone is not None else None,
            "pretrained_tag": backbone.PRETRAINED_TAG if backbone is not None else None,
            "weights": weights, "fingerprint": source}


def encoders_fingerprint(image_encoder: nn.Module, text_encoder: nn.Module) -> str:
    """``<16 hex>:<16 hex>``: the two encoders' tensors as loaded (precision included); what an
    older version recorded for every backbone."""
    return ":".join(feature_cache.weights_fingerprint(m)[:16] for m in (image_encoder, text_encoder))


def legacy_weights(backbone) -> dict[str, str]:
    """The fingerprint an older version recorded for the backbone ``backbone`` (MODEL.BACKBONE)
    loaded in each weight dtype (fp16; fp32, which amp and CPU runs use): dtype -> fingerprint.
    Loads the backbone once per dtype on the CPU; asked only for an older checkpoint whose
    fingerprint is not this run's."""
    out = {}
    for dtype in LEGACY_DTYPES:
        clip = load_clip(backbone.NAME, backbone.PRETRAINED_TAG, dtype, "cpu",
                         getattr(backbone, "PRETRAINED", True))
        out[dtype] = encoders_fingerprint(clip.visual, TextEncoder(clip, shared_prefix=False))
    return out


def check_compatible(ckpt: dict, path: str, own: dict, own_backbone: Callable[[], dict],
                     head: nn.Module, task_info: TaskInfo, resuming: bool = False,
                     legacy: Optional[Callable[[], dict[str, str]]] = None) -> None:
    """Raise a CheckpointError if the checkpoint ``ckpt`` (read from ``path``) cannot be loaded
    into ``head``: saved by another trainer or variant than ``own``, on another backbone than
    ``own_backbone()`` (called only when the checkpoint records one), or with parameters the
    head lacks, trained on other classes or tasks, or of other shapes. Older checkpoints, which
    record no trainer or backbone, are checked on what they do record; those with an older
    fingerprint are compared with ``legacy()`` (``legacy_weights``)."""
    saved = {"trainer": ckpt.get("trainer"), "variant": ckpt.get("variant")}
    if saved["trainer"] is not None and saved != own:  # older checkpoints record no trainer
        todo = ("this output folder holds another run, which is kept: give this run its own "
                "--output-dir" if resuming else
                f"evaluate it as {_who(saved)} (--trainer and the variant of its training run), or "
                f"give a --model-dir trained as {_who(own)}")
        raise CheckpointError(f"{path} was saved by {_who(saved)}; this run is {_who(own)}: {todo}.")
    check_backbone(ckpt, path, own_backbone, resuming, legacy)
    check_head(ckpt, path, head, task_info, records_trainer=bool(saved["trainer"]))


def check_head(ckpt: dict, path: str, head: nn.Module, task_info: TaskInfo,
               records_trainer: bool = True) -> None:
    """Every saved parameter exists in ``head``, fits its shape, and (per-class / per-task
    contexts, ``head.per_class_keys`` / ``per_task_keys``) was trained on these classes / tasks."""
    own_state = head.state_dict()
    same_classes = ckpt.get("classnames") == task_info.all_classnames
    same_tasks = ckpt.get("task_keys") == list(task_info.keys)
    for key, value in ckpt["state_dict"].items():
        if key not in own_state:
            raise CheckpointError(f"{path}: parameter {key!r} does not exist in "
                                  f"{type(head).__name__} (it has {sorted(own_state)}): was it "
                                  "saved by another trainer or config?")
        if key in head.per_class_keys and not same_classes:
            raise CheckpointError(f"{path}: {key!r} holds one context per class and was trained on "
                                  "other classes than this benchmark's; per-class contexts cannot "
                                  "be transferred (use a class-agnostic variant).")
        if key in head.per_task_keys and not same_tasks:
            raise CheckpointError(f"{path}: {key!r} holds one context per task and was trained on "
                                  f"tasks {ckpt.get('task_keys')}, not {list(task_info.keys)}.")
        if value.shape != own_state[key].shape:
            unknown = "" if records_trainer else (" (and the trainer and variant, which this "
                                                  "older checkpoint does not record)")
            raise CheckpointError(f"{path}: {key!r} has shape {tuple(value.shape)}, this model "
                                  f"needs {tuple(own_state[key].shape)}: check N_CTX and the "
                                  f"backbone{unknown}.")


def check_backbone(ckpt: dict, path: str, own_backbone: Callable[[], dict], resuming: bool,
                   legacy: Optional[Callable[[], dict[str, str]]] = None) -> None:
    """The checkpoint's backbone (if it records one) is ``own_backbone()``: name, tag and weights.

    A checkpoint of an older version records no ``fingerprint``: its weights were hashed as
    loaded, in the precision of its run. It is accepted, with a note, when ``legacy()`` finds
    that fingerprint for this backbone in fp16 or fp32 (the same weights, any precision)."""
    saved: Optional[dict] = ckpt.get("backbone")
    if not saved:  # older checkpoints record no backbone
        return
    own = own_backbone()
    if saved == own:
        return
    same_name = (saved["name"], saved.get("pretrained_tag")) == (own["name"], own["pretrained_tag"])
    if "fingerprint" not in saved and same_name and legacy is not None:
        dtypes = [d for d, weights in legacy().items() if weights == saved["weights"]]
        if dtypes:
            logger.info("%s records its backbone as an older version did (weights %s, loaded in "
                        "%s): the same weights as this run's (%s).", path, saved["weights"],
                        dtypes[0], DOCS)
            return
    if resuming:
        todo = ("this output folder holds a run on that backbone, which is kept: give this run its "
                "own --output-dir")
    elif saved["name"] == own["name"]:
        todo = ("the same name with other weights: evaluate with the weights it was trained with "
                "(the same file or MODEL.BACKBONE.PRETRAINED_TAG), or give a --model-dir trained "
                "on these" + ("; the precision (PREC) and device do not matter"
                              if own.get("fingerprint") == FROM_FILE else ""))
    else:
        todo = (f"evaluate it with the backbone it was trained on (--backbone {saved['name']}), or give "
                f"a --model-dir trained on {own['name']}")
    raise CheckpointError(f"{path} was trained on backbone {_backbone(saved)}; this run uses "
                          f"{_backbone(own)}: {todo} ({DOCS}).")


def _backbone(identity: dict) -> str:
    """``RN50 (weights 1a2b...:3c4d...)``, with the open_clip tag when there is one."""
    tag = f" {identity['pretrained_tag']}" if identity.get("pretrained_tag") else ""
    return f"{identity['name']}{tag} (weights {identity['weights']})"


def _who(identity: dict) -> str:
    """``trainer SoftCPT, variant NATA`` (no variant for trainers without one)."""
    text = f"trainer {identity['trainer']}"
    return f"{text}, variant {identity['variant']}" if identity.get("variant") else text
