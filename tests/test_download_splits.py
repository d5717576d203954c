"""scripts/download_splits.py, offline: a fake gdown stands in for Google Drive."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("download_splits", REPO / "scripts" / "download_splits.py")
ds = importlib.util.module_from_spec(spec)
sys.modules["download_splits"] = ds  # dataclasses look their module up while the file runs
spec.loader.exec_module(ds)


class FakeDrive:
    def __init__(self, payload: bytes = b'{"train": [], "val": [], "test": []}'):
        self.payload, self.calls = payload, []

    def __call__(self, id: str, output: str, quiet: bool = False):
        self.calls.append(id)
        with open(output, "wb") as f:
            f.write(self.payload)
        return output


def test_fetches_for_existing_folders_and_skips_present_files(tmp_path):
    (tmp_path / "oxford_pets").mkdir()
    (tmp_path / "eurosat").mkdir()
    (tmp_path / "eurosat" / "split_zhou_EuroSAT.json").write_text("{}")
    drive = FakeDrive()
    assert ds.main(["--root", str(tmp_path)], download=drive) == 0
    assert drive.calls == ["1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs"]  # only OxfordPets: EuroSAT has its file
    assert json.loads((tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json").read_text())["train"] == []
    assert not (tmp_path / "food-101").exists()
    drive.calls.clear()
    ds.main(["--root", str(tmp_path)], download=drive)
    assert drive.calls == []  # second run: everything present


def test_named_datasets_create_their_folders(tmp_path):
    drive = FakeDrive()
    ds.main(["--root", str(tmp_path), "--datasets", "OxfordFlowers"], download=drive)
    files = sorted(os.listdir(tmp_path / "oxford_flowers"))
    assert files == ["cat_to_name.json", "split_zhou_OxfordFlowers.json"]


def test_a_bad_download_leaves_nothing(tmp_path, capsys):
    code = ds.main(["--root", str(tmp_path), "--datasets", "EuroSAT"], download=FakeDrive(b"<html>quota</html>"))
    assert code == 1 and "a web page, not the file" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []  # neither the file nor the folder made for it


def test_dry_run_and_missing_root(tmp_path):
    drive = FakeDrive()
    ds.main(["--root", str(tmp_path), "--all", "--dry-run"], download=drive)
    assert drive.calls == [] and os.listdir(tmp_path) == []
    with pytest.raises(SystemExit, match="does not exist"):
        ds.main(["--root", str(tmp_path / "nope")], download=drive)
    with pytest.raises(SystemExit, match="unknown dataset"):
        ds.main(["--root", str(tmp_path), "--datasets", "OxfordPet"], download=drive)


def test_imagenet_classnames_copied_to_variants(tmp_path):
    (tmp_path / "imagenet-sketch").mkdir()
    drive = FakeDrive(b"n01440764 tench\n")
    ds.main(["--root", str(tmp_path), "--datasets", "ImageNetSketch"], download=drive)
    assert (tmp_path / "imagenet-sketch" / "classnames.txt").read_text() == "n01440764 tench\n"


def test_runs_as_a_script(tmp_path):
    script = str(REPO / "scripts" / "download_splits.py")
    out = subprocess.run([sys.executable, script, "--root", str(tmp_path), "--all", "--dry-run"],
                         capture_output=True, text=True, check=True)
    assert "split_zhou_UCF101.json" in out.stderr


def test_sources_match_the_adapters():
    """Every split file an adapter reads is one the script fetches, in the same folder."""
    pytest.importorskip("dassl", reason="Dassl is not installed")
    from dassl.data.datasets import DATASET_REGISTRY

    import datasets  # noqa: F401  (registers the datasets)
    from datasets.base import SplitFileDataset
    fetched = {(s.dataset, s.folder, s.filename) for s in ds.SOURCES}
    adapters = [DATASET_REGISTRY.get(n) for n in DATASET_REGISTRY.registered_names()]
    needed = {(c.__name__, c.dataset_dir, c.split_file) for c in adapters
              if isinstance(c, type) and issubclass(c, SplitFileDataset)}
    assert len(needed) == 9 and needed <= fetched
