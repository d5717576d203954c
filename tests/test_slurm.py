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
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import SLURM_REASON, needs_dassl
from stand_ins import fake_python

# An error the task or a run reports ("[task] error: ...", "error: ..."), not the word in a
# printed config (TRAINER.PLOT.NAN_PLAN: error).
ERROR_LINE = re.compile(r"\berror[: ]")

# Every test here runs the sweep scripts or a Slurm cluster: the full tier.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]  # one local cluster: one worker

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
echo "PYTHON=$PYTHON DATA=$DATA OUTPUT=$OUTPUT" >> "$STUB/sbatch_env.txt"  # what --export=ALL passes on
echo "$n"
"""
FAKE_SQUEUE = """#!/bin/bash
printf '%s\\n' "$*" >> "$STUB/squeue.txt"
cat "$STUB/queue" 2>/dev/null
exit "$(cat "$STUB/squeue_rc" 2>/dev/null || echo 0)"
"""
@pytest.fixture
def stub(tmp_path):
    bin_dir = tmp_path / "bin"
    python = fake_python(bin_dir)  # also `python` on PATH
    for name, text in (("sbatch", FAKE_SBATCH), ("squeue", FAKE_SQUEUE)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", STUB=str(tmp_path), LAUNCHER="slurm",
               PYTHON=python, OUTPUT=str(tmp_path / "out"), DATA=str(tmp_path / "data"),
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
    gpus = "--gres=gpu:1 --gpus-per-node 2 -G1 --gres gpu:a100:1 --mem-per-gpu=8G"
    stub.update(SLURM_ARGS=f"-p gpu {gpus} -t 1:00:00 %3")
    done = _coop(stub)
    assert done.returncode == 0, done.stderr
    array, table = _lines(tmp_path / "sbatch.txt")
    cmds = glob.glob(str(tmp_path / "out" / "toy" / "slurm" / "*.cmds"))[0]
    assert "--array=1-4%3 " in array and "--requeue" in array and "--open-mode=append" in array
    assert "--signal=B:USR1@180 " in array and "--export=ALL " in array  # the defaults
    assert array.endswith(f"-p gpu {gpus} -t 1:00:00 scripts/slurm/task.sh {cmds}")
    # The table job: no GPU request of any form, the rest of SLURM_ARGS kept.
    assert "--dependency=afterany:101 " in table and "-p gpu -t 1:00:00 scripts/slurm/table.sh" \
        in table and "%3" not in table and "--export=ALL " in table
    assert not any(word in table for word in ("gres", "gpu:", "-G", "gpus", "8G"))
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


def test_slurm_submission_names_absolute_paths_and_exports_all(stub, tmp_path):
    """A task runs on another node, maybe with another PATH and working directory."""
    rel = os.path.relpath(tmp_path, REPO)
    stub.update(PYTHON="python", DATA=f"{rel}/data", OUTPUT=f"./{rel}/out", SLURM_SIGNAL_SECS="45")
    done = _coop(stub)
    assert done.returncode == 0, done.stderr
    python = str(tmp_path / "bin" / "python")  # the bare word, as found on PATH at submission
    cmds = glob.glob(str(tmp_path / "out" / "toy" / "slurm" / "*.cmds"))[0]
    run = os.path.join(REPO, rel, "out", "toy", "CoOp", "CA", "tiny_1shots", "seed1")
    assert _lines(cmds)[0].startswith(f"{run} {python} train.py --output-dir {run} "
                                      f"--root {os.path.join(REPO, rel, 'data')} ")
    array, table = _lines(tmp_path / "sbatch.txt")
    assert "--signal=B:USR1@45 " in array
    exported = f"PYTHON={python} DATA={os.path.join(REPO, rel, 'data')} OUTPUT={os.path.join(REPO, rel, 'out')}"
    assert _lines(tmp_path / "sbatch_env.txt") == [exported, exported]  # for the tasks and the table job

    (tmp_path / "out").rename(tmp_path / "out1")
    defaults = {k: v for k, v in stub.items() if k not in ("PYTHON", "DATA")}  # the scripts' own defaults
    done = _coop(dict(defaults, SLURM_SIGNAL_SECS="0"))  # no warning, so no requeue at the time limit
    assert done.returncode == 0 and "--signal" not in _lines(tmp_path / "sbatch.txt")[2]
    assert _lines(tmp_path / "sbatch_env.txt")[2].startswith(f"PYTHON={python} DATA={os.path.join(REPO, 'data')} ")
    done = _coop(dict(stub, SLURM_SIGNAL_SECS="1m"))
    assert done.returncode == 2 and "SLURM_SIGNAL_SECS is '1m'" in done.stderr


def test_base2new_test_cells_wait_for_queued_training_tasks(stub, tmp_path):
    stub.update(SHOTS="16", SEEDS="1 2 3")
    train = tmp_path / "out" / "base2new" / "train_base" / "toy" / "shots_16" / "SoftCPT" / "NATA" / "tiny"
    for seed, task in ((1, "90_1"), (2, "90_2")):
        os.makedirs(train / f"seed{seed}")
        (train / f"seed{seed}" / "slurm_job").write_text(task + "\n")
    (tmp_path / "queue").write_text("90_1\n")  # seed 1 still training; seed 2's task ended, unfinished
    os.makedirs(train / "seed3")
    (train / "seed3" / "done").touch()
    done = subprocess.run(["bash", "scripts/softcpt/base2new_test.sh"], cwd=REPO, env=stub, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    array, table = _lines(tmp_path / "sbatch.txt")
    assert "--array=1-2 " in array and "--dependency=afterok:90_1 --kill-on-invalid-dep=yes " in array
    assert "--dependency=afterany:101 " in table
    assert f"submit {str(train).replace('train_base', 'test_new')}/seed1 (after Slurm job 90_1)" in done.stdout
    assert f"seed2 (needs the finished run {train}/seed2)" in done.stderr  # nothing would finish it
    cmds = _lines(glob.glob(str(tmp_path / "out" / "base2new" / "slurm" / "*.cmds"))[0])
    assert [c.split()[0].rsplit("/", 1)[1] for c in cmds] == ["seed1", "seed3"]


# Stands in for train.py in the task script's signal handling: saves an "epoch" when
# $SAVE is set, then trains until SIGTERM, which it reports like train.py (exit 143) with
# $STOP_LINE. Its import check (-c) waits for $STUB/go when $STALL_PREFLIGHT is set.
FAKE_TRAIN = """#!/bin/bash
if [ "$1" = -c ]; then
    if [ -n "${{STALL_PREFLIGHT:-}}" ]; then
        touch "$STUB/preflight"
        for _ in $(seq 400); do [ -f "$STUB/go" ] && break; sleep 0.05; done
    fi
    [ -n "${{BROKEN_ON_NODE:-}}" ] && echo "Dassl (ModuleNotFoundError: No module named 'dassl')"; exit 0
fi
while [ $# -gt 0 ]; do case "$1" in --output-dir) out=$2 ;; esac; shift; done
trap 'echo "${{STOP_LINE:-stopped by signal SIGTERM}}"; exit 143' TERM
mkdir -p "$out/prompt_learner"
if [ -n "${{SAVE:-}}" ]; then touch "$out/prompt_learner/model.pth.tar-1"; fi
echo "training $out"
echo started > "$out/started"
sleep 60 & wait
"""
FAKE_SCONTROL = """#!/bin/bash
echo "$*" >> "$STUB/scontrol.txt"
# As Slurm ends the allocation of a requeued job: SIGTERM to the task and to scontrol.
if [ -n "${REQUEUE_KILLS:-}" ]; then kill -TERM "$PPID"; exit 143; fi
"""


def _task(tmp_path, **env) -> tuple[subprocess.Popen, str]:
    """scripts/slurm/task.sh on a one-line command file, as Slurm starts it (job 77_1, id 78)."""
    for name, text in (("train", FAKE_TRAIN.format()), ("scontrol", FAKE_SCONTROL)):
        (tmp_path / "bin" / name).write_text(text)
        (tmp_path / "bin" / name).chmod(0o755)
    run = tmp_path / "run"
    (tmp_path / "task.cmds").write_text(f"{run} {tmp_path / 'bin' / 'train'} train.py --output-dir {run}\n")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "STUB": str(tmp_path),
           "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_JOB_ID": "77", "SLURM_JOB_ID": "78", "SLURM_RESTART_COUNT": "0",
           **env}
    proc = subprocess.Popen(["bash", "scripts/slurm/task.sh", str(tmp_path / "task.cmds")], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, str(run)


def _started(proc, run: str) -> None:
    deadline = time.time() + 20
    while not os.path.exists(os.path.join(run, "started")):
        assert proc.poll() is None and time.time() < deadline, "the run did not start"
        time.sleep(0.05)


def _read(path) -> str:
    with open(path) as f:
        return f.read()


def test_task_stops_its_run_and_requeues_itself_before_the_time_limit(stub, tmp_path):
    os.makedirs(tmp_path / "run")
    (tmp_path / "run" / ".slurm_no_progress").write_text("77_1 0\n")  # start 1 saved nothing
    proc, run = _task(tmp_path, SAVE="1", SLURM_RESTART_COUNT="1", REQUEUE_KILLS="1")
    _started(proc, run)
    proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@SECS sends
    assert proc.wait(timeout=20) == 0
    log = _read(os.path.join(run, "slurm-77_1.out"))
    assert "stopped by signal SIGTERM" in log  # the run was stopped cleanly
    assert "the time limit is near (SIGUSR1): run stopped (exit code 143); requeueing job 77_1" in log
    # the requeue's own SIGTERM
    assert "SIGTERM received" in log and "requeued." in log and not ERROR_LINE.search(log)
    assert _lines(tmp_path / "scontrol.txt") == ["requeue 77_1"]
    assert not os.path.exists(os.path.join(run, ".slurm_no_progress"))  # this start saved an epoch


def _old_checkpoint(tmp_path) -> None:
    """An epoch saved by an earlier allocation."""
    os.makedirs(tmp_path / "run" / "prompt_learner", exist_ok=True)
    old = tmp_path / "run" / "prompt_learner" / "model.pth.tar-1"
    old.touch()
    os.utime(old, (time.time() - 3600,) * 2)


def test_task_without_progress_is_requeued_once_and_not_after_scancel(stub, tmp_path):
    """An allocation that saves no epoch is requeued once (the next has the whole time limit);
    the next one without progress is not. Another job's record does not count."""
    _old_checkpoint(tmp_path)
    (tmp_path / "run" / ".slurm_no_progress").write_text("55_1 0\n")  # an earlier submission's
    # An earlier start's stop line says nothing about this one's.
    (tmp_path / "run" / "slurm-77_1.out").write_text("stopped by signal SIGTERM after epoch 3 of 3 (...)\n")
    proc, run = _task(tmp_path)
    _started(proc, run)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=20) == 0
    log = _read(os.path.join(run, "slurm-77_1.out"))
    assert "the time limit is near (SIGUSR1) before this allocation saved a checkpoint (run stopped, exit " \
           "code 143): requeueing job 77_1 once more" in log
    assert _lines(tmp_path / "scontrol.txt") == ["requeue 77_1"]
    assert _lines(tmp_path / "run" / ".slurm_no_progress") == ["77_1 0"]

    os.remove(os.path.join(run, "started"))
    proc, run = _task(tmp_path, SLURM_RESTART_COUNT="1")  # the requeued start, no progress again
    _started(proc, run)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=20) == 1
    log = _read(os.path.join(run, "slurm-77_1.out"))
    assert "start 2" in log and "and the previous allocation saved no checkpoint either: not requeued" in log
    assert "a longer -t" in log and "the import check, one epoch and the final evaluation" in log
    assert _lines(tmp_path / "scontrol.txt") == ["requeue 77_1"]  # no second requeue
    assert not os.path.exists(os.path.join(run, ".slurm_no_progress"))

    os.remove(os.path.join(run, "started"))
    os.remove(tmp_path / "scontrol.txt")
    proc, run = _task(tmp_path, SAVE="1")
    _started(proc, run)
    proc.send_signal(signal.SIGTERM)  # scancel
    assert proc.wait(timeout=20) == 143
    assert "not requeued; run the same sweep command again" in _read(os.path.join(run, "slurm-77_1.out"))
    assert not (tmp_path / "scontrol.txt").exists()


def test_task_warned_during_its_import_check_requeues_without_running(stub, tmp_path):
    """Issue 25: the warning during the import check used to end the task unrequeued."""
    proc, run = _task(tmp_path, STALL_PREFLIGHT="1")
    deadline = time.time() + 20
    while not (tmp_path / "preflight").exists():
        assert proc.poll() is None and time.time() < deadline, "the import check did not start"
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    (tmp_path / "go").touch()
    assert proc.wait(timeout=20) == 0
    log = _read(os.path.join(run, "slurm-77_1.out"))
    assert "the time limit is near (SIGUSR1) before its run started (during the import check): requeueing " \
           "job 77_1 once more" in log
    assert "training" not in log and not os.path.exists(os.path.join(run, "started"))  # not run
    assert _lines(tmp_path / "scontrol.txt") == ["requeue 77_1"]

    (tmp_path / "preflight").unlink()  # the next start: warned there again, -t is too short
    (tmp_path / "go").unlink()
    proc, run = _task(tmp_path, STALL_PREFLIGHT="1", SLURM_RESTART_COUNT="1")
    while not (tmp_path / "preflight").exists():
        assert proc.poll() is None and time.time() < deadline + 20, "the import check did not start"
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    (tmp_path / "go").touch()
    assert proc.wait(timeout=20) == 1
    log = _read(os.path.join(run, "slurm-77_1.out"))
    assert "(SIGUSR1) before its run started (during the import check), and the previous allocation saved no " \
           "checkpoint either: not requeued" in log
    assert _lines(tmp_path / "scontrol.txt") == ["requeue 77_1"]


def test_task_warned_with_only_the_evaluation_left_requeues(stub, tmp_path):
    """Issue 25: all epochs saved earlier, the warning during the final evaluation: requeued
    (the next start evaluates with the whole time limit), and the log says why."""
    _old_checkpoint(tmp_path)
    stop = (f"stopped by signal SIGTERM after epoch 3 of 3 (saved in {tmp_path}/run/prompt_learner/model.pth.tar-3):"
            " run the same command again to resume from epoch 3")
    (tmp_path / "run" / "slurm-77_1.out").write_text("stopped by signal SIGTERM after epoch 2 of 3 (...)\n")
    proc, run = _task(tmp_path, STOP_LINE=stop)
    _started(proc, run)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=20) == 0
    log = _read(os.path.join(run, "slurm-77_1.out"))
    assert "the time limit is near (SIGUSR1) with only the final evaluation left (all 3 epochs were saved " \
           "before) (run stopped, exit code 143): requeueing job 77_1 once more" in log
    assert _lines(tmp_path / "scontrol.txt") == ["requeue 77_1"]


def test_task_checks_imports_on_its_node_and_names_it(stub, tmp_path):
    proc, run = _task(tmp_path, BROKEN_ON_NODE="1")
    assert proc.wait(timeout=20) == 3
    log = _read(os.path.join(run, "slurm-77_1.out"))
    assert f"[task] error on node {socket.gethostname()}: {tmp_path / 'bin' / 'train'} cannot import: Dassl " \
           "(ModuleNotFoundError" in log
    assert "scripts/setup.sh" in log and "training" not in log  # the run was not started


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
    env = dict(os.environ, OUTPUT=str(out), DATA=str(tmp_path / "data"), SHOTS="1", SEEDS="1 2",
               SKIP_SETUP="1", LAUNCHER="slurm", SLURM_ARGS="--time=20 %2", OMP_NUM_THREADS="1",
               PYTHON=os.environ.get("PYTHON", "python3"))
    cmd = ["bash", "scripts/softcpt/main.sh", "toy", "tiny", "NATA", "OPTIM.MAX_EPOCH", "1"]
    runs = out / "toy" / "SoftCPT" / "NATA"
    cells = [runs / "tiny_1shots_OPTIM.MAX_EPOCH-1" / f"seed{s}" for s in (1, 2)]

    def submit() -> subprocess.CompletedProcess:
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    _node("drain")  # nothing starts: the first submission stays queued
    try:
        first = submit()
        assert first.stdout.count("[sweep] submit ") == 2
        queued = _jobs()
        assert len(queued) == 3  # two tasks and the table job
        array = next(j for j in queued if "_" in j).split("_")[0]
        limits = _slurm("squeue", "-h", "-j", array, "-o", "%l").split()
        assert limits and set(limits) == {"20:00"}  # SLURM_ARGS reached sbatch
        assert "ArrayTaskThrottle=2" in _slurm("scontrol", "show", "job", array)
        with open(cells[1] / "slurm_job") as f:
            assert f.read().strip() == f"{array}_2"

        second = submit()  # while queued: adds nothing
        assert "[sweep] submit " not in second.stdout
        assert second.stdout.count("[sweep] queued") == 2 and "nothing new to submit" in second.stdout
        assert sorted(_jobs()) == sorted(queued)

        _slurm("scancel", f"{array}_2")  # 1 shot, seed 2
    finally:
        _node("resume")
    _wait_for_empty_queue()
    for i, cell in enumerate(cells):
        assert (cell / "done").is_file() == (i != 1)
    assert (cells[0] / f"slurm-{array}_1.out").is_file()  # the task's log, in its run folder
    table = _table_out(out, 1)
    assert "1 run(s) finished, 0 still queued or running, 1 failed." in table
    assert f"tiny_1shots_OPTIM.MAX_EPOCH-1/seed2 (Slurm job {array}_2 never started" in table
    assert "| SoftCPT/NATA OPTIM.MAX_EPOCH=1 | tiny |" in table and "(1/2 seeds)" in table

    third = submit()  # after the jobs ended: only the cancelled cell
    assert third.stdout.count("[sweep] submit ") == 1 and f"submit {cells[1]}" in third.stdout
    assert third.stdout.count("[sweep] skip") == 1
    _wait_for_empty_queue()
    assert all((cell / "done").is_file() for cell in cells)
    for cell in cells:
        assert json.loads((cell / "results.json").read_text())["epoch"] == 1
    table = _table_out(out, 2)
    assert "2 run(s) finished, 0 still queued or running, 0 failed." in table
    assert "failed runs" not in table and "seeds)" not in table  # every cell has both seeds

    last = submit()  # all done: nothing submitted, the table printed here as a serial sweep's
    assert "[sweep] submit " not in last.stdout and not _jobs()
    assert "0 run(s) ran, 2 skipped as finished, 0 failed." in last.stdout
    assert last.stdout[last.stdout.index("## toy"):] == table[table.index("## toy"):]


def _pids_of(run) -> list[int]:
    """The processes of the run writing to `run` (train.py, and its loader workers if any)."""
    found = subprocess.run(["pgrep", "-f", "--", f"--output-dir {run} "], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


_HELD_SINCE: dict[str, float] = {}  # requeued job -> when _hurry_requeued first saw it held


def _hurry_requeued(seconds: float) -> None:
    """Slurm holds a requeued job for two minutes (its BeginTime); start it after `seconds`
    instead. Not sooner: slurmd refuses a job credential issued in the second its previous
    one was revoked ("Killing non-startable batch job: Job credential revoked")."""
    now = time.time()
    for line in _slurm("squeue", "-h", "-r", "-t", "PENDING", "-o", "%A %r").splitlines():
        job, reason = line.split(maxsplit=1)
        if reason.strip() != "BeginTime":
            continue
        since = _HELD_SINCE.setdefault(job, now)
        if now - since >= seconds:
            subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], capture_output=True,
                           timeout=60)
            del _HELD_SINCE[job]


@needs_dassl
def test_slurm_run_longer_than_its_time_limit_finishes_over_several_allocations(slurm, tmp_path):
    """-t 2 with the warning 30 s before it (Slurm sends it 30-60 s early, so 60-90 s into
    the allocation): the run is paused (SIGSTOP) once its first epoch is saved, as a node
    stalled on I/O would be, so that whatever this machine's speed it is still running when
    the warning comes; it goes on then (SIGCONT), and the task stops it and requeues itself
    until the run is done, with the results of one uninterrupted run, bit for bit."""
    epochs = 30  # about 15 s of training here: the next allocation finishes it (or is requeued too)
    env = dict(os.environ, OUTPUT=str(tmp_path / "out"), DATA=str(tmp_path / "data"), SHOTS="16", SEEDS="1",
               SKIP_SETUP="1", LAUNCHER="slurm", SLURM_ARGS="-t 2", SLURM_SIGNAL_SECS="30",
               OMP_NUM_THREADS="1", PYTHON=os.environ.get("PYTHON", "python3"))
    opts = ["OPTIM.MAX_EPOCH", str(epochs)]
    done = subprocess.run(["bash", "scripts/softcpt/main.sh", "toy", "tiny", "NATA", *opts], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    run = tmp_path / "out" / "toy" / "SoftCPT" / "NATA" / f"tiny_16shots_OPTIM.MAX_EPOCH-{epochs}" / "seed1"
    # The same run in one go, meanwhile (one thread each, so the arithmetic is the same).
    reference = subprocess.Popen(
        [env["PYTHON"], "train.py", "--output-dir", str(tmp_path / "reference"), "--root", str(tmp_path / "ref_data"),
         "--seed", "1", "--trainer", "SoftCPT", "--dataset-config-file", "configs/datasets/toy.yaml",
         "--config-file", "configs/trainers/SoftCPT/tiny.yaml", "DATASET.NUM_SHOTS", "16",
         "TRAINER.SOFTCPT.VARIANT", "NATA", *opts], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    paused: list[int] = []
    try:
        deadline = time.time() + 300
        while not (run / "prompt_learner" / "model.pth.tar-1").exists():
            assert time.time() < deadline and _jobs(), f"the run saved no epoch: {_jobs()}"
            time.sleep(0.1)
        paused = _pids_of(run)
        for pid in paused:
            os.kill(pid, signal.SIGSTOP)
        assert paused and not (run / "done").exists(), "the run was over before it could be paused"
        while "SIGUSR1 received" not in "".join(_read(p) for p in run.glob("slurm-*_1.out")):
            assert time.time() < deadline, f"no warning from Slurm: {_jobs()}"
            time.sleep(0.5)
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
        paused = []
        deadline = time.time() + 300
        while _jobs():
            assert time.time() < deadline, f"still queued: {_jobs()}"
            _hurry_requeued(3)
            time.sleep(1)
        assert reference.wait(timeout=600) == 0
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
        if reference.poll() is None:
            reference.kill()
    log = _read(next(run.glob("slurm-*_1.out")))
    slurm_out = "".join(_read(p) for p in (tmp_path / "out" / "toy" / "slurm").glob("*_1.out"))  # Slurm's own
    requeues = log.count("the time limit is near (SIGUSR1): run stopped")
    assert requeues >= 1 and f"start {requeues + 1}" in log, (log[-3000:], slurm_out)
    assert log.count("requeued.") == requeues and (run / "done").is_file(), (log[-3000:], slurm_out)
    assert "not requeued" not in log and "DUE TO TIME LIMIT" not in slurm_out
    ours, theirs = (json.loads((d / "results.json").read_text()) for d in (run, tmp_path / "reference"))
    assert ours["epoch"] == epochs and ours["resumed_from_epoch"] is not None
    assert (ours["score"], ours["tasks"]) == (theirs["score"], theirs["tasks"])
    import torch
    final = f"prompt_learner/model.pth.tar-{epochs}"
    a, b = (torch.load(d / final, map_location="cpu", weights_only=False)["state_dict"]
            for d in (run, tmp_path / "reference"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@needs_dassl
def test_slurm_base2new_tests_wait_for_their_training_tasks_whatever_sbatch_export_says(slurm, tmp_path):
    """Both steps submitted at once, as a site with SBATCH_EXPORT=NONE, relative DATA and
    OUTPUT, and the interpreter as a bare word: the test array starts after the training
    tasks (afterok) and the table has base, new and H."""
    rel = os.path.relpath(tmp_path, REPO)
    python = shutil.which(os.environ.get("PYTHON", "python3"))
    env = dict(os.environ, OUTPUT=f"{rel}/out", DATA=f"./{rel}/data", SHOTS="1", SEEDS="1 2", SKIP_SETUP="1",
               LAUNCHER="slurm", SLURM_ARGS="--time=20", OMP_NUM_THREADS="1", SBATCH_EXPORT="NONE",
               PATH=f"{os.path.dirname(python)}:{os.environ['PATH']}", PYTHON=os.path.basename(python))
    args = ["toy", "tiny", "NATA", "OPTIM.MAX_EPOCH", "1"]
    _node("drain")  # nothing starts before both are submitted
    try:
        submitted = {}
        for step in ("train", "test"):
            done = subprocess.run(["bash", f"scripts/softcpt/base2new_{step}.sh", *args], cwd=REPO, env=env,
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr
            submitted[step] = done.stdout
        train_array = submitted["train"].split("as Slurm job array ")[1].split()[0]
        test_array = submitted["test"].split("as Slurm job array ")[1].split()[0]
        assert f"(after Slurm job {train_array}_1)" in submitted["test"]
        show = _slurm("scontrol", "show", "job", test_array)
        assert f"Dependency=afterok:{train_array}_1" in show and f"afterok:{train_array}_2" in show
        cmds = _lines(glob.glob(str(tmp_path / "out" / "base2new" / "slurm" / "*.cmds"))[0])
        assert cmds[0].split()[1] == python  # resolved at submission
    finally:
        _node("resume")
    _wait_for_empty_queue()
    b2n = tmp_path / "out" / "base2new"
    for split in ("train_base", "test_new"):
        for seed in (1, 2):
            run = b2n / split / "toy" / "shots_1" / "SoftCPT" / "NATA" / "tiny_OPTIM.MAX_EPOCH-1" / f"seed{seed}"
            assert (run / "done").is_file(), split
    tables = sorted(glob.glob(str(b2n / "slurm" / "*-table-*.out")), key=lambda p: int(p.rsplit("-", 1)[1][:-4]))
    table = _read(tables[-1])
    assert "2 run(s) finished, 0 still queued or running, 0 failed." in table
    assert "| toy | SoftCPT/NATA OPTIM.MAX_EPOCH=1 | tiny | 1 |" in table  # the base-to-new row, with H


@needs_dassl
def test_slurm_task_checks_imports_on_its_own_node(slurm, tmp_path):
    """An interpreter that imports everything where the sweep is submitted but lacks Dassl
    inside Slurm jobs: the task says so, naming its node, and runs nothing."""
    python = shutil.which(os.environ.get("PYTHON", "python3"))
    wrapper = tmp_path / "python"
    wrapper.write_text(f"""#!/bin/bash
if [ -n "${{SLURM_JOB_ID:-}}" ] && [ "$1" = -c ]; then echo "Dassl (ModuleNotFoundError: no dassl here)"; exit 0; fi
exec {python} "$@"
""")
    wrapper.chmod(0o755)
    out = tmp_path / "out"
    env = dict(os.environ, OUTPUT=str(out), DATA=str(tmp_path / "data"), SHOTS="1", SEEDS="1", SKIP_SETUP="1",
               LAUNCHER="slurm", SLURM_ARGS="--time=20", PYTHON=str(wrapper))
    done = subprocess.run(["bash", "scripts/coop/main.sh", "toy", "tiny", "CA"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    _wait_for_empty_queue()
    run = out / "toy" / "CoOp" / "CA" / "tiny_1shots" / "seed1"
    log = _read(next(run.glob("slurm-*.out")))
    node = _slurm("sinfo", "-h", "-o", "%n").split()[0]
    assert f"[task] error on node {socket.gethostname()}: {wrapper} cannot import: Dassl" in log, log
    assert socket.gethostname() == node or node in log
    assert not (run / "log.txt").exists()  # train.py never started
    assert "cannot import: Dassl" in _table_out(out, 1)  # the table job runs there too, and checks


# The interpreter of the requeue test: task 1's first import check waits for $STALL/go, so
# that Slurm's warning lands there.
STALLING_PYTHON = """#!/bin/bash
if [ "$1" = -c ] && [[ "$2" == "# sweep pre-flight"* ]] && [ "${{SLURM_ARRAY_TASK_ID:-}}" = 1 ] \\
        && [ "${{SLURM_RESTART_COUNT:-0}}" = 0 ]; then
    touch "$STALL/preflight"
    for _ in $(seq 1200); do [ -f "$STALL/go" ] && break; sleep 0.05; done
fi
exec {python} "$@"
"""


@needs_dassl
def test_slurm_warning_in_the_import_check_or_the_final_evaluation_requeues(slurm, tmp_path):
    """Issue 25 on the local Slurm, the warning sent as --signal=B:USR1 sends it (scancel -b):
    task 1 is warned during its import check (its run, a stand-in, writes `done`), task 2
    (a toy run whose only epoch was saved earlier) once its run has started; each is
    requeued (or task 2 finishes its evaluation) and ends done."""
    python = shutil.which(os.environ.get("PYTHON", "python3"))
    wrapper = tmp_path / "python"
    wrapper.write_text(STALLING_PYTHON.format(python=python))
    wrapper.chmod(0o755)
    env = dict(os.environ, STALL=str(tmp_path), OMP_NUM_THREADS="1")
    runs = [tmp_path / f"run{task}" for task in (1, 2)]
    train = [str(wrapper), "train.py", "--output-dir", str(runs[1]), "--root", str(tmp_path / "data"), "--seed",
             "1", "--trainer", "SoftCPT", "--dataset-config-file", "configs/datasets/toy.yaml", "--config-file",
             "configs/trainers/SoftCPT/tiny.yaml", "DATASET.NUM_SHOTS", "1", "OPTIM.MAX_EPOCH", "1"]
    stand_in = [str(wrapper), "-c", f"open('{runs[0]}/done', 'w').write('finished')"]
    cmds = tmp_path / "task.cmds"
    cmds.write_text("".join(f"{run} {shlex.join(a)}\n" for run, a in zip(runs, (stand_in, train))))
    # Task 2's run trains its only epoch meanwhile and is stopped before its evaluation
    # (done and results.json removed); the task is held until then.
    first = subprocess.Popen(train, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.monotonic()
    out = subprocess.run(["sbatch", "--parsable", "--hold", "--array=1-2", "--requeue", "--open-mode=append",
                          "-t", "10", f"--chdir={REPO}", "--export=ALL", "-o", str(tmp_path / "slurm-%A_%a.out"),
                          "scripts/slurm/task.sh", str(cmds)], env=env, check=True, capture_output=True,
                         text=True, timeout=60).stdout
    array = out.strip().split(";")[0]
    _slurm("scontrol", "release", f"{array}_1")

    def wait_for(what, check, seconds=180, every=0.1):
        deadline = time.monotonic() + seconds
        while not check():
            assert time.monotonic() < deadline, f"{what}: {_jobs()}"
            time.sleep(every)

    try:
        wait_for("task 1's import check", (tmp_path / "preflight").exists)
        _slurm("scancel", "-b", "-s", "USR1", f"{array}_1")
        time.sleep(3)  # delivered (the shell runs its trap once the check returns)
        (tmp_path / "go").touch()
        assert first.wait(timeout=300) == 0
    finally:
        if first.poll() is None:
            first.kill()
    for name in ("done", "results.json"):
        (runs[1] / name).unlink()
    _slurm("scontrol", "release", f"{array}_2")
    log2 = runs[1] / "log.txt"
    wait_for("task 2's run", lambda: "a new attempt of this run" in log2.read_text())  # its handler is set
    _slurm("scancel", "-b", "-s", "USR1", f"{array}_2")
    wait_for("the requeued tasks", lambda: not _jobs() or _hurry_requeued(3), seconds=400, every=1)
    took = time.monotonic() - started
    logs = [_read(next(run.glob("slurm-*.out"))) for run in runs]
    assert "SIGUSR1 received" in logs[0] and "the time limit is near (SIGUSR1) before its run started (during " \
        "the import check): requeueing job" in logs[0], logs[0]
    assert "start 2" in logs[0] and (runs[0] / "done").is_file(), logs[0]
    assert "SIGUSR1 received" in logs[1], logs[1]
    if "after epoch 1 of 1" in _read(log2):  # stopped: requeued, evaluated by the next start
        assert "(SIGUSR1) with only the final evaluation left (all 1 epochs were saved before) (run stopped, " \
            "exit code 143): requeueing job" in logs[1] and "start 2" in logs[1], logs[1]
    else:  # the run went on to finish its evaluation in the same allocation
        assert "start 2" not in logs[1], logs[1]
    assert (runs[1] / "done").is_file() and json.loads((runs[1] / "results.json").read_text())["epoch"] == 1
    for log in logs:
        assert log.count("requeueing job") == log.count("requeued.") <= 1, log
        assert "either: not requeued" not in log and not ERROR_LINE.search(log), log
    assert not any((run / ".slurm_no_progress").exists() for run in runs)
    print(f"requeue test: {took:.0f} s from submission")
