"""Worked example of a new trainer in one file: CoOp with the task name in every prompt.

One context is shared by every class of every task (as CoOp-MT), and each class
prompt also carries its task's name: ``[SOS] v_1 ... v_n <class name>, <task name> . [EOS]``.
Everything but the prompt comes from the shared parts: the prompt builder, the
text encoder, the multi-task loss, the schedule, evaluation, checkpoints and
results.json (``MultiTaskPromptTrainer``).

Run it from the repository root with train.py's command line (``-m`` so that this
file registers the trainer and its keys first):

    python -m examples.my_trainer --root ./data --seed 1 --trainer TaskWordCoOp \\
        --dataset-config-file configs/datasets/toy.yaml \\
        --config-file examples/configs/TaskWordCoOp/tiny.yaml \\
        --output-dir output/toy/TaskWordCoOp/tiny_1shots/seed1 DATASET.NUM_SHOTS 1

or sweep it with ``bash examples/my_trainer.sh``. Its keys are registered as every
in-tree family registers its own (config/softcpt.py, ...), with ``register_config_hook``:
``python -m examples.my_trainer --help-config`` lists TRAINER.TASKWORD with the rest.

To make it a built-in trainer, move this file to ``trainers/`` and add ``from . import
my_trainer`` to ``trainers/__init__.py``; ``python train.py --trainer TaskWordCoOp ...``
then works. For ``python train.py --help-config`` (which imports no trainer) to list its
keys too, move ``add_taskword_config`` to its own module in ``config/<name>.py`` and
import that module at the end of ``config/__init__.py``, as config/coop.py is.
"""
from __future__ import annotations

from typing import Optional

import torch
from dassl.engine import TRAINER_REGISTRY
from torch import nn
from yacs.config import CfgNode as CN

from config import add_context_keys, add_prompt_keys, register_config_hook
from datasets.task_info import TaskInfo
from trainers.parts.base import MultiTaskPromptTrainer, PromptHead
from trainers.parts.prompt import PromptBuilder, init_context


@register_config_hook
def add_taskword_config(cfg: CN) -> None:
    """``TRAINER.TASKWORD``: the shared keys (PREC, ...) and this trainer's own."""
    node = cfg.TRAINER.TASKWORD = CN()
    add_prompt_keys(node)
    add_context_keys(node, 4)  # N_CTX (the shared context's length) and CTX_INIT


class TaskWordHead(PromptHead):
    """One learned context before ``<class name>, <task name>`` for every class."""

    def __init__(self, task_info: TaskInfo, token_embedding: nn.Embedding, n_ctx: int,
                 ctx_init: str = "") -> None:
        super().__init__()
        names = [f"{c}, {task}" for task, classes in zip(task_info.names, task_info.classnames)
                 for c in classes]  # global label order
        # (n, W); n is the token count of ctx_init when given
        self.ctx = nn.Parameter(init_context(n_ctx, token_embedding.embedding_dim, words=ctx_init,
                                             token_embedding=token_embedding))
        self.prompts = PromptBuilder(names, self.ctx.shape[0], token_embedding,
                                     key="TRAINER.TASKWORD.N_CTX")  # named if a prompt is too long

    def forward(self, encoder: nn.Module, columns: Optional[torch.Tensor] = None,
                image_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Class features ``(C', D)`` of the global classes ``columns`` (all when None)."""
        return encoder(*self.prompts(self.ctx, columns))


@TRAINER_REGISTRY.register()
class TaskWordCoOp(MultiTaskPromptTrainer):
    """Hard-shared CoOp context plus the task name in each class prompt."""

    TRAINER_KEY = "TASKWORD"  # its keys: cfg.TRAINER.TASKWORD

    def build_head(self, clip_model: nn.Module, task_info: TaskInfo) -> PromptHead:
        return TaskWordHead(task_info, clip_model.token_embedding, self.tcfg.N_CTX,
                            self.tcfg.CTX_INIT)


if __name__ == "__main__":
    import sys

    from train import ConfigError, main

    try:
        main()
    except ConfigError as err:
        sys.exit(f"error: {err}")
