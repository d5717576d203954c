"""A weights file or a download that fails ends in one line naming the file and the fix, before
any traceback, and never with advice to load a file unsafely (trainers/parts/backbone.py,
scripts/download_splits.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest
import torch
from torch import nn

from trainers.parts import backbone
from trainers.parts.backbone import WeightsError, load_clip, tiny_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torchscript_archive(path) -> None:
    """A TorchScript archive as OpenAI ships CLIP: a traced module whose state dict holds the
    checkpoint's tensors under the same names (built here from the tiny weights)."""
    state = torch.load(tiny_checkpoint(), weights_only=True)
    root = nn.Module()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        node = root
        for part in parents:
            if not hasattr(node, part):
                node.add_module(part, nn.Module())
            node = getattr(node, part)
        node.register_buffer(leaf, value.clone())

    class Traced(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for name, child in root.named_children():
                self.add_module(name, child)
            for name, buf in root.named_buffers(recurse=False):
                self.register_buffer(name, buf)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    torch.jit.trace(Traced(), torch.zeros(1)).save(str(path))


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    path = tmp_path_factory.mktemp("ts") / "RN50.pt"
    torchscript_archive(path)
    return path


def test_a_torchscript_archive_loads_like_the_state_dict(archive):
    assert zipfile.is_zipfile(archive)
    with zipfile.ZipFile(archive) as z:  # TorchScript's records, not torch.save's data.pkl alone
        assert any("/code/__torch__/" in n for n in z.namelist()) and any(n.endswith("/constants.pkl") for n in z.namelist())
    model = load_clip(str(archive))
    reference = torch.load(tiny_checkpoint(), weights_only=True)
    assert torch.equal(model.token_embedding.weight, reference["token_embedding.weight"])


def damaged(kind: str, archive, folder) -> str:
    path = folder / f"{kind}.pt"
    data = archive.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "html":  # what a browser saves when a download is refused
        path.write_text("<!DOCTYPE html>\n<html><head><title>Google Drive - Quota exceeded</title>")
    elif kind == "not_clip":
        torch.save({"epoch": 3}, path)
    return str(path)


@pytest.mark.parametrize("kind,said", [("truncated", "is truncated"), ("empty", "is empty"),
                                       ("html", "is a web page"),
                                       ("not_clip", "not a CLIP checkpoint")])
def test_a_damaged_file_is_named_in_one_line(kind, said, archive, tmp_path):
    path = damaged(kind, archive, tmp_path)
    with pytest.raises(WeightsError) as err:
        load_clip(path)
    message = str(err.value)
    assert path in message and said in message and "\n" not in message
    assert "INSTALL.md#clip-weights" in message
    assert "weights_only" not in message  # never the unsafe advice


def test_a_missing_file_and_a_failed_download(tmp_path, monkeypatch):
    with pytest.raises(WeightsError, match=r"no such weights file"):
        load_clip(str(tmp_path / "RN50.pt"))
    monkeypatch.setattr(backbone, "OPENAI_CACHE", str(tmp_path))

    def offline(*args, **kwargs):
        raise RuntimeError("Failed to download: <urlopen error [Errno -3] Temporary failure>\nline 2")

    monkeypatch.setattr(backbone.open_clip, "load_openai_model", offline)
    with pytest.raises(WeightsError) as err:
        load_clip("RN50")
    assert str(tmp_path / "RN50.pt") in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_train_py_prints_the_one_line_and_no_traceback(archive, tmp_path, toy_root):
    path = damaged("html", archive, tmp_path)
    proc = subprocess.run(
        [sys.executable, "train.py", "--root", str(toy_root), "--trainer", "CoOp",
         "--dataset-config-file", "configs/datasets/toy.yaml", "--config-file",
         "configs/trainers/CoOp/tiny.yaml", "--output-dir", str(tmp_path / "run"),
         "MODEL.BACKBONE.NAME", path], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and path in proc.stderr


# ----------------------------------------------------------------------- download_splits.py
def test_download_splits_offline_says_how_to_fetch_by_hand(tmp_path, capsys):
    import requests

    from scripts import download_splits

    def offline(**kwargs):
        raise requests.exceptions.ConnectionError(
            "HTTPSConnectionPool(host='drive.google.com', port=443): Max retries exceeded\nmore")

    code = download_splits.main(["--root", str(tmp_path), "--datasets", "OxfordPets", "EuroSAT"],
                                download=offline)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 2 and "Traceback" not in err
    for name, drive_id in (("split_zhou_OxfordPets.json", "1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs"),
                           ("split_zhou_EuroSAT.json", "1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o")):
        line = next(line for line in lines if name in line)
        assert f"https://drive.google.com/file/d/{drive_id}" in line and "DATASETS.md#split-files" in line
    assert os.listdir(tmp_path) == []  # no empty folder left behind
