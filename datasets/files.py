"""Paths of dataset files.

Split files and few-shot draws are written by the project's one atomic writer,
``atomic_files.atomic_write`` (atomic_files.py, a leaf module: datasets/ never
imports trainers/).
"""
from __future__ import annotations

import os


def data_root(root: str) -> str:
    """``DATASET.ROOT`` (``--root``, i.e. $DATA) as an absolute path."""
    return os.path.abspath(os.path.expanduser(root))
