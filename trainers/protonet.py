"""ProtoNet on CLIP image features: class prototypes from the shots, nothing trained.

The prototype of class c is the mean of the normalised image features u of its K
training shots (the evaluation transform, no augmentation), renormalised; a test
image takes the class of its own task whose prototype is closest in cosine. The
paper's ProtoNet row used a feature extractor it does not name (its General-10
average is far below zero-shot CLIP): this one is "ProtoNet on CLIP image features"
(docs/baselines.md#protonet). It is the linear probe's pipeline (trainers/linear_probe.py:
the shots' features through the image-feature cache, a frozen head over all classes,
a learned-only checkpoint, the shared evaluation) with prototypes instead of a fit.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from dassl.engine import TRAINER_REGISTRY
from yacs.config import CfgNode as CN

import config.protonet  # noqa: F401  (registers TRAINER.PROTONET)
from config.protonet import check_protonet_cfg
from trainers.linear_probe import LinearProbeCLIP
from trainers.parts.base import PromptHead

logger = logging.getLogger(__name__)


def class_prototypes(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Normalised mean of each class's normalised features ``(C, D)``; a class without
    images gets a zero row (it is never predicted while its task has another)."""
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64)
    sums.index_add_(0, labels.long().cpu(), F.normalize(features.double().cpu(), dim=-1))
    return F.normalize(sums, dim=-1).float()  # the mean's direction is the sum's


class PrototypeHead(PromptHead):
    """The prototypes ``(C, D)``, frozen: logits are cos(u, prototype)."""

    per_class_keys = ("prototypes",)

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.prototypes = torch.nn.Parameter(torch.zeros(num_classes, dim), requires_grad=False)

    def logits(self, u: torch.Tensor) -> torch.Tensor:
        return u @ self.prototypes.t()  # (B, C)


@TRAINER_REGISTRY.register()
class ProtoNet(LinearProbeCLIP):
    """Nearest class prototype (mean normalised CLIP image feature of the shots) per task."""

    TRAINER_KEY = "PROTONET"

    def check_cfg(self, cfg: CN) -> None:
        check_protonet_cfg(cfg.TRAINER.PROTONET)

    def build_frozen_head(self, num_classes: int, dim: int) -> PromptHead:
        return PrototypeHead(num_classes, dim)

    def train(self) -> None:
        """The prototypes of the shots, saved like a learned model, then the evaluation."""
        self.set_model_mode("eval")
        feats, labels = self.split_features(self.shot_loader(), "train")
        head = self.model.head
        head.prototypes.data = class_prototypes(feats, labels, len(head.prototypes)).to(head.prototypes)
        logger.info("Prototypes of %d classes from %d training images", len(head.prototypes), len(labels))
        self.finish_fit()
