"""``TRAINER.PLOT``: the keys of PLOT per task (trainers/plot.py) and their checks.

The trainer imports this module, which registers the keys; ``config`` imports it too,
so ``extend_cfg`` has them without torch. What each key changes: docs/plot.md#keys.
"""
from __future__ import annotations

from yacs.config import CfgNode as CN

from config import add_prompt_keys, bad_value, check_int, check_prompt_keys, register_config_hook

NAN_PLANS = ("error", "uniform")


@register_config_hook
def add_plot_config(cfg: CN) -> None:
    """Add ``TRAINER.PLOT`` with PLOT's keys (a config hook: ``config.extend_cfg`` calls it)."""
    node = cfg.TRAINER.PLOT = CN()
    add_prompt_keys(node)
    # Context vectors per prompt, drawn from N(0, 0.02^2). 16 is the official PLOT's;
    # the SoftCPT paper's parameter counts for General-10 suggest 8 there
    # (docs/plot.md#context-length-on-general-10).
    node.N_CTX = 16
    # Prompts per task (PLOT's N), each with its own context.
    node.N_PROMPTS = 4
    # Sinkhorn: entropic regularisation (K = exp(-cost / OT_EPS)), at most OT_MAX_ITER
    # iterations, stopping once the mean absolute change of the row scaling is < OT_THRESH.
    node.OT_EPS = 0.1
    node.OT_MAX_ITER = 100
    node.OT_THRESH = 0.01
    # A transport plan with NaN: "error" stops the run naming the batch and task;
    # "uniform" uses the uniform plan 1/(M N) for those images and classes, with a
    # warning (docs/plot.md#a-plan-with-nan).
    node.NAN_PLAN = "error"


def check_plot_cfg(node: CN) -> None:
    """Fail before building anything, naming the key and the allowed values."""
    check_prompt_keys(node, "TRAINER.PLOT")  # PREC, STEPS_PER_BATCH, ...
    check_int("TRAINER.PLOT.N_CTX", node.N_CTX, 1)
    check_int("TRAINER.PLOT.N_PROMPTS", node.N_PROMPTS, 1)
    check_int("TRAINER.PLOT.OT_MAX_ITER", node.OT_MAX_ITER, 1)
    for key in ("OT_EPS", "OT_THRESH"):
        value = node[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise bad_value(f"TRAINER.PLOT.{key}", value, "a number > 0 (docs/plot.md#keys)")
    if node.NAN_PLAN not in NAN_PLANS:
        raise bad_value("TRAINER.PLOT.NAN_PLAN", node.NAN_PLAN,
                        f"{list(NAN_PLANS)} (docs/plot.md#a-plan-with-nan)")
