"""``TRAINER.COOP``: the keys of the CoOp baselines (CoOp-CA, CoOp-CS, CoOp-MT) and their checks.

The trainer (trainers/coop.py) imports this module, which registers the keys;
``config`` imports it too, so ``extend_cfg`` has them without torch.
"""
from __future__ import annotations

from yacs.config import CfgNode as CN

from config import (ConfigError, POSITIONS, add_context_keys, add_prompt_keys, bad_value, check_bool,
                    check_context_keys, check_prompt_keys, register_config_check, register_config_hook)

SHARINGS = ("task", "all")


@register_config_hook
def add_coop_config(cfg: CN) -> None:
    """Add ``TRAINER.COOP`` with CoOp's keys (a config hook: ``config.extend_cfg`` calls it)."""
    node = cfg.TRAINER.COOP = CN()
    add_prompt_keys(node)
    add_context_keys(node, 16)  # N_CTX, CTX_INIT
    # Class-specific context: one context per class (CoOp-CS). Needs SHARING "task".
    node.CSC = False
    # Where the class name goes: end, middle or front.
    node.CLASS_TOKEN_POSITION = "end"
    # Who shares a class-agnostic context: "task" (one per task, CoOp-CA) or
    # "all" (one for every class of every task, CoOp-MT, hard sharing).
    node.SHARING = "task"


@register_config_check
def check_coop_values(cfg: CN) -> None:
    """``check_coop_cfg`` on the merged config (``config.check_values`` calls it before torch)."""
    check_coop_cfg(cfg.TRAINER.COOP)


def check_coop_cfg(node: CN) -> None:
    """Fail before building anything, naming the key and the allowed values."""
    check_prompt_keys(node, "TRAINER.COOP")  # PREC, STEPS_PER_BATCH, ...
    if node.SHARING not in SHARINGS:
        raise bad_value("TRAINER.COOP.SHARING", node.SHARING,
                        f"{list(SHARINGS)} (task: CoOp-CA/CS, all: CoOp-MT)")
    check_bool("TRAINER.COOP.CSC", node.CSC)
    if node.CSC and node.SHARING == "all":
        raise ConfigError("TRAINER.COOP.CSC True gives every class its own context, which "
                          "TRAINER.COOP.SHARING 'all' cannot share: use SHARING 'task' with CSC True "
                          "(CoOp-CS) or CSC False with SHARING 'all' (CoOp-MT).")
    if node.CLASS_TOKEN_POSITION not in POSITIONS:
        raise bad_value("TRAINER.COOP.CLASS_TOKEN_POSITION", node.CLASS_TOKEN_POSITION,
                        f"{list(POSITIONS)}")
    check_context_keys(node, "TRAINER.COOP")
