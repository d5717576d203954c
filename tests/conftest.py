"""Shared fixtures: the tiny CLIP, and (from fixtures_data) synthetic datasets.

Everything runs on CPU, offline. The tiny backbone is written to a per-session
cache folder and loaded through the same path as real OpenAI checkpoints.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import sys

import pytest
import torch

HAVE_DASSL = importlib.util.find_spec("dassl") is not None
DASSL_REASON = "Dassl is not installed"
needs_dassl = pytest.mark.skipif(not HAVE_DASSL, reason=DASSL_REASON)
# CI sets this so that a machine without Dassl fails instead of passing on skips.
REQUIRE_DASSL = os.environ.get("SOFTCPT_REQUIRE_DASSL", "") not in ("", "0")
REQUIRE_HINT = ("SOFTCPT_REQUIRE_DASSL is set, so a test that needs Dassl fails instead of skipping: "
                "install it (INSTALL.md#dassl) or unset SOFTCPT_REQUIRE_DASSL")

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


@pytest.fixture(autouse=True)
def project_logging_reset():
    """Undo train.main's logging set-up after each test, so caplog sees records in any order."""
    yield
    logs = sys.modules.get("trainers.logs")
    if logs is None:
        return
    for name in logs.PROJECT_LOGGERS:
        log = logging.getLogger(name)
        log.propagate = True
        for handler in [h for h in log.handlers if isinstance(h, logs._CurrentStdout)]:
            log.removeHandler(handler)


@pytest.fixture(scope="session")
def tiny_clip(softcpt_cache):
    """The tiny CLIP in fp32, frozen (shared: do not modify it in a test)."""
    from trainers.backbone import load_clip
    torch.set_num_threads(2)
    return load_clip("tiny")


@pytest.fixture(scope="session")
def tiny_b16_clip(softcpt_cache):
    """ViT-B/16's structure at small size (4 heads, 3 layers), fp32, frozen (shared: do not modify)."""
    from trainers.backbone import load_clip
    torch.set_num_threads(2)
    return load_clip("tiny-b16")


def _is_dassl_skip(report) -> bool:
    return report.skipped and DASSL_REASON in str(report.longrepr)


def _fail_dassl_skip(report) -> None:
    """Under SOFTCPT_REQUIRE_DASSL, turn a skip for lack of Dassl into a failure."""
    if REQUIRE_DASSL and _is_dassl_skip(report):
        report.outcome = "failed"
        report.longrepr = f"{DASSL_REASON}. {REQUIRE_HINT}."


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """Modules that skip at import (pytest.importorskip("dassl"))."""
    outcome = yield
    _fail_dassl_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Tests marked ``needs_dassl``."""
    outcome = yield
    _fail_dassl_skip(outcome.get_result())


def pytest_terminal_summary(terminalreporter):
    """Say how many tests were skipped for lack of Dassl (before pytest's final line)."""
    skipped = terminalreporter.stats.get("skipped", [])
    n = sum(1 for r in skipped if _is_dassl_skip(r))
    if n:
        terminalreporter.write_line(f"{n} skipped because {DASSL_REASON} (see INSTALL.md#dassl)")
