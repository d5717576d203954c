"""``TRAINER.LINEAR_PROBE``: the keys of linear-probe CLIP (no prompt, so none of the shared keys).

The trainer (trainers/linear_probe.py) imports this module, which registers the keys;
``config`` imports it too, so ``extend_cfg`` has them without torch.
"""
from __future__ import annotations

from yacs.config import CfgNode as CN

from config import register_config_hook


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
