"""The multi-task loss and the training-time choice of class columns (docs/method.md#loss).

Logits are computed over a subset of the global classes (``columns``, sorted
global labels): the classes of the tasks present in the batch, optionally
thinned by class sampling. Each sample is scored against its own task's
columns only.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


def own_task_mask(sample_task: torch.Tensor, column_task: torch.Tensor) -> torch.Tensor:
    """``(B, C')`` True where a column belongs to the sample's task."""
    return sample_task[:, None] == column_task[None, :]


def own_task_prediction(logits: torch.Tensor, sample_task: torch.Tensor,
                        column_task: torch.Tensor) -> torch.Tensor:
    """``(B,)`` argmax over each sample's own task's columns (docs/method.md#forward-pass: prediction)."""
    own = own_task_mask(sample_task, column_task)
    return logits.masked_fill(~own, float("-inf")).argmax(dim=1)


def multitask_loss(logits: torch.Tensor, targets: torch.Tensor, sample_task: torch.Tensor,
                   column_task: torch.Tensor) -> torch.Tensor:
    """Sum over samples of the cross-entropy over their own task's columns, / batch size.

    Masking other tasks' logits to -inf is the same as slicing each task's
    ``K_t`` logits: exp(-inf) adds nothing to the softmax and gets no gradient.

    Args:
        logits: ``(B, C')`` over the selected columns.
        targets: ``(B,)`` position of each sample's class among the columns.
        sample_task: ``(B,)`` task of each sample.
        column_task: ``(C',)`` task of each column.
    """
    masked = logits.masked_fill(~own_task_mask(sample_task, column_task), float("-inf"))
    return F.cross_entropy(masked.float(), targets)


def training_columns(labels: torch.Tensor, task_of_class: torch.Tensor, skip_absent: bool = True,
                     sample_rate: float = 0.0,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Sorted global classes whose features a training step needs.

    Args:
        labels: ``(B,)`` global labels of the batch.
        task_of_class: ``(C,)`` task of every global class.
        skip_absent: keep only the classes of tasks present in the batch (exact:
            an absent task contributes nothing to the loss).
        sample_rate: CLS_SAMPLE_RATE r; when > 0, each kept task keeps the
            classes in the batch plus ceil(r * other classes) drawn at random.
    """
    num_classes = task_of_class.shape[0]
    keep = torch.ones(num_classes, dtype=torch.bool, device=labels.device)
    if skip_absent:
        keep = torch.isin(task_of_class, task_of_class[labels])
    if sample_rate > 0:
        keep = keep & _sample_classes(labels, task_of_class, sample_rate, generator)
    return keep.nonzero().squeeze(1)


def _sample_classes(labels: torch.Tensor, task_of_class: torch.Tensor, rate: float,
                    generator: Optional[torch.Generator]) -> torch.Tensor:
    in_batch = torch.zeros_like(task_of_class, dtype=torch.bool)
    in_batch[labels] = True
    keep = in_batch.clone()
    for t in task_of_class.unique().tolist():
        others = ((task_of_class == t) & ~in_batch).nonzero().squeeze(1)
        n = math.ceil(rate * others.numel())
        if n:
            pick = torch.randperm(others.numel(), generator=generator, device="cpu")[:n]
            keep[others[pick.to(others.device)]] = True
    return keep
