"""SoftCPT head on both test backbones (``tiny``; ``tiny-b16``, four heads and three layers)
against a plain, step-by-step computation of docs/method.md.

The reference below builds every prompt token by token and encodes it alone
with the full 77-token causal transformer, as CLIP's ``encode_text`` does; it
shares no code with ``trainers/softcpt.py`` or the prompt builder.
"""
from __future__ import annotations

import math

import pytest
import torch
from open_clip import tokenize

pytest.importorskip("dassl", reason="Dassl is not installed")

from conftest import on_backbones  # noqa: E402
from yacs.config import CfgNode as CN  # noqa: E402

from datasets.task_info import TaskInfo  # noqa: E402
from trainers.parts.base import MultiTaskCLIP  # noqa: E402
from trainers.parts.losses import multitask_loss, training_columns  # noqa: E402
from config.softcpt import VARIANTS, add_softcpt_config, check_softcpt_cfg, resolve_variant  # noqa: E402
from trainers.softcpt import SoftCPTHead  # noqa: E402

TASKS = TaskInfo(keys=("plants", "pets"), names=("plant disease", "pet breed"),
                 classnames=(("apple_scab", "healthy leaf", "rust"),
                             ("sea lion", "golden retriever", "cat", "hamster")),
                 metrics=("overall_acc", "mean_acc"))


def width(clip) -> int:
    """The backbone's token width (64 for tiny, 256 for tiny-b16)."""
    return clip.token_embedding.weight.shape[1]


def softcpt_cfg(*opts) -> CN:
    """Just the TRAINER.SOFTCPT node, merged with ``KEY VALUE`` pairs (no Dassl data)."""
    cfg = CN()
    cfg.TRAINER = CN()
    add_softcpt_config(cfg)
    cfg.merge_from_list(list(opts))
    return cfg


def build(clip, *opts, seed=0):
    torch.manual_seed(seed)
    cfg = softcpt_cfg(*opts)
    return SoftCPTHead.from_cfg(cfg, clip, TASKS), resolve_variant(cfg).TRAINER.SOFTCPT


# ---------------------------------------------------------------- reference
def ref_prompt(clip, ctx, words, position="end"):
    """``[SOS] ctx <words> . [EOS] pad`` as (77, W) embeddings, and the EOS index."""
    ids = tokenize([words.replace("_", " ") + "."])[0]
    eos = int(ids.argmax())
    emb = clip.token_embedding(ids)
    sos, name, rest = emb[:1], emb[1:eos - 1], emb[eos - 1:]  # rest: ". [EOS] pad"
    ctx = emb[:0] if ctx is None else ctx
    half = ctx.shape[0] // 2
    parts = {"end": [sos, ctx, name, rest], "front": [sos, name, ctx, rest],
             "middle": [sos, ctx[:half], name, ctx[half:], rest]}[position]
    return torch.cat(parts)[:77], eos + ctx.shape[0]


def ref_encode(clip, prompt_and_eos):
    """CLIP's encode_text on one prompt given as embeddings (no truncation)."""
    emb, eos = prompt_and_eos
    x = emb[None] + clip.positional_embedding
    x = clip.transformer(x, attn_mask=clip.attn_mask)
    x = clip.ln_final(x)[0, eos]
    return x @ clip.text_projection  # (D,)


def ref_contexts(clip, head, node):
    """c_tj = reshape(x_tj W) for every class of every task, task 1 first, as (task, class name,
    context (N_CTX, width)) (docs/method.md#forward-pass, steps 1-2)."""
    P, Q, W = head.task_ctx, head.class_ctx, head.meta_net.weight  # W: (N_CTX*width, in)
    n_ctx = W.shape[0] // width(clip)
    out, j_global = [], 0
    for t, names in enumerate(TASKS.classnames):
        Pt = P[t] if P is not None and P.dim() == 3 else P
        f_t = ref_encode(clip, ref_prompt(clip, Pt, TASKS.names[t]))
        for name in names:
            if node.CSC:
                Qj = Q[j_global] if Q is not None and Q.dim() == 3 else Q
                g = ref_encode(clip, ref_prompt(clip, Qj, name))
                x = {"lin": torch.cat([g, f_t]), "linmean": (g + f_t) / 2, "lincls": g}[node.META_NET]
            else:
                x = f_t
            c = (x @ W.t()).reshape(n_ctx, width(clip))  # row-major: outputs 1..width = first vector
            out.append((t, name, c))
            j_global += 1
    return out


def ref_class_features(clip, head, node):
    """h_tj for every class of every task, task 1 first (docs/method.md#forward-pass, steps 1-3),
    not normalised."""
    return torch.stack([ref_encode(clip, ref_prompt(clip, c, name, node.CLASS_TOKEN_POSITION))
                        for _, name, c in ref_contexts(clip, head, node)])


def ref_logits_and_loss(clip, head, node, images, labels):
    u = clip.encode_image(images)
    u = u / u.norm(dim=-1, keepdim=True)
    h = ref_class_features(clip, head, node)
    h = h / h.norm(dim=-1, keepdim=True)
    logits = clip.logit_scale.exp() * u @ h.t()
    offsets = TASKS.offsets
    total = 0.0
    for i, y in enumerate(labels.tolist()):
        t = TASKS.task_of_label(y)
        own = logits[i, offsets[t]:offsets[t + 1]]  # the K_t logits of the sample's task
        total = total - torch.log_softmax(own, dim=0)[y - offsets[t]]
    return logits, total / len(labels)


def assert_close_rel(actual, expected):
    """Within 1e-5 relative to the tensor's scale (docs/method.md#numerical-contract)."""
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * max(scale, 1e-12))


CASES = [("VARIANT", v) for v in VARIANTS] + [
    ("VARIANT", "CATA", "TRAINER.SOFTCPT.META_NET", "linmean"),
    ("VARIANT", "CSTS", "TRAINER.SOFTCPT.META_NET", "lincls"),
    ("VARIANT", "NATA", "TRAINER.SOFTCPT.CLASS_TOKEN_POSITION", "middle"),
    ("VARIANT", "CATS", "TRAINER.SOFTCPT.CLASS_TOKEN_POSITION", "front"),
    ("VARIANT", "NATS", "TRAINER.SOFTCPT.TASK_N_CTX", 0),
    ("VARIANT", "CSTA", "TRAINER.SOFTCPT.TASK_CTX_INIT", "a task of",
     "TRAINER.SOFTCPT.CLASS_CTX_INIT", "a photo of a"),
]


# tiny-b16 runs the cases whose text encoding differs (prefix path, class-aware prefix,
# a context per class: plain path); the variants' own logic does not depend on the backbone.
B16_CASES = ("NATA", "CATA", "CSTS-lincls")


def case_id(case) -> str:
    return "-".join(str(x) for x in case[1::2])


def case_opts(case):
    return ["TRAINER.SOFTCPT." + case[0], case[1], *case[2:]]


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(5, 3, 32, 32, generator=g)
    labels = torch.tensor([4, 0, 6, 2, 4])  # both tasks present
    return images, labels


@pytest.mark.parametrize("any_clip, case", on_backbones(CASES, B16_CASES, case_id), indirect=["any_clip"])
def test_logits_and_loss_match_the_spec(any_clip, batch, case):
    """Logits and loss == the step-by-step computation of docs/method.md (fp32, 1e-5), speed-ups on and off."""
    images, labels = batch
    head, node = build(any_clip, *case_opts(case))
    with torch.no_grad():
        ref_logits, ref_loss = ref_logits_and_loss(any_clip, head, node, images, labels)
        task_of_class = head.task_of_class
        for truncate in (True, False):
            model = MultiTaskCLIP(any_clip, head, truncate_text=truncate)
            logits = model(images)
            assert logits.shape == (5, 7)
            assert_close_rel(logits, ref_logits)
            loss = multitask_loss(logits, labels, task_of_class[labels], task_of_class)
            assert_close_rel(loss, ref_loss)
            cached = model(images, text_features=model.text_features())  # eval cache
            assert_close_rel(cached, ref_logits)


@pytest.mark.parametrize("any_clip, case", on_backbones(CASES, ("NATA", "CATA"), case_id),
                         indirect=["any_clip"])
def test_generated_contexts_per_task_are_the_mean_over_the_tasks_classes(any_clip, case):
    """What generated_contexts.pt and interpret_prompt.py report: per class c_tj = G(x_tj) for the
    class-aware variants and, per task, their plain mean over the task's classes (3 and 4 classes
    here, so a sum, another task's classes or a single class differ); c_t = G(f_t) for NA."""
    from trainers.parts.text_encoder import TextEncoder
    head, node = build(any_clip, *case_opts(case))
    with torch.no_grad():
        per_task, per_class = head.generated_contexts(TextEncoder(any_clip))
        ref = ref_contexts(any_clip, head, node)
    n_tasks = len(TASKS.classnames)
    if not node.CSC:  # every class of a task has its task's context: any one of them is c_t
        assert per_class is None
        expected = torch.stack([next(c for t, _, c in ref if t == task) for task in range(n_tasks)])
    else:
        assert_close_rel(per_class, torch.stack([c for _, _, c in ref]))
        expected = torch.stack([sum(c for t, _, c in ref if t == task) / len(TASKS.classnames[task])
                                for task in range(n_tasks)])
    assert per_task.shape == (n_tasks, node.N_CTX, width(any_clip))
    assert_close_rel(per_task, expected)


@pytest.mark.parametrize("variant", ["NATS", "CSTS"])
def test_present_task_features_equal_all_task_features_sliced(any_clip, variant):
    """Class features for the present task only == all-task features sliced; same loss and grads."""
    head, _ = build(any_clip, "TRAINER.SOFTCPT.VARIANT", variant)
    model = MultiTaskCLIP(any_clip, head)
    images = torch.randn(3, 3, 32, 32)
    labels = torch.tensor([5, 3, 6])  # task 1 only
    task_of_class = head.task_of_class

    def step(skip):
        columns = training_columns(labels, task_of_class, skip_absent=skip)
        logits = model(images, columns)
        loss = multitask_loss(logits, torch.searchsorted(columns, labels), task_of_class[labels],
                              task_of_class[columns])
        head.zero_grad()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in head.named_parameters() if p.grad is not None}
        return columns, logits.detach(), loss.detach(), grads

    _, all_logits, all_loss, all_grads = step(skip=False)
    columns, logits, loss, grads = step(skip=True)
    assert columns.tolist() == [3, 4, 5, 6]
    assert_close_rel(logits, all_logits[:, 3:])
    assert_close_rel(loss, all_loss)
    assert sorted(grads) == sorted(all_grads)
    for name in grads:
        assert_close_rel(grads[name], all_grads[name])
    if head.task_ctx.dim() == 3:  # task 0's own context gets no gradient from a task-1 batch
        assert all_grads["task_ctx"][0].abs().max() == 0


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parameter_shapes_and_what_learns(any_clip, variant):
    head, node = build(any_clip, "TRAINER.SOFTCPT.VARIANT", variant)
    D, T, C, W = any_clip.text_projection.shape[1], 2, 7, width(any_clip)
    shapes = {n: tuple(p.shape) for n, p in head.named_parameters()}
    expected = {"task_ctx": (T, 4, W) if node.TASK_CSC else (4, W),
                "meta_net.weight": (16 * W, 2 * D if node.CSC else D)}
    if node.CSC:
        expected["class_ctx"] = (C, 4, W) if node.CLASS_CSC else (4, W)
    assert shapes == expected
    assert all(p.requires_grad for p in head.parameters())
    # Only what is learned is saved: no CLIP weights, no prompt embeddings.
    assert sorted(head.state_dict()) == sorted(expected)
    assert head.per_class_keys == (("class_ctx",) if node.CLASS_CSC else ())
    assert head.per_task_keys == (("task_ctx",) if node.TASK_CSC else ())
    std = head.meta_net.weight.std().item()
    assert 0.015 < std < 0.025 and head.meta_net.bias is None


def test_clip_stays_frozen_and_freeze_cls_prompt(any_clip):
    head, _ = build(any_clip, "TRAINER.SOFTCPT.VARIANT", "CSTA",
                    "TRAINER.SOFTCPT.FREEZE_CLS_PROMPT", True)
    model = MultiTaskCLIP(any_clip, head)
    labels = torch.tensor([0, 4])
    loss = multitask_loss(model(torch.randn(2, 3, 32, 32)), labels,
                          head.task_of_class[labels], head.task_of_class)
    loss.backward()
    assert not head.class_ctx.requires_grad and head.class_ctx.grad is None
    assert head.task_ctx.grad.abs().sum() > 0 and head.meta_net.weight.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in any_clip.parameters())


def test_ctx_init_words_set_the_counts(any_clip):
    head, _ = build(any_clip, "TRAINER.SOFTCPT.VARIANT", "CATS",
                    "TRAINER.SOFTCPT.TASK_CTX_INIT", "a task of",
                    "TRAINER.SOFTCPT.CLASS_CTX_INIT", "a photo of a",
                    "TRAINER.SOFTCPT.CTX_INIT", "a photo of")
    words = any_clip.token_embedding(tokenize(["a task of"]))[0, 1:4]
    assert head.task_ctx.shape == (2, 3, width(any_clip))
    torch.testing.assert_close(head.task_ctx.data[1], words)
    assert head.class_ctx.shape == (4, width(any_clip))
    assert head.meta_net.out_features == 3 * width(any_clip)  # N_CTX = 3 tokens of "a photo of"


# ------------------------------------------------------------------ config
def test_variant_sets_the_table_and_explicit_keys_win():
    for name, values in VARIANTS.items():
        node = resolve_variant(softcpt_cfg("TRAINER.SOFTCPT.VARIANT", name)).TRAINER.SOFTCPT
        assert (node.CSC, node.CLASS_N_CTX, node.CLASS_CSC, node.TASK_CSC) == values
        assert (node.N_CTX, node.TASK_N_CTX, node.META_NET) == (16, 4, "lin")
        check_softcpt_cfg(node)
    # A key given after VARIANT wins, even when it equals the key's usual default.
    node = resolve_variant(softcpt_cfg("TRAINER.SOFTCPT.VARIANT", "CATA",
                                       "TRAINER.SOFTCPT.TASK_CSC", True,
                                       "TRAINER.SOFTCPT.CLASS_N_CTX", 8)).TRAINER.SOFTCPT
    assert (node.CSC, node.CLASS_N_CTX, node.CLASS_CSC, node.TASK_CSC) == (True, 8, False, True)
    node = resolve_variant(softcpt_cfg("TRAINER.SOFTCPT.VARIANT", "CATS",
                                       "TRAINER.SOFTCPT.TASK_CSC", False)).TRAINER.SOFTCPT
    assert node.TASK_CSC is False
    # So does a key from a file merged before a command-line VARIANT.
    cfg = softcpt_cfg("TRAINER.SOFTCPT.TASK_CSC", True)
    cfg.merge_from_list(["TRAINER.SOFTCPT.VARIANT", "CATA"])
    assert resolve_variant(cfg).TRAINER.SOFTCPT.TASK_CSC is True
    # The default is the headline NATA; resolving keeps frozenness and leaves the input alone.
    cfg = softcpt_cfg()
    cfg.freeze()
    out = resolve_variant(cfg)
    assert out.is_frozen() and cfg.TRAINER.SOFTCPT.CSC is None and out.TRAINER.SOFTCPT.CSC is False
    assert resolve_variant(out) == out


@pytest.mark.parametrize("opts, key", [
    (("VARIANT", "NAT"), "VARIANT"),
    (("CLASS_TOKEN_POSITION", "middel"), "CLASS_TOKEN_POSITION"),
    (("VARIANT", "NATA", "CLASS_CSC", True), "CLASS_CSC"),
    (("VARIANT", "CSTA", "CSC", False), "CLASS_CSC"),
    (("CLS_SAMPLE_RATE", 1.5), "CLS_SAMPLE_RATE"),
    (("CLS_SAMPLE_RATE", -0.1), "CLS_SAMPLE_RATE"),
    (("VARIANT", "CATA", "META_NET", "mlp"), "META_NET"),
    (("META_NET", "lincls"), "META_NET"),
    (("CSC", "yes"), "CSC"),
    (("N_CTX", 0), "N_CTX"),
    (("STEPS_PER_BATCH", 0), "STEPS_PER_BATCH"),
])
def test_bad_config_names_the_key(tiny_clip, opts, key):
    pairs = [x for i in range(0, len(opts), 2) for x in ("TRAINER.SOFTCPT." + opts[i], opts[i + 1])]
    with pytest.raises(ValueError, match=f"TRAINER.SOFTCPT.{key}"):
        SoftCPTHead.from_cfg(softcpt_cfg(*pairs), tiny_clip, TASKS)


def test_class_sampling_keeps_batch_classes_and_ceil_rate_of_others():
    task_of_class = torch.tensor([0] * 10 + [1] * 5 + [2] * 4)
    labels = torch.tensor([1, 3, 3, 11])  # tasks 0 and 1; task 2 absent
    g = torch.Generator().manual_seed(0)
    cols = training_columns(labels, task_of_class, True, 0.25, generator=g)
    kept = task_of_class[cols]
    assert set(labels.tolist()) <= set(cols.tolist())
    assert (kept == 0).sum() == 2 + math.ceil(0.25 * 8) and (kept == 1).sum() == 1 + math.ceil(0.25 * 4)
    assert (kept == 2).sum() == 0 and torch.equal(cols, cols.sort().values)


def test_checkpoint_per_class_context_refuses_other_classes(tiny_clip, tmp_path):
    """CSTA: the per-class Q fails clearly on other classes; NATA loads into any benchmark."""
    from dassl.engine import TrainerBase

    from trainers.parts.base import MultiTaskPromptTrainer

    def bare(info, variant):
        trainer = MultiTaskPromptTrainer.__new__(MultiTaskPromptTrainer)
        TrainerBase.__init__(trainer)
        trainer.device, trainer.task_info, trainer.epoch = torch.device("cpu"), info, 0
        cfg = softcpt_cfg("TRAINER.SOFTCPT.VARIANT", variant)
        trainer.model = MultiTaskCLIP(tiny_clip, SoftCPTHead.from_cfg(cfg, tiny_clip, info))
        trainer.register_model("prompt_learner", trainer.model.head, None, None)
        return trainer

    other = TaskInfo(("plants", "pets"), TASKS.names, (("rust", "mildew"), ("cat",)),
                     ("overall_acc", "overall_acc"))
    for variant in ("CSTA", "NATA"):
        bare(TASKS, variant).save_model(0, str(tmp_path / variant))
    with pytest.raises(ValueError, match="'class_ctx' holds one context per class"):
        bare(other, "CSTA").load_model(str(tmp_path / "CSTA"), epoch=1)
    saved, loaded = bare(TASKS, "NATA"), bare(other, "NATA")
    saved.load_model(str(tmp_path / "NATA"), epoch=1)
    loaded.load_model(str(tmp_path / "NATA"), epoch=1)
    assert torch.equal(loaded.model.head.meta_net.weight, saved.model.head.meta_net.weight)
