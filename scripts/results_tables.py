"""The tables of scripts/results.py, on pandas: cells, Markdown, CSV files, task transfer, --paper.

A *cell* is the runs of one benchmark, method, config and shot count. It *owes* the
seeds it has runs of and, for a few-shot method, every seed and shot count of its
benchmark's few-shot runs; ``n`` of them have a score. Means and stds are numpy's
(population std, as CoOp's ``parse_test_res.py``) over the scores in the order the
runs were found: pandas' own group-by mean and std sum in another order and can differ
in the last bit, which the CSV files show. Seeds are text (``str(seed)``; ``None`` for
a run without one), as the CSV files write and sort them.
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
import pandas as pd

ROW = ["benchmark", "method", "config"]  # one row of a table
KEYS = ROW + ["shots"]  # one cell
COLUMN = ["benchmark", "method", "shots"]  # one column of a task-transfer table
CSV_LINE_END = "\r\n"  # what the csv module writes, as these files had before pandas


def mean(values: Iterable[float]) -> float:
    return float(np.mean(np.asarray(list(values), dtype=float)))


def pstd(values: Iterable[float]) -> float:
    """Population std (numpy's default, as CoOp's parse_test_res.py)."""
    return float(np.std(np.asarray(list(values), dtype=float)))


def _seed_list(seeds: Iterable[str]) -> str:
    return ";".join(sorted(seeds))


@dataclass
class Summary:
    """cells: one row per cell (index ``KEYS``): mean, std, n, owed, complete, seeds, missing, in
    the order the runs were found. tasks: one row per cell and task (index ``KEYS`` + task, a
    cell's tasks in the order its runs report them): mean, std, n, owed. task_order: each
    benchmark's tasks in the order its per-task table lists them. costs: one row per table row
    (index ``ROW``, ``row_costs``): params, train_min, devices."""

    cells: pd.DataFrame
    tasks: pd.DataFrame
    task_order: dict
    costs: Optional[pd.DataFrame] = None


def runs_frame(runs: list, places: Optional[list[dict]] = None) -> pd.DataFrame:
    """One row per run, in order: benchmark, method, config, shots, seed (text), score,
    has_score, run (its index), from_log (its score was read from a log.txt), then the
    columns of its ``places`` entry (they win)."""
    places = places or [{}] * len(runs)
    return pd.DataFrame([{"benchmark": r.benchmark, "method": r.method, "config": r.config,
                          "shots": r.shots, "seed": str(r.seed), "score": r.score,
                          "has_score": r.score is not None, "run": i,
                          "from_log": r.source.startswith("log.txt"), **place}
                         for i, (r, place) in enumerate(zip(runs, places))],
                        columns=list(dict.fromkeys(KEYS + ["seed", "score", "has_score", "run", "from_log"]
                                                   + list(places[0] if places else []))))


def owed_seeds(runs: pd.DataFrame, keys: list[str], grid: str, grid_across: list[str],
               seeds_across: list[str]) -> pd.DataFrame:
    """(``keys``, seed) owed: every run's, and for each ``keys`` group without ``grid``, every
    ``grid`` value of its ``grid_across`` group with every seed of its ``seeds_across`` group."""
    groups = [k for k in keys if k != grid]
    cross = (runs[groups].drop_duplicates()
             .merge(runs[grid_across + [grid]].drop_duplicates(), on=grid_across)
             .merge(runs[seeds_across + ["seed"]].drop_duplicates(), on=seeds_across))
    return pd.concat([runs[keys + ["seed"]], cross[keys + ["seed"]]]).drop_duplicates(ignore_index=True)


def cell_stats(runs: pd.DataFrame, owed: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Every owed cell: mean, std, n, owed, complete, seeds, missing, from_log (how many of its
    scores were read from a log.txt) (a seed run twice: its last score counts, in the place of
    its first)."""
    scored = runs[runs.has_score.astype(bool)].groupby(keys + ["seed"], sort=False)[["score", "from_log"]]
    scored = scored.last().reset_index()
    stats = scored.groupby(keys, sort=False).agg(mean=("score", mean), std=("score", pstd),
                                                 n=("score", "size"), seeds=("seed", _seed_list),
                                                 from_log=("from_log", "sum"))
    owed = owed.merge(scored[keys + ["seed"]], how="left", indicator=True)
    missing = owed[owed["_merge"] == "left_only"].groupby(keys, sort=False)["seed"].agg(_seed_list)
    cells = owed.groupby(keys, sort=False).size().rename("owed").to_frame().join(stats)
    cells = cells.join(missing.rename("missing"))
    cells["n"] = cells["n"].fillna(0).astype(int)
    cells["from_log"] = cells["from_log"].fillna(0).astype(int)
    cells[["seeds", "missing"]] = cells[["seeds", "missing"]].fillna("")
    cells["complete"] = (cells.n > 0) & (cells.n == cells.owed)
    return cells


def summarize(runs: list) -> Summary:
    """The cells of the main tables (runs of task transfer left out by the caller)."""
    frame = runs_frame(runs)
    owed = owed_seeds(frame[frame.shots > 0], KEYS, "shots", ["benchmark"], ["benchmark"])
    cells = cell_stats(frame, pd.concat([frame[KEYS + ["seed"]], owed]).drop_duplicates(), KEYS)
    tasks = pd.DataFrame([(r.benchmark, r.method, r.config, r.shots, str(r.seed), i, task, value)
                          for i, r in enumerate(runs) if r.score is not None
                          for task, value in r.tasks.items()],
                         columns=KEYS + ["seed", "run", "task", "score"])
    by_seed = tasks.groupby(KEYS + ["task", "seed"], sort=False)["score"].last()
    task_cells = by_seed.groupby(KEYS + ["task"], sort=False).agg([("mean", mean), ("std", pstd),
                                                                   ("n", "size")])
    task_cells = task_cells.join(cells["owed"], on=KEYS)
    return Summary(cells, task_cells, _task_order(frame, tasks), row_costs(runs))


def row_costs(runs: list) -> pd.DataFrame:
    """Per table row (index ``ROW``) of the runs with a score: ``params``, the parameter counts
    they record as text (``81,920``; two counts joined by `` / ``; "" for none), ``train_min``,
    the mean of their recorded training times in minutes (NaN for none), and ``devices``, the
    devices those times were measured on (", "-joined, "" for none)."""
    frame = pd.DataFrame([{"benchmark": r.benchmark, "method": r.method, "config": r.config,
                           "params": r.params,
                           "minutes": r.train_seconds / 60 if r.train_seconds is not None else np.nan,
                           "device": (r.device or "unknown device") if r.train_seconds is not None else None}
                          for r in runs if r.score is not None],
                         columns=ROW + ["params", "minutes", "device"])

    def counts(values: pd.Series) -> str:
        return " / ".join(f"{int(v):,}" for v in sorted(set(values.dropna())))

    def minutes(values: pd.Series) -> float:
        return mean(values.dropna()) if values.notna().any() else float("nan")

    def devices(values: pd.Series) -> str:
        return ", ".join(sorted(set(values.dropna())))
    return frame.groupby(ROW, sort=False).agg(params=("params", counts), train_min=("minutes", minutes),
                                              devices=("device", devices))


def _task_order(frame: pd.DataFrame, tasks: pd.DataFrame) -> dict:
    """{benchmark: tasks}: by table row, then cell, as first found (rows and cells too)."""
    rank = pd.DataFrame({"row": frame.groupby(ROW, sort=False).ngroup(),
                         "cell": frame.groupby(KEYS, sort=False).ngroup()})
    first = tasks.join(rank, on="run").sort_values(["row", "cell"], kind="stable") \
        .drop_duplicates(["benchmark", "task"])
    return {bench: list(group.task) for bench, group in first.groupby("benchmark", sort=False)}


def of_benchmark(frame: pd.DataFrame, bench: str) -> pd.DataFrame:
    """The rows of ``frame`` (indexed by benchmark first) of one benchmark, in their order."""
    return frame[frame.index.get_level_values("benchmark") == bench]


def row_average(cells: pd.DataFrame) -> pd.DataFrame:
    """Per table row with few-shot cells: ``value``, the mean over them of their means, and
    ``complete`` (the value counts only then)."""
    few = cells[cells.index.get_level_values("shots") > 0]
    return few.groupby(level=ROW).agg(value=("mean", mean), complete=("complete", "all"))


# ----------------------------------------------------------------------------- Markdown
def cell_text(cell: pd.Series) -> str:
    """``m ± s``, ``m ± s (n/N seeds)``, ``m ± s (k read from log.txt)`` (both: ``(n/N seeds,
    k read from log.txt)``) or ``missing``."""
    n, owed = int(cell.n), int(cell.owed)  # a row of numbers only comes as floats
    if not n:
        return "missing"
    notes = [f"{n}/{owed} seeds"] if n < owed else []
    if cell.get("from_log", 0):
        notes.append(f"{int(cell.from_log)} read from log.txt")
    text = f"{cell['mean']:.2f} ± {cell['std']:.2f}"
    return text + f" ({', '.join(notes)})" if notes else text


def shots_label(k: int) -> str:
    return "0 (zero-shot)" if k == 0 else f"{k} shot" + ("s" if k > 1 else "")


def md_row(cells: Iterable) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def md_table(table: pd.DataFrame) -> list[str]:
    """The lines of a Markdown table: the columns' names, then each row."""
    head = list(table.columns)
    return [md_row(head), md_row(["---"] * len(head))] + [md_row(r) for r in table.itertuples(index=False)]


def bench_table(cells: pd.DataFrame, costs: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """method x shots of one benchmark's cells, with the average over shots, then ``#params``
    and ``train min`` from ``costs`` (``row_costs``; blank without)."""
    wide = unstack(cells.apply(cell_text, axis=1), "shots").fillna("")
    wide.columns = [shots_label(k) for k in wide.columns]
    avg = row_average(cells)
    wide["avg"] = pd.Series(np.where(avg.complete, avg.value.map("{:.2f}".format), "incomplete"),
                            index=avg.index, dtype=object)
    mine = costs.reindex(wide.index) if costs is not None else pd.DataFrame(index=wide.index)
    wide["#params"] = mine.get("params", pd.Series(dtype=object)).reindex(wide.index)
    wide["train min"] = [minutes_text(row) for row in mine.reindex(columns=["train_min", "devices"]).itertuples()]
    return wide.fillna("").reset_index().drop(columns="benchmark")


def minutes_text(row) -> str:
    """``12.34`` (a row's ``row_costs``), with its devices when they are several; "" without."""
    if row.train_min != row.train_min:  # NaN: no time recorded
        return ""
    devices = row.devices if isinstance(row.devices, str) else ""
    return f"{row.train_min:.2f}" + (f" ({devices})" if ", " in devices else "")


def task_table(cells: pd.DataFrame, tasks: pd.DataFrame, order: list) -> pd.DataFrame:
    """method, config, shots x task of one benchmark: a task a row reports nowhere stays blank."""
    wide = tasks.apply(cell_text, axis=1).unstack("task").reindex(index=cells.index, columns=order)
    reported = wide.notna().groupby(level=ROW).transform("any")
    wide = wide.where(wide.notna(), np.where(reported, "missing", ""))
    wide = wide.sort_index().droplevel("benchmark").reset_index()
    wide["shots"] = wide["shots"].astype(str)
    return wide


def unstack(texts: pd.Series, level) -> pd.DataFrame:
    """``texts`` with ``level`` as columns, rows and columns sorted (pandas keeps them in the
    order first found)."""
    wide = texts.unstack(level).sort_index()
    return wide[sorted(wide.columns)]


def markdown(summary: Summary, runs: list) -> str:
    out = []
    cells, tasks = summary.cells, summary.tasks
    costs = summary.costs
    for bench, group in cells.groupby(level="benchmark"):
        mine = of_benchmark(costs, bench) if costs is not None else None
        devices = sorted({d for text in (mine.devices if mine is not None else []) if text
                          for d in text.split(", ")})
        where = f", on {', '.join(devices)}" if devices else ""
        out.append(f"## {bench}\n\nMean task score (%): mean ± std over seeds. `#params`: the parameters "
                   f"the optimizer updates; `train min`: mean training time of a run in minutes (the "
                   f"training epochs, no evaluation){where}.\n")
        out += md_table(bench_table(group, mine))
        order = summary.task_order.get(bench, [])
        if len(order) > 1:
            out.append("\nPer task (each task's declared metric, %):\n")
            out += md_table(task_table(group, of_benchmark(tasks, bench), order))
        out.append("")
    b2n = base_to_new(cells)
    if b2n:
        out.append(b2n)
    failed = [r for r in runs if r.score is None]
    if failed:
        out.append("## Runs without a result\n")
        out += [f"- {r.path}: {r.reason}" if r.reason else f"- {r.path}" for r in failed]
        out.append("")
    return "\n".join(out)


def base_to_new(cells: pd.DataFrame) -> str:
    """Base, new and their harmonic mean where train_base and test_new runs of a benchmark exist."""
    done = cells[cells.n > 0].reset_index()
    done["text"] = [cell_text(c) for _, c in done.iterrows()]
    split = done.benchmark.str.extract(r"^(?P<name>.*) \[(?P<split>train_base|test_new)\]$")
    done = done.join(split).dropna(subset=["split"])
    pairs = done[done.split == "train_base"].merge(done[done.split == "test_new"],
                                                   on=["name", "method", "config", "shots"],
                                                   suffixes=("_base", "_new"))
    if pairs.empty:
        return ""
    pairs = pairs.sort_values(["benchmark_base", "method", "config", "shots"])
    lines = []
    for p in pairs.itertuples():
        b, n = p.mean_base, p.mean_new
        h = 2 * b * n / (b + n) if b + n else float("nan")
        lines.append(md_row([p.name, p.method, p.config, str(p.shots), p.text_base, p.text_new, f"{h:.2f}"]))
    head = ["benchmark", "method", "config", "shots", "base", "new", "H"]
    return "\n".join(["## Base-to-new\n", md_row(head), md_row(["---"] * len(head))] + lines + [""])


# ----------------------------------------------------------------------------- CSV files
def csv_text(table: pd.DataFrame) -> str:
    return table.to_csv(index=False, lineterminator=CSV_LINE_END, quoting=csv.QUOTE_MINIMAL)


def table_csv(summary: Summary) -> str:
    cells = summary.cells.sort_index().reset_index()
    cells = cells.rename(columns={"n": "n_seeds", "owed": "expected_seeds", "missing": "missing_seeds"})
    return csv_text(cells[KEYS + ["mean", "std", "n_seeds", "expected_seeds", "seeds", "missing_seeds"]])


def tasks_csv(summary: Summary) -> str:
    tasks = summary.tasks.reset_index().sort_values(KEYS, kind="stable")  # tasks as each cell lists them
    tasks = tasks.rename(columns={"n": "n_seeds", "owed": "expected_seeds"})
    return csv_text(tasks[KEYS + ["task", "mean", "std", "n_seeds", "expected_seeds"]])


RUN_COLUMNS = ["benchmark", "method", "config", "shots", "seed", "score", "source", "path", "reason",
               "params", "train_seconds", "device"]


def runs_csv(runs: list) -> str:
    """Every run as read (object columns: a seed or score stays as recorded, None is blank)."""
    return csv_text(pd.DataFrame([[getattr(r, c) for c in RUN_COLUMNS] for r in runs], columns=RUN_COLUMNS,
                                 dtype=object))


# ----------------------------------------------------------------------------- task transfer
def summarize_transfer(transfer: list) -> Optional[pd.DataFrame]:
    """The cells of the task-transfer tables (index benchmark, method, shots, task) from
    [(place, run)], of the evaluations on the held-out task (None: there are none). Every
    column owes every task of its benchmark, with every seed it has anywhere."""
    tests = [(place, run) for place, run in transfer if place[2] == "test"]
    if not tests:
        return None
    frame = runs_frame([run for _, run in tests], [dict(zip(["benchmark", "task", "stage", "method", "shots"],
                                                            place)) for place, _ in tests])
    keys = COLUMN + ["task"]
    return cell_stats(frame, owed_seeds(frame, keys, "task", ["benchmark"], COLUMN), keys)


def transfer_markdown(cells: pd.DataFrame) -> str:
    """A table "held-out task x method" per benchmark, with the mean over held-out tasks."""
    out = []
    for bench, group in cells.groupby(level="benchmark"):
        group = group.droplevel("benchmark").sort_index()  # held-out tasks in order (their mean too)
        wide = unstack(group.apply(cell_text, axis=1), ["method", "shots"]).fillna("")
        # SoftCPT first, zero-shot last
        order = sorted(wide.columns, key=lambda c: (c[1] == 0, not c[0].startswith("SoftCPT"), c[0], c[1]))
        columns = group.groupby(level=["method", "shots"]).agg(value=("mean", mean),
                                                              complete=("complete", "all"))
        means = ["incomplete" if not columns.complete[c] else f"{columns.value[c]:.2f}" for c in order]
        table = wide[order].reset_index()
        table.columns = ["held-out task"] + [m if k == 0 else f"{m} ({shots_label(k)})" for m, k in order]
        table.loc[len(table)] = ["mean"] + means
        out.append(f"## Task transfer: {bench}\n\nScore (%) of each task (its declared metric) when "
                   "the model was trained on the other tasks only and evaluated on this one alone: "
                   "mean ± std over seeds.\n")
        out += md_table(table) + [""]
    return "\n".join(out)


def transfer_csv(cells: pd.DataFrame) -> str:
    table = cells.sort_index().reset_index().rename(
        columns={"task": "held_out_task", "n": "n_seeds", "owed": "expected_seeds"})
    return csv_text(table[["benchmark", "held_out_task", "method", "shots", "mean", "std", "n_seeds",
                           "expected_seeds"]])


# ----------------------------------------------------------------------------- --paper
# The published numbers (docs/benchmarks.md#published-numbers), one row per benchmark,
# method, backbone and shot count ("avg": the mean over 1, 2, 4, 8 and 16 shots), with the
# method's published #params and training minutes where the paper gives them (else blank).
PAPER_CSV = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                         "paper_results.csv")
# The shot counts the paper's "avg" is the mean over.
PAPER_SHOTS = (1, 2, 4, 8, 16)
# Config name prefixes of each backbone's configs (configs/trainers/*/).
CONFIG_BACKBONES = {"rn50": "RN50", "vit_b16": "ViT-B/16"}


def read_paper(path: str = PAPER_CSV) -> list[dict]:
    """The published numbers: dicts with benchmark, method, paper_name, backbone, shots, score,
    params (int or None) and train_min (float or None)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["score"] = float(row["score"])
        row["shots"] = row["shots"] if row["shots"] == "avg" else int(row["shots"])
        row["params"] = int(row["params"]) if row.get("params") else None
        row["train_min"] = float(row["train_min"]) if row.get("train_min") else None
    return rows


def config_backbone(config: str) -> Optional[str]:
    """RN50 for ``rn50_ep50``, ViT-B/16 for ``vit_b16_ep50`` ...; None for other configs."""
    for prefix, backbone in CONFIG_BACKBONES.items():
        if config.lower().startswith(prefix):
            return backbone
    return None


def training_settings(runs: list) -> dict:
    """{(benchmark, method, config): set of (param_dtype, steps_per_batch)} of the runs with a score."""
    out: dict = {}
    for run in runs:
        if run.score is not None:
            out.setdefault((run.benchmark, run.method, run.config), set()).add(run.setting)
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


def our_value(row: pd.DataFrame, shots) -> tuple[Optional[float], str]:
    """Our mean for a published shot count, from one table row's cells (index shots): ``avg`` is
    the mean over the paper's shot counts (``PAPER_SHOTS``), every one complete, else
    ``incomplete: shots 4 (2/3 seeds), 8, 16`` naming the rest; or the zero-shot score for a
    method without shots."""
    if shots == "avg":
        few = row[row.index > 0]
        if few.empty:
            return (row.loc[0, "mean"], "") if 0 in row.index and row.loc[0, "n"] else (None, "no run")
        gaps = []
        for k in PAPER_SHOTS:
            if k not in few.index or not few.loc[k, "n"]:
                gaps.append(str(k))
            elif not few.loc[k, "complete"]:
                gaps.append(f"{k} ({int(few.loc[k, 'n'])}/{int(few.loc[k, 'owed'])} seeds)")
        if gaps:
            return None, "incomplete: shots " + ", ".join(gaps)
        return mean(few.loc[list(PAPER_SHOTS), "mean"]), ""
    if shots not in row.index or not row.loc[shots, "n"]:
        return None, "no run"
    return row.loc[shots, "mean"], "" if row.loc[shots, "complete"] else "incomplete seeds"


def paper_comparison(summary: Summary, runs: list, paper: Optional[list[dict]] = None) -> str:
    """Markdown: every published number of the benchmarks in ``summary`` beside ours, with the
    difference (ours - paper), one row per our config of the published backbone."""
    paper = read_paper() if paper is None else paper
    settings = training_settings(runs)
    costs = summary.costs if summary.costs is not None else row_costs([])
    published = sorted({p["benchmark"] for p in paper})
    out = []
    for bench, cells in summary.cells.groupby(level="benchmark"):
        if bench.endswith("]"):
            continue
        rows = [p for p in paper if p["benchmark"] == bench]
        if not rows:
            out.append(f"## {bench}: published numbers\n\nThe paper publishes none for {bench!r} "
                       f"(docs/paper_results.csv has: {', '.join(published)}).\n")
            continue
        out.append(f"## {bench}: published numbers beside ours\n\n"
                   "Mean task score (%), paper (docs/paper_results.csv) and ours (mean over seeds); "
                   "`avg`: mean over 1, 2, 4, 8 and 16 shots.\n")
        head = ["method (paper)", "backbone", "shots", "paper", "ours: method", "config", "ours",
                "ours - paper", "training", "#params: paper / ours", "train min: paper / ours"]
        out += [md_row(head), md_row(["---"] * len(head))]
        cells = cells.droplevel("benchmark")
        ours_rows = sorted(set(cells.index.droplevel("shots")))
        for p in rows:
            ours = [(m, c) for m, c in ours_rows if m == p["method"] and config_backbone(c) == p["backbone"]]
            if not ours:
                out.append(md_row([p["paper_name"], p["backbone"], p["shots"], f"{p['score']:.2f}",
                                   p["method"], "", "no run", "", "", cost_pair(p, None, "params"),
                                   cost_pair(p, None, "train_min")]))
            for method, config in ours:
                mine = (cells.index.get_level_values("method") == method) & \
                    (cells.index.get_level_values("config") == config)  # in the order found, for the mean
                value, why = our_value(cells[mine].droplevel(["method", "config"]), p["shots"])
                diff = f"{value - p['score']:+.2f}" if value is not None else ""
                setting = settings.get((bench, method, config))
                mine = costs.loc[(bench, method, config)] if (bench, method, config) in costs.index else None
                out.append(md_row([p["paper_name"], p["backbone"], p["shots"], f"{p['score']:.2f}",
                                   method, config, f"{value:.2f}" if value is not None else why,
                                   diff, setting_label(setting) if setting else "",
                                   cost_pair(p, mine, "params"), cost_pair(p, mine, "train_min")]))
        out.append("")
    return "\n".join(out)


def cost_pair(published: dict, ours: Optional[pd.Series], what: str) -> str:
    """``81,920 / 81,920`` (``params``) or ``49.53 / 0.52 (cpu)`` (``train_min``): the paper's
    value and ours (``row_costs``), each ``–`` where there is none; "" when neither has one."""
    if what == "params":
        paper = f"{published['params']:,}" if published.get("params") is not None else "–"
        mine = ours.params if ours is not None and ours.params else "–"
    else:
        paper = f"{published['train_min']:.2f}" if published.get("train_min") is not None else "–"
        timed = ours is not None and ours.train_min == ours.train_min  # not NaN
        mine = f"{ours.train_min:.2f} ({ours.devices})" if timed else "–"
    return "" if paper == mine == "–" else f"{paper} / {mine}"


# ----------------------------------------------------------------------------- plot
def plot_png(summary: Summary) -> Optional[bytes]:
    """curves.png: accuracy against shots, one panel per benchmark (base-to-new folders left
    out); None when there is no such benchmark."""
    benches = [b for b in sorted(set(summary.cells.index.get_level_values("benchmark")))
               if not b.endswith("]")]
    if not benches:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(len(benches), 3)
    rows_n = math.ceil(len(benches) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.5 * cols, 3.6 * rows_n), squeeze=False)
    for ax, bench in zip(axes.flat, benches):
        cells = of_benchmark(summary.cells, bench).droplevel("benchmark").sort_index()
        shots = sorted(set(cells.index.get_level_values("shots")))
        x_of = {k: i for i, k in enumerate(shots)}  # evenly spaced, as CoOp's figures
        one_config = cells.index.get_level_values("config").nunique() == 1
        for i, ((method, config), row) in enumerate(cells.groupby(level=["method", "config"])):
            row = row[row.n > 0].droplevel(["method", "config"])
            if row.empty:
                continue
            ks = list(row.index)
            xs, means = [x_of[k] for k in ks], list(row["mean"])
            label = method if one_config else f"{method} ({config})"
            colour = f"C{i % 10}"
            if ks == [0]:
                ax.plot(xs, means, "*", ms=12, color=colour, label=label)
                continue
            ax.errorbar(xs, means, yerr=list(row["std"]), marker="o", ms=4, capsize=2,
                        color=colour, label=label)
            hollow = [(x, m) for x, m, done in zip(xs, means, row.complete) if not done]
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
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    return png.getvalue()
