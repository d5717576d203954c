"""Single-task Dassl trainers on a benchmark: refused, or run per task and merged
(trainers/parts/single_task.py, scripts/per_task/main.sh, scripts/merge_tasks.py), and Dassl's
warm-up scheduler on the pinned PyTorch (trainers/run/dassl_compat.py)."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import pytest

from conftest import needs_dassl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------- Dassl's warm-up scheduler
def warmup_lrs(kind: str, epochs: int = 5, lr: float = 0.002, warmup: int = 2, low: float = 1e-5) -> list:
    """The learning rates Dassl's warm-up schedulers give, epoch by epoch, from their definition:
    ``warmup`` epochs at ``low`` (constant) or rising linearly from ``low`` (linear: epoch e > 0
    gets lr * e / warmup), then cosine annealing over MAX_EPOCH started afresh."""
    out = []
    for e in range(epochs):
        if e < warmup:
            out.append(low if kind == "constant" or e == 0 else lr * e / warmup)
        else:
            out.append(lr * (1 + math.cos(math.pi * (e - warmup) / epochs)) / 2)
    return out


@needs_dassl
@pytest.mark.parametrize("kind", ["constant", "linear"])
def test_dassl_warmup_scheduler_builds_and_steps(kind):
    import torch
    from dassl.config import get_cfg_default
    from dassl.optim import build_lr_scheduler

    import trainers  # noqa: F401  (the run-time fix)
    from trainers.run.dassl_compat import patch_warmup_scheduler, torch_takes_verbose

    optim = get_cfg_default().OPTIM
    optim.defrost()
    optim.update(MAX_EPOCH=5, LR=0.002, LR_SCHEDULER="cosine", WARMUP_EPOCH=2, WARMUP_TYPE=kind,
                 WARMUP_CONS_LR=1e-5, WARMUP_MIN_LR=1e-5)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.002)
    sched = build_lr_scheduler(opt, optim)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx(warmup_lrs(kind), rel=1e-12)
    # resumable: a fresh scheduler given the state continues where this one is
    state = sched.state_dict()
    again = build_lr_scheduler(torch.optim.SGD([param], lr=0.002), optim)
    again.load_state_dict(state)
    assert again.last_epoch == sched.last_epoch
    assert not torch_takes_verbose() and patch_warmup_scheduler()  # in place, applied once


@needs_dassl
@pytest.mark.slow
def test_without_the_fix_dassl_fails_and_its_files_are_unchanged():
    """What the fix is for: Dassl's own __init__ raises TypeError on this PyTorch."""
    code = ("import torch\nfrom dassl.optim import lr_scheduler as l\n"
            "o = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1)\n"
            "s = torch.optim.lr_scheduler.CosineAnnealingLR(o, 3)\n"
            "try:\n    l.ConstantWarmupScheduler(o, s, 1, 1e-5)\nexcept TypeError as e:\n    print('TypeError')\n"
            "import trainers\nl.ConstantWarmupScheduler(o, s, 1, 1e-5)\nprint('built')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["TypeError", "built"], out.stderr[-1500:]


# ----------------------------------------------------------------------- merging per-task runs
def task_run(folder, key: str, metric: str, score: float, seed: int = 1, done: bool = True, **more) -> None:
    folder.mkdir(parents=True)
    report = {"score": score, "tasks": [{"task": 0, "key": key, "name": f"{key} recognition", "metric": metric,
                                         "total": 10, "score": score}],
              "total": 10, "trainer": "SingleTaskCoOp", "shots": 2, "seed": seed, "config": "tiny",
              "backbone": "tiny", **more}
    (folder / "results.json").write_text(json.dumps(report))
    if done:
        (folder / "done").write_text("finished\n")


def test_merge_writes_one_multitask_result(tmp_path):
    from scripts import merge_tasks

    seed = tmp_path / "seed1"
    for i, (key, score) in enumerate([("shapes", 40.0), ("colours", 25.0), ("stripes", 70.0)]):
        task_run(seed / f"task{i}", key, "overall_acc", score, learnable_params=16, train_seconds=2.5)
    assert merge_tasks.main(["merge", str(seed), "3"]) == 0
    merged = json.loads((seed / "results.json").read_text())
    assert merged["score"] == 45.0 and [t["key"] for t in merged["tasks"]] == ["shapes", "colours", "stripes"]
    assert [t["task"] for t in merged["tasks"]] == [0, 1, 2] and merged["total"] == 30
    assert merged["learnable_params"] == 48 and merged["train_seconds"] == 7.5  # the method's: summed
    assert (seed / "done").is_file()


def test_merge_waits_for_every_task_and_one_setting(tmp_path, capsys):
    from scripts import merge_tasks

    seed = tmp_path / "seed1"
    task_run(seed / "task0", "shapes", "overall_acc", 40.0)
    task_run(seed / "task1", "colours", "mean_acc", 25.0, done=False)  # still running
    assert merge_tasks.main(["merge", str(seed), "2"]) == 1
    assert "task1 has not finished" in capsys.readouterr().err
    assert not (seed / "results.json").exists() and not (seed / "done").exists()
    (seed / "task1" / "done").write_text("finished\n")
    report = json.loads((seed / "task1" / "results.json").read_text())
    (seed / "task1" / "results.json").write_text(json.dumps(dict(report, seed=2)))
    with pytest.raises(merge_tasks.MergeError, match="task1 was run with other seed"):
        merge_tasks.merge(str(seed), 2)
    two = dict(report, tasks=report["tasks"] * 2)
    (seed / "task1" / "results.json").write_text(json.dumps(two))
    with pytest.raises(merge_tasks.MergeError, match="holds 2 task results"):
        merge_tasks.merge(str(seed), 2)


def test_count_tasks_of_benchmarks():
    from scripts import merge_tasks

    assert merge_tasks.count_tasks(os.path.join(REPO, "configs/datasets/toy.yaml")) == 3
    assert merge_tasks.count_tasks(os.path.join(REPO, "configs/datasets/general10.yaml")) == 10
    assert merge_tasks.count_tasks(os.path.join(REPO, "configs/datasets/dtd.yaml")) == 1


# ----------------------------------------------------------------------- end to end
@needs_dassl
def test_a_task_run_draws_the_shots_of_the_joint_run(toy_root):
    """DATASET.SUBSAMPLE_TASKS one task: the same training images as that task in the benchmark."""
    from dassl.config import get_cfg_default

    import datasets  # noqa: F401
    from config import extend_cfg
    from config.merge import merge_file
    from dassl.data.datasets import DATASET_REGISTRY

    def build(select):
        cfg = get_cfg_default()
        extend_cfg(cfg)
        merge_file(cfg, os.path.join(REPO, "configs/datasets/toy.yaml"), "--dataset-config-file")
        cfg.DATASET.ROOT, cfg.DATASET.NUM_SHOTS, cfg.SEED = str(toy_root), 2, 3
        cfg.DATASET.SUBSAMPLE_TASKS = select
        return DATASET_REGISTRY.get("MultiTask")(cfg)

    joint = build("all")
    for task in range(3):
        alone = build(str(task))
        offset = joint.task_info.offsets[task]
        inside = sorted((d.impath, d.label - offset) for d in joint.train_x if d.domain == task)
        assert inside == sorted((d.impath, d.label) for d in alone.train_x) and inside


def sweep_env(tmp_path, toy_root) -> dict:
    return dict(os.environ, OUTPUT=str(tmp_path / "out"), DATA=str(toy_root), SKIP_SETUP="1",
                PYTHON=sys.executable, SHOTS="2", SEEDS="1", OMP_NUM_THREADS="1",
                TRAINER_MODULE="tests.single_task.coop_style",
                TRAINER_CONFIG_DIR="tests/single_task/configs")


@needs_dassl
@pytest.mark.slow
def test_single_task_trainer_runs_per_task_into_the_table(tmp_path, toy_root):
    env = sweep_env(tmp_path, toy_root)
    base = [sys.executable, "train.py", "--import", "tests.single_task.coop_style", "--root", str(toy_root),
            "--seed", "1", "--trainer", "SingleTaskCoOp", "--dataset-config-file", "configs/datasets/toy.yaml",
            "--config-file", "tests/single_task/configs/SingleTaskCoOp/tiny.yaml",
            "--output-dir", str(tmp_path / "joint"), "DATASET.NUM_SHOTS", "2", "OPTIM.MAX_EPOCH", "1"]
    refused = subprocess.run(base, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "one softmax" in refused.stderr and "scripts/per_task/main.sh SingleTaskCoOp" in refused.stderr
    assert not (tmp_path / "joint" / "results.json").exists()

    proc = subprocess.run(["bash", "scripts/per_task/main.sh", "SingleTaskCoOp", "toy", "tiny",
                           "OPTIM.MAX_EPOCH", "2"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    seed = tmp_path / "out" / "toy" / "SingleTaskCoOp" / "per_task" / "tiny_2shots_OPTIM.MAX_EPOCH-2" / "seed1"
    per_task = [json.loads((seed / f"task{i}" / "results.json").read_text()) for i in range(3)]
    assert [r["tasks"][0]["key"] for r in per_task] == ["shapes", "colours", "stripes"]
    assert per_task[1]["tasks"][0]["metric"] == "mean_acc"  # the task's declared metric
    assert all(r["trainer"] == "SingleTaskCoOp" and r["shots"] == 2 for r in per_task)
    width = 64  # the tiny CLIP's token width; N_CTX 4 context vectors per task run
    assert [r["learnable_params"] for r in per_task] == [4 * width] * 3
    merged = json.loads((seed / "results.json").read_text())
    expected = sum(r["tasks"][0]["score"] for r in per_task) / 3
    assert merged["score"] == pytest.approx(expected, abs=1e-12)
    assert merged["learnable_params"] == 3 * 4 * width
    with open(tmp_path / "out" / "toy" / "summary" / "tasks.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("method", "").startswith("SingleTaskCoOp/per_task ")]
    assert rows, "the table has no row of the per-task trainer"
    text = (tmp_path / "out" / "toy" / "summary" / "tasks.csv").read_text()
    assert "shapes" in text and "colours" in text and "stripes" in text and "MultiTask" not in text
    again = subprocess.run(["bash", "scripts/per_task/main.sh", "SingleTaskCoOp", "toy", "tiny",
                            "OPTIM.MAX_EPOCH", "2"], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0 and again.stdout.count("skip ") == 3  # finished runs are kept
