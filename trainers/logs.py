"""``logging`` that reaches Dassl's ``log.txt``.

Dassl tees ``sys.stdout`` into ``<OUTPUT_DIR>/log.txt`` (``setup_logger``), and
importing its datasets calls ``logging.disable(logging.WARNING)`` for the whole
process. ``setup_logging`` undoes that and routes records to whatever
``sys.stdout`` is when they are emitted, so they land in the console and in
``log.txt`` next to Dassl's own prints.
"""
from __future__ import annotations

import io
import logging
import sys

PROJECT_LOGGERS = ("trainers", "datasets", "__main__", "train")


class _CurrentStdout(logging.StreamHandler):
    """A handler writing to the current ``sys.stdout`` (Dassl swaps it after start-up)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):  # noqa: D401 - property required by StreamHandler
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname}: {message}"
        return message


def setup_logging(level: int = logging.INFO) -> None:
    """Re-enable logging and send the project's records to stdout (and so log.txt)."""
    logging.disable(logging.NOTSET)
    for name in PROJECT_LOGGERS:
        log = logging.getLogger(name)
        log.setLevel(level)
        log.propagate = False
        if not any(isinstance(h, _CurrentStdout) for h in log.handlers):
            handler = _CurrentStdout()
            handler.setFormatter(_Format("%(message)s"))
            log.addHandler(handler)


def restore_stdout(previous) -> None:
    """Undo Dassl's ``setup_logger`` after an in-process run (tests, notebooks).

    Dassl's tee closes the console it wraps when garbage-collected, so it is
    given a throwaway console before it is dropped.
    """
    tee = sys.stdout
    if tee is previous:
        return
    sys.stdout = previous
    if getattr(tee, "file", None) is not None:
        tee.file.close()
        tee.file = None
    if hasattr(tee, "console"):
        tee.console = io.StringIO()
