"""Set-up on fresh machines: where Dassl comes from, the sweep's pre-flight check, and
the test kit's SOFTCPT_REQUIRE_DASSL mode. No network: pip is a stand-in that records."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PINNED = "c61a1b570ac6333bd50fb5ae06aea59002fb20bb"

# Stands in for the interpreter in scripts/setup.sh (the sweeps' stand-in, for train.py, is
# tests/stand_ins.py's): Dassl is never importable, torch is,
# `-m pip` records its arguments (and fails for GitHub when PIP_GIT_FAILS is set), and
# anything else goes to the real Python.
SETUP_PYTHON = """#!/bin/bash
case "$*" in
    *"import dassl"*) exit 1 ;;
    *"import torch"*) exit 0 ;;
    "-m pip "*)
        echo "$*" >> "$CALLS"
        case "$*" in *git+https*) [ -n "$PIP_GIT_FAILS" ] && exit 1 ;; esac
        exit 0 ;;
esac
exec {python} "$@"
"""

# Makes `import <module>` fail in the interpreter it is put in front of.
HIDE = "import sys\nfor name in {names!r}:\n    sys.modules[name] = None\n"


def hide_modules(folder: Path, *names: str) -> dict:
    """Environment whose Python cannot import ``names`` (a sitecustomize on PYTHONPATH)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(HIDE.format(names=list(names)))
    return dict(os.environ, PYTHONPATH=str(folder))


@pytest.fixture
def setup_copy(tmp_path) -> tuple[Path, dict]:
    """scripts/setup.sh in a scratch repository, with the stand-in interpreter."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "setup.sh", repo / "scripts")
    shutil.copy(REPO / "requirements.txt", repo)
    python = tmp_path / "python"
    python.write_text(SETUP_PYTHON.format(python=sys.executable))
    python.chmod(0o755)
    env = dict(os.environ, PYTHON=str(python), CALLS=str(tmp_path / "calls.txt"), PIP_GIT_FAILS="")
    env.pop("WHEELS", None)
    return repo, env


def run_setup(repo: Path, env: dict) -> tuple[subprocess.CompletedProcess, list[str]]:
    proc = subprocess.run(["bash", "scripts/setup.sh"], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=120)
    calls = Path(env["CALLS"]).read_text().splitlines() if Path(env["CALLS"]).exists() else []
    return proc, [c for c in calls if c.endswith(" dassl") or "Dassl.pytorch" in c]


def test_setup_installs_dassl_from_the_wheel_folder_without_network(setup_copy, tmp_path):
    repo, env = setup_copy
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "dassl-0.6.3-py3-none-any.whl").write_bytes(b"")
    proc, dassl = run_setup(repo, dict(env, WHEELS=str(wheels)))
    assert proc.returncode == 0, proc.stderr
    assert dassl == [f"-m pip install --quiet --disable-pip-version-check --no-index --no-deps "
                     f"--find-links {wheels} dassl"]


def test_setup_uses_repository_wheels_folder_by_default(setup_copy):
    repo, env = setup_copy
    (repo / "wheels").mkdir()
    (repo / "wheels" / "dassl-0.6.3-py3-none-any.whl").write_bytes(b"")
    proc, dassl = run_setup(repo, env)
    assert proc.returncode == 0, proc.stderr
    assert len(dassl) == 1 and "--no-index" in dassl[0] and "--find-links wheels" in dassl[0]


def test_setup_falls_back_to_github_at_the_pinned_commit(setup_copy):
    repo, env = setup_copy
    proc, dassl = run_setup(repo, env)
    assert proc.returncode == 0, proc.stderr
    assert len(dassl) == 1
    assert dassl[0].endswith(f"git+https://github.com/KaiyangZhou/Dassl.pytorch@{PINNED}")


def test_setup_without_wheels_or_github_says_what_to_do(setup_copy):
    repo, env = setup_copy
    proc, _ = run_setup(repo, dict(env, PIP_GIT_FAILS="1"))
    assert proc.returncode == 0  # torch and the requirements are installed; the sweep stops later
    assert "Dassl could not be installed" in proc.stdout
    assert f"Dassl.pytorch@{PINNED}" in proc.stdout and "WHEELS=" in proc.stdout


def test_setup_rejects_a_wheels_path_that_is_no_folder(setup_copy, tmp_path):
    repo, env = setup_copy
    proc, _ = run_setup(repo, dict(env, WHEELS=str(tmp_path / "nowhere")))
    assert proc.returncode == 2
    assert f"WHEELS={tmp_path / 'nowhere'} is not a folder" in proc.stderr


@pytest.mark.slow  # runs the sweep scripts
@pytest.mark.parametrize("script, hidden, named", [
    ("scripts/softcpt/main.sh", ("dassl",), "Dassl"),
    ("scripts/coop/main.sh", ("dassl",), "Dassl"),
    ("examples/my_trainer.sh", ("dassl",), "Dassl"),
    ("scripts/softcpt/base2new_test.sh", ("open_clip", "dassl"), "open-clip-torch (ModuleNotFoundError"),
])
def test_sweep_stops_before_any_run_when_a_package_is_missing(tmp_path, script, hidden, named):
    env = hide_modules(tmp_path / "site", *hidden)
    env.update(PYTHON=sys.executable, OUTPUT=str(tmp_path / "out"), SKIP_SETUP="1")
    proc = subprocess.run(["bash", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert f"cannot import: {named}" in proc.stderr
    assert "scripts/setup.sh" in proc.stderr and "[sweep] run" not in proc.stdout
    assert not (tmp_path / "out").exists()  # no run folder


@pytest.mark.slow  # runs pytest in subprocesses
def test_require_dassl_turns_its_skips_into_failures(tmp_path):
    env = hide_modules(tmp_path / "site", "dassl")
    env.pop("SOFTCPT_REQUIRE_DASSL", None)  # CI sets it for the suite around this test
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_checkpoint.py"]
    lenient = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert lenient.returncode in (0, 5) and "1 skipped" in lenient.stdout  # 5: nothing ran
    strict = subprocess.run(cmd, cwd=REPO, env=dict(env, SOFTCPT_REQUIRE_DASSL="1"),
                            capture_output=True, text=True, timeout=300)
    assert strict.returncode != 0
    assert "SOFTCPT_REQUIRE_DASSL is set" in strict.stdout
