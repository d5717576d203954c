"""Multi-task evaluation (docs/benchmarks.md: per-task metrics and the benchmark score).

The prediction for a test image is the argmax over its own task's classes.
For every task: overall accuracy, mean per-class accuracy, and the task's
declared metric as its score; the benchmark score is the unweighted mean of the
scores over tasks. ``* accuracy:`` carries that mean, so CoOp's
``parse_test_res.py`` reads our logs too; ``* overall_metric:`` repeats it and
every per-task line ends with ``metric: <x.xx>%``, as the original SoftCPT
code's parsers expect (docs/benchmarks.md#log-lines).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import numpy as np
import torch
from dassl.evaluation import EVALUATOR_REGISTRY, EvaluatorBase

from datasets.task_info import TaskInfo
from trainers.parts.losses import own_task_prediction


def task_scores(y_true: np.ndarray, y_pred: np.ndarray, task_info: TaskInfo) -> list[dict]:
    """Per-task accuracies (in %) from global labels and predictions."""
    out = []
    offsets = task_info.offsets
    for t in range(task_info.num_tasks):
        sel = (y_true >= offsets[t]) & (y_true < offsets[t + 1])
        truth, pred = y_true[sel], y_pred[sel]
        total = int(sel.sum())
        correct = int((truth == pred).sum())
        per_class = [float((pred[truth == c] == c).mean()) for c in np.unique(truth)]
        row = {
            "task": t,
            "key": task_info.keys[t],
            "name": task_info.names[t],
            "metric": task_info.metrics[t],
            "total": total,
            "correct": correct,
            "overall_acc": 100.0 * correct / total if total else float("nan"),
            "mean_acc": 100.0 * float(np.mean(per_class)) if per_class else float("nan"),
        }
        row["score"] = row[row["metric"]]
        out.append(row)
    return out


def task_lines(row: dict) -> list[str]:
    """The log lines of one task (docs/benchmarks.md#log-lines).

    The first is the original SoftCPT code's per-task line: three tab-separated
    fields, ending with the task's declared metric, the total without thousands
    separators (its parsers read both as numbers). The second, which starts
    with no ``*`` so that no ``* <keyword>:`` parser counts it, gives both
    accuracies and names the declared metric.
    """
    return [f"* task: {row['task']} ({row['key']}: {row['name']})\ttotal: {row['total']}\t"
            f"metric: {row['score']:.2f}%",
            f"  task {row['task']} ({row['key']}): overall_acc {row['overall_acc']:.2f}%, "
            f"mean_acc {row['mean_acc']:.2f}%; declared metric {row['metric']}"]


@EVALUATOR_REGISTRY.register()
class MultiTaskClassification(EvaluatorBase):
    """Evaluator for models that output logits over all tasks' classes.

    Args:
        cfg: the run's config.
        lab2cname: Dassl's label -> class name map (used when ``task_info`` is None).
        task_info: the benchmark's tasks; None treats the dataset as one task.
    """

    def __init__(self, cfg, lab2cname: Optional[dict] = None,
                 task_info: Optional[TaskInfo] = None, **kwargs) -> None:
        super().__init__(cfg)
        if task_info is None:
            names = [lab2cname[k] for k in sorted(lab2cname)] if lab2cname else []
            task_info = TaskInfo.single(cfg.DATASET.NAME, names)
        self.task_info = task_info
        self.task_of_class = torch.tensor(task_info.task_of_class)
        self.report: dict = {}
        self.reset()

    def reset(self) -> None:
        self._y_true: list[np.ndarray] = []
        self._y_pred: list[np.ndarray] = []

    def process(self, mo: torch.Tensor, gt: torch.Tensor) -> None:
        # mo: (B, C) logits over every class of every task; gt: (B,) global labels
        task_of_class = self.task_of_class.to(mo.device)
        pred = own_task_prediction(mo, task_of_class[gt], task_of_class)
        self._y_true.append(gt.cpu().numpy())
        self._y_pred.append(pred.cpu().numpy())

    def evaluate(self) -> OrderedDict:
        y_true = np.concatenate(self._y_true)
        y_pred = np.concatenate(self._y_pred)
        tasks = task_scores(y_true, y_pred, self.task_info)
        scored = [r["score"] for r in tasks if r["total"]]
        mean = float(np.mean(scored)) if scored else float("nan")
        correct = int((y_true == y_pred).sum())
        lines = ["=> result"]
        for r in tasks:
            lines += task_lines(r)
        lines += [f"* total: {len(y_true):,}", f"* correct: {correct:,}",
                  f"* accuracy: {mean:.2f}%", f"* overall_metric: {mean:.2f}%",
                  f"* overall_accuracy: {100.0 * correct / max(len(y_true), 1):.2f}%"]
        print("\n".join(lines))
        self.report = {"score": mean, "tasks": tasks, "total": int(len(y_true))}
        results = OrderedDict(accuracy=mean)  # first value: what trainer.test() returns
        for r in tasks:
            results[f"task{r['task']}_{r['key']}"] = r["score"]
        return results
