"""Merge the per-task runs of a single-task trainer into one multi-task result.

    python scripts/merge_tasks.py count BENCHMARK_YAML     # how many tasks the benchmark has
    python scripts/merge_tasks.py merge SEED_DIR N         # SEED_DIR/task0 ... task<N-1> -> SEED_DIR

scripts/per_task/main.sh runs a trainer that scores images against all the classes it is
given (one softmax: CoOp's own trainer, KgCoOp's, ...) on each task of a benchmark
separately, with ``DATASET.SUBSAMPLE_TASKS`` one task, into ``<seed folder>/task<i>/``: the
same shots, seeds and splits as the joint runs, since every member draws its own shots.
``merge`` then writes ``<seed folder>/results.json`` in the form of this project's runs
(benchmark score: the mean of the task scores; each task's own record) and ``done``, so
scripts/results.py tables it beside them. It merges only when every task's run has finished,
all with one trainer, shots and seed; otherwise it writes nothing and says which task is
missing. Torch-free. docs/add_a_trainer.md#other-dassl-trainers.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from atomic_files import atomic_write  # noqa: E402
from config.merge import load_yaml  # noqa: E402

SAME = ("trainer", "shots", "seed", "config", "backbone")
SUMMED = ("learnable_params", "train_seconds")  # per-task counts and times add up to the method's


class MergeError(ValueError):
    """The per-task runs cannot be merged (yet): the message says which and why."""


def count_tasks(benchmark_yaml: str) -> int:
    """Tasks of a benchmark config: its MultiTask entries, or 1 for a plain dataset."""
    data = load_yaml(benchmark_yaml, "benchmark config")
    tasks = (data.get("DATASET") or {}).get("MULTITASK", {}).get("TASKS") or []
    return len(tasks) if (data.get("DATASET") or {}).get("NAME") == "MultiTask" else 1


def task_dir(seed_dir: str, index: int) -> str:
    return os.path.join(seed_dir, f"task{index}")


def read_task(seed_dir: str, index: int) -> dict:
    folder = task_dir(seed_dir, index)
    path = os.path.join(folder, "results.json")
    if not os.path.isfile(os.path.join(folder, "done")) or not os.path.isfile(path):
        raise MergeError(f"{folder} has not finished (no done / results.json)")
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, ValueError) as err:
        raise MergeError(f"{path} cannot be read ({err})") from None
    tasks = report.get("tasks") if isinstance(report, dict) else None
    if not isinstance(tasks, list) or len(tasks) != 1:
        raise MergeError(f"{path} holds {len(tasks) if isinstance(tasks, list) else 'no'} task results; a "
                         "per-task run holds exactly one (DATASET.SUBSAMPLE_TASKS one task)")
    return report


def merge(seed_dir: str, n_tasks: int) -> dict:
    """The merged report of ``seed_dir``'s ``n_tasks`` per-task runs (MergeError if not ready)."""
    reports = [read_task(seed_dir, i) for i in range(n_tasks)]
    first = reports[0]
    for i, report in enumerate(reports[1:], start=1):
        differ = [k for k in SAME if report.get(k) != first.get(k)]
        if differ:
            raise MergeError(f"{task_dir(seed_dir, i)} was run with other {', '.join(differ)} than "
                             f"{task_dir(seed_dir, 0)}: rerun it with the sweep's settings")
    tasks = []
    for i, report in enumerate(reports):
        row = dict(report["tasks"][0])
        row["task"] = i
        tasks.append(row)
    scores = [t["score"] for t in tasks]
    out = {"score": sum(scores) / len(scores), "tasks": tasks,
           "total": sum(int(r.get("total", 0)) for r in reports)}
    out.update({k: first.get(k) for k in SAME})
    out.update(dataset="MultiTask", split="test", scoring="per task: one run per task, merged",
               per_task_runs=[os.path.basename(task_dir(seed_dir, i)) for i in range(n_tasks)])
    for key in SUMMED:
        values = [r.get(key) for r in reports]
        if all(isinstance(v, (int, float)) for v in values):
            out[key] = sum(values)
    for key in ("train_device", "param_dtype", "steps_per_batch", "prec"):
        if key in first:
            out[key] = first[key]
    return out


def write_merged(seed_dir: str, n_tasks: int) -> str:
    report = merge(seed_dir, n_tasks)
    path = os.path.join(seed_dir, "results.json")
    atomic_write(path, json.dumps(report, indent=2))
    atomic_write(os.path.join(seed_dir, "done"), "finished\n")  # last, as train.py does
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["count"] and len(argv) == 2:
        print(count_tasks(argv[1]))
        return 0
    if argv[:1] == ["merge"] and len(argv) == 3 and argv[2].isdigit():
        try:
            print(f"[per task] merged {argv[2]} task(s) into {write_merged(argv[1], int(argv[2]))}")
        except MergeError as err:
            print(f"[per task] not merged: {err}", file=sys.stderr)
            return 1
        return 0
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
