"""What trainers and the evaluator need to know about the tasks of a benchmark.

A multi-task benchmark concatenates the classes of its tasks in task order, so
task ``t`` owns the global labels ``offsets[t] .. offsets[t + 1] - 1``. The task
of a sample is therefore recoverable from its label alone; Dassl's ``Datum``
stays unchanged.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Sequence

METRICS = ("overall_acc", "mean_acc")
DEFAULT_TEMPLATE = "a photo of a {}."


@dataclass(frozen=True)
class TaskInfo:
    """Per-task facts of a (multi-task) dataset.

    Args:
        keys: short identifier of each task (a dataset name, e.g. ``"OxfordPets"``),
            used in tables and ``results.json``.
        names: the task name fed to the prompt (docs/method.md#forward-pass, step 1).
        classnames: per task, its class names in local label order.
        metrics: per task, ``"overall_acc"`` or ``"mean_acc"``.
        templates: per task, a zero-shot template with one ``{}``.
    """

    keys: tuple[str, ...]
    names: tuple[str, ...]
    classnames: tuple[tuple[str, ...], ...]
    metrics: tuple[str, ...]
    templates: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        n = len(self.keys)
        if not self.templates:
            object.__setattr__(self, "templates", (DEFAULT_TEMPLATE,) * n)
        for what in ("names", "classnames", "metrics", "templates"):
            if len(getattr(self, what)) != n:
                raise ValueError(f"TaskInfo: {what} has {len(getattr(self, what))} entries for {n} tasks")
        for key, metric in zip(self.keys, self.metrics):
            if metric not in METRICS:
                raise ValueError(f"task {key!r}: metric {metric!r} is not one of {METRICS}")

    @classmethod
    def single(cls, key: str, classnames: Sequence[str], metric: str = "overall_acc",
               name: str | None = None, template: str = DEFAULT_TEMPLATE) -> "TaskInfo":
        """A one-task TaskInfo, for a plain (non multi-task) dataset."""
        return cls((key,), (name or key,), (tuple(classnames),), (metric,), (template,))

    @property
    def num_tasks(self) -> int:
        return len(self.keys)

    @property
    def num_classes(self) -> list[int]:
        """K_t for every task."""
        return [len(c) for c in self.classnames]

    @property
    def offsets(self) -> list[int]:
        """Global label of each task's first class, plus the total (length T + 1)."""
        out = [0]
        for k in self.num_classes:
            out.append(out[-1] + k)
        return out

    @property
    def all_classnames(self) -> list[str]:
        """Class names in global label order."""
        return [c for names in self.classnames for c in names]

    @property
    def task_of_class(self) -> list[int]:
        """Task index of every global label."""
        return [t for t, k in enumerate(self.num_classes) for _ in range(k)]

    def task_of_label(self, label: int) -> int:
        """Task index that owns a global label."""
        return bisect.bisect_right(self.offsets, label) - 1


# CoOp's datasets whose declared metric is the mean of per-class accuracies
# (docs/benchmarks.md); every other dataset reports plain top-1.
MEAN_ACC_DATASETS = frozenset({"Caltech101", "FGVCAircraft", "OxfordFlowers", "OxfordPets"})


def task_info_of(dataset: object, name: str) -> TaskInfo:
    """The dataset's own ``task_info`` if it has one, else a one-task description.

    Any registered Dassl dataset therefore works with the multi-task trainers.
    """
    info = getattr(dataset, "task_info", None)
    if info is not None:
        return info
    metric = "mean_acc" if name in MEAN_ACC_DATASETS else "overall_acc"
    return TaskInfo.single(name, dataset.classnames, metric=metric)
