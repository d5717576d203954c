"""Checkpoints: learned parameters only, under torch.load's weights_only default; load errors
that name the file and the choices; resume that skips damaged files."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

pytest.importorskip("dassl", reason="Dassl is not installed")

from dassl.engine import TrainerBase  # noqa: E402

from datasets.task_info import TaskInfo  # noqa: E402
from trainers.parts.base import MultiTaskCLIP, MultiTaskPromptTrainer, PromptHead  # noqa: E402
from trainers.parts.prompt import PromptBuilder, init_context  # noqa: E402
from trainers.run import checkpoint as ckpt_io  # noqa: E402
from trainers.run.checkpoint import CheckpointError  # noqa: E402
from trainers.run.logs import setup_logging  # noqa: E402

INFO = TaskInfo(("a", "b"), ("colour", "shape"), (("red", "blue"), ("circle",)),
                ("overall_acc", "mean_acc"))


class PerTaskHead(PromptHead):
    per_task_keys = ("ctx",)

    def __init__(self, clip_model, info, n_ctx=4):
        super().__init__()
        self.builder = PromptBuilder(info.all_classnames, n_ctx, clip_model.token_embedding)
        self.ctx = nn.Parameter(init_context(n_ctx, 64, groups=info.num_tasks))
        self.shared = nn.Parameter(torch.randn(3))
        self.register_buffer("task_of_class", torch.tensor(info.task_of_class), persistent=False)

    def forward(self, encoder, columns=None, image_features=None):
        cols = torch.arange(len(self.builder)) if columns is None else columns
        return encoder(*self.builder(self.ctx[self.task_of_class[cols]], cols))


def bare_trainer(clip_model, info, n_ctx=4):
    """A trainer with a model and no data: enough for save_model/load_model."""
    trainer = MultiTaskPromptTrainer.__new__(MultiTaskPromptTrainer)
    TrainerBase.__init__(trainer)
    trainer.device, trainer.task_info, trainer.epoch = torch.device("cpu"), info, 0
    head = PerTaskHead(clip_model, info, n_ctx)
    trainer.model = MultiTaskCLIP(clip_model, head)
    optim = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    trainer.register_model("prompt_learner", head, optim, None)
    return trainer


def test_round_trip_holds_only_learned_parameters(tiny_clip, tmp_path):
    saved = bare_trainer(tiny_clip, INFO)
    saved.save_model(4, str(tmp_path))
    path = tmp_path / "prompt_learner" / "model.pth.tar-5"
    ckpt = torch.load(path, weights_only=True)  # current default: no pickled code
    assert sorted(ckpt["state_dict"]) == ["ctx", "shared"]
    assert ckpt["classnames"] == ["red", "blue", "circle"] and ckpt["epoch"] == 5
    loaded = bare_trainer(tiny_clip, INFO)
    loaded.load_model(str(tmp_path))  # no epoch: the newest checkpoint
    assert torch.equal(loaded.model.head.ctx, saved.model.head.ctx) and loaded.epoch == 4
    with torch.no_grad():
        assert torch.equal(loaded.model.text_features(), saved.model.text_features())


def test_per_task_context_refuses_other_tasks(tiny_clip, tmp_path):
    bare_trainer(tiny_clip, INFO).save_model(0, str(tmp_path))
    other = TaskInfo(("a", "c"), ("colour", "size"), (("red", "blue"), ("big",)),
                     ("overall_acc", "overall_acc"))
    with pytest.raises(ValueError, match="one context per task"):
        bare_trainer(tiny_clip, other).load_model(str(tmp_path), epoch=1)


def test_shape_mismatch_is_named(tiny_clip, tmp_path):
    bare_trainer(tiny_clip, INFO).save_model(0, str(tmp_path))
    with pytest.raises(CheckpointError, match="'ctx' has shape"):
        bare_trainer(tiny_clip, INFO, n_ctx=2).load_model(str(tmp_path), epoch=1)


def test_a_missing_epoch_lists_the_saved_epochs(tiny_clip, tmp_path):
    trainer = bare_trainer(tiny_clip, INFO)
    for epoch in (0, 1, 3):
        trainer.save_model(epoch, str(tmp_path))
    folder = tmp_path / "prompt_learner"
    with pytest.raises(CheckpointError) as err:
        bare_trainer(tiny_clip, INFO).load_model(str(tmp_path), epoch=7)
    assert str(err.value).startswith(f"no checkpoint for epoch 7 (--load-epoch): saved epochs in "
                                     f"{folder}: [1, 2, 4].")
    with pytest.raises(CheckpointError, match="is --model-dir the output folder of a training run"):
        bare_trainer(tiny_clip, INFO).load_model(str(tmp_path / "elsewhere"), epoch=1)


def test_an_unreadable_checkpoint_is_named(tiny_clip, tmp_path):
    bare_trainer(tiny_clip, INFO).save_model(0, str(tmp_path))
    path = tmp_path / "prompt_learner" / "model.pth.tar-1"
    path.write_bytes(path.read_bytes()[:2752])  # what an in-place write leaves when killed
    with pytest.raises(CheckpointError) as err:
        bare_trainer(tiny_clip, INFO).load_model(str(tmp_path), epoch=1)
    assert str(err.value).startswith(f"cannot read checkpoint {path} (")
    assert "the file is truncated or not a checkpoint" in str(err.value)


OPENED = []


class Tripwire:
    """A class no checkpoint of CoOp, Dassl or this project holds: unpickling it is noticed."""

    def __setstate__(self, state) -> None:
        OPENED.append(state)


@pytest.mark.parametrize("warmup", ["constant", "linear"])
def test_checkpoints_written_by_dassls_save_checkpoint_are_read(tmp_path, warmup):
    """Every optimizer and schedule Dassl builds, behind each warm-up: its pickled successor and
    that one's optimizer come back as the objects Dassl wrote."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, MultiStepLR, StepLR

    from coop_files import write_coop_checkpoint
    from dassl.optim.radam import RAdam
    schedules = {"cosine": CosineAnnealingLR, "multi_step": MultiStepLR, "single_step": StepLR}
    optims = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "amsgrad": torch.optim.Adam,
              "adamw": torch.optim.AdamW, "rmsprop": torch.optim.RMSprop, "radam": RAdam}
    ctx = torch.randn(4, 8)
    for optim, optim_cls in optims.items():
        for schedule, sched_cls in schedules.items():
            path = write_coop_checkpoint(str(tmp_path / optim / schedule), {"ctx": ctx}, 50, warmup,
                                         optim, schedule)
            ckpt = ckpt_io.read_checkpoint(path, torch.device("cpu"))
            assert torch.equal(ckpt["state_dict"]["ctx"], ctx) and ckpt["epoch"] == 50
            successor = ckpt["scheduler"]["successor"]
            assert type(successor) is sched_cls and type(successor.optimizer) is optim_cls
            assert ckpt["scheduler"]["warmup_epoch"] == 1


def test_a_checkpoint_pickling_another_class_is_named_and_not_unpickled(tmp_path):
    path = tmp_path / "model.pth.tar-3"
    torch.save({"state_dict": {"ctx": torch.zeros(2)}, "epoch": 3, "extra": Tripwire()}, path)
    with pytest.raises(CheckpointError) as err:
        ckpt_io.read_checkpoint(str(path), torch.device("cpu"))
    message = str(err.value)
    assert message.startswith(f"{path} holds a pickled object of class ") and "Tripwire" in message
    assert "truncated" not in message and "weights_only" not in message and "\n" not in message
    assert message.endswith("(docs/reliability.md#reading-checkpoints).")
    assert OPENED == []
    # the same object inside a Dassl warm-up scheduler's state: still refused
    from coop_files import write_coop_checkpoint
    coop = write_coop_checkpoint(str(tmp_path / "coop"), {"ctx": torch.zeros(2)}, 1)
    ckpt = ckpt_io.read_checkpoint(coop, torch.device("cpu"))
    ckpt["scheduler"]["successor"].extra = Tripwire()
    torch.save(ckpt, coop)
    with pytest.raises(CheckpointError, match="Tripwire, which is not read"):
        ckpt_io.read_checkpoint(coop, torch.device("cpu"))
    assert OPENED == []


def test_a_checkpoint_of_another_variant_or_trainer_says_which(tiny_clip, tmp_path):
    saved = bare_trainer(tiny_clip, INFO)
    saved.checkpoint_identity = lambda: {"trainer": "SoftCPT", "variant": "NATA"}
    saved.save_model(0, str(tmp_path))
    ckpt = torch.load(tmp_path / "prompt_learner" / "model.pth.tar-1", weights_only=True)
    assert (ckpt["trainer"], ckpt["variant"]) == ("SoftCPT", "NATA")
    for trainer, variant, asked in [("SoftCPT", "NATS", "trainer SoftCPT, variant NATS"),
                                    ("CoOp", None, "trainer CoOp")]:
        loading = bare_trainer(tiny_clip, INFO)
        loading.checkpoint_identity = lambda t=trainer, v=variant: {"trainer": t, "variant": v}
        with pytest.raises(CheckpointError) as err:
            loading.load_model(str(tmp_path), epoch=1)
        assert f"was saved by trainer SoftCPT, variant NATA; this run is {asked}:" in str(err.value)


def test_resume_skips_damaged_files_with_warnings_and_restores_random_states(tiny_clip, tmp_path, capsys):
    trainer = bare_trainer(tiny_clip, INFO)
    states = []
    for epoch in range(3):
        torch.manual_seed(epoch)
        states.append(torch.get_rng_state())
        trainer.save_model(epoch, str(tmp_path))
    folder = tmp_path / "prompt_learner"
    (folder / "model.pth.tar-3").write_bytes(b"")  # killed during an in-place write
    (folder / "checkpoint").write_text("")
    resumed = bare_trainer(tiny_clip, INFO)
    setup_logging()  # warnings go to stdout (and so to log.txt in a run)
    assert resumed.resume_model_if_exist(str(tmp_path)) == 2
    warnings = capsys.readouterr().out
    assert f"cannot read checkpoint {folder / 'model.pth.tar-3'}" in warnings
    assert f"{folder / 'checkpoint'} is empty" in warnings
    assert torch.equal(torch.get_rng_state(), states[1]) and resumed.resumed_from_epoch == 2
    for name in ("model.pth.tar-1", "model.pth.tar-2"):
        (folder / name).write_bytes(b"junk")
    fresh = bare_trainer(tiny_clip, INFO)
    assert fresh.resume_model_if_exist(str(tmp_path)) == 0  # nothing loads: a fresh start


def test_files_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from trainers.run import atomic
    target = tmp_path / "results.json"
    target.write_text("old")

    def fail(*args):
        raise OSError("disk full")
    monkeypatch.setattr(atomic.os, "replace", fail)
    with pytest.raises(OSError):
        atomic.atomic_write(str(target), "new")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["results.json"]  # no temp left
