"""Run-time fixes that let other people's Dassl trainers run on the PyTorch this project pins.

Dassl's warm-up schedulers (``ConstantWarmupScheduler``, ``LinearWarmupScheduler``, built by
``dassl.optim.build_lr_scheduler`` whenever ``OPTIM.WARMUP_EPOCH`` > 0, as in every CoOp-family
config) pass ``verbose`` to ``torch.optim.lr_scheduler.LRScheduler.__init__``, an argument
PyTorch has since removed: building one raises ``TypeError``. ``patch_warmup_scheduler``
replaces their common ``__init__`` with one that leaves ``verbose`` out and does the rest as
Dassl does. Dassl's installed files are not changed; the fix applies in every process that
imports ``trainers`` (train.py does), only while PyTorch lacks the argument, and at most once.
This project's own trainers do not use these schedulers (trainers/run/schedule.py).
docs/add_a_trainer.md#other-dassl-trainers.
"""
from __future__ import annotations

import inspect

from torch.optim.lr_scheduler import LRScheduler


def torch_takes_verbose() -> bool:
    return "verbose" in inspect.signature(LRScheduler.__init__).parameters


def patch_warmup_scheduler() -> bool:
    """Make Dassl's warm-up schedulers build on this PyTorch; True when the fix is in place."""
    from dassl.optim import lr_scheduler

    base = lr_scheduler._BaseWarmupScheduler
    if torch_takes_verbose():
        return False  # an older PyTorch: Dassl's own __init__ works
    if getattr(base.__init__, "softcpt_compat", False):
        return True

    def __init__(self, optimizer, successor, warmup_epoch, last_epoch=-1, verbose=False):
        # Dassl's body, without passing ``verbose`` on (PyTorch no longer takes it).
        self.successor = successor
        self.warmup_epoch = warmup_epoch
        LRScheduler.__init__(self, optimizer, last_epoch)

    __init__.softcpt_compat = True
    base.__init__ = __init__
    return True
