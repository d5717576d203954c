"""What the official SoftCPT code calls things, and what they are called here.

The official code (its trainers ``MTCoOp`` and ``MTCoOpHard``, config nodes
``TRAINER.MTCOOP`` / ``TRAINER.MTCOOPH``, its positional sweep scripts and its
extra keys) is translated in one place, so that ``train.py``, the config merge and
the sweep scripts answer its users with the equivalent here instead of a bare
"unknown" (docs/from_the_official_code.md). Torch-free, like the rest of config/.

    python -m config.official softcpt SCRIPT BENCH CFG SHOTS CLASS_N_CTX CLASS_CSC TASK_N_CTX \
        TASK_CSC N_CTX CSC PG_TYPE PG_RATIO [CLS_SAMPLE_RATE]
    python -m config.official coop SCRIPT BENCH CFG SHOTS N_CTX CSC TSC

print the equivalent command of our sweep script SCRIPT and exit 2 (nothing is run). The
sweep scripts call it (scripts/common.sh, ``official_form``) when their third argument is
a number (a shot count), which none of their own forms has; with a third argument that is
not a number, ``softcpt`` only checks it is a variant name (exit 0 when it is).
"""
from __future__ import annotations

import re
import shlex
import sys
from typing import Optional, Sequence

DOC = "docs/from_the_official_code.md"

TRAINERS = {
    "MTCoOp": "SoftCPT (--trainer SoftCPT, configs/trainers/SoftCPT/; the variant is "
              "TRAINER.SOFTCPT.VARIANT)",
    "MTCoOpHard": "CoOp (--trainer CoOp, configs/trainers/CoOp/; its TSC is TRAINER.COOP.SHARING: "
                  "TSC True = SHARING task (CoOp-CA), TSC False = SHARING all (CoOp-MT))",
}

_FIXED_END = ("not a key here: the {what} name always follows its context, as 'end' (docs/method.md); "
              "drop it")
_BOOL = {"True": True, "False": False, "true": True, "false": False}
# Official key -> its translation (a key here, or what to do instead).
KEYS = {
    "TRAINER.MTCOOP.PREC": "TRAINER.SOFTCPT.PREC (to reproduce the official fp16 training: "
                           "TRAINER.SOFTCPT.PARAM_DTYPE fp16 and STEPS_PER_BATCH 3 or 4)",
    "TRAINER.MTCOOP.CLASS_N_CTX": "TRAINER.SOFTCPT.CLASS_N_CTX",
    "TRAINER.MTCOOP.CLASS_CSC": "TRAINER.SOFTCPT.CLASS_CSC",
    "TRAINER.MTCOOP.CLASS_CTX_INIT": "TRAINER.SOFTCPT.CLASS_CTX_INIT",
    "TRAINER.MTCOOP.CLASS_TOKEN_POSITION": _FIXED_END.format(what="class"),
    "TRAINER.MTCOOP.TASK_N_CTX": "TRAINER.SOFTCPT.TASK_N_CTX",
    "TRAINER.MTCOOP.TASK_CTX_INIT": "TRAINER.SOFTCPT.TASK_CTX_INIT",
    "TRAINER.MTCOOP.TASK_CSC": "TRAINER.SOFTCPT.TASK_CSC",
    "TRAINER.MTCOOP.TASK_TOKEN_POSITION": _FIXED_END.format(what="task"),
    "TRAINER.MTCOOP.N_CTX": "TRAINER.SOFTCPT.N_CTX",
    "TRAINER.MTCOOP.CTX_INIT": "TRAINER.SOFTCPT.CTX_INIT",
    "TRAINER.MTCOOP.CSC": "TRAINER.SOFTCPT.CSC",
    "TRAINER.MTCOOP.TOKEN_POSITION": "TRAINER.SOFTCPT.CLASS_TOKEN_POSITION (where the class name "
                                     "goes in the class prompt)",
    "TRAINER.MTCOOP.PG_TYPE": "TRAINER.SOFTCPT.META_NET (same values: lin, linmean, lincls)",
    "TRAINER.MTCOOP.PG_RATIO": "not a key here: every published command uses 1, which is what "
                               "the meta network does here; drop it",
    "TRAINER.MTCOOP.CLS_SAMPLE_RATE": "TRAINER.SOFTCPT.CLS_SAMPLE_RATE",
    "TRAINER.MTCOOP.FREEZE_CLS_PROMPT": "TRAINER.SOFTCPT.FREEZE_CLS_PROMPT",
    "TRAINER.MTCOOPH.PREC": "TRAINER.COOP.PREC",
    "TRAINER.MTCOOPH.N_CTX": "TRAINER.COOP.N_CTX",
    "TRAINER.MTCOOPH.CSC": "TRAINER.COOP.CSC",
    "TRAINER.MTCOOPH.CTX_INIT": "TRAINER.COOP.CTX_INIT",
    "TRAINER.MTCOOPH.TOKEN_POSITION": "TRAINER.COOP.CLASS_TOKEN_POSITION",
    "TRAINER.MTCOOPH.TSC": "TRAINER.COOP.SHARING (TSC True = 'task', CoOp-CA; TSC False = 'all', "
                           "CoOp-MT)",
    "TEST.PER_TASK_RESULT": "not needed here (every evaluation prints and records each task's "
                            "result, docs/benchmarks.md#log-lines): drop it",
    "TEST.EVALUATOR.ClassificationMT": "here the evaluator is MultiTaskClassification, the default: drop the key",
}
# The official node names, for a key under them that the table above lacks.
NODES = {"TRAINER.MTCOOP": "TRAINER.SOFTCPT", "TRAINER.MTCOOPH": "TRAINER.COOP"}


def translate_key(key: str, value: object = None) -> Optional[str]:
    """``"<key> is the official SoftCPT code's; here: ..."``, or None for a key it never had."""
    found = KEYS.get(key)
    if found is None and key == "TEST.EVALUATOR" and value == "ClassificationMT":
        found = KEYS["TEST.EVALUATOR.ClassificationMT"]
    if found is None:
        node = key.rsplit(".", 1)[0] if "." in key else key
        if node in NODES or key in NODES:
            found = f"a key under {NODES.get(node) or NODES[key]} (`python train.py --help-config`)"
    if found is None:
        return None
    shown = f"{key} {value}" if key == "TEST.EVALUATOR" else key
    if found.startswith(("TRAINER.", "TEST.", "a key")):
        found = f"here it is {found}"
    return f"{shown} is the official SoftCPT code's; {found} ({DOC}#config-keys)"


def translate_trainer(name: str) -> Optional[str]:
    """The message for an official trainer name, or None."""
    if name not in TRAINERS:
        return None
    return f"--trainer {name} is the official SoftCPT code's; here it is {TRAINERS[name]} ({DOC}#trainers)"


def flatten(data: dict, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, value) of every leaf of a config file's mapping."""
    out = []
    for key, value in data.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.extend(flatten(value, full + "."))
        else:
            out.append((full, value))
    return out


def official_file_keys(data: dict) -> list[str]:
    """The translation of every official key in a config file's mapping (empty: none)."""
    out = []
    for key, value in flatten(data):
        if key == "TRAINER.NAME" and isinstance(value, str) and translate_trainer(value):
            out.append(translate_trainer(value))
            continue
        found = translate_key(key, value)
        if found:
            out.append(found)
    return out


# ---------------------------------------------------------------- the official code's run folders
# Its run folders: <BENCH>/MTCoOp/<CFG>_<K>shots/cnctx<k>_ccsc<b>_tnctx<m>_tcsc<b>_nctx<n>_csc<b>_type<G>
# _ratio<r>.../seed<S>; the CoOp baselines under MTCoOpHard with nctx, csc and tsc.
_TAG_WORD = re.compile(r"(?:^|_)(?P<key>cnctx|ccsc|tnctx|tcsc|nctx|csc|tsc|type)(?P<value>True|False|\d+|[a-z]+)"
                       r"(?=_|$)")
OFFICIAL_MARK = "[official code]"


def _tag_values(tag: str) -> dict:
    return {m.group("key"): m.group("value") for m in _TAG_WORD.finditer(tag)}


def official_method(method: str) -> Optional[str]:
    """The table's label for a run folder of the official code (``MTCoOp/<tag>``), e.g.
    ``SoftCPT/NATA [official code]``; None for any other method or a tag it cannot read."""
    trainer, _, tag = method.partition("/")
    values = _tag_values(tag)
    try:
        if trainer == "MTCoOp":
            from config.softcpt import VARIANT_KEYS, VARIANTS

            csc = _BOOL[values["csc"]]
            row = {"CSC": csc, "CLASS_N_CTX": int(values["cnctx"]) if csc else 0,
                   "CLASS_CSC": csc and _BOOL[values["ccsc"]], "TASK_CSC": _BOOL[values["tcsc"]]}
            variant = next(n for n, v in VARIANTS.items() if v == tuple(row[k] for k in VARIANT_KEYS))
            extra = [f"{name}={values[key]}" for key, name, default in
                     (("tnctx", "TASK_N_CTX", "4"), ("nctx", "N_CTX", "16"), ("type", "META_NET", "lin"))
                     if values.get(key, default) != default]
            return " ".join([f"SoftCPT/{variant}", *extra, OFFICIAL_MARK])
        if trainer == "MTCoOpHard":
            variant = "CS" if _BOOL[values["csc"]] else ("CA" if _BOOL[values["tsc"]] else "MT")
            extra = [f"N_CTX={values['nctx']}"] if values.get("nctx", "16") != "16" else []
            return " ".join([f"CoOp/{variant}", *extra, OFFICIAL_MARK])
    except (KeyError, StopIteration):
        return None
    return None


# ---------------------------------------------------------------- positional sweep commands
SOFTCPT_ARGS = ("CLASS_N_CTX", "CLASS_CSC", "TASK_N_CTX", "TASK_CSC", "N_CTX", "CSC", "PG_TYPE",
                "PG_RATIO")
COOP_ARGS = ("N_CTX", "CSC", "TSC")


class NotOfficial(ValueError):
    """Arguments that are not the official form: the message says what is wrong."""


def _bool(name: str, text: str) -> bool:
    if text not in _BOOL:
        raise NotOfficial(f"{name} is {text!r}; the official scripts take True or False")
    return _BOOL[text]


def _int(name: str, text: str) -> int:
    if not re.fullmatch(r"\d+", text):
        raise NotOfficial(f"{name} is {text!r}; the official scripts take a whole number")
    return int(text)


def _command(script: str, bench: str, cfg: str, shots: int, variant: str, opts: Sequence[str]) -> str:
    words = ["SHOTS=" + str(shots), "bash", script, bench, cfg, variant, *opts]
    return " ".join(shlex.quote(w) if not w.startswith("SHOTS=") else w for w in words)


def softcpt_command(script: str, args: Sequence[str]) -> str:
    """Our command for ``main_mtcoop.sh`` / ``main_mtcoop_cls_sample.sh``'s arguments."""
    from config.softcpt import META_NETS, VARIANT_KEYS, VARIANTS  # noqa: I001  (a sibling leaf)

    if len(args) not in (11, 12):
        raise NotOfficial(f"the official main_mtcoop.sh takes 11 arguments (12 with class sampling), "
                          f"got {len(args)}")
    bench, cfg, shots = args[0], args[1], _int("SHOTS", args[2])
    given = dict(zip(SOFTCPT_ARGS, args[3:11]))
    values = {"CSC": _bool("CSC", given["CSC"]), "CLASS_N_CTX": _int("CLASS_N_CTX", given["CLASS_N_CTX"]),
              "CLASS_CSC": _bool("CLASS_CSC", given["CLASS_CSC"]),
              "TASK_CSC": _bool("TASK_CSC", given["TASK_CSC"])}
    if not values["CSC"]:  # not class-aware: the class context does not exist, whatever was passed
        values["CLASS_N_CTX"], values["CLASS_CSC"] = 0, False
    key = tuple(values[k] for k in VARIANT_KEYS)
    variant = next((name for name, row in VARIANTS.items() if row == key), None)
    opts: list[str] = []
    if variant is None:  # no named variant: the variant closest in CSC / TASK_CSC, keys explicit
        variant = "CATA" if values["CSC"] else "NATA"
        for k in VARIANT_KEYS:
            opts += [f"TRAINER.SOFTCPT.{k}", str(values[k])]
    for name, default in (("TASK_N_CTX", 4), ("N_CTX", 16)):
        if _int(name, given[name]) != default:
            opts += [f"TRAINER.SOFTCPT.{name}", str(int(given[name]))]
    if given["PG_TYPE"] not in META_NETS:
        raise NotOfficial(f"PG_TYPE is {given['PG_TYPE']!r}; the official values are {list(META_NETS)}")
    if given["PG_TYPE"] != "lin":
        opts += ["TRAINER.SOFTCPT.META_NET", given["PG_TYPE"]]
    if len(args) == 12 and float(args[11]) != 0.0:
        opts += ["TRAINER.SOFTCPT.CLS_SAMPLE_RATE", args[11]]
    return _command(script, bench, cfg, shots, variant, opts)


def coop_command(script: str, args: Sequence[str]) -> str:
    """Our command for ``main_mtcoop_hard.sh BENCH CFG SHOTS N_CTX CSC TSC``."""
    if len(args) != 6:
        raise NotOfficial(f"the official main_mtcoop_hard.sh takes 6 arguments, got {len(args)}")
    bench, cfg, shots = args[0], args[1], _int("SHOTS", args[2])
    n_ctx, csc, tsc = _int("N_CTX", args[3]), _bool("CSC", args[4]), _bool("TSC", args[5])
    if csc:
        variant = "CS"
    else:
        variant = "CA" if tsc else "MT"
    opts = [] if n_ctx == 16 else ["TRAINER.COOP.N_CTX", str(n_ctx)]
    return _command(script, bench, cfg, shots, variant, opts)


COMMANDS = {"softcpt": (softcpt_command, "main_mtcoop.sh"), "coop": (coop_command, "main_mtcoop_hard.sh")}


def check_variant(variant: str) -> int:
    """0 for a SoftCPT variant name; else the choices on stderr and 2."""
    from config.softcpt import VARIANTS

    if variant in VARIANTS:
        return 0
    print(f"[sweep] error: VARIANT is {variant!r}; allowed: {', '.join(VARIANTS)} "
          "(docs/method.md#variants). No run was started.", file=sys.stderr)
    return 2


def main(argv: Sequence[str]) -> int:
    """Answer a sweep script's arguments: 0 when they are its own form, else 2 with the message."""
    if len(argv) < 2 or argv[0] not in COMMANDS:
        print(f"usage: python -m config.official {{{','.join(COMMANDS)}}} SCRIPT ARGS...", file=sys.stderr)
        return 2
    (build, official), script, args = COMMANDS[argv[0]], argv[1], argv[2:]
    if len(args) < 3 or not re.fullmatch(r"\d+", args[2]):
        return check_variant(args[2]) if argv[0] == "softcpt" and len(args) >= 3 else 0
    try:
        command = build(script, args)
    except NotOfficial as err:
        print(f"[sweep] error: the third argument is a number, as in the official SoftCPT code's "
              f"{official} (BENCH CFG SHOTS ...), but {err}. See {DOC}#sweep-scripts. No run was "
              "started.", file=sys.stderr)
        return 2
    print(f"[sweep] these are the arguments of the official SoftCPT code's {official} (BENCH CFG "
          f"SHOTS ...); nothing was run. The same runs here (seeds 1 2 3, as it loops):\n"
          f"    {command}\n[sweep] ({DOC}#sweep-scripts)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
