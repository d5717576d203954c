"""Does a checkpoint belong to this run (trainers/run/checkpoint_identity.py)? Trainer and variant,
backbone fingerprint, parameters, classes, tasks and shapes, on a tiny head: no trainer."""
from __future__ import annotations

import logging
import os
import shutil
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from datasets.task_info import TaskInfo
from trainers.parts.backbone import TINY, build_tiny_clip, load_clip, tiny_checkpoint
from trainers.parts.feature_cache import weights_fingerprint
from trainers.parts.text_encoder import TextEncoder
from trainers.run.checkpoint import CheckpointError
from trainers.run.checkpoint_identity import backbone_identity, check_compatible, legacy_weights

INFO = TaskInfo(("a", "b"), ("colour", "shape"), (("red", "blue"), ("circle",)),
                ("overall_acc", "mean_acc"))
OWN = {"trainer": "SoftCPT", "variant": "NATA"}
BACKBONE = {"name": "RN50", "pretrained_tag": "openai", "weights": "aaaa:bbbb"}


class Head(nn.Module):
    per_class_keys = ("class_ctx",)
    per_task_keys = ("task_ctx",)

    def __init__(self, n_ctx: int = 4) -> None:
        super().__init__()
        self.class_ctx = nn.Parameter(torch.zeros(3, n_ctx))
        self.task_ctx = nn.Parameter(torch.zeros(2, n_ctx))
        self.shared = nn.Parameter(torch.zeros(n_ctx))


def ckpt(head: nn.Module = None, **fields) -> dict:
    state = (head or Head()).state_dict()
    out = {"trainer": "SoftCPT", "variant": "NATA", "backbone": dict(BACKBONE),
           "classnames": ["red", "blue", "circle"], "task_keys": ["a", "b"], "state_dict": state}
    out.update(fields)
    return out


def check(saved: dict, resuming: bool = False, own=OWN, backbone=BACKBONE, head=None) -> None:
    check_compatible(saved, "run/prompt_learner/model.pth.tar-1", own, lambda: backbone,
                     head or Head(), INFO, resuming)


def test_the_same_run_loads():
    check(ckpt())
    check(ckpt(), resuming=True)


def test_another_trainer_or_variant_is_refused_with_what_to_do():
    with pytest.raises(CheckpointError) as err:
        check(ckpt(variant="CSTA"))
    assert str(err.value) == (
        "run/prompt_learner/model.pth.tar-1 was saved by trainer SoftCPT, variant CSTA; this run is "
        "trainer SoftCPT, variant NATA: evaluate it as trainer SoftCPT, variant CSTA (--trainer and "
        "the variant of its training run), or give a --model-dir trained as trainer SoftCPT, variant "
        "NATA.")
    with pytest.raises(CheckpointError) as err:
        check(ckpt(trainer="CoOp", variant=None), resuming=True)
    assert str(err.value) == (
        "run/prompt_learner/model.pth.tar-1 was saved by trainer CoOp; this run is trainer SoftCPT, "
        "variant NATA: this output folder holds another run, which is kept: give this run its own "
        "--output-dir.")


def test_another_backbone_is_refused_and_an_unrecorded_one_never_asked():
    other = dict(BACKBONE, weights="cccc:dddd")
    tail = "run/prompt_learner/model.pth.tar-1 was trained on backbone RN50 openai (weights aaaa:bbbb)"
    with pytest.raises(CheckpointError) as err:
        check(ckpt(), backbone=other)
    assert str(err.value).startswith(f"{tail}; this run uses RN50 openai (weights cccc:dddd): the "
                                     "same name with other weights")
    with pytest.raises(CheckpointError, match=r"--backbone RN50\), or give a --model-dir trained on "
                                              r"ViT-B/16 \(docs/reliability.md#which-backbone-a-checkpoint-needs\)"):
        check(ckpt(), backbone={"name": "ViT-B/16", "pretrained_tag": None, "weights": "e:f"})
    with pytest.raises(CheckpointError, match="holds a run on that backbone, which is kept"):
        check(ckpt(), resuming=True, backbone=other)

    def never():
        raise AssertionError("an older checkpoint records no backbone: nothing to hash")

    check_compatible(ckpt(backbone=None), "p", OWN, never, Head(), INFO)


def test_parameters_classes_tasks_and_shapes_that_do_not_fit():
    extra = ckpt()
    extra["state_dict"]["meta.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"'meta.weight' does not exist in Head \(it has "
                                              r"\['class_ctx', 'shared', 'task_ctx'\]\)"):
        check(extra)
    with pytest.raises(CheckpointError, match="'class_ctx' holds one context per class"):
        check(ckpt(classnames=["red", "green", "circle"]))
    with pytest.raises(CheckpointError, match=r"'task_ctx' holds one context per task and was "
                                              r"trained on tasks \['b', 'a'\], not \['a', 'b'\]"):
        check(ckpt(task_keys=["b", "a"]))
    with pytest.raises(CheckpointError) as err:
        check(ckpt(Head(n_ctx=2)))
    assert str(err.value).endswith("'class_ctx' has shape (3, 2), this model needs (3, 4): check "
                                   "N_CTX and the backbone.")
    with pytest.raises(CheckpointError, match=r"the backbone \(and the trainer and variant, which "
                                              "this older checkpoint does not record\)"):
        check(ckpt(Head(n_ctx=2), trainer=None, variant=None, backbone=None))


TINY_CFG = SimpleNamespace(NAME=TINY, PRETRAINED_TAG="", PRETRAINED=True)


def loaded(precision: str, cfg=TINY_CFG) -> SimpleNamespace:
    """What a trainer holds of CLIP loaded in ``precision``: its image and text encoders."""
    clip = load_clip(cfg.NAME, cfg.PRETRAINED_TAG, precision, "cpu")
    return SimpleNamespace(image_encoder=clip.visual, text_encoder=TextEncoder(clip, shared_prefix=False))


def old_fingerprint(model) -> str:
    """What an older version recorded: the two encoders hashed as loaded, 16 digits each."""
    return ":".join(weights_fingerprint(m)[:16] for m in (model.image_encoder, model.text_encoder))


def write_other_tiny(folder) -> None:
    """Another weights file under the tiny backbone's name: the same sizes, other values."""
    clip = build_tiny_clip()
    with torch.no_grad():
        next(clip.visual.parameters()).add_(0.01)
    torch.save(clip.state_dict(), tiny_checkpoint(str(folder)))


def test_the_fingerprint_is_the_files_whatever_the_precision():
    models = {p: loaded(p) for p in ("fp16", "fp32", "amp")}
    # the loaded weights do differ by precision (fp16 tensors against fp32 ones) ...
    assert old_fingerprint(models["fp16"]) != old_fingerprint(models["fp32"])
    # ... and the identity a checkpoint records does not
    ids = {p: backbone_identity(m, TINY_CFG) for p, m in models.items()}
    assert ids["fp16"] == ids["fp32"] == ids["amp"]
    assert ids["fp32"]["fingerprint"] == "file" and len(ids["fp32"]["weights"]) == 32
    # an fp16 training run's checkpoint loads under fp32 and amp, and the other way round
    for trained in ids:
        for run in ids:
            check(ckpt(backbone=ids[trained]), backbone=ids[run])
    # a bare trainer (no config) has no file: the model as loaded, precision included
    assert backbone_identity(models["fp32"])["fingerprint"] == "model"
    assert backbone_identity(models["fp32"])["weights"] == old_fingerprint(models["fp32"])


def test_another_weights_file_of_the_same_name_is_refused(tmp_path, monkeypatch):
    own = backbone_identity(loaded("fp32"), TINY_CFG)
    monkeypatch.setenv("SOFTCPT_CACHE", str(tmp_path))
    write_other_tiny(tmp_path)
    other = backbone_identity(loaded("fp32"), TINY_CFG)
    assert other["weights"] != own["weights"]
    with pytest.raises(CheckpointError) as err:
        check(ckpt(backbone=own), backbone=other)
    assert (f"was trained on backbone tiny (weights {own['weights']}); this run uses tiny (weights "
            f"{other['weights']}): the same name with other weights") in str(err.value)
    assert "the precision (PREC) and device do not matter" in str(err.value)
    # the same file copied elsewhere is the same weights (the name is compared separately)
    copy = tmp_path / "copy.pt"
    shutil.copy(tiny_checkpoint(str(tmp_path)), copy)
    by_path = backbone_identity(loaded("fp32"), SimpleNamespace(NAME=str(copy), PRETRAINED_TAG=""))
    assert by_path["weights"] == other["weights"]


def test_an_older_checkpoints_fingerprint_is_accepted_for_the_same_weights_in_any_dtype(
        tmp_path, monkeypatch, caplog):
    own = backbone_identity(loaded("fp32"), TINY_CFG)
    legacy = lambda: legacy_weights(TINY_CFG)  # noqa: E731
    for trained in ("fp16", "fp32"):  # a GPU fp16 run; a CPU or amp run
        old = {"name": TINY, "pretrained_tag": "", "weights": old_fingerprint(loaded(trained))}
        with caplog.at_level(logging.INFO, logger="trainers.run.checkpoint_identity"):
            caplog.clear()
            check_compatible(ckpt(backbone=old), "p", OWN, lambda: own, Head(), INFO, legacy=legacy)
        assert f"loaded in {trained}): the same weights as this run's" in caplog.text
    # an older checkpoint of other weights under that name is still refused
    session_cache = os.environ["SOFTCPT_CACHE"]
    monkeypatch.setenv("SOFTCPT_CACHE", str(tmp_path))
    write_other_tiny(tmp_path)
    other = {"name": TINY, "pretrained_tag": "", "weights": old_fingerprint(loaded("fp16"))}
    monkeypatch.setenv("SOFTCPT_CACHE", session_cache)  # back to the run's own tiny file
    with pytest.raises(CheckpointError, match="the same name with other weights"):
        check_compatible(ckpt(backbone=other), "p", OWN, lambda: own, Head(), INFO, legacy=legacy)

    def never():
        raise AssertionError("a checkpoint with this version's fingerprint needs no older one")

    check_compatible(ckpt(backbone=own), "p", OWN, lambda: own, Head(), INFO, legacy=never)
