"""``TRAINER.PROTONET``: the keys of ProtoNet on CLIP image features (nothing is learned).

The trainer (trainers/protonet.py) imports this module, which registers the keys;
``config`` imports it too, so ``extend_cfg`` has them without torch.
"""
from __future__ import annotations

from yacs.config import CfgNode as CN

from config import PRECISIONS, bad_value, register_config_hook


@register_config_hook
def add_protonet_config(cfg: CN) -> None:
    """Add ``TRAINER.PROTONET`` (a config hook: ``config.extend_cfg`` calls it)."""
    node = cfg.TRAINER.PROTONET = CN()
    # Precision of the frozen image encoder: fp16 (GPU), fp32 or amp.
    node.PREC = "fp16"


def check_protonet_cfg(node: CN) -> None:
    """Fail before building anything, naming the key and the allowed values."""
    if node.PREC not in PRECISIONS:
        raise bad_value("TRAINER.PROTONET.PREC", node.PREC, f"one of {list(PRECISIONS)}")
