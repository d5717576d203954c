"""The project's one atomic writer (atomic_files.py): the umask's mode, a synced folder, used by
datasets/ without importing trainers/, and no second writer anywhere."""
from __future__ import annotations

import ast
import json
import os
import pickle
import re
import stat
from pathlib import Path

import pytest
import torch

import atomic_files

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=[0o022, 0o027, 0o002, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_get_the_umask_mode_not_mkstemps_0600(tmp_path, umask):
    expected = 0o666 & ~umask  # what open(path, "w") gives, computed here from the umask alone
    atomic_files.atomic_write(str(tmp_path / "a.json"), "{}")
    atomic_files.atomic_torch_save({"x": torch.zeros(2)}, str(tmp_path / "b.pt"))
    atomic_files.atomic_write_stream(str(tmp_path / "c.pkl"), lambda f: pickle.dump([1], f))
    with open(tmp_path / "plain", "w"):
        pass
    assert mode(tmp_path / "plain") == expected
    for name in ("a.json", "b.pt", "c.pkl"):
        assert mode(tmp_path / name) == expected, name


def test_folders_get_the_umask_mode_not_mkdtemps_0700(tmp_path, umask):
    assert atomic_files.atomic_folder(str(tmp_path / "task"),
                                      lambda d: open(os.path.join(d, "x"), "w").close())
    assert mode(tmp_path / "task") == 0o777 & ~umask
    assert os.listdir(tmp_path) == ["task"]


def test_folder_already_made_by_another_process_is_kept(tmp_path):
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "theirs").write_text("")
    assert not atomic_files.atomic_folder(str(tmp_path / "task"),
                                          lambda d: open(os.path.join(d, "ours"), "w").close())
    assert os.listdir(tmp_path / "task") == ["theirs"] and os.listdir(tmp_path) == ["task"]


def test_dataset_files_are_written_by_it_with_the_umask_mode(tmp_path, umask):
    """Split files and few-shot draws in a shared $DATA: readable as the umask allows."""
    pytest.importorskip("dassl", reason="Dassl is not installed")
    from dassl.data.datasets import Datum

    from datasets.fewshot import save_cache
    from datasets.splits import write_split_file
    image = tmp_path / "images" / "a.jpg"
    image.parent.mkdir()
    image.write_bytes(b"")
    items = [Datum(impath=str(image), label=0, classname="a")]
    write_split_file(str(tmp_path / "split.json"), str(tmp_path / "images"), items, items, items)
    save_cache(str(tmp_path / "shot_1-seed_1.pkl"), items, items)
    assert json.load(open(tmp_path / "split.json"))["test"] == [["a.jpg", 0, "a"]]
    assert pickle.load(open(tmp_path / "shot_1-seed_1.pkl", "rb"))["train"][0].label == 0
    for name in ("split.json", "shot_1-seed_1.pkl"):
        assert mode(tmp_path / name) == 0o666 & ~umask, name


def test_the_folder_is_synced_after_the_rename(tmp_path, monkeypatch):
    events: list = []
    replace, fsync = os.replace, os.fsync
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("rename"), replace(a, b)))
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(
        "sync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "sync file"), fsync(fd)))
    atomic_files.atomic_write(str(tmp_path / "a.json"), "{}")
    assert events == ["sync file", "rename", "sync folder"]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_datasets_and_the_writer_never_import_trainers():
    """The dependency goes from trainers/ to datasets/ only; atomic_files imports nothing of ours."""
    for path in sorted((REPO / "datasets").glob("*.py")):
        assert "trainers" not in imported_modules(path), path.name
    ours = {p.stem for p in REPO.glob("*.py")} | {"trainers", "datasets", "scripts"}
    assert not imported_modules(REPO / "atomic_files.py") & ours


# Writes through a temporary file that do not go through atomic_files, with the reason.
OTHER_RENAMES = {
    "scripts/download_splits.py": "gdown writes the download itself; it is renamed after its check",
}


def test_no_second_atomic_writer():
    """mkstemp/mkdtemp and rename-into-place appear only in atomic_files.py."""
    pattern = re.compile(r"\b(mkstemp|mkdtemp|os\.replace|os\.rename)\(")
    found = []
    for folder in ("trainers", "datasets", "scripts", "examples"):
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel not in OTHER_RENAMES and pattern.search(path.read_text()):
                found.append(rel)
    for path in REPO.glob("*.py"):
        if path.name != "atomic_files.py" and pattern.search(path.read_text()):
            found.append(path.name)
    assert found == []


def test_trainers_atomic_is_the_same_writer():
    from trainers.run import atomic
    assert atomic.atomic_write is atomic_files.atomic_write
    assert atomic.atomic_torch_save is atomic_files.atomic_torch_save
    assert atomic.KILL_ENV == atomic_files.KILL_ENV
