"""scripts/results.py --paper: the published numbers (docs/paper_results.csv) beside ours.

Needs neither Dassl nor torch. The expected means are computed here from the scores written.
"""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys

import pytest

from scripts import results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHOTS = (1, 2, 4, 8, 16)
# The tables in docs/benchmarks.md#published-numbers: row -> method label in the CSV (the
# paper's 13 methods), column -> benchmark.
DOC_METHODS = {"ZS-CLIP": "ZeroshotCLIP", "ProtoNet": "ProtoNet", "LP-CLIP": "LinearProbeCLIP",
               "CoOp-CA": "CoOp/CA", "CoOp-CS": "CoOp/CS", "CoOp-MT": "CoOp/MT", "CoCoOp": "CoCoOp",
               "ProGrad": "ProGrad", "KgCoOp": "KgCoOp", "PLOT": "PLOT", "SoftCPT*": "SoftCPT*",
               "SoftCPT-NATS": "SoftCPT/NATS", "SoftCPT-NATA": "SoftCPT/NATA"}
DOC_BENCHMARKS = {"General-10": "general10", "Plant-6": "plant6", "RS-8": "rs8", "Fashion-20": "fashion20"}


def write_run(run_dir, score, trainer, config, shots, seed, **setting):
    os.makedirs(run_dir, exist_ok=True)
    report = {"score": score, "trainer": trainer, "config": config, "shots": shots, "seed": seed,
              "split": "test", "tasks": [{"key": "a", "score": score}], **setting}
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump(report, f)


def scores(base: float, shots: int, seed: int) -> float:
    return base + 2.0 * SHOTS.index(shots) + 0.5 * seed


@pytest.fixture
def general10(tmp_path):
    """output/general10: SoftCPT NATA (default), CoOp-CA (reproduce), zero-shot, NATS, an
    incomplete ViT-B/16 row, all rn50 except the last."""
    root = tmp_path / "output" / "general10"
    for k in SHOTS:
        for seed in (1, 2, 3):
            write_run(root / "SoftCPT" / "NATA" / f"rn50_ep50_{k}shots" / f"seed{seed}",
                      scores(60.0, k, seed), "SoftCPT", "rn50_ep50", k, seed,
                      prec="fp16", param_dtype="fp32", steps_per_batch=1)
            write_run(root / "CoOp" / "CA" / f"rn50_ep50_{k}shots" / f"seed{seed}",
                      scores(55.0, k, seed), "CoOp", "rn50_ep50", k, seed,
                      prec="fp16", param_dtype="fp16", steps_per_batch=1)
            write_run(root / "SoftCPT" / "NATS" / f"rn50_ep50_{k}shots" / f"seed{seed}",
                      scores(61.0, k, seed), "SoftCPT", "rn50_ep50", k, seed)
    write_run(root / "SoftCPT" / "NATA" / "vit_b16_ep50_1shots" / "seed1", 70.0, "SoftCPT",
              "vit_b16_ep50", 1, 1)
    write_run(root / "ZeroshotCLIP" / "rn50_ep50_0shots" / "seed1", 57.5, "ZeroshotCLIP",
              "rn50_ep50", 0, 1)
    return root


def rows_of(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| ---") and "method (paper)" not in line]


def test_every_published_number_sits_beside_ours_with_the_difference(general10, tmp_path):
    paper = {(r["benchmark"], r["method"]): float(r["score"]) for r in csv.DictReader(
        open(os.path.join(REPO, "docs", "paper_results.csv")))}
    done = subprocess.run([sys.executable, "scripts/results.py", str(general10), "--paper",
                           "--no-plot", "--out", str(tmp_path / "s")], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "s" / "paper.md").read_text() in done.stdout
    rows = rows_of(done.stdout.split("published numbers beside ours")[1])
    got = {(r[4], r[5]): r for r in rows if r[6] != "no run"}
    assert {r[4] for r in rows if r[6] == "no run"} == set(DOC_METHODS.values()) - {m for m, _ in got}
    nata = sum(scores(60.0, k, s) for k in SHOTS for s in (1, 2, 3)) / 15  # mean of seed means
    coop = sum(scores(55.0, k, s) for k in SHOTS for s in (1, 2, 3)) / 15
    nats = sum(scores(61.0, k, s) for k in SHOTS for s in (1, 2, 3)) / 15
    want = {("SoftCPT/NATA", "rn50_ep50"): (paper["general10", "SoftCPT/NATA"], nata, "default (fp32"),
            ("CoOp/CA", "rn50_ep50"): (paper["general10", "CoOp/CA"], coop, "reproduce (PARAM_DTYPE fp16"),
            ("SoftCPT/NATS", "rn50_ep50"): (paper["general10", "SoftCPT/NATS"], nats, "default (fp32"),
            ("ZeroshotCLIP", "rn50_ep50"): (paper["general10", "ZeroshotCLIP"], 57.5, "default (fp32")}
    assert set(got) == set(want)  # ViT-B/16: not the published backbone
    for key, (pub, ours, training) in want.items():
        row = got[key]
        assert row[1] == "RN50" and row[2] == "avg" and float(row[3]) == pub, row
        assert float(row[6]) == pytest.approx(ours, abs=0.005), row
        assert float(row[7]) == pytest.approx(ours - pub, abs=0.011), row
        assert row[8].startswith(training), row
    assert "STEPS_PER_BATCH 1" in got["CoOp/CA", "rn50_ep50"][8]
    # The published #params and minutes beside ours (these runs record none: "–").
    assert got["CoOp/CA", "rn50_ep50"][9:] == ["81,920 / –", "49.53 / –"]
    assert got["ZeroshotCLIP", "rn50_ep50"][9:] == ["", ""]  # none on either side


def test_incomplete_rows_and_unpublished_benchmarks_say_so(general10, tmp_path):
    runs = results.collect([str(general10)])
    runs = [r for r in runs if not (r.method == "SoftCPT/NATA" and r.shots == 16 and r.seed == 3)]
    text = results.paper_comparison(results.summarize(runs), runs)
    row = next(r for r in rows_of(text) if r[4] == "SoftCPT/NATA")
    assert row[6] == "incomplete: shots 16 (2/3 seeds)" and row[7] == ""
    # Only the paper's five shot counts make an average: 16 shots alone is not one.
    alone = [r for r in runs if r.method == "CoOp/CA" and r.shots == 16]
    row = next(r for r in rows_of(results.paper_comparison(results.summarize(alone), alone))
               if r[4] == "CoOp/CA")
    assert row[6] == "incomplete: shots 1, 2, 4, 8" and row[7] == ""
    toy = tmp_path / "output" / "toy"
    write_run(toy / "SoftCPT" / "NATA" / "tiny_1shots" / "seed1", 50.0, "SoftCPT", "tiny", 1, 1)
    runs = results.collect([str(toy)])
    assert "publishes none for 'toy'" in results.paper_comparison(results.summarize(runs), runs)
    missing = tmp_path / "output" / "plant6"
    write_run(missing / "SoftCPT" / "NATA" / "rn50_ep50_1shots" / "seed1", 50.0, "SoftCPT",
              "rn50_ep50", 1, 1)
    runs = results.collect([str(missing)])
    coop = next(r for r in rows_of(results.paper_comparison(results.summarize(runs), runs))
                if r[0] == "CoOp-CA")
    assert coop[6] == "no run"


def test_docs_table_and_data_file_agree():
    """docs/benchmarks.md cites docs/paper_results.csv's numbers, and nothing else: the scores
    of the 13 methods on the four benchmarks, then their #params / training minutes."""
    text = open(os.path.join(REPO, "docs", "benchmarks.md"), encoding="utf-8").read()
    section = text.split("## Published numbers", 1)[1].split("\n## ", 1)[0]
    tables = [[line for line in block.splitlines() if line.startswith("|")]
              for block in section.split("\n\n") if block.startswith("|")]
    assert len(tables) == 2
    doc: list[dict] = [{}, {}]
    for table, found in zip(tables, doc):
        header = [c.strip() for c in table[0].strip("|").split("|")]
        for line in table[2:]:
            cells = [c.strip() for c in line.strip("|").split("|")]
            for col, value in zip(header[1:], cells[1:]):
                if value:
                    found[DOC_BENCHMARKS[col], DOC_METHODS[cells[0]]] = value
    paper = [r for r in results.read_paper() if r["shots"] == "avg" and r["backbone"] == "RN50"]
    assert {k: float(v) for k, v in doc[0].items()} == {(r["benchmark"], r["method"]): r["score"] for r in paper}
    assert len(paper) == 13 * 4 and len({r["method"] for r in paper}) == 13
    costs = {k: tuple(v.split(" / ")) for k, v in doc[1].items()}
    assert {k: (int(p.replace(",", "")), float(m)) for k, (p, m) in costs.items()} == \
        {(r["benchmark"], r["method"]): (r["params"], r["train_min"]) for r in paper if r["params"] is not None}
    assert all(re.fullmatch(r"\d+\.\d\d", f"{r['score']:.2f}") for r in paper)
    # The four methods of issue 26, on every benchmark, as the paper's table: KgCoOp learns
    # one 4-token context per task (General-10: 10 tasks x 4 x 512 = 20,480).
    kg = {r["benchmark"]: r["params"] for r in paper if r["method"] == "KgCoOp"}
    assert kg == {"general10": 10 * 4 * 512, "plant6": 6 * 4 * 512, "rs8": 8 * 4 * 512, "fashion20": 20 * 4 * 512}


def test_a_per_shot_number_is_compared_with_that_shot_count(general10):
    """Rows with a shot count (the CSV holds only averages today) use that column's seed mean."""
    paper = [{"benchmark": "general10", "method": "SoftCPT/NATA", "paper_name": "NATA", "backbone": "RN50",
              "shots": 16, "score": 70.0}]
    runs = results.collect([str(general10)])
    row = next(r for r in rows_of(results.paper_comparison(results.summarize(runs), runs, paper)))
    want = sum(scores(60.0, 16, s) for s in (1, 2, 3)) / 3
    assert row[2] == "16" and float(row[6]) == pytest.approx(want, abs=0.005)
    assert float(row[7]) == pytest.approx(want - 70.0, abs=0.011)
