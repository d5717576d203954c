"""Stopping a run on SIGTERM, SIGINT or SIGUSR1 at a point of its choosing.

The handler only records the signal (``requested``); the run stops at its next
check point (``check``), where nothing is half done: before each training batch,
after each epoch's checkpoint, before each batch of images an evaluation encodes,
between the steps of setting a run up, and before the ``done`` marker
(docs/reliability.md#stops). Nothing is raised wherever the main thread happens
to be (in a fork, a lock, a write), so a stop can no longer fall between a
checkpoint and its pointer, nor be lost in a library's hook.

DataLoader workers ignore the stop signals (``quiet_workers``: trainers/parts/base.py
applies it to the loaders Dassl builds, the linear probe and the feature cache to
theirs), so a signal sent to the whole process group (scancel, preemption, Ctrl-C
in a terminal) reaches only the main process's flag, and the run shuts its
workers down itself.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator, Optional

from torch.utils.data import DataLoader

# The signals that stop a run cleanly: Ctrl-C, scancel / a sweep's Ctrl-C, a scheduler's
# warning before its time limit (scripts/slurm/task.sh).
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, n))

_pending: Optional[int] = None  # the first stop signal received, until the run ends


class Stopped(KeyboardInterrupt):
    """A stop signal, acted on at a check point; train.py turns it into one line and the exit
    code 128 + signum. A KeyboardInterrupt (not an Exception), so that no ``except
    Exception`` on the way up takes it for an error."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signal.Signals(signum).name}")
        self.signum = signum
        self.code = 128 + signum
        self.where = ": run the same command again to resume"  # train.py names the epoch

    def __str__(self) -> str:
        return f"{self.args[0]}{self.where}"


def _record(signum: int, frame) -> None:
    global _pending
    if _pending is None:  # the first one names the stop
        _pending = signum


def requested() -> Optional[int]:
    """The stop signal received since the handlers were installed, or None."""
    return _pending


def check() -> None:
    """Raise ``Stopped`` if a stop signal was received: call where stopping loses nothing."""
    if _pending is not None:
        raise Stopped(_pending)


class QuietWorker:
    """A DataLoader ``worker_init_fn`` that makes the worker ignore the stop signals, then runs
    the loader's own init function, if any (a class, so that it pickles for spawned workers)."""

    def __init__(self, previous: Optional[Callable[[int], None]] = None) -> None:
        self.previous = previous

    def __call__(self, worker_id: int) -> None:
        # torch has just given SIGTERM a handler that ends the worker when anyone but the main
        # process sends it (scancel signals the whole process group); until now the handler
        # inherited from the main process only recorded SIGINT and SIGUSR1 in the worker's copy.
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        if self.previous is not None:
            self.previous(worker_id)


def quiet_workers(loader: Optional[DataLoader]) -> Optional[DataLoader]:
    """``loader``, its workers made to ignore the stop signals (``QuietWorker``); in place."""
    if loader is not None and not isinstance(loader.worker_init_fn, QuietWorker):
        loader.worker_init_fn = QuietWorker(loader.worker_init_fn)
    return loader


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Record the stop signals (``check`` acts on them) while the block runs, in the main
    thread; elsewhere (signal handlers can only be set there) a no-op. The previous handlers
    come back afterwards, and a signal recorded but never acted on is forgotten."""
    global _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _pending = None
    previous = {s: signal.signal(s, _record) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        _pending = None
        for signum, handler in previous.items():
            signal.signal(signum, handler)
