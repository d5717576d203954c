"""ProGrad per task: CoOp whose update is kept from conflicting with zero-shot CLIP's
knowledge (Zhu et al., ICCV 2023).

Every task t has its own context (16 vectors), as in CoOp-CA (trainers/coop.py builds
the prompts). The teacher is zero-shot CLIP: logits ``logit_scale * u . z_c`` over the
task's classes, z_c in the task's template (as ZeroshotCLIP). Per task, two losses:
``L_ce`` (cross-entropy) and ``L_kl = T^2 * mean_i sum_c -p_ic log q_ic`` (p, q the
teacher's and the student's softmax at temperature T). Their gradients g_ce and g_kl
on the task's context give the update: g_ce with its component against g_kl removed
when the two conflict (g_ce . g_kl < 0), g_ce otherwise.

Both joint losses are sums of (n_t / B) * the task's loss, and task t's context gets
gradient only from task t's terms, so projecting each task's slice of the context's
gradient separately is each task's own ProGrad update, scaled by its share of the
batch (the projection is homogeneous in g_ce and ignores the scale of g_kl). Under
amp both losses carry the same loss scale, which the projection keeps, so the
gradient scaler's unscaling and overflow check apply unchanged (docs/baselines.md#prograd).
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch
import torch.nn.functional as F
from dassl.engine import TRAINER_REGISTRY
from torch import nn
from yacs.config import CfgNode as CN

from config.prograd import check_prograd_cfg
from datasets.task_info import TaskInfo
from trainers.coop import CoOpHead
from trainers.parts.base import MultiTaskPromptTrainer, PromptHead
from trainers.parts.losses import multitask_loss, own_task_mask
from trainers.parts.prompt import embed_words
from trainers.zsclip import zero_shot_text_features

logger = logging.getLogger(__name__)


def template_context(templates: Sequence[str], n_ctx: int, token_embedding: nn.Embedding) -> torch.Tensor:
    """ProGrad's initial contexts ``(T, n_ctx, W)``: zeros, the last vectors the token
    embeddings of each template's words before ``{}`` ("a photo of a" for
    "a photo of a {}, a type of pet."): the words next to the class name, which ends the
    prompt. Longer words keep their last ``n_ctx`` tokens."""
    width = token_embedding.embedding_dim
    out = torch.zeros(len(templates), n_ctx, width)
    for t, template in enumerate(templates):
        words = template.split("{}")[0].strip()
        if not words:
            continue
        emb = embed_words(words, token_embedding)
        if len(emb) > n_ctx:
            logger.warning("ProGrad: template %r has %d tokens before its class name; the context "
                           "starts from the last %d.", template, len(emb), n_ctx)
            emb = emb[-n_ctx:]
        out[t, n_ctx - len(emb):] = emb.cpu()
    return out


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, sample_task: torch.Tensor,
                      column_task: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T^2 * mean over samples of sum over their own task's columns of -p log q.

    p = softmax(teacher / T) and q = softmax(student / T), each over the sample's own
    task's columns ``(B, C')``: the batch-share-weighted sum of every task's ProGrad loss.
    """
    own = own_task_mask(sample_task, column_task)
    log_q = F.log_softmax(student.float().masked_fill(~own, float("-inf")) / temperature, dim=1)
    p = F.softmax(teacher.float().masked_fill(~own, float("-inf")) / temperature, dim=1)
    per_sample = -(p * log_q.masked_fill(~own, 0.0)).sum(1)  # 0 * -inf would be NaN
    return temperature ** 2 * per_sample.mean()


def project_conflicting(g_ce: torch.Tensor, g_kl: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Per row r of the first dimension: ``g_ce[r] - lam * (g_ce[r] . u) u`` with
    ``u = g_kl[r] / |g_kl[r]|`` where ``g_ce[r] . g_kl[r] < 0``, else ``g_ce[r]``.
    Computed in fp32, returned in ``g_ce``'s dtype."""
    a, b = g_ce.float().flatten(1), g_kl.float().flatten(1)
    dot = (a * b).sum(1)
    norm2 = (b * b).sum(1).clamp_min(torch.finfo(torch.float32).tiny)
    coef = torch.where(dot < 0, lam * dot / norm2, torch.zeros_like(dot))
    return (a - coef[:, None] * b).view_as(g_ce).to(g_ce.dtype)


@TRAINER_REGISTRY.register()
class ProGrad(MultiTaskPromptTrainer):
    """ProGrad on every task at once: a context per task, its gradient projected per task."""

    TRAINER_KEY = "PROGRAD"

    def check_cfg(self, cfg: CN) -> None:
        check_prograd_cfg(cfg.TRAINER.PROGRAD)

    def build_head(self, clip_model: nn.Module, task_info: TaskInfo) -> PromptHead:
        node = self.tcfg
        head = CoOpHead(task_info, clip_model.token_embedding, n_ctx=node.N_CTX)  # N(0, 0.02)
        if node.INIT_FROM_TEMPLATE:
            head.ctx.data = template_context(task_info.templates, node.N_CTX,
                                             clip_model.token_embedding).to(head.ctx)
        self.zs_text = zero_shot_text_features(clip_model, task_info)  # the teacher's z_c, not saved
        logger.info("ProGrad per task: context %s, INIT_FROM_TEMPLATE %s, T %g, LAMBDA %g",
                    tuple(head.ctx.shape), node.INIT_FROM_TEMPLATE, node.T, node.LAMBDA)
        return head

    def batch_loss(self, images: torch.Tensor, labels: torch.Tensor, columns: torch.Tensor,
                   targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``loss``: the joint L_ce; ``kl``: the joint L_kl against the zero-shot teacher."""
        u = self.model.encode_image(images)
        logits = self.model.logits(u, columns)
        with torch.no_grad():
            teacher = self.model.logit_scale.exp().float() * u @ self.zs_text.to(u.device)[columns].t()
        sample_task, column_task = self.task_of_class[labels], self.task_of_class[columns]
        ce = multitask_loss(logits, targets, sample_task, column_task)
        kl = distillation_loss(logits, teacher, sample_task, column_task, self.tcfg.T)
        return logits, {"loss": ce, "kl": kl}

    def optimizer_steps(self, losses: dict[str, torch.Tensor]) -> None:
        """g_ce and g_kl of every learned tensor, projected per task (per tensor for a tensor
        shared by all tasks), then the optimizer steps (``step_optimizer``; amp: one scaled step)."""
        ce, kl = losses["loss"], losses["kl"]
        self.detect_anomaly(ce)
        if self.scaler is not None:  # the same scale on both: the projection keeps it
            ce, kl = self.scaler.scale(ce), self.scaler.scale(kl)
        named = [(n, p) for n, p in self.model.head.named_parameters() if p.requires_grad]
        params = [p for _, p in named]
        g_ce = torch.autograd.grad(ce, params, retain_graph=True, allow_unused=True)
        g_kl = torch.autograd.grad(kl, params, allow_unused=True)
        self.optim.zero_grad()
        for (name, p), a, b in zip(named, g_ce, g_kl):
            a = torch.zeros_like(p) if a is None else a
            b = torch.zeros_like(p) if b is None else b
            if name in self.model.head.per_task_keys:  # (T, ...): one projection per task
                p.grad = project_conflicting(a, b, self.tcfg.LAMBDA)
            else:
                p.grad = project_conflicting(a[None], b[None], self.tcfg.LAMBDA)[0]
        self.step_optimizer()
