"""The multi-task evaluator (trainers/parts/evaluator.py) and a trainer's test(): an image is predicted
among its own task's classes only (docs/method.md#forward-pass), whatever the other tasks'
logits are."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader
from yacs.config import CfgNode as CN

pytest.importorskip("dassl", reason="Dassl is not installed")

from datasets.task_info import TaskInfo  # noqa: E402
from trainers.parts import evaluation  # noqa: E402
from trainers.parts.evaluator import MultiTaskClassification  # noqa: E402

# Task "a" owns global labels 0-1, task "b" labels 2-4.
TASKS = TaskInfo(keys=("a", "b"), names=("task a", "task b"),
                 classnames=(("red", "blue"), ("circle", "square", "star")),
                 metrics=("overall_acc", "overall_acc"))
LABELS = torch.tensor([0, 1, 3, 4, 2])
# Each row's highest logit is a class of the OTHER task; the expected prediction is the
# highest among the row's own task's columns, written out by hand.
LOGITS = torch.tensor([
    [2.0, 1.0, 9.0, 0.0, 0.0],   # a, label 0: b's class 2 is highest; own task -> 0 (right)
    [0.5, 1.0, 0.0, 0.0, 7.0],   # a, label 1: b's class 4 is highest; own task -> 1 (right)
    [10.0, 10.0, 1.0, 2.0, 0.0],  # b, label 3: a's classes are highest; own task -> 3 (right)
    [5.0, 0.0, 1.0, 2.0, 0.0],   # b, label 4: a's class 0 is highest; own task -> 3 (wrong)
    [0.0, 8.0, 0.0, -1.0, -2.0],  # b, label 2: a's class 1 is highest; own task -> 2 (right)
])
OWN_TASK_PREDICTIONS = [0, 1, 3, 3, 2]


def evaluator() -> MultiTaskClassification:
    cfg = CN({"DATASET": CN({"NAME": "MultiTask"})})
    return MultiTaskClassification(cfg, task_info=TASKS)


def test_each_image_is_predicted_among_its_own_tasks_classes_only():
    ev = evaluator()
    ev.process(LOGITS, LABELS)
    assert ev._y_pred[0].tolist() == OWN_TASK_PREDICTIONS
    results = ev.evaluate()
    a, b = ev.report["tasks"]
    assert (a["correct"], a["total"]) == (2, 2)  # plain argmax: 0 of 2 (task b's columns win)
    assert (b["correct"], b["total"]) == (2, 3)  # plain argmax: 0 of 3
    assert results["accuracy"] == pytest.approx((100.0 + 200.0 / 3) / 2)


def test_the_test_loop_predicts_within_each_images_task_across_batches(capsys):
    """Through Dassl's test loop on features (trainers/parts/evaluation.py), batches mixing tasks."""
    data = DataLoader(list(range(len(LABELS))), batch_size=2)
    ev = evaluator()

    def features(loader, split):
        return torch.eye(len(LABELS)), LABELS  # one-hot "features": row i picks LOGITS[i]

    evaluation.evaluate_split(ev, data, "test", features, lambda u, y: u @ LOGITS,
                              torch.device("cpu"))
    capsys.readouterr()
    assert [int(p) for batch in ev._y_pred for p in batch] == OWN_TASK_PREDICTIONS
    assert [r["correct"] for r in ev.report["tasks"]] == [2, 2]


def test_a_trainers_test_scores_each_image_within_its_own_task(toy_root, tmp_path):
    """A real trainer's test() (ZeroshotCLIP on the toy benchmark's three tasks), its logits
    replaced by a constructed case: every image's true class is the highest of its own task's
    columns, and the next task's first class is higher still. Within the own task every image
    is right (100 in every task); a prediction over all classes would get none right. Builds
    a trainer and encodes the toy test images: about 1.5 s."""
    import train
    from dassl.engine import build_trainer
    args = train.build_parser().parse_args([
        "--root", str(toy_root), "--seed", "1", "--trainer", "ZeroshotCLIP", "--output-dir",
        str(tmp_path / "run"), "--dataset-config-file", "configs/datasets/toy.yaml",
        "--config-file", "configs/trainers/ZeroshotCLIP/tiny.yaml", "DATASET.NUM_SHOTS", "2",
        "TEST.FEATURE_CACHE_DIR", str(tmp_path / "features")])
    trainer = build_trainer(train.setup_cfg(args))
    info = trainer.task_info
    offsets = torch.tensor(info.offsets)
    seen = []

    def logits(u, labels):
        task = torch.tensor([info.task_of_label(int(y)) for y in labels])
        out = torch.zeros(len(labels), offsets[-1].item())
        out[torch.arange(len(labels)), labels] = 5.0  # the true class: highest of its own task
        out[torch.arange(len(labels)), offsets[(task + 1) % info.num_tasks]] = 9.0  # another task's
        seen.append(task)
        return out

    trainer.feature_logits = logits
    trainer.test("test")
    assert len(torch.cat(seen).unique()) == info.num_tasks == 3  # every task was scored
    assert [t["score"] for t in trainer.evaluator.report["tasks"]] == [100.0, 100.0, 100.0]
