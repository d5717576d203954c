"""The baselines: registration, math against plain computations, and end-to-end runs.

The references below compute CoOp, CoCoOp and zero-shot CLIP the way their
papers describe, one prompt at a time through CLIP's full 77-token text tower;
they share no code with the prompt builder, the text encoder or the heads.
End-to-end runs go through ``train.main`` on the toy benchmark and the tiny CLIP.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("dassl", reason="Dassl is not installed")

from dassl.config import get_cfg_default  # noqa: E402
from dassl.engine import TRAINER_REGISTRY  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

import train  # noqa: E402
from config import extend_cfg  # noqa: E402
from config.coop import check_coop_cfg  # noqa: E402
from datasets.task_info import TaskInfo  # noqa: E402
from trainers.cocoop import CoCoOp, CoCoOpHead  # noqa: E402
from trainers.coop import CoOpHead  # noqa: E402
from trainers.linear_probe import fit_task  # noqa: E402
from trainers.parts.base import MultiTaskCLIP  # noqa: E402
from trainers.parts.prompt import tokenize  # noqa: E402
from trainers.zsclip import TemplateHead  # noqa: E402

BASELINES = ("ZeroshotCLIP", "CoOp", "CoCoOp", "LinearProbeCLIP")
TWO_TASKS = TaskInfo(keys=("plants", "pets"), names=("plant disease", "pet breed"),
                     classnames=(("apple_scab", "healthy leaf", "rust"), ("sea lion", "cat")),
                     metrics=("overall_acc", "mean_acc"),
                     templates=("a photo of a leaf with {}.", "a photo of a {}, a type of pet."))
ONE_TASK = TaskInfo.single("pets", ("sea lion", "golden retriever", "cat", "hamster"))


# ---------------------------------------------------------------- references
def ref_text_feature(clip, words: str, ctx=None) -> torch.Tensor:
    """CLIP's text tower on ``[SOS] ctx <words> [EOS]`` (ctx replaces the first tokens), 77 tokens."""
    n = 0 if ctx is None else ctx.shape[0]
    ids = tokenize([" ".join(["X"] * n + [words])])[0]
    emb = clip.token_embedding(ids)  # (77, W)
    if n:
        emb = torch.cat([emb[:1], ctx, emb[1 + n:]])
    x = clip.transformer((emb + clip.positional_embedding)[None], attn_mask=clip.attn_mask)
    return clip.ln_final(x)[0, int(ids.argmax())] @ clip.text_projection  # (D,)


def ref_logits(clip, images, text_features) -> torch.Tensor:
    u = F.normalize(clip.encode_image(images), dim=-1)
    return clip.logit_scale.exp() * u @ F.normalize(text_features, dim=-1).t()


def assert_close_rel(actual, expected):
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * max(scale, 1e-12))


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------- registration and keys
def test_every_baseline_is_registered_with_its_keys():
    assert set(BASELINES) <= set(TRAINER_REGISTRY.registered_names())
    cfg = get_cfg_default()
    extend_cfg(cfg)
    for key in ("N_CTX", "CTX_INIT", "CSC", "CLASS_TOKEN_POSITION", "PREC", "SHARING"):
        assert key in cfg.TRAINER.COOP
    assert (cfg.TRAINER.COOP.N_CTX, cfg.TRAINER.COOP.CSC, cfg.TRAINER.COOP.SHARING) == (16, False, "task")
    for key in ("N_CTX", "CTX_INIT", "PREC"):
        assert key in cfg.TRAINER.COCOOP
    assert "PREC" in cfg.TRAINER.ZSCLIP and "C_GRID" in cfg.TRAINER.LINEAR_PROBE


@pytest.mark.parametrize("opts, match", [
    ({"SHARING": "class"}, "SHARING is 'class'"),
    ({"CSC": True, "SHARING": "all"}, "CSC True .* SHARING 'all'"),
    ({"CLASS_TOKEN_POSITION": "start"}, "CLASS_TOKEN_POSITION"),
])
def test_bad_coop_settings_name_the_key(opts, match):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.TRAINER.COOP.update(opts)
    with pytest.raises(ValueError, match=match):
        check_coop_cfg(cfg.TRAINER.COOP)


# ---------------------------------------------------------------- CoOp
@pytest.mark.parametrize("position", ["end", "middle"])
def test_coop_ca_on_one_task_is_plain_coop(tiny_clip, images, position):
    """CoOp-CA on a one-task benchmark == CoOp's own computation (one shared context)."""
    torch.manual_seed(0)
    head = CoOpHead(ONE_TASK, tiny_clip.token_embedding, n_ctx=4,
                    class_token_position=position)
    assert head.ctx.shape == (1, 4, 64)
    ctx = head.ctx[0].detach()
    with torch.no_grad():
        ours = MultiTaskCLIP(tiny_clip, head)(images)
        feats = []
        for name in ONE_TASK.classnames[0]:
            if position == "end":
                feats.append(ref_text_feature(tiny_clip, f"{name}.", ctx))
            else:  # [SOS] v_1 v_2 <name> v_3 v_4 . [EOS]
                ids = tokenize([f"X X {name} X X."])[0]
                emb = tiny_clip.token_embedding(ids)
                k = len(tokenize([name])[0].nonzero()) - 2  # name tokens without SOS/EOS
                emb = torch.cat([emb[:1], ctx[:2], emb[3:3 + k], ctx[2:], emb[5 + k:]])
                x = tiny_clip.transformer((emb + tiny_clip.positional_embedding)[None],
                                          attn_mask=tiny_clip.attn_mask)
                feats.append(tiny_clip.ln_final(x)[0, int(ids.argmax())] @ tiny_clip.text_projection)
        expected = ref_logits(tiny_clip, images, torch.stack(feats))
    assert ours.shape == (3, 4)
    assert_close_rel(ours, expected)


def test_coop_sharing_variants_are_the_same_prompts_with_tied_contexts(tiny_clip, images):
    """CS with every class's context set to its task's CA context, and MT with one context
    equal to both tasks' CA contexts, give CoOp-CA's logits."""
    torch.manual_seed(0)
    ca = CoOpHead(TWO_TASKS, tiny_clip.token_embedding, n_ctx=4)
    cs = CoOpHead(TWO_TASKS, tiny_clip.token_embedding, n_ctx=4, csc=True)
    mt = CoOpHead(TWO_TASKS, tiny_clip.token_embedding, n_ctx=4, sharing="all")
    assert (ca.ctx.shape, cs.ctx.shape, mt.ctx.shape) == ((2, 4, 64), (5, 4, 64), (4, 64))
    assert (ca.per_task_keys, cs.per_class_keys, mt.per_task_keys + mt.per_class_keys) == \
        (("ctx",), ("ctx",), ())
    with torch.no_grad():
        cs.ctx.copy_(ca.ctx[torch.tensor(TWO_TASKS.task_of_class)])
        expected = MultiTaskCLIP(tiny_clip, ca)(images)
        assert_close_rel(MultiTaskCLIP(tiny_clip, cs)(images), expected)
        ca.ctx[1] = ca.ctx[0]
        mt.ctx.copy_(ca.ctx[0])
        assert_close_rel(MultiTaskCLIP(tiny_clip, mt)(images), MultiTaskCLIP(tiny_clip, ca)(images))


def test_coop_ctx_init_sets_the_context(tiny_clip):
    head = CoOpHead(TWO_TASKS, tiny_clip.token_embedding, ctx_init="a photo of a")
    words = tiny_clip.token_embedding(tokenize(["a photo of a"])[0][1:5])
    assert head.ctx.shape == (2, 4, 64)
    torch.testing.assert_close(head.ctx[1].detach(), words)


# ---------------------------------------------------------------- CoCoOp
def test_cocoop_on_one_task_is_plain_cocoop(tiny_clip, images):
    """Per image: context + meta_net(u) in every slot, then CoOp's prompt (CoCoOp, eq. 1)."""
    torch.manual_seed(0)
    head = CoCoOpHead(ONE_TASK, tiny_clip.token_embedding, vis_dim=32, n_ctx=4)
    net = head.meta_nets[0]
    assert (net.linear1.in_features, net.linear1.out_features, net.linear2.out_features) == (32, 2, 64)
    with torch.no_grad():
        ours = MultiTaskCLIP(tiny_clip, head)(images)
        u = F.normalize(tiny_clip.encode_image(images), dim=-1)
        rows = []
        for i in range(len(images)):
            ctx = head.ctx[0] + net(u[i])  # (4, W): the same bias on every vector
            h = torch.stack([ref_text_feature(tiny_clip, f"{n}.", ctx) for n in ONE_TASK.classnames[0]])
            rows.append(tiny_clip.logit_scale.exp() * u[i] @ F.normalize(h, dim=-1).t())
    assert_close_rel(ours, torch.stack(rows))


def test_cocoop_tasks_have_their_own_context_and_meta_net(tiny_clip, images):
    torch.manual_seed(0)
    head = CoCoOpHead(TWO_TASKS, tiny_clip.token_embedding, vis_dim=32, n_ctx=2)
    assert head.ctx.shape == (2, 2, 64) and len(head.meta_nets) == 2
    assert set(head.per_task_keys) == set(head.state_dict())
    model = MultiTaskCLIP(tiny_clip, head)
    logits = model(images, torch.tensor([0, 1, 2]))  # task 0's columns only
    logits.sum().backward()
    assert head.ctx.grad[0].abs().sum() > 0 and head.ctx.grad[1].abs().sum() == 0
    assert all(p.grad is None for p in head.meta_nets[1].parameters())


def test_cocoop_evaluation_encodes_only_each_images_own_task(tiny_clip, images):
    """Test-time logits == the full conditional forward on the image's own task's columns."""
    torch.manual_seed(0)
    trainer = CoCoOp.__new__(CoCoOp)  # just what model_inference needs
    trainer.model = MultiTaskCLIP(tiny_clip, CoCoOpHead(TWO_TASKS, tiny_clip.token_embedding, 32, n_ctx=2))
    trainer.task_of_class = torch.tensor(TWO_TASKS.task_of_class)
    trainer.device = torch.device("cpu")
    labels = torch.tensor([4, 0, 2])  # tasks 1, 0, 0
    with torch.no_grad():
        ours = trainer.model_inference((images, labels))
        full = trainer.model(images)  # (3, 5): every image against every class
    own = trainer.task_of_class[labels][:, None] == trainer.task_of_class[None, :]
    assert_close_rel(ours[own], full[own])
    assert torch.isinf(ours[~own]).all()


# ---------------------------------------------------------------- zero-shot
def test_zero_shot_features_are_clip_encode_text_of_the_templates(tiny_clip):
    head = TemplateHead(TWO_TASKS, tiny_clip.token_embedding)
    assert head.sentences[0] == "a photo of a leaf with apple scab"
    assert head.sentences[4] == "a photo of a cat, a type of pet"
    sentences = ["a photo of a leaf with apple scab.", "a photo of a leaf with healthy leaf.",
                 "a photo of a leaf with rust.", "a photo of a sea lion, a type of pet.",
                 "a photo of a cat, a type of pet."]
    with torch.no_grad():
        ours = MultiTaskCLIP(tiny_clip, head).text_features()
        expected = F.normalize(tiny_clip.encode_text(tokenize(sentences)), dim=-1)
    assert_close_rel(ours, expected)


# ---------------------------------------------------------------- linear probe
def test_linear_probe_layer_predicts_what_sklearn_predicts():
    rng = np.random.default_rng(0)
    for k in (2, 3):  # binary needs its own handling
        x = rng.normal(size=(10 * k, 8)) + np.repeat(np.eye(k, 8) * 3, 10, axis=0)
        y = np.repeat(np.arange(k), 10)
        weight, bias, c = fit_task(x[::2], y[::2], x[1::2], y[1::2], k, "mean_acc", [0.1, 1.0, 10.0], 1000)
        clf = LogisticRegression(C=c, max_iter=1000).fit(x[::2], y[::2])
        assert np.array_equal((x @ weight.T + bias).argmax(1), clf.predict(x))


def test_linear_probe_classes_without_images_are_never_predicted():
    x = np.random.default_rng(0).normal(size=(6, 4))
    _, bias, _ = fit_task(x, np.array([0, 0, 0, 2, 2, 2]), None, None, 3, "overall_acc", [1.0], 100)
    assert bias[1] == -np.inf and np.isfinite(bias[[0, 2]]).all()
    _, bias, c = fit_task(x, np.zeros(6, dtype=int), None, None, 3, "overall_acc", [1.0], 100)
    assert bias.tolist() == [0.0, -np.inf, -np.inf] and np.isnan(c)


# ---------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> str:
    """$DATA for the toy benchmark (written on first use by the dataset)."""
    return str(tmp_path_factory.mktemp("data"))


def run_train(toy_root, out, trainer, cfg, *opts, flags=()):
    train.main(["--root", toy_root, "--seed", "1", "--trainer", trainer,
                "--dataset-config-file", "configs/datasets/toy.yaml",
                "--config-file", f"configs/trainers/{trainer}/{cfg}.yaml",
                "--output-dir", str(out), *flags, "DATASET.NUM_SHOTS", "2", "OPTIM.MAX_EPOCH", "1", *opts])
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


# The toy benchmark: 3 tasks, 4 + 4 + 3 = 11 classes; the tiny CLIP's text width is 64.
TOY_TASKS, TOY_CLASSES, TINY_WIDTH = 3, 11, 64


@pytest.mark.slow  # trains and evaluates through train.main
@pytest.mark.parametrize("trainer, opts, learned, params", [
    ("ZeroshotCLIP", (), False, None),  # no optimizer: results.json records no count
    ("CoOp", ("TRAINER.COOP.N_CTX", "4"), True, TOY_TASKS * 4 * TINY_WIDTH),  # a context per task
    ("CoOp", ("TRAINER.COOP.CSC", "True", "TRAINER.COOP.N_CTX", "4"), True, TOY_CLASSES * 4 * TINY_WIDTH),
    ("CoOp", ("TRAINER.COOP.SHARING", "all", "TRAINER.COOP.CLASS_TOKEN_POSITION", "front",
              "TRAINER.COOP.N_CTX", "4"), True, 4 * TINY_WIDTH),  # one context for all
    ("CoCoOp", (), True, "some"),
    ("LinearProbeCLIP", (), True, None),  # fitted by scikit-learn, not by an optimizer
], ids=["zsclip", "coop-ca", "coop-cs", "coop-mt", "cocoop", "linear-probe"])
def test_baseline_trains_and_evaluates_end_to_end(toy_root, tmp_path, trainer, opts, learned, params):
    report = run_train(toy_root, tmp_path / "run", trainer, "tiny", *opts)
    assert report["trainer"] == trainer and report["split"] == "test" and report["shots"] == 2
    assert [t["key"] for t in report["tasks"]] == ["shapes", "colours", "stripes"]
    assert report["score"] == pytest.approx(np.mean([t["score"] for t in report["tasks"]]))
    assert (tmp_path / "run" / "done").is_file()
    saved = sorted((tmp_path / "run").glob("prompt_learner/model.pth.tar-*"))
    assert bool(saved) == learned
    # What the optimizer updates, and the epochs' time where there are epochs (results.py's columns).
    if params == "some":
        assert isinstance(report["learnable_params"], int) and report["learnable_params"] > 0
    else:
        assert report["learnable_params"] == params
    trained_by_epochs = bool(saved)
    assert (report["train_seconds"] is not None) == (trained_by_epochs and params is not None)
    if report["train_seconds"] is not None:
        assert report["train_seconds"] > 0 and report["train_device"] == "cpu"
    if learned:  # the saved model alone reproduces the score
        again = run_train(toy_root, tmp_path / "eval", trainer, "tiny", *opts,
                          flags=("--eval-only", "--model-dir", str(tmp_path / "run")))
        assert again["score"] == pytest.approx(report["score"])
        assert again["train_seconds"] is None  # nothing trained in an evaluation
