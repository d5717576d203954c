"""Learned-only checkpoints: save, load under torch.load's weights_only default."""
from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("dassl", reason="Dassl is not installed")

from dassl.engine import TrainerBase  # noqa: E402

from datasets.task_info import TaskInfo  # noqa: E402
from trainers.base import MultiTaskCLIP, MultiTaskPromptTrainer, PromptHead  # noqa: E402
from trainers.prompt import PromptBuilder, init_context  # noqa: E402

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


def test_shape_mismatch_and_missing_file_are_named(tiny_clip, tmp_path):
    bare_trainer(tiny_clip, INFO).save_model(0, str(tmp_path))
    with pytest.raises(ValueError, match="'ctx' has shape"):
        bare_trainer(tiny_clip, INFO, n_ctx=2).load_model(str(tmp_path), epoch=1)
    with pytest.raises(FileNotFoundError, match="model.pth.tar-9"):
        bare_trainer(tiny_clip, INFO).load_model(str(tmp_path), epoch=9)
