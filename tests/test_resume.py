"""Exact resume and crash safety on the toy benchmark with the tiny backbone.

A run resumed from the checkpoint of epoch k (what a kill after epoch k leaves)
must end with the same learned parameters, optimizer state and results.json
scores as the uninterrupted run, bit for bit. The last test kills a run during
each kind of write (fault injection in trainers/atomic.py) and reruns it until
it finishes.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

pytest.importorskip("dassl", reason="Dassl is not installed")

import train  # noqa: E402
from trainers import checkpoint as ckpt_io  # noqa: E402
from trainers.atomic import KILL_ENV  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 4
# Class sampling, random crops and flips all draw random numbers every epoch.
ARGS = ["--seed", "1", "--trainer", "SoftCPT", "--dataset-config-file", "configs/datasets/toy.yaml",
        "--config-file", "configs/trainers/SoftCPT/tiny.yaml", "DATASET.NUM_SHOTS", "2",
        "OPTIM.MAX_EPOCH", str(EPOCHS), "TRAINER.SOFTCPT.CLS_SAMPLE_RATE", "0.5"]


def run(root, out) -> dict:
    train.main(["--root", str(root), "--output-dir", str(out), *ARGS])
    return outcome(out)


def outcome(out) -> dict:
    """What a run ends with: its last checkpoint and results.json."""
    ckpt = torch.load(os.path.join(out, "prompt_learner", f"model.pth.tar-{EPOCHS}"), weights_only=True)
    with open(os.path.join(out, "results.json")) as f:
        report = json.load(f)
    return {"params": ckpt["state_dict"], "optimizer": ckpt["optimizer"], "report": report}


def assert_identical(a: dict, b: dict) -> None:
    assert a["params"].keys() == b["params"].keys()
    for key in a["params"]:
        assert torch.equal(a["params"][key], b["params"][key]), key
    for i, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][i][name]), (i, name)
    strip = lambda r: {k: v for k, v in r.items() if k != "resumed_from_epoch"}  # noqa: E731
    assert strip(a["report"]) == strip(b["report"])


def killed_after(source, dest, epoch: int) -> None:
    """``dest`` as a kill right after epoch ``epoch``'s checkpoint leaves it."""
    os.makedirs(dest / "prompt_learner")
    for e in range(1, epoch + 1):
        shutil.copy(source / "prompt_learner" / f"model.pth.tar-{e}", dest / "prompt_learner")
    (dest / "prompt_learner" / "checkpoint").write_text(f"model.pth.tar-{epoch}\n")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    return out, run(data_root, out)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_resume_after_epoch_k_is_bit_identical(data_root, uninterrupted, tmp_path, k):
    source, expected = uninterrupted
    assert expected["report"]["resumed_from_epoch"] is None
    killed_after(source, tmp_path, k)
    resumed = run(data_root, tmp_path)
    assert_identical(resumed, expected)
    assert resumed["report"]["resumed_from_epoch"] == k
    assert f"Previous epoch: {k}" in (tmp_path / "log.txt").read_text()


def test_without_the_random_states_the_resumed_run_differs(data_root, uninterrupted, tmp_path,
                                                          monkeypatch):
    """The comparison above can fail: skipping the restore changes the outcome."""
    source, expected = uninterrupted
    killed_after(source, tmp_path, 2)
    monkeypatch.setattr(ckpt_io, "restore_rng_state", lambda state: None)
    resumed = run(data_root, tmp_path)
    assert any(not torch.equal(resumed["params"][k], v) for k, v in expected["params"].items())


def test_damaged_checkpoints_fall_back_to_the_previous_one(data_root, uninterrupted, tmp_path):
    source, expected = uninterrupted
    killed_after(source, tmp_path, 3)
    newest = tmp_path / "prompt_learner" / "model.pth.tar-3"
    newest.write_bytes(newest.read_bytes()[:2752])  # as an in-place write killed half way leaves it
    (tmp_path / "prompt_learner" / "checkpoint").write_text("")
    resumed = run(data_root, tmp_path)
    assert_identical(resumed, expected)
    assert resumed["report"]["resumed_from_epoch"] == 2
    log = (tmp_path / "log.txt").read_text()
    assert f"WARNING: Skipping a damaged checkpoint: cannot read checkpoint {newest}" in log
    assert f"WARNING: {tmp_path / 'prompt_learner' / 'checkpoint'} is empty" in log


# Imports train.py's modules once, forks one attempt per kill point (each SIGKILLs itself
# mid-write), waits for the test to look at the files, then runs train.py itself to the end.
ATTEMPTS = """
import os, runpy, sys
import train
argv = sys.argv[1:]
status = os.fdopen(int(os.environ["STATUS_FD"]), "w")
for spec in os.environ["KILL_POINTS"].split(","):
    pid = os.fork()
    if pid == 0:
        os.environ["SOFTCPT_KILL_WRITE"] = spec
        try:
            train.main(argv)
        finally:
            os._exit(3)  # not killed: the fault was never hit
    _, code = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(code) and os.WTERMSIG(code) == 9
    print("killed" if killed else code, file=status, flush=True)
    sys.stdin.readline()
sys.argv = ["train.py", *argv]
runpy.run_path("train.py", run_name="__main__")
"""


def test_a_run_killed_during_every_kind_of_write_recovers(data_root, uninterrupted, tmp_path):
    """Real SIGKILLs during each kind of write (half-written temporary files, renames that never
    happened), each followed by a rerun in the same folder, until train.py finishes."""
    _, expected = uninterrupted
    out = tmp_path / "run"
    kills = [("model.pth.tar-1:1:partial", "prompt_learner/model.pth.tar-1"),  # first checkpoint
             ("checkpoint:2:partial", None),  # the pointer of epoch 2 (its model file is whole)
             ("results.json:1:partial", "results.json"),
             ("done:1:unrenamed", "done")]
    read_end, write_end = os.pipe()  # the attempts' outcomes; their console goes to a file
    env = dict(os.environ, KILL_POINTS=",".join(spec for spec, _ in kills), STATUS_FD=str(write_end))
    env.pop(KILL_ENV, None)
    with open(tmp_path / "console.txt", "w") as console, os.fdopen(read_end) as status:
        proc = subprocess.Popen([sys.executable, "-c", ATTEMPTS, "--root", str(data_root), "--output-dir",
                                 str(out), *ARGS], cwd=REPO, env=env, stdin=subprocess.PIPE,
                                stdout=console, stderr=subprocess.STDOUT, text=True, pass_fds=(write_end,))
        os.close(write_end)
        try:
            for spec, absent in kills:
                assert status.readline().strip() == "killed", spec
                name = spec.split(":")[0]
                folder = out if name in ("results.json", "done") else out / "prompt_learner"
                assert [n for n in os.listdir(folder) if n.startswith(f".{name}.")], spec  # mid-write
                if absent:
                    assert not (out / absent).exists(), spec  # never a partial file under its name
                proc.stdin.write("next\n")
                proc.stdin.flush()
            assert proc.wait(timeout=300) == 0, (tmp_path / "console.txt").read_text()[-2000:]
        finally:
            proc.kill()
    assert (out / "prompt_learner" / "checkpoint").read_text() == "model.pth.tar-4\n"
    assert (out / "done").read_text() == "finished\n"
    assert_identical(outcome(out), expected)
    assert outcome(out)["report"]["resumed_from_epoch"] == EPOCHS
    log = (out / "log.txt").read_text()
    assert log.count("a new attempt of this run") == len(kills)
    assert not [n for n in os.listdir(out / "prompt_learner") + os.listdir(out) if n.endswith(".tmp")]
