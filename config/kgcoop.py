"""``TRAINER.KGCOOP``: KgCoOp's keys (CoOp per task plus the knowledge-guided term) and their checks.

The trainer (trainers/kgcoop.py) imports this module, which registers the keys;
``config`` imports it too, so ``extend_cfg`` has them without torch.
"""
from __future__ import annotations

from yacs.config import CfgNode as CN

from config import (add_context_keys, add_prompt_keys, bad_value, check_context_keys, check_prompt_keys,
                    register_config_hook)


@register_config_hook
def add_kgcoop_config(cfg: CN) -> None:
    """Add ``TRAINER.KGCOOP`` (a config hook: ``config.extend_cfg`` calls it)."""
    node = cfg.TRAINER.KGCOOP = CN()
    add_prompt_keys(node)
    add_context_keys(node, 4)  # N_CTX, CTX_INIT (one context per task)
    # The official code starts every context from "a photo of a" (4 vectors).
    node.CTX_INIT = "a photo of a"
    # Weight W of the knowledge-guided term W * (1 - mean_c cos(h_c, z_c)), z_c the
    # zero-shot text feature of class c (docs/baselines.md#kgcoop). 8.0: the official scripts.
    node.W = 8.0


def check_kgcoop_cfg(node: CN) -> None:
    """Fail before building anything, naming the key and the allowed values."""
    check_prompt_keys(node, "TRAINER.KGCOOP")  # PREC, STEPS_PER_BATCH, ...
    check_context_keys(node, "TRAINER.KGCOOP")
    w = node.W
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0:
        raise bad_value("TRAINER.KGCOOP.W", w, "a number >= 0 (docs/baselines.md#kgcoop)")
