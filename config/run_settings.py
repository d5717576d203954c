"""A run's recorded settings: which keys change results and how two configs differ.

Checkpoints and results.json record ``effective_config``; a rerun into a folder
whose recorded settings differ (``config_differences``) is refused
(trainers/run/run_folder.py). Imports only yaml and yacs, like the rest of ``config``.
"""
from __future__ import annotations

from typing import Any

import yaml
from yacs.config import CfgNode as CN

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
    "TEST.FEATURE_CACHE", "TEST.FEATURE_CACHE_DIR",  # the cache is exact (trainers/parts/feature_cache.py)
    "TEST.FEATURE_CACHE_HASH",  # how it tells a changed image file: either way exact features
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


# Values that older versions recorded for what is now written another way: Dassl's -1 defaults
# ("none"), which the checks now refuse and the defaults write as 0. A rerun of such a run is
# the same run, not one with other settings.
SAME_MEANING = {"OPTIM.WARMUP_EPOCH": {-1: 0}, "DATASET.NUM_SHOTS": {-1: 0}}


def _as_now(key: str, value: Any) -> Any:
    meaning = SAME_MEANING.get(key)
    return meaning.get(value, value) if meaning and isinstance(value, int) else value


def config_differences(recorded: dict, current: dict,
                       ignore: tuple[str, ...] = RUN_ONLY_KEYS) -> list[tuple[str, Any, Any]]:
    """(key, recorded value, current value) of every key that changes results and differs.

    Keys missing on one side (a config recorded by an older version) are not compared.
    """
    old, new = flatten(recorded), flatten(current)
    return [(k, old[k], new[k]) for k in sorted(old.keys() & new.keys())
            if k not in ignore and _as_now(k, old[k]) != new[k]]


def describe_differences(diffs: list[tuple[str, Any, Any]]) -> str:
    """One line per key: ``  OPTIM.LR: 0.002 (recorded) -> 0.001 (this run)``."""
    return "\n".join(f"  {key}: {old!r} (recorded) -> {new!r} (this run)" for key, old, new in diffs)
