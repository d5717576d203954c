"""train.py's command line, config errors and logging (needs Dassl)."""
from __future__ import annotations

import io
import logging
import os
import sys

import pytest

pytest.importorskip("dassl", reason="Dassl is not installed")

import train  # noqa: E402
from trainers.run.logs import restore_stdout, setup_logging  # noqa: E402

# A dataset for the runs that stop before building it (train.py checks DATASET.NAME first).
TOY = ["--dataset-config-file", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                             "configs", "datasets", "toy.yaml")]


def parse(argv):
    return train.setup_cfg(train.build_parser().parse_args(argv))


def test_coop_flags_and_opts_merge_in_order(tmp_path):
    cfg = parse(["--root", str(tmp_path), "--seed", "3", "--trainer", "X", "--output-dir", "out",
                 "OPTIM.MAX_EPOCH", "7", "DATASET.NUM_SHOTS", "4"])
    assert (cfg.DATASET.ROOT, cfg.SEED, cfg.TRAINER.NAME, cfg.OUTPUT_DIR) == (str(tmp_path), 3, "X", "out")
    assert cfg.OPTIM.MAX_EPOCH == 7 and cfg.DATASET.NUM_SHOTS == 4


def test_seed_zero_is_a_seed():
    assert parse(["--seed", "0"]).SEED == 0
    assert parse([]).SEED == -1


def test_unknown_key_fails_with_near_matches():
    with pytest.raises(train.ConfigError, match=r"OPTIM\.MAX_EPOCHS.*OPTIM\.MAX_EPOCH"):
        parse(["OPTIM.MAX_EPOCHS", "3"])


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("OPTIM:\n  LRR: 0.1\n")
    with pytest.raises(train.ConfigError, match=r"bad\.yaml.*OPTIM\.LR"):
        parse(["--config-file", str(bad)])


def test_unknown_trainer_lists_the_registered_ones():
    with pytest.raises(train.ConfigError, match=r"'CoOpp'.*Registered trainers"):
        train.check_trainer("CoOpp")


def test_help_config_prints_every_key(capsys):
    train.main(["--help-config"])
    out = capsys.readouterr().out
    assert "PRETRAINED_TAG" in out and "EVALUATOR: MultiTaskClassification" in out


def test_a_warning_reaches_the_console_and_log_txt(tmp_path):
    """Dassl's import-time logging.disable(WARNING) is undone; records reach log.txt."""
    import dassl.data.datasets  # noqa: F401  (its wilds module disables logging)
    from dassl.utils import setup_logger
    previous = sys.stdout
    console = io.StringIO()
    sys.stdout = console
    try:
        logging.disable(logging.WARNING)  # what importing Dassl's datasets does
        setup_logger(str(tmp_path))
        setup_logging()
        logging.getLogger("trainers.anything").warning("tiny backbone in use")
        sys.stdout.flush()
    finally:
        restore_stdout(console)
        sys.stdout = previous
    assert "WARNING: tiny backbone in use" in (tmp_path / "log.txt").read_text()
    assert "WARNING: tiny backbone in use" in console.getvalue()


def test_a_checkpoint_error_is_a_message_in_the_console_and_log_txt(tmp_path, monkeypatch):
    """As `python train.py` ends: `error: ...` listing the saved epochs (SystemExit with a
    message: no traceback); log.txt has it too."""
    import os
    import runpy
    model = tmp_path / "run" / "prompt_learner"
    model.mkdir(parents=True)
    for epoch in (1, 2):
        (model / f"model.pth.tar-{epoch}").write_bytes(b"")
    out = tmp_path / "eval"
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    monkeypatch.setattr(sys, "argv", [
        "train.py", "--root", str(tmp_path / "data"), "--trainer", "SoftCPT", "--dataset-config-file",
        "configs/datasets/toy.yaml", "--config-file", "configs/trainers/SoftCPT/tiny.yaml", "--eval-only",
        "--model-dir", str(tmp_path / "run"), "--load-epoch", "7", "--output-dir", str(out),
        "DATASET.NUM_SHOTS", "1"])
    with pytest.raises(SystemExit) as ended:
        runpy.run_path("train.py", run_name="__main__")
    message = f"error: no checkpoint for epoch 7 (--load-epoch): saved epochs in {model}: [1, 2]."
    assert str(ended.value.code).startswith(message)
    assert message in (out / "log.txt").read_text()


def test_an_unexpected_error_keeps_its_traceback_in_log_txt(tmp_path, monkeypatch):
    def broken(cfg):
        raise RuntimeError("something nobody foresaw")
    monkeypatch.setattr(train, "build_trainer", broken)
    out = tmp_path / "out"
    (out).mkdir()
    (out / "log.txt").write_text("first attempt\n")
    with pytest.raises(RuntimeError):
        train.main(["--trainer", "SoftCPT", "--output-dir", str(out), *TOY, "MODEL.BACKBONE.NAME", "tiny"])
    log = (out / "log.txt").read_text()
    assert log.startswith("first attempt\n") and "a new attempt of this run" in log
    assert "Traceback" in log and "RuntimeError: something nobody foresaw" in log
    assert not list(out.glob("log.txt-*"))


def test_a_config_error_also_reaches_the_runs_log(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(train.ConfigError):
        train.main(["--output-dir", str(out), "OPTIM.MAX_EPOCHS", "3"])
    assert "error: command line: unknown config key 'OPTIM.MAX_EPOCHS'" in (out / "log.txt").read_text()


def test_sigterm_leaves_a_last_line_in_log_txt(tmp_path, monkeypatch):
    import os
    import signal

    def terminated(cfg):
        os.kill(os.getpid(), signal.SIGTERM)  # what a sweep's Ctrl-C or a job time limit sends
    monkeypatch.setattr(train, "build_trainer", terminated)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(train.Stopped) as err:
        train.main(["--trainer", "SoftCPT", "--output-dir", str(tmp_path), *TOY, "MODEL.BACKBONE.NAME", "tiny"])
    assert err.value.code == 143 and signal.getsignal(signal.SIGTERM) == before
    assert (tmp_path / "log.txt").read_text().endswith(
        "stopped by signal SIGTERM before the first epoch was saved: run the same command again to "
        "start it from epoch 1\n")
