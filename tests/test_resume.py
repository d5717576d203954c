"""Exact resume and crash safety on the toy benchmark with the tiny backbone.

A run resumed from the checkpoint of epoch k (what a kill after epoch k leaves)
must end with the same checkpoint (learned parameters, optimizer state and
param_groups, scheduler state, random states: every entry, on both sides) and
results.json as the uninterrupted run, bit for bit (scripts/check_resume.py's
comparison, itself tested below). The last test kills a run during
each kind of write (fault injection in trainers/run/atomic.py) and reruns it until
it finishes.
"""
from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys

import pytest
import torch

pytest.importorskip("dassl", reason="Dassl is not installed")

import train  # noqa: E402
from scripts.check_resume import differences, outcome as run_outcome, tree_differences  # noqa: E402
from trainers.run import checkpoint as ckpt_io  # noqa: E402
from trainers.run.atomic import KILL_ENV  # noqa: E402
from trainers.run.schedule import build_lr_scheduler  # noqa: E402

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
    return run_outcome(str(out), EPOCHS)


def assert_identical(a: dict, b: dict) -> None:
    assert differences(a, b) == []


def killed_after(source, dest, epoch: int) -> None:
    """``dest`` as a kill right after epoch ``epoch``'s checkpoint leaves it."""
    os.makedirs(dest / "prompt_learner")
    for e in range(1, epoch + 1):
        shutil.copy(source / "prompt_learner" / f"model.pth.tar-{e}", dest / "prompt_learner")
    (dest / "prompt_learner" / "checkpoint").write_text(f"model.pth.tar-{epoch}\n")


@pytest.fixture(scope="module")
def uninterrupted(toy_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    return out, run(toy_root, out)


@pytest.mark.slow  # trains the toy benchmark
@pytest.mark.parametrize("k", [1, 2, 3])
def test_resume_after_epoch_k_is_bit_identical(toy_root, uninterrupted, tmp_path, k):
    source, expected = uninterrupted
    assert expected["report"]["resumed_from_epoch"] is None
    killed_after(source, tmp_path, k)
    resumed = run(toy_root, tmp_path)
    assert_identical(resumed, expected)
    assert resumed["report"]["resumed_from_epoch"] == k
    assert f"Previous epoch: {k}" in (tmp_path / "log.txt").read_text()
    # The training time goes on from the epochs the checkpoint of epoch k recorded.
    final = torch.load(tmp_path / "prompt_learner" / f"model.pth.tar-{EPOCHS}", weights_only=True)
    recorded = torch.load(source / "prompt_learner" / f"model.pth.tar-{k}", weights_only=True)["train_time"]
    assert recorded["seconds"] > 0 and recorded["device"] == "cpu"
    assert resumed["report"]["train_seconds"] == final["train_time"]["seconds"] > recorded["seconds"]
    assert resumed["report"]["train_device"] == "cpu"


@pytest.mark.slow  # trains the toy benchmark
def test_without_the_random_states_the_resumed_run_differs(toy_root, uninterrupted, tmp_path,
                                                          monkeypatch):
    """The comparison above can fail: skipping the restore changes the outcome."""
    source, expected = uninterrupted
    killed_after(source, tmp_path, 2)
    monkeypatch.setattr(ckpt_io, "restore_rng_state", lambda state: None)
    resumed = run(toy_root, tmp_path)
    found = differences(resumed, expected)
    assert any(d.startswith("checkpoint.state_dict.") for d in found), found


@pytest.mark.slow  # two trainings of 2 epochs on the paper config (about 20 s)
def test_numpys_random_state_after_resume_equals_the_uninterrupted_runs(toy_root, tmp_path):
    """SoftCPT's paper config (ViT-B/16 file on tiny-b16, 32 px, 2 epochs) with Dassl's cutout
    added, which draws from NumPy's global generator. It does so in the main process only
    with NUM_WORKERS 0 (a DataLoader worker seeds its own NumPy from torch's seed, so with
    workers the main process draws nothing from NumPy and a lost NumPy state could not
    show): the resumed run must go on from the saved NumPy state. Checkpoints record that
    state (rng.numpy), compared here with everything else."""
    epochs = 2
    args = ["--seed", "1", "--trainer", "SoftCPT", "--dataset-config-file", "configs/datasets/toy.yaml",
            "--config-file", "configs/trainers/SoftCPT/vit_b16_ep50.yaml", "--backbone", "tiny-b16",
            "DATASET.NUM_SHOTS", "2", "INPUT.SIZE", "(32, 32)", "OPTIM.MAX_EPOCH", str(epochs),
            "DATALOADER.NUM_WORKERS", "0", "TRAIN.CHECKPOINT_FREQ", "1",  # keep epoch 1's file
            "INPUT.TRANSFORMS", "['random_resized_crop', 'random_flip', 'normalize', 'cutout']"]
    full, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    train.main(["--root", str(toy_root), "--output-dir", str(full), *args])
    first, last = (torch.load(full / "prompt_learner" / f"model.pth.tar-{e}", weights_only=True)
                   for e in (1, epochs))
    assert first["rng"]["numpy"]["pos"] != last["rng"]["numpy"]["pos"], "epoch 2 drew nothing from NumPy"
    killed_after(full, resumed, 1)
    train.main(["--root", str(toy_root), "--output-dir", str(resumed), *args])
    expected, got = run_outcome(str(full), epochs), run_outcome(str(resumed), epochs)
    assert tree_differences(got["ckpt"]["rng"]["numpy"], expected["ckpt"]["rng"]["numpy"]) == []
    assert differences(got, expected) == []
    assert got["report"]["resumed_from_epoch"] == 1


def a_checkpoint() -> dict:
    """A checkpoint's parts as a trainer saves them, from a real optimizer and schedule."""
    from yacs.config import CfgNode as CN
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    optim = torch.optim.SGD(params, lr=0.002, momentum=0.9, weight_decay=5e-4)
    sched = build_lr_scheduler(optim, CN(dict(LR=0.002, LR_SCHEDULER="cosine", STEPSIZE=(-1,), GAMMA=0.1,
                                              MAX_EPOCH=4, WARMUP_EPOCH=1, WARMUP_TYPE="constant",
                                              WARMUP_CONS_LR=1e-5, WARMUP_MIN_LR=1e-5,
                                              WARMUP_RECOUNT=True)))
    sum(p.sum() for p in params).backward()
    optim.step()
    sched.step()
    return {"ckpt": {"epoch": 1, "state_dict": {"ctx": params[0].detach().clone()},
                     "optimizer": optim.state_dict(), "scheduler": sched.state_dict()},
            "report": {"score": 50.0, "resumed_from_epoch": None}}


def changed(mutate) -> list[str]:
    a = a_checkpoint()
    b = copy.deepcopy(a)
    mutate(b)
    return differences(a, b)


def test_the_comparison_sees_every_part_of_a_checkpoint_on_both_sides():
    """Each change is named where it is; the same state compares equal; nothing raises."""
    assert changed(lambda b: None) == []
    assert changed(lambda b: b["report"].update(resumed_from_epoch=2)) == []  # says how, not what
    assert changed(lambda b: b["report"].update(train_seconds=9.5, train_device="x")) == []  # how long
    assert changed(lambda b: b["ckpt"].update(train_time={"seconds": 9.5, "device": "x"})) == []
    opt = "checkpoint.optimizer"
    assert changed(lambda b: b["ckpt"]["state_dict"].update(extra=torch.zeros(1))) == \
        ["checkpoint.state_dict.extra (only in the second)"]
    assert changed(lambda b: b["ckpt"]["optimizer"]["state"].pop(1)) == [f"{opt}.state.1 (only in the first)"]
    assert changed(lambda b: b["ckpt"]["optimizer"]["state"][0]["momentum_buffer"].add_(1e-7)) == \
        [f"{opt}.state.0.momentum_buffer"]
    assert changed(lambda b: b["ckpt"]["optimizer"]["param_groups"][0].update(lr=0.001)) == \
        [f"{opt}.param_groups[0].lr"]
    assert changed(lambda b: b["ckpt"]["optimizer"]["param_groups"][0].update(momentum=0.8)) == \
        [f"{opt}.param_groups[0].momentum"]
    assert changed(lambda b: b["ckpt"]["optimizer"]["param_groups"][0].update(params=[1, 0])) == \
        [f"{opt}.param_groups[0].params[0]", f"{opt}.param_groups[0].params[1]"]
    assert changed(lambda b: b["ckpt"]["scheduler"].update(last_epoch=2)) == \
        ["checkpoint.scheduler.last_epoch"]
    assert changed(lambda b: b["ckpt"]["scheduler"].pop("base_lrs")) == \
        ["checkpoint.scheduler.base_lrs (only in the first)"]
    assert changed(lambda b: b["ckpt"]["state_dict"].update(ctx=b["ckpt"]["state_dict"]["ctx"].double())) == \
        ["checkpoint.state_dict.ctx"]
    assert changed(lambda b: b["report"].update(score=50.5)) == ["results.json.score"]
    assert tree_differences({"a": [1, 2]}, {"a": [1, 2, 3]}) == ["a (2 entries against 3)"]


@pytest.mark.slow  # trains the toy benchmark
def test_damaged_checkpoints_fall_back_to_the_previous_one(toy_root, uninterrupted, tmp_path):
    source, expected = uninterrupted
    killed_after(source, tmp_path, 3)
    newest = tmp_path / "prompt_learner" / "model.pth.tar-3"
    newest.write_bytes(newest.read_bytes()[:2752])  # as an in-place write killed half way leaves it
    (tmp_path / "prompt_learner" / "checkpoint").write_text("")
    resumed = run(toy_root, tmp_path)
    assert_identical(resumed, expected)
    assert resumed["report"]["resumed_from_epoch"] == 2
    log = (tmp_path / "log.txt").read_text()
    assert f"WARNING: Skipping a damaged checkpoint: cannot read checkpoint {newest}" in log
    assert f"WARNING: {tmp_path / 'prompt_learner' / 'checkpoint'} is empty" in log


# One attempt per kill point, each a fork of a process that imported train.py's modules once
# (scripts/check_resume.py's attempt, which SIGKILLs itself mid-write); waits for the test to
# look at the files after each, then runs train.py itself to the end.
ATTEMPTS = """
import os, runpy, sys
from scripts.check_resume import attempt
argv = sys.argv[1:]
status = os.fdopen(int(os.environ["STATUS_FD"]), "w")
for spec in os.environ["KILL_POINTS"].split(","):
    print(attempt(argv, kill=spec), file=status, flush=True)
    sys.stdin.readline()
sys.argv = ["train.py", *argv]
runpy.run_path("train.py", run_name="__main__")
"""


@pytest.mark.slow  # trains the toy benchmark
def test_a_run_killed_during_every_kind_of_write_recovers(toy_root, uninterrupted, tmp_path):
    """Real SIGKILLs during each kind of write (half-written temporary files, renames that never
    happened), each followed by a rerun in the same folder, until train.py finishes."""
    _, expected = uninterrupted
    out = tmp_path / "run"
    kills = [("model.pth.tar-1:1:partial", "prompt_learner/model.pth.tar-1"),  # first checkpoint
             ("checkpoint:2:partial", None),  # the pointer of epoch 2 (its model file is whole)
             ("results.json:1:partial", "results.json"),
             ("done:1:unrenamed", "done")]
    read_end, write_end = os.pipe()  # the attempts' outcomes; their console goes to a file
    # the threads of this process (tests/conftest.py sets them), so that the sums, and so every
    # bit, are those of the uninterrupted run
    env = dict(os.environ, KILL_POINTS=",".join(spec for spec, _ in kills), STATUS_FD=str(write_end),
               OMP_NUM_THREADS=str(torch.get_num_threads()))
    env.pop(KILL_ENV, None)
    with open(tmp_path / "console.txt", "w") as console, os.fdopen(read_end) as status:
        proc = subprocess.Popen([sys.executable, "-c", ATTEMPTS, "--root", str(toy_root), "--output-dir",
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
