"""Bad configs and values end in a message that says what to fix, not a traceback
(docs/troubleshooting.md#configuration): one test per case, each checking the message text."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("dassl", reason="Dassl is not installed")

from dassl.data.datasets import DATASET_REGISTRY  # noqa: E402
from fixtures_data import make_dataset_cfg, write_image, write_image_folder  # noqa: E402

import train  # noqa: E402
from config import ConfigError, extend_cfg  # noqa: E402
from config.merge import merge_list  # noqa: E402
from dassl.config import get_cfg_default  # noqa: E402
from config.softcpt import check_softcpt_cfg, resolve_variant  # noqa: E402
from datasets.errors import DatasetError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def logs(caplog):
    """caplog with Dassl's import-time logging.disable(WARNING) undone, as train.py does."""
    logging.disable(logging.NOTSET)
    return caplog


def parse(argv):
    return train.setup_cfg(train.build_parser().parse_args(argv))


def message(argv) -> str:
    with pytest.raises(ConfigError) as info:
        parse(argv)
    return str(info.value)


# ----------------------------------------------------------------- wrong value types
def test_wrong_type_on_the_command_line_names_key_type_and_value():
    text = message(["OPTIM.LR", "abc"])
    assert "command line: OPTIM.LR expects a number (float)" in text
    assert "got 'abc', a string" in text


def test_wrong_type_in_a_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("OPTIM:\n  MAX_EPOCH: 2.5\n")
    text = message(["--config-file", str(bad)])
    assert f"{bad}: OPTIM.MAX_EPOCH expects an integer" in text and "got 2.5" in text


def test_bool_and_string_keys_say_what_they_take():
    assert "TRAINER.COOP.CSC expects True or False" in message(["TRAINER.COOP.CSC", "1"])
    text = message(["DATASET.SUBSAMPLE_TASKS", "3"])
    assert "expects a string" in text and "DATASET.SUBSAMPLE_TASKS \"'3'\"" in text


def test_an_integer_for_a_float_key_is_taken_as_the_float():
    cfg = parse(["OPTIM.LR", "1", "TRAINER.SOFTCPT.CLS_SAMPLE_RATE", "0"])
    assert cfg.OPTIM.LR == 1.0 and isinstance(cfg.OPTIM.LR, float)
    assert isinstance(cfg.TRAINER.SOFTCPT.CLS_SAMPLE_RATE, float)


def test_a_group_or_a_key_without_value_is_refused():
    assert "OPTIM is a group of keys" in message(["OPTIM", "3"])
    assert "'OPTIM.LR' has no value" in message(["OPTIM.LR"])


# --------------------------------------------------------------- out-of-range values
def softcpt_error(*opts: str) -> str:
    """The trainer's check of its node (on a merged config whose values are not checked yet);
    train.py's check of every value gives the same message, before torch."""
    cfg = get_cfg_default()
    extend_cfg(cfg)
    merge_list(cfg, list(opts))
    with pytest.raises(ConfigError) as info:
        check_softcpt_cfg(resolve_variant(cfg).TRAINER.SOFTCPT)
    assert message(list(opts)) == str(info.value)
    return str(info.value)


def test_out_of_range_reads_the_same_whatever_the_type():
    as_int = softcpt_error("TRAINER.SOFTCPT.CLS_SAMPLE_RATE", "2")
    assert as_int == softcpt_error("TRAINER.SOFTCPT.CLS_SAMPLE_RATE", "2.0")
    assert as_int == "TRAINER.SOFTCPT.CLS_SAMPLE_RATE is 2.0; allowed: a number in [0, 1] (0 = off)."


def test_out_of_range_common_keys():
    assert message(["OPTIM.LR", "0"]) == "OPTIM.LR is 0.0; allowed: a finite number > 0."
    assert "OPTIM.MAX_EPOCH is 0; allowed: an integer in [1, 1000000]" in message(["OPTIM.MAX_EPOCH", "0"])
    assert "TRAINER.COOP.PREC is 'fp8'; allowed: one of ['fp16', 'fp32', 'amp']" in message(
        ["TRAINER.COOP.PREC", "fp8"])
    assert "TRAINER.SOFTCPT.STEPS_PER_BATCH is 0; allowed: an integer >= 1" in message(
        ["TRAINER.SOFTCPT.STEPS_PER_BATCH", "0"])


def test_bad_variant_points_at_the_method_doc():
    with pytest.raises(ConfigError, match=r"VARIANT is 'NAXX'; allowed: .*docs/method\.md#variants"):
        resolve_variant(parse(["TRAINER.SOFTCPT.VARIANT", "NAXX"]))


# ------------------------------------------------------------------ files and YAML
def test_missing_config_file_lists_the_folder():
    text = message(["--config-file", "configs/trainers/SoftCPT/tny.yaml"])
    assert text.startswith("--config-file configs/trainers/SoftCPT/tny.yaml: no such file")
    assert "rn50_ep50.yaml, tiny.yaml, vit_b16_ep50.yaml" in text
    text = message(["--dataset-config-file", "nowhere/x.yaml"])
    assert "nowhere/ does not exist" in text


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("OPTIM:\n  LR: 0.1\n MAX_EPOCH: 3\n")
    text = message(["--config-file", str(bad)])
    assert text.startswith(f"--config-file {bad}: YAML syntax error at line 3, column 2:")


# --------------------------------------------------------------------- NUM_SHOTS
def test_negative_shots_are_refused():
    text = message(["DATASET.NUM_SHOTS", "-1"])
    assert text == ("DATASET.NUM_SHOTS is -1; allowed: an integer >= 0 (shots per class; "
                    "0 = the whole training set).")
    assert parse([]).DATASET.NUM_SHOTS == 0  # Dassl's default -1 becomes 0


def test_dataset_refuses_negative_shots_too(data_root):
    write_image_folder(data_root, "pics", ["a", "b"], 4)
    cfg = make_dataset_cfg(data_root, "ImageFolder", shots=-1, DATASET__IMAGE_FOLDER__DIR="pics")
    with pytest.raises(DatasetError, match=r"pics: DATASET.NUM_SHOTS is -1; use a number of shots"):
        DATASET_REGISTRY.get("ImageFolder")(cfg)


def test_zero_shots_train_on_everything_and_say_so(data_root, logs):
    write_image_folder(data_root, "pics", ["a", "b"], 10)
    cfg = make_dataset_cfg(data_root, "ImageFolder", shots=0, DATASET__IMAGE_FOLDER__DIR="pics")
    with logs.at_level(logging.INFO, logger="datasets"):
        ds = DATASET_REGISTRY.get("ImageFolder")(cfg)
    assert len(ds.train_x) == 10
    assert "pics: DATASET.NUM_SHOTS 0: training on the whole training set (10 images)" in logs.text


def test_a_class_without_val_or_test_images_is_named(data_root, logs):
    folder = write_image_folder(data_root, "pics", ["a", "b"], 10)
    write_image(os.path.join(folder, "lonely", "0.jpg"))  # 1 image: train only
    cfg = make_dataset_cfg(data_root, "ImageFolder", DATASET__IMAGE_FOLDER__DIR="pics")
    with logs.at_level(logging.WARNING, logger="datasets"):
        DATASET_REGISTRY.get("ImageFolder")(cfg)
    assert "1 class(es) have training images but no validation image" in logs.text
    assert "1 class(es) have training images but no test image, so they are never scored on " \
           "it: 'lonely'" in logs.text


@pytest.mark.slow  # runs train.py in subprocesses
# ------------------------------------------------------------------ from the shell
def test_the_command_line_prints_messages_not_tracebacks(tmp_path):
    """`python train.py` with bad input: one 'error:' line, exit status 1, no traceback."""
    script = ("import sys, runpy; sys.argv = ['train.py'] + sys.argv[1:]; "
              "runpy.run_path('train.py', run_name='__main__')")
    for args, expected in [(["OPTIM.LR", "abc"], "error: command line: OPTIM.LR expects"),
                           (["--config-file", "configs/nope.yaml"], "error: --config-file configs/"
                            "nope.yaml: no such file (configs/ has no .yaml file; folders: datasets/, trainers/")]:
        done = subprocess.run([sys.executable, "-c", script, "--output-dir", str(tmp_path), *args],
                              cwd=REPO, capture_output=True, text=True, timeout=600)
        assert done.returncode == 1
        assert expected in done.stderr and "Traceback" not in done.stderr


def test_unexpected_errors_keep_their_traceback(monkeypatch, tmp_path):
    def boom(cfg):
        raise RuntimeError("a bug, not a bad input")
    monkeypatch.setattr(train, "build_trainer", boom)
    monkeypatch.setattr(train, "environment_report", lambda: "")  # slow, and beside the point
    with pytest.raises(RuntimeError, match="a bug"):
        train.main(["--trainer", "SoftCPT", "--output-dir", str(tmp_path),
                    "--dataset-config-file", str(REPO / "configs" / "datasets" / "toy.yaml"),
                    "MODEL.BACKBONE.NAME", "tiny"])
