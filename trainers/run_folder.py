"""A run folder belongs to one process and to one set of settings.

``hold(folder)`` takes a lock (``filelock``) on ``<folder>/.run.lock`` for as
long as a run trains or evaluates into the folder, and writes who holds it (host,
PID, start time) next to it in ``.run.owner``: a second process stops at once,
naming the holder and the folder. Leftover temporary files (``.*.tmp``) are
removed only by the holder, so never while another process is writing them.

``check_settings`` compares the config a folder recorded (in its newest
checkpoint, else its results.json) with this run's: any difference in a key that
changes results (all but ``config.run_settings.RUN_ONLY_KEYS``) stops the run before
it resumes, skips or overwrites anything (docs/reliability.md#guarantees).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import os.path as osp
import socket
import time
from typing import Iterator, Optional

import torch
from filelock import FileLock, Timeout

from config import ConfigError
from config.run_settings import config_differences, describe_differences, effective_config
from trainers import checkpoint as ckpt_io
from trainers.atomic import atomic_write, remove_stale_temps

logger = logging.getLogger(__name__)
LOCK_NAME = ".run.lock"
OWNER_NAME = ".run.owner"


class RunBusy(RuntimeError):
    """Another live process trains or evaluates into this folder."""


def owner_text() -> str:
    return f"host {socket.gethostname()}, PID {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"


@contextlib.contextmanager
def hold(folder: str) -> Iterator[None]:
    """Own ``folder`` for the block; RunBusy at once when another process does."""
    os.makedirs(folder, exist_ok=True)
    lock = FileLock(osp.join(folder, LOCK_NAME), timeout=0)
    owner = osp.join(folder, OWNER_NAME)
    try:
        lock.acquire()
    except Timeout:
        try:
            with open(owner) as f:
                who = f.read().strip() or "a process that has not written its name yet"
        except OSError:
            who = "a process that has not written its name yet"
        raise RunBusy(f"{folder} is in use by another run ({who}): one process per run folder. Wait "
                      "for it to end (or stop it), or give this run another --output-dir "
                      "(docs/reliability.md#guarantees).") from None
    try:
        atomic_write(owner, owner_text() + "\n")
        # Only the holder may remove temporary files: no live process is writing them.
        for sub in (folder, osp.join(folder, ckpt_io.HEAD_NAME)):
            for path in remove_stale_temps(sub):
                logger.info("Removed %s, left by an interrupted write.", path)
        yield
    finally:
        try:
            os.unlink(owner)
        except OSError:
            pass
        lock.release()


def recorded_config(folder: str) -> Optional[tuple[str, dict]]:
    """(where, config) that ``folder``'s run recorded: its newest checkpoint that holds one,
    else its results.json; None for a new folder or one written by an older version."""
    ckpts = osp.join(folder, ckpt_io.HEAD_NAME)
    names = [f"model.pth.tar-{e}" for e in reversed(ckpt_io.saved_epochs(ckpts))] + [ckpt_io.BEST]
    for name in names:
        path = osp.join(ckpts, name)
        if not osp.exists(path):
            continue
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - damaged: the resume reports it, and tries the next
            continue
        if isinstance(ckpt, dict) and isinstance(ckpt.get("effective_config"), dict):
            return path, ckpt["effective_config"]
    path = osp.join(folder, "results.json")
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, ValueError):
        return None
    recorded = report.get("effective_config") if isinstance(report, dict) else None
    return (path, recorded) if isinstance(recorded, dict) else None


def check_settings(cfg, folders: list[str]) -> None:
    """Refuse a rerun into a folder recorded with other settings (a ConfigError listing them)."""
    current = effective_config(cfg)
    for folder in dict.fromkeys(f for f in folders if f):
        found = recorded_config(folder)
        if found is None:
            continue
        where, recorded = found
        diffs = config_differences(recorded, current)
        if diffs:
            raise ConfigError(
                f"{folder} holds a run with other settings (recorded in {where}); this run is neither "
                f"resumed nor skipped there. Keys that differ:\n{describe_differences(diffs)}\n"
                "Give this run its own --output-dir (the sweep scripts name folders after the extra "
                "KEY VALUE options), or rerun with the recorded values to continue that run "
                "(docs/reliability.md#guarantees).")
