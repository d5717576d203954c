"""Collect an output tree into one comparison table, per-task tables and a plot.

    python scripts/results.py output/toy [more trees ...] [--out DIR] [--no-plot] [--paper]

A run is a folder ``seed<S>`` (or any folder holding ``results.json`` or
``log.txt``). Its score is read from ``results.json`` (this project's runs: the
unrounded mean over tasks of each task's declared metric, and every task's
score) or, failing that, from the newest ``log.txt*`` that has one: the
``* accuracy: X%`` line of the last evaluation of the *test* split (``Evaluate on
the *test* set``, or older Dassl's ``Do evaluation on test set``, then ``=> result``),
never a validation result (``TEST.FINAL_MODEL best_val`` prints one every epoch), so
CoOp's own output folders fit in the same table; their values are rounded as CoOp
printed them, and the table marks cells holding such runs ``(N read from log.txt)``.

Besides the shot columns, each row shows ``#params`` (the parameters the optimizer
updates) and ``train min`` (the mean over its runs of the training epochs' wall time,
evaluation excluded), as results.json records them with the device; blank for runs
that record none (older runs, runs read from a log, methods without epochs).

Folder layouts understood (CoOp's conventions):

* ``<benchmark>/<Trainer>/[<variant>/]<cfg>_<K>shots[<options>]/[<tag>/]seed<S>`` (main sweeps);
* ``base2new/<train_base|test_new>/<benchmark>/shots_<K>/<Trainer>/[<variant>/]<cfg>[<options>]/seed<S>``;
* ``<Trainer>/<cfg>/<dataset>`` (CoOp's zero-shot script);
* ``task_transfer/<benchmark>/heldout_<task>/<train|test>/<Trainer>/[<variant>/]<cfg>_<K>shots[<options>]/``
  ``seed<S>`` (scripts/softcpt/task_transfer.sh): a table of its own, held-out task x method, with the
  mean over held-out tasks (``transfer.csv``).

``<options>`` are the sweep's extra ``KEY VALUE`` config options as the sweep scripts
name folders (``scripts/common.sh``, ``options_tag``): ``_<KEY>-<VALUE>`` each, e.g.
``rn50_ep50_16shots_OPTIM.LR-0.001``, with characters outside letters, digits and
``._,+=@-`` written ``%XX``.

For every benchmark the table has one row per method (trainer plus variant or
tag folders, plus the options as ``KEY=VALUE``, so runs of other settings are rows of
their own) and config, one column per shot count: mean ± std over seeds
(population std, as ``parse_test_res.py``). A cell with fewer seeds than the
benchmark's runs use says so, e.g. ``61.20 ± 0.30 (2/3 seeds)``; a cell with no
result says ``missing``. Zero-shot cells (0 shots) involve no sampling, so one
seed is complete. Runs that exist without a result are listed by path with the
reason (no result yet, or an unreadable, empty or malformed ``results.json`` or
log); one bad run never stops the table of the others.

Writes ``table.md``, ``table.csv``, ``tasks.csv``, ``runs.csv`` and
``curves.png`` (accuracy against shots, one panel per benchmark) under
``--out`` (default: ``<first tree>/summary``), each whole or not at all (the atomic writer,
atomic_files.py: a failed write leaves the older file). Needs pandas, numpy and matplotlib
only; the tables are made in scripts/results_tables.py.

``--paper`` also prints (and writes ``paper.md``) the published numbers of
``docs/paper_results.csv`` beside ours, with the difference, marking each row's
training: ``reproduce`` for runs whose results.json records ``param_dtype`` fp16
(the official code's training, docs/method.md), ``default`` otherwise, and the
published ``#params`` and training minutes beside ours. Our ``avg`` is the mean over
1, 2, 4, 8 and 16 shots, as the paper's, only when every one of them is complete;
otherwise it says ``incomplete: shots ...`` naming the missing ones.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Iterable, Optional
from urllib.parse import unquote

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script: the atomic writer and results_tables sit under it
    sys.path.insert(0, REPO)

from atomic_files import atomic_write  # noqa: E402
from config.official import official_method  # noqa: E402
from scripts.results_tables import (  # noqa: E402,F401  (the names callers use, here as before)
    CONFIG_BACKBONES, PAPER_CSV, Summary, config_backbone, markdown, paper_comparison, plot_png,
    read_paper, runs_csv, setting_label, summarize, summarize_transfer, table_csv, tasks_csv,
    training_settings, transfer_csv, transfer_markdown)

SEED_DIR = re.compile(r"^seed(-?\d+)$")
SHOTS_DIR = re.compile(r"^(?P<cfg>.+)_(?P<shots>\d+)shots$")
# Where a folder name's options begin, and each option: "_" KEY "-" VALUE, KEY a dotted
# upper-case config key (OPTIM.LR, TRAINER.COOP.N_CTX), as scripts/common.sh writes them.
OPTION = re.compile(r"_(?P<key>[A-Z][A-Z0-9_]*(?:\.[A-Z][A-Z0-9_]*)+)-")
B2N_SHOTS_DIR = re.compile(r"^shots_(\d+)$")
B2N_SPLIT_DIR = re.compile(r"^(train_base|test_base|test_new|test_all)$")
ACCURACY = re.compile(r"\* accuracy: ([\.\deE+-]+)%")
# The benchmark score (mean of the task metrics) where a log prints it: ours and the official
# SoftCPT code's; its "* accuracy:" may be the accuracy over all images, so this one wins.
OVERALL_METRIC = re.compile(r"\* overall_metric: ([\.\deE+-]+)%")
# A task's line, as printed now (ends "\tmetric: X%") or before (ends "score (<metric>): X%");
# the official code's names the task alone in the brackets, ours "KEY: name".
TASK_LINE = re.compile(r"\* task: \d+ \((?P<key>[^:)]+)(?::[^\t]*)?\).*(?:\tmetric|score \(\w+\)): "
                       r"(?P<score>[\.\deE+-]+)%")
ARGUMENT = re.compile(r"^(trainer|config_file|seed): (.*)$")
NUM_SHOTS = re.compile(r"^\s*NUM_SHOTS: (-?\d+)$")
# The line that opens an evaluation and names its split: Dassl 0.6's "Evaluate on the *test*
# set" (this project's test loop prints the same, trainers/parts/evaluation.py), older Dassl's (CoOp's
# logs) "Do evaluation on test set". Only a test split's "=> result" is a run's result: the
# validation of TEST.FINAL_MODEL best_val prints one after every epoch.
EVALUATE = re.compile(r"^(?:Evaluate on the \*(?P<split>\w+)\* set|Do evaluation on (?P<old>\w+) set)")
RESULT = "=> result"
RESULT_FILES = ("results.json", "log.txt")
# Trainer folder names recognised in runs that recorded no trainer (besides those the tree
# records): the only list of trainers here; a run with results.json names its own.
BUILTIN_TRAINERS = ("SoftCPT", "CoOp", "CoCoOp", "ZeroshotCLIP", "LinearProbeCLIP",
                    "ProtoNet", "KgCoOp", "ProGrad", "PLOT",
                    "MTCoOp", "MTCoOpHard")  # the last two: the official SoftCPT code's (config/official.py)


@dataclass
class Run:
    """One run folder and what it produced (``score`` None: no result)."""

    path: str
    benchmark: str
    method: str
    config: str
    shots: int
    seed: Optional[int]
    score: Optional[float]
    tasks: dict = field(default_factory=dict)  # task key -> score
    source: str = ""
    reason: str = ""  # why there is no score
    # (param_dtype, steps_per_batch) as results.json records them (fp32 before they were
    # recorded); ("log", None) for a score read from a log (--paper's training column)
    setting: tuple = ("fp32", None)
    # What results.json records of the run's cost (None: not recorded, e.g. an older run, or a
    # method without an optimizer or epochs): the parameters the optimizer updates, the training
    # epochs' wall time in seconds (evaluation excluded) and the device it was measured on.
    params: Optional[int] = None
    train_seconds: Optional[float] = None
    device: Optional[str] = None


class BadResult(ValueError):
    """A result file that cannot be used; the message says why."""


# ----------------------------------------------------------------------------- reading
def find_run_dirs(root: str) -> list[str]:
    """Folders that are runs: ``seed<S>``, or holding results.json / log.txt (not searched below)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        if SEED_DIR.match(os.path.basename(dirpath)) or any(f in filenames for f in RESULT_FILES):
            out.append(dirpath)
            dirnames[:] = []  # tensorboard/, prompt_learner/ ... belong to the run
        else:
            dirnames.sort()
    return sorted(out)


def read_results_json(path: str) -> tuple[Optional[float], dict, dict]:
    """Score, per-task scores and run facts; BadResult when the file cannot be used."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as err:
        raise BadResult(f"cannot read it ({err})") from None
    if not text.strip():
        raise BadResult("it is empty (the run was stopped while writing it?)")
    try:
        report = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadResult(f"it is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") \
            from None
    if not isinstance(report, dict):
        raise BadResult(f"it holds a JSON {type(report).__name__}, not an object")
    score = report.get("score")
    if not _is_number(score):
        raise BadResult(f"its 'score' is {score!r}, not a number")
    entries = report.get("tasks", [])
    if not isinstance(entries, list) or not all(
            isinstance(t, dict) and "key" in t and _is_number(t.get("score")) for t in entries):
        raise BadResult("its 'tasks' is not a list of {\"key\": ..., \"score\": number} objects")
    tasks = {str(t["key"]): t["score"] for t in entries}
    meta = {"trainer": report.get("trainer"), "config": report.get("config"),
            "shots": report.get("shots"), "seed": report.get("seed"),
            "setting": (str(report.get("param_dtype") or "fp32"), report.get("steps_per_batch")),
            **run_costs(report)}
    return score, tasks, meta


def run_costs(report: dict) -> dict:
    """params, train_seconds and device as results.json records them (trainers/parts/evaluation.py,
    ``run_costs``); None for each one it does not record or records as something unusable."""
    params, seconds, device = (report.get(k) for k in ("learnable_params", "train_seconds", "train_device"))
    return {"params": params if _is_number(params) and int(params) == params and params >= 0 else None,
            "train_seconds": float(seconds) if _is_number(seconds) and seconds >= 0 else None,
            "device": device if isinstance(device, str) and device else None}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_log(path: str) -> tuple[Optional[float], dict, dict]:
    """Score, per-task scores and run facts from a Dassl ``log.txt``: the result of the last
    evaluation of the test split (``EVALUATE``), never a validation result."""
    meta: dict = {"setting": ("log", None)}
    score, tasks, split, in_result, pending, overall = None, {}, None, False, {}, False
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            arg = ARGUMENT.match(line)
            if arg and arg.group(1) not in meta:
                meta[arg.group(1)] = arg.group(2).strip()
            shots = NUM_SHOTS.match(line)
            if shots and "shots" not in meta:
                meta["shots"] = int(shots.group(1))
            evaluate = EVALUATE.match(line)
            if evaluate:
                split, in_result = evaluate.group("split") or evaluate.group("old"), False
            if RESULT in line:
                in_result, pending, overall = split == "test", {}, False
            task = TASK_LINE.search(line)
            if in_result and task:
                pending[task.group("key").strip()] = float(task.group("score"))
            metric = OVERALL_METRIC.search(line)
            if in_result and metric:  # the mean of the task metrics, where the log prints it
                score, tasks, overall = float(metric.group(1)), pending, True
            acc = ACCURACY.search(line)
            if in_result and acc and not overall:  # the last test result printed is the one that counts
                score, tasks = float(acc.group(1)), pending
    if meta.get("config_file"):
        meta["config"] = os.path.splitext(os.path.basename(meta["config_file"]))[0]
    seed = meta.get("seed", "")
    meta["seed"] = int(seed) if re.fullmatch(r"-?\d+", seed) else None
    return score, tasks, meta


def read_run(run_dir: str) -> tuple[Optional[float], dict, dict, str, str]:
    """(score, tasks, meta, source, reason): results.json if present, else the newest
    log.txt* holding a result. A file that cannot be used gives score None and the reason."""
    path = os.path.join(run_dir, "results.json")
    bad = ""
    if os.path.isfile(path):
        try:
            return (*read_results_json(path), "results.json", "")
        except BadResult as err:
            bad = f"results.json: {err}"
    logs = sorted(glob.glob(os.path.join(run_dir, "log.txt*")), key=os.path.getmtime, reverse=True)
    meta: dict = {}
    problems = []
    for log in logs:
        try:
            score, tasks, log_meta = read_log(log)
        except (OSError, ValueError) as err:  # unreadable or unparsable: the others still count
            problems.append(f"{os.path.basename(log)}: cannot parse it ({err})")
            continue
        meta = meta or log_meta
        if score is not None and not bad:
            return score, tasks, log_meta, os.path.basename(log), ""
    if bad:  # its log may hold a result, but results.json is the run's record: do not guess
        return None, {}, meta, "", bad
    if problems:
        return None, {}, meta, "", "; ".join(problems)
    if logs:
        return None, {}, meta, "", ("no results.json, and no result in its log: unfinished, or it "
                                    f"failed (see the end of {os.path.basename(logs[0])})")
    return None, {}, meta, "", "no results.json and no log.txt"


def describe(run_dir: str, root: str, meta: dict,
             trainers: Iterable[str] = ()) -> tuple[str, str, str, int, Optional[int]]:
    """(benchmark, method, config, shots, seed) of a run from its path and its own record.

    The trainer's folder (the last path part equal to the recorded trainer name,
    or for a run that recorded none, such as a crashed one, to one of
    ``trainers``) splits the path: the benchmark is the folder before it, the
    method is the trainer plus the folders after it except ``<cfg>_<K>shots``
    and the config.
    """
    parts = os.path.abspath(run_dir).split(os.sep)
    seed_match = SEED_DIR.match(parts[-1])
    seed = int(seed_match.group(1)) if seed_match else meta.get("seed")
    inner = parts[:-1] if seed_match else parts
    names = {meta["trainer"]} if meta.get("trainer") else set(trainers)
    hits = [i for i, p in enumerate(inner) if p in names]
    t = hits[-1] if hits else _guess_trainer_index(inner, len(os.path.abspath(root).split(os.sep)))
    config, shots = meta.get("config") or "", meta.get("shots")
    before = []
    for p in inner[:t]:
        m = B2N_SHOTS_DIR.match(p)
        if m:
            shots = int(m.group(1))
        else:
            before.append(p)
    bench = before[-1]
    if len(before) >= 2 and B2N_SPLIT_DIR.match(before[-2]):
        bench = f"{before[-1]} [{before[-2]}]"  # base2new/<split>/<benchmark>
    if hits and not seed_match and len(inner) - t == 3:  # CoOp zero-shot: <Trainer>/<cfg>/<dataset>
        bench, config = inner[-1], config or inner[t + 1]
        inner = inner[: t + 1]
    method: list[str] = []
    options: list[str] = []
    for i, p in enumerate(inner[t:]):
        if i:  # not the trainer's own folder
            p, opts = split_options(p)
            options += opts
        m = SHOTS_DIR.match(p)
        if m:
            config, shots = m.group("cfg"), int(m.group("shots"))
        elif p != config or not method:
            method.append(p)
    shots = 0 if shots is None or int(shots) < 0 else int(shots)
    label = "/".join(method) or meta.get("trainer") or "unknown"
    return bench, " ".join([label] + options), config, shots, seed


def split_options(name: str) -> tuple[str, list[str]]:
    """A folder name without its options, and the options as ``KEY=VALUE`` (decoded):
    ``tiny_16shots_OPTIM.LR-0.001`` -> (``tiny_16shots``, [``OPTIM.LR=0.001``])."""
    marks = list(OPTION.finditer(name))
    if not marks:
        return name, []
    options = []
    for mark, after in zip(marks, marks[1:] + [None]):
        value = name[mark.end(): after.start() if after else len(name)]
        options.append(f"{mark.group('key')}={unquote(value)}")
    return name[: marks[0].start()], options


def _guess_trainer_index(inner: list[str], below_root: int) -> int:
    """Unknown trainer: the first folder below the tree, or the second when two or more
    folders precede ``<cfg>_<K>shots`` (the first is then the benchmark, as in output/)."""
    shots_at = next((i for i, p in enumerate(inner) if i >= below_root and SHOTS_DIR.match(split_options(p)[0])),
                    len(inner))
    return below_root + 1 if shots_at - below_root >= 2 else below_root


def collect(roots: Iterable[str]) -> list[Run]:
    found = [(root, run_dir, _read_run_safely(run_dir)) for root in roots for run_dir in find_run_dirs(root)]
    recorded = {meta.get("trainer") for _, _, (_, _, meta, _, _) in found}
    trainers = set(BUILTIN_TRAINERS) | {t for t in recorded if t and isinstance(t, str)}
    runs = []
    for root, run_dir, (score, tasks, meta, source, reason) in found:
        try:
            bench, method, config, shots, seed = describe(run_dir, root, meta, trainers)
            method = official_method(method) or method  # the official code's run folders
        except Exception as err:  # noqa: BLE001 - an odd folder must not hide the others
            bench, method, config, shots, seed = "(unplaced)", "unknown", "", 0, None
            score, reason = None, reason or f"cannot tell its benchmark and method from the path ({err})"
        runs.append(Run(run_dir, bench, method, config, shots, seed, score, tasks, source, reason,
                        meta.get("setting", ("fp32", None)), meta.get("params"),
                        meta.get("train_seconds"), meta.get("device")))
    return runs


def _read_run_safely(run_dir: str) -> tuple:
    try:
        return read_run(run_dir)
    except Exception as err:  # noqa: BLE001 - one bad run never stops the table
        return None, {}, {}, "", f"unexpected error while reading it: {type(err).__name__}: {err}"


# ----------------------------------------------------------------------------- task transfer
TRANSFER_DIR = "task_transfer"
HELDOUT_DIR = re.compile(r"^heldout_(.+)$")


def transfer_place(path: str) -> Optional[tuple[str, str, str, str, int]]:
    """(benchmark, held-out task, stage, method, shots) of a run of scripts/softcpt/task_transfer.sh:
    ``task_transfer/<bench>/heldout_<key>/<train|test>/<Trainer>/[<variant>/]<cfg>_<K>shots[<options>]/``
    ``seed<S>``; None for any other run."""
    parts = os.path.abspath(path).split(os.sep)
    if TRANSFER_DIR not in parts:
        return None
    rest = parts[len(parts) - 1 - parts[::-1].index(TRANSFER_DIR) + 1:]
    if SEED_DIR.match(rest[-1] if rest else ""):
        rest = rest[:-1]
    if len(rest) < 5 or not HELDOUT_DIR.match(rest[1]) or rest[2] not in ("train", "test"):
        return None
    shots_at = next((i for i, p in enumerate(rest) if i > 3 and SHOTS_DIR.match(split_options(p)[0])), None)
    if shots_at is None:
        return None
    name, options = split_options(rest[shots_at])  # the sweep's KEY VALUE options, as in describe
    method = " ".join(["/".join(rest[3:shots_at])] + options)
    return rest[0], HELDOUT_DIR.match(rest[1]).group(1), rest[2], method, \
        int(SHOTS_DIR.match(name).group("shots"))


def split_transfer_runs(runs: list[Run]) -> tuple[list[Run], list[tuple[tuple, Run]]]:
    """(the other runs, [(place, run)] of the task-transfer runs, training and evaluation)."""
    others, transfer = [], []
    for run in runs:
        place = transfer_place(run.path)
        if place is None:
            others.append(run)
        else:
            transfer.append((place, run))
    return others, transfer


# ----------------------------------------------------------------------------- writing
def write_tables(out: str, files: dict) -> list[str]:
    """Each file whole or not at all (the atomic writer): a failed write keeps the older table."""
    for name, data in files.items():
        atomic_write(os.path.join(out, name), data)
    return list(files)


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("roots", nargs="+", help="output trees, e.g. output/toy or output")
    p.add_argument("--out", default="", help="where to write the files (default: <first tree>/summary)")
    p.add_argument("--no-plot", action="store_true", help="do not draw curves.png")
    p.add_argument("--paper", action="store_true",
                   help="also print the published numbers beside ours (docs/paper_results.csv); "
                        "writes paper.md")
    args = p.parse_args(argv)
    missing = [r for r in args.roots if not os.path.isdir(r)]
    if missing:
        print(f"error: no such folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    runs = collect(args.roots)
    if not runs:
        print(f"No runs under {', '.join(args.roots)} (looked for seed<S> folders, results.json "
              "and log.txt).", file=sys.stderr)
        return 1
    others, transfer = split_transfer_runs(runs)
    summary = summarize(others)
    transfer_cells = summarize_transfer(transfer)
    text = markdown(summary, runs)
    if transfer_cells is not None:
        text = transfer_markdown(transfer_cells) + "\n" + text
    print(text)
    files = {"table.md": text, "table.csv": table_csv(summary), "tasks.csv": tasks_csv(summary),
             "runs.csv": runs_csv(runs)}
    if transfer_cells is not None:
        files["transfer.csv"] = transfer_csv(transfer_cells)
    png = None if args.no_plot else plot_png(summary)
    if png is not None:
        files["curves.png"] = png
    comparison = paper_comparison(summary, runs) if args.paper else None
    if comparison is not None:
        print(comparison)
        files["paper.md"] = comparison
    out = args.out or os.path.join(args.roots[0], "summary")
    written = write_tables(out, files)
    print(f"Wrote {', '.join(os.path.join(out, w) for w in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
