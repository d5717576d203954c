"""Zero-shot CLIP: one hand-written template per task, nothing learned.

The template of each task comes from its ``TaskInfo``: CoOp's per-dataset
templates for the standard datasets, a benchmark config's own (``TEMPLATE`` of a
MultiTask member), else "a photo of a {}.". Templates are sentences that end
with "." (the prompt builder writes the final "." itself). Training runs only
evaluate, so the same sweep scripts serve this baseline.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F
from dassl.engine import TRAINER_REGISTRY
from torch import nn

import config.zsclip  # noqa: F401  (registers TRAINER.ZSCLIP)
from datasets.task_info import TaskInfo
from trainers.parts.base import MultiTaskPromptTrainer, PromptHead
from trainers.parts.prompt import PromptBuilder
from trainers.parts.text_encoder import TextEncoder

logger = logging.getLogger(__name__)


def template_prompts(task_info: TaskInfo) -> list[str]:
    """Every class's zero-shot sentence, in global label order (without the final ".")."""
    out = []
    for template, names in zip(task_info.templates, task_info.classnames):
        out += [template.format(n.replace("_", " ")).rstrip().removesuffix(".") for n in names]
    return out


class TemplateHead(PromptHead):
    """Fixed prompts ``[SOS] <template with class name> . [EOS]``; no parameters."""

    def __init__(self, task_info: TaskInfo, token_embedding: nn.Embedding) -> None:
        super().__init__()
        self.sentences = template_prompts(task_info)
        self.prompts = PromptBuilder(self.sentences, 0, token_embedding)

    def forward(self, encoder: nn.Module, columns: Optional[torch.Tensor] = None,
                image_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        return encoder(*self.prompts(rows=columns))


@torch.no_grad()
def zero_shot_text_features(clip_model: nn.Module, task_info: TaskInfo) -> torch.Tensor:
    """Normalised zero-shot text features z ``(C, D)`` in global label order: what
    ZeroshotCLIP scores with (each task's template), for the trainers that lean on it
    (KgCoOp's knowledge-guided term, ProGrad's teacher). fp32, whatever CLIP's precision."""
    encoder = TextEncoder(clip_model)
    head = TemplateHead(task_info, clip_model.token_embedding).to(clip_model.token_embedding.weight.device)
    return F.normalize(head(encoder).float(), dim=-1)


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(MultiTaskPromptTrainer):
    """CLIP with per-task templates; ``train()`` and ``--eval-only`` both just evaluate."""

    TRAINER_KEY = "ZSCLIP"

    def build_head(self, clip_model: nn.Module, task_info: TaskInfo) -> PromptHead:
        head = TemplateHead(task_info, clip_model.token_embedding)
        for t, template in enumerate(task_info.templates):
            logger.info("Task %d (%s): template %r", t, task_info.keys[t], template)
        return head

    def train(self) -> None:
        logger.info("ZeroshotCLIP learns nothing: evaluating the templates.")
        self.epoch = -1  # results.json: no epoch
        self.test()

    def load_model(self, directory: str, epoch: Optional[int] = None) -> None:
        if directory:
            logger.warning("ZeroshotCLIP has no learned parameters: --model-dir %s is ignored.",
                           directory)
        self.epoch = -1
