"""``TRAINER.ZSCLIP``: zero-shot CLIP learns nothing, so its node has only the shared keys.

The trainer (trainers/zsclip.py) imports this module, which registers the keys;
``config`` imports it too, so ``extend_cfg`` has them without torch.
"""
from __future__ import annotations

from yacs.config import CfgNode as CN

from config import add_prompt_keys, register_config_hook


@register_config_hook
def add_zsclip_config(cfg: CN) -> None:
    """Add ``TRAINER.ZSCLIP`` (a config hook: ``config.extend_cfg`` calls it): PREC and the shared keys."""
    node = cfg.TRAINER.ZSCLIP = CN()
    add_prompt_keys(node)
