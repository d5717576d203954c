"""train.py's command line, config errors and logging (needs Dassl)."""
from __future__ import annotations

import io
import logging
import sys

import pytest

pytest.importorskip("dassl", reason="Dassl is not installed")

import train  # noqa: E402
from trainers.logs import restore_stdout, setup_logging  # noqa: E402


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
