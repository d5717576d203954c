"""PLOT per task: several prompts matched to an image's regions by optimal transport
(Chen et al., ICLR 2023), on every task of a benchmark at once (docs/plot.md).

Every task t has N prompts ``[SOS] v^{t,n}_1 ... v^{t,n}_L <class name> . [EOS]``,
n = 1..N, each with its own context; every class c of t is encoded with each, giving
text features ``t_{n,c}``. An image gives M local features ``v_m``
(trainers/parts/local_features.py). Its logit for class c is

    logit_scale * sum_{m,n} P_{mn} cos(v_m, t_{n,c})

where P is the entropic optimal-transport plan between the M regions (mass 1/M each)
and the N prompts (1/N each) for the cost ``1 - cos``, found by Sinkhorn iterations
without gradient. Images are scored against their own task's classes only, and the
multi-task loss (trainers/parts/losses.py) makes this PLOT trained on each task alone.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F
from dassl.engine import TRAINER_REGISTRY
from torch import nn
from yacs.config import CfgNode as CN

from config.plot import check_plot_cfg
from datasets.task_info import TaskInfo
from trainers.parts import evaluation, feature_cache
from trainers.parts.base import MultiTaskPromptTrainer, PromptHead
from trainers.parts.local_features import local_features
from trainers.parts.losses import multitask_loss, own_task_prediction
from trainers.parts.prompt import PromptBuilder, init_context
from trainers.run import stops

logger = logging.getLogger(__name__)


class TransportError(RuntimeError):
    """A transport plan came out with NaN and TRAINER.PLOT.NAN_PLAN is "error"."""


@torch.no_grad()
def sinkhorn(kernel: torch.Tensor, max_iter: int = 100, thresh: float = 0.01) -> torch.Tensor:
    """Transport plans ``(P, M, N)`` between uniform marginals (1/M per row, 1/N per column)
    for the Gibbs kernels ``kernel`` ``(P, M, N)`` of P problems.

    Alternates the row scaling r and the column scaling c; stops after ``max_iter``
    rounds, or once the mean absolute change of r over all P problems is below ``thresh``
    (one test for the whole call, as the official code tests its whole batch). The
    columns end exactly at 1/N (c is updated last), the rows within the tolerance.
    """
    p, m, n = kernel.shape
    r, c = kernel.new_ones(p, m), kernel.new_ones(p, n)
    for _ in range(max_iter):
        previous = r
        r = (1.0 / m) / torch.bmm(kernel, c[:, :, None])[:, :, 0]
        c = (1.0 / n) / torch.bmm(kernel.transpose(1, 2), r[:, :, None])[:, :, 0]
        if float((r - previous).abs().mean()) < thresh:
            break
    return r[:, :, None] * kernel * c[:, None, :]


class PLOTHead(PromptHead):
    """N learned contexts per task, every class encoded with each.

    Args:
        task_info: the tasks and their class names (global classes are their concatenation).
        token_embedding: CLIP's token embedding (frozen).
        n_prompts: N, prompts per task.
        n_ctx: context vectors per prompt, drawn from N(0, 0.02^2).
    """

    context_keys = ("ctx",)
    per_task_keys = ("ctx",)

    def __init__(self, task_info: TaskInfo, token_embedding: nn.Embedding, n_prompts: int = 4,
                 n_ctx: int = 16) -> None:
        super().__init__()
        tasks, width = task_info.num_tasks, token_embedding.embedding_dim
        # (T, N, n_ctx, W): one context per prompt of every task
        self.ctx = nn.Parameter(init_context(n_ctx, width, tasks * n_prompts).unflatten(0, (tasks, n_prompts)))
        self.prompts = PromptBuilder(task_info.all_classnames, n_ctx, token_embedding)
        self.register_buffer("task_of_class", torch.tensor(task_info.task_of_class), persistent=False)

    @classmethod
    def from_cfg(cls, node: CN, clip_model: nn.Module, task_info: TaskInfo) -> "PLOTHead":
        """Build from ``cfg.TRAINER.PLOT``."""
        return cls(task_info, clip_model.token_embedding, node.N_PROMPTS, node.N_CTX)

    def forward(self, encoder: nn.Module, columns: Optional[torch.Tensor] = None,
                image_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Class features ``(N, C', D)`` of the global classes ``columns`` (all when None),
        one set per prompt."""
        if columns is None:
            columns = torch.arange(len(self.prompts), device=self.ctx.device)
        n = self.ctx.shape[1]
        tasks, pos = torch.unique(self.task_of_class[columns], return_inverse=True)
        # one prefix [SOS] ctx per (present task, prompt), task-major; rows prompt-major
        groups = pos[None, :] * n + torch.arange(n, device=pos.device)[:, None]  # (N, C')
        feats = self.prompts.encode(encoder, self.ctx[tasks].flatten(0, 1), columns.repeat(n),
                                    groups.flatten())
        return feats.view(n, len(columns), -1)


@TRAINER_REGISTRY.register()
class PLOT(MultiTaskPromptTrainer):
    """PLOT with N prompts per task, trained on all tasks at once."""

    TRAINER_KEY = "PLOT"

    def check_cfg(self, cfg: CN) -> None:
        check_plot_cfg(cfg.TRAINER.PLOT)

    def build_head(self, clip_model: nn.Module, task_info: TaskInfo) -> PromptHead:
        head = PLOTHead.from_cfg(self.tcfg, clip_model, task_info)
        logger.info("PLOT per task: contexts %s (tasks, prompts, N_CTX, width), Sinkhorn eps %g, "
                    "<= %d iterations, NAN_PLAN %s", tuple(head.ctx.shape), self.tcfg.OT_EPS,
                    self.tcfg.OT_MAX_ITER, self.tcfg.NAN_PLAN)
        return head

    # ------------------------------------------------------------------ scores
    def encode_local(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised local image features ``(B, M, D)`` (the global output 0 is dropped)."""
        feats = local_features(self.model.image_encoder, images.to(self.model.dtype))
        return F.normalize(feats[:, 1:].float(), dim=-1)

    def task_logits(self, v: torch.Tensor, text: torch.Tensor, where: str) -> torch.Tensor:
        """Logits ``(B, K)`` of local features v ``(B, M, D)`` against one task's class features
        ``(N, K, D)`` (both normalised): the transport-weighted sum of the cosines."""
        node = self.tcfg
        with torch.autocast(v.device.type, enabled=False):  # the plan in fp32, also under amp
            sim = torch.einsum("bmd,nkd->bkmn", v.float(), text.float())  # (B, K, M, N)
            kernel = torch.exp(-(1.0 - sim.detach()) / node.OT_EPS)
            plan = sinkhorn(kernel.flatten(0, 1), node.OT_MAX_ITER, node.OT_THRESH).view_as(sim)
            bad = plan.isnan().flatten(2).any(2)  # (B, K)
            if bad.any():
                plan = self.nan_plan(plan, bad, where)
            return self.model.logit_scale.exp().float() * (plan * sim).sum((2, 3))

    def nan_plan(self, plan: torch.Tensor, bad: torch.Tensor, where: str) -> torch.Tensor:
        """TRAINER.PLOT.NAN_PLAN: stop naming the batch, or the uniform plan where NaN."""
        what = (f"the transport plan of {where} has NaN for {int(bad.sum())} of its "
                f"{bad.numel()} image-class pairs")
        if self.tcfg.NAN_PLAN == "error":
            raise TransportError(f"{what}: set TRAINER.PLOT.NAN_PLAN uniform to use the uniform plan "
                                 "there instead, or lower OPTIM.LR (docs/plot.md#a-plan-with-nan).")
        logger.warning("%s: using the uniform plan there (TRAINER.PLOT.NAN_PLAN uniform).", what)
        m, n = plan.shape[-2:]
        return plan.masked_fill(bad[:, :, None, None], 1.0 / (m * n))

    def own_task_logits(self, v: torch.Tensor, text: torch.Tensor, sample_task: Optional[torch.Tensor],
                        column_task: torch.Tensor, where: str) -> torch.Tensor:
        """Logits ``(B, C')`` over the columns whose tasks are ``column_task`` ``(C',)``; each
        task's block is computed on its own, as in that task's own run.

        ``sample_task`` ``(B,)``: only each image's own task is scored, the other columns
        are -inf; None scores every image against every task."""
        logits = v.new_full((len(v), len(column_task)), float("-inf"))
        tasks = column_task.unique() if sample_task is None else sample_task.unique()
        for t in tasks.tolist():
            cols = (column_task == t).nonzero().squeeze(1)
            rows = (torch.arange(len(v), device=v.device) if sample_task is None
                    else (sample_task == t).nonzero().squeeze(1))
            name = self.task_info.keys[t] if hasattr(self, "task_info") else t
            logits[rows[:, None], cols] = self.task_logits(v[rows], text[:, cols], f"{where}, task {name}")
        return logits

    # ------------------------------------------------------------------- train
    def plot_loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The multi-task loss of a batch (each task's share times its own PLOT loss) and its
        accuracy: images scored against their own task's classes only. (Not the base's
        ``batch_loss``: PLOT scores images by their local features, batch by batch.)"""
        columns = self.training_columns(labels)
        targets = torch.searchsorted(columns, labels)
        sample_task, column_task = self.task_of_class[labels], self.task_of_class[columns]
        with torch.autocast(self.device.type, enabled=self.precision == "amp"):
            text = self.model.text_features(columns)  # (N, C', D)
            where = f"epoch {getattr(self, 'epoch', 0) + 1}, batch {getattr(self, 'batch_idx', 0) + 1}"
            logits = self.own_task_logits(self.encode_local(images), text, sample_task, column_task, where)
            loss = multitask_loss(logits, targets, sample_task, column_task)
        acc = (own_task_prediction(logits, sample_task, column_task) == targets).float().mean()
        return loss, acc

    def forward_backward(self, batch: dict) -> dict:
        stops.check()  # between batches, as the base's: a stop resumes from the last whole epoch
        images, labels, _ = self.parse_batch_train(batch)
        loss, acc = self.plot_loss(images, labels)
        self.optimizer_steps({"loss": loss})
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return {"loss": loss.item(), "acc": 100.0 * acc.item()}

    # -------------------------------------------------------------------- test
    def feature_logits(self, u: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        """Logits ``(B, C)`` from normalised local features u ``(B, M, D)``: over each image's
        own task (other columns -inf), or over every task when ``labels`` is None."""
        text = self._eval_text if self._eval_text is not None else self.model.text_features()
        tasks = None if labels is None else self.task_of_class[labels]
        return self.own_task_logits(u, text, tasks, self.task_of_class, self._eval_where)

    def model_inference(self, images: torch.Tensor) -> torch.Tensor:
        return self.feature_logits(self.encode_local(images), None)

    @torch.no_grad()
    def evaluate(self, split: str) -> float:
        """The test loop on local features encoded batch by batch from the images: a split's
        M local features per image are too large to hold or cache (docs/plot.md#feature-cache)."""
        loader = self.val_loader if split == "val" else self.test_loader
        print(f"Evaluate on the *{split}* set")
        logger.info("PLOT encodes the %s images at every evaluation: local features are not "
                    "cached (docs/plot.md#feature-cache).", split)

        def batches():
            for i, batch in enumerate(feature_cache.ordered_loader(loader)):
                stops.check()  # a stop between evaluation batches, as the other trainers'
                self._eval_where = f"the {split} split's batch {i + 1}"
                yield self.encode_local(batch["img"].to(self.device)), batch["label"].to(self.device)

        with feature_cache.rng_untouched():  # evaluating leaves the training's random states alone
            results = evaluation.evaluate_batches(self.evaluator, batches(), self.feature_logits, len(loader))
        for k, v in results.items():
            self.write_scalar(f"{split}/{k}", v, self.epoch)
        return list(results.values())[0]

    _eval_where = "an evaluation batch"
