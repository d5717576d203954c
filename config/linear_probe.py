"""``TRAINER.LINEAR_PROBE``: the keys of linear-probe CLIP (no prompt, so none of the shared keys).

The trainer (trainers/linear_probe.py) imports this module, which registers the keys;
``config`` imports it too, so ``extend_cfg`` has them without torch.
"""
from __future__ import annotations

from yacs.config import CfgNode as CN

from config import PRECISIONS, bad_value, check_choice, check_int, register_config_check, register_config_hook


@register_config_hook
def add_linear_probe_config(cfg: CN) -> None:
    """Add ``TRAINER.LINEAR_PROBE`` (a config hook: ``config.extend_cfg`` calls it)."""
    node = cfg.TRAINER.LINEAR_PROBE = CN()
    # Precision of the frozen image encoder: fp16 (GPU), fp32 or amp.
    node.PREC = "fp16"
    # Inverse regularisation strengths C tried per task on the validation split.
    node.C_GRID = [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0]
    # Iteration limit of scikit-learn's lbfgs solver.
    node.MAX_ITER = 1000


@register_config_check
def check_linear_probe_values(cfg: CN) -> None:
    """Fail before building anything, naming the key and the allowed values."""
    node = cfg.TRAINER.LINEAR_PROBE
    check_choice("TRAINER.LINEAR_PROBE.PREC", node.PREC, PRECISIONS)
    grid = node.C_GRID
    if not isinstance(grid, (list, tuple)) or not grid or any(
            isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c < float("inf") for c in grid):
        raise bad_value("TRAINER.LINEAR_PROBE.C_GRID", grid, "a non-empty list of finite numbers > 0 "
                        "(inverse regularisation strengths)")
    check_int("TRAINER.LINEAR_PROBE.MAX_ITER", node.MAX_ITER, 1)
