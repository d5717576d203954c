"""Dassl's learning-rate schedules, built on torch's own ``LambdaLR``.

Dassl's warm-up wrapper subclasses ``_LRScheduler`` with a ``verbose``
positional argument that current PyTorch rejects, so its schedules are rebuilt
here in closed form with the same values, epoch by epoch:

* epochs ``e < W`` (``OPTIM.WARMUP_EPOCH``): ``WARMUP_CONS_LR`` (constant warm-up), or
  ``WARMUP_MIN_LR`` at epoch 0 then ``LR * e / W`` (linear warm-up);
* afterwards the successor (cosine, single_step, multi_step) at step ``e - W``
  (``WARMUP_RECOUNT True``, Dassl's default and CoOp's), or its first value at
  ``e = W`` and step ``e`` after that (``WARMUP_RECOUNT False``; Dassl's own
  recursive cosine drifts slightly from this closed form in that mode).

Cosine is ``LR * (1 + cos(pi * k / MAX_EPOCH)) / 2``. The scheduler is stepped
once per epoch, like Dassl's (``STEPS_PER_BATCH`` may step it more often).
"""
from __future__ import annotations

import bisect
import math
from typing import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR

from config import SCHEDULERS, WARMUP_TYPES  # the names config.check_values accepts


def successor_factor(name: str, max_epoch: int, stepsize, gamma: float) -> Callable[[int], float]:
    """Multiplier of the base lr at step ``k`` of the main schedule."""
    if name == "cosine":
        return lambda k: 0.5 * (1.0 + math.cos(math.pi * k / max_epoch))
    if name == "single_step":
        step = stepsize[-1] if isinstance(stepsize, (list, tuple)) else stepsize
        step = step if step > 0 else max_epoch
        return lambda k: gamma ** (k // step)
    if name == "multi_step":
        milestones = sorted(stepsize)
        return lambda k: gamma ** bisect.bisect_right(milestones, k)
    raise ValueError(f"OPTIM.LR_SCHEDULER must be one of {SCHEDULERS}, got {name!r}")


def lr_factor(optim_cfg) -> Callable[[int], float]:
    """Multiplier of ``OPTIM.LR`` at epoch ``e``, Dassl's definition."""
    base = optim_cfg.LR
    main = successor_factor(optim_cfg.LR_SCHEDULER, optim_cfg.MAX_EPOCH,
                            optim_cfg.STEPSIZE, optim_cfg.GAMMA)
    warmup = optim_cfg.WARMUP_EPOCH
    if warmup <= 0:
        return main
    if optim_cfg.WARMUP_TYPE not in WARMUP_TYPES:
        raise ValueError(f"OPTIM.WARMUP_TYPE must be one of {WARMUP_TYPES}, "
                         f"got {optim_cfg.WARMUP_TYPE!r}")
    constant = optim_cfg.WARMUP_TYPE == "constant"
    recount = optim_cfg.WARMUP_RECOUNT

    def factor(e: int) -> float:
        if e < warmup:
            if constant:
                return optim_cfg.WARMUP_CONS_LR / base
            return optim_cfg.WARMUP_MIN_LR / base if e == 0 else e / warmup
        if recount:
            return main(e - warmup)
        return main(0) if e == warmup else main(e)

    return factor


def build_lr_scheduler(optimizer: torch.optim.Optimizer, optim_cfg) -> LambdaLR:
    """Replacement for ``dassl.optim.build_lr_scheduler`` (same config keys)."""
    return LambdaLR(optimizer, lr_factor(optim_cfg))
