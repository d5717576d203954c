"""A sweep skips a finished run only when the run recorded the settings the sweep would run now.

Folder names carry only the sweep's KEY VALUE options, so an edited config file (the paper
configs' reproduce block uncommented, another OPTIM.LR) used to return the old runs as
"skip (finished)". ``train.py --check-finished`` (torch-free) compares the run's recorded
settings (results.json) with the command's; scripts/common.sh asks it before skipping.

The fast tests call the check on a hand-written results.json (and once in a Python without
torch); the slow one finishes a real toy run through a sweep, edits its config file and
sweeps again (about 40 s on one core).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("dassl", reason="Dassl is not installed")

import train  # noqa: E402
from config import resolve_cfg  # noqa: E402
from config.run_settings import effective_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOY = ["--root", "/nonexistent/data", "--seed", "1", "--trainer", "SoftCPT",
       "--dataset-config-file", "configs/datasets/toy.yaml"]


def record_run(folder: Path, argv: list[str]) -> None:
    """A finished run's results.json, recording the settings ``argv`` gives (as a run does:
    the trainer's resolved config, run-only keys left out)."""
    cfg = train.setup_cfg(train.build_parser().parse_args(["--output-dir", str(folder)] + argv))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({"score": 50.0, "effective_config":
                                                     effective_config(resolve_cfg(cfg))}))


def check(folder: Path, argv: list[str]) -> int:
    return train.check_finished_settings(["--check-finished", "--output-dir", str(folder)] + argv)


def test_same_settings_pass_and_another_value_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    argv = TOY + ["--config-file", "configs/trainers/SoftCPT/tiny.yaml", "DATASET.NUM_SHOTS", "1",
                  "TRAINER.SOFTCPT.VARIANT", "NATS"]
    record_run(tmp_path / "run", argv)
    # The same command, run elsewhere and with other run-only keys: the same settings.
    assert check(tmp_path / "run", argv + ["DATALOADER.NUM_WORKERS", "3"]) == 0
    assert check(tmp_path / "run", argv + ["OPTIM.LR", "0.01"]) == 1
    err = capsys.readouterr().err
    assert "OPTIM.LR: 0.002 (recorded) -> 0.01 (this run)" in err
    assert len(re.findall(r"^  \S+: ", err, flags=re.M)) == 1  # that key only
    # A variant's keys are resolved on both sides: NATA's task context differs from NATS's.
    assert check(tmp_path / "run", argv[:-1] + ["NATA"]) == 1
    assert "TRAINER.SOFTCPT.VARIANT: 'NATS' (recorded) -> 'NATA' (this run)" in capsys.readouterr().err


def test_a_run_that_recorded_no_settings_is_kept_and_a_bad_config_is_an_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    argv = TOY + ["--config-file", "configs/trainers/SoftCPT/tiny.yaml"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text('{"score": 50.0}')  # an older version's
    assert check(tmp_path / "old", argv) == 0
    assert "records no settings to compare with" in capsys.readouterr().err
    assert check(tmp_path / "old", argv + ["OPTIM.NOSUCHKEY", "1"]) == 2
    assert "OPTIM.NOSUCHKEY" in capsys.readouterr().err


def test_the_check_imports_no_torch(tmp_path):
    argv = TOY + ["--config-file", "configs/trainers/SoftCPT/tiny.yaml"]
    record_run(tmp_path / "run", argv)
    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in ("torch", "open_clip", "dassl.engine",
                                                                       "trainers", "datasets"))
    code = (f"import runpy, sys; {blocked}; sys.argv = ['train.py', '--check-finished', '--output-dir', "
            f"{str(tmp_path / 'run')!r}] + {argv + ['OPTIM.LR', '0.5']!r}; "
            "runpy.run_path('train.py', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "OPTIM.LR: 0.002 (recorded) -> 0.5 (this run)" in done.stderr


SWEEP = """cd {repo} || exit 1
source scripts/common.sh
TRAINER_CONFIG_DIR={configs}
BENCHMARK=toy
sweep SoftCPT tiny "$OUTPUT/toy/SoftCPT/NATA/tiny_{{shots}}shots/seed{{seed}}" \\
    TRAINER.SOFTCPT.VARIANT NATA OPTIM.MAX_EPOCH 1
sweep_finish "$OUTPUT/toy"
"""


@pytest.mark.slow
def test_a_sweep_stops_at_a_finished_run_whose_config_file_changed(tmp_path):
    configs = tmp_path / "configs"
    (configs / "SoftCPT").mkdir(parents=True)
    config = configs / "SoftCPT" / "tiny.yaml"
    shutil.copy(REPO / "configs" / "trainers" / "SoftCPT" / "tiny.yaml", config)
    script = tmp_path / "sweep.sh"
    script.write_text(SWEEP.format(repo=REPO, configs=configs))
    env = dict(os.environ, OUTPUT=str(tmp_path / "out"), DATA=str(tmp_path / "data"), SHOTS="1", SEEDS="1",
               OMP_NUM_THREADS="1")
    runs = tmp_path / "out" / "toy" / "SoftCPT" / "NATA" / "tiny_1shots"

    def sweep(**extra) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(script)], cwd=REPO, env=dict(env, **extra), capture_output=True,
                              text=True, timeout=300)

    first = sweep()
    assert first.returncode == 0, first.stderr[-2000:]
    finished = (runs / "seed1" / "results.json").read_bytes()
    same = sweep()  # nothing changed: skipped (the variant's keys resolved as the run did)
    assert same.returncode == 0, same.stderr[-2000:]
    assert f"[sweep] skip   {runs}/seed1 (finished)" in same.stdout

    text = config.read_text()
    assert "LR: 0.002\n" in text
    config.write_text(text.replace("LR: 0.002\n", "LR: 0.003\n"))
    edited = sweep(SEEDS="1 2")
    assert edited.returncode == 2
    assert "OPTIM.LR: 0.002 (recorded) -> 0.003 (this run)" in edited.stderr
    assert f"[sweep] stopped at the finished run {runs}/seed1" in edited.stderr
    assert "skip" not in edited.stdout and not (runs / "seed2").exists()  # nothing more started
    assert (runs / "seed1" / "results.json").read_bytes() == finished
