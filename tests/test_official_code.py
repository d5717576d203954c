"""Users of the official SoftCPT code: its commands, trainers, keys, config files, logs and run
folders are answered with, or read as, this project's (config/official.py,
docs/from_the_official_code.md)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import needs_dassl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFFICIAL_LOG = os.path.join(REPO, "tests", "data", "official_code", "log.txt")

# The official README's commands per variant (arguments after SHOTS) and what they are here,
# written out by hand from the variant table of docs/method.md#variants.
README_FORMS = [
    ("softcpt", "0 False 4 False 16 False lin 1", "NATA"),
    ("softcpt", "0 False 4 True 16 False lin 1", "NATS"),
    ("softcpt", "4 False 4 False 16 True lin 1 0.1", "CATA TRAINER.SOFTCPT.CLS_SAMPLE_RATE 0.1"),
    ("softcpt", "4 True 4 False 16 True lin 1 0.1", "CSTA TRAINER.SOFTCPT.CLS_SAMPLE_RATE 0.1"),
    ("softcpt", "4 False 4 True 16 True lin 1 0.1", "CATS TRAINER.SOFTCPT.CLS_SAMPLE_RATE 0.1"),
    ("softcpt", "4 True 4 True 16 True lin 1 0.1", "CSTS TRAINER.SOFTCPT.CLS_SAMPLE_RATE 0.1"),
    ("softcpt", "4 False 4 False 16 True lin 1", "CATA"),  # Plant-6: no class sampling
    ("coop", "16 False False", "MT"),
    ("coop", "16 False True", "CA"),
    ("coop", "16 True False", "CS"),
]
SCRIPTS = {"softcpt": "scripts/softcpt/main.sh", "coop": "scripts/coop/main.sh"}


def sweep(script: str, *args: str, tmp_path, shell: str = "bash") -> subprocess.CompletedProcess:
    env = dict(os.environ, OUTPUT=str(tmp_path / "out"), SKIP_SETUP="1", PYTHON=sys.executable)
    return subprocess.run([shell, script, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


# ----------------------------------------------------------------------- sweep scripts
@pytest.mark.parametrize("kind,rest,ours", README_FORMS, ids=[f"{k}-{o.split()[0]}" for k, _, o in README_FORMS])
def test_positional_forms_get_the_equivalent_command(kind, rest, ours):
    from config.official import main

    proc = subprocess.run([sys.executable, "-m", "config.official", kind, SCRIPTS[kind], "general10",
                           "rn50_ep50", "8", *rest.split()], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "nothing was run" in proc.stderr
    assert f"    SHOTS=8 bash {SCRIPTS[kind]} general10 rn50_ep50 {ours}\n" in proc.stderr
    assert main([kind, SCRIPTS[kind], "toy", "tiny"]) == 0  # our own forms pass through


def test_the_official_form_runs_nothing_and_names_the_command(tmp_path):
    args = "general10 rn50_ep50 1 0 False 4 False 16 False lin 1".split()
    proc = sweep("scripts/softcpt/main.sh", *args, tmp_path=tmp_path, shell="sh")  # its README's sh
    assert proc.returncode == 2, proc.stderr
    assert "SHOTS=1 bash scripts/softcpt/main.sh general10 rn50_ep50 NATA\n" in proc.stderr
    assert not (tmp_path / "out").exists()  # no junk folder
    bad = sweep("scripts/softcpt/main.sh", "toy", "tiny", "1x", tmp_path=tmp_path)
    assert bad.returncode == 2 and "VARIANT is '1x'; allowed: NATA, NATS" in bad.stderr
    assert not (tmp_path / "out").exists()
    short = sweep("scripts/softcpt/main.sh", "toy", "tiny", "1", "0", "False", tmp_path=tmp_path)
    assert short.returncode == 2 and "takes 11 arguments" in short.stderr


def user_scripts() -> list[str]:
    """The scripts a user runs (not the ones sourced by others)."""
    sourced = {"scripts/common.sh", "scripts/parallel.sh", "scripts/preflight.sh", "scripts/slurm/submit.sh"}
    out = []
    for folder, _, files in os.walk(REPO):
        if "/." in folder or "/tests" in folder or "/output" in folder or "/data" in folder:
            continue
        for f in files:
            rel = os.path.relpath(os.path.join(folder, f), REPO)
            if f.endswith(".sh") and rel not in sourced:
                out.append(rel)
    return sorted(out)


def test_every_user_script_runs_under_sh(tmp_path):
    scripts = user_scripts()
    assert "scripts/softcpt/main.sh" in scripts and len(scripts) >= 15
    for rel in scripts:
        with open(os.path.join(REPO, rel)) as f:
            second = f.read().split("\n")[1]
        assert second.startswith('[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"'), rel
    proc = sweep("scripts/coop/main.sh", "toy", "tiny", "ZZ", tmp_path=tmp_path, shell="sh")
    assert "source: not found" not in proc.stderr
    assert proc.returncode == 2 and "CoOp VARIANT is 'ZZ'" in proc.stderr  # bash ran it


# ----------------------------------------------------------------------- trainers, keys, files
# The official config nodes' keys (its train.py) and, by hand, the key each is here (None: no key).
OFFICIAL_KEYS = {
    "TRAINER.MTCOOP.PREC": "TRAINER.SOFTCPT.PREC", "TRAINER.MTCOOP.CLASS_N_CTX": "TRAINER.SOFTCPT.CLASS_N_CTX",
    "TRAINER.MTCOOP.CLASS_CSC": "TRAINER.SOFTCPT.CLASS_CSC",
    "TRAINER.MTCOOP.CLASS_CTX_INIT": "TRAINER.SOFTCPT.CLASS_CTX_INIT",
    "TRAINER.MTCOOP.CLASS_TOKEN_POSITION": None, "TRAINER.MTCOOP.TASK_N_CTX": "TRAINER.SOFTCPT.TASK_N_CTX",
    "TRAINER.MTCOOP.TASK_CTX_INIT": "TRAINER.SOFTCPT.TASK_CTX_INIT",
    "TRAINER.MTCOOP.TASK_CSC": "TRAINER.SOFTCPT.TASK_CSC", "TRAINER.MTCOOP.TASK_TOKEN_POSITION": None,
    "TRAINER.MTCOOP.N_CTX": "TRAINER.SOFTCPT.N_CTX", "TRAINER.MTCOOP.CTX_INIT": "TRAINER.SOFTCPT.CTX_INIT",
    "TRAINER.MTCOOP.CSC": "TRAINER.SOFTCPT.CSC",
    "TRAINER.MTCOOP.TOKEN_POSITION": "TRAINER.SOFTCPT.CLASS_TOKEN_POSITION",
    "TRAINER.MTCOOP.PG_TYPE": "TRAINER.SOFTCPT.META_NET", "TRAINER.MTCOOP.PG_RATIO": None,
    "TRAINER.MTCOOP.CLS_SAMPLE_RATE": "TRAINER.SOFTCPT.CLS_SAMPLE_RATE",
    "TRAINER.MTCOOP.FREEZE_CLS_PROMPT": "TRAINER.SOFTCPT.FREEZE_CLS_PROMPT",
    "TRAINER.MTCOOPH.PREC": "TRAINER.COOP.PREC", "TRAINER.MTCOOPH.N_CTX": "TRAINER.COOP.N_CTX",
    "TRAINER.MTCOOPH.CSC": "TRAINER.COOP.CSC", "TRAINER.MTCOOPH.CTX_INIT": "TRAINER.COOP.CTX_INIT",
    "TRAINER.MTCOOPH.TOKEN_POSITION": "TRAINER.COOP.CLASS_TOKEN_POSITION",
    "TRAINER.MTCOOPH.TSC": "TRAINER.COOP.SHARING",
    "TEST.PER_TASK_RESULT": None,
}


@needs_dassl
@pytest.mark.parametrize("key", sorted(OFFICIAL_KEYS))
def test_every_official_key_is_answered_with_ours(key):
    from dassl.config import get_cfg_default

    from config import ConfigError, extend_cfg
    from config.merge import all_keys, merge_list

    cfg = get_cfg_default()
    extend_cfg(cfg)
    with pytest.raises(ConfigError) as err:
        merge_list(cfg, [key, "1"])
    message = str(err.value)
    assert message.startswith(f"command line: {key} is the official SoftCPT code's") and "\n" not in message
    assert "docs/from_the_official_code.md#config-keys" in message
    ours = OFFICIAL_KEYS[key]
    if ours is None:
        assert "not a key here" in message or "not needed here" in message
    else:
        assert f"here it is {ours}" in message and ours in all_keys(cfg)  # a key that exists


@needs_dassl
def test_official_trainers_config_files_and_benchmark_names(tmp_path):
    import train
    from config import ConfigError

    for name, ours in (("MTCoOp", "SoftCPT"), ("MTCoOpHard", "CoOp")):
        with pytest.raises(ConfigError, match=rf"--trainer {name} is the official SoftCPT code's; "
                                              rf"here it is {ours} "):
            train.check_trainer(name)
    official = tmp_path / "rn50_ep50.yaml"  # its config files set these beside Dassl's keys
    official.write_text("OPTIM:\n  LR: 0.002\nTEST:\n  EVALUATOR: ClassificationMT\n  PER_TASK_RESULT: True\n"
                        "TRAINER:\n  MTCOOP:\n    PREC: fp16\n    PG_TYPE: lin\n")
    args = train.build_parser().parse_args(["--config-file", str(official), "--trainer", "SoftCPT"])
    with pytest.raises(ConfigError) as err:
        train.setup_cfg(args)
    message = str(err.value)
    for said in ("TEST.EVALUATOR ClassificationMT", "TEST.PER_TASK_RESULT", "TRAINER.MTCOOP.PREC",
                 "here it is TRAINER.SOFTCPT.META_NET"):
        assert said in message  # every key at once, not one per attempt
    with pytest.raises(ConfigError, match=r"--dataset-config-file configs/datasets/general10.yaml"):
        train.check_dataset("General10")
    with pytest.raises(ConfigError, match=r"Did you mean 'OxfordPets'"):
        train.check_dataset("OxfordPet")
    train.check_dataset("MultiTask")


# ----------------------------------------------------------------------- logs
def coop_parser(text: str) -> list[float]:
    """CoOp's parse_test_res.py as its README calls it: start at the line 'Finish training'."""
    out, go = [], False
    for line in text.splitlines():
        line = line.strip()
        if line == "Finish training":
            go = True
        m = re.search(r"\* accuracy: ([\.\deE+-]+)%", line)
        if go and m:
            out.append(float(m.group(1)))
    return out


def official_parser(text: str) -> tuple[list[float], list[float]]:
    """The official code's parse_test_res.py without --test-log: start at 'Finished training',
    read '* overall_metric: X%' and the per-task lines ending in 'metric: X%'."""
    overall, tasks, go = [], [], False
    for line in text.splitlines():
        line = line.strip()
        if line == "Finished training":
            go = True
        if not go:
            continue
        m = re.search(r"\* overall_metric: ([\.\d]+)%", line)
        if m:
            overall.append(float(m.group(1)))
        elif re.search(r"\tmetric: ([\.\d]+)%$", line):
            tasks.append(float(line.rsplit(" ", 1)[1].rstrip("%")))
    return overall, tasks


@needs_dassl
def test_both_parsers_find_the_result_in_our_log(tmp_path):
    from trainers.run.logs import open_run_log, restore_stdout

    previous = sys.stdout
    open_run_log(str(tmp_path))
    try:
        print("epoch [2/2] batch [1/1] loss 1.0")
        print("Finish training")  # as Dassl's after_train prints it
        print("=> result\n* task: 0 (a: task a)\ttotal: 4\tmetric: 50.00%")
        print("* accuracy: 50.00%")
        print("* overall_metric: 50.00%")
    finally:
        restore_stdout(previous)
    text = (tmp_path / "log.txt").read_text()
    assert "Finish training\nFinished training\n" in text
    assert coop_parser(text) == [50.0]
    assert official_parser(text) == ([50.0], [50.0])


@needs_dassl
@pytest.mark.slow
def test_a_training_run_logs_both_end_lines(toy_root, tmp_path):
    """Through train.py and Dassl's own after_train (which prints 'Finish training')."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "train.py", "--root", str(toy_root), "--seed", "1", "--trainer", "CoOp",
         "--dataset-config-file", "configs/datasets/toy.yaml", "--config-file",
         "configs/trainers/CoOp/tiny.yaml", "--output-dir", str(out), "DATASET.NUM_SHOTS", "1",
         "OPTIM.MAX_EPOCH", "1"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (out / "log.txt").read_text()
    assert len(coop_parser(text)) == 1 and len(official_parser(text)[0]) == 1
    assert official_parser(text)[0] == coop_parser(text)  # the same benchmark score


# ----------------------------------------------------------------------- results.py
def official_tree(root, seeds_and_scores) -> None:
    """Run folders as the official code writes them, its log.txt in each, the scores changed."""
    with open(OFFICIAL_LOG) as f:
        template = f.read()
    tag = "cnctx0_ccscFalse_tnctx4_tcscFalse_nctx16_cscFalse_typelin_ratio1.0_loss"
    for seed, score in seeds_and_scores:
        folder = root / "general10" / "MTCoOp" / "rn50_ep50_16shots" / tag / f"seed{seed}"
        folder.mkdir(parents=True)
        text = template.replace("seed: 1\n", f"seed: {seed}\n").replace(
            "* overall_metric: 74.73%", f"* overall_metric: {score:.2f}%")
        text = text.replace("(generic object recognition)\ttotal: 2465\tmetric: 93.18%",
                            f"(generic object recognition)\ttotal: 2465\tmetric: {score + 10:.2f}%")
        (folder / "log.txt").write_text(text)


def test_results_reads_the_official_codes_runs(tmp_path):
    from scripts import results

    official_tree(tmp_path, [(1, 74.73), (2, 75.13), (3, 74.33)])
    runs = results.collect([str(tmp_path)])
    assert len(runs) == 3
    for run in runs:
        assert run.method == "SoftCPT/NATA [official code]" and run.benchmark == "general10"
        assert run.config == "rn50_ep50" and run.shots == 16
        # overall_metric (the mean of the task metrics), not '* accuracy' (76.06, over all images)
        assert run.score != 76.06 and round(run.tasks["texture recognition"], 2) == 66.90
        assert len(run.tasks) == 10
    by_seed = {r.seed: r.score for r in runs}
    assert by_seed == {1: 74.73, 2: 75.13, 3: 74.33}
    assert round(next(r for r in runs if r.seed == 2).tasks["generic object recognition"], 2) == 85.13
    assert results.main([str(tmp_path), "--no-plot"]) == 0
    table = (tmp_path / "summary" / "table.md").read_text()
    row = next(line for line in table.splitlines() if "official code" in line)
    assert "74.73 ± 0.33" in row  # mean and population std of the three seeds, by hand


def test_official_folder_tags_name_the_variant():
    from config.official import official_method

    assert official_method("MTCoOp/cnctx4_ccscTrue_tnctx4_tcscTrue_nctx16_cscTrue_typelin_ratio1") == \
        "SoftCPT/CSTS [official code]"
    assert official_method("MTCoOp/cnctx4_ccscFalse_tnctx8_tcscFalse_nctx16_cscTrue_typelincls_ratio1") == \
        "SoftCPT/CATA TASK_N_CTX=8 META_NET=lincls [official code]"
    assert official_method("MTCoOpHard/nctx16_cscFalse_tscFalse") == "CoOp/MT [official code]"
    assert official_method("MTCoOp/unreadable") is None and official_method("SoftCPT/NATA") is None


def test_copying_the_fixture_keeps_its_format(tmp_path):
    """The fixture is the official format: tab-separated per-task lines, thousands separators
    only in the summary's totals."""
    shutil.copy(OFFICIAL_LOG, tmp_path / "log.txt")
    text = (tmp_path / "log.txt").read_text()
    assert official_parser(text)[0] == [74.73] and len(official_parser(text)[1]) == 10
    assert coop_parser(text) == []  # its Dassl fork never prints 'Finish training'
