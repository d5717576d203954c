"""scripts/results.py on a stored real toy sweep: every output byte for byte as stored before
its tables moved to pandas, with the three later deliberate changes (tests/results_golden.py), tables written whole or not at all,
and --paper's training column taken from the runs as read, not from a second reading.

Needs neither Dassl nor torch."""
from __future__ import annotations

import difflib
import os
import shutil

import pytest

import results_golden as golden
from scripts import results

CASES = sorted(golden.CASES)


def test_every_case_has_its_stored_outputs():
    assert sorted(os.listdir(golden.EXPECTED)) == CASES


@pytest.mark.parametrize("case", CASES)
def test_outputs_are_the_stored_ones_byte_for_byte(case, tmp_path):
    got = golden.produce(case, str(tmp_path))
    folder = os.path.join(golden.EXPECTED, case)
    want = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            want[name] = f.read()
    assert sorted(got) == sorted(want), "another set of files"
    for name in want:
        if name.endswith(".png"):  # its bytes depend on matplotlib's and FreeType's versions
            assert png_size(got[name]) == png_size(want[name]), f"{case}/{name}: another figure size"
            continue
        if got[name] != want[name]:
            diff = difflib.unified_diff(want[name].decode().splitlines(), got[name].decode().splitlines(),
                                        f"expected/{case}/{name}", "now", lineterm="", n=1)
            pytest.fail("\n".join(list(diff)[:40]))


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's header (its IHDR chunk comes first)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_a_failed_write_keeps_every_older_table_whole(tmp_path, monkeypatch):
    shutil.copytree(os.path.join(golden.DATA, "output"), tmp_path / "output")
    monkeypatch.chdir(tmp_path)
    argv = ["output", "--paper", "--out", "s"]
    assert results.main(argv) == 0
    before = {name: (tmp_path / "s" / name).read_bytes() for name in os.listdir(tmp_path / "s")}
    assert {"table.md", "table.csv", "tasks.csv", "runs.csv", "transfer.csv", "curves.png",
            "paper.md"} <= set(before)
    golden.make_gaps(str(tmp_path))  # the tables would change

    def fail(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space left"):
        results.main(argv)
    assert {name: (tmp_path / "s" / name).read_bytes() for name in os.listdir(tmp_path / "s")} == before
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert results.main(argv) == 0 and (tmp_path / "s" / "table.md").read_bytes() != before["table.md"]


def test_the_training_setting_is_read_once_with_the_run(tmp_path, monkeypatch):
    shutil.copytree(os.path.join(golden.DATA, "output"), tmp_path / "output")
    monkeypatch.chdir(tmp_path)
    golden.paper_comparison(str(tmp_path), ["output/toy"])
    first = (tmp_path / "paper_comparison.md").read_text()
    assert "default (fp32, STEPS_PER_BATCH 1)" in first
    real_open = open

    def no_second_reading(path, *args, **kwargs):
        assert not str(path).endswith("results.json"), f"{path} read again"
        return real_open(path, *args, **kwargs)
    runs = results.collect(["output/toy"])
    monkeypatch.setattr("builtins.open", no_second_reading)
    with pytest.MonkeyPatch.context() as m:
        m.setitem(results.CONFIG_BACKBONES, "tiny", "tiny")
        text = results.paper_comparison(results.summarize(runs), runs, golden.TOY_PAPER)
    assert text == first
