"""CoOp on every task of a benchmark at once (the CoOp-CA, CoOp-CS and CoOp-MT baselines).

A class prompt is ``[SOS] v_1 ... v_n <class name> . [EOS]`` as in CoOp; only the
sharing of the context ``v`` changes (TRAINER.COOP.SHARING and CSC):

* CoOp-CA (default): one context per task, shared by that task's classes.
  Trained with the multi-task loss, this equals CoOp run on each task alone.
* CoOp-CS (CSC True): one context per class.
* CoOp-MT (SHARING "all"): one context shared by every class of every task.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
from dassl.engine import TRAINER_REGISTRY
from torch import nn
from yacs.config import CfgNode as CN

from config.coop import check_coop_cfg
from datasets.task_info import TaskInfo
from trainers.parts.base import MultiTaskPromptTrainer, PromptHead
from trainers.parts.prompt import PromptBuilder, init_context

logger = logging.getLogger(__name__)

# Name of each baseline in the paper's tables, by (SHARING, CSC).
BASELINE_NAMES = {("task", False): "CoOp-CA", ("task", True): "CoOp-CS", ("all", False): "CoOp-MT"}


class CoOpHead(PromptHead):
    """Learned context spliced before (or around) every class name.

    Args:
        task_info: the tasks and their class names (global classes are their concatenation).
        token_embedding: CLIP's token embedding (frozen).
        n_ctx: context vectors per prompt (ignored when ``ctx_init`` is given).
        ctx_init: words initialising the context.
        sharing: ``task`` (one context per task) or ``all`` (one for everything).
        csc: one context per class (with ``sharing="task"``).
        class_token_position: ``end``, ``middle`` or ``front``.
    """

    context_keys = ("ctx",)

    def __init__(self, task_info: TaskInfo, token_embedding: nn.Embedding, n_ctx: int = 16,
                 ctx_init: str = "", sharing: str = "task", csc: bool = False,
                 class_token_position: str = "end") -> None:
        super().__init__()
        names = task_info.all_classnames
        groups = len(names) if csc else (task_info.num_tasks if sharing == "task" else None)
        # (C, n, W) per class, (T, n, W) per task, or (n, W) shared by all; n from ctx_init if given
        self.ctx = nn.Parameter(init_context(n_ctx, token_embedding.embedding_dim, groups, ctx_init,
                                             token_embedding))
        self.prompts = PromptBuilder(names, self.ctx.shape[-2], token_embedding, class_token_position,
                                     key="TRAINER.COOP.N_CTX")
        self.register_buffer("task_of_class", torch.tensor(task_info.task_of_class), persistent=False)
        self.csc, self.sharing = csc, sharing
        if csc:
            self.per_class_keys = ("ctx",)
        elif sharing == "task":
            self.per_task_keys = ("ctx",)

    @classmethod
    def from_cfg(cls, node: CN, clip_model: nn.Module, task_info: TaskInfo) -> "CoOpHead":
        """Build from ``cfg.TRAINER.COOP``."""
        return cls(task_info, clip_model.token_embedding, n_ctx=node.N_CTX,
                   ctx_init=node.CTX_INIT, sharing=node.SHARING, csc=node.CSC,
                   class_token_position=node.CLASS_TOKEN_POSITION)

    def forward(self, encoder: nn.Module, columns: Optional[torch.Tensor] = None,
                image_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Class features ``(C', D)`` of the global classes ``columns`` (all when None)."""
        if columns is None:
            columns = torch.arange(len(self.prompts), device=self.ctx.device)
        if self.csc:
            return self.prompts.encode(encoder, self.ctx[columns], columns)  # (C', n, W) per row
        if self.sharing == "task":  # one prefix [SOS] ctx_t per present task
            tasks, pos = torch.unique(self.task_of_class[columns], return_inverse=True)
            return self.prompts.encode(encoder, self.ctx[tasks], columns, groups=pos)
        return self.prompts.encode(encoder, self.ctx, columns)  # (n, W), the same for every row


@TRAINER_REGISTRY.register()
class CoOp(MultiTaskPromptTrainer):
    """CoOp on all tasks at once: CoOp-CA (default), CoOp-CS (CSC True), CoOp-MT (SHARING all)."""

    TRAINER_KEY = "COOP"

    def check_cfg(self, cfg: CN) -> None:
        check_coop_cfg(cfg.TRAINER.COOP)

    def build_head(self, clip_model: nn.Module, task_info: TaskInfo) -> PromptHead:
        node = self.tcfg
        head = CoOpHead.from_cfg(node, clip_model, task_info)
        logger.info("%s: context %s, CTX_INIT %r, CLASS_TOKEN_POSITION %s",
                    BASELINE_NAMES[(node.SHARING, node.CSC)], tuple(head.ctx.shape), node.CTX_INIT,
                    node.CLASS_TOKEN_POSITION)
        return head
