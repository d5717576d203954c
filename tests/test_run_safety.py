"""A run knows its settings and its backbone, owns its folder, stops cleanly on a signal, and
ends a storage fault or a bad input in one line without losing a checkpoint (issue 16,
points 2, 3, 5 and 8; the paper configs' resume is tests/test_resume_paper.py)."""
from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys
import time

import shutil

import pytest
import torch

pytest.importorskip("dassl", reason="Dassl is not installed")

import train  # noqa: E402
from trainers.run import checkpoint as ckpt_io  # noqa: E402
from trainers.run import run_folder  # noqa: E402
from config import ConfigError  # noqa: E402
from config.run_settings import config_differences  # noqa: E402
from trainers.parts.backbone import build_tiny_clip, load_clip, tiny_checkpoint  # noqa: E402
from trainers.parts.feature_cache import weights_fingerprint  # noqa: E402
from trainers.parts.text_encoder import TextEncoder  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = ["--seed", "1", "--trainer", "SoftCPT", "--dataset-config-file", "configs/datasets/toy.yaml",
       "--config-file", "configs/trainers/SoftCPT/tiny.yaml", "DATASET.NUM_SHOTS", "1"]


def toy_args(root, out, *extra) -> list[str]:
    return ["--root", str(root), "--output-dir", str(out), *TOY, *extra]


# ------------------------------------------------------------------ fast: inputs
@pytest.mark.parametrize("key,value,allowed", [("TRAIN.CHECKPOINT_FREQ", "-1", "an integer >= 0"),
                                               ("OPTIM.WEIGHT_DECAY", "-5", "a finite number >= 0")])
def test_out_of_range_values_are_one_line_errors(key, value, allowed):
    args = train.build_parser().parse_args(["--trainer", "SoftCPT", key, value])
    with pytest.raises(ConfigError) as err:
        train.setup_cfg(args)
    assert str(err.value).startswith(f"{key} is -")
    assert allowed in str(err.value) and "\n" not in str(err.value)


def test_an_empty_trainer_config_is_a_one_line_error(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    args = train.build_parser().parse_args(["--trainer", "SoftCPT", "--config-file", str(empty)])
    with pytest.raises(ConfigError) as err:
        train.setup_cfg(args)
    assert f"--config-file {empty} is empty" in str(err.value)
    assert "configs/trainers/SoftCPT/" in str(err.value) and "\n" not in str(err.value)


def test_only_keys_that_change_results_are_compared():
    recorded = {"OPTIM": {"LR": 0.002, "MAX_EPOCH": 50}, "OUTPUT_DIR": "a",
                "DATALOADER": {"NUM_WORKERS": 8}, "TRAIN": {"CHECKPOINT_FREQ": 0}}
    current = {"OPTIM": {"LR": 0.001, "MAX_EPOCH": 50}, "OUTPUT_DIR": "b",
               "DATALOADER": {"NUM_WORKERS": 2}, "TRAIN": {"CHECKPOINT_FREQ": 5}}
    assert config_differences(recorded, current) == [("OPTIM.LR", 0.002, 0.001)]


def test_dassls_old_minus_one_defaults_are_the_same_setting():
    """Runs recorded before WARMUP_EPOCH / NUM_SHOTS defaulted to 0 wrote Dassl's -1 (none)."""
    old = {"OPTIM": {"WARMUP_EPOCH": -1}, "DATASET": {"NUM_SHOTS": -1}}
    assert config_differences(old, {"OPTIM": {"WARMUP_EPOCH": 0}, "DATASET": {"NUM_SHOTS": 0}}) == []
    assert config_differences(old, {"OPTIM": {"WARMUP_EPOCH": 1}, "DATASET": {"NUM_SHOTS": 0}}) == \
        [("OPTIM.WARMUP_EPOCH", -1, 1)]
    assert config_differences({"OPTIM": {"WARMUP_EPOCH": 0}}, {"OPTIM": {"WARMUP_EPOCH": 1}}) == \
        [("OPTIM.WARMUP_EPOCH", 0, 1)]


def test_only_non_snapshot_epochs_older_than_the_newest_are_removed(tmp_path):
    for e in range(1, 6):
        (tmp_path / f"model.pth.tar-{e}").write_bytes(b"x")
    removed = ckpt_io.prune_resume_points(str(tmp_path), 5, freq=2, max_epoch=6)
    assert sorted(os.path.basename(p) for p in removed) == ["model.pth.tar-1", "model.pth.tar-3"]
    assert ckpt_io.saved_epochs(str(tmp_path)) == [2, 4, 5]  # snapshots, and the newest


def test_a_full_disk_inside_torch_save_is_found_behind_its_runtime_error(tmp_path):
    class Full(io.RawIOBase):
        def writable(self):
            return True

        written = 0

        def write(self, b):
            if self.written + len(b) > 100:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.written += len(b)
            return len(b)

    with pytest.raises(Exception) as err:  # torch may wrap it (a RuntimeError about the zip writer)
        torch.save({"x": torch.zeros(1000)}, Full())
    cause = ckpt_io.storage_cause(err.value)
    assert cause is not None and cause.errno == errno.ENOSPC
    wrapped = RuntimeError("unexpected pos 6016 vs 5910")
    wrapped.__context__ = cause
    assert ckpt_io.storage_cause(wrapped) is cause
    hidden = ValueError("a message of its own")  # `raise ... from None`: not a storage fault
    hidden.__context__, hidden.__suppress_context__ = cause, True
    assert ckpt_io.storage_cause(hidden) is None


# ------------------------------------------------------------------ slow: real runs
@pytest.fixture(scope="module")
def finished(toy_root, tmp_path_factory):
    """A finished 2-epoch toy run (CHECKPOINT_FREQ 0: only the last epoch is a snapshot)."""
    out = tmp_path_factory.mktemp("finished")
    train.main(toy_args(toy_root, out, "OPTIM.MAX_EPOCH", "2", "TRAIN.CHECKPOINT_FREQ", "0"))
    return out


def snapshot(folder) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "log.txt"
            and not p.name.startswith(".run.")}


@pytest.mark.slow
def test_a_rerun_with_a_setting_that_changes_results_is_refused(toy_root, finished):
    before = snapshot(finished)
    with pytest.raises(ConfigError) as err:
        train.main(toy_args(toy_root, finished, "OPTIM.MAX_EPOCH", "2", "TRAIN.CHECKPOINT_FREQ", "0",
                            "OPTIM.LR", "0.001"))
    message = str(err.value)
    assert "  OPTIM.LR: 0.002 (recorded) -> 0.001 (this run)" in message.splitlines()
    assert len([line for line in message.splitlines() if "(recorded) ->" in line]) == 1
    assert "--output-dir" in message and "remov" not in message and "delet" not in message
    assert snapshot(finished) == before  # neither resumed nor rewritten
    assert (finished / "log.txt").read_text().endswith(f"error: {message}\n")


@pytest.mark.slow
def test_a_rerun_with_only_another_worker_count_goes_on(toy_root, finished):
    results = (finished / "results.json").read_text()
    train.main(toy_args(toy_root, finished, "OPTIM.MAX_EPOCH", "2", "TRAIN.CHECKPOINT_FREQ", "0",
                        "DATALOADER.NUM_WORKERS", "1"))
    assert "Previous epoch: 2" in (finished / "log.txt").read_text()
    strip = lambda text: text.replace('"resumed_from_epoch": null', '"resumed_from_epoch": 2')  # noqa: E731
    assert (finished / "results.json").read_text() == strip(results)


@pytest.mark.slow
def test_another_weights_file_is_refused_for_evaluation_and_resume(toy_root, finished, tmp_path,
                                                                   monkeypatch):
    """The tiny backbone's name with another weights file of the same sizes."""
    ckpt = torch.load(finished / "prompt_learner" / "model.pth.tar-2", weights_only=True)
    assert ckpt["backbone"]["name"] == "tiny" and len(ckpt["backbone"]["weights"]) == 32
    before = snapshot(finished)
    clip = build_tiny_clip()
    with torch.no_grad():
        next(clip.visual.parameters()).add_(0.01)
    torch.save(clip.state_dict(), tiny_checkpoint(str(tmp_path)))
    monkeypatch.setenv("SOFTCPT_CACHE", str(tmp_path))
    with pytest.raises(ckpt_io.CheckpointError) as err:
        train.main(["--eval-only", "--model-dir", str(finished), "--output-dir", str(tmp_path / "eval"),
                    "--root", str(toy_root), *TOY])
    saved = ckpt["backbone"]["weights"]
    assert f"trained on backbone tiny (weights {saved})" in str(err.value)
    assert "this run uses tiny (weights " in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "eval" / "results.json").exists() and not (tmp_path / "eval" / "done").exists()
    with pytest.raises(ckpt_io.CheckpointError) as err:  # resuming the run on it
        train.main(toy_args(toy_root, finished, "OPTIM.MAX_EPOCH", "2", "TRAIN.CHECKPOINT_FREQ", "0"))
    assert f"trained on backbone tiny (weights {saved})" in str(err.value)
    assert "remov" not in str(err.value) and "delet" not in str(err.value)
    assert snapshot(finished) == before


@pytest.mark.slow
def test_an_older_fp16_checkpoint_is_evaluated_on_the_cpu(toy_root, finished, tmp_path):
    """A checkpoint as an older version wrote it on a GPU with PREC fp16 (the encoders hashed as
    loaded in fp16), evaluated here, where every PREC runs in fp32."""
    run = tmp_path / "gpu_run"
    shutil.copytree(finished, run, ignore=shutil.ignore_patterns(".run.*"))
    path = run / "prompt_learner" / "model.pth.tar-2"
    ckpt = torch.load(path, weights_only=True)
    clip = load_clip("tiny", "", "fp16", "cpu")
    old = ":".join(weights_fingerprint(m)[:16] for m in (clip.visual, TextEncoder(clip)))
    ckpt["backbone"] = {"name": "tiny", "pretrained_tag": "", "weights": old}
    torch.save(ckpt, path)
    out = tmp_path / "eval"
    train.main(["--eval-only", "--model-dir", str(run), "--output-dir", str(out), "--root",
                str(toy_root), *TOY, "TRAINER.SOFTCPT.PREC", "fp16"])
    assert (out / "results.json").exists()
    assert (f"{path} records its backbone as an older version did (weights {old}, loaded in fp16)"
            in (out / "log.txt").read_text())


@pytest.mark.slow
def test_a_full_disk_ends_in_one_line_and_keeps_the_last_checkpoint(toy_root, tmp_path, monkeypatch):
    """ENOSPC inside torch.save of epoch 2 (as a full disk raises it), then the same command."""
    real_fdopen = os.fdopen

    class Full(io.FileIO):
        def write(self, b):
            if self.tell() + len(b) > 1000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write(b)

    def fdopen(fd, *args, **kwargs):
        if ".model.pth.tar-2." in os.readlink(f"/proc/self/fd/{fd}"):
            return Full(fd, "wb")
        return real_fdopen(fd, *args, **kwargs)

    out = tmp_path / "run"
    args = toy_args(toy_root, out, "OPTIM.MAX_EPOCH", "3", "TRAIN.CHECKPOINT_FREQ", "0")
    monkeypatch.setattr(os, "fdopen", fdopen)
    with pytest.raises(train.StorageError) as err:
        train.main(args)
    monkeypatch.undo()
    path = out / "prompt_learner" / "model.pth.tar-2"
    message = str(err.value)
    assert message.startswith(f"cannot write or read {path} (under --output-dir {out}): No space left")
    assert "free space" in message and "resumes after epoch 1" in message and "\n" not in message
    assert (out / "log.txt").read_text().splitlines()[-1] == f"error: {message}"
    assert ckpt_io.saved_epochs(str(out / "prompt_learner")) == [1]  # kept, not pruned
    assert not [n for n in os.listdir(out / "prompt_learner") if n.endswith(".tmp")]
    train.main(args)
    assert "Previous epoch: 1" in (out / "log.txt").read_text()
    assert ckpt_io.saved_epochs(str(out / "prompt_learner")) == [3]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["--root", "--output-dir"])
def test_a_path_that_is_a_file_is_a_one_line_error(toy_root, tmp_path, where):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder\n")
    root, out = (a_file, tmp_path / "out") if where == "--root" else (toy_root, a_file / "run")
    with pytest.raises(train.StorageError) as err:
        train.main(toy_args(root, out, "OPTIM.MAX_EPOCH", "1"))
    message = str(err.value)
    assert f"(under {where} " in message and "is a file, not a folder" in message, message
    assert "\n" not in message
    assert a_file.read_text() == "not a folder\n"
    if where == "--root":  # the output folder exists: its log ends with the same line
        assert (out / "log.txt").read_text().splitlines()[-1] == f"error: {message}"


@pytest.mark.slow
def test_a_read_only_output_folder_is_a_one_line_error(toy_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()

    class ReadOnly:  # what opening .run.lock in a read-only folder raises
        def __init__(self, path, timeout):
            self.path = path

        def acquire(self):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), self.path)

    if os.geteuid() != 0:  # the real thing where permissions apply
        out.chmod(0o555)
    else:
        monkeypatch.setattr(run_folder, "FileLock", ReadOnly)
    try:
        with pytest.raises(train.StorageError) as err:
            train.main(toy_args(toy_root, out, "OPTIM.MAX_EPOCH", "1"))
    finally:
        out.chmod(0o755)
    message = str(err.value)
    assert f"cannot write or read {out / '.run.lock'} (under --output-dir {out})" in message
    assert ("read-only" in message or "writable" in message) and "\n" not in message


# ------------------------------------------------------------------ slow: two processes, signals
HOLDER = """
import sys, time
from trainers.run.run_folder import hold
with hold(sys.argv[1]):
    print("holding", flush=True)
    time.sleep(120)
"""


@pytest.mark.slow
def test_a_second_process_stops_at_once_naming_the_holder(toy_root, tmp_path):
    out = tmp_path / "run"
    (out / "prompt_learner").mkdir(parents=True)
    temp = out / "prompt_learner" / ".model.pth.tar-1.abc123.tmp"  # the holder's file being written
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        temp.write_bytes(b"half a checkpoint")
        started = time.monotonic()
        with pytest.raises(run_folder.RunBusy) as err:
            train.main(toy_args(toy_root, out, "OPTIM.MAX_EPOCH", "1"))
        assert time.monotonic() - started < 5  # at once, not after a timeout
        message = str(err.value)
        assert f"{out} is in use by another run (host {os.uname().nodename}, PID {holder.pid}," in message
        assert temp.exists()  # another live process's temporary file is left alone
        assert not (out / "log.txt").exists()  # nor is the holder's log written into
    finally:
        holder.kill()
        holder.wait()
    train.main(toy_args(toy_root, out, "OPTIM.MAX_EPOCH", "1"))  # the holder is gone: it may run
    assert not temp.exists() and (out / "done").exists()
    assert not (out / ".run.owner").exists()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_a_signal_ends_the_run_cleanly_and_resumably(toy_root, tmp_path, signum):
    out = tmp_path / "run"
    args = toy_args(toy_root, out, "DATASET.NUM_SHOTS", "4", "OPTIM.MAX_EPOCH", "500",
                    "TRAIN.CHECKPOINT_FREQ", "0")
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not ckpt_io.saved_epochs(str(out / "prompt_learner")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
            time.sleep(0.2)
        with pytest.raises(run_folder.RunBusy) as err:  # train.py holds its folder while it trains
            train.main(args)
        assert f"PID {proc.pid}," in str(err.value)
        proc.send_signal(signum)
        code = proc.wait(timeout=120)
        stderr = proc.stderr.read()
    finally:
        proc.kill()
    name = signal.Signals(signum).name
    assert code == 128 + signum, stderr[-2000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-2000:]
    k = ckpt_io.saved_epochs(str(out / "prompt_learner"))[-1]
    last = (out / "log.txt").read_text().splitlines()[-1]
    assert last == (f"stopped by signal {name} after epoch {k} of 500 (saved in "
                    f"{out / 'prompt_learner' / f'model.pth.tar-{k}'}): run the same command again to "
                    f"resume from epoch {k}")
    assert last in stderr
    path, ckpt = ckpt_io.newest_loadable(str(out / "prompt_learner"), torch.device("cpu"))
    assert ckpt["epoch"] == k and path.endswith(f"model.pth.tar-{k}")
    assert not (out / "done").exists() and not (out / ".run.owner").exists()
