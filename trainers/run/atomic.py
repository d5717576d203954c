"""The project's atomic writer, under the name trainers/ and scripts/ import it by.

It lives in the top-level leaf module ``atomic_files`` (atomic_files.py), which
imports nothing of the project, so that ``datasets/`` (split and few-shot files)
uses the same writer without importing ``trainers`` (the dependency only goes
from trainers to datasets). Nothing is implemented here.
"""
import os  # noqa: F401  (tests patch trainers.run.atomic.os.replace, i.e. os.replace)

from atomic_files import (  # noqa: F401
    KILL_ENV,
    TEMP_SUFFIX,
    atomic_folder,
    atomic_torch_save,
    atomic_write,
    atomic_write_stream,
    file_mode,
    remove_stale_temps,
)
