"""scripts/results.py on a fixture tree: our results.json, CoOp-format logs, gaps.

Needs neither Dassl nor torch: the results command reads files only.
"""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from scripts import results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_ours(run_dir, score, tasks=None, trainer="SoftCPT", config="tiny", shots=1, seed=1):
    os.makedirs(run_dir, exist_ok=True)
    tasks = tasks or {"shapes": score - 1.0, "colours": score + 1.0}
    report = {"score": score, "trainer": trainer, "config": config, "shots": shots, "seed": seed,
              "split": "test", "tasks": [{"key": k, "score": v} for k, v in tasks.items()]}
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump(report, f)
    open(os.path.join(run_dir, "done"), "w").close()


def write_coop_log(run_dir, accuracy=None, seed=1, name="log.txt", val=None):
    """A log as CoOp's train.py + Dassl 0.6 print it (args, config dump, result)."""
    os.makedirs(run_dir, exist_ok=True)
    lines = ["***************", "** Arguments **", "***************", "backbone: ",
             "config_file: configs/trainers/CoOp/rn50_ep50.yaml",
             "dataset_config_file: configs/datasets/oxford_pets.yaml", f"seed: {seed}",
             "trainer: CoOp", "************", "** Config **", "************", "DATASET:",
             "  NAME: OxfordPets", "  NUM_SHOTS: 16", "SEED: 1"]
    if val is not None:  # a validation result printed during training does not count
        lines += ["Evaluate on the *val* set", "=> result", "* total: 148", f"* accuracy: {val}%"]
    lines += ["epoch [50/50] batch [1/1] loss 0.5", "Checkpoint saved to x"]
    if accuracy is not None:
        lines += ["Finish training", "Deploy the last-epoch model", "Evaluate on the *test* set",
                  "=> result", "* total: 3,669", "* correct: 3,300", f"* accuracy: {accuracy}%",
                  "* error: 10.0%", "* macro_f1: 89.0%", "Elapsed: 0:01:00"]
    with open(os.path.join(run_dir, name), "w") as f:
        f.write("\n".join(lines) + "\n")


@pytest.fixture
def tree(tmp_path):
    """output/toy with SoftCPT (ours), CoOp's own layout and logs, and gaps."""
    toy = tmp_path / "output" / "toy"
    soft = toy / "SoftCPT" / "NATA"
    for seed, score in zip((1, 2, 3), (60.123, 62.0, 64.5)):
        write_ours(soft / "tiny_1shots" / f"seed{seed}", score, seed=seed)
    for seed, score in zip((1, 2), (70.25, 71.0)):  # seed3 never ran
        write_ours(soft / "tiny_2shots" / f"seed{seed}", score, shots=2, seed=seed)
    write_ours(toy / "ZeroshotCLIP" / "tiny_0shots" / "seed1", 40.0, trainer="ZeroshotCLIP", shots=0)
    coop = toy / "CoOp"
    for seed, acc in zip((1, 2, 3), ("55.0", "56.0", "57.5")):
        write_coop_log(coop / "tiny_1shots" / "nctx16_cscFalse_ctpend" / f"seed{seed}", acc, seed=seed,
                       val="99.0")
    write_coop_log(coop / "tiny_2shots" / "nctx16_cscFalse_ctpend" / "seed1")  # crashed: no result
    run = coop / "tiny_2shots" / "nctx16_cscFalse_ctpend" / "seed2"
    write_coop_log(run, None, seed=2)  # interrupted, then resumed into a newer log file
    write_coop_log(run, "58.0", seed=2, name="log.txt-2026-01-01-00-00-00")
    os.utime(run / "log.txt", (1, 1))
    return toy


def test_table_numbers_gaps_and_files(tree, tmp_path, capsys):
    out = tmp_path / "summary"
    assert results.main([str(tree), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    std = np.std([60.123, 62.0, 64.5])  # population std, from unrounded values
    assert f"| SoftCPT/NATA | tiny |  | {np.mean([60.123, 62.0, 64.5]):.2f} ± {std:.2f} | " \
           "70.62 ± 0.38 (2/3 seeds) | incomplete |" in printed
    assert "| CoOp/nctx16_cscFalse_ctpend | tiny |  | 56.17 ± 1.03 (3 read from log.txt) | " \
           "58.00 ± 0.00 (1/3 seeds, 1 read from log.txt) | incomplete |" in printed
    assert "| ZeroshotCLIP | tiny | 40.00 ± 0.00 |  |  |  |" in printed  # one seed is complete
    assert "## Runs without a result" in printed
    assert str(tree / "CoOp" / "tiny_2shots" / "nctx16_cscFalse_ctpend" / "seed1") in printed
    assert "| SoftCPT/NATA | tiny | 2 | 69.62 ± 0.38 (2/3 seeds) | 71.62 ± 0.38 (2/3 seeds) |" in printed
    assert "| CoOp/nctx16_cscFalse_ctpend | tiny | 1 |  |  |" in printed  # CoOp logs: no tasks

    with open(out / "table.csv") as f:
        table = {(r["method"], r["shots"]): r for r in csv.DictReader(f)}
    row = table[("SoftCPT/NATA", "1")]
    assert float(row["mean"]) == np.mean([60.123, 62.0, 64.5]) and float(row["std"]) == std
    assert table[("SoftCPT/NATA", "2")]["missing_seeds"] == "3"
    assert table[("CoOp/nctx16_cscFalse_ctpend", "2")]["missing_seeds"] == "1;3"
    assert table[("CoOp/nctx16_cscFalse_ctpend", "2")]["n_seeds"] == "1"
    with open(out / "tasks.csv") as f:
        tasks = [r for r in csv.DictReader(f) if r["method"] == "SoftCPT/NATA" and r["shots"] == "1"]
    assert [r["task"] for r in tasks] == ["shapes", "colours"]
    assert (out / "table.md").read_text().startswith("## toy")
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_a_log_gives_only_its_test_result_never_a_validation_one(tmp_path):
    """An interrupted TEST.FINAL_MODEL best_val run printed validation results only: no result."""
    runs = tmp_path / "toy" / "CoOp"
    write_coop_log(runs / "tiny_1shots" / "seed1", None, val="99.0")  # stopped before its test
    write_coop_log(runs / "tiny_1shots" / "seed2", "55.5", seed=2, val="99.0")
    old = runs / "tiny_1shots" / "seed3"  # CoOp's older Dassl: "Do evaluation on <split> set"
    os.makedirs(old)
    (old / "log.txt").write_text("seed: 3\nDo evaluation on val set\n=> result\n* accuracy: 98.0%\n"
                                 "Finish training\nDo evaluation on test set\n=> result\n"
                                 "* accuracy: 54.5%\n")
    found = {r.seed: r for r in results.collect([str(tmp_path / "toy")])}
    assert found[1].score is None and "no result in its log" in found[1].reason
    assert (found[2].score, found[2].source) == (55.5, "log.txt")
    assert found[3].score == 54.5
    text = results.markdown(results.summarize(list(found.values())), [])
    assert "| CoOp | tiny | 55.00 ± 0.50 (2/3 seeds, 2 read from log.txt) |" in text


def test_costs_are_read_per_run_and_old_runs_leave_them_blank(tmp_path):
    """#params and train min: from results.json (trainers/parts/evaluation.py, run_costs)."""
    toy = tmp_path / "toy"
    for seed, seconds, device in ((1, 60.0, "cpu"), (2, 180.0, "cpu")):
        write_ours(toy / "CoOp" / "CA" / "tiny_1shots" / f"seed{seed}", 50.0, trainer="CoOp", seed=seed)
        path = toy / "CoOp" / "CA" / "tiny_1shots" / f"seed{seed}" / "results.json"
        report = json.loads(path.read_text())
        report.update(learnable_params=3072, train_seconds=seconds, train_device=device)
        path.write_text(json.dumps(report))
    for seed, device in ((1, "cpu"), (2, "NVIDIA H100")):
        write_ours(toy / "SoftCPT" / "NATA" / "tiny_1shots" / f"seed{seed}", 50.0, seed=seed)
        path = toy / "SoftCPT" / "NATA" / "tiny_1shots" / f"seed{seed}" / "results.json"
        report = json.loads(path.read_text())
        report.update(learnable_params=100 * seed, train_seconds=30.0, train_device=device)
        path.write_text(json.dumps(report))
    write_ours(toy / "ZeroshotCLIP" / "tiny_0shots" / "seed1", 40.0, trainer="ZeroshotCLIP", shots=0)
    bad = toy / "CoOp" / "MT" / "tiny_1shots" / "seed1"  # recorded, but not usable: blank, no error
    write_ours(bad, 45.0, trainer="CoOp")
    report = json.loads((bad / "results.json").read_text())
    report.update(learnable_params="many", train_seconds=-1, train_device=7)
    (bad / "results.json").write_text(json.dumps(report))
    runs = results.collect([str(toy)])
    text = results.markdown(results.summarize(runs), runs)
    assert "| CoOp/CA | tiny |  | 50.00 ± 0.00 | 50.00 | 3,072 | 2.00 |" in text  # (1 + 3 min) / 2
    assert "| SoftCPT/NATA | tiny |  | 50.00 ± 0.00 | 50.00 | 100 / 200 | 0.50 (NVIDIA H100, cpu) |" in text
    assert "| ZeroshotCLIP | tiny | 40.00 ± 0.00 |  |  |  |  |" in text
    assert "| CoOp/MT | tiny |  | 45.00 ± 0.00 (1/2 seeds) | incomplete |  |  |" in text
    assert "(the training epochs, no evaluation), on NVIDIA H100, cpu." in text
    rows = {(r["method"], r["seed"]): r for r in csv.DictReader(io.StringIO(results.runs_csv(runs)))}
    assert (rows["CoOp/CA", "2"]["params"], rows["CoOp/CA", "2"]["train_seconds"]) == ("3072", "180.0")
    assert rows["CoOp/MT", "1"]["params"] == rows["CoOp/MT", "1"]["device"] == ""


def test_complete_rows_get_the_average_over_shots(tmp_path):
    toy = tmp_path / "toy"
    for shots, scores in ((1, (50.0, 52.0)), (4, (60.0, 61.0))):
        for seed, score in zip((1, 2), scores):
            write_ours(toy / "CoOp" / "CA" / f"tiny_{shots}shots" / f"seed{seed}", score,
                       trainer="CoOp", shots=shots, seed=seed)
    text = results.markdown(results.summarize(results.collect([str(toy)])), [])
    assert "| CoOp/CA | tiny | 51.00 ± 1.00 | 60.50 ± 0.50 | 55.75 |" in text


@pytest.mark.parametrize("rel, meta, expected", [
    ("toy/SoftCPT/NATA/tiny_4shots/seed2", {"trainer": "SoftCPT"}, ("toy", "SoftCPT/NATA", "tiny", 4, 2)),
    ("oxford_pets/CoOp/rn50_ep50_16shots/nctx16_cscFalse_ctpend/seed1", {"trainer": "CoOp"},
     ("oxford_pets", "CoOp/nctx16_cscFalse_ctpend", "rn50_ep50", 16, 1)),
    ("base2new/test_new/toy/shots_16/SoftCPT/NATA/tiny/seed3", {"trainer": "SoftCPT", "config": "tiny"},
     ("toy [test_new]", "SoftCPT/NATA", "tiny", 16, 3)),
    ("ZeroshotCLIP/rn50/oxford_pets", {"trainer": "ZeroshotCLIP", "config": "rn50", "seed": -1, "shots": -1},
     ("oxford_pets", "ZeroshotCLIP", "rn50", 0, -1)),
    ("toy/Mystery/tiny_1shots/seed1", {}, ("toy", "Mystery", "tiny", 1, 1)),
    ("toy/CoOp/CA/tiny_2shots/seed3", {}, ("toy", "CoOp/CA", "tiny", 2, 3)),  # crashed: no record
])
def test_describe_reads_coop_layouts(tmp_path, rel, meta, expected):
    root = tmp_path / "output"
    assert results.describe(str(root / rel), str(root), meta, results.BUILTIN_TRAINERS) == expected


def test_runs_with_other_options_are_rows_of_their_own(tmp_path):
    """Folders named by the sweeps' KEY VALUE options (scripts/common.sh, options_tag)."""
    runs = tmp_path / "toy" / "SoftCPT" / "NATA"
    for folder, scores in (("rn50_ep50_16shots", (50.0, 52.0)),
                           ("rn50_ep50_16shots_OPTIM.LR-0.001", (60.0, 61.0)),
                           ("rn50_ep50_16shots_OPTIM.LR-0.001_TRAINER.SOFTCPT.N_CTX-4", (70.0, 74.0)),
                           ("rn50_ep50_16shots_MODEL.INIT_WEIGHTS-%2Fw%20x.pth", (30.0, 30.0))):
        for seed, score in zip((1, 2), scores):
            write_ours(runs / folder / f"seed{seed}", score, config="rn50_ep50", shots=16, seed=seed)
    text = results.markdown(results.summarize(results.collect([str(tmp_path / "toy")])), [])
    assert "| SoftCPT/NATA | rn50_ep50 | 51.00 ± 1.00 |" in text
    assert "| SoftCPT/NATA OPTIM.LR=0.001 | rn50_ep50 | 60.50 ± 0.50 |" in text
    assert "| SoftCPT/NATA OPTIM.LR=0.001 TRAINER.SOFTCPT.N_CTX=4 | rn50_ep50 | 72.00 ± 2.00 |" in text
    assert "| SoftCPT/NATA MODEL.INIT_WEIGHTS=/w x.pth | rn50_ep50 | 30.00 ± 0.00 |" in text
    assert text.split("Per task")[0].count("| SoftCPT/NATA") == 4  # one row each, none pooled


@pytest.mark.parametrize("rel, meta, expected", [
    ("toy/CoOp/CA/tiny_2shots_TRAINER.COOP.N_CTX-4_OPTIM.LR-1e-05/seed3", {"trainer": "CoOp"},
     ("toy", "CoOp/CA TRAINER.COOP.N_CTX=4 OPTIM.LR=1e-05", "tiny", 2, 3)),
    ("base2new/test_new/toy/shots_16/SoftCPT/NATA/tiny_OPTIM.LR-0.001/seed1", {"trainer": "SoftCPT",
                                                                              "config": "tiny"},
     ("toy [test_new]", "SoftCPT/NATA OPTIM.LR=0.001", "tiny", 16, 1)),
    ("toy/Mystery/tiny_1shots_INPUT.SIZE-%28224,%20224%29/seed1", {},
     ("toy", "Mystery INPUT.SIZE=(224, 224)", "tiny", 1, 1)),
    ("toy/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1_4shots/seed1", {},  # underscores alone are no options
     ("toy", "CoCoOp", "vit_b16_c4_ep10_batch1_ctxv1", 4, 1)),
])
def test_describe_reads_option_folders(tmp_path, rel, meta, expected):
    root = tmp_path / "output"
    assert results.describe(str(root / rel), str(root), meta, results.BUILTIN_TRAINERS) == expected


def test_base_to_new_table_has_the_harmonic_mean(tmp_path):
    for split, score in (("train_base", 80.0), ("test_new", 60.0)):
        write_ours(tmp_path / "base2new" / split / "toy" / "shots_16" / "SoftCPT" / "NATA" / "tiny" / "seed1",
                   score, shots=16)
        write_ours(tmp_path / "base2new" / split / "toy" / "shots_16" / "SoftCPT" / "NATA" / "tiny_OPTIM.LR-0.1" /
                   "seed1", score / 2, shots=16)  # another setting: its own row, its own H
    text = results.markdown(results.summarize(results.collect([str(tmp_path / "base2new")])), [])
    assert "| toy | SoftCPT/NATA | tiny | 16 | 80.00 ± 0.00 | 60.00 ± 0.00 | 68.57 |" in text
    assert "| toy | SoftCPT/NATA OPTIM.LR=0.1 | tiny | 16 | 40.00 ± 0.00 | 30.00 ± 0.00 | 34.29 |" in text


def test_command_line_defaults_and_errors(tree, tmp_path):
    done = subprocess.run([sys.executable, "scripts/results.py", str(tree), "--no-plot"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0 and "(2/3 seeds)" in done.stdout
    assert (tree / "summary" / "table.csv").is_file() and not (tree / "summary" / "curves.png").exists()
    again = results.collect([str(tree)])  # the summary folder is not mistaken for a run
    assert all("summary" not in r.path for r in again)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert results.main([str(empty)]) == 1
    assert results.main([str(tmp_path / "nowhere")]) == 2


@pytest.mark.parametrize("content, reason", [
    ("", "results.json: it is empty"),
    ('{"score": 50.0, "tasks": [', "results.json: it is not valid JSON"),
    ("[1, 2, 3]", "results.json: it holds a JSON list, not an object"),
    ('{"score": "high"}', "results.json: its 'score' is 'high', not a number"),
    ('{"score": 50.0, "tasks": [{"key": "a"}]}', "results.json: its 'tasks' is not a list"),
    (b"\xff\xfe\x00garbage", "results.json: cannot read it"),
])
def test_a_broken_results_json_is_listed_with_its_reason_and_hides_nothing(tmp_path, content, reason):
    toy = tmp_path / "toy"
    for seed in (1, 2, 3):
        write_ours(toy / "SoftCPT" / "NATA" / "tiny_1shots" / f"seed{seed}", 60.0 + seed, seed=seed)
    bad = toy / "SoftCPT" / "NATA" / "tiny_1shots" / "seed4"
    write_ours(bad, 0.0, seed=4)
    (bad / "results.json").write_bytes(content if isinstance(content, bytes) else content.encode())
    done = subprocess.run([sys.executable, "scripts/results.py", str(toy), "--no-plot"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "62.00 ± 0.82 (3/4 seeds)" in done.stdout  # the three valid runs are all in the table
    without = done.stdout.split("## Runs without a result")[1]
    assert f"- {bad}: {reason}" in without
    with open(toy / "summary" / "runs.csv") as f:
        rows = {r["seed"]: r for r in csv.DictReader(f)}
    assert rows["4"]["score"] == "" and rows["4"]["reason"].startswith(reason)


def test_unparsable_logs_and_unfinished_runs_say_why(tmp_path, monkeypatch):
    toy = tmp_path / "toy"
    write_ours(toy / "CoOp" / "CA" / "tiny_1shots" / "seed1", 50.0, trainer="CoOp")
    write_coop_log(toy / "CoOp" / "CA" / "tiny_1shots" / "seed2", None, seed=2)  # stopped mid-run
    broken = toy / "CoOp" / "CA" / "tiny_1shots" / "seed3"
    write_coop_log(broken, "55.0", seed=3)
    real = results.read_log

    def fail_on_seed3(path):
        if "seed3" in path:
            raise ValueError("bad line 7")
        return real(path)
    monkeypatch.setattr(results, "read_log", fail_on_seed3)
    runs = {r.seed: r for r in results.collect([str(toy)])}
    assert runs[1].score == 50.0
    assert runs[2].score is None and "no result in its log" in runs[2].reason
    assert runs[3].score is None and runs[3].reason == "log.txt: cannot parse it (bad line 7)"


@pytest.mark.slow  # runs a sweep script
def test_sweep_exits_non_zero_when_its_table_command_fails(tmp_path):
    script = tmp_path / "sweep.sh"
    script.write_text(f"cd {REPO}\nsource scripts/common.sh\nsweep_finish {tmp_path}\n")
    fake = tmp_path / "python"
    fake.write_text('#!/bin/bash\ncase "$2" in "# sweep pre-flight"*) exit 0 ;; esac\n'
                    "echo 'table failed' >&2\nexit 4\n")
    fake.chmod(0o755)
    done = subprocess.run(["bash", str(script)], env=dict(os.environ, PYTHON=str(fake)),
                          capture_output=True, text=True)
    assert done.returncode != 0 and "scripts/results.py" in done.stderr
