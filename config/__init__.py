"""Every config key this project adds to Dassl's defaults, and the checks of their values.

A leaf: this package imports only yacs, yaml and the standard library, so building
the config, ``python train.py --help-config`` and every value check work without
torch, open_clip or Dassl's engine. As in Dassl, the Python ``config`` package holds
the keys' code and the ``configs/`` folder the YAML files that set them.

``extend_cfg`` is the only entry point: ``train.py`` and the tests call it on
``dassl.config.get_cfg_default()``. It adds the common keys below, then calls every
hook registered with ``register_config_hook``, in the order they were registered.
Each key family registers its own hook when its module is imported: the in-tree ones
(``config/dataset.py``, ``config/softcpt.py``, ``config/coop.py``, ``config/cocoop.py``,
``config/zsclip.py``, ``config/linear_probe.py``, ``config/plot.py``, ``config/protonet.py``,
``config/kgcoop.py``, ``config/prograd.py``) are imported at the end of this file; a trainer
kept outside the repository's packages does the same from its own file
(examples/my_trainer.py), imported before the config is built.

The other modules: ``config/merge.py`` merges files and ``KEY VALUE`` options with
messages a user can act on; ``config/run_settings.py`` says which keys a run records.
"""
from __future__ import annotations

import math
import os
from typing import Callable

from yacs.config import CfgNode as CN

# CoOp's PREC of CLIP (trainers/parts/backbone.py applies it).
PRECISIONS = ("fp16", "fp32", "amp")
# Storage dtype of the learned contexts (docs/method.md#differences-from-the-official-code).
PARAM_DTYPES = ("fp32", "fp16")
# Where the class name goes in a class prompt (CLASS_TOKEN_POSITION; trainers/parts/prompt.py).
POSITIONS = ("end", "middle", "front")
# CLIP's text context: 77 tokens hold [SOS], the context, the name, "." and [EOS], so a
# context leaves room for a one-token name with at most 77 - 4 vectors. Where the names are
# known (trainers/parts/prompt.py), the longest one decides.
CONTEXT_LENGTH = 77
MAX_N_CTX = CONTEXT_LENGTH - 4
# Dassl's optimizers (dassl.optim.build_optimizer) and the schedules trainers/run/schedule.py builds.
OPTIMIZERS = ("adam", "amsgrad", "sgd", "rmsprop", "radam", "adamw")
SCHEDULERS = ("cosine", "single_step", "multi_step")
WARMUP_TYPES = ("constant", "linear")
# Which model Dassl evaluates after training: the last epoch's, or the best on validation.
FINAL_MODELS = ("last_step", "best_val")
# An epoch count beyond any real run; Dassl's ETA (a timedelta of C ints) overflows far above it.
MAX_EPOCHS = 1_000_000
# NumPy's seeds (Dassl's set_random_seed seeds it); -1 leaves the run unseeded.
MAX_SEED = 2**32 - 1
# Keys holding a path, with the flag that sets them: each part must fit the file system.
PATH_KEYS = {"OUTPUT_DIR": "--output-dir", "DATASET.ROOT": "--root", "RESUME": "--resume",
             "TEST.FEATURE_CACHE_DIR": ""}
DOCS = "docs/troubleshooting.md#configuration"


class ConfigError(ValueError):
    """A config file or option names a key, type or value that does not exist or is out
    of range. The message names the key, what it accepts and the value given, so
    ``train.py`` prints it without a traceback (docs/troubleshooting.md)."""


# Every key family's hook, in registration order: the in-tree families (imported at the
# end of this file) first, then trainers kept outside (examples/my_trainer.py).
_HOOKS: list[Callable[[CN], None]] = []


# Every key family's own check of its node, run by check_values (register_config_check).
_CHECKS: list[Callable[[CN], None]] = []


def register_config_check(check: Callable[[CN], None]) -> Callable[[CN], None]:
    """Decorator: ``check_values`` calls ``check(cfg)`` on every merged config, before torch is
    imported, so a family's values are refused before any work. A family's defaults pass, so
    only a value a user set can fail; a trainer also checks its node when it is built."""
    if check not in _CHECKS:
        _CHECKS.append(check)
    return check


# Per trainer name, the function giving the config a run of that trainer records (SoftCPT
# fills its variant's keys): train.py and a sweep's check of a finished run
# (``train.py --check-finished``) both compare recorded settings with its result.
_RESOLVERS: dict[str, Callable[[CN], CN]] = {}


def register_resolver(trainer: str) -> Callable[[Callable[[CN], CN]], Callable[[CN], CN]]:
    """Decorator: ``resolve_cfg`` applies the function to configs of ``trainer``. Torch-free,
    so that a sweep compares a finished run's settings without importing the trainer."""
    def register(fn: Callable[[CN], CN]) -> Callable[[CN], CN]:
        _RESOLVERS[trainer] = fn
        return fn
    return register


def resolve_cfg(cfg: CN) -> CN:
    """The config a run of ``cfg.TRAINER.NAME`` records (``cfg`` itself without a resolver)."""
    resolver = _RESOLVERS.get(cfg.TRAINER.NAME)
    return resolver(cfg) if resolver else cfg


def register_config_hook(hook: Callable[[CN], None]) -> Callable[[CN], None]:
    """Decorator: ``extend_cfg`` calls ``hook(cfg)``, so a key family (a trainer's node, the
    dataset keys) adds its keys from its own module, without editing this one. Registering
    the same function again (a module imported twice) adds it once."""
    if hook not in _HOOKS:
        _HOOKS.append(hook)
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


def add_context_keys(node: CN, n_ctx: int) -> None:
    """The learned context of a CoOp-style head: its length and its initial words."""
    # Number of context vectors n (CoOp's M); ignored when CTX_INIT is given.
    node.N_CTX = n_ctx
    # Words initialising the context, e.g. "a photo of a" (then n is their token
    # count); "" draws N(0, 0.02^2).
    node.CTX_INIT = ""


def check_context_keys(node: CN, prefix: str) -> None:
    """N_CTX's lower bound, where it counts: with CTX_INIT, n is the words' token count.
    The upper bound is every trainer's, checked by ``check_context_lengths``."""
    if not node.CTX_INIT:
        check_int(f"{prefix}.N_CTX", node.N_CTX, 1)


def check_context_lengths(cfg: CN) -> None:
    """Every ``TRAINER.<X>.*N_CTX`` integer (N_CTX, SoftCPT's TASK_N_CTX and CLASS_N_CTX, any
    registered family's) leaves room in CLIP's 77 tokens; unless its CTX_INIT words set it."""
    for name, node in cfg.TRAINER.items():
        if not isinstance(node, CN):
            continue
        for key, value in node.items():
            words = node.get(key[:-len("N_CTX")] + "CTX_INIT", "")
            if (key.endswith("N_CTX") and isinstance(value, int) and not isinstance(value, bool)
                    and value > MAX_N_CTX and not words):
                raise bad_value(f"TRAINER.{name}.{key}", value,
                                f"an integer <= {MAX_N_CTX}: CLIP's {CONTEXT_LENGTH} text tokens hold "
                                "[SOS], the context, the name (at least one token), '.' and [EOS] "
                                f"({DOCS})")


def extend_cfg(cfg: CN) -> None:
    """Add the project's keys to a Dassl default config (before any merge)."""
    # open_clip weights for a backbone that is not one of CoOp's OpenAI names:
    # a tag (e.g. "laion2b_s34b_b79k") or a file. "" means OpenAI's weights.
    cfg.MODEL.BACKBONE.PRETRAINED_TAG = ""
    # Name of the trainer config file (set by train.py), recorded in results.json.
    cfg.CONFIG_NAME = ""
    # Per-task accuracies and the benchmark score (trainers/parts/evaluator.py).
    cfg.TEST.EVALUATOR = "MultiTaskClassification"
    # Store the image features of every evaluated split once and read them in
    # every later run with the same backbone, precision, images and transform
    # (trainers/parts/feature_cache.py; exact). False encodes the images every time.
    cfg.TEST.FEATURE_CACHE = True
    # Folder of those features; "" means $SOFTCPT_CACHE/features (~/.cache/softcpt/features).
    cfg.TEST.FEATURE_CACHE_DIR = ""
    # How the cache tells an image file changed: False by its size and modification time
    # (a stat per image); True by a hash of its bytes (reads every image at each
    # evaluation; docs/speed.md#what-the-cache-key-sees).
    cfg.TEST.FEATURE_CACHE_HASH = False
    # Warm-up epochs; 0 = none. Dassl's default -1 means the same, but a negative value is
    # refused (check_values), so the default becomes 0.
    if cfg.OPTIM.get("WARMUP_EPOCH") == -1:
        cfg.OPTIM.WARMUP_EPOCH = 0

    for hook in _HOOKS:
        hook(cfg)


def bad_value(key: str, value, allowed: str) -> ConfigError:
    """The one wording of an out-of-range value: key, value given, what is allowed."""
    return ConfigError(f"{key} is {value!r}; allowed: {allowed}.")


def check_int(key: str, value, low: int, high: int | None = None, why: str = "") -> None:
    """``value`` is an integer (not a bool) >= ``low`` (and <= ``high``), or a ConfigError
    naming ``key``; ``why`` is added to the allowed range."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or \
            (high is not None and value > high):
        allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise bad_value(key, value, f"{allowed}{why}")


def check_number(key: str, value, low: float, strict: bool = False, why: str = "") -> None:
    """``value`` is a finite number (not a bool) >= ``low`` (> with ``strict``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < low or (strict and value == low):
        raise bad_value(key, value, f"a finite number {'>' if strict else '>='} {low:g}{why}")


def check_choice(key: str, value, choices, why: str = "") -> None:
    """``value`` is one of ``choices``."""
    if value not in choices:
        raise bad_value(key, value, f"one of {list(choices)}{why}")


def check_path(key: str, value: str) -> None:
    """Every part of the path ``value`` fits the file system (255 bytes on most), before a
    folder is made or a file opened there; ``key`` names the config key or flag."""
    if not value:
        return
    probe = os.path.abspath(value)
    while not os.path.isdir(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        limit = os.pathconf(probe, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    for part in value.split(os.sep):
        size = len(os.fsencode(part))
        if size > limit:
            raise ConfigError(f"{key} is {value!r}; allowed: a path whose every part is at most "
                              f"{limit} bytes (the file system's limit), but {part[:20]!r}... has "
                              f"{size} ({DOCS}).")


def check_bool(key: str, value) -> None:
    """``value`` is True or False, or a ConfigError naming ``key``."""
    if not isinstance(value, bool):
        raise bad_value(key, value, "True or False")


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
        check_bool(f"{prefix}.{key}", node[key])


def check_values(cfg: CN) -> None:
    """Ranges of the common keys, checked once the config is merged and before any
    data or model is built. Types were checked by the merge (config/merge.py);
    each trainer checks its own node when it is built."""
    shots = cfg.DATASET.NUM_SHOTS
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
        raise bad_value("DATASET.NUM_SHOTS", shots, "an integer >= 0 (shots per class; 0 = the "
                        "whole training set)")
    optim = cfg.OPTIM
    check_number("OPTIM.LR", optim.LR, 0, strict=True)
    check_int("OPTIM.MAX_EPOCH", optim.MAX_EPOCH, 1, MAX_EPOCHS)
    check_choice("OPTIM.NAME", optim.NAME, OPTIMIZERS, f" ({DOCS})")
    check_choice("OPTIM.LR_SCHEDULER", optim.LR_SCHEDULER, SCHEDULERS, f" ({DOCS})")
    check_int("OPTIM.WARMUP_EPOCH", optim.WARMUP_EPOCH, 0, why=f" (0 = no warm-up; {DOCS})")
    check_choice("OPTIM.WARMUP_TYPE", optim.WARMUP_TYPE, WARMUP_TYPES, f" ({DOCS})")
    for key in ("WARMUP_CONS_LR", "WARMUP_MIN_LR"):
        check_number(f"OPTIM.{key}", optim[key], 0)
    seed = cfg.SEED
    if isinstance(seed, bool) or not isinstance(seed, int) or not (seed == -1 or 0 <= seed <= MAX_SEED):
        raise bad_value("SEED (--seed)", seed, f"an integer in [0, {MAX_SEED}] (NumPy's seeds), or -1 "
                        f"for an unseeded run ({DOCS})")
    size = cfg.INPUT.SIZE
    if not isinstance(size, (list, tuple)) or len(size) != 2 or \
            any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
        raise bad_value("INPUT.SIZE", size, f"two integers >= 1, (height, width), e.g. (224, 224) ({DOCS})")
    check_choice("TEST.FINAL_MODEL", cfg.TEST.FINAL_MODEL, FINAL_MODELS,
                 f" (last_step: the last epoch; best_val: the best on validation; {DOCS})")
    for key, flag in PATH_KEYS.items():
        *parents, last = key.split(".")
        node = cfg
        for part in parents:
            node = node[part]
        check_path(f"{key} ({flag})" if flag else key, node[last])
    for split in ("TRAIN_X", "TEST"):
        check_int(f"DATALOADER.{split}.BATCH_SIZE", cfg.DATALOADER[split].BATCH_SIZE, 1)
    check_int("DATALOADER.NUM_WORKERS", cfg.DATALOADER.NUM_WORKERS, 0)
    check_int("TRAIN.CHECKPOINT_FREQ", cfg.TRAIN.CHECKPOINT_FREQ, 0)
    check_number("OPTIM.WEIGHT_DECAY", cfg.OPTIM.WEIGHT_DECAY, 0, why=" (Dassl's default 5e-4)")
    for name, node in cfg.TRAINER.items():
        if isinstance(node, CN) and "STEPS_PER_BATCH" in node:
            check_prompt_keys(node, f"TRAINER.{name}")
    check_context_lengths(cfg)
    for check in _CHECKS:
        check(cfg)


# The in-tree key families, each registering its hook on import (after everything above,
# which they import). Order: the order of extend_cfg's hooks.
from config import dataset, softcpt, coop, cocoop, zsclip, linear_probe, plot  # noqa: E402,F401,I001
from config import protonet, kgcoop, prograd  # noqa: E402,F401,I001  (the paper's other baselines)
