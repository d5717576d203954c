"""CoCoOp per task: context conditioned on each image (Zhou et al., CVPR 2022).

Every task t has its own context ``v^t`` (n vectors) and its own meta network
``pi_t`` (Linear-ReLU-Linear, D -> D // 16 -> width) on the normalised image
feature u. For image x and class j of task t the prompt is
``[SOS] v^t_1 + pi_t(u) ... v^t_n + pi_t(u) <class name j> . [EOS]``: the same
bias is added to every context vector. With the multi-task loss this is CoCoOp
trained on each task separately.

The class features depend on the image, so each image needs its own text
forward pass per class: at test time only the classes of the image's own task
are encoded (the evaluator ignores the others), and CoCoOp's usual batch size 1
does the same during training.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Optional

import torch
from dassl.engine import TRAINER_REGISTRY
from torch import nn
from yacs.config import CfgNode as CN

from config.cocoop import check_cocoop_cfg
from datasets.task_info import TaskInfo
from trainers.parts.base import MultiTaskPromptTrainer, PromptHead
from trainers.parts.prompt import PromptBuilder, init_context

logger = logging.getLogger(__name__)


def meta_net(vis_dim: int, width: int) -> nn.Sequential:
    """CoCoOp's meta network: Linear(D, D // 16) - ReLU - Linear(D // 16, width)."""
    hidden = max(vis_dim // 16, 1)
    return nn.Sequential(OrderedDict([
        ("linear1", nn.Linear(vis_dim, hidden)),
        ("relu", nn.ReLU(inplace=True)),
        ("linear2", nn.Linear(hidden, width)),
    ]))


class CoCoOpHead(PromptHead):
    """Per-task context plus a per-task, image-conditioned bias.

    Args:
        task_info: the tasks and their class names (global classes are their concatenation).
        token_embedding: CLIP's token embedding (frozen).
        vis_dim: D, the dimension of the image features.
        n_ctx: context vectors per prompt (ignored when ``ctx_init`` is given).
        ctx_init: words initialising the context.
    """

    conditional = True
    context_keys = ("ctx",)  # the meta networks stay fp32

    def __init__(self, task_info: TaskInfo, token_embedding: nn.Embedding, vis_dim: int,
                 n_ctx: int = 16, ctx_init: str = "") -> None:
        super().__init__()
        width, tasks = token_embedding.embedding_dim, task_info.num_tasks
        # v^t: (T, n, W); n from ctx_init if given
        self.ctx = nn.Parameter(init_context(n_ctx, width, tasks, ctx_init, token_embedding))
        self.meta_nets = nn.ModuleList(meta_net(vis_dim, width) for _ in range(tasks))
        self.prompts = PromptBuilder(task_info.all_classnames, self.ctx.shape[1], token_embedding,
                                     key="TRAINER.COCOOP.N_CTX")
        self.register_buffer("task_of_class", torch.tensor(task_info.task_of_class), persistent=False)
        self.per_task_keys = tuple(self.state_dict())  # everything learned belongs to one task

    @classmethod
    def from_cfg(cls, node: CN, clip_model: nn.Module, task_info: TaskInfo) -> "CoCoOpHead":
        """Build from ``cfg.TRAINER.COCOOP``."""
        return cls(task_info, clip_model.token_embedding, clip_model.visual.output_dim,
                   n_ctx=node.N_CTX, ctx_init=node.CTX_INIT)

    def forward(self, encoder: nn.Module, columns: Optional[torch.Tensor] = None,
                image_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Class features ``(B, C', D)``: one set per image of ``image_features`` ``(B, D)``."""
        if image_features is None:
            raise ValueError("CoCoOp's class features depend on the image: pass image_features")
        if columns is None:
            columns = torch.arange(len(self.prompts), device=self.ctx.device)
        tasks, pos = torch.unique(self.task_of_class[columns], return_inverse=True)
        bias = torch.stack([self.meta_nets[t](image_features) for t in tasks.tolist()], 1)  # (B, T', W)
        ctx = self.ctx[tasks][pos][None] + bias[:, pos, None, :]  # (B, C', n, W)
        b, c = ctx.shape[:2]
        feats = encoder(*self.prompts(ctx.flatten(0, 1), columns.repeat(b)))  # (B * C', D)
        return feats.view(b, c, -1)


@TRAINER_REGISTRY.register()
class CoCoOp(MultiTaskPromptTrainer):
    """CoCoOp with one context and one meta network per task, trained on all tasks at once."""

    TRAINER_KEY = "COCOOP"

    def check_cfg(self, cfg: CN) -> None:
        check_cocoop_cfg(cfg.TRAINER.COCOOP)

    def build_head(self, clip_model: nn.Module, task_info: TaskInfo) -> PromptHead:
        head = CoCoOpHead.from_cfg(self.tcfg, clip_model, task_info)
        logger.info("CoCoOp per task: context %s, CTX_INIT %r", tuple(head.ctx.shape), self.tcfg.CTX_INIT)
        return head

    def parse_batch_test(self, batch: dict):
        """Keep the labels with the images: they say which task's classes to encode."""
        images, labels = super().parse_batch_test(batch)
        return (images, labels), labels

    def model_inference(self, batch) -> torch.Tensor:
        images, labels = batch
        return self.feature_logits(self.model.encode_image(images), labels)

    def feature_logits(self, u: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C)`` over the image's own task only; other tasks' columns are -inf.

        The meta network reads the image feature u, so cached features serve here too.
        """
        tasks = self.task_of_class[labels]
        logits = torch.full((len(u), len(self.task_of_class)), float("-inf"), device=self.device)
        for t in tasks.unique():
            rows = (tasks == t).nonzero()  # (b, 1)
            cols = (self.task_of_class == t).nonzero().squeeze(1)  # (K_t,)
            logits[rows, cols] = self.model.logits(u[rows.squeeze(1)], cols).float()
        return logits
