"""``TRAINER.SOFTCPT``: SoftCPT's keys, its variant table and the checks of its values.

The trainer (trainers/softcpt.py) imports this module, which registers the keys;
``config`` imports it too, so ``extend_cfg`` has them without torch.
"""
from __future__ import annotations

import logging

from yacs.config import CfgNode as CN

from config import (ConfigError, POSITIONS, add_prompt_keys, bad_value, check_bool, check_int,
                    check_prompt_keys, register_config_check, register_config_hook,
                    register_resolver)

logger = logging.getLogger(__name__)

META_NETS = ("lin", "linmean", "lincls")
# The variant table of docs/method.md#variants: values VARIANT gives the keys left unset (None).
# Every variant also uses N_CTX 16, TASK_N_CTX 4 and META_NET lin, the defaults.
VARIANT_KEYS = ("CSC", "CLASS_N_CTX", "CLASS_CSC", "TASK_CSC")
VARIANTS = {
    "NATA": (False, 0, False, False),
    "NATS": (False, 0, False, True),
    "CATA": (True, 4, False, False),
    "CATS": (True, 4, False, True),
    "CSTA": (True, 4, True, False),
    "CSTS": (True, 4, True, True),
}


@register_config_hook
def add_softcpt_config(cfg: CN) -> None:
    """Add ``TRAINER.SOFTCPT`` (a config hook: ``config.extend_cfg`` calls it)."""
    node = cfg.TRAINER.SOFTCPT = CN()
    add_prompt_keys(node)
    # Shortcut for the variant table (docs/method.md#variants) (NATA, NATS, CATA, CATS, CSTA, CSTS):
    # fills CSC, CLASS_N_CTX, CLASS_CSC and TASK_CSC where they are left None.
    # A key set explicitly (file or command line) always beats the variant.
    node.VARIANT = "NATA"
    # Number of context vectors the meta network generates per prompt (N_CTX).
    node.N_CTX = 16
    # Words whose token count sets N_CTX (CoOp's convention). The context itself
    # is always G's output: G has no bias, so it cannot start from the words.
    node.CTX_INIT = ""
    # Where the class name goes in the class prompt: end, middle or front.
    node.CLASS_TOKEN_POSITION = "end"
    # Class-aware meta input (the "CA"/"CS" variants): G sees the class feature
    # g_tj too. None: from VARIANT.
    node.CSC = None
    # Task context P: number of vectors m (0: plain "<task name> ." prompt).
    node.TASK_N_CTX = 4
    # One P per task ("TS") instead of one shared by all tasks ("TA"). None: from VARIANT.
    node.TASK_CSC = None
    # Words initialising P (then m is their token count); "" draws N(0, 0.02^2).
    node.TASK_CTX_INIT = ""
    # Class context Q: number of vectors k (class-aware variants only). None: from VARIANT.
    node.CLASS_N_CTX = None
    # One Q per class ("CS") instead of one shared by all classes ("CA");
    # needs CSC True. None: from VARIANT.
    node.CLASS_CSC = None
    # Words initialising Q (then k is their token count); "" draws N(0, 0.02^2).
    node.CLASS_CTX_INIT = ""
    # Meta network G on the class-aware input: lin (concat(g_tj, f_t), 2D inputs),
    # linmean ((g_tj + f_t) / 2), lincls (g_tj alone). Not class-aware: f_t W.
    node.META_NET = "lin"
    # Class sampling rate r in [0, 1]: per task, train on the batch's classes plus
    # ceil(r * other classes) random ones. 0 = all classes. Evaluation uses all.
    node.CLS_SAMPLE_RATE = 0.0
    # Keep the class context Q at its initial value.
    node.FREEZE_CLS_PROMPT = False


@register_resolver("SoftCPT")
def resolve_variant(cfg: CN) -> CN:
    """A copy of ``cfg`` whose variant keys left None take VARIANT's values.

    yacs records no merge order, so "explicit wins" is decided by value: the
    variant-dependent keys default to None, and any value a user gives (in a
    file or on the command line, before or after VARIANT) is kept.
    """
    node = cfg.TRAINER.SOFTCPT
    if node.VARIANT not in VARIANTS:
        raise bad_value("TRAINER.SOFTCPT.VARIANT", node.VARIANT,
                        f"{sorted(VARIANTS)} (docs/method.md#variants)")
    out = cfg.clone()
    out.defrost()
    for key, value in zip(VARIANT_KEYS, VARIANTS[node.VARIANT]):
        if out.TRAINER.SOFTCPT[key] is None:
            out.TRAINER.SOFTCPT[key] = value
    if cfg.is_frozen():
        out.freeze()
    return out


@register_config_check
def check_softcpt_values(cfg: CN) -> None:
    """``check_softcpt_cfg`` on the merged config, variant resolved (``config.check_values``
    calls it before torch; the trainer checks again, and warns, when it is built)."""
    check_softcpt_cfg(resolve_variant(cfg).TRAINER.SOFTCPT, warn=False)


def check_softcpt_cfg(node: CN, warn: bool = True) -> None:
    """Fail before training, naming the key, on a value the method does not define;
    ``warn``: also log the keys the variant ignores."""
    def bad(key, allowed):
        return bad_value(f"TRAINER.SOFTCPT.{key}", node[key], allowed)

    check_prompt_keys(node, "TRAINER.SOFTCPT")  # PREC, STEPS_PER_BATCH, ...
    if node.VARIANT not in VARIANTS:
        raise bad("VARIANT", f"{sorted(VARIANTS)} (docs/method.md#variants)")
    for key in ("CSC", "CLASS_CSC", "TASK_CSC", "FREEZE_CLS_PROMPT"):
        check_bool(f"TRAINER.SOFTCPT.{key}", node[key])
    for key, low in (("N_CTX", 1), ("TASK_N_CTX", 0), ("CLASS_N_CTX", 0)):
        check_int(f"TRAINER.SOFTCPT.{key}", node[key], low)
    if node.CLASS_TOKEN_POSITION not in POSITIONS:
        raise bad("CLASS_TOKEN_POSITION", list(POSITIONS))
    if node.META_NET not in META_NETS:
        raise bad("META_NET", list(META_NETS))
    rate = node.CLS_SAMPLE_RATE
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        raise bad("CLS_SAMPLE_RATE", "a number in [0, 1] (0 = off)")
    if node.CLASS_CSC and not node.CSC:
        raise ConfigError("TRAINER.SOFTCPT.CLASS_CSC True needs TRAINER.SOFTCPT.CSC True: class "
                          "context Q only feeds the class-aware meta input (variants CSTA/CSTS).")
    if node.META_NET != "lin" and not node.CSC:
        raise ConfigError(f"TRAINER.SOFTCPT.META_NET {node.META_NET!r} combines class and task "
                          "features and needs TRAINER.SOFTCPT.CSC True; use 'lin' otherwise.")
    if warn and not node.CSC and (node.CLASS_CTX_INIT or node.FREEZE_CLS_PROMPT):
        logger.warning("CLASS_CTX_INIT / FREEZE_CLS_PROMPT are ignored: CSC is False, so the "
                       "model has no class context.")
