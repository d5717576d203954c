"""GPUS / JOBS: several runs of a sweep at a time on one machine.

Slots, devices, failures and interruption run against a stand-in for ``python
train.py`` that records its environment; the last test compares real runs of
JOBS=2 with a serial sweep.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import SERIAL_TOY_GROUP, needs_dassl
from stand_ins import fake_python

# Each test runs the sweep scripts (with a stand-in for train.py, or real runs): the full tier.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

@pytest.fixture
def fake_env(tmp_path):
    env = dict(os.environ, PYTHON=fake_python(tmp_path), RUNS=str(tmp_path / "runs.txt"), FAIL_SEED="", SLEEP="0",
               OUTPUT=str(tmp_path / "out"), DATA=str(tmp_path / "data"), SKIP_SETUP="1",
               SHOTS="1 4", SEEDS="1 2 3")
    for key in ("GPUS", "JOBS", "OMP_NUM_THREADS", "LAUNCHER"):
        env.pop(key, None)
    return env


def sweep(env, *args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "scripts/coop/main.sh", "toy", "tiny", "CA", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, **kwargs)


def started(env) -> list[list[str]]:
    """The runs started, each as [output folder, gpu=..., threads=..., start=...] ($RUNS)."""
    with open(env["RUNS"]) as f:
        return [line.split() for line in f.read().splitlines()]


def live_runs(runs: list[str]) -> list[str]:
    """The runs (output folders) named on the command line of a live process."""
    live = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()  # read once, then checked for every run
        except OSError:  # ended meanwhile
            continue
        live.update(run for run in runs if run.encode() in cmdline)
    return sorted(live)


def test_live_runs_checks_every_run(tmp_path):
    """The check above can fail, for any run: a process standing in for the second run is seen."""
    runs = [str(tmp_path / "seed1"), str(tmp_path / "seed2")]
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", runs[1]])
    try:
        deadline = time.monotonic() + 20  # until the child has exec'd, its cmdline is ours
        while live_runs(runs) != [runs[1]] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live_runs(runs) == [runs[1]]
    finally:
        proc.kill()
        proc.wait()
    assert live_runs(runs) == []


def test_gpus_run_one_at_a_time_per_listed_device(fake_env, tmp_path):
    # GPUS must name GPUs the machine has (scripts/parallel.sh asks nvidia-smi -L): two.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/bash\necho 'GPU 0: A (UUID: GPU-0)'; echo 'GPU 1: A (UUID: GPU-1)'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    fake_env.update(GPUS="0 1", SLEEP="0.5", PATH=f"{bin_dir}:{fake_env['PATH']}")
    done = sweep(fake_env)
    assert done.returncode == 0, done.stderr
    runs = started(fake_env)
    assert len(runs) == 6
    assert {r[1] for r in runs} == {"gpu=0", "gpu=1"}
    # the script's own source of the core count: nproc (the CPU set under Docker or Slurm,
    # which os.cpu_count() ignores)
    cores = int(subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout)
    threads = max(1, cores // 2)
    assert all(r[2] == f"threads={threads}" for r in runs)
    # Never two at once on a GPU: each run on a device starts after the one before it ended.
    for gpu in ("gpu=0", "gpu=1"):
        starts = sorted(float(r[3].split("=")[1]) for r in runs if r[1] == gpu)
        assert all(b - a >= 0.5 for a, b in zip(starts, starts[1:]))
    assert done.stdout.count("[sweep] ended") == 6 and "[GPU 1]" in done.stdout
    first = os.path.join(fake_env["OUTPUT"], "toy", "CoOp", "CA", "tiny_1shots", "seed1")
    with open(os.path.join(first, "console.txt")) as f:
        assert f.read() == f"training {first}\n"
    assert "(3/3 seeds)" not in done.stdout and "| CoOp/CA | tiny |" in done.stdout

    again = sweep(fake_env)  # all done: skipped, as in a serial sweep
    assert again.returncode == 0 and "0 run(s) ran, 6 skipped as finished, 0 failed" in again.stdout
    assert len(started(fake_env)) == 6


def test_jobs_failures_and_table_match_a_serial_sweep(fake_env, tmp_path):
    fake_env.update(FAIL_SEED="2")
    serial = sweep(fake_env)
    # All at once, the 1-shot runs slower: 4 shots seed 2 fails first but is listed second.
    parallel = sweep(dict(fake_env, JOBS="6", OUTPUT=str(tmp_path / "par"), SLEEP="1", SLOW_SHOTS="1"))
    assert serial.returncode == parallel.returncode == 1
    assert "6 run(s) ran, 0 skipped as finished, 2 failed." in parallel.stdout
    ended = [line for line in parallel.stdout.splitlines() if line.startswith("[sweep] ended")]
    order = [i for i, line in enumerate(ended) if "seed2 (exit code 3)" in line]
    assert "4shots" in ended[order[0]] and "1shots" in ended[order[1]]
    par = str(tmp_path / "par")
    failed = serial.stderr[serial.stderr.index("[sweep] failed runs"):]
    assert failed.count("exit code 3") == 2
    assert parallel.stderr.replace(par, fake_env["OUTPUT"]) == failed  # same list, same order
    table = serial.stdout[serial.stdout.index("## toy"):]
    assert parallel.stdout[parallel.stdout.index("## toy"):].replace(par, fake_env["OUTPUT"]) == table
    assert all(r[1] == "gpu=none" for r in started(fake_env))


@pytest.mark.parametrize("env, message", [
    ({"JOBS": "two"}, "JOBS is 'two'"),
    ({"JOBS": "0"}, "JOBS is '0'"),
    ({"GPUS": "0 1", "JOBS": "2"}, "set GPUS (one run per listed GPU) or JOBS, not both"),
    ({"LAUNCHER": "pbs"}, "LAUNCHER is 'pbs'; allowed: local, slurm"),
    ({"LAUNCHER": "slurm", "GPUS": "0"}, "GPUS and JOBS are for LAUNCHER=local"),
])
def test_bad_parallel_settings_stop_before_any_run(fake_env, env, message):
    done = sweep(dict(fake_env, **env))
    assert done.returncode == 2 and message in done.stderr
    assert not os.path.exists(fake_env["RUNS"])


def test_sigterm_stops_every_run_in_progress(fake_env):
    fake_env.update(JOBS="2", SLEEP="60")
    proc = subprocess.Popen(["bash", "scripts/coop/main.sh", "toy", "tiny", "CA"], cwd=REPO, env=fake_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not (os.path.exists(fake_env["RUNS"]) and len(started(fake_env)) == 2):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    runs = [r[0] for r in started(fake_env)]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 130
    assert "[sweep] interrupted" in proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    assert not live_runs(runs), "runs outlived the sweep"
    assert len(started(fake_env)) == 2  # no run started after the signal


# ---------------------------------------------------------------- real runs
def without_train_minutes(text: str) -> str:
    """The printed tables without their last column, ``train min``: measured wall-clock time,
    never the same twice (every other cell must be)."""
    out, timed = [], False
    for line in text.splitlines():
        if not line.startswith("|"):
            timed = False
        elif line.startswith("| method |"):
            timed = line.endswith("| train min |")
        if timed:
            line = line.rsplit("|", 2)[0] + "|"
        out.append(line)
    return "\n".join(out)


@needs_dassl
@SERIAL_TOY_GROUP
def test_jobs_2_gives_the_results_and_table_of_a_serial_sweep(serial_toy_sweep, tmp_path):
    # The serial sweep (conftest.py) runs one thread per run, as this one does, so that the
    # arithmetic (and so every score) is the same.
    env, serial = serial_toy_sweep["env"], serial_toy_sweep["output"]
    done = subprocess.run(serial_toy_sweep["cmd"], cwd=REPO,
                          env=dict(env, OUTPUT=str(tmp_path / "jobs2"), JOBS="2"),
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    out = {"serial": serial_toy_sweep["stdout"], "jobs2": done.stdout}
    assert out["jobs2"].count("[sweep] ended") == 2
    assert without_train_minutes(out["jobs2"][out["jobs2"].index("## toy"):]).replace(
        str(tmp_path / "jobs2"), "OUT") == \
        without_train_minutes(out["serial"][out["serial"].index("## toy"):]).replace(str(serial), "OUT")
    for seed in (1, 2):
        reports = []
        for folder in (serial, tmp_path / "jobs2"):
            path = (folder / "toy" / "SoftCPT" / "NATA" / "tiny_1shots_OPTIM.MAX_EPOCH-1" / f"seed{seed}" /
                    "results.json")
            report = json.loads(path.read_text())
            reports.append((report["score"], report["tasks"]))
        assert reports[0] == reports[1]
