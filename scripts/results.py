"""Collect an output tree into one comparison table, per-task tables and a plot.

    python scripts/results.py output/toy [more trees ...] [--out DIR] [--no-plot] [--paper]

A run is a folder ``seed<S>`` (or any folder holding ``results.json`` or
``log.txt``). Its score is read from ``results.json`` (this project's runs: the
unrounded mean over tasks of each task's declared metric, and every task's
score) or, failing that, from the newest ``log.txt*`` that has one: the last
``* accuracy: X%`` line after ``Finish training`` or ``=> result``, as CoOp's
``parse_test_res.py`` reads it (so CoOp's own output folders fit in the same
table; their values are rounded as CoOp printed them).

Folder layouts understood (CoOp's conventions):

* ``<benchmark>/<Trainer>/[<variant>/]<cfg>_<K>shots[<options>]/[<tag>/]seed<S>`` (main sweeps);
* ``base2new/<train_base|test_new>/<benchmark>/shots_<K>/<Trainer>/[<variant>/]<cfg>[<options>]/seed<S>``;
* ``<Trainer>/<cfg>/<dataset>`` (CoOp's zero-shot script);
* ``task_transfer/<benchmark>/heldout_<task>/<train|test>/<Trainer>/[<variant>/]<cfg>_<K>shots[<options>]/seed<S>``
  (scripts/softcpt/task_transfer.sh): a table of its own, held-out task x method, with the
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
``--out`` (default: ``<first tree>/summary``). Needs numpy and matplotlib only.

``--paper`` also prints (and writes ``paper.md``) the published numbers of
``docs/paper_results.csv`` beside ours, with the difference, marking each row's
training: ``reproduce`` for runs whose results.json records ``param_dtype`` fp16
(the official code's training, docs/method.md), ``default`` otherwise.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Iterable, Optional
from urllib.parse import unquote

import numpy as np

SEED_DIR = re.compile(r"^seed(-?\d+)$")
SHOTS_DIR = re.compile(r"^(?P<cfg>.+)_(?P<shots>\d+)shots$")
# Where a folder name's options begin, and each option: "_" KEY "-" VALUE, KEY a dotted
# upper-case config key (OPTIM.LR, TRAINER.COOP.N_CTX), as scripts/common.sh writes them.
OPTION = re.compile(r"_(?P<key>[A-Z][A-Z0-9_]*(?:\.[A-Z][A-Z0-9_]*)+)-")
B2N_SHOTS_DIR = re.compile(r"^shots_(\d+)$")
B2N_SPLIT_DIR = re.compile(r"^(train_base|test_base|test_new|test_all)$")
ACCURACY = re.compile(r"\* accuracy: ([\.\deE+-]+)%")
# A task's line, as printed now (ends "\tmetric: X%") or before (ends "score (<metric>): X%").
TASK_LINE = re.compile(r"\* task: \d+ \((?P<key>[^:]+): .*(?:\tmetric|score \(\w+\)): "
                       r"(?P<score>[\.\deE+-]+)%")
ARGUMENT = re.compile(r"^(trainer|config_file|seed): (.*)$")
NUM_SHOTS = re.compile(r"^\s*NUM_SHOTS: (-?\d+)$")
END_SIGNALS = ("Finish training", "=> result")
RESULT_FILES = ("results.json", "log.txt")
# Trainer folder names recognised in runs that recorded no trainer (besides those the tree records).
BUILTIN_TRAINERS = ("SoftCPT", "CoOp", "CoCoOp", "ZeroshotCLIP", "LinearProbeCLIP")


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
            "shots": report.get("shots"), "seed": report.get("seed")}
    return score, tasks, meta


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_log(path: str) -> tuple[Optional[float], dict, dict]:
    """Score, per-task scores and run facts from a Dassl ``log.txt``."""
    meta: dict = {}
    score, tasks, ended, pending = None, {}, False, {}
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            arg = ARGUMENT.match(line)
            if arg and arg.group(1) not in meta:
                meta[arg.group(1)] = arg.group(2).strip()
            shots = NUM_SHOTS.match(line)
            if shots and "shots" not in meta:
                meta["shots"] = int(shots.group(1))
            if any(s in line for s in END_SIGNALS):
                ended, pending = True, {}
            task = TASK_LINE.search(line)
            if ended and task:
                pending[task.group("key").strip()] = float(task.group("score"))
            acc = ACCURACY.search(line)
            if ended and acc:  # the last result printed is the one that counts
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
        except Exception as err:  # noqa: BLE001 - an odd folder must not hide the others
            bench, method, config, shots, seed = "(unplaced)", "unknown", "", 0, None
            score, reason = None, reason or f"cannot tell its benchmark and method from the path ({err})"
        runs.append(Run(run_dir, bench, method, config, shots, seed, score, tasks, source, reason))
    return runs


def _read_run_safely(run_dir: str) -> tuple:
    try:
        return read_run(run_dir)
    except Exception as err:  # noqa: BLE001 - one bad run never stops the table
        return None, {}, {}, "", f"unexpected error while reading it: {type(err).__name__}: {err}"


# ----------------------------------------------------------------------------- summarising
@dataclass
class Cell:
    """The runs of one method, config and shot count: scores by seed."""

    scores: dict = field(default_factory=dict)  # seed -> score
    tasks: dict = field(default_factory=dict)  # task -> {seed: score}
    expected: set = field(default_factory=set)  # seeds the cell should have

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def complete(self) -> bool:
        return self.n > 0 and self.expected <= set(self.scores)

    @property
    def missing(self) -> list:
        return sorted(self.expected - set(self.scores), key=str)


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and population std (numpy's default, as CoOp's parse_test_res.py)."""
    arr = np.asarray(list(values), dtype=float)
    return float(arr.mean()), float(arr.std())


def summarize(runs: list[Run]) -> dict:
    """{benchmark: {(method, config): {shots: Cell}}}, with the seeds each cell should have."""
    table: dict = {}
    for run in runs:
        cell = table.setdefault(run.benchmark, {}).setdefault((run.method, run.config), {}) \
                    .setdefault(run.shots, Cell())
        cell.expected.add(run.seed)
        if run.score is not None:
            cell.scores[run.seed] = run.score
            for key, value in run.tasks.items():
                cell.tasks.setdefault(key, {})[run.seed] = value
    for rows in table.values():
        seeds = {s for cells in rows.values() for k, c in cells.items() if k > 0 for s in c.expected}
        shots = sorted({k for cells in rows.values() for k in cells if k > 0})
        for cells in rows.values():
            if any(k > 0 for k in cells):  # a few-shot method owes every shot count and seed
                for k in shots:
                    cells.setdefault(k, Cell()).expected |= seeds
    return table


def format_cell(cell: Optional[Cell], values: Optional[dict] = None) -> str:
    """``m ± s``, ``m ± s (n/N seeds)`` or ``missing``; '' where nothing is owed."""
    if cell is None:
        return ""
    values = cell.scores if values is None else values
    if not values:
        return "missing" if cell.expected else ""
    mean, std = mean_std(values.values())
    text = f"{mean:.2f} ± {std:.2f}"
    owed = len(cell.expected | set(values))
    if len(values) < owed:
        text += f" ({len(values)}/{owed} seeds)"
    return text


def shot_columns(rows: dict) -> list[int]:
    return sorted({k for cells in rows.values() for k in cells})


def average_over_shots(cells: dict) -> str:
    """Mean over the few-shot columns of their means; only when every one is complete."""
    few = [c for k, c in cells.items() if k > 0]
    if not few:
        return ""
    if not all(c.complete for c in few):
        return "incomplete"
    return f"{np.mean([mean_std(c.scores.values())[0] for c in few]):.2f}"


def markdown(table: dict, runs: list[Run]) -> str:
    out = []
    for bench in sorted(table):
        rows = table[bench]
        shots = shot_columns(rows)
        tasks = list(dict.fromkeys(t for cells in rows.values() for c in cells.values() for t in c.tasks))
        out.append(f"## {bench}\n\nMean task score (%): mean ± std over seeds.\n")
        header = ["method", "config"] + [_shots_label(k) for k in shots] + ["avg"]
        out.append(_md_row(header))
        out.append(_md_row(["---"] * len(header)))
        for (method, config), cells in sorted(rows.items()):
            out.append(_md_row([method, config] + [format_cell(cells.get(k)) for k in shots]
                               + [average_over_shots(cells)]))
        if len(tasks) > 1:
            out.append("\nPer task (each task's declared metric, %):\n")
            header = ["method", "config", "shots"] + tasks
            out.append(_md_row(header))
            out.append(_md_row(["---"] * len(header)))
            for (method, config), cells in sorted(rows.items()):
                reported = {t for c in cells.values() for t in c.tasks}  # e.g. none in CoOp's logs
                for k in sorted(cells):
                    c = cells[k]
                    out.append(_md_row([method, config, str(k)] + [
                        format_cell(c, c.tasks.get(t, {})) if t in reported else "" for t in tasks]))
        out.append("")
    b2n = base_to_new(table)
    if b2n:
        out.append(b2n)
    failed = [r for r in runs if r.score is None]
    if failed:
        out.append("## Runs without a result\n")
        out += [f"- {r.path}: {r.reason}" if r.reason else f"- {r.path}" for r in failed]
        out.append("")
    return "\n".join(out)


def base_to_new(table: dict) -> str:
    """Base, new and their harmonic mean where train_base and test_new runs of a benchmark exist."""
    lines = []
    for bench in sorted(table):
        if not bench.endswith("[train_base]"):
            continue
        name = bench[: -len(" [train_base]")]
        new = table.get(f"{name} [test_new]", {})
        for key, cells in sorted(table[bench].items()):
            for k, base_cell in sorted(cells.items()):
                new_cell = new.get(key, {}).get(k)
                if not base_cell.scores or new_cell is None or not new_cell.scores:
                    continue
                b, n = mean_std(base_cell.scores.values())[0], mean_std(new_cell.scores.values())[0]
                h = 2 * b * n / (b + n) if b + n else float("nan")
                lines.append(_md_row([name, key[0], key[1], str(k), format_cell(base_cell),
                                      format_cell(new_cell), f"{h:.2f}"]))
    if not lines:
        return ""
    head = ["benchmark", "method", "config", "shots", "base", "new", "H"]
    return "\n".join(["## Base-to-new\n", _md_row(head), _md_row(["---"] * len(head))] + lines + [""])


def _shots_label(k: int) -> str:
    return "0 (zero-shot)" if k == 0 else f"{k} shot" + ("s" if k > 1 else "")


def _md_row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


# ----------------------------------------------------------------------------- task transfer
TRANSFER_DIR = "task_transfer"
HELDOUT_DIR = re.compile(r"^heldout_(.+)$")


def transfer_place(path: str) -> Optional[tuple[str, str, str, str, int]]:
    """(benchmark, held-out task, stage, method, shots) of a run of scripts/softcpt/task_transfer.sh:
    ``task_transfer/<bench>/heldout_<key>/<train|test>/<Trainer>/[<variant>/]<cfg>_<K>shots[<options>]/seed<S>``;
    None for any other run."""
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


def summarize_transfer(transfer: list[tuple[tuple, Run]]) -> dict:
    """{benchmark: {(method, shots): {held-out task: Cell}}} of the evaluations on the held-out task."""
    table: dict = {}
    for (bench, task, stage, method, shots), run in transfer:
        if stage != "test":
            continue
        cell = table.setdefault(bench, {}).setdefault((method, shots), {}).setdefault(task, Cell())
        cell.expected.add(run.seed)
        if run.score is not None:
            cell.scores[run.seed] = run.score
    for columns in table.values():
        tasks = {t for cells in columns.values() for t in cells}
        for cells in columns.values():  # every task and seed a column has anywhere, it owes everywhere
            seeds = {s for c in cells.values() for s in c.expected}
            for t in tasks:
                cells.setdefault(t, Cell()).expected |= seeds
    return table


def transfer_markdown(table: dict) -> str:
    """A table "held-out task x method" per benchmark, with the mean over held-out tasks."""
    out = []
    for bench in sorted(table):
        columns = table[bench]
        # SoftCPT first, zero-shot last
        order = sorted(columns, key=lambda c: (c[1] == 0, not c[0].startswith("SoftCPT"), c[0], c[1]))
        tasks = sorted({t for cells in columns.values() for t in cells})
        out.append(f"## Task transfer: {bench}\n\nScore (%) of each task (its declared metric) when "
                   "the model was trained on the other tasks only and evaluated on this one alone: "
                   "mean ± std over seeds.\n")
        head = ["held-out task"] + [m if k == 0 else f"{m} ({_shots_label(k)})" for m, k in order]
        out += [_md_row(head), _md_row(["---"] * len(head))]
        for t in tasks:
            out.append(_md_row([t] + [format_cell(columns[c].get(t)) for c in order]))
        means = []
        for c in order:
            cells = [columns[c][t] for t in tasks]
            if all(cell.complete for cell in cells):
                means.append(f"{np.mean([mean_std(cell.scores.values())[0] for cell in cells]):.2f}")
            else:
                means.append("incomplete")
        out += [_md_row(["mean"] + means), ""]
    return "\n".join(out)


def write_transfer_csv(table: dict, path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["benchmark", "held_out_task", "method", "shots", "mean", "std", "n_seeds",
                    "expected_seeds"])
        for bench, columns in sorted(table.items()):
            for (method, shots), cells in sorted(columns.items()):
                for task, c in sorted(cells.items()):
                    mean, std = mean_std(c.scores.values()) if c.scores else ("", "")
                    w.writerow([bench, task, method, shots, mean, std, c.n, len(c.expected | set(c.scores))])


# ----------------------------------------------------------------------------- writing
def write_csv(table: dict, runs: list[Run], out: str) -> None:
    with open(os.path.join(out, "table.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["benchmark", "method", "config", "shots", "mean", "std", "n_seeds",
                    "expected_seeds", "seeds", "missing_seeds"])
        for bench, rows in sorted(table.items()):
            for (method, config), cells in sorted(rows.items()):
                for k, c in sorted(cells.items()):
                    mean, std = mean_std(c.scores.values()) if c.scores else ("", "")
                    w.writerow([bench, method, config, k, mean, std, c.n, len(c.expected | set(c.scores)),
                                ";".join(map(str, sorted(c.scores, key=str))), ";".join(map(str, c.missing))])
    with open(os.path.join(out, "tasks.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["benchmark", "method", "config", "shots", "task", "mean", "std", "n_seeds",
                    "expected_seeds"])
        for bench, rows in sorted(table.items()):
            for (method, config), cells in sorted(rows.items()):
                for k, c in sorted(cells.items()):
                    for task, values in c.tasks.items():
                        w.writerow([bench, method, config, k, task, *mean_std(values.values()),
                                    len(values), len(c.expected | set(c.scores))])
    with open(os.path.join(out, "runs.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["benchmark", "method", "config", "shots", "seed", "score", "source", "path", "reason"])
        for r in runs:
            w.writerow([r.benchmark, r.method, r.config, r.shots, r.seed,
                        "" if r.score is None else r.score, r.source, r.path, r.reason])


def plot(table: dict, path: str) -> bool:
    """Accuracy against shots, one panel per benchmark (base-to-new folders left out)."""
    benches = [b for b in sorted(table) if not b.endswith("]")]
    if not benches:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(len(benches), 3)
    rows_n = math.ceil(len(benches) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.5 * cols, 3.6 * rows_n), squeeze=False)
    for ax, bench in zip(axes.flat, benches):
        rows = table[bench]
        shots = shot_columns(rows)
        x_of = {k: i for i, k in enumerate(shots)}  # evenly spaced, as CoOp's figures
        for i, ((method, config), cells) in enumerate(sorted(rows.items())):
            ks = [k for k in sorted(cells) if cells[k].scores]
            if not ks:
                continue
            stats = [mean_std(cells[k].scores.values()) for k in ks]
            xs, means = [x_of[k] for k in ks], [m for m, _ in stats]
            label = method if len({c for _, c in rows}) == 1 else f"{method} ({config})"
            colour = f"C{i % 10}"
            if ks == [0]:
                ax.plot(xs, means, "*", ms=12, color=colour, label=label)
                continue
            ax.errorbar(xs, means, yerr=[s for _, s in stats], marker="o", ms=4, capsize=2,
                        color=colour, label=label)
            hollow = [(x, m) for k, x, m in zip(ks, xs, means) if not cells[k].complete]
            if hollow:  # incomplete cells: white markers
                ax.plot(*zip(*hollow), "o", ms=7, mfc="white", color=colour)
        ax.set_xticks(range(len(shots)), [str(k) for k in shots])
        ax.set_title(bench)
        ax.set_xlabel("shots per class")
        ax.set_ylabel("mean task score (%)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(benches):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------- --paper
# The published numbers (docs/benchmarks.md#published-numbers), one row per benchmark,
# method, backbone and shot count ("avg": the mean over 1, 2, 4, 8 and 16 shots).
PAPER_CSV = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                         "paper_results.csv")
# Config name prefixes of each backbone's configs (configs/trainers/*/).
CONFIG_BACKBONES = {"rn50": "RN50", "vit_b16": "ViT-B/16"}


def read_paper(path: str = PAPER_CSV) -> list[dict]:
    """The published numbers: dicts with benchmark, method, paper_name, backbone, shots, score."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["score"] = float(row["score"])
        row["shots"] = row["shots"] if row["shots"] == "avg" else int(row["shots"])
    return rows


def config_backbone(config: str) -> Optional[str]:
    """RN50 for ``rn50_ep50``, ViT-B/16 for ``vit_b16_ep50`` ...; None for other configs."""
    for prefix, backbone in CONFIG_BACKBONES.items():
        if config.lower().startswith(prefix):
            return backbone
    return None


def training_settings(runs: list[Run]) -> dict:
    """{(benchmark, method, config): set of (param_dtype, steps_per_batch)} from results.json
    (runs written before these were recorded count as fp32, as they were trained)."""
    out: dict = {}
    for run in runs:
        if run.score is None:
            continue
        setting = ("fp32", None)
        try:
            with open(os.path.join(run.path, "results.json"), encoding="utf-8") as f:
                report = json.load(f)
            setting = (str(report.get("param_dtype") or "fp32"), report.get("steps_per_batch"))
        except (OSError, ValueError, AttributeError):  # read from a log: another code base's run
            setting = ("log", None) if run.source.startswith("log") else setting
        out.setdefault((run.benchmark, run.method, run.config), set()).add(setting)
    return out


def setting_label(settings: set) -> str:
    """``reproduce (PARAM_DTYPE fp16, STEPS_PER_BATCH 3)``, ``default (fp32)`` or ``mixed: ...``."""
    def one(setting):
        dtype, steps = setting
        if dtype == "log":
            return "unknown (read from log.txt)"
        step_text = f", STEPS_PER_BATCH {steps}" if steps is not None else ""
        if dtype == "fp16":
            return f"reproduce (PARAM_DTYPE {dtype}{step_text})"
        return f"default ({dtype}{step_text})"
    labels = sorted({one(x) for x in settings})
    return labels[0] if len(labels) == 1 else "mixed: " + "; ".join(labels)


def our_value(cells: dict, shots) -> tuple[Optional[float], str]:
    """Our mean for a published shot count: ``avg`` is the mean over the few-shot columns
    (every one complete), or the zero-shot score for a method without shots."""
    if shots == "avg":
        few = [c for k, c in cells.items() if k > 0]
        if not few:
            zero = cells.get(0)
            return (mean_std(zero.scores.values())[0], "") if zero and zero.scores else (None, "no run")
        if not all(c.complete for c in few):
            return None, "incomplete"
        return float(np.mean([mean_std(c.scores.values())[0] for c in few])), ""
    cell = cells.get(shots)
    if cell is None or not cell.scores:
        return None, "no run"
    return mean_std(cell.scores.values())[0], "" if cell.complete else "incomplete seeds"


def paper_comparison(table: dict, runs: list[Run], paper: Optional[list[dict]] = None) -> str:
    """Markdown: every published number of the benchmarks in ``table`` beside ours, with the
    difference (ours - paper), one row per our config of the published backbone."""
    paper = read_paper() if paper is None else paper
    settings = training_settings(runs)
    published = sorted({p["benchmark"] for p in paper})
    out = []
    for bench in sorted(b for b in table if not b.endswith("]")):
        rows = [p for p in paper if p["benchmark"] == bench]
        if not rows:
            out.append(f"## {bench}: published numbers\n\nThe paper publishes none for {bench!r} "
                       f"(docs/paper_results.csv has: {', '.join(published)}).\n")
            continue
        out.append(f"## {bench}: published numbers beside ours\n\n"
                   "Mean task score (%), paper (docs/paper_results.csv) and ours (mean over seeds); "
                   "`avg`: mean over 1, 2, 4, 8 and 16 shots.\n")
        head = ["method (paper)", "backbone", "shots", "paper", "ours: method", "config", "ours",
                "ours - paper", "training"]
        out += [_md_row(head), _md_row(["---"] * len(head))]
        for p in rows:
            ours = [(key, cells) for key, cells in sorted(table[bench].items())
                    if key[0] == p["method"] and config_backbone(key[1]) == p["backbone"]]
            if not ours:
                out.append(_md_row([p["paper_name"], p["backbone"], p["shots"], f"{p['score']:.2f}",
                                    p["method"], "", "no run", "", ""]))
            for (method, config), cells in ours:
                value, why = our_value(cells, p["shots"])
                diff = f"{value - p['score']:+.2f}" if value is not None else ""
                label = setting_label(settings.get((bench, method, config), set())) \
                    if settings.get((bench, method, config)) else ""
                out.append(_md_row([p["paper_name"], p["backbone"], p["shots"], f"{p['score']:.2f}",
                                    method, config, f"{value:.2f}" if value is not None else why,
                                    diff, label]))
        out.append("")
    return "\n".join(out)


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
    table = summarize(others)
    transfer_table = summarize_transfer(transfer)
    text = markdown(table, runs)
    if transfer_table:
        text = transfer_markdown(transfer_table) + "\n" + text
    print(text)
    out = args.out or os.path.join(args.roots[0], "summary")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(text)
    write_csv(table, runs, out)
    written = ["table.md", "table.csv", "tasks.csv", "runs.csv"]
    if transfer_table:
        write_transfer_csv(transfer_table, os.path.join(out, "transfer.csv"))
        written.append("transfer.csv")
    if not args.no_plot and plot(table, os.path.join(out, "curves.png")):
        written.append("curves.png")
    if args.paper:
        comparison = paper_comparison(table, runs)
        print(comparison)
        with open(os.path.join(out, "paper.md"), "w") as f:
            f.write(comparison)
        written.append("paper.md")
    print(f"Wrote {', '.join(os.path.join(out, w) for w in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
