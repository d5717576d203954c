"""What scripts/results.py prints and writes for the stored toy sweep (tests/data/results_toy/).

The tree under tests/data/results_toy/output/ is a copy of a real toy sweep (the four
main.sh scripts, a small task transfer and base-to-new run, README.md#the-results-table),
reduced to what scripts/results.py reads: each run's results.json without its
``effective_config`` (the config dump, never read), and log.txt for the runs the
``gaps`` case reads from their log. expected/<case>/ holds every output of each case
below, made by scripts/results.py before its tables moved to pandas, then regenerated
once, for three deliberate changes only: the #params and train min columns (table.md,
runs.csv, paper columns), cells read from a log marked "(N read from log.txt)", and
--paper's avg given only over complete 1-16 shot sets ("incomplete: shots ...");
tests/test_results_golden.py compares today's outputs with them byte for byte.

    python tests/results_golden.py store OUTPUT_DIR   # copy a sweep's output/ into the tree
    python tests/results_golden.py expect             # rewrite expected/ (only with a reason)
"""
from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import shutil
import sys
from typing import Callable
from unittest import mock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from scripts import results  # noqa: E402

DATA = os.path.join(REPO, "tests", "data", "results_toy")
EXPECTED = os.path.join(DATA, "expected")
STDOUT = "stdout.txt"
# Runs the gaps case changes: read from its log instead, no result at all, an empty results.json.
FROM_LOG = "output/toy/CoOp/CA/tiny_2shots/seed2"
NO_RESULT = "output/toy/SoftCPT/NATA/tiny_4shots/seed3"
EMPTY_JSON = "output/toy/LinearProbeCLIP/tiny_2shots/seed1"
# Published numbers for the toy benchmark (made up), so that --paper's table has rows:
# a tiny config counts as the backbone "tiny" (CONFIG_BACKBONES patched).
TOY_PAPER = [{"benchmark": "toy", "method": m, "paper_name": n, "backbone": "tiny", "shots": k, "score": s}
             for m, n, k, s in (("SoftCPT/NATA", "NATA", "avg", 42.5), ("SoftCPT/NATA", "NATA", 16, 55.0),
                                ("CoOp/CA", "CoOp-CA", "avg", 44.0), ("CoOp/CA", "CoOp-CA", 4, 47.25),
                                ("LinearProbeCLIP", "LP", 8, 70.0), ("ZeroshotCLIP", "ZS", "avg", 30.0),
                                ("CoOp/CS", "CoOp-CS", "avg", 40.0))]


def make_gaps(root: str) -> None:
    """A run read from its log, a run without a result, a run with an empty results.json."""
    os.remove(os.path.join(root, FROM_LOG, "results.json"))
    os.remove(os.path.join(root, NO_RESULT, "results.json"))
    open(os.path.join(root, EMPTY_JSON, "results.json"), "w").close()


def paper_comparison(root: str, trees: list[str]) -> None:
    """--paper's table for TOY_PAPER, written to paper_comparison.md."""
    runs = results.collect(trees)
    with mock.patch.dict(results.CONFIG_BACKBONES, {"tiny": "tiny"}):
        text = results.paper_comparison(results.summarize(results.split_transfer_runs(runs)[0]), runs,
                                        TOY_PAPER)
    with open(os.path.join(root, "paper_comparison.md"), "w", encoding="utf-8") as f:
        f.write(text)


def main_case(argv: list[str], out: str, prepare: Callable[[str], None] = lambda root: None) -> Callable:
    """A case that runs results.main(argv) in the tree's copy; its outputs are the files under
    ``out`` and what it printed."""
    def run(root: str) -> dict[str, bytes]:
        prepare(root)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert results.main(argv) == 0
        files = {STDOUT: printed.getvalue().encode("utf-8")}
        for name in sorted(os.listdir(os.path.join(root, out))):
            with open(os.path.join(root, out, name), "rb") as f:
                files[name] = f.read()
        return files
    return run


def paper_case(trees: list[str], prepare: Callable[[str], None] = lambda root: None) -> Callable:
    def run(root: str) -> dict[str, bytes]:
        prepare(root)
        paper_comparison(root, trees)
        with open(os.path.join(root, "paper_comparison.md"), "rb") as f:
            return {"paper_comparison.md": f.read()}
    return run


# name -> a function of the tree's copy (the working folder) giving {output name: bytes}
CASES = {
    "toy": main_case(["output/toy"], "output/toy/summary"),
    "toy_paper": main_case(["output/toy", "--paper", "--no-plot", "--out", "s"], "s"),
    "all": main_case(["output", "--no-plot"], "output/summary"),
    "transfer": main_case(["output/task_transfer/toy", "--no-plot"], "output/task_transfer/toy/summary"),
    "two_trees": main_case(["output/base2new", "output/toy", "--out", "s"], "s"),
    "gaps": main_case(["output/toy", "--paper"], "output/toy/summary", make_gaps),
    "paper_rows": paper_case(["output/toy"]),
    "paper_rows_gaps": paper_case(["output/toy"], make_gaps),
}


def produce(case: str, workdir: str) -> dict[str, bytes]:
    """The outputs of ``case``, run on a fresh copy of the stored tree in ``workdir``."""
    shutil.copytree(os.path.join(DATA, "output"), os.path.join(workdir, "output"))
    here = os.getcwd()
    os.chdir(workdir)  # relative paths, as in the files stored
    try:
        return CASES[case](workdir)
    finally:
        os.chdir(here)


def store(output: str) -> None:
    """Copy the run folders of ``output`` (a sweep's output/) into DATA/output, reduced to what
    results.py reads."""
    dest = os.path.join(DATA, "output")
    shutil.rmtree(dest, ignore_errors=True)
    for run_dir in results.find_run_dirs(output):
        rel = os.path.relpath(run_dir, output)
        os.makedirs(os.path.join(dest, rel))
        path = os.path.join(run_dir, "results.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                report = json.load(f)
            report.pop("effective_config", None)
            with open(os.path.join(dest, rel, "results.json"), "w", encoding="utf-8") as f:
                json.dump(report, f, indent=2)
        if not os.path.isfile(path) or os.path.join("output", rel) == FROM_LOG:  # read from the log
            for log in glob.glob(os.path.join(run_dir, "log.txt*")):
                shutil.copy2(log, os.path.join(dest, rel))


def expect() -> None:
    import tempfile

    shutil.rmtree(EXPECTED, ignore_errors=True)
    for case in CASES:
        with tempfile.TemporaryDirectory() as work:
            files = produce(case, work)
        os.makedirs(os.path.join(EXPECTED, case))
        for name, data in files.items():
            with open(os.path.join(EXPECTED, case, name), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    if sys.argv[1:2] == ["store"]:
        store(sys.argv[2])
    elif sys.argv[1:] == ["expect"]:
        expect()
    else:
        sys.exit(__doc__)
