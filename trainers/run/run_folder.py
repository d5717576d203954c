"""A run folder belongs to one process and to one set of settings.

``hold(folder)`` takes a lock (``filelock``) on ``<folder>/.run.lock`` for as
long as a run trains or evaluates into the folder, and writes who holds it (host,
PID, start time) next to it in ``.run.owner``. A second process stops at once when
the holder is a live process on its own host. A lock held from another host (or by a
process of this host that has ended, or one that has not written its name yet) is
waited for, at most ``SOFTCPT_LOCK_WAIT`` seconds (default 300): after a node failure a
shared file system may keep the dead node's lock for a while (NFSv4 until its lease
runs out), and a requeued Slurm task must not fail on it. Leftover temporary files
(``.*.tmp``) are removed only by the holder, so never while another process is writing
them.

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
import math
import os.path as osp
import re
import socket
import sys
import time
from typing import Callable, Iterator, NamedTuple, Optional

import torch
from filelock import FileLock, Timeout

from config import ConfigError
from config.run_settings import config_differences, describe_differences, effective_config
from trainers.run import checkpoint as ckpt_io
from trainers.run.atomic import atomic_write, remove_stale_temps

logger = logging.getLogger(__name__)
LOCK_NAME = ".run.lock"
OWNER_NAME = ".run.owner"


class RunBusy(RuntimeError):
    """Another live process trains or evaluates into this folder."""


LOCK_WAIT_ENV = "SOFTCPT_LOCK_WAIT"
LOCK_WAIT_DEFAULT = 300.0  # seconds: more than NFSv4's default lease (90 s), a few minutes in all
POLL_SECONDS = 0.5
_OWNER = re.compile(r"^host (?P<host>\S+), PID (?P<pid>\d+),")


class Owner(NamedTuple):
    """Who holds a run folder, as its ``.run.owner`` says."""
    host: str
    pid: int
    text: str


def owner_text() -> str:
    return f"host {socket.gethostname()}, PID {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"


def read_owner(path: str) -> Optional[Owner]:
    """The holder named in ``path``; None when the file is missing, empty or not ours."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    found = _OWNER.match(text)
    return Owner(found["host"], int(found["pid"]), text) if found else None


def lock_wait() -> float:
    """Seconds to wait for a lock held from another host (``SOFTCPT_LOCK_WAIT``, checked)."""
    text = os.environ.get(LOCK_WAIT_ENV, "").strip()
    if not text:
        return LOCK_WAIT_DEFAULT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise ConfigError(f"{LOCK_WAIT_ENV} is {text!r}; allowed: a number of seconds >= 0 (default "
                          f"{LOCK_WAIT_DEFAULT:g}; 0: never wait for a run folder's lock) "
                          "(docs/reliability.md#guarantees).")
    return value


def alive_here(owner: Optional[Owner]) -> bool:
    """Whether ``owner`` is a live process on this host (it then holds its lock for real)."""
    if owner is None or owner.host != socket.gethostname() or owner.pid <= 0:
        return False
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _describe(owner: Optional[Owner]) -> str:
    return owner.text if owner else "a process that has not written its name yet"


@contextlib.contextmanager
def hold(folder: str, poll: Optional[Callable[[], None]] = None) -> Iterator[None]:
    """Own ``folder`` for the block. RunBusy at once when a live process of this host owns
    it; a lock held from another host (or by an ended or unnamed holder) is waited for, at
    most ``lock_wait()`` seconds, then RunBusy naming the holder. ``poll`` is called between
    tries (a caller's stop check may raise there to end the wait)."""
    wait = lock_wait()
    os.makedirs(folder, exist_ok=True)
    lock = FileLock(osp.join(folder, LOCK_NAME), timeout=0)
    owner_path = osp.join(folder, OWNER_NAME)
    deadline, announced = None, False
    while True:
        try:
            lock.acquire()
            break
        except Timeout:
            pass
        owner = read_owner(owner_path)
        if alive_here(owner):  # one process per run folder: no waiting on a live run here
            raise RunBusy(f"{folder} is in use by another run ({_describe(owner)}): one process per run "
                          "folder. Wait for it to end (or stop it), or give this run another --output-dir "
                          "(docs/reliability.md#guarantees).") from None
        now = time.monotonic()
        if deadline is None:
            started, deadline = now, now + wait
        # (an unnamed holder has usually just taken the lock: say nothing for its first second)
        if not announced and now < deadline and (owner is not None or now - started >= 1):
            announced = True
            print(f"{folder} is locked by {_describe(owner)}, not a live process of this host: "
                  f"waiting up to {wait:g} s ({LOCK_WAIT_ENV}) for its lock to be released.",
                  file=sys.stderr, flush=True)
        if now >= deadline:
            raise RunBusy(_stale_message(folder, owner, wait)) from None
        if poll is not None:
            poll()
        time.sleep(min(POLL_SECONDS, deadline - now))
    if announced:
        print(f"{folder}: its lock was released; this run goes on.", file=sys.stderr, flush=True)
    try:
        atomic_write(owner_path, owner_text() + "\n")
        # Only the holder may remove temporary files: no live process is writing them.
        for sub in (folder, osp.join(folder, ckpt_io.HEAD_NAME)):
            for path in remove_stale_temps(sub):
                logger.info("Removed %s, left by an interrupted write.", path)
        yield
    finally:
        try:
            os.unlink(owner_path)
        except OSError:
            pass
        lock.release()


def _stale_message(folder: str, owner: Optional[Owner], wait: float) -> str:
    """RunBusy's text after waiting: who holds the lock, and what to do about it."""
    host = owner.host if owner else "its host"
    if owner is not None and owner.host == socket.gethostname():
        why = "its process has ended, yet the lock is still held (by a process it started)"
    elif owner is not None:
        why = "a process on another host"
    else:
        why = "its holder never wrote its name"
    return (f"{folder} is in use by another run ({_describe(owner)}; {why}): its lock was not released in "
            f"{wait:g} s ({LOCK_WAIT_ENV}). If that run is still going, wait for it to end (or stop it), or "
            f"give this run another --output-dir. If {host} has failed, its shared file system keeps the lock "
            f"until it expires it: run the same command again later, or with a longer {LOCK_WAIT_ENV}; only if "
            f"you are sure no process on {host} writes there, delete {osp.join(folder, LOCK_NAME)} and run "
            "again (docs/reliability.md#guarantees).")


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
