"""``log.txt`` and ``logging`` that reaches it.

``open_run_log`` tees ``sys.stdout`` into ``<OUTPUT_DIR>/log.txt`` as Dassl's
``setup_logger`` does, with two differences: a resumed attempt appends to the
same ``log.txt`` (Dassl starts ``log.txt-<timestamp>``, which log parsers never
read), and the file is line-buffered so a killed run keeps every line it
printed. ``RunLog.record`` puts the error that ends a run into the file.

Importing Dassl's datasets calls ``logging.disable(logging.WARNING)`` for the
whole process. ``setup_logging`` undoes that and routes records to whatever
``sys.stdout`` is when they are emitted, so they land in the console and in
``log.txt`` next to Dassl's own prints.
"""
from __future__ import annotations

import io
import logging
import os
import sys
import time
from typing import Optional

from atomic_files import LOG_NAME, append_to_log  # noqa: F401  (train.py's pre-torch errors use it too)
# Upstream Dassl ends training with the line "Finish training", where CoOp's parse_test_res.py
# starts reading; the official SoftCPT code's parser starts at "Finished training", which its
# Dassl fork prints. Every log gets the second line under the first, so both parsers read it
# as their READMEs call them (docs/benchmarks.md#log-lines).
ALSO_PRINTED = {"Finish training": "Finished training"}

PROJECT_LOGGERS = ("trainers", "datasets", "config", "__main__", "train")


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


class RunLog:
    """``sys.stdout`` that also writes to a run's log file (the ``file``/``console`` of Dassl's tee)."""

    def __init__(self, path: str, console) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self.console = console
        resumed = os.path.exists(path) and os.path.getsize(path) > 0
        self.file = open(path, "a", buffering=1, errors="replace")
        self._partial = ""  # the line being written (print writes text and "\n" apart)
        if resumed:
            self.file.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')}: a new attempt of this run "
                            "(the earlier attempts are above) =====\n")

    def write(self, text: str) -> int:
        for piece in text.splitlines(keepends=True):
            self._emit(piece)
            if not piece.endswith("\n"):
                self._partial = (self._partial + piece)[-64:]
                continue
            line, self._partial = (self._partial + piece).strip(), ""
            if line in ALSO_PRINTED:
                self._emit(ALSO_PRINTED[line] + "\n")
        return len(text)

    def _emit(self, text: str) -> None:
        self.console.write(text)
        if self.file is not None:
            self.file.write(text)

    def flush(self) -> None:
        self.console.flush()
        if self.file is not None:
            self.file.flush()

    def __getattr__(self, name: str):  # encoding, isatty, fileno ...: the console's
        return getattr(self.__dict__["console"], name)

    def record(self, text: str) -> None:
        """Write ``text`` to the log file only (the console gets it from the caller)."""
        if self.file is not None:
            self.file.write(text if text.endswith("\n") else text + "\n")
            self.file.flush()


def open_run_log(output_dir: str) -> Optional[RunLog]:
    """Tee ``sys.stdout`` into ``<output_dir>/log.txt`` (appending); None without a folder."""
    if not output_dir:
        return None
    log = RunLog(os.path.join(output_dir, LOG_NAME), sys.stdout)
    sys.stdout = log
    return log


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
