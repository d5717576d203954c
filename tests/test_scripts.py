"""The sweep scripts: folders, arguments, skip only when done, resume, failures.

Argument and failure handling run against a stand-in for ``python train.py``
(fast, no Dassl). The resume test kills a real sweep in the middle of a run and
starts it again; it and the real-run tests need Dassl.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import SERIAL_TOY_GROUP, needs_dassl
from stand_ins import fake_python

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every test runs the sweep scripts (with a stand-in for train.py, or real runs): the full tier.
pytestmark = pytest.mark.slow

def sweep(script, *args, env=None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", script, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          **kwargs)


@pytest.fixture
def fake_env(tmp_path):
    env = dict(os.environ, PYTHON=fake_python(tmp_path), CALLS=str(tmp_path / "calls.txt"), FAIL_SEED="",
               OUTPUT=str(tmp_path / "out"), DATA=str(tmp_path / "data"), SKIP_SETUP="1")
    return env


def calls(env) -> list[str]:
    with open(env["CALLS"]) as f:
        return f.read().splitlines()


def test_failed_run_is_reported_at_the_end_and_the_sweep_goes_on(fake_env, tmp_path):
    fake_env.update(FAIL_SEED="2", SHOTS="1 4", SEEDS="1 2 3")
    done = sweep("scripts/coop/main.sh", "toy", "tiny", "CA", env=fake_env)
    assert done.returncode == 1
    assert len(calls(fake_env)) == 6  # every run was tried
    assert "(2/3 seeds)" in done.stdout  # the table of the four that finished
    failed = done.stderr.split("failed runs")[1]
    for shots in (1, 4):
        assert f"CoOp/CA/tiny_{shots}shots/seed2 (exit code 3" in failed
    assert "seed1" not in failed and "seed3" not in failed

    fake_env["FAIL_SEED"] = ""
    again = sweep("scripts/coop/main.sh", "toy", "tiny", "CA", env=fake_env)
    assert again.returncode == 0 and len(calls(fake_env)) == 8  # only the two failed runs again
    assert again.stdout.count("[sweep] skip") == 4 and again.stdout.count("[sweep] resume") == 2


@pytest.mark.parametrize("script, args, folder, expected", [
    ("scripts/softcpt/main.sh", ["general10", "rn50_ep50", "NATS"],
     "general10/SoftCPT/NATS/rn50_ep50_16shots/seed2",
     ("--trainer SoftCPT --dataset-config-file configs/datasets/general10.yaml --config-file "
      "configs/trainers/SoftCPT/rn50_ep50.yaml DATASET.NUM_SHOTS 16 TRAINER.SOFTCPT.VARIANT NATS")),
    ("scripts/coop/main.sh", ["toy", "tiny", "MT", "TRAINER.COOP.N_CTX", "4"],
     "toy/CoOp/MT/tiny_16shots_TRAINER.COOP.N_CTX-4/seed2",
     "DATASET.NUM_SHOTS 16 TRAINER.COOP.SHARING all TRAINER.COOP.CSC False TRAINER.COOP.N_CTX 4"),
    ("scripts/coop/main.sh", ["toy", "tiny", "CS"], "toy/CoOp/CS/tiny_16shots/seed2",
     "TRAINER.COOP.SHARING task TRAINER.COOP.CSC True"),
    ("scripts/cocoop/main.sh", [], "toy/CoCoOp/tiny_16shots/seed2", "--trainer CoCoOp"),
    ("scripts/plot/main.sh", ["general10", "rn50_ep50", "TRAINER.PLOT.N_CTX", "8"],
     "general10/PLOT/rn50_ep50_16shots_TRAINER.PLOT.N_CTX-8/seed2",
     ("--trainer PLOT --dataset-config-file configs/datasets/general10.yaml --config-file "
      "configs/trainers/PLOT/rn50_ep50.yaml DATASET.NUM_SHOTS 16 TRAINER.PLOT.N_CTX 8")),
    ("scripts/linear_probe/main.sh", [], "toy/LinearProbeCLIP/tiny_16shots/seed2",
     "--trainer LinearProbeCLIP"),
    ("scripts/zsclip/main.sh", [], "toy/ZeroshotCLIP/tiny_0shots/seed2", "DATASET.NUM_SHOTS 0"),
    ("scripts/protonet/main.sh", ["general10", "rn50_ep50"], "general10/ProtoNet/rn50_ep50_16shots/seed2",
     "--trainer ProtoNet --dataset-config-file configs/datasets/general10.yaml --config-file "
     "configs/trainers/ProtoNet/rn50_ep50.yaml DATASET.NUM_SHOTS 16"),
    ("scripts/kgcoop/main.sh", ["toy", "tiny", "TRAINER.KGCOOP.W", "1.0"],
     "toy/KgCoOp/tiny_16shots_TRAINER.KGCOOP.W-1.0/seed2",
     "--config-file configs/trainers/KgCoOp/tiny.yaml DATASET.NUM_SHOTS 16 TRAINER.KGCOOP.W 1.0"),
    ("scripts/prograd/main.sh", ["toy", "vit_b16_ep50"], "toy/ProGrad/vit_b16_ep50_16shots/seed2",
     "--trainer ProGrad --dataset-config-file configs/datasets/toy.yaml --config-file "
     "configs/trainers/ProGrad/vit_b16_ep50.yaml DATASET.NUM_SHOTS 16"),
    ("scripts/softcpt/base2new_train.sh", [], "base2new/train_base/toy/shots_16/SoftCPT/NATA/tiny/seed2",
     "DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES base TRAINER.SOFTCPT.VARIANT NATA"),
])
def test_scripts_pass_coop_style_arguments_and_folders(fake_env, script, args, folder, expected):
    fake_env.update(SHOTS="16", SEEDS="2")
    done = sweep(script, *args, env=fake_env)
    assert done.returncode == 0, done.stderr
    (call,) = calls(fake_env)
    out = fake_env["OUTPUT"]
    assert call.startswith(f"train.py --output-dir {out}/{folder} --root {fake_env['DATA']} --seed 2 ")
    assert expected in call
    assert os.path.isfile(os.path.join(out, folder, "done"))


def test_paper_table_runs_every_method_of_the_papers_table_then_one_table(fake_env):
    fake_env.update(SHOTS="1 16", SEEDS="1", FAIL_SEED="")
    done = sweep("scripts/paper_table.sh", "general10", "rn50_ep50", env=fake_env)
    assert done.returncode == 0, done.stderr
    folders = {c.split()[2][len(fake_env["OUTPUT"]) + 1:] for c in calls(fake_env)}
    methods = ["SoftCPT/NATA", "SoftCPT/NATS", "LinearProbeCLIP", "ProtoNet", "CoOp/CA", "CoOp/CS",
               "CoOp/MT", "KgCoOp", "ProGrad", "PLOT"]
    expected = {f"general10/{m}/rn50_ep50_{k}shots/seed1" for m in methods for k in (1, 16)}
    expected |= {f"general10/CoCoOp/rn50_c4_ep10_batch1_ctxv1_{k}shots/seed1" for k in (1, 16)}
    expected.add("general10/ZeroshotCLIP/rn50_ep50_0shots/seed1")
    assert folders == expected
    assert done.stdout.count("## general10") == 1  # one table, at the end, with every row
    table = done.stdout[done.stdout.index("## general10"):].split("Per task")[0]
    for row in methods + ["CoCoOp", "ZeroshotCLIP"]:
        assert f"| {row} |" in table
    # a failing method is listed at the end; the others still run, and a rerun redoes only it
    fake_env.update(FAIL_SEED="1")
    os.remove(os.path.join(fake_env["OUTPUT"], "general10", "KgCoOp", "rn50_ep50_16shots", "seed1", "done"))
    again = sweep("scripts/paper_table.sh", "general10", "rn50_ep50", env=fake_env)
    assert again.returncode == 1 and len(calls(fake_env)) == len(expected) + 1
    assert "scripts/kgcoop/main.sh general10 rn50_ep50 (exit code 1)" in again.stderr


def test_options_name_the_run_folders_so_settings_never_share_one(fake_env):
    fake_env.update(SHOTS="16", SEEDS="1")
    out = fake_env["OUTPUT"]
    runs = os.path.join(out, "toy", "SoftCPT", "NATA")
    first = sweep("scripts/softcpt/main.sh", "toy", "tiny", "NATA", "OPTIM.LR", "0.001", env=fake_env)
    assert first.returncode == 0, first.stderr
    # Another learning rate is another run, not "finished"; "/" and spaces cannot split the name.
    other = sweep("scripts/softcpt/main.sh", "toy", "tiny", "NATA", "OPTIM.LR", "0.01", "MODEL.INIT_WEIGHTS",
                  "/w/my model.pth", env=fake_env)
    assert other.returncode == 0 and "[sweep] skip" not in other.stdout
    plain = sweep("scripts/softcpt/main.sh", "toy", "tiny", "NATA", env=fake_env)
    assert plain.returncode == 0 and "[sweep] skip" not in plain.stdout
    folders = [c.split()[2] for c in calls(fake_env)]
    assert folders == [os.path.join(runs, name, "seed1") for name in (
        "tiny_16shots_OPTIM.LR-0.001", "tiny_16shots_OPTIM.LR-0.01_MODEL.INIT_WEIGHTS-%2Fw%2Fmy%20model.pth",
        "tiny_16shots")]
    assert calls(fake_env)[1].endswith("OPTIM.LR 0.01 MODEL.INIT_WEIGHTS /w/my model.pth")  # as given
    again = sweep("scripts/softcpt/main.sh", "toy", "tiny", "NATA", "OPTIM.LR", "0.001", env=fake_env)
    assert again.returncode == 0 and again.stdout.count("[sweep] skip") == 1 and len(calls(fake_env)) == 3
    table = again.stdout[again.stdout.index("## toy"):].split("Per task")[0]
    for row in ("SoftCPT/NATA", "SoftCPT/NATA OPTIM.LR=0.001",
                "SoftCPT/NATA OPTIM.LR=0.01 MODEL.INIT_WEIGHTS=/w/my model.pth"):
        assert f"| {row} | tiny | 50.00 ± 0.00 |" in table


def test_base2new_test_loads_the_model_of_the_same_options(fake_env):
    fake_env.update(SHOTS="16", SEEDS="1")
    opts = ["toy", "tiny", "NATA", "OPTIM.LR", "0.1"]
    assert sweep("scripts/softcpt/base2new_train.sh", *opts, env=fake_env).returncode == 0
    done = sweep("scripts/softcpt/base2new_test.sh", *opts, env=fake_env)
    assert done.returncode == 0, done.stderr
    model = os.path.join(fake_env["OUTPUT"], "base2new", "train_base", "toy", "shots_16", "SoftCPT", "NATA",
                         "tiny_OPTIM.LR-0.1", "seed1")
    test = model.replace("train_base", "test_new")
    assert f"--output-dir {test} " in calls(fake_env)[1] and f"--model-dir {model} " in calls(fake_env)[1]
    assert "| toy | SoftCPT/NATA OPTIM.LR=0.1 | tiny | 16 | 50.00 ± 0.00 | 50.00 ± 0.00 | 50.00 |" in done.stdout


FAKE_NVIDIA_SMI = """#!/bin/bash
[ "$1" = -L ] || exit 2
if [ "$GPU_COUNT" = none ]; then
    echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."; exit 9
fi
for ((i = 0; i < GPU_COUNT; i++)); do echo "GPU $i: NVIDIA H200 (UUID: GPU-0000000$i-aaaa)"; done
"""


def _without_nvidia_smi(path: str) -> str:
    return ":".join(d for d in path.split(":") if not os.path.exists(os.path.join(d, "nvidia-smi")))


@pytest.mark.parametrize("gpus, found, message", [
    ("0 1", 2, None),
    ("GPU-00000001-aaaa 0", 2, None),  # UUIDs as nvidia-smi -L shows them
    ("0 2", 2, "names GPU(s) this machine does not have: 2 (nvidia-smi -L lists 2 GPU(s))"),
    ("0", "none", "names GPU(s) this machine does not have: 0 (nvidia-smi -L failed: NVIDIA-SMI has failed"),
    ("0", "torch 0", "does not have: 0 (no nvidia-smi on PATH, and torch.cuda.device_count() is 0)"),
    ("1", "torch 2", None),
    ("cuda:0", 2, "does not have: cuda:0"),
])
def test_gpus_naming_devices_this_machine_lacks_stop_before_any_run(fake_env, tmp_path, gpus, found, message):
    if isinstance(found, str) and found.startswith("torch"):  # no nvidia-smi: torch counts them
        fake_env.update(PATH=_without_nvidia_smi(fake_env["PATH"]), CUDA_COUNT=found.split()[1])
    else:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
        (bin_dir / "nvidia-smi").chmod(0o755)
        fake_env.update(PATH=f"{bin_dir}:{fake_env['PATH']}", GPU_COUNT=str(found))
    fake_env.update(GPUS=gpus, SHOTS="1", SEEDS="1")
    done = sweep("scripts/coop/main.sh", "toy", "tiny", "CA", env=fake_env, timeout=60)
    if message is None:
        assert done.returncode == 0, done.stderr
        assert len(calls(fake_env)) == 1
        return
    assert done.returncode == 2 and not os.path.exists(fake_env["CALLS"])
    (line,) = done.stderr.splitlines()  # one line: GPUS, what was found, the fix
    assert line.startswith(f'[sweep] error: GPUS="{gpus}" ') and message in line
    assert "unset GPUS to run on CPU" in line and not os.path.exists(fake_env["OUTPUT"])


def test_gpus_on_this_machine_are_counted_by_torch_without_nvidia_smi(fake_env):
    """No fake count: the real torch of this (GPU-less) machine, as the issue found it."""
    import torch
    if torch.cuda.device_count() > 0 or _without_nvidia_smi(os.environ["PATH"]) != os.environ["PATH"]:
        pytest.skip("this machine has GPUs")
    fake_env.update(GPUS="0", SHOTS="1", SEEDS="1")
    done = sweep("scripts/coop/main.sh", "toy", "tiny", "CA", env=fake_env, timeout=120)
    assert done.returncode == 2 and "torch.cuda.device_count() is 0" in done.stderr
    assert "[GPU 0]" not in done.stdout and not os.path.exists(fake_env["CALLS"])


def test_base2new_test_needs_the_finished_training_run(fake_env):
    fake_env.update(SHOTS="16", SEEDS="1 2")
    base = os.path.join(fake_env["OUTPUT"], "base2new", "train_base", "toy", "shots_16", "SoftCPT",
                        "NATA", "tiny")
    os.makedirs(os.path.join(base, "seed1"))
    open(os.path.join(base, "seed1", "done"), "w").close()
    os.makedirs(os.path.join(base, "seed2"))  # interrupted: must not be evaluated
    done = sweep("scripts/softcpt/base2new_test.sh", env=dict(fake_env, LOADEP="3"))
    assert done.returncode == 1
    (call,) = calls(fake_env)
    assert f"--eval-only --model-dir {base}/seed1 --load-epoch 3 DATASET.NUM_SHOTS 16 " \
           "DATASET.SUBSAMPLE_CLASSES new" in call
    assert f"test_new/toy/shots_16/SoftCPT/NATA/tiny/seed2 (needs the finished run {base}/seed2)" \
        in done.stderr


def test_unknown_names_stop_before_any_run(fake_env):
    done = sweep("scripts/softcpt/main.sh", "toy", "nosuchcfg", env=fake_env)
    assert done.returncode == 2 and "rn50_ep50" in done.stderr and "tiny" in done.stderr
    done = sweep("scripts/coop/main.sh", "toy", "tiny", "XX", env=fake_env)
    assert done.returncode == 2 and "CA, CS, MT" in done.stderr
    assert not os.path.exists(fake_env["CALLS"])


# ---------------------------------------------------------------- real runs
def _children_alive(marker: str) -> list[int]:
    """Processes whose command line mentions ``marker`` (our own test folder)."""
    alive = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    alive.append(int(pid))
        except OSError:
            pass
    return alive


def _table(stdout: str) -> str:
    return stdout[stdout.index("## toy"):]


@needs_dassl
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to watch the run")
def test_killed_sweep_resumes_and_a_finished_sweep_only_reprints(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUTPUT=str(out), DATA=str(tmp_path / "data"), SHOTS="1", SEEDS="1 2")
    cmd = ["bash", "scripts/coop/main.sh", "toy", "tiny", "CA", "TRAINER.COOP.N_CTX", "4",
           "OPTIM.MAX_EPOCH", "10"]
    runs = out / "toy" / "CoOp" / "CA" / "tiny_1shots_TRAINER.COOP.N_CTX-4_OPTIM.MAX_EPOCH-10"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not (runs / "seed2" / "prompt_learner" / "model.pth.tar-2").exists():
        assert proc.poll() is None and time.time() < deadline, "the sweep ended before it was killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # as a job scheduler or `timeout` would: the script only
    assert proc.wait(timeout=30) == 130 and "[sweep] interrupted" in (tmp_path / "first.log").read_text()
    assert not _children_alive(str(out)), "the run in progress outlived the sweep"
    assert (runs / "seed1" / "done").is_file() and not (runs / "seed2" / "done").exists()
    first = (runs / "seed1" / "results.json").read_bytes()

    resumed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"[sweep] skip   {runs}/seed1" in resumed.stdout
    assert f"[sweep] resume {runs}/seed2" in resumed.stdout
    log = (runs / "seed2" / "log.txt").read_text()  # every attempt appends to the same log.txt
    assert "a new attempt of this run" in log and not list((runs / "seed2").glob("log.txt-*"))
    previous = [line for line in log.splitlines() if line.startswith("Previous epoch")]
    assert previous and int(previous[0].split(":")[1]) >= 2  # continued, not restarted
    assert (runs / "seed1" / "results.json").read_bytes() == first
    assert json.loads((runs / "seed2" / "results.json").read_text())["epoch"] == 10

    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0
    assert "0 run(s) ran, 2 skipped as finished, 0 failed" in again.stdout
    assert _table(again.stdout) == _table(resumed.stdout)


@needs_dassl
@SERIAL_TOY_GROUP
def test_softcpt_main_runs_the_toy_benchmark_and_prints_its_table(serial_toy_sweep):
    """scripts/softcpt/main.sh toy tiny NATA OPTIM.MAX_EPOCH 1, 1 shot (conftest.py's sweep,
    shared with tests/test_parallel_sweeps.py): runs finished, table row, curves."""
    out = serial_toy_sweep["output"]
    for seed in (1, 2):
        assert (out / "toy" / "SoftCPT" / "NATA" / "tiny_1shots_OPTIM.MAX_EPOCH-1" / f"seed{seed}" /
                "done").is_file()
    assert "| SoftCPT/NATA OPTIM.MAX_EPOCH=1 | tiny |" in _table(serial_toy_sweep["stdout"])
    assert (out / "toy" / "summary" / "curves.png").is_file()


@needs_dassl
def test_example_trainer_in_its_own_file_sweeps(tmp_path):
    """examples/my_trainer.py: registered by -m, keys added by its config hook, shared parts only."""
    env = dict(os.environ, OUTPUT=str(tmp_path / "out"), DATA=str(tmp_path / "data"), SHOTS="1", SEEDS="1")
    done = sweep("examples/my_trainer.sh", "toy", "tiny", "TRAINER.TASKWORD.N_CTX", "2", env=env,
                 timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    run = tmp_path / "out" / "toy" / "TaskWordCoOp" / "tiny_1shots_TRAINER.TASKWORD.N_CTX-2" / "seed1"
    report = json.loads((run / "results.json").read_text())
    assert report["trainer"] == "TaskWordCoOp" and len(report["tasks"]) == 3
    assert "N_CTX: 2" in (run / "log.txt").read_text()
    assert "| TaskWordCoOp TRAINER.TASKWORD.N_CTX=2 | tiny |" in done.stdout  # the option names the row
