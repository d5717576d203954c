"""The one exception the data code raises for bad input, and its doc pointer.

Every message names the offending path or config key and ends with the
DATASETS.md section that explains the expected layout, so a user can fix the
input without reading code.
"""
from __future__ import annotations

DOCS = "DATASETS.md"
DOWNLOAD_CMD = "python scripts/download_splits.py --root {root} --datasets {name}"


class DatasetError(ValueError):
    """Bad dataset input (missing folder or file, unreadable image, bad config entry)."""

    def __init__(self, message: str, section: str):
        self.message = message
        self.section = section
        super().__init__(f"{message} (see {see(section)})")


def see(section: str) -> str:
    """``DATASETS.md#<section>``: where to read about a dataset or a config key."""
    return f"{DOCS}#{section}"
