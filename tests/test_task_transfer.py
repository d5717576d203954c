"""Task transfer: DATASET.HOLD_OUT_TASKS, scripts/softcpt/task_transfer.sh and its results table."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from stand_ins import fake_python

from scripts import results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = "scripts/softcpt/task_transfer.sh"

def sweep(*args, env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", SCRIPT, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.fixture
def env(tmp_path):
    return dict(os.environ, OUTPUT=str(tmp_path / "out"), DATA=str(tmp_path / "data"), SKIP_SETUP="1",
                PYTHON="/nonexistent/python")  # a refusal must come before the interpreter is used


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize("variant, why", [
    ("NATS", "one task context per task"), ("CATS", "one task context per task"),
    ("CSTA", "one class context per class"), ("CSTS", "one class context per class")])
def test_variants_with_per_task_or_per_class_contexts_are_refused(env, variant, why):
    done = sweep("toy", "tiny", variant, env=env)
    assert done.returncode == 2
    assert f"SoftCPT {variant} cannot be evaluated on a task it never trained on" in done.stderr
    assert why in done.stderr and "docs/method.md#task-transfer" in done.stderr
    assert not os.path.exists(env["OUTPUT"])


@pytest.mark.parametrize("coop, why", [("CA", "one context per task"), ("CS", "one context per class")])
def test_per_task_coop_is_refused(env, coop, why):
    done = sweep("toy", "tiny", "NATA", env=dict(env, COOP=coop))
    assert done.returncode == 2 and f"CoOp-{coop} cannot be evaluated" in done.stderr and why in done.stderr
    assert not os.path.exists(env["OUTPUT"])


# ------------------------------------------------------------------ the results table
def write_result(root, task, stage, method, shots, seed, score):
    run = os.path.join(root, "task_transfer", "toy", f"heldout_{task}", stage, *method.split("/"),
                       f"tiny_{shots}shots", f"seed{seed}")
    os.makedirs(run)
    trainer = method.split("/")[0]
    with open(os.path.join(run, "results.json"), "w") as f:
        json.dump({"score": score, "trainer": trainer, "config": "tiny", "shots": shots, "seed": seed,
                   "tasks": [{"key": task, "score": score}]}, f)


def test_results_prints_held_out_task_by_method_and_the_mean(tmp_path, capsys):
    root = str(tmp_path / "out")
    for task, base in (("shapes", 40.0), ("colours", 60.0)):
        for seed, delta in ((1, -1.0), (2, 1.0)):
            write_result(root, task, "test", "SoftCPT/NATA", 1, seed, base + delta)
            write_result(root, task, "test", "CoOp/MT", 1, seed, base - 10 + delta)
            write_result(root, task, "train", "SoftCPT/NATA", 1, seed, 99.0)  # seen tasks: not here
        write_result(root, task, "test", "ZeroshotCLIP", 0, 1, base - 20)
    assert results.main([root + "/task_transfer/toy", "--no-plot"]) == 0
    text = capsys.readouterr().out
    table = text.split("## Task transfer: toy")[1].split("\n\n", 2)[2].split("\n\n")[0].splitlines()
    assert table[0] == "| held-out task | SoftCPT/NATA (1 shot) | CoOp/MT (1 shot) | ZeroshotCLIP |"
    assert table[2:] == ["| colours | 60.00 ± 1.00 | 50.00 ± 1.00 | 40.00 ± 0.00 |",
                         "| shapes | 40.00 ± 1.00 | 30.00 ± 1.00 | 20.00 ± 0.00 |",
                         "| mean | 50.00 | 40.00 | 30.00 |"]
    assert "99.00" not in text.split("## Task transfer")[1].split("##")[0]
    with open(tmp_path / "out" / "task_transfer" / "toy" / "summary" / "transfer.csv") as f:
        rows = f.read().splitlines()
    assert "toy,shapes,SoftCPT/NATA,1,40.0,1.0,2,2" in rows


def test_a_missing_seed_makes_the_mean_incomplete(tmp_path, capsys):
    root = str(tmp_path / "out")
    write_result(root, "shapes", "test", "SoftCPT/NATA", 1, 1, 40.0)
    write_result(root, "shapes", "test", "SoftCPT/NATA", 1, 2, 42.0)
    write_result(root, "colours", "test", "SoftCPT/NATA", 1, 1, 60.0)
    assert results.main([root, "--no-plot"]) == 0
    text = capsys.readouterr().out
    assert "| colours | 60.00 ± 0.00 (1/2 seeds) |" in text and "| mean | incomplete |" in text


# ------------------------------------------------------------------ dataset
@pytest.fixture
def bench(tmp_path):
    pytest.importorskip("dassl", reason="Dassl is not installed")
    from fixtures_data import write_image_folder
    root = str(tmp_path / "data")
    tasks = ""
    for key, classes in (("fruit", ["apple", "pear"]), ("tools", ["saw", "axe", "awl"]),
                         ("cars", ["van", "bus"])):
        write_image_folder(root, f"b/{key}", classes, 4)
        tasks += f'\n      - {{KEY: "{key}", NAME: "{key} recognition", IMAGE_FOLDER: {{DIR: "b/{key}"}}}}'
    path = tmp_path / "bench.yaml"
    path.write_text('DATASET:\n  NAME: "MultiTask"\n  MULTITASK:\n    TASKS:' + tasks + "\n")
    return root, str(path)


def build(root, yaml, **keys):
    from dassl.data.datasets import DATASET_REGISTRY
    from fixtures_data import make_dataset_cfg

    import datasets  # noqa: F401  (registers the datasets)
    cfg = make_dataset_cfg(root, yaml=yaml, **keys)
    return DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)


@pytest.mark.parametrize("selector", ["1", "tools", "tools recognition"])
def test_hold_out_leaves_a_task_out_and_relabels_the_others(bench, selector):
    root, yaml = bench
    shutil.rmtree(os.path.join(root, "b", "tools"))  # a held-out member is never built
    ds = build(root, yaml, DATASET__HOLD_OUT_TASKS=selector)
    info = ds.task_info
    assert info.keys == ("fruit", "cars") and info.names == ("fruit recognition", "cars recognition")
    assert sorted({d.label for d in ds.test}) == [0, 1, 2, 3]
    assert {d.classname for d in ds.test if d.domain == 1} == {"van", "bus"}


def test_hold_out_after_subsample_and_its_errors(bench):
    from datasets.errors import DatasetError
    root, yaml = bench
    ds = build(root, yaml, DATASET__SUBSAMPLE_TASKS="fruit,cars", DATASET__HOLD_OUT_TASKS="fruit")
    assert ds.task_info.keys == ("cars",)
    with pytest.raises(DatasetError, match=r"HOLD_OUT_TASKS.*every selected task"):
        build(root, yaml, DATASET__SUBSAMPLE_TASKS="tools", DATASET__HOLD_OUT_TASKS="tools")
    with pytest.raises(DatasetError, match=r"DATASET\.HOLD_OUT_TASKS: 'boats' matches no task"):
        build(root, yaml, DATASET__HOLD_OUT_TASKS="boats")


# ------------------------------------------------------------------ the sweep
@pytest.mark.slow
def test_sweep_trains_without_each_task_and_evaluates_it_alone(env, tmp_path):
    """Stand-in runs: which runs, with which options, in which order; skipping when done."""
    env.update(PYTHON=fake_python(tmp_path), CALLS=str(tmp_path / "calls.txt"), SHOTS="4", SEEDS="1 2")
    done = sweep("toy", "tiny", "CATA", "OPTIM.MAX_EPOCH", "3", env=env)
    assert done.returncode == 0, done.stderr
    calls = open(env["CALLS"]).read().splitlines()
    out = env["OUTPUT"] + "/task_transfer/toy"
    cell = "tiny_4shots_OPTIM.MAX_EPOCH-3"  # the user's options name the folders
    tasks = [("0", "shapes"), ("1", "colours"), ("2", "stripes")]
    trains = [c for c in calls if "--eval-only" not in c and "ZeroshotCLIP" not in c]
    assert len(trains) == 3 * 2 * 2  # tasks x (SoftCPT, CoOp-MT) x seeds
    for index, key in tasks:
        softcpt = f"{out}/heldout_{key}/train/SoftCPT/CATA/{cell}/seed2"
        (train,) = [c for c in calls if c.startswith(f"train.py --output-dir {softcpt} ")]
        assert f"DATASET.HOLD_OUT_TASKS '{index}' TRAINER.SOFTCPT.VARIANT CATA OPTIM.MAX_EPOCH 3" in train
        (test,) = [c for c in calls
                   if f"--output-dir {out}/heldout_{key}/test/SoftCPT/CATA/{cell}/seed2 " in c]
        assert f"--eval-only --model-dir {softcpt} " in test and f"DATASET.SUBSAMPLE_TASKS '{index}'" in test
        assert calls.index(test) > max(calls.index(c) for c in trains)  # every training first
        (coop,) = [c for c in calls if f"{out}/heldout_{key}/test/CoOp/MT/{cell}/seed1 " in c]
        assert "TRAINER.COOP.SHARING all TRAINER.COOP.CSC False" in coop
        assert f"--model-dir {out}/heldout_{key}/train/CoOp/MT/{cell}/seed1 " in coop
        (zs,) = [c for c in calls if "--trainer ZeroshotCLIP" in c and f"heldout_{key}/" in c]
        assert "test/ZeroshotCLIP/tiny_0shots_OPTIM.MAX_EPOCH-3/seed1 " in zs and "DATASET.NUM_SHOTS 0" in zs
    assert len(calls) == 12 + 12 + 3
    assert "## Task transfer: toy" in done.stdout
    again = sweep("toy", "tiny", "CATA", "OPTIM.MAX_EPOCH", "3", env=env)
    assert again.returncode == 0 and len(open(env["CALLS"]).read().splitlines()) == len(calls)


@pytest.mark.slow
def test_held_out_picks_the_tasks_and_names_the_valid_ones(env, tmp_path):
    """HELD_OUT=colours: only that task is held out; an unknown key lists the benchmark's tasks."""
    env.update(PYTHON=fake_python(tmp_path), CALLS=str(tmp_path / "calls.txt"), SHOTS="1", SEEDS="1")
    bad = sweep("toy", "tiny", "NATA", env=dict(env, HELD_OUT="colors"))
    assert bad.returncode == 2 and "HELD_OUT names 'colors'" in bad.stderr
    assert "its tasks: shapes colours stripes." in bad.stderr and not os.path.exists(env["CALLS"])
    done = sweep("toy", "tiny", "NATA", env=dict(env, HELD_OUT="colours"))
    assert done.returncode == 0, done.stderr
    calls = open(env["CALLS"]).read().splitlines()
    assert len(calls) == 2 + 2 + 1 and all("/heldout_colours/" in c for c in calls)


@pytest.mark.slow
def test_toy_task_transfer_end_to_end(tmp_path):
    """Real runs, 1 shot, 1 seed, 2 epochs, one task held out (HELD_OUT; the loop over every task
    is the stand-in sweep's test above): the table has the task and every method, and the
    evaluation loaded the model trained without its task and generated that task's context."""
    pytest.importorskip("dassl", reason="Dassl is not installed")
    import torch
    env = dict(os.environ, OUTPUT=str(tmp_path / "out"), DATA=str(tmp_path / "data"), SKIP_SETUP="1",
               PYTHON=sys.executable, SHOTS="1", SEEDS="1", HELD_OUT="stripes")
    done = sweep("toy", "tiny", "NATA", "OPTIM.MAX_EPOCH", "2", env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = done.stdout.split("## Task transfer: toy")[1].split("\n\n")[2].splitlines()
    assert table[0] == ("| held-out task | SoftCPT/NATA OPTIM.MAX_EPOCH=2 (1 shot) | "
                        "CoOp/MT OPTIM.MAX_EPOCH=2 (1 shot) | ZeroshotCLIP OPTIM.MAX_EPOCH=2 |")
    assert [row.split(" | ")[0] for row in table[2:]] == ["| stripes", "| mean"]
    assert "missing" not in "\n".join(table) and "incomplete" not in table[-1]
    out = tmp_path / "out" / "task_transfer" / "toy"
    names = {"shapes": "shape recognition", "colours": "colour recognition",
             "stripes": "stripe orientation recognition"}
    assert not (out / "heldout_shapes").exists() and not (out / "heldout_colours").exists()
    for key, name in [("stripes", names["stripes"])]:
        cell = ("NATA", "tiny_1shots_OPTIM.MAX_EPOCH-2", "seed1")
        test = out.joinpath(f"heldout_{key}", "test", "SoftCPT", *cell)
        train = out.joinpath(f"heldout_{key}", "train", "SoftCPT", *cell)
        report = json.loads((test / "results.json").read_text())
        assert [t["key"] for t in report["tasks"]] == [key]
        seen = json.loads((train / "results.json").read_text())
        assert sorted(t["key"] for t in seen["tasks"]) == sorted(set(names) - {key})
        assert f"Loaded {train}/prompt_learner/model.pth.tar-2" in (test / "log.txt").read_text()
        generated = torch.load(test / "generated_contexts.pt", weights_only=True)
        assert generated["task_names"] == [name] and generated["contexts"].shape[0] == 1
        trained = torch.load(train / "generated_contexts.pt", weights_only=True)
        assert name not in trained["task_names"] and len(trained["task_names"]) == 2
        assert (train / "task_similarity.png").is_file() and (train / "task_similarity.csv").is_file()
