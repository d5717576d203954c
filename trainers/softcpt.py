"""SoftCPT: soft context sharing for multi-task prompt tuning (docs/method.md).

A frozen CLIP is tuned through text context only. Per task t, a task prompt
``[SOS] P(t) <task name> . [EOS]`` gives the task feature f_t; a meta network G
maps it (with the class feature g_tj for the class-aware variants) to the
context c of every class prompt ``[SOS] c <class name> . [EOS]``, whose
features h_tj are the classifier. Everything else (loss, schedule, evaluation,
checkpoints) is the shared ``MultiTaskPromptTrainer``.
"""
from __future__ import annotations

import logging
import os
from typing import Optional, Sequence

import torch
from dassl.engine import TRAINER_REGISTRY
from torch import nn
from yacs.config import CfgNode as CN

from config.softcpt import META_NETS, check_softcpt_cfg, resolve_variant
from datasets.task_info import TaskInfo
from trainers.parts import interpret
from trainers.parts.base import MultiTaskPromptTrainer, PromptHead
from trainers.parts.prompt import PromptBuilder, init_context, num_tokens

logger = logging.getLogger(__name__)


class SoftCPTHead(PromptHead):
    """Task prompts -> meta network -> class prompts (docs/method.md#forward-pass).

    Args:
        task_names: the name of every task, fed to its task prompt.
        classnames: per task, its class names (global classes are their concatenation).
        token_embedding: CLIP's token embedding (frozen; only its output is kept).
        embed_dim: D, the dimension of CLIP's text features.
        n_ctx: N_CTX, context vectors generated per class prompt.
        class_token_position: ``end``, ``middle`` or ``front``.
        csc: class-aware meta input (g_tj and f_t) instead of f_t alone.
        task_n_ctx: m, task context vectors (0: plain task prompt).
        task_csc: one task context per task instead of one shared.
        task_ctx_init: words initialising the task context.
        class_n_ctx: k, class context vectors (used when ``csc``).
        class_csc: one class context per class instead of one shared.
        class_ctx_init: words initialising the class context.
        meta_net: ``lin``, ``linmean`` or ``lincls`` (class-aware input only).
        freeze_class_prompt: keep the class context at its initial value.
    """

    context_keys = ("task_ctx", "class_ctx")  # G (meta_net) is not a context: it stays fp32

    def __init__(self, task_names: Sequence[str], classnames: Sequence[Sequence[str]],
                 token_embedding: nn.Embedding, embed_dim: int, n_ctx: int = 16,
                 class_token_position: str = "end", csc: bool = False, task_n_ctx: int = 4,
                 task_csc: bool = False, task_ctx_init: str = "", class_n_ctx: int = 4,
                 class_csc: bool = False, class_ctx_init: str = "", meta_net: str = "lin",
                 freeze_class_prompt: bool = False) -> None:
        super().__init__()
        if meta_net not in META_NETS:
            raise ValueError(f"meta_net must be one of {META_NETS}, got {meta_net!r}")
        if (class_csc or meta_net != "lin") and not csc:
            raise ValueError("class_csc and meta_net linmean/lincls need csc (the class-aware input)")
        flat = [c for names in classnames for c in names]
        width = token_embedding.embedding_dim
        self.n_ctx, self.width, self.csc, self.meta_kind = n_ctx, width, csc, meta_net
        task_of_class = [t for t, names in enumerate(classnames) for _ in names]
        self.register_buffer("task_of_class", torch.tensor(task_of_class), persistent=False)

        # P: (m, W) shared or (T, m, W) per task; None when m = 0
        task_n_ctx = num_tokens(task_ctx_init) if task_ctx_init else task_n_ctx
        self.task_ctx = _context(task_n_ctx, width, len(task_names) if task_csc else None,
                                 task_ctx_init, token_embedding)
        self.task_prompts = PromptBuilder(task_names, task_n_ctx, token_embedding,
                                          key="TRAINER.SOFTCPT.TASK_N_CTX")
        self.per_task_keys = ("task_ctx",) if task_csc and self.task_ctx is not None else ()

        in_dim = embed_dim
        self.class_ctx, self.per_class_keys = None, ()
        if csc:  # Q: (k, W) shared or (C, k, W) per class, and prompts [SOS] Q <class> . [EOS]
            class_n_ctx = num_tokens(class_ctx_init) if class_ctx_init else class_n_ctx
            self.class_ctx = _context(class_n_ctx, width, len(flat) if class_csc else None,
                                      class_ctx_init, token_embedding)
            if self.class_ctx is not None:
                self.class_ctx.requires_grad_(not freeze_class_prompt)
                self.per_class_keys = ("class_ctx",) if class_csc else ()
            self.class_q_prompts = PromptBuilder(flat, class_n_ctx, token_embedding,
                                                 key="TRAINER.SOFTCPT.CLASS_N_CTX")
            in_dim = 2 * embed_dim if meta_net == "lin" else embed_dim

        # G: x -> x W, W ~ N(0, 0.02^2), no bias; D or 2D -> N_CTX * W
        self.meta_net = nn.Linear(in_dim, n_ctx * width, bias=False)
        nn.init.normal_(self.meta_net.weight, std=0.02)
        self.class_prompts = PromptBuilder(flat, n_ctx, token_embedding, class_token_position,
                                           key="TRAINER.SOFTCPT.N_CTX")

    @classmethod
    def from_cfg(cls, cfg: CN, clip_model: nn.Module, task_info: TaskInfo) -> "SoftCPTHead":
        """Build from ``cfg.TRAINER.SOFTCPT`` (VARIANT resolved here if it was not yet)."""
        node = resolve_variant(cfg).TRAINER.SOFTCPT
        check_softcpt_cfg(node)
        n_ctx = num_tokens(node.CTX_INIT) if node.CTX_INIT else node.N_CTX
        if node.CTX_INIT:
            logger.info("CTX_INIT %r sets N_CTX to %d; the context itself comes from G",
                        node.CTX_INIT, n_ctx)
        return cls(task_info.names, task_info.classnames, clip_model.token_embedding,
                   _text_dim(clip_model), n_ctx=n_ctx,
                   class_token_position=node.CLASS_TOKEN_POSITION, csc=node.CSC,
                   task_n_ctx=node.TASK_N_CTX, task_csc=node.TASK_CSC,
                   task_ctx_init=node.TASK_CTX_INIT, class_n_ctx=node.CLASS_N_CTX,
                   class_csc=node.CLASS_CSC, class_ctx_init=node.CLASS_CTX_INIT,
                   meta_net=node.META_NET, freeze_class_prompt=node.FREEZE_CLS_PROMPT)

    def forward(self, encoder: nn.Module, columns: Optional[torch.Tensor] = None,
                image_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Class features h ``(C', D)`` of the global classes ``columns`` (all when None)."""
        if columns is None:
            columns = torch.arange(len(self.task_of_class), device=self.task_of_class.device)
        tasks, task_pos = torch.unique(self.task_of_class[columns], return_inverse=True)
        f = self.task_features(encoder, tasks)  # f_t of the needed tasks: (T', D)
        if self.csc:  # c_tj = G(x_tj): (C', N_CTX, W)
            x = self.meta_input(encoder, columns, f[task_pos])  # (C', 2D) or (C', D)
            ctx = self.meta_net(x).view(-1, self.n_ctx, self.width)
        else:  # c_t = reshape(f_t W), used by every class of task t (one shared prefix per task)
            ctx = self.meta_net(f).view(-1, self.n_ctx, self.width)  # (T', N_CTX, W)
            return self.class_prompts.encode(encoder, ctx, columns, groups=task_pos)  # h_tj: (C', D)
        return self.class_prompts.encode(encoder, ctx, columns)  # h_tj: (C', D)

    @torch.no_grad()
    def generated_contexts(self, encoder: nn.Module) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """What G generates for every task: ``(T, N_CTX, W)``, and per class ``(C, N_CTX, W)``
        for the class-aware variants (None otherwise), whose per-task context is then the
        mean over the task's classes. Read by docs/method.md#task-transfer and
        scripts/interpret_prompt.py."""
        tasks = torch.arange(len(self.task_prompts), device=self.task_of_class.device)
        f = self.task_features(encoder, tasks)  # (T, D)
        if not self.csc:
            return self.meta_net(f).view(-1, self.n_ctx, self.width).float(), None
        columns = torch.arange(len(self.task_of_class), device=self.task_of_class.device)
        x = self.meta_input(encoder, columns, f[self.task_of_class])
        per_class = self.meta_net(x).view(-1, self.n_ctx, self.width).float()  # (C, N_CTX, W)
        per_task = torch.stack([per_class[self.task_of_class == t].mean(0) for t in tasks.tolist()])
        return per_task, per_class

    def task_features(self, encoder: nn.Module, tasks: torch.Tensor) -> torch.Tensor:
        """f_t = TextEncoder([SOS] P(t) <task name t> . [EOS]) for ``tasks``: (T', D), fp32."""
        ctx = self.task_ctx
        if ctx is not None and ctx.dim() == 3:
            ctx = ctx[tasks]  # (T', m, W)
        return self.task_prompts.encode(encoder, ctx, tasks).float()

    def meta_input(self, encoder: nn.Module, columns: torch.Tensor,
                   f: torch.Tensor) -> torch.Tensor:
        """x_tj from g_tj = TextEncoder([SOS] Q(j) <class name j> . [EOS]) and f_t."""
        ctx = self.class_ctx
        if ctx is not None and ctx.dim() == 3:
            ctx = ctx[columns]  # (C', k, W)
        g = self.class_q_prompts.encode(encoder, ctx, columns).float()  # (C', D)
        if self.meta_kind == "lin":
            return torch.cat([g, f], dim=-1)  # class feature first: (C', 2D)
        if self.meta_kind == "linmean":
            return (g + f) / 2
        return g  # lincls


def _context(n: int, width: int, groups: Optional[int], words: str,
             token_embedding: nn.Embedding) -> Optional[nn.Parameter]:
    """A learnable context ``(n, W)`` or ``(groups, n, W)``; None when n is 0."""
    if n == 0:
        return None
    return nn.Parameter(init_context(n, width, groups, words, token_embedding))


def _text_dim(clip_model: nn.Module) -> int:
    """D: the output dimension of CLIP's text projection."""
    proj = clip_model.text_projection
    return proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]


@TRAINER_REGISTRY.register()
class SoftCPT(MultiTaskPromptTrainer):
    """SoftCPT on every task of a benchmark at once; variants by TRAINER.SOFTCPT.VARIANT."""

    TRAINER_KEY = "SOFTCPT"

    def __init__(self, cfg: CN) -> None:
        super().__init__(self.resolved_cfg(cfg))

    @classmethod
    def resolved_cfg(cls, cfg: CN) -> CN:
        return resolve_variant(cfg)

    def check_cfg(self, cfg: CN) -> None:
        check_softcpt_cfg(cfg.TRAINER.SOFTCPT)

    def write_results(self, split: str) -> None:
        """results.json, then (test split) the generated contexts and the task-similarity matrix."""
        super().write_results(split)
        if split == "test" and self.cfg.OUTPUT_DIR:
            save_run_contexts(self)

    def build_head(self, clip_model: nn.Module, task_info: TaskInfo) -> PromptHead:
        node = self.tcfg
        logger.info("SoftCPT variant %s: CSC %s, TASK_CSC %s, CLASS_CSC %s, N_CTX %d, TASK_N_CTX %d,"
                    " CLASS_N_CTX %d, META_NET %s", node.VARIANT, node.CSC, node.TASK_CSC,
                    node.CLASS_CSC, node.N_CTX, node.TASK_N_CTX, node.CLASS_N_CTX, node.META_NET)
        return SoftCPTHead.from_cfg(self.cfg, clip_model, task_info)


@torch.no_grad()
def save_run_contexts(trainer: SoftCPT) -> None:
    """``<OUTPUT_DIR>/generated_contexts.pt`` and ``task_similarity.{csv,png}`` (trainers/parts/interpret.py).

    Written after results.json: a failure here is a warning and loses no result.
    """
    cfg, info, head = trainer.cfg, trainer.task_info, trainer.model.head
    per_task, _ = head.generated_contexts(trainer.model.text_encoder)
    tasks = getattr(trainer.evaluator, "report", {}).get("tasks") or []
    scores = [t["score"] for t in tasks] if len(tasks) == info.num_tasks else None
    epoch = trainer.epoch + 1 if trainer.epoch >= 0 else None
    path = os.path.join(cfg.OUTPUT_DIR, interpret.GENERATED_FILE)
    interpret.save_generated(path, per_task, info.keys, info.names, scores, epoch, cfg.dump(),
                             classnames=info.classnames, metrics=info.metrics, templates=info.templates)
    try:
        written = interpret.write_run_analysis(cfg.OUTPUT_DIR, interpret.load_generated(path))
    except Exception as err:  # noqa: BLE001 - a picture must not fail a finished run
        logger.warning("Task-similarity matrix not written (%s: %s); %s holds the contexts.",
                       type(err).__name__, err, path)
        return
    logger.info("Generated contexts saved to %s%s", path, "".join(f", {p}" for p in written))
