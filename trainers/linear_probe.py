"""Linear-probe CLIP: logistic regression on frozen image features, one per task.

For every task, scikit-learn's L2-regularised logistic regression is fitted on
the normalised image features u of the task's few-shot training images (test
transform, no augmentation) for each C of TRAINER.LINEAR_PROBE.C_GRID; the C
with the best validation score (the task's declared metric, ties to the
smaller C) is kept. The fitted classifiers are stacked into one linear layer
over the classes of all tasks, evaluated by the shared evaluator and saved as a
learned-only checkpoint, like a prompt. The training images are the same
few-shot draw (DATASET.NUM_SHOTS, seed) the prompt learners see.
"""
from __future__ import annotations

import logging
import warnings
from typing import Optional

import numpy as np
import torch
from dassl.data.data_manager import build_data_loader
from dassl.data.transforms import build_transform
from dassl.engine import TRAINER_REGISTRY
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from torch import nn

import config.linear_probe  # noqa: F401  (registers TRAINER.LINEAR_PROBE)
from datasets.task_info import TaskInfo, task_info_of
from trainers.parts.backbone import load_clip, resolve_precision
from trainers.parts.base import HEAD_NAME, MultiTaskCLIP, MultiTaskPromptTrainer, PromptHead
from trainers.parts.evaluator import task_scores
from trainers.run import stops

logger = logging.getLogger(__name__)


class LinearProbeHead(PromptHead):
    """The fitted classifiers as one linear map over all classes: logits ``u W^T + b``."""

    per_class_keys = ("weight", "bias")

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_classes, dim), requires_grad=False)  # (C, D)
        self.bias = nn.Parameter(torch.zeros(num_classes), requires_grad=False)  # (C,)

    def logits(self, u: torch.Tensor) -> torch.Tensor:
        return u @ self.weight.t() + self.bias  # (B, C)


def fit_task(x: np.ndarray, y: np.ndarray, x_val: Optional[np.ndarray], y_val: Optional[np.ndarray],
             num_classes: int, metric: str, c_grid: list,
             max_iter: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Fit one task's classifier; returns weight ``(K, D)``, bias ``(K,)`` and the chosen C.

    Labels are local (0..K-1). A class without training images gets bias -inf.
    """
    weight = np.zeros((num_classes, x.shape[1]))
    bias = np.full(num_classes, -np.inf)
    present = np.unique(y)
    if len(present) == 1:  # nothing to separate: always predict that class
        bias[present[0]] = 0.0
        return weight, bias, float("nan")

    def fit(c: float) -> LogisticRegression:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return LogisticRegression(C=c, max_iter=max_iter).fit(x, y)

    grid = sorted(c_grid)
    if y_val is None or not len(y_val):
        best = fit(grid[len(grid) // 2])
        logger.warning("No validation images: using C = %g, the middle of C_GRID.", best.C)
    else:
        info = TaskInfo.single("task", [str(k) for k in range(num_classes)], metric=metric)
        best, best_score = None, -np.inf
        for c in grid:  # a tie keeps the smaller C (stronger regularisation)
            clf = fit(c)
            score = task_scores(y_val, clf.predict(x_val), info)[0]["score"]
            if score > best_score:
                best, best_score = clf, score
    coef, intercept = best.coef_, best.intercept_
    if len(best.classes_) == 2:  # binary: one score for classes_[1] against classes_[0]
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    weight[best.classes_], bias[best.classes_] = coef, intercept
    return weight, bias, best.C


@TRAINER_REGISTRY.register()
class LinearProbeCLIP(MultiTaskPromptTrainer):
    """Per-task logistic regression on frozen CLIP image features; C chosen on val."""

    TRAINER_KEY = "LINEAR_PROBE"

    def build_model(self) -> None:
        cfg = self.cfg
        self.task_info = task_info_of(self.dm.dataset, cfg.DATASET.NAME)
        self.precision = precision = resolve_precision(self.tcfg.PREC, self.device)
        backbone = cfg.MODEL.BACKBONE
        logger.info("Loading CLIP (backbone: %s)", backbone.NAME)
        clip_model = load_clip(backbone.NAME, backbone.PRETRAINED_TAG, precision, self.device,
                               pretrained=backbone.PRETRAINED)
        head = self.build_frozen_head(sum(self.task_info.num_classes), clip_model.visual.output_dim)
        self.model = MultiTaskCLIP(clip_model, head).to(self.device)
        self.register_model(HEAD_NAME, head, None, None)

    def build_frozen_head(self, num_classes: int, dim: int) -> PromptHead:
        """The head fitted on the shots' image features (ProtoNet's: its prototypes)."""
        return LinearProbeHead(num_classes, dim)

    def shot_loader(self):
        """The few-shot training images with the test transform (no augmentation), in order."""
        cfg = self.cfg
        return stops.quiet_workers(build_data_loader(
            cfg, sampler_type="SequentialSampler", data_source=self.dm.dataset.train_x,
            batch_size=cfg.DATALOADER.TEST.BATCH_SIZE, tfm=build_transform(cfg, is_train=False),
            is_train=False))

    def train(self) -> None:
        """Fit every task's classifier, save it, then evaluate like any trainer."""
        self.set_model_mode("eval")
        x, y = self.features(self.shot_loader(), "train")
        x_val, y_val = self.features(self.val_loader, "val") if self.val_loader is not None else (None, None)
        info, head = self.task_info, self.model.head
        for t, (lo, hi) in enumerate(zip(info.offsets[:-1], info.offsets[1:])):
            stops.check()  # nothing is saved until every task is fitted
            own = (y >= lo) & (y < hi)
            own_val = None if y_val is None else (y_val >= lo) & (y_val < hi)
            weight, bias, c = fit_task(
                x[own], y[own] - lo, None if own_val is None else x_val[own_val],
                None if own_val is None else y_val[own_val] - lo, hi - lo, info.metrics[t],
                list(self.tcfg.C_GRID), self.tcfg.MAX_ITER)
            head.weight.data[lo:hi] = torch.from_numpy(weight).to(head.weight)
            head.bias.data[lo:hi] = torch.from_numpy(bias).to(head.bias)
            logger.info("Task %d (%s): %d training images, C = %g", t, info.keys[t], own.sum(), c)
        self.finish_fit()

    def finish_fit(self) -> None:
        """Save the fitted head as epoch 1's learned-only checkpoint, then evaluate."""
        self.epoch = 0
        if self.cfg.OUTPUT_DIR:
            self.save_model(0, self.cfg.OUTPUT_DIR)
        print("Finish training")  # what log parsers (CoOp's parse_test_res.py) look for
        self.test()

    def features(self, loader, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Normalised image features ``(N, D)`` and global labels ``(N,)``, through the cache."""
        feats, labels = self.split_features(loader, split)
        return feats.double().numpy(), labels.numpy()

    def feature_logits(self, u: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.model.head.logits(u)  # the frozen head's own logits

    def eval_text_features(self) -> None:
        return None  # no text features: the fitted head scores the image features
