"""Checkpoints as CoOp's own code writes them: Dassl's ``save_checkpoint`` of a state that holds
the optimizer's and the warm-up scheduler's ``state_dict()``, built with Dassl's own functions.

CoOp's configs warm up for one epoch (``OPTIM.WARMUP_EPOCH 1``), so Dassl wraps the cosine
schedule in a ``ConstantWarmupScheduler`` whose state dict holds the cosine scheduler itself
(its ``successor``), which holds the optimizer. On current PyTorch, Dassl's warm-up constructor
passes an argument ``LRScheduler`` no longer takes (a TypeError), so the warm-up object is made
here as that constructor makes it on the PyTorch CoOp ran on: its own fields, then
``LRScheduler.__init__``. Dassl's files are not changed.
"""
from __future__ import annotations

import os.path as osp
import warnings

import torch
from dassl.config import get_cfg_default
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.optim.lr_scheduler import ConstantWarmupScheduler, LinearWarmupScheduler
from dassl.utils import save_checkpoint
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

WARMUPS = {"constant": (ConstantWarmupScheduler, "cons_lr"), "linear": (LinearWarmupScheduler, "min_lr")}


def warmup_scheduler(kind: str, optimizer: torch.optim.Optimizer, successor: LRScheduler,
                     warmup_epoch: int = 1, lr: float = 1e-5) -> LRScheduler:
    """Dassl's ``ConstantWarmupScheduler`` / ``LinearWarmupScheduler`` around ``successor``."""
    cls, lr_field = WARMUPS[kind]
    sched = cls.__new__(cls)
    sched.successor, sched.warmup_epoch = successor, warmup_epoch
    setattr(sched, lr_field, lr)
    LRScheduler.__init__(sched, optimizer, -1)
    return sched


def write_coop_checkpoint(folder: str, state_dict: dict, epoch: int = 50, warmup: str = "constant",
                          optim: str = "sgd", schedule: str = "cosine") -> str:
    """``<folder>/model.pth.tar-<epoch>`` and ``<folder>/checkpoint`` as CoOp's ``save_model``
    writes them after ``epoch`` epochs of ``optim`` under ``schedule`` after a warm-up."""
    params = nn.ParameterDict({k.replace(".", "_"): nn.Parameter(v.detach().clone().float())
                               for k, v in state_dict.items()})
    cfg = get_cfg_default().OPTIM.clone()
    cfg.defrost()
    cfg.NAME, cfg.LR, cfg.MAX_EPOCH, cfg.LR_SCHEDULER = optim, 0.002, 50, schedule
    cfg.WARMUP_EPOCH = 0  # the successor alone: the warm-up is wrapped below
    optimizer = build_optimizer(params, cfg)
    for _ in range(2):  # a few steps, so the optimizer has state (momentum, Adam's moments)
        optimizer.zero_grad()
        sum(p.sum() for p in params.values()).backward()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Dassl's RAdam calls addcmul_ the old way
            optimizer.step()
    sched = warmup_scheduler(warmup, optimizer, build_lr_scheduler(optimizer, cfg))
    state = {"state_dict": dict(state_dict), "epoch": epoch, "optimizer": optimizer.state_dict(),
             "scheduler": sched.state_dict(), "val_result": None}
    save_checkpoint(state, folder, is_best=False, model_name="")
    return osp.join(folder, f"model.pth.tar-{epoch}")
