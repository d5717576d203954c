"""``TRAINER.COCOOP``: CoCoOp's keys and their checks.

The trainer (trainers/cocoop.py) imports this module, which registers the keys;
``config`` imports it too, so ``extend_cfg`` has them without torch.
"""
from __future__ import annotations

from yacs.config import CfgNode as CN

from config import add_prompt_keys, check_int, check_prompt_keys, register_config_hook


@register_config_hook
def add_cocoop_config(cfg: CN) -> None:
    """Add ``TRAINER.COCOOP`` with CoCoOp's keys (a config hook: ``config.extend_cfg`` calls it)."""
    node = cfg.TRAINER.COCOOP = CN()
    add_prompt_keys(node)
    # Number of context vectors n; ignored when CTX_INIT is given.
    node.N_CTX = 16
    # Words initialising every task's context, e.g. "a photo of a" (then n is
    # their token count); "" draws N(0, 0.02^2).
    node.CTX_INIT = ""


def check_cocoop_cfg(node: CN) -> None:
    """Fail before building anything, naming the key and the allowed values."""
    check_prompt_keys(node, "TRAINER.COCOOP")  # PREC, STEPS_PER_BATCH, ...
    if not node.CTX_INIT:  # with CTX_INIT, n is its token count
        check_int("TRAINER.COCOOP.N_CTX", node.N_CTX, 1)
