"""Bad inputs end in ONE line naming the key (or flag, or file), the value and what is allowed,
with a non-zero exit and no traceback (docs/troubleshooting.md#configuration): one case per input
of issue 25's list, each run as a user runs it.

* ``before torch``: ``python train.py`` in a Python where torch, open_clip, Dassl's engine, the
  trainers and the datasets cannot be imported (about 0.5 s each): the value is refused before
  any of them is needed, and a check that is missing shows as an ImportError traceback.
* ``in process``: ``train.py`` (or ``scripts/interpret_prompt.py``) run as ``__main__`` in this
  process, where torch is imported already: what needs open_clip's list of models, a run folder
  or the images; each still stops before training.
"""
from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from yacs.config import CfgNode as CN

pytest.importorskip("dassl", reason="Dassl is not installed")

from dassl.config import get_cfg_default  # noqa: E402
from dassl.optim.optimizer import AVAI_OPTIMS  # noqa: E402
from fixtures_data import make_dataset_cfg, write_image_folder  # noqa: E402

import config  # noqa: E402
import train  # noqa: E402,F401  (torch and the trainers, imported once here, not in a test's time)
from config import ConfigError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "open_clip", "dassl.engine", "dassl.data", "trainers", "datasets")
TOY = ["--trainer", "SoftCPT", "--dataset-config-file", "configs/datasets/toy.yaml",
       "--config-file", "configs/trainers/SoftCPT/tiny.yaml"]
LONG = "x" * 300  # a path part over the 255 bytes a file name may have


def prompt_families() -> list[str]:
    """Every registered trainer node with a context length: the in-tree ones and any other
    family's (a new trainer's N_CTX is checked without being listed here)."""
    cfg = get_cfg_default()
    config.extend_cfg(cfg)
    return [name for name, node in cfg.TRAINER.items() if isinstance(node, CN) and "N_CTX" in node]


def one_error_line(code, stderr: str, *named: str) -> str:
    """Exit code non-zero, exactly one line on stderr, starting with ``error:``, naming ``named``."""
    assert code not in (0, None)
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    for word in named:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def run_without_torch(args: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    code = (f"import sys, runpy\nfor m in {HEAVY!r}: sys.modules[m] = None\n"
            f"sys.argv = ['train.py'] + sys.argv[1:]\nrunpy.run_path({str(REPO / 'train.py')!r}, "
            "run_name='__main__')")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=env)


def run_in_process(script: str, args: list[str], monkeypatch) -> str:
    """``script`` run as ``__main__``: the one line it exits with (SystemExit's message)."""
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", [script, *args])
    with pytest.raises(SystemExit) as ended:
        runpy.run_path(script, run_name="__main__")
    return one_error_line(1, str(ended.value.code), "")


# ------------------------------------------------------------------ before torch
BEFORE_TORCH = {  # id: (arguments after TOY and --output-dir, words the line must hold)
    "lr-inf": (["OPTIM.LR", "1e309"], ["OPTIM.LR is inf", "a finite number > 0"]),
    "max-epoch-20-digits": (["OPTIM.MAX_EPOCH", "12345678901234567890"],
                            ["OPTIM.MAX_EPOCH is 12345678901234567890", "[1, 1000000]"]),
    "seed-20-digits": (["--seed", "12345678901234567890"],
                       ["SEED (--seed) is 12345678901234567890", "[0, 4294967295]"]),
    "optimizer": (["OPTIM.NAME", "adamx"], ["OPTIM.NAME is 'adamx'", "'adamw'", "'sgd'"]),
    "scheduler": (["OPTIM.LR_SCHEDULER", "foo"], ["OPTIM.LR_SCHEDULER is 'foo'", "'cosine'"]),
    "input-size-zero": (["INPUT.SIZE", "(0, 0)"], ["INPUT.SIZE is (0, 0)", "two integers >= 1"]),
    "input-size-one-number": (["INPUT.SIZE", "(32,)"], ["INPUT.SIZE is (32,)", "two integers >= 1"]),
    "warmup-negative": (["OPTIM.WARMUP_EPOCH", "-1"], ["OPTIM.WARMUP_EPOCH is -1", "an integer >= 0"]),
    "final-model-typo": (["TEST.FINAL_MODEL", "best-val"],
                         ["TEST.FINAL_MODEL is 'best-val'", "['last_step', 'best_val']"]),
    "flag-after-options": (["OPTIM.MAX_EPOCH", "1", "--eval-only", "DATASET.NUM_SHOTS", "1"],
                           ["--eval-only comes after the KEY VALUE options", "flags before"]),
    "output-dir-part-too-long": (["--output-dir", f"/tmp/{LONG}"],
                                 ["OUTPUT_DIR (--output-dir) is", LONG, "at most 255 bytes"]),
    "root-part-too-long": (["--root", f"/tmp/{LONG}/data"],
                           ["DATASET.ROOT (--root) is", LONG, "at most 255 bytes"]),
}


@pytest.mark.parametrize("case", list(BEFORE_TORCH), ids=list(BEFORE_TORCH))
def test_a_bad_value_is_one_line_before_torch(case, tmp_path):
    args, named = BEFORE_TORCH[case]
    done = run_without_torch([*TOY, "--output-dir", str(tmp_path / "run"), *args])
    one_error_line(done.returncode, done.stderr, *named, "allowed:")
    assert done.stdout == ""


@pytest.mark.parametrize("family", prompt_families())
def test_a_context_longer_than_clips_77_tokens_is_one_line_before_torch(family, tmp_path):
    # CTX_INIT "": a family whose default context starts from words (KgCoOp's "a photo of a")
    # takes N_CTX from them, so N_CTX counts only without words
    words = [f"TRAINER.{family}.CTX_INIT", ""] if family in ("KGCOOP",) else []
    done = run_without_torch([*TOY, "--output-dir", str(tmp_path), *words, f"TRAINER.{family}.N_CTX", "100"])
    one_error_line(done.returncode, done.stderr, f"TRAINER.{family}.N_CTX is 100",
                   "an integer <= 73", "77")


def test_a_binary_config_file_is_one_line_before_torch(tmp_path):
    binary = tmp_path / "model.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")  # an image, named .yaml
    done = run_without_torch([*TOY[:4], "--config-file", str(binary), "--output-dir", str(tmp_path)])
    one_error_line(done.returncode, done.stderr, f"--config-file {binary}: not a text file",
                   "byte 0x89 at offset 0", "allowed: a YAML file")


def test_an_empty_output_dir_is_one_line_not_a_run_in_output(tmp_path):
    done = run_without_torch([*TOY, "--output-dir", ""], cwd=tmp_path)
    one_error_line(done.returncode, done.stderr, "--output-dir is ''", "allowed: a folder")
    assert not (tmp_path / "output").exists()


def test_the_config_error_also_reaches_the_runs_log_before_torch(tmp_path):
    run_without_torch([*TOY, "--output-dir", str(tmp_path), "OPTIM.NAME", "adamx"])
    assert "error: OPTIM.NAME is 'adamx'" in (tmp_path / "log.txt").read_text()


def test_the_optimizers_are_dassls_own():
    """The names config accepts are the ones Dassl's build_optimizer builds."""
    assert sorted(config.OPTIMIZERS) == sorted(AVAI_OPTIMS)


# ------------------------------------------------------------------ in process
def test_an_unknown_backbone_is_one_line_before_any_data(tmp_path, monkeypatch):
    line = run_in_process("train.py", [*TOY, "--root", str(tmp_path / "data"), "--output-dir",
                                       str(tmp_path / "run"), "MODEL.BACKBONE.NAME", "RN51"], monkeypatch)
    assert "MODEL.BACKBONE.NAME 'RN51' is not a file" in line and "'RN50'" in line
    assert not (tmp_path / "data").exists()  # nothing was built


def unfinished_run(folder: Path) -> Path:
    """A run folder as a killed training leaves it: epochs saved, no ``done`` marker."""
    (folder / "prompt_learner").mkdir(parents=True)
    for epoch in (1, 2):
        (folder / "prompt_learner" / f"model.pth.tar-{epoch}").write_bytes(b"")
    return folder


def test_eval_only_of_an_unfinished_run_needs_load_epoch(tmp_path, monkeypatch):
    run = unfinished_run(tmp_path / "run")
    line = run_in_process("train.py", [*TOY, "--root", str(tmp_path / "data"), "--eval-only",
                                       "--model-dir", str(run), "--output-dir", str(tmp_path / "eval")],
                          monkeypatch)
    assert f"--model-dir {run} is a training run that has not finished" in line
    assert "saved epochs [1, 2]" in line and "--load-epoch N" in line
    (run / "done").write_text("finished\n")  # finished: the same command goes past this check
    cfg = train.setup_cfg(train.build_parser().parse_args(
        [*TOY, "--eval-only", "--model-dir", str(run), "--output-dir", str(tmp_path / "eval")]))
    assert cfg.OUTPUT_DIR == str(tmp_path / "eval")


def test_interpret_prompt_refuses_a_folder_for_csv(tmp_path, monkeypatch):
    line = run_in_process("scripts/interpret_prompt.py", [str(tmp_path), "--csv", str(tmp_path)],
                          monkeypatch)
    assert f"--csv is '{tmp_path}', a folder" in line and "allowed: a file path" in line


def test_a_prompt_over_77_tokens_names_the_key_and_the_class():
    """Where the class names are known (the head is built), the longest one decides."""
    import torch

    from trainers.parts.prompt import PromptBuilder
    embedding = torch.nn.Embedding(49408, 8)
    PromptBuilder(["cat", "dog"], 73, embedding, key="TRAINER.COOP.N_CTX")  # 1 + 73 + 2 + 1 = 77
    name = "a very long class name indeed"  # 6 tokens, and '.'
    with pytest.raises(ConfigError) as err:
        PromptBuilder(["cat", name], 73, embedding, key="TRAINER.COOP.N_CTX")
    assert str(err.value).startswith("TRAINER.COOP.N_CTX is 73; allowed here: at most 68: ")
    assert repr(name) in str(err.value)


# ------------------------------------------------------------------ a damaged test image
def damage(kind: str, path: str) -> None:
    if kind == "truncated":
        data = open(path, "rb").read()
        open(path, "wb").write(data[:len(data) // 2])
    else:
        open(path, "w").write("not an image")


@pytest.mark.slow  # builds CLIP and encodes the split's images (about 5 s each)
@pytest.mark.parametrize("kind, workers", [("truncated", 2), ("not-an-image", 0)])
def test_a_test_image_damaged_after_the_split_is_named(kind, workers, data_root, monkeypatch):
    """The split file checked its images when written; one damaged later stops the evaluation
    with its path, also when a DataLoader worker read it."""
    from dassl.data.datasets import DATASET_REGISTRY
    write_image_folder(data_root, "pics", ["a", "b"], 10)
    ds_cfg = make_dataset_cfg(data_root, "ImageFolder", DATASET__IMAGE_FOLDER__DIR="pics")
    DATASET_REGISTRY.get("ImageFolder")(ds_cfg)  # writes the split file
    split = json.load(open(os.path.join(data_root, "pics", "split_imagefolder.json")))
    bad = os.path.join(data_root, "pics", split["test"][-1][0])
    damage(kind, bad)
    line = run_in_process("train.py", [
        "--trainer", "ZeroshotCLIP", "--config-file", "configs/trainers/ZeroshotCLIP/tiny.yaml",
        "--root", data_root, "--output-dir", os.path.join(data_root, "..", "run"),
        "DATASET.NAME", "ImageFolder", "DATASET.IMAGE_FOLDER.DIR", "pics",
        "DATALOADER.NUM_WORKERS", str(workers), "TEST.FEATURE_CACHE", "False"], monkeypatch)
    assert f"error: cannot read image {bad} of the test split" in line


# ------------------------------------------------------------------ a family's own check
@pytest.mark.parametrize("key, value, allowed", [
    ("C_GRID", "[]", "a non-empty list of finite numbers > 0"),
    ("C_GRID", "[0.0, 1.0]", "a non-empty list of finite numbers > 0"),
    ("PREC", "fp8", "one of ['fp16', 'fp32', 'amp']"),
    ("MAX_ITER", "0", "an integer >= 1"),
])
def test_linear_probe_values_are_checked_with_every_value(key, value, allowed):
    """config/linear_probe.py's check (register_config_check) runs in config.check_values."""
    from config.merge import merge_list
    cfg = get_cfg_default()
    config.extend_cfg(cfg)
    merge_list(cfg, [f"TRAINER.LINEAR_PROBE.{key}", value])
    with pytest.raises(ConfigError) as err:
        config.check_values(cfg)
    assert str(err.value).startswith(f"TRAINER.LINEAR_PROBE.{key} is ") and allowed in str(err.value)
