"""``TRAINER.PROGRAD``: ProGrad's keys (CoOp per task, gradient projected against the
zero-shot teacher's) and their checks.

The trainer (trainers/prograd.py) imports this module, which registers the keys;
``config`` imports it too, so ``extend_cfg`` has them without torch.
"""
from __future__ import annotations

from yacs.config import CfgNode as CN

from config import add_prompt_keys, bad_value, check_bool, check_int, check_prompt_keys, register_config_hook


@register_config_hook
def add_prograd_config(cfg: CN) -> None:
    """Add ``TRAINER.PROGRAD`` (a config hook: ``config.extend_cfg`` calls it)."""
    node = cfg.TRAINER.PROGRAD = CN()
    add_prompt_keys(node)
    # Context vectors per task.
    node.N_CTX = 16
    # True: each task's context starts as zeros, its last vectors the token embeddings of
    # the task template's words before "{}" (the official CTX_INIT True);
    # False: N(0, 0.02^2) (docs/baselines.md#prograd).
    node.INIT_FROM_TEMPLATE = True
    # Temperature T of the distillation loss against the zero-shot teacher.
    node.T = 1.0
    # lambda of the projection g = g_ce - lambda * (g_ce . u) u when g_ce . g_kl < 0.
    node.LAMBDA = 1.0


def check_prograd_cfg(node: CN) -> None:
    """Fail before building anything, naming the key and the allowed values."""
    check_prompt_keys(node, "TRAINER.PROGRAD")  # PREC, STEPS_PER_BATCH, ...
    check_int("TRAINER.PROGRAD.N_CTX", node.N_CTX, 1)
    check_bool("TRAINER.PROGRAD.INIT_FROM_TEMPLATE", node.INIT_FROM_TEMPLATE)
    for key, low in (("T", "> 0"), ("LAMBDA", ">= 0")):
        value = node[key]
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and \
            (value > 0 if key == "T" else value >= 0)
        if not ok:
            raise bad_value(f"TRAINER.PROGRAD.{key}", value, f"a number {low} (docs/baselines.md#prograd)")
