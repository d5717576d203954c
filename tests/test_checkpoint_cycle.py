"""A checkpoint's life cycle (trainers/run/checkpoint.py: run_record, save, resume, restore_run_state,
load) on a tiny module with a recording optimizer and scheduler: no trainer, no training run."""
from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch
from torch import nn

from trainers.run import checkpoint as ckpt_io

CPU = torch.device("cpu")


class Recorder:
    """Stands in for an optimizer, scheduler or amp scaler: a state to save, what it was given."""

    def __init__(self, state: dict) -> None:
        self.state, self.loaded = state, []

    def state_dict(self) -> dict:
        return dict(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.loaded.append(state)


@pytest.fixture
def warnings(caplog):
    logging.disable(logging.NOTSET)  # Dassl disables WARNING records when imported
    with caplog.at_level(logging.WARNING, logger="trainers.run.checkpoint"):
        yield caplog


def record(epoch: int, best: float = 0.5, scaler=None) -> dict:
    return ckpt_io.run_record(epoch, None, ["a", "b"], ["red", "blue", "circle"],
                              {"trainer": "T", "variant": None}, {"name": "tiny"}, {"SEED": 1},
                              scaler, best)


def saved_run(folder, epochs: int) -> list[torch.Tensor]:
    """Save ``epochs`` epochs of a Linear whose weight is the epoch number; returns each
    epoch's torch random state as saved."""
    head = nn.Linear(2, 2, bias=False)
    states = []
    for epoch in range(epochs):
        head.weight.data.fill_(float(epoch + 1))
        states.append(torch.get_rng_state())
        ckpt_io.save(str(folder), record(epoch, best=0.1 * epoch),
                     {"m": head}, {"m": Recorder({"step": epoch})}, {"m": Recorder({"last": epoch})})
        torch.rand(3)  # the next epoch draws
    return states


def test_run_record_holds_the_run_in_the_order_checkpoints_have():
    scaler = Recorder({"scale": 8.0})
    before = torch.get_rng_state()
    got = record(4, best=float("-inf"), scaler=scaler)
    assert list(got) == ["epoch", "val_result", "task_keys", "classnames", "trainer", "variant",
                         "backbone", "effective_config", "rng", "scaler", "best_result", "train_time"]
    assert got["epoch"] == 5 and got["task_keys"] == ["a", "b"] and got["scaler"] == {"scale": 8.0}
    assert got["best_result"] == float("-inf") and isinstance(got["best_result"], float)
    assert torch.equal(got["rng"]["torch"], before)
    assert record(0)["scaler"] is None


def test_save_writes_each_model_its_states_and_best_when_asked(tmp_path):
    heads = {"m": nn.Linear(2, 2), "n": nn.Linear(3, 1)}
    optims = {"m": Recorder({"lr": 0.1}), "n": None}
    scheds = {"m": None, "n": Recorder({"last_epoch": 3})}
    ckpt_io.save(str(tmp_path), record(2), heads, optims, scheds, is_best=True)
    for name, head in heads.items():
        folder = tmp_path / name
        assert sorted(p.name for p in folder.iterdir()) == ["checkpoint", "model-best.pth.tar",
                                                            "model.pth.tar-3"]
        ckpt = torch.load(folder / "model.pth.tar-3", weights_only=True)
        assert torch.equal(ckpt["state_dict"]["weight"], head.weight)
        assert ckpt["epoch"] == 3 and ckpt["classnames"] == ["red", "blue", "circle"]
        assert (folder / "checkpoint").read_text() == "model-best.pth.tar\n"
    m = torch.load(tmp_path / "m" / "model.pth.tar-3", weights_only=True)
    n = torch.load(tmp_path / "n" / "model.pth.tar-3", weights_only=True)
    assert (m["optimizer"], m["scheduler"]) == ({"lr": 0.1}, None)
    assert (n["optimizer"], n["scheduler"]) == (None, {"last_epoch": 3})


def test_save_as_best_writes_best_once(tmp_path, monkeypatch):
    written = []
    real = ckpt_io.write_checkpoint
    monkeypatch.setattr(ckpt_io, "write_checkpoint",
                        lambda state, folder, name="": written.append(name) or real(state, folder, name))
    ckpt_io.save(str(tmp_path), record(0), {"m": nn.Linear(2, 2)}, {"m": None}, {"m": None},
                 model_name=ckpt_io.BEST, is_best=True)
    assert written == [ckpt_io.BEST]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["checkpoint", "model-best.pth.tar"]


def test_resume_loads_the_newest_epoch_after_the_check(tmp_path):
    saved_run(tmp_path, 3)
    head, optim, sched = nn.Linear(2, 2, bias=False), Recorder({}), Recorder({})
    checked = []
    start, ckpt = ckpt_io.resume(str(tmp_path), {"m": head}, {"m": optim}, {"m": sched}, CPU,
                                 lambda c, path: checked.append((path, c["epoch"])))
    newest = str(tmp_path / "m" / "model.pth.tar-3")
    assert start == 3 and ckpt["epoch"] == 3 and checked == [(newest, 3)]
    assert torch.equal(head.weight, torch.full((2, 2), 3.0))
    assert optim.loaded == [{"step": 2}] and sched.loaded == [{"last": 2}]


def test_resume_refused_by_the_check_loads_nothing(tmp_path):
    saved_run(tmp_path, 1)
    head = nn.Linear(2, 2, bias=False)
    before = head.weight.clone()

    def refuse(ckpt, path):
        raise ckpt_io.CheckpointError(f"{path}: not this run")

    with pytest.raises(ckpt_io.CheckpointError, match="not this run"):
        ckpt_io.resume(str(tmp_path), {"m": head}, {"m": None}, {"m": None}, CPU, refuse)
    assert torch.equal(head.weight, before)


def test_resume_without_a_checkpoint_trains_from_scratch(tmp_path, capsys, warnings):
    saved_run(tmp_path, 1)
    models = {"m": nn.Linear(2, 2, bias=False), "other": nn.Linear(2, 2)}
    none = {"m": None, "other": None}
    assert ckpt_io.resume(str(tmp_path), models, none, none, CPU, lambda c, p: None) is None
    assert "No checkpoint found, train from scratch" in capsys.readouterr().out  # no other/ folder
    (tmp_path / "m" / "model.pth.tar-1").write_bytes(b"not a checkpoint")
    models = {"m": nn.Linear(2, 2, bias=False)}
    assert ckpt_io.resume(str(tmp_path), models, {"m": None}, {"m": None}, CPU,
                          lambda c, p: None) is None
    assert f"No checkpoint in {tmp_path / 'm'} loads: training from scratch." in warnings.text


def test_restore_run_state_puts_back_the_random_states_and_scaler(tmp_path, warnings):
    states = saved_run(tmp_path, 2)
    ckpt = ckpt_io.read_checkpoint(str(tmp_path / "m" / "model.pth.tar-1"), CPU)
    random.seed(7)  # a run that drew other numbers
    np.random.seed(7)
    torch.rand(5)
    scaler = Recorder({})
    ckpt["scaler"] = {"scale": 4.0}
    assert ckpt_io.restore_run_state(ckpt, scaler) == pytest.approx(0.0)
    assert torch.equal(torch.get_rng_state(), states[0]) and scaler.loaded == [{"scale": 4.0}]
    assert not warnings.text
    ckpt.update(rng=None, best_result=None)
    assert ckpt_io.restore_run_state(ckpt) is None
    assert "holds no random states" in warnings.text


def test_restore_run_state_puts_back_numpys_and_pythons_states_as_saved(tmp_path):
    """Every generator a run may draw from (a NumPy transform such as Dassl's cutout, Python's
    random in Dassl's samplers) continues after a resume as it would have without the stop."""
    np.random.seed(3)
    np.random.randn(1)  # NumPy holds the second Gaussian of a pair: part of the state
    random.seed(3)
    head = nn.Linear(2, 2, bias=False)
    ckpt_io.save(str(tmp_path), record(0), {"m": head}, {"m": None}, {"m": None})
    uninterrupted = (np.random.rand(4), np.random.randn(3), random.random())  # the next draws
    np.random.seed(11)  # a fresh process: other states, a Gaussian half drawn
    np.random.randn(1)
    random.seed(11)
    ckpt = ckpt_io.read_checkpoint(str(tmp_path / "m" / "model.pth.tar-1"), CPU)
    ckpt_io.restore_run_state(ckpt)
    resumed = (np.random.rand(4), np.random.randn(3), random.random())
    assert np.array_equal(resumed[0], uninterrupted[0]) and np.array_equal(resumed[1], uninterrupted[1])
    assert resumed[2] == uninterrupted[2]


def test_load_for_evaluation_takes_the_chosen_or_best_or_newest_epoch(tmp_path, warnings):
    saved_run(tmp_path, 3)
    head, checked = nn.Linear(2, 2, bias=False), []

    def check(ckpt, path):
        checked.append(path)

    assert ckpt_io.load(str(tmp_path), {"m": head}, CPU, 2, check) == 2
    assert torch.equal(head.weight, torch.full((2, 2), 2.0))
    assert ckpt_io.load(str(tmp_path), {"m": head}, CPU, None, check) == 3
    assert checked == [str(tmp_path / "m" / "model.pth.tar-2"), str(tmp_path / "m" / "model.pth.tar-3")]
    with pytest.raises(ckpt_io.CheckpointError, match=r"no checkpoint for epoch 5 .*\[1, 2, 3\]"):
        ckpt_io.load(str(tmp_path), {"m": head}, CPU, 5, check)
    assert ckpt_io.load("", {"m": head}, CPU, None, check) is None
    assert "No --model-dir given: evaluating the model as initialised." in warnings.text
