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
BACKBONES = ("tiny", "tiny-b16")  # the test CLIPs (trainers/parts/backbone.py); fixture any_clip
SLURM_REASON = "no local Slurm cluster"  # tests/test_slurm.py's skip: no root, or Slurm not installed
# CI sets this so that a machine without Dassl, or without the Slurm it installs, fails
# instead of passing on skips: a skip whose reason starts with one of these is a failure there.
REQUIRE_DASSL = os.environ.get("SOFTCPT_REQUIRE_DASSL", "") not in ("", "0")
REQUIRED_IN_CI = {
    DASSL_REASON: "install it (INSTALL.md#dassl)",
    SLURM_REASON: "run as root with Slurm installed, as .ci/run does "
                  "(docs/clusters.md#trying-slurm-without-a-cluster)",
}


def on_backbones(cases, b16_cases, ids=str) -> list:
    """``(backbone, case)`` parameters for a test taking ``any_clip`` (indirect) and a case:
    every case on ``tiny``, the cases named in ``b16_cases`` on ``tiny-b16`` too. Use with
    ``@pytest.mark.parametrize("any_clip, case", on_backbones(...), indirect=["any_clip"])``."""
    return [pytest.param(backbone, case, id=f"{backbone}-{ids(case)}")
            for backbone in BACKBONES for case in cases
            if backbone == "tiny" or ids(case) in b16_cases]


def _required_reason(report) -> str:
    """The CI-required reason a report was skipped for, or ""."""
    if not report.skipped:
        return ""
    text = str(report.longrepr)
    return next((reason for reason in REQUIRED_IN_CI if reason in text), "")


# One intra-op thread for the tests run in this process: the tiny models gain nothing from
# a second one, and on a busy machine (several runs on 2 cores) OpenMP threads spin waiting
# for each other: the text-speed-up tests took 10x longer with 2 threads than with 1 there.
torch.set_num_threads(1)
# The same for the runs the tests start (train.py, sweeps, forked attempts): a paper-config
# resume case took 150-170 s with torch's default of one thread per core and 80 s with one,
# measured side by side on the busy 2-core machine. A test that needs another count sets it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

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


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    """$DATA of a module's real runs on the toy benchmark: written there by the first run, then
    shared by the module's tests (each writes its runs elsewhere)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(autouse=True)
def project_logging_reset():
    """Undo train.main's logging set-up after each test, so caplog sees records in any order."""
    yield
    logs = sys.modules.get("trainers.run.logs")
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
    from trainers.parts.backbone import load_clip
    return load_clip("tiny")


@pytest.fixture(scope="session")
def tiny_b16_clip(softcpt_cache):
    """ViT-B/16's structure at small size (4 heads, 3 layers), fp32, frozen (shared: do not modify)."""
    from trainers.parts.backbone import load_clip
    return load_clip("tiny-b16")


@pytest.fixture(scope="session", params=BACKBONES)
def any_clip(request):
    """Each test backbone in turn: ``tiny`` (1 head, 2 layers: fast) and ``tiny-b16`` (4 heads,
    3 layers: the head split and layer stacking of a real text tower). Shared: do not modify."""
    return request.getfixturevalue({"tiny": "tiny_clip", "tiny-b16": "tiny_b16_clip"}[request.param])


def _fail_required_skip(report) -> None:
    """Under SOFTCPT_REQUIRE_DASSL, turn a skip for lack of Dassl or Slurm into a failure."""
    reason = _required_reason(report)
    if REQUIRE_DASSL and reason:
        skipped = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (f"{skipped}. SOFTCPT_REQUIRE_DASSL is set, so a test that cannot run for this "
                           f"reason fails instead of skipping: {REQUIRED_IN_CI[reason]}, or unset "
                           "SOFTCPT_REQUIRE_DASSL.")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """Modules that skip at import (pytest.importorskip("dassl"))."""
    outcome = yield
    _fail_required_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Tests marked ``needs_dassl``, and fixtures that skip (tests/test_slurm.py's cluster)."""
    outcome = yield
    _fail_required_skip(outcome.get_result())


def pytest_terminal_summary(terminalreporter):
    """Say how many tests were skipped for lack of Dassl or Slurm (before pytest's final line)."""
    skipped = terminalreporter.stats.get("skipped", [])
    for reason, fix in REQUIRED_IN_CI.items():
        n = sum(1 for r in skipped if _required_reason(r) == reason)
        if n:
            terminalreporter.write_line(f"{n} skipped because {reason} ({fix})")


def pytest_collection_modifyitems(config, items):
    """The Slurm tests first, then the other slow ones, then the fast tier. Under pytest-xdist
    (scripts/test.sh) the Slurm tests run on one worker, one after another, mostly waiting on
    the scheduler: started first, the other workers share the rest of the suite meanwhile
    instead of waiting for them at the end; and the second-long tests last fill the workers
    up to the end instead of one worker finishing a minute-long test alone."""
    def in_slurm_group(item) -> bool:
        return any(m.args[:1] == ("slurm",) for m in item.iter_markers("xdist_group"))

    def rank(item) -> int:
        return 0 if in_slurm_group(item) else 1 if item.get_closest_marker("slow") else 2
    items.sort(key=rank)  # stable: the order within each part stays


# The xdist group of the tests that share serial_toy_sweep: one worker runs it once for them.
SERIAL_TOY_GROUP = pytest.mark.xdist_group("serial_toy_sweep")


@pytest.fixture(scope="session")
def serial_toy_sweep(tmp_path_factory) -> dict:
    """A real serial sweep, ``scripts/softcpt/main.sh toy tiny NATA OPTIM.MAX_EPOCH 1`` at 1 shot,
    seeds 1 and 2, shared by the tests that only read it (mark them SERIAL_TOY_GROUP): the
    reference of tests/test_parallel_sweeps.py's JOBS=2 comparison, and tests/test_scripts.py's
    main.sh run. Returns ``env`` (DATA written, no OUTPUT), ``cmd``, ``output`` and ``stdout``."""
    import subprocess

    if not HAVE_DASSL:
        pytest.skip(DASSL_REASON)
    tmp = tmp_path_factory.mktemp("serial_toy_sweep")
    # One thread per run, so that the arithmetic (and so every score) is the same in a JOBS sweep.
    env = dict(os.environ, DATA=str(tmp / "data"), SHOTS="1", SEEDS="1 2", SKIP_SETUP="1",
               OMP_NUM_THREADS="1", PYTHON=os.environ.get("PYTHON", "python3"))
    for key in ("GPUS", "JOBS", "LAUNCHER"):
        env.pop(key, None)
    cmd = ["bash", "scripts/softcpt/main.sh", "toy", "tiny", "NATA", "OPTIM.MAX_EPOCH", "1"]
    output = tmp / "serial"
    done = subprocess.run(cmd, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          env=dict(env, OUTPUT=str(output)), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    return {"env": env, "cmd": cmd, "output": output, "stdout": done.stdout}
