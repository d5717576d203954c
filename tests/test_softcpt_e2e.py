"""SoftCPT end to end through ``train.main``: the toy benchmark and a benchmark given only as YAML."""
from __future__ import annotations

import json
import os

import pytest
import torch

# Every test trains or evaluates through train.main: the full tier.
pytestmark = pytest.mark.slow

pytest.importorskip("dassl", reason="Dassl is not installed")

from fixtures_data import write_image_folder  # noqa: E402

import train  # noqa: E402
from trainers.run.checkpoint import CheckpointError  # noqa: E402

TOY = "configs/datasets/toy.yaml"
TINY = "configs/trainers/SoftCPT/tiny.yaml"
USER_YAML = """\
DATASET:
  NAME: "MultiTask"
  MULTITASK:
    TASKS:
      - KEY: "fruit"
        NAME: "fruit recognition"
        IMAGE_FOLDER: {DIR: "my_fruit"}
      - KEY: "tools"
        NAME: "tool recognition"
        METRIC: "mean_acc"
        IMAGE_FOLDER: {DIR: "my_tools"}
"""


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    """$DATA with the toy benchmark (written on first use) and two user image folders."""
    root = str(tmp_path_factory.mktemp("data"))
    write_image_folder(root, "my_fruit", ["apple", "banana", "cherry"], per_class=6)
    write_image_folder(root, "my_tools", ["hammer", "saw"], per_class=6)
    return root


@pytest.fixture(scope="module")
def user_yaml(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("bench") / "my_bench.yaml"
    path.write_text(USER_YAML)
    return str(path)


def run(root, out, *opts, dataset=TOY, flags=(), report=True):
    train.main(["--root", root, "--seed", "1", "--trainer", "SoftCPT", "--dataset-config-file", dataset,
                "--config-file", TINY, "--output-dir", str(out), *flags,
                "DATASET.NUM_SHOTS", "2", "OPTIM.MAX_EPOCH", "2", *opts])
    if not report:
        return None
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


def without_run_info(report):
    """What an evaluation of a saved model must reproduce: not the epoch, config or training
    time (an --eval-only run trains nothing, so it records none)."""
    return {k: v for k, v in report.items()
            if k not in ("epoch", "effective_config", "train_seconds", "train_device")}


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """One CSTS run on the toy benchmark (per-class and per-task contexts, class sampling)."""
    out = tmp_path_factory.mktemp("csts")
    report = run(data_root, out, "TRAINER.SOFTCPT.VARIANT", "CSTS", "TRAINER.SOFTCPT.CLS_SAMPLE_RATE", "0.5")
    return out, report


def test_toy_trains_saves_evaluates_and_writes_results(trained):
    out, report = trained
    assert (report["trainer"], report["config"], report["split"], report["epoch"]) == \
        ("SoftCPT", "tiny", "test", 2)
    assert [t["key"] for t in report["tasks"]] == ["shapes", "colours", "stripes"]
    assert [t["metric"] for t in report["tasks"]] == ["overall_acc", "mean_acc", "overall_acc"]
    for t in report["tasks"]:
        assert t["score"] == t[t["metric"]] and t["total"] > 0
    assert report["score"] == pytest.approx(sum(t["score"] for t in report["tasks"]) / 3)
    assert (out / "done").is_file() and "* accuracy:" in (out / "log.txt").read_text()
    ckpt = torch.load(out / "prompt_learner" / "model.pth.tar-2", weights_only=True)
    assert sorted(ckpt["state_dict"]) == ["class_ctx", "meta_net.weight", "task_ctx"]


def test_eval_only_reproduces_the_run_with_speedups_on_and_off(data_root, trained, tmp_path):
    """Saved model -> same numbers; cached/truncated eval == per-batch, 77-token eval."""
    out, report = trained
    for i, extra in enumerate([(), ("TRAINER.SOFTCPT.CACHE_EVAL_TEXT", "False",
                                    "TRAINER.SOFTCPT.TRUNCATE_TEXT", "False")]):
        again = run(data_root, tmp_path / f"eval{i}", "TRAINER.SOFTCPT.VARIANT", "CSTS", *extra,
                    flags=("--eval-only", "--model-dir", str(out), "--load-epoch", "2"))
        assert without_run_info(again) == without_run_info(report)


def test_eval_only_never_touches_the_training_runs_results(data_root, trained):
    """--output-dir set to the training folder, or not given: <model-dir>/eval_epoch1/."""
    out, _ = trained
    before = (out / "results.json").read_bytes()
    for output in (["--output-dir", str(out)], []):
        train.main(["--root", data_root, "--seed", "1", "--trainer", "SoftCPT", "--dataset-config-file",
                    TOY, "--config-file", TINY, "--eval-only", "--model-dir", str(out), "--load-epoch", "1",
                    *output, "DATASET.NUM_SHOTS", "2", "TRAINER.SOFTCPT.VARIANT", "CSTS"])
        with open(out / "eval_epoch1" / "results.json") as f:
            assert json.load(f)["epoch"] == 1
        assert (out / "eval_epoch1" / "done").is_file() and (out / "results.json").read_bytes() == before
        os.remove(out / "eval_epoch1" / "results.json")
    with pytest.raises(train.ConfigError, match="--eval-only needs --output-dir"):
        train.main(["--eval-only", "--trainer", "SoftCPT"])


def test_a_checkpoint_of_another_variant_says_which_variant_saved_it(data_root, trained, tmp_path):
    out, _ = trained
    with pytest.raises(CheckpointError) as err:
        run(data_root, tmp_path / "x", "TRAINER.SOFTCPT.VARIANT", "NATS",
            flags=("--eval-only", "--model-dir", str(out), "--load-epoch", "2"))
    assert f"{out / 'prompt_learner' / 'model.pth.tar-2'} was saved by trainer SoftCPT, variant CSTS; " \
           "this run is trainer SoftCPT, variant NATS:" in str(err.value)
    assert "error: " + str(err.value) in (tmp_path / "x" / "log.txt").read_text()


def test_per_class_context_does_not_load_into_other_classes(data_root, trained, user_yaml, tmp_path):
    out, _ = trained
    with pytest.raises(ValueError, match="holds one context per (task|class)"):
        run(data_root, tmp_path / "x", "TRAINER.SOFTCPT.VARIANT", "CSTS", dataset=user_yaml,
            flags=("--eval-only", "--model-dir", str(out), "--load-epoch", "2"))


def test_user_benchmark_from_yaml_and_class_agnostic_transfer(data_root, user_yaml, tmp_path):
    """A benchmark given only as YAML trains and resumes; NATA's learned parts load into it from toy."""
    user = tmp_path / "user"
    report = run(data_root, user, "OPTIM.MAX_EPOCH", "2", dataset=user_yaml)
    assert [t["key"] for t in report["tasks"]] == ["fruit", "tools"]
    assert report["tasks"][1]["metric"] == "mean_acc" and report["tasks"][1]["total"] > 0
    # As a kill after epoch 1 leaves it: the rerun resumes from the per-epoch checkpoint. (A
    # longer OPTIM.MAX_EPOCH in the same folder is refused: it changes the schedule.)
    for name in ("prompt_learner/model.pth.tar-2", "results.json", "done"):
        os.remove(user / name)
    (user / "prompt_learner" / "checkpoint").write_text("model.pth.tar-1\n")
    resumed = run(data_root, user, "OPTIM.MAX_EPOCH", "2", dataset=user_yaml)
    log = (user / "log.txt").read_text().split("a new attempt of this run")[-1]  # a rerun appends
    assert resumed["epoch"] == 2 and "will resume training" in log and "epoch [1/2]" not in log
    assert resumed["resumed_from_epoch"] == 1
    toy = tmp_path / "toy_nata"
    run(data_root, toy, "OPTIM.MAX_EPOCH", "1", "TEST.NO_TEST", "True", report=False)
    moved = run(data_root, tmp_path / "moved", dataset=user_yaml,
                flags=("--eval-only", "--model-dir", str(toy), "--load-epoch", "1"))
    assert [t["key"] for t in moved["tasks"]] == ["fruit", "tools"]
