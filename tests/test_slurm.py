"""LAUNCHER=slurm: against stand-ins for sbatch and squeue, then on a real single-node
Slurm (scripts/slurm/local_cluster.sh).

The cluster needs root and Debian's slurmctld, slurmd, slurm-client and munge
packages (.ci/run installs them when it runs as root); elsewhere these tests skip, and
under SOFTCPT_REQUIRE_DASSL (CI) they fail (tests/conftest.py).
The story test drains the node so that the first submission stays queued: a second
submission must add nothing, and a task cancelled then must be the only one submitted
by the next run of the same command.
"""
from __future__ import annotations

import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from conftest import SLURM_REASON

# Every test here runs the sweep scripts or a Slurm cluster: the full tier.
pytestmark = pytest.mark.slow
needs_dassl = pytest.mark.skipif(importlib.util.find_spec("dassl") is None, reason="Dassl is not installed")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(REPO, "scripts", "slurm", "local_cluster.sh")
TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol")


def _why_no_cluster() -> str:
    if os.geteuid() != 0:
        return "a local Slurm needs root (scripts/slurm/local_cluster.sh)"
    missing = [t for t in TOOLS if not shutil.which(t, path=os.environ.get("PATH", "") + ":/usr/sbin")]
    if missing:
        return f"Slurm is not installed (missing {', '.join(missing)}): apt-get install -y " \
               "slurmctld slurmd slurm-client munge"
    return ""


# ---------------------------------------------------------------- stand-ins for sbatch and squeue
# Enough to check what is submitted, and the task and table scripts, without a cluster.
FAKE_SBATCH = """#!/bin/bash
n=$(( $(cat "$STUB/next" 2>/dev/null || echo 100) + 1 )); echo "$n" > "$STUB/next"
printf '%s\\n' "$*" >> "$STUB/sbatch.txt"
echo "$n"
"""
FAKE_SQUEUE = """#!/bin/bash
printf '%s\\n' "$*" >> "$STUB/squeue.txt"
cat "$STUB/queue" 2>/dev/null
exit "$(cat "$STUB/squeue_rc" 2>/dev/null || echo 0)"
"""
FAKE_PYTHON = """#!/bin/bash
if [ "$1" = -c ] && [[ "$2" == *"sweep pre-flight"* ]]; then exit 0; fi  # every package is there
if [ "$1" != train.py ]; then exec {python} "$@"; fi
while [ $# -gt 0 ]; do case "$1" in --output-dir) out=$2 ;; esac; shift; done
mkdir -p "$out"; echo "training $out"
echo '{{"score": 50.0, "trainer": "CoOp", "tasks": []}}' > "$out/results.json"; touch "$out/done"
"""


@pytest.fixture
def stub(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("squeue", FAKE_SQUEUE),
                       ("python", FAKE_PYTHON.format(python=sys.executable))):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", STUB=str(tmp_path), LAUNCHER="slurm",
               PYTHON=str(bin_dir / "python"), OUTPUT=str(tmp_path / "out"), DATA=str(tmp_path / "data"),
               SHOTS="1 2", SEEDS="1 2", SKIP_SETUP="1")
    for key in ("GPUS", "JOBS", "SLURM_ARGS", "SLURM_TABLE_ARGS"):
        env.pop(key, None)
    return env


def _coop(env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "scripts/coop/main.sh", "toy", "tiny", "CA"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def _lines(path) -> list[str]:
    with open(path) as f:
        return f.read().splitlines()


def test_slurm_args_throttle_table_job_and_task_script(stub, tmp_path):
    stub.update(SLURM_ARGS="-p gpu --gres=gpu:1 -t 1:00:00 %3")
    done = _coop(stub)
    assert done.returncode == 0, done.stderr
    array, table = _lines(tmp_path / "sbatch.txt")
    cmds = glob.glob(str(tmp_path / "out" / "toy" / "slurm" / "*.cmds"))[0]
    assert "--array=1-4%3 " in array and "--requeue" in array
    assert array.endswith(f"-p gpu --gres=gpu:1 -t 1:00:00 scripts/slurm/task.sh {cmds}")
    assert "--dependency=afterany:101 " in table and "-p gpu --gres=gpu:1 -t 1:00:00 scripts/slurm/table.sh" \
        in table and "%3" not in table
    assert table.endswith("scripts/coop/main.sh toy tiny CA")
    assert "submitted 4 run(s) as Slurm job array 101" in done.stdout and "squeue -j 101,102" in done.stdout
    assert len(_lines(cmds)) == 4
    cell = tmp_path / "out" / "toy" / "CoOp" / "CA" / "tiny_2shots" / "seed1"
    assert _lines(cell / "slurm_job") == ["101_3"]

    # Task 3 as Slurm would start it: its cell, its log in its run folder.
    task = subprocess.run(["bash", "scripts/slurm/task.sh", cmds], cwd=REPO, capture_output=True, text=True,
                          env=dict(stub, SLURM_ARRAY_TASK_ID="3", SLURM_ARRAY_JOB_ID="101"), timeout=60)
    assert task.returncode == 0 and (cell / "done").is_file()
    assert f"training {cell}" in (cell / "slurm-101_3.out").read_text()
    # The table job: the same sweep, reporting; nothing is submitted or run.
    report = subprocess.run(["bash", f"{REPO}/scripts/slurm/table.sh", f"{REPO}/scripts/coop/main.sh", "toy", "tiny",
                             "CA"], cwd=tmp_path, env=stub, capture_output=True, text=True, timeout=120)
    assert report.returncode == 1 and len(_lines(tmp_path / "sbatch.txt")) == 2
    assert "1 run(s) finished, 0 still queued or running, 3 failed." in report.stdout
    assert "tiny_1shots/seed1 (Slurm job 101_1 never started" in report.stderr

    stub.update(SLURM_TABLE_ARGS="-p cpu")
    (tmp_path / "queue").write_text("101_1\n101_2\n")  # still in Slurm; 101_4 is not
    again = _coop(stub)
    assert again.returncode == 0, again.stderr
    array, table = _lines(tmp_path / "sbatch.txt")[2:]
    assert "--array=1-1%3 " in array and "--dependency=afterany:103:101 " in table
    assert table.split(" scripts/slurm/table.sh")[0].endswith("-p cpu")
    assert again.stdout.count("[sweep] queued") == 2 and again.stdout.count("[sweep] submit ") == 1
    assert "[sweep] skip" in again.stdout and _lines(cell.parent.parent / "tiny_2shots" / "seed2" /
                                                     "slurm_job") == ["103_1"]


def test_slurm_refuses_to_guess_when_squeue_fails(stub, tmp_path):
    assert _coop(stub).returncode == 0
    (tmp_path / "squeue_rc").write_text("1")
    (tmp_path / "queue").write_text("slurm_load_jobs error: Unable to contact slurm controller\n")
    done = _coop(stub)
    assert done.returncode == 1 and "cannot ask Slurm whether job 101 is still queued" in done.stderr
    assert len(_lines(tmp_path / "sbatch.txt")) == 2  # nothing submitted twice
    (tmp_path / "queue").write_text("slurm_load_jobs error: Invalid job id specified\n")  # forgotten: ended
    done = _coop(stub)
    assert done.returncode == 0 and done.stdout.count("[sweep] submit ") == 4


# ---------------------------------------------------------------- a real Slurm
@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running single-node Slurm; SLURM_CONF points at it while the module's tests run."""
    why = _why_no_cluster()
    if why:
        pytest.skip(f"{SLURM_REASON}: {why}")  # a failure under SOFTCPT_REQUIRE_DASSL
    state = str(tmp_path_factory.mktemp("slurm"))
    started = subprocess.run(["bash", CLUSTER, "start", state], capture_output=True, text=True, timeout=120)
    conf = os.path.join(state, "slurm.conf")
    try:
        assert started.returncode == 0, started.stderr
        old = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = conf
        yield state
    finally:
        subprocess.run(["bash", CLUSTER, "stop", state], capture_output=True, timeout=120)
        if "old" in locals():
            if old is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = old


# Makes this machine look like one without root to the pytest it is put in front of.
NOT_ROOT = "import os\nos.geteuid = lambda: 1000\n"


def test_in_ci_a_slurm_test_that_cannot_run_fails(tmp_path):
    """Without root the cluster test skips; with SOFTCPT_REQUIRE_DASSL=1 it fails, saying why."""
    (tmp_path / "sitecustomize.py").write_text(NOT_ROOT)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    env.pop("SOFTCPT_REQUIRE_DASSL", None)  # CI sets it for the suite around this test
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "tests/test_slurm.py::test_slurm_sweep_submits_only_what_is_not_done_or_queued"]
    lenient = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert lenient.returncode == 0 and "1 skipped" in lenient.stdout, lenient.stdout
    assert f"1 skipped because {SLURM_REASON}" in lenient.stdout
    strict = subprocess.run(cmd, cwd=REPO, env=dict(env, SOFTCPT_REQUIRE_DASSL="1"),
                            capture_output=True, text=True, timeout=300)
    # the cluster fixture's skip becomes a failure of the test's set-up: pytest says "error"
    assert strict.returncode == 1 and "1 error" in strict.stdout and "skipped" not in strict.stdout
    assert "a local Slurm needs root" in strict.stdout and "SOFTCPT_REQUIRE_DASSL is set" in strict.stdout


def _slurm(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout


def _jobs() -> list[str]:
    """Every job and array task in the queue, one id each (e.g. 3_2, 4)."""
    return _slurm("squeue", "-h", "-r", "-o", "%i").split()


def _wait_for_empty_queue(seconds: float = 400) -> None:
    deadline = time.time() + seconds
    while _jobs():
        assert time.time() < deadline, f"Slurm jobs still queued: {_jobs()}"
        time.sleep(0.5)


def _node(state: str) -> None:
    node = _slurm("sinfo", "-h", "-o", "%n").split()[0]
    _slurm("scontrol", "update", f"nodename={node}", f"state={state}", *(["reason=test"] if state == "drain" else []))


def _table_out(out, n: int) -> str:
    """The output of the n-th table job (in submission order)."""
    files = sorted(glob.glob(str(out / "toy" / "slurm" / "*-table-*.out")),
                   key=lambda p: int(p.rsplit("-", 1)[1].split(".")[0]))
    assert len(files) >= n, files
    with open(files[n - 1]) as f:
        return f.read()


@needs_dassl
def test_slurm_sweep_submits_only_what_is_not_done_or_queued(slurm, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUTPUT=str(out), DATA=str(tmp_path / "data"), SHOTS="1 2", SEEDS="1 2",
               SKIP_SETUP="1", LAUNCHER="slurm", SLURM_ARGS="--time=20 %2", OMP_NUM_THREADS="1",
               PYTHON=os.environ.get("PYTHON", "python3"))
    cmd = ["bash", "scripts/softcpt/main.sh", "toy", "tiny", "NATA", "OPTIM.MAX_EPOCH", "1"]
    runs = out / "toy" / "SoftCPT" / "NATA"
    cells = [runs / f"tiny_{k}shots" / f"seed{s}" for k in (1, 2) for s in (1, 2)]

    def submit() -> subprocess.CompletedProcess:
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    _node("drain")  # nothing starts: the first submission stays queued
    try:
        first = submit()
        assert first.stdout.count("[sweep] submit ") == 4
        queued = _jobs()
        assert len(queued) == 5  # four tasks and the table job
        array = next(j for j in queued if "_" in j).split("_")[0]
        limits = _slurm("squeue", "-h", "-j", array, "-o", "%l").split()
        assert limits and set(limits) == {"20:00"}  # SLURM_ARGS reached sbatch
        assert "ArrayTaskThrottle=2" in _slurm("scontrol", "show", "job", array)
        with open(cells[1] / "slurm_job") as f:
            assert f.read().strip() == f"{array}_2"

        second = submit()  # while queued: adds nothing
        assert "[sweep] submit " not in second.stdout
        assert second.stdout.count("[sweep] queued") == 4 and "nothing new to submit" in second.stdout
        assert sorted(_jobs()) == sorted(queued)

        _slurm("scancel", f"{array}_2")  # 1 shot, seed 2
    finally:
        _node("resume")
    _wait_for_empty_queue()
    for i, cell in enumerate(cells):
        assert (cell / "done").is_file() == (i != 1)
    assert (cells[0] / f"slurm-{array}_1.out").is_file()  # the task's log, in its run folder
    table = _table_out(out, 1)
    assert "3 run(s) finished, 0 still queued or running, 1 failed." in table
    assert f"tiny_1shots/seed2 (Slurm job {array}_2 never started" in table
    assert "| SoftCPT/NATA | tiny |" in table and "(1/2 seeds)" in table

    third = submit()  # after the jobs ended: only the cancelled cell
    assert third.stdout.count("[sweep] submit ") == 1 and f"submit {cells[1]}" in third.stdout
    assert third.stdout.count("[sweep] skip") == 3
    _wait_for_empty_queue()
    assert all((cell / "done").is_file() for cell in cells)
    for cell in cells:
        assert json.loads((cell / "results.json").read_text())["epoch"] == 1
    table = _table_out(out, 2)
    assert "4 run(s) finished, 0 still queued or running, 0 failed." in table
    assert "failed runs" not in table and "seeds)" not in table  # every cell has both seeds

    last = submit()  # all done: nothing submitted, the table printed here as a serial sweep's
    assert "[sweep] submit " not in last.stdout and not _jobs()
    assert "0 run(s) ran, 4 skipped as finished, 0 failed." in last.stdout
    assert last.stdout[last.stdout.index("## toy"):] == table[table.index("## toy"):]
