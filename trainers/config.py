"""Every config key this project adds to Dassl's defaults, in one place.

``extend_cfg`` is the only entry point: ``train.py`` and the tests call it on
``dassl.config.get_cfg_default()``. Each trainer family keeps its own keys next
to its code (``add_<family>_config``) and is listed here.
"""
from __future__ import annotations

from typing import Any, Callable

import yaml
from yacs.config import CfgNode as CN

PRECISIONS = ("fp16", "fp32", "amp")
# Storage dtype of the learned contexts (docs/method.md#differences-from-the-official-code).
PARAM_DTYPES = ("fp32", "fp16")


class ConfigError(ValueError):
    """A config file or option names a key, type or value that does not exist or is out
    of range. The message names the key, what it accepts and the value given, so
    ``train.py`` prints it without a traceback (docs/troubleshooting.md)."""

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
    # or 4 (class-aware variants), see docs/method.md#differences-from-the-official-code.
    node.STEPS_PER_BATCH = 1
    # Storage of the learned contexts: fp32 (master weights; CLIP's precision is only
    # used for the forward pass) or fp16 (stored and updated by SGD in fp16, as the
    # official code and CoOp do under PREC fp16; meta networks stay fp32). fp16 with
    # STEPS_PER_BATCH 3 or 4 reproduces the official training (docs/method.md).
    node.PARAM_DTYPE = "fp32"
    # Exact speed-ups, each switchable so it can be measured (docs/method.md#speed-ups):
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


def bad_value(key: str, value, allowed: str) -> ConfigError:
    """The one wording of an out-of-range value: key, value given, what is allowed."""
    return ConfigError(f"{key} is {value!r}; allowed: {allowed}.")


def check_int(key: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise bad_value(key, value, f"an integer >= {low}")


def check_prompt_keys(node: CN, prefix: str) -> None:
    """Ranges of the keys ``add_prompt_keys`` adds (``prefix``: e.g. ``TRAINER.COOP``)."""
    if node.PREC not in PRECISIONS:
        raise bad_value(f"{prefix}.PREC", node.PREC, f"one of {list(PRECISIONS)}")
    check_int(f"{prefix}.STEPS_PER_BATCH", node.STEPS_PER_BATCH, 1)
    if node.get("PARAM_DTYPE", "fp32") not in PARAM_DTYPES:
        raise bad_value(f"{prefix}.PARAM_DTYPE", node.PARAM_DTYPE,
                        f"one of {list(PARAM_DTYPES)} (docs/method.md#differences-from-the-official-code)")
    if node.get("PARAM_DTYPE", "fp32") == "fp16" and node.PREC == "amp":
        raise ConfigError(f"{prefix}.PARAM_DTYPE fp16 does not go with {prefix}.PREC amp (amp's "
                          "gradient scaler keeps fp32 parameters): use PREC fp16 with it, as the "
                          "official code (docs/method.md#differences-from-the-official-code).")
    for key in ("TRUNCATE_TEXT", "SKIP_ABSENT_TASKS", "CACHE_EVAL_TEXT"):
        if not isinstance(node[key], bool):
            raise bad_value(f"{prefix}.{key}", node[key], "True or False")


def check_values(cfg: CN) -> None:
    """Ranges of the common keys, checked once the config is merged and before any
    data or model is built. Types were checked by the merge (trainers/config_merge.py);
    each trainer checks its own node when it is built."""
    shots = cfg.DATASET.NUM_SHOTS
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
        raise bad_value("DATASET.NUM_SHOTS", shots, "an integer >= 0 (shots per class; 0 = the "
                        "whole training set)")
    lr = cfg.OPTIM.LR
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise bad_value("OPTIM.LR", lr, "a number > 0")
    check_int("OPTIM.MAX_EPOCH", cfg.OPTIM.MAX_EPOCH, 1)
    for split in ("TRAIN_X", "TEST"):
        check_int(f"DATALOADER.{split}.BATCH_SIZE", cfg.DATALOADER[split].BATCH_SIZE, 1)
    check_int("DATALOADER.NUM_WORKERS", cfg.DATALOADER.NUM_WORKERS, 0)
    check_int("TRAIN.CHECKPOINT_FREQ", cfg.TRAIN.CHECKPOINT_FREQ, 0)
    decay = cfg.OPTIM.WEIGHT_DECAY
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not decay >= 0:
        raise bad_value("OPTIM.WEIGHT_DECAY", decay, "a number >= 0 (Dassl's default 5e-4)")
    for name, node in cfg.TRAINER.items():
        if isinstance(node, CN) and "STEPS_PER_BATCH" in node:
            check_prompt_keys(node, f"TRAINER.{name}")


# ------------------------------------------------------------ a run's recorded settings
# Keys that say where a run reads and writes and how fast it goes, not what it computes: a
# run's folder may be resumed or evaluated again with other values (docs/reliability.md#guarantees).
# Every other key changes results, and a rerun into a folder recorded with another value of
# it is refused (train.py). DATALOADER.NUM_WORKERS is here although it changes the random
# crops and flips drawn after a resume (each worker has its own generator): a resumed run
# with another worker count goes on with the same settings, not bit for bit as an
# uninterrupted one (docs/reliability.md#guarantees).
RUN_ONLY_KEYS = (
    "OUTPUT_DIR", "RESUME", "DATASET.ROOT",  # where (sweeps make DATA absolute)
    "DATALOADER.NUM_WORKERS", "USE_CUDA",  # how fast, on what
    "TRAIN.PRINT_FREQ", "VERBOSE",  # how much is printed
    "TRAIN.CHECKPOINT_FREQ",  # which epochs are kept as snapshots (every epoch is resumable)
    "TEST.FEATURE_CACHE", "TEST.FEATURE_CACHE_DIR",  # the cache is exact (trainers/feature_cache.py)
)


def effective_config(cfg: CN) -> dict:
    """The merged config as plain data (YAML's view: tuples are lists) without the
    RUN_ONLY_KEYS, for checkpoints and results.json: the same wherever and however fast a
    run went, so two runs of one experiment record the same bytes."""
    tree = yaml.safe_load(cfg.dump())
    for key in RUN_ONLY_KEYS:
        *parents, last = key.split(".")
        node = tree
        for part in parents:
            node = node.get(part, {})
        node.pop(last, None)
    return tree


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"OPTIM.LR": 0.002, ...}`` from a nested config."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def config_differences(recorded: dict, current: dict,
                       ignore: tuple[str, ...] = RUN_ONLY_KEYS) -> list[tuple[str, Any, Any]]:
    """(key, recorded value, current value) of every key that changes results and differs.

    Keys missing on one side (a config recorded by an older version) are not compared.
    """
    old, new = flatten(recorded), flatten(current)
    return [(k, old[k], new[k]) for k in sorted(old.keys() & new.keys())
            if k not in ignore and old[k] != new[k]]


def describe_differences(diffs: list[tuple[str, Any, Any]]) -> str:
    """One line per key: ``  OPTIM.LR: 0.002 (recorded) -> 0.001 (this run)``."""
    return "\n".join(f"  {key}: {old!r} (recorded) -> {new!r} (this run)" for key, old, new in diffs)
