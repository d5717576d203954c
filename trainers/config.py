"""Every config key this project adds to Dassl's defaults, in one place.

``extend_cfg`` is the only entry point: ``train.py`` and the tests call it on
``dassl.config.get_cfg_default()``. Each trainer family keeps its own keys next
to its code (``add_<family>_config``) and is listed here.
"""
from __future__ import annotations

from typing import Callable

from yacs.config import CfgNode as CN

# Config hooks of trainers that live outside this package (examples/my_trainer.py).
_EXTRA_HOOKS: list[Callable[[CN], None]] = []


def register_config_hook(hook: Callable[[CN], None]) -> Callable[[CN], None]:
    """Decorator: ``extend_cfg`` also calls ``hook(cfg)``, so a trainer kept in its own
    file (imported before the config is built) adds its keys without editing this one."""
    if hook not in _EXTRA_HOOKS:
        _EXTRA_HOOKS.append(hook)
    return hook


def add_prompt_keys(node: CN) -> None:
    """Keys shared by every prompt-learning trainer node (``TRAINER.<NAME>``)."""
    # Precision of CLIP, as in CoOp: fp16 (GPU), fp32, or amp (GPU autocast).
    # fp16 and amp fall back to fp32 on CPU with a warning.
    node.PREC = "fp16"
    # Optimizer and scheduler steps taken per batch on the same gradient. 1 is
    # plain training; the official SoftCPT code effectively used 3 (NA variants)
    # or 4 (class-aware variants), see SPEC.md "Where the official code differs".
    node.STEPS_PER_BATCH = 1
    # Exact speed-ups, each switchable so it can be measured (SPEC.md):
    # cut text sequences after the longest EOS of the batch;
    node.TRUNCATE_TEXT = True
    # with TRUNCATE_TEXT, encode rows grouped by EOS position, each cut at its own EOS;
    node.LENGTH_BUCKETS = True
    # encode a context shared by several prompts ([SOS] ctx, class name at the end) once;
    node.SHARED_PREFIX = True
    # during training, compute class features only for tasks present in the batch;
    node.SKIP_ABSENT_TASKS = True
    # during evaluation, compute class features once per evaluation, not per batch.
    node.CACHE_EVAL_TEXT = True


def extend_cfg(cfg: CN) -> None:
    """Add the project's keys to a Dassl default config (before any merge)."""
    # open_clip weights for a backbone that is not one of CoOp's OpenAI names:
    # a tag (e.g. "laion2b_s34b_b79k") or a file. "" means OpenAI's weights.
    cfg.MODEL.BACKBONE.PRETRAINED_TAG = ""
    # Name of the trainer config file (set by train.py), recorded in results.json.
    cfg.CONFIG_NAME = ""
    # Per-task accuracies and the benchmark score (trainers/evaluator.py).
    cfg.TEST.EVALUATOR = "MultiTaskClassification"
    # Store the image features of every evaluated split once and read them in
    # every later run with the same backbone, precision, images and transform
    # (trainers/feature_cache.py; exact). False encodes the images every time.
    cfg.TEST.FEATURE_CACHE = True
    # Folder of those features; "" means $SOFTCPT_CACHE/features (~/.cache/softcpt/features).
    cfg.TEST.FEATURE_CACHE_DIR = ""

    from datasets.config import add_dataset_config
    add_dataset_config(cfg)

    # Trainer families, one hook each (imported here to keep this module light).
    from trainers.softcpt import add_softcpt_config
    add_softcpt_config(cfg)
    from trainers.coop import add_coop_config
    add_coop_config(cfg)
    from trainers.cocoop import add_cocoop_config
    add_cocoop_config(cfg)
    from trainers.zsclip import add_zsclip_config
    add_zsclip_config(cfg)
    from trainers.linear_probe import add_linear_probe_config
    add_linear_probe_config(cfg)
    for hook in _EXTRA_HOOKS:
        hook(cfg)
