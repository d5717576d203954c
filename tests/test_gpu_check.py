"""scripts/bench/gpu_check.sh --dry-run: the GPU check's own logic on CPU at tiny size."""
from __future__ import annotations

import os
import subprocess

import pytest

pytest.importorskip("dassl", reason="Dassl is not installed")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_dry_run_writes_one_table_with_every_check(tmp_path):
    done = subprocess.run(["bash", "scripts/bench/gpu_check.sh", "--dry-run", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=1200,
                          env=dict(os.environ, SOFTCPT_CACHE=str(tmp_path / "cache")))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = (tmp_path / "gpu_check.md").read_text()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| (")]
    checks = [r[0][:3] for r in rows]
    assert checks.count("(a)") == 9 and checks.count("(b)") == 5
    assert checks.count("(c)") == 1 and checks.count("(d)") == 2
    assert all(r[3] == "yes" for r in rows), rows
    repro = next(r for r in rows if r[1].startswith("reproduce"))
    assert "task_ctx fp16" in repro[2] and "meta_net.weight fp32" in repro[2]
    assert all("task_ctx fp32" in r[2] for r in rows if r[0].startswith("(b)") and r is not repro)
    cache = next(r for r in rows if r[0].startswith("(c)"))
    assert "read from the cache: True; same score: True" in cache[2]
    assert text.count("```") == 4  # both benchmarks' own tables kept below the summary
