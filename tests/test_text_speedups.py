"""Length buckets and shared-prefix encoding against the plain 77-token path.

Every case builds the same head twice over each test backbone (``tiny``: one head,
two layers; ``tiny-b16``: four heads, three layers, as a real text tower splits and
stacks them): one model with every text speed-up off (each prompt through the whole
77-token transformer) and one with a given set on. Features, logits, loss and the
gradient of every learned tensor must agree within 1e-5 (fp32), and the predictions
must be identical. Class names run from one token to more than ten, so rows have many
EOS positions; a 20-task benchmark gives more prefixes than one PREFIX_CHUNK call holds.
fp16 and bf16 compare the prefix path with the plain path in the same precision.
"""
from __future__ import annotations

import copy
import itertools

import pytest
import torch

pytest.importorskip("dassl", reason="Dassl is not installed")

from conftest import on_backbones  # noqa: E402
from config.softcpt import VARIANT_KEYS, VARIANTS  # noqa: E402
from datasets.task_info import TaskInfo  # noqa: E402
from trainers.coop import CoOpHead  # noqa: E402
from trainers.parts import text_encoder  # noqa: E402
from trainers.parts.base import MultiTaskCLIP  # noqa: E402
from trainers.parts.losses import multitask_loss, own_task_prediction  # noqa: E402
from trainers.parts.prompt import PromptBuilder, init_context, num_tokens  # noqa: E402
from trainers.parts.text_encoder import PREFIX_CHUNK, TextEncoder  # noqa: E402
from trainers.softcpt import SoftCPTHead  # noqa: E402

LONG = "very long ceremonial ancient hand painted porcelain tea cup with golden rim"
TASKS = TaskInfo(keys=("plants", "pets", "things"), names=("plant disease", "pet breed", "object"),
                 classnames=(("rust", "apple_scab", "healthy leaf", "leaf spot"),
                             ("sea lion", "golden retriever puppy", "cat", "a", LONG),
                             ("cup", "red double decker bus", "kite")),
                 metrics=("overall_acc",) * 3)
C = len(TASKS.all_classnames)
# More tasks than PREFIX_CHUNK (Fashion-20 has 20): a per-task prefix for each, so the
# prefix path needs two chunks, the second one holding tasks 16..19.
WORDS = ("red", "sea lion", "golden retriever puppy", "a", "kite", "leaf spot", LONG, "double decker bus")
MANY = PREFIX_CHUNK + 4
TASKS_MANY = TaskInfo(keys=tuple(f"task{t}" for t in range(MANY)),
                      names=tuple(f"task {WORDS[t % len(WORDS)]}" for t in range(MANY)),
                      classnames=tuple((WORDS[t % len(WORDS)], WORDS[(3 * t + 1) % len(WORDS)])
                                       for t in range(MANY)),
                      metrics=("overall_acc",) * MANY)
# (truncate, length buckets, shared prefix): each added to truncation, then all together
# (truncation alone against the 77-token path: tests/test_text_and_prompt.py)
SWITCHES = [(True, True, False), (True, False, True), (True, True, True)]


def width(clip) -> int:
    return clip.token_embedding.weight.shape[1]


def test_names_have_varied_lengths():
    lengths = {num_tokens(n.replace("_", " ")) for n in TASKS.all_classnames}
    assert min(lengths) == 1 and max(lengths) > 10 and len(lengths) >= 5


def assert_close(actual, expected):
    """Within 1e-5 relative to the tensor's scale (docs/method.md#numerical-contract)."""
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * max(scale, 1e-12))


def softcpt_head(clip, variant: str, position: str = "end", tasks: TaskInfo = TASKS) -> SoftCPTHead:
    torch.manual_seed(0)
    kwargs = dict(zip((k.lower() for k in VARIANT_KEYS), VARIANTS[variant]))
    return SoftCPTHead(tasks.names, tasks.classnames, clip.token_embedding, clip.text_projection.shape[1],
                       n_ctx=6, class_token_position=position, **kwargs)


def coop_head(clip, sharing: str, csc: bool = False, tasks: TaskInfo = TASKS) -> CoOpHead:
    torch.manual_seed(0)
    return CoOpHead(tasks, clip.token_embedding, n_ctx=5, sharing=sharing, csc=csc)


HEADS = {
    **{v: (lambda clip, v=v: softcpt_head(clip, v)) for v in ("NATA", "NATS", "CATA", "CATS", "CSTA")},
    "NATA-middle": lambda clip: softcpt_head(clip, "NATA", "middle"),
    "CoOp-CA": lambda clip: coop_head(clip, "task"),
    "CoOp-CS": lambda clip: coop_head(clip, "task", csc=True),
    "CoOp-MT": lambda clip: coop_head(clip, "all"),
    # one class-prompt prefix per task, 20 tasks: two PREFIX_CHUNK calls
    f"NATA-{MANY}tasks": lambda clip: softcpt_head(clip, "NATA", tasks=TASKS_MANY),
    f"CoOp-CA-{MANY}tasks": lambda clip: coop_head(clip, "task", tasks=TASKS_MANY),
}


def step(model: MultiTaskCLIP, images, labels, columns=None):
    """Logits, loss, predictions and the gradients of the head's parameters."""
    toc = model.head.task_of_class
    columns = torch.arange(len(toc)) if columns is None else columns
    targets = torch.searchsorted(columns, labels)
    model.head.zero_grad()
    logits = model(images, columns)
    loss = multitask_loss(logits, targets, toc[labels], toc[columns])
    loss.backward()
    pred = own_task_prediction(logits, toc[labels], toc[columns])
    grads = {n: p.grad.clone() for n, p in model.head.named_parameters() if p.grad is not None}
    return logits.detach(), loss.detach(), pred, grads


def batch_labels(head) -> torch.Tensor:
    """Six labels from the first, middle and last tasks (all three of TASKS; beyond 16 of TASKS_MANY)."""
    n = len(head.task_of_class)
    return torch.tensor([0, n // 2, n - 1, n - 2, n // 2 + 2, 4])


# tiny-b16 (several heads and layers) on each kind of prefix: one per task, a class-aware
# one, one for all, and more prefixes than one chunk; tiny on every head.
B16_HEADS = ("NATA", "CATA", "CoOp-MT", f"NATA-{MANY}tasks")


@pytest.mark.parametrize("any_clip, name", on_backbones(HEADS, B16_HEADS), indirect=["any_clip"])
def test_speedups_equal_the_77_token_path(any_clip, name):
    head = HEADS[name](any_clip)
    g = torch.Generator().manual_seed(3)
    images = torch.randn(6, 3, 32, 32, generator=g)
    labels = batch_labels(head)
    plain = MultiTaskCLIP(any_clip, head, False, False, False)
    ref_logits, ref_loss, ref_pred, ref_grads = step(plain, images, labels)
    assert ref_grads and all(g.abs().sum() > 0 for g in ref_grads.values())
    for switches in SWITCHES:
        model = MultiTaskCLIP(any_clip, head, *switches)
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
def test_speedups_on_a_subset_of_columns(any_clip, name):
    """Training on the present tasks only (SKIP_ABSENT_TASKS): prefixes of the used tasks alone."""
    head = HEADS[name](any_clip)
    images = torch.randn(2, 3, 32, 32)
    labels = torch.tensor([7, 11])  # pets and things
    columns = torch.arange(4, C)
    ref = step(MultiTaskCLIP(any_clip, head, False, False, False), images, labels, columns)
    ours = step(MultiTaskCLIP(any_clip, head), images, labels, columns)
    for a, b in zip(ours[:2], ref[:2]):
        assert_close(a, b)
    for key in ref[3]:
        assert_close(ours[3][key], ref[3][key])


NAMES = ["a", "sea lion", LONG, "cat", "golden retriever puppy", "red double decker bus"]
# Rows of six names over 20 contexts: each context twice, rows of one context apart, so that
# every chunk of PREFIX_CHUNK contexts has rows of several EOS positions.
MANY_GROUPS = torch.arange(2 * MANY) % MANY
MANY_NAMES = [NAMES[i % len(NAMES)] for i in range(2 * MANY)]


@pytest.mark.parametrize("shared,names,groups", [
    (True, NAMES, None), (False, NAMES, torch.tensor([2, 0, 0, 1, 2, 1])),
    (False, MANY_NAMES, MANY_GROUPS)], ids=["shared", "3-contexts", f"{MANY}-contexts"])
def test_prefix_encoding_matches_whole_prompts(any_clip, shared, names, groups):
    """The builder's prefix path == the same prompts built whole, with gradients to the context."""
    builder = PromptBuilder(names, 4, any_clip.token_embedding)
    n_groups = None if groups is None else int(groups.max()) + 1
    assert n_groups is None or n_groups <= PREFIX_CHUNK or n_groups == MANY > PREFIX_CHUNK
    ctx0 = init_context(4, width(any_clip), groups=n_groups)
    results = []
    options_list = list(itertools.product([False, True], repeat=3))
    if groups is MANY_GROUPS:  # the plain path, then the prefix path with and without cuts
        options_list = [(False, False, False), (True, True, True), (True, False, True), (False, False, True)]
    for options in options_list:
        ctx = ctx0.clone().requires_grad_()
        encoder = TextEncoder(any_clip, *options)
        feats = builder.encode(encoder, ctx, groups=groups)
        (feats * torch.linspace(-1, 1, feats.shape[1])).sum().backward()
        results.append((feats.detach(), ctx.grad))
    for feats, grad in results[1:]:
        assert_close(feats, results[0][0])
        assert_close(grad, results[0][1])


def test_prefix_path_skips_unsupported_blocks(any_clip, monkeypatch):
    """A text tower whose blocks are not open_clip's plain block is encoded whole: the
    prefix path's own block (text_encoder._block) never runs, the plain transformer does."""
    calls = {"prefix blocks": 0, "plain": 0}
    own_block = text_encoder._block

    def counted_block(*args, **kwargs):
        calls["prefix blocks"] += 1
        return own_block(*args, **kwargs)

    monkeypatch.setattr(text_encoder, "_block", counted_block)
    builder = PromptBuilder(["cat", "sea lion"], 3, any_clip.token_embedding)
    ctx = init_context(3, width(any_clip))
    n_layers = len(any_clip.transformer.resblocks)
    encoder = TextEncoder(any_clip)
    hook = encoder.transformer.register_forward_hook(
        lambda *_: calls.__setitem__("plain", calls["plain"] + 1))
    try:
        with torch.no_grad():
            assert encoder.prefix_supported
            builder.encode(encoder, ctx)  # the control: a plain block takes the prefix path
            # every layer on the prefix, every layer on the suffix (one EOS bucket per name)
            assert calls == {"prefix blocks": n_layers * 3, "plain": 0}
            calls.update({"prefix blocks": 0})
            encoder.prefix_supported = False
            whole = builder.encode(encoder, ctx)
            assert calls == {"prefix blocks": 0, "plain": 2}  # one call per EOS bucket
            assert_close(whole, TextEncoder(any_clip, shared_prefix=False)(*builder(ctx)))
    finally:
        hook.remove()


# ---------------------------------------------------------------- half precision
# The prefix path adds the same terms in another order (scores against the prefix and
# against the suffix are separate matrix products; the attention output is the sum of
# two products), so in half precision it agrees with the plain path to rounding, not
# bit for bit. Each layer rounds to the dtype's eps (fp16 2**-10, bf16 2**-7) several
# times (q/k/v, scores, softmax weights, attention output, MLP, residual sum), and a
# difference made at one layer is carried by the layers after it, so the bound grows
# with the layers: 4 * eps * layers of the features' scale. Measured on both backbones
# (20 contexts, rows of 6 EOS positions), in units of eps * layers * scale: fp16 0.55
# (tiny) and 0.41 (tiny-b16), bf16 0.56 and 0.41, i.e. about 2 ulps of the largest
# feature; each half path's own distance from fp32 is 0.37-0.59 of the same unit. So the
# bound leaves a 7x margin for other machines' kernels and still says "rounding": a
# planted bug (heads mixed, a chunk reading another chunk's keys) moves the features by
# more than 10% of their scale, 25 units or more.
HALF_ULPS_PER_LAYER = 4


@pytest.fixture(scope="module")
def half_clips(any_clip):
    """The backbone cast to fp16 and to bf16 (module scope: cast once per backbone)."""
    return {dtype: copy.deepcopy(any_clip).to(dtype) for dtype in (torch.float16, torch.bfloat16)}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_prefix_path_in_half_precision_equals_the_plain_path_to_rounding(any_clip, half_clips, dtype):
    clip = half_clips[dtype]
    torch.manual_seed(0)
    builder = PromptBuilder(MANY_NAMES, 4, clip.token_embedding)
    ctx = init_context(4, width(clip), groups=MANY).to(dtype)
    with torch.no_grad():  # the plain path cut at EOS (exact: test_text_and_prompt.py), the prefix path
        fast = builder.encode(TextEncoder(clip), ctx, groups=MANY_GROUPS)
        plain = builder.encode(TextEncoder(clip, shared_prefix=False), ctx, groups=MANY_GROUPS)
        exact = builder.encode(TextEncoder(any_clip, shared_prefix=False), ctx.float(), groups=MANY_GROUPS)
    assert fast.dtype == plain.dtype == dtype
    scale = float(exact.abs().max())
    bound = HALF_ULPS_PER_LAYER * torch.finfo(dtype).eps * len(clip.transformer.resblocks) * scale
    diff = float((fast.float() - plain.float()).abs().max())
    assert diff <= bound, f"prefix vs plain path in {dtype}: {diff:.3g} > {bound:.3g}"
    # the bound is of the size of rounding: the plain path's own error against fp32 is close to it
    assert float((plain.float() - exact).abs().max()) <= bound


def test_every_prompt_trainer_has_the_switches_on_by_default():
    from dassl.config import get_cfg_default

    from config import extend_cfg
    cfg = get_cfg_default()
    extend_cfg(cfg)
    for node in ("SOFTCPT", "COOP", "COCOOP"):
        assert cfg.TRAINER[node].LENGTH_BUCKETS is True and cfg.TRAINER[node].SHARED_PREFIX is True
