"""Does a checkpoint belong to this run (trainers/checkpoint_identity.py)? Trainer and variant,
backbone fingerprint, parameters, classes, tasks and shapes, on a tiny head: no trainer."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from datasets.task_info import TaskInfo
from trainers.checkpoint import CheckpointError
from trainers.checkpoint_identity import backbone_identity, check_compatible

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
                                              r"ViT-B/16 \(docs/reliability.md#guarantees\)"):
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


def test_backbone_identity_fingerprints_both_encoders():
    model = SimpleNamespace(image_encoder=nn.Linear(2, 2), text_encoder=nn.Linear(3, 3))
    cfg = SimpleNamespace(NAME="tiny", PRETRAINED_TAG="")
    first = backbone_identity(model, cfg)
    assert (first["name"], first["pretrained_tag"]) == ("tiny", "")
    image, text = first["weights"].split(":")
    assert len(image) == len(text) == 16 and image != text
    with torch.no_grad():
        model.text_encoder.weight.add_(1.0)
    again = backbone_identity(model, cfg)
    assert again["weights"].split(":")[0] == image and again["weights"].split(":")[1] != text
    assert backbone_identity(model)["name"] is None
