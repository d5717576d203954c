"""The nearest vocabulary words of every learned context vector of a run.

    python scripts/interpret_prompt.py RUN_DIR [--epoch N] [--topk K] [--backbone NAME] [--csv PATH]
                                       [--per-class]

RUN_DIR is a training run's output folder (it holds ``prompt_learner/``), or a
checkpoint file given directly, such as one written by CoOp's own code
(``output/.../prompt_learner/model.pth.tar-50``: its ``state_dict`` with a
``ctx`` tensor). For each context vector, the ``--topk`` token embeddings
nearest to it by Euclidean distance, as CoOp's ``interpret_prompt.py`` reports
them, in the token-embedding space of the run's backbone (recorded in its
``log.txt``; ``--backbone`` overrides it):

* CoOp: the context shared by all classes, one per task, or one per class;
* CoCoOp: each task's context (the image-conditioned bias is not a word);
* SoftCPT: the task context (shared or per task), the class context where the
  variant has one, and the contexts the meta network generates for every task
  (for the class-aware variants: each task's mean over its classes, and with
  ``--per-class`` every class's own). Those need the run's
  ``generated_contexts.pt``, which runs of this version write at evaluation.

Prints the words as text and writes every row to a CSV (``--csv``; default
``<RUN_DIR>/nearest_words_epoch<N>.csv``). docs/prompts.md#nearest-words
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import re
import sys
from typing import Optional

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

import torch  # noqa: E402

from trainers.parts import interpret  # noqa: E402
from trainers.run.atomic import atomic_write  # noqa: E402

DOCS = "docs/prompts.md#nearest-words"
CONFIG_KEY = re.compile(r"^( *)([A-Za-z0-9_]+):(?: (.*))?$")


class InterpretError(ValueError):
    """Something the user can fix: the message says what."""


# ------------------------------------------------------------------ the run's record
def recorded_config(run_dir: str) -> dict[str, str]:
    """Dotted config keys -> printed values from the first ``** Config **`` block of the run's
    newest ``log.txt*`` (this project's and CoOp's train.py print the same dump)."""
    logs = sorted((osp.join(run_dir, f) for f in os.listdir(run_dir) if f.startswith("log.txt")),
                  key=osp.getmtime, reverse=True) if osp.isdir(run_dir) else []
    for log in logs:
        found = _config_block(log)
        if found:
            return found
    return {}


def _config_block(path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    stack: list[str] = []
    inside = False
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not inside:
                inside = line.strip() == "** Config **"
                continue
            if line.startswith("*") and not out:  # the row of stars under the title
                continue
            m = CONFIG_KEY.match(line)
            if not m:
                if out and line and not line[0].isspace():
                    break  # the dump ended ("Collecting env info ...")
                continue  # blank lines, the rest of a value printed on several lines
            depth = len(m.group(1)) // 2
            stack[depth:] = [m.group(2)]
            if m.group(3) is not None:
                out[".".join(stack)] = m.group(3).strip()
    return out


def find_checkpoint(target: str, epoch: Optional[int]) -> tuple[str, str]:
    """(checkpoint path, run folder) for a run folder or a checkpoint file."""
    from trainers.parts.base import HEAD_NAME
    from trainers.run import checkpoint as ckpt_io
    if osp.isfile(target):
        folder = osp.dirname(osp.abspath(target))
        run_dir = osp.dirname(folder) if osp.basename(folder) == HEAD_NAME else folder
        return target, run_dir
    if not osp.isdir(target):
        raise InterpretError(f"{target} is neither a run folder nor a checkpoint file")
    folder = osp.join(target, HEAD_NAME)
    if not osp.isdir(folder):
        trained = [f for f in os.listdir(target) if f == interpret.GENERATED_FILE]
        hint = (" (an evaluation-only folder: give the folder of the training run it loaded)"
                if trained or osp.isfile(osp.join(target, "results.json")) else "")
        raise InterpretError(f"{target} holds no {HEAD_NAME}/ folder of checkpoints{hint}; "
                             f"give a training run's output folder or a checkpoint file ({DOCS})")
    try:
        return ckpt_io.path_to_load(folder, epoch), target
    except ckpt_io.CheckpointError as err:
        raise InterpretError(str(err)) from None


def read_state(path: str) -> dict:
    """The checkpoint as this project, CoOp or Dassl wrote it (``trainers.run.checkpoint.load_file``:
    a warm-up scheduler's pickled successor is read, no other class)."""
    from trainers.run import checkpoint as ckpt_io
    try:
        ckpt = ckpt_io.load_file(path)
    except ckpt_io.UnexpectedClassError as err:
        raise InterpretError(str(err)) from None
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise InterpretError(f"cannot read {path} ({type(err).__name__}): the file is truncated or "
                             "not a checkpoint") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise InterpretError(f"{path} is not a prompt checkpoint (no state_dict)")
    return ckpt


# ------------------------------------------------------------------ what was learned
def owners(n: int, ckpt: dict, per: str) -> list[str]:
    names = ckpt.get("task_keys") if per == "task" else ckpt.get("classnames")
    if names and len(names) == n:
        return list(names)
    return [f"{per} {i}" for i in range(n)]


def learned_groups(ckpt: dict, trainer: str) -> list[tuple[str, str, torch.Tensor]]:
    """(kind, owner, vectors (n, W)) of every learned context in the checkpoint."""
    state = ckpt["state_dict"]
    groups: list[tuple[str, str, torch.Tensor]] = []

    def add(key: str, kind: str, per: str) -> None:
        value = state.get(key)
        if value is None or not torch.is_tensor(value):
            return
        value = value.float()
        if value.dim() == 2:
            groups.append((f"{kind} (shared)", "", value))
            return
        for owner, vectors in zip(owners(len(value), ckpt, per), value):
            groups.append((f"{kind} (per {per})", owner, vectors))

    if trainer == "SoftCPT":
        add("task_ctx", "task context", "task")
        add("class_ctx", "class context", "class")
        return groups
    classes, tasks = ckpt.get("classnames") or [], ckpt.get("task_keys") or []
    ctx = state.get("ctx")
    per = "task"
    if ctx is not None and ctx.dim() == 3 and trainer != "CoCoOp":
        # CoOp: per class (CSC) when there is one context per class and not one per task
        per = "class" if (not tasks or len(ctx) != len(tasks)) else "task"
    add("ctx", "context", per)
    return groups


def generated_groups(run_dir: str, ckpt: dict, clip_model, per_class: bool,
                     notes: list[str]) -> list[tuple[str, str, torch.Tensor]]:
    """SoftCPT's generated contexts at the checkpoint's epoch (rebuilt from generated_contexts.pt)."""
    path = osp.join(run_dir, interpret.GENERATED_FILE)
    if not osp.isfile(path):
        notes.append(f"no {interpret.GENERATED_FILE} in {run_dir} (written at evaluation by this "
                     "version): the generated contexts are not shown")
        return []
    try:
        saved = interpret.load_generated(path)
    except ValueError as err:  # the learned contexts are still shown
        notes.append(f"{err}; the generated contexts are not shown")
        return []
    try:
        per_task, per_cls = regenerate(saved, ckpt, clip_model)
    except Exception as err:  # noqa: BLE001 - fall back to the saved tensors, saying so
        if saved.get("epoch") != ckpt.get("epoch"):
            notes.append(f"the generated contexts could not be rebuilt for epoch {ckpt.get('epoch')} "
                         f"({type(err).__name__}: {err}); not shown")
            return []
        notes.append(f"generated contexts read from {path} ({type(err).__name__} rebuilding them)")
        per_task, per_cls = saved["contexts"], None
    keys, names = saved["task_keys"], saved["task_names"]
    groups = []
    class_aware = per_cls is not None or _class_aware(saved)
    kind = "generated context (mean over the task's classes)" if class_aware else "generated context"
    for key, name, vectors in zip(keys, names, per_task):
        groups.append((kind, f"{key}: {name}" if key != name else key, vectors))
    if per_class and per_cls is not None:
        flat = [c for names_t in saved["classnames"] for c in names_t]
        for cname, vectors in zip(flat, per_cls):
            groups.append(("generated context (per class)", cname, vectors))
    return groups


def _class_aware(saved: dict) -> bool:
    """Whether the saved run's variant generates a context per class (TRAINER.SOFTCPT.CSC)."""
    import yaml
    try:
        return bool(yaml.safe_load(saved.get("config") or "")["TRAINER"]["SOFTCPT"]["CSC"])
    except (yaml.YAMLError, KeyError, TypeError):
        return False


def regenerate(saved: dict, ckpt: dict, clip_model) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Rebuild the run's SoftCPT head from its config and tasks, load the checkpoint, run G."""
    from dassl.config import get_cfg_default
    from yacs.config import CfgNode as CN

    from datasets.task_info import TaskInfo
    from config import extend_cfg
    from trainers.parts.text_encoder import TextEncoder
    from trainers.softcpt import SoftCPTHead

    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.merge_from_other_cfg(CN.load_cfg(saved["config"]))
    info = TaskInfo(tuple(saved["task_keys"]), tuple(saved["task_names"]),
                    tuple(tuple(c) for c in saved["classnames"]), tuple(saved["metrics"]),
                    tuple(saved["templates"]))
    head = SoftCPTHead.from_cfg(cfg, clip_model, info)
    head.load_state_dict(ckpt["state_dict"])
    head.eval()
    return head.generated_contexts(TextEncoder(clip_model))


# ------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a training run's output folder, or a checkpoint file")
    p.add_argument("--epoch", type=int, default=None,
                   help="checkpoint epoch (default: model-best, else the newest)")
    p.add_argument("--topk", type=int, default=5, help="nearest words per vector (default 5)")
    p.add_argument("--backbone", default="", help="CLIP backbone (default: the run's recorded one)")
    p.add_argument("--csv", default="", help="CSV path (default <RUN_DIR>/nearest_words_epoch<N>.csv)")
    p.add_argument("--per-class", action="store_true",
                   help="also every class's generated context (SoftCPT class-aware variants)")
    return p


def main(argv: Optional[list[str]] = None) -> str:
    args = build_parser().parse_args(argv)
    if args.topk < 1:
        raise InterpretError(f"--topk is {args.topk}; give an integer >= 1")
    if args.csv and osp.isdir(args.csv):
        raise InterpretError(f"--csv is {args.csv!r}, a folder; allowed: a file path, e.g. "
                             f"{osp.join(args.csv, 'nearest_words.csv')} (docs/prompts.md#nearest-words)")
    if args.csv and not osp.isdir(osp.dirname(osp.abspath(args.csv))):
        raise InterpretError(f"--csv is {args.csv!r}, in a folder that does not exist; allowed: a file "
                             "path in an existing folder (docs/prompts.md#nearest-words)")
    path, run_dir = find_checkpoint(args.run_dir, args.epoch)
    ckpt = read_state(path)
    config = recorded_config(run_dir)
    trainer = (ckpt.get("trainer") or config.get("TRAINER.NAME")
               or ("CoOp" if "ctx" in ckpt["state_dict"] else ""))
    backbone = args.backbone or config.get("MODEL.BACKBONE.NAME", "")
    if not backbone:
        raise InterpretError(f"{run_dir} has no log.txt recording the backbone: give --backbone "
                             "(e.g. RN50, ViT-B/16, or the checkpoint file of the CLIP the run used)")
    tag = "" if args.backbone else config.get("MODEL.BACKBONE.PRETRAINED_TAG", "")

    from trainers.parts.backbone import load_clip
    try:
        clip_model = load_clip(backbone, tag, "fp32", "cpu")
    except (RuntimeError, ValueError, OSError) as err:
        raise InterpretError(f"cannot load backbone {backbone!r}: {err}") from None
    embedding = clip_model.token_embedding.weight.detach()
    notes: list[str] = []
    groups = learned_groups(ckpt, trainer)
    if trainer == "SoftCPT":
        groups += generated_groups(run_dir, ckpt, clip_model, args.per_class, notes)
    if not groups:
        raise InterpretError(f"{path} holds no context vectors (trainer {trainer or 'unknown'}; "
                             f"parameters {sorted(ckpt['state_dict'])})")
    try:
        rows = interpret.interpret_rows(groups, embedding, args.topk)
    except ValueError as err:
        raise InterpretError(str(err)) from None
    epoch = ckpt.get("epoch")
    variant = f", variant {ckpt['variant']}" if ckpt.get("variant") else ""
    text = (f"{path}: trainer {trainer or 'unknown'}{variant}, epoch {epoch}, backbone {backbone}\n"
            f"{args.topk} nearest words of each context vector (Euclidean distance in the "
            "token-embedding space)\n" + "".join(f"note: {n}\n" for n in notes) + "\n"
            + interpret.format_rows(rows))
    out_csv = args.csv or osp.join(run_dir, f"nearest_words_epoch{epoch}.csv")
    atomic_write(out_csv, interpret.rows_csv(rows))
    print(text, end="")
    print(f"\nCSV: {out_csv}")
    return out_csv


if __name__ == "__main__":
    try:
        main()
    except InterpretError as err:
        sys.exit(f"error: {err}")
