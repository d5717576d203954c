"""The evaluator's log.txt read by both parser families, with the regexes of docs/benchmarks.md#log-lines."""
from __future__ import annotations

import os
import re
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("dassl", reason="Dassl is not installed")

from yacs.config import CfgNode as CN  # noqa: E402

from datasets.task_info import TaskInfo  # noqa: E402
from scripts import results  # noqa: E402
from trainers.parts.evaluator import MultiTaskClassification  # noqa: E402
from trainers.run.logs import open_run_log, restore_stdout  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def documented_regexes() -> dict[str, re.Pattern]:
    """The three regexes of the table in docs/benchmarks.md#log-lines, by what they read."""
    with open(os.path.join(REPO, "docs", "benchmarks.md"), encoding="utf-8") as f:
        section = f.read().split("## Log lines", 1)[1]
    rows = re.findall(r"^\| (CoOp's `parse_test_res.py`|the original SoftCPT code's scripts) \| "
                      r"([^|]+) \| `(.+)` \|$", section, flags=re.M)
    out = {f"{who.split()[0]} {what.strip()}": re.compile(rx) for who, what, rx in rows}
    assert len(out) == 3, rows
    return out


def write_log(tmp_path) -> str:
    """An evaluation of two tasks whose scores are known by construction, tee'd into log.txt."""
    # task 0: 1,200 images of 2 classes, 900 right (overall_acc 75%); its total needs a
    # thousands separator in Dassl's style, which a number parser must not see
    # task 1: classes of 4 and 2 images, 1 of 4 and 2 of 2 right (mean_acc (25 + 100) / 2 = 62.5%)
    info = TaskInfo(("big", "small"), ("big task", "small task"), (("a", "b"), ("c", "d")),
                    ("overall_acc", "mean_acc"))
    y_true = np.array([0] * 600 + [1] * 600 + [2] * 4 + [3] * 2)
    y_pred = y_true.copy()
    y_pred[:300] = 1  # 300 wrong in task 0
    y_pred[1200:1203] = 3  # 3 of class c wrong
    logits = torch.full((len(y_true), 4), -1.0)
    logits[torch.arange(len(y_true)), torch.from_numpy(y_pred)] = 1.0
    evaluator = MultiTaskClassification(CN(), task_info=info)
    previous = sys.stdout
    open_run_log(str(tmp_path))
    try:
        print("Evaluate on the *test* set")  # as the test loop does (trainers/parts/evaluation.py)
        evaluator.process(logits, torch.from_numpy(y_true))
        evaluator.evaluate()
    finally:
        restore_stdout(previous)
    return str(tmp_path / "log.txt")


def test_both_parsers_read_our_log(tmp_path):
    path = write_log(tmp_path)
    rx = documented_regexes()
    lines = open(path).read().splitlines()
    tasks = [m.groups() for m in map(rx["the per-task line"].match, lines) if m]
    assert [(int(i), name, int(total), float(metric)) for i, name, total, metric in tasks] == \
        [(0, "big: big task", 1200, 75.0), (1, "small: small task", 6, 62.5)]
    overall = [float(m.group(1)) for m in map(rx["the benchmark score"].match, lines) if m]
    assert overall == [68.75]  # (75 + 62.5) / 2
    coop = [float(m.group(1)) for m in map(rx["CoOp's benchmark score"].search, lines) if m]
    assert coop == [68.75]  # and not overall_accuracy's (900 + 3) / 1206


def test_results_py_reads_the_task_scores_from_our_log(tmp_path):
    score, tasks, _ = results.read_log(write_log(tmp_path))
    assert score == 68.75 and tasks == {"big": 75.0, "small": 62.5}


def test_results_py_still_reads_the_older_task_line(tmp_path):
    path = tmp_path / "log.txt"
    path.write_text("Evaluate on the *test* set\n=> result\n"
                    "* task: 0 (shapes: shape recognition)\ttotal: 1,040\toverall_acc: 30.00%\t"
                    "mean_acc: 28.00%\tscore (mean_acc): 28.00%\n* accuracy: 28.00%\n")
    assert results.read_log(str(path))[:2] == (28.0, {"shapes": 28.0})
