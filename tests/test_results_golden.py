"""scripts/results.py on a stored real toy sweep: every output byte for byte as stored before
its tables moved to pandas (tests/results_golden.py), tables written whole or not at all,
and --paper's training column taken from the runs as read, not from a second reading.

Needs neither Dassl nor torch."""
from __future__ import annotations

import difflib
import os


import pytest

import results_golden as golden

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
        if got[name] != want[name] and not name.endswith(".png"):
            diff = difflib.unified_diff(want[name].decode().splitlines(), got[name].decode().splitlines(),
                                        f"expected/{case}/{name}", "now", lineterm="", n=1)
            pytest.fail("\n".join(list(diff)[:40]))
        assert got[name] == want[name], f"{case}/{name} differs"
