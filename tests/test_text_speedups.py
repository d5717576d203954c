"""Length buckets and shared-prefix encoding against the plain 77-token path.

Every case builds the same head twice over the tiny CLIP: one model with every
text speed-up off (each prompt through the whole 77-token transformer) and one
with a given set on. Features, logits, loss and the gradient of every learned
tensor must agree within 1e-5 (fp32), and the predictions must be identical.
Class names run from one token to more than ten, so rows have many EOS positions.
"""
from __future__ import annotations

import itertools

import pytest
import torch

pytest.importorskip("dassl", reason="Dassl is not installed")

from datasets.task_info import TaskInfo  # noqa: E402
from trainers.base import MultiTaskCLIP  # noqa: E402
from trainers.coop import CoOpHead  # noqa: E402
from trainers.losses import multitask_loss, own_task_prediction  # noqa: E402
from trainers.prompt import PromptBuilder, init_context, num_tokens  # noqa: E402
from trainers.softcpt import VARIANT_KEYS, VARIANTS, SoftCPTHead  # noqa: E402
from trainers.text_encoder import TextEncoder  # noqa: E402

LONG = "very long ceremonial ancient hand painted porcelain tea cup with golden rim"
TASKS = TaskInfo(keys=("plants", "pets", "things"), names=("plant disease", "pet breed", "object"),
                 classnames=(("rust", "apple_scab", "healthy leaf", "leaf spot"),
                             ("sea lion", "golden retriever puppy", "cat", "a", LONG),
                             ("cup", "red double decker bus", "kite")),
                 metrics=("overall_acc",) * 3)
C = len(TASKS.all_classnames)
# (truncate, length buckets, shared prefix): each added to truncation, then all together
# (truncation alone against the 77-token path: tests/test_text_and_prompt.py)
SWITCHES = [(True, True, False), (True, False, True), (True, True, True)]


def test_names_have_varied_lengths():
    lengths = {num_tokens(n.replace("_", " ")) for n in TASKS.all_classnames}
    assert min(lengths) == 1 and max(lengths) > 10 and len(lengths) >= 5


def assert_close(actual, expected):
    """Within 1e-5 relative to the tensor's scale (docs/method.md#numerical-contract)."""
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * max(scale, 1e-12))


def softcpt_head(tiny_clip, variant: str, position: str = "end") -> SoftCPTHead:
    torch.manual_seed(0)
    kwargs = dict(zip((k.lower() for k in VARIANT_KEYS), VARIANTS[variant]))
    return SoftCPTHead(TASKS.names, TASKS.classnames, tiny_clip.token_embedding, 32, n_ctx=6,
                       class_token_position=position, **kwargs)


def coop_head(tiny_clip, sharing: str, csc: bool = False) -> CoOpHead:
    torch.manual_seed(0)
    return CoOpHead(TASKS, tiny_clip.token_embedding, n_ctx=5, sharing=sharing, csc=csc)


HEADS = {
    **{v: (lambda clip, v=v: softcpt_head(clip, v)) for v in ("NATA", "NATS", "CATA", "CATS", "CSTA")},
    "NATA-middle": lambda clip: softcpt_head(clip, "NATA", "middle"),
    "CoOp-CA": lambda clip: coop_head(clip, "task"),
    "CoOp-CS": lambda clip: coop_head(clip, "task", csc=True),
    "CoOp-MT": lambda clip: coop_head(clip, "all"),
}


def step(model: MultiTaskCLIP, images, labels, columns=None):
    """Logits, loss, predictions and the gradients of the head's parameters."""
    toc = model.head.task_of_class
    columns = torch.arange(C) if columns is None else columns
    targets = torch.searchsorted(columns, labels)
    model.head.zero_grad()
    logits = model(images, columns)
    loss = multitask_loss(logits, targets, toc[labels], toc[columns])
    loss.backward()
    pred = own_task_prediction(logits, toc[labels], toc[columns])
    grads = {n: p.grad.clone() for n, p in model.head.named_parameters() if p.grad is not None}
    return logits.detach(), loss.detach(), pred, grads


@pytest.mark.parametrize("name", list(HEADS))
def test_speedups_equal_the_77_token_path(tiny_clip, name):
    head = HEADS[name](tiny_clip)
    g = torch.Generator().manual_seed(3)
    images = torch.randn(6, 3, 32, 32, generator=g)
    labels = torch.tensor([0, 5, 8, 11, 7, 4])  # all three tasks present
    plain = MultiTaskCLIP(tiny_clip, head, False, False, False)
    ref_logits, ref_loss, ref_pred, ref_grads = step(plain, images, labels)
    assert ref_grads and all(g.abs().sum() > 0 for g in ref_grads.values())
    for switches in SWITCHES:
        model = MultiTaskCLIP(tiny_clip, head, *switches)
        logits, loss, pred, grads = step(model, images, labels)
        assert_close(logits, ref_logits)
        assert_close(loss, ref_loss)
        assert torch.equal(pred, ref_pred)
        assert sorted(grads) == sorted(ref_grads)
        for key in grads:
            assert_close(grads[key], ref_grads[key])
    with torch.no_grad():  # evaluation: every class, features once
        assert_close(model.text_features(), plain.text_features())


@pytest.mark.parametrize("name", ["NATA", "CATA", "CoOp-CA"])
def test_speedups_on_a_subset_of_columns(tiny_clip, name):
    """Training on the present tasks only (SKIP_ABSENT_TASKS): prefixes of the used tasks alone."""
    head = HEADS[name](tiny_clip)
    images = torch.randn(2, 3, 32, 32)
    labels = torch.tensor([7, 11])  # pets and things
    columns = torch.arange(4, C)
    ref = step(MultiTaskCLIP(tiny_clip, head, False, False, False), images, labels, columns)
    ours = step(MultiTaskCLIP(tiny_clip, head), images, labels, columns)
    for a, b in zip(ours[:2], ref[:2]):
        assert_close(a, b)
    for key in ref[3]:
        assert_close(ours[3][key], ref[3][key])


@pytest.mark.parametrize("shared,groups", [(True, None), (False, torch.tensor([2, 0, 0, 1, 2, 1]))])
def test_prefix_encoding_matches_whole_prompts(tiny_clip, shared, groups):
    """The builder's prefix path == the same prompts built whole, with gradients to the context."""
    names = ["a", "sea lion", LONG, "cat", "golden retriever puppy", "red double decker bus"]
    builder = PromptBuilder(names, 4, tiny_clip.token_embedding)
    ctx0 = init_context(4, 64) if shared else torch.randn(3, 4, 64) * 0.02
    results = []
    for options in itertools.product([False, True], repeat=3):
        ctx = ctx0.clone().requires_grad_()
        encoder = TextEncoder(tiny_clip, *options)
        feats = builder.encode(encoder, ctx, groups=groups)
        (feats * torch.linspace(-1, 1, feats.shape[1])).sum().backward()
        results.append((feats.detach(), ctx.grad))
    for feats, grad in results[1:]:
        assert_close(feats, results[0][0])
        assert_close(grad, results[0][1])


def test_prefix_path_skips_unsupported_blocks(tiny_clip):
    """A text tower whose blocks are not open_clip's plain block is encoded whole."""
    encoder = TextEncoder(tiny_clip)
    assert encoder.prefix_supported
    encoder.prefix_supported = False
    builder = PromptBuilder(["cat", "sea lion"], 3, tiny_clip.token_embedding)
    ctx = init_context(3, 64)
    with torch.no_grad():
        assert_close(builder.encode(encoder, ctx), TextEncoder(tiny_clip)(*builder(ctx)))


def test_every_prompt_trainer_has_the_switches_on_by_default():
    from dassl.config import get_cfg_default

    from trainers.config import extend_cfg
    cfg = get_cfg_default()
    extend_cfg(cfg)
    for node in ("SOFTCPT", "COOP", "COCOOP"):
        assert cfg.TRAINER[node].LENGTH_BUCKETS is True and cfg.TRAINER[node].SHARED_PREFIX is True
