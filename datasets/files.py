"""Writing files so that an interrupted run never leaves a half-written one."""
from __future__ import annotations

import os
import tempfile
from typing import IO, Callable


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = False) -> None:
    """Write ``path`` through ``write(file)`` into a temporary file, then rename it.

    The rename is atomic on one file system, so readers see either the old state
    (no file) or the complete file; two runs racing write identical content.
    """
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def data_root(root: str) -> str:
    """``DATASET.ROOT`` (``--root``, i.e. $DATA) as an absolute path."""
    return os.path.abspath(os.path.expanduser(root))
