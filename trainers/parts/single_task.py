"""Dassl trainers that score an image against every class they were given (one softmax).

This project's trainers (``MultiTaskPromptTrainer`` and its subclasses) score each image
within its own task: ``SCORES_WITHIN_TASKS = True``. Any other registered Dassl trainer
(CoOp's, KgCoOp's, yours) treats a benchmark as one dataset of all its tasks' classes, so
its accuracy on a benchmark is not a multi-task score. train.py therefore:

* refuses such a trainer on a benchmark of several tasks, naming the way that works:
  scripts/per_task/main.sh, one run per task with the same shots, seeds and splits, merged
  into one multi-task result (scripts/merge_tasks.py), as the paper ran its single-task
  baselines;
* on one task (``DATASET.SUBSAMPLE_TASKS`` with one task, or a plain dataset) scores it as
  that task, with the task's key, name and declared metric, and writes results.json like
  this project's trainers do.

docs/add_a_trainer.md#other-dassl-trainers.
"""
from __future__ import annotations

from typing import Optional

from dassl.evaluation import build_evaluator

from config import ConfigError
from config.run_settings import effective_config
from datasets.task_info import TaskInfo, task_info_of
from trainers.parts import evaluation

GUIDE = "docs/add_a_trainer.md#other-dassl-trainers"


def scores_within_tasks(trainer: object) -> bool:
    return bool(getattr(trainer, "SCORES_WITHIN_TASKS", False))


def adopt(trainer, cfg) -> Optional[TaskInfo]:
    """For a trainer that does not score within tasks: its one task (its evaluator then scores
    that task), or ConfigError naming the per-task way on several tasks. None for ours."""
    if scores_within_tasks(trainer):
        return None
    info = task_info_of(trainer.dm.dataset, cfg.DATASET.NAME)
    if info.num_tasks > 1:
        raise ConfigError(
            f"trainer {cfg.TRAINER.NAME} scores each image against all {len(info.all_classnames)} "
            f"classes of the {info.num_tasks} tasks ({', '.join(info.keys)}) with one softmax, "
            "which is not a multi-task score. Run it on every task separately and merge: bash "
            f"scripts/per_task/main.sh {cfg.TRAINER.NAME} <BENCHMARK> <CFG> (or one task with "
            f"DATASET.SUBSAMPLE_TASKS) ({GUIDE}).")
    trainer.evaluator = build_evaluator(cfg, lab2cname=trainer.lab2cname, task_info=info)
    return info


def record_results(trainer, cfg, epoch: Optional[int] = None) -> Optional[str]:
    """results.json of a trainer ``adopt`` took on, from its evaluator's last report; None when
    it evaluated nothing (TEST.NO_TEST) or is one of ours (they write their own)."""
    report = getattr(trainer.evaluator, "report", None)
    if scores_within_tasks(trainer) or not report or not cfg.OUTPUT_DIR:
        return None
    last = trainer.epoch if epoch is None else epoch
    node = cfg.TRAINER.get(cfg.TRAINER.NAME.upper(), {})
    setting = evaluation.training_setting(node, None)
    # what the optimizers update; its training time is not measured (its loop is its own)
    costs = evaluation.run_costs(getattr(trainer, "_optims", {}).values(), None)
    out = evaluation.results_report(cfg, report, "test", last, None, effective_config(cfg), setting, costs)
    out["scoring"] = "one task, scored by a single-task trainer"
    return evaluation.write_results(cfg.OUTPUT_DIR, "test", out)
