"""The run folder's lock after a node failure (trainers/run/run_folder.py, issue 25 point 2).

"Another host" is simulated the way a shared file system shows it: another process holds
the lock (filelock, as train.py takes it) and the owner record names another host, or a
PID of this host that has ended; the record of a live process of this host stops a run at
once. Each fast test takes about a second (the holder's start and a 1 s wait)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from config import ConfigError
from trainers.run import run_folder

# Takes the lock, writes the owner record (``{pid}``: its own), says so, holds it for argv[3] s.
HOLDER = """
import os, sys, time
from filelock import FileLock
lock = FileLock(os.path.join(sys.argv[1], ".run.lock"), timeout=0)
lock.acquire()
with open(os.path.join(sys.argv[1], ".run.owner"), "w") as f:
    f.write(sys.argv[2].replace("{pid}", str(os.getpid())) + "\\n")
print("holding", flush=True)
time.sleep(float(sys.argv[3]))
"""


@pytest.fixture
def holder(tmp_path):
    """holder(owner_text, seconds): a process holding tmp_path/run's lock under that record."""
    procs = []

    def start(owner: str, seconds: float = 60) -> subprocess.Popen:
        folder = tmp_path / "run"
        folder.mkdir(exist_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), owner, str(seconds)],
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "holding"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def _ended_pid() -> int:
    """A PID of this host whose process has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _refused(folder, seconds: float) -> tuple[str, float]:
    started = time.monotonic()
    with pytest.raises(run_folder.RunBusy) as err:
        with run_folder.hold(str(folder)):
            pytest.fail("the folder was taken while another process held its lock")
    return str(err.value), time.monotonic() - started


def test_a_lock_held_from_another_host_is_waited_for_then_named(holder, tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTCPT_LOCK_WAIT", "1")
    holder("host node-b, PID 4242, since 2026-01-01 00:00:00")
    message, took = _refused(tmp_path / "run", 1)
    assert 1 <= took < 5, took  # waited the configured second, not more
    assert message.startswith(f"{tmp_path / 'run'} is in use by another run (host node-b, PID 4242, since "
                              "2026-01-01 00:00:00; a process on another host): its lock was not released "
                              "in 1 s (SOFTCPT_LOCK_WAIT).")
    assert f"delete {tmp_path / 'run' / '.run.lock'}" in message and "no process on node-b" in message
    assert message.endswith("(docs/reliability.md#guarantees).") and "\n" not in message
    assert (tmp_path / "run" / ".run.owner").read_text().startswith("host node-b, PID 4242")  # left alone


def test_a_lock_the_file_system_releases_is_taken(holder, tmp_path, monkeypatch, capsys):
    """The dead node's lock expires (here: its holder ends) while the requeued run waits."""
    monkeypatch.setenv("SOFTCPT_LOCK_WAIT", "30")
    holder("host node-b, PID 4242, since 2026-01-01 00:00:00", seconds=1)
    started = time.monotonic()
    with run_folder.hold(str(tmp_path / "run")):
        took = time.monotonic() - started
        owner = (tmp_path / "run" / ".run.owner").read_text()
    assert took < 10, took
    assert owner.startswith(f"host {socket.gethostname()}, PID {os.getpid()}, since ")
    err = capsys.readouterr().err
    assert "is locked by host node-b, PID 4242, since 2026-01-01 00:00:00, not a live process of this " \
           "host: waiting up to 30 s (SOFTCPT_LOCK_WAIT)" in err
    assert "its lock was released; this run goes on." in err
    assert not (tmp_path / "run" / ".run.owner").exists()  # released with the lock


def test_a_live_run_of_this_host_stops_a_second_one_at_once(holder, tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTCPT_LOCK_WAIT", "5")
    proc = holder(f"host {socket.gethostname()}, PID {{pid}}, since 2026-01-01 00:00:00")
    message, took = _refused(tmp_path / "run", 0)
    assert took < 1, took  # no waiting on a live run
    assert message == (f"{tmp_path / 'run'} is in use by another run (host {socket.gethostname()}, PID "
                       f"{proc.pid}, since 2026-01-01 00:00:00): one process per run folder. Wait for it to "
                       "end (or stop it), or give this run another --output-dir (docs/reliability.md#guarantees).")


def test_a_lock_of_this_host_whose_owner_ended_is_waited_for(holder, tmp_path, monkeypatch):
    """The recorded PID has ended but the lock is still held (by a process it started):
    waited for like another host's, not refused at once."""
    monkeypatch.setenv("SOFTCPT_LOCK_WAIT", "1")
    dead = _ended_pid()
    holder(f"host {socket.gethostname()}, PID {dead}, since 2026-01-01 00:00:00")
    message, took = _refused(tmp_path / "run", 1)
    assert took >= 1, took
    assert f"(host {socket.gethostname()}, PID {dead}, since 2026-01-01 00:00:00; its process has ended, yet " \
           "the lock is still held" in message


def test_a_lock_wait_of_zero_refuses_at_once(holder, tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTCPT_LOCK_WAIT", "0")
    holder("host node-b, PID 4242, since 2026-01-01 00:00:00")
    message, took = _refused(tmp_path / "run", 0)
    assert took < 1 and "not released in 0 s (SOFTCPT_LOCK_WAIT)" in message


@pytest.mark.parametrize("value", ["abc", "-1", "inf", "nan", "5m"])
def test_a_bad_lock_wait_is_a_one_line_error(value, tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTCPT_LOCK_WAIT", value)
    with pytest.raises(ConfigError) as err:
        with run_folder.hold(str(tmp_path / "run")):
            pytest.fail("ran with a bad SOFTCPT_LOCK_WAIT")
    assert str(err.value) == (f"SOFTCPT_LOCK_WAIT is '{value}'; allowed: a number of seconds >= 0 (default 300; "
                              "0: never wait for a run folder's lock) (docs/reliability.md#guarantees).")


def test_the_lock_wait_defaults_to_five_minutes(monkeypatch):
    monkeypatch.delenv("SOFTCPT_LOCK_WAIT", raising=False)
    assert run_folder.lock_wait() == 300
    monkeypatch.setenv("SOFTCPT_LOCK_WAIT", " 2.5 ")
    assert run_folder.lock_wait() == 2.5


@pytest.mark.slow
def test_a_stop_signal_ends_train_pys_wait_for_another_hosts_lock(holder, tmp_path):
    """End to end: train.py waits for the lock of a folder held from another host and a stop
    signal (the Slurm task's SIGTERM at the warning) ends the wait at once: exit 143, one
    line, nothing written. (A wait that ends with the lock released: the fast tests above.)"""
    run = tmp_path / "run"
    holder("host node-b, PID 4242, since 2026-01-01 00:00:00", seconds=300)
    cmd = [sys.executable, "train.py", "--root", str(tmp_path / "data"), "--output-dir", str(run), "--seed", "1",
           "--trainer", "SoftCPT", "--dataset-config-file", "configs/datasets/toy.yaml", "--config-file",
           "configs/trainers/SoftCPT/tiny.yaml", "DATASET.NUM_SHOTS", "1", "OPTIM.MAX_EPOCH", "1"]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen(cmd, cwd=repo, env=dict(os.environ, SOFTCPT_LOCK_WAIT="120"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "not a live process of this host: waiting up to 120 s (SOFTCPT_LOCK_WAIT)" in line, line
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
    finally:
        proc.kill()
    stderr = proc.stderr.read()
    assert code == 143 and "stopped by signal SIGTERM" in stderr and "Traceback" not in stderr, stderr
    assert sorted(p.name for p in run.iterdir()) == [".run.lock", ".run.owner"]  # nothing written
    assert (run / ".run.owner").read_text().startswith("host node-b, PID 4242")
