"""Shared fixtures: the tiny CLIP, and (from fixtures_data) synthetic datasets.

Everything runs on CPU, offline. The tiny backbone is written to a per-session
cache folder and loaded through the same path as real OpenAI checkpoints.
"""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

HAVE_DASSL = importlib.util.find_spec("dassl") is not None
DASSL_REASON = "Dassl is not installed"
needs_dassl = pytest.mark.skipif(not HAVE_DASSL, reason=DASSL_REASON)

if HAVE_DASSL and importlib.util.find_spec("fixtures_data") is not None:
    from fixtures_data import *  # noqa: F401,F403  (synthetic datasets in real layouts)


@pytest.fixture(scope="session", autouse=True)
def softcpt_cache(tmp_path_factory) -> str:
    """A private cache for the tiny checkpoint, so tests never touch ~/.cache."""
    path = str(tmp_path_factory.mktemp("softcpt_cache"))
    old = os.environ.get("SOFTCPT_CACHE")
    os.environ["SOFTCPT_CACHE"] = path
    yield path
    if old is None:
        os.environ.pop("SOFTCPT_CACHE", None)
    else:
        os.environ["SOFTCPT_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_clip(softcpt_cache):
    """The tiny CLIP in fp32, frozen (shared: do not modify it in a test)."""
    from trainers.backbone import load_clip
    torch.set_num_threads(2)
    return load_clip("tiny")


def pytest_terminal_summary(terminalreporter):
    """Say how many tests were skipped for lack of Dassl (before pytest's final line)."""
    skipped = terminalreporter.stats.get("skipped", [])
    n = sum(1 for r in skipped if DASSL_REASON in str(r.longrepr))
    if n:
        terminalreporter.write_line(f"{n} skipped because {DASSL_REASON} (see INSTALL.md#dassl)")
