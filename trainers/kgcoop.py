"""KgCoOp per task: CoOp with the knowledge-guided term (Yao et al., CVPR 2023).

Every task t has its own context (4 vectors, from the words "a photo of a"), as in
CoOp-CA (trainers/coop.py builds the prompts). Task t's loss is KgCoOp's single-task one,

    L_t = CE(own-task logits, y) + W * (1 - mean over the classes c of t of cos(h_c, z_c)),

h_c the text feature of class c's learned prompt and z_c its zero-shot feature (the
task's template, as ZeroshotCLIP). The joint loss is sum_t (n_t / B) * L_t over the
tasks in the batch: with one task, KgCoOp's loss; with several, each task's context
gets its own run's gradient times its share of the batch (docs/baselines.md#kgcoop).
"""
from __future__ import annotations

import logging

import torch
from dassl.engine import TRAINER_REGISTRY
from torch import nn
from yacs.config import CfgNode as CN

from config.kgcoop import check_kgcoop_cfg
from datasets.task_info import TaskInfo
from trainers.coop import CoOpHead
from trainers.parts.base import MultiTaskPromptTrainer, PromptHead
from trainers.parts.losses import multitask_loss
from trainers.zsclip import zero_shot_text_features

logger = logging.getLogger(__name__)


def task_shares(sample_task: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
    """n_t / B ``(T',)`` of each of ``tasks`` in a batch whose samples' tasks are ``sample_task``."""
    return (sample_task[:, None] == tasks[None, :]).float().mean(0)


def knowledge_guided_term(h: torch.Tensor, z: torch.Tensor, sample_task: torch.Tensor,
                          column_task: torch.Tensor) -> torch.Tensor:
    """sum over the batch's tasks t of (n_t / B) * (1 - mean over t's columns of cos(h_c, z_c)).

    Args:
        h: normalised learned class features ``(C', D)`` of the columns.
        z: normalised zero-shot features ``(C', D)`` of the same columns.
        sample_task: ``(B,)`` task of each sample.
        column_task: ``(C',)`` task of each column (every class of each present task).
    """
    cos = (h.float() * z.float()).sum(-1)  # (C',)
    tasks = sample_task.unique()
    per_task = torch.stack([1.0 - cos[column_task == t].mean() for t in tasks])
    return (task_shares(sample_task, tasks) * per_task).sum()


@TRAINER_REGISTRY.register()
class KgCoOp(MultiTaskPromptTrainer):
    """KgCoOp on every task at once: a context per task, CE plus W * the knowledge-guided term."""

    TRAINER_KEY = "KGCOOP"

    def check_cfg(self, cfg: CN) -> None:
        check_kgcoop_cfg(cfg.TRAINER.KGCOOP)

    def build_head(self, clip_model: nn.Module, task_info: TaskInfo) -> PromptHead:
        node = self.tcfg
        head = CoOpHead(task_info, clip_model.token_embedding, n_ctx=node.N_CTX, ctx_init=node.CTX_INIT)
        # z_c: frozen, derivable from CLIP, so never saved; computed once per run
        self.zs_text = zero_shot_text_features(clip_model, task_info)
        logger.info("KgCoOp per task: context %s, CTX_INIT %r, W %g", tuple(head.ctx.shape),
                    node.CTX_INIT, node.W)
        return head

    def batch_loss(self, images: torch.Tensor, labels: torch.Tensor, columns: torch.Tensor,
                   targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The joint loss sum_t (n_t / B) * (CE_t + W * (1 - mean_c cos(h_c, z_c)))."""
        h = self.model.text_features(columns)  # (C', D), normalised
        logits = self.model.logits(self.model.encode_image(images), columns, text_features=h)
        sample_task, column_task = self.task_of_class[labels], self.task_of_class[columns]
        ce = multitask_loss(logits, targets, sample_task, column_task)
        kg = knowledge_guided_term(h, self.zs_text.to(h.device)[columns], sample_task, column_task)
        return logits, {"loss": ce + self.tcfg.W * kg, "kg": kg}
