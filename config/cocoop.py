"""``TRAINER.COCOOP``: CoCoOp's keys and their checks.

The trainer (trainers/cocoop.py) imports this module, which registers the keys;
``config`` imports it too, so ``extend_cfg`` has them without torch.
"""
from __future__ import annotations

from yacs.config import CfgNode as CN

from config import (add_context_keys, add_prompt_keys, check_context_keys, check_prompt_keys,
                    register_config_check, register_config_hook)


@register_config_hook
def add_cocoop_config(cfg: CN) -> None:
    """Add ``TRAINER.COCOOP`` with CoCoOp's keys (a config hook: ``config.extend_cfg`` calls it)."""
    node = cfg.TRAINER.COCOOP = CN()
    add_prompt_keys(node)
    add_context_keys(node, 16)  # N_CTX, CTX_INIT (every task's context)


@register_config_check
def check_cocoop_values(cfg: CN) -> None:
    """``check_cocoop_cfg`` on the merged config (``config.check_values`` calls it before torch)."""
    check_cocoop_cfg(cfg.TRAINER.COCOOP)


def check_cocoop_cfg(node: CN) -> None:
    """Fail before building anything, naming the key and the allowed values."""
    check_prompt_keys(node, "TRAINER.COCOOP")  # PREC, STEPS_PER_BATCH, ...
    check_context_keys(node, "TRAINER.COCOOP")
