"""The shared text encoder and prompt builder against plain CLIP computations, on both test
backbones (``tiny``: one head, two layers; ``tiny-b16``: four heads, three layers)."""
from __future__ import annotations

import pytest
import torch

from trainers.parts.prompt import PromptBuilder, embed_words, init_context, num_tokens, tokenize
from trainers.parts.text_encoder import TextEncoder

NAMES = ["dog", "sea_lion", "golden retriever puppy", "a"]


def width(clip) -> int:
    return clip.token_embedding.weight.shape[1]


def test_encoder_on_plain_tokens_equals_clip_encode_text(any_clip):
    """TextEncoder(token_embedding(ids)) == CLIP's own encode_text(ids)."""
    ids = tokenize([f"a photo of a {n}." for n in NAMES])
    with torch.no_grad():
        ours = TextEncoder(any_clip)(any_clip.token_embedding(ids), ids.argmax(-1))
        ref = any_clip.encode_text(ids)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_truncation_is_exact(any_clip):
    """EOS-truncated encoding == full 77-token encoding (fp32, 1e-5)."""
    builder = PromptBuilder(NAMES, 4, any_clip.token_embedding)
    ctx = init_context(4, width(any_clip))
    prompts, eot = builder(ctx)
    with torch.no_grad():
        cut = TextEncoder(any_clip, truncate=True)(prompts, eot)
        full = TextEncoder(any_clip, truncate=False)(prompts, eot)
    torch.testing.assert_close(cut, full, rtol=1e-5, atol=1e-5)


def naive_prompt(builder_names, ctx, clip_model, position, name_index):
    """One prompt built token by token: [SOS] ctx/name in the given order . [EOS] pad."""
    name = builder_names[name_index].replace("_", " ")
    ids = tokenize([name + "."])[0]
    n = num_tokens(name)
    emb = clip_model.token_embedding(ids)
    sos, words, rest = emb[:1], emb[1:1 + n], emb[1 + n:]
    half = ctx.shape[0] // 2
    parts = {"end": [sos, ctx, words, rest],
             "front": [sos, words, ctx, rest],
             "middle": [sos, ctx[:half], words, ctx[half:], rest]}[position]
    return torch.cat(parts)[:77]


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_batched_build_equals_per_name_loop(any_clip, position):
    """Batched prompt build == per-class loop, for every class-token position."""
    builder = PromptBuilder(NAMES, 5, any_clip.token_embedding, position)
    ctx = torch.randn(len(NAMES), 5, width(any_clip))
    with torch.no_grad():
        prompts, eot = builder(ctx)
        for i in range(len(NAMES)):
            assert torch.equal(prompts[i], naive_prompt(NAMES, ctx[i], any_clip, position, i))
    assert eot.tolist() == [1 + 5 + num_tokens(n.replace("_", " ")) + 1 for n in NAMES]


def test_rows_select_names_and_shared_context_broadcasts(any_clip):
    builder = PromptBuilder(NAMES, 3, any_clip.token_embedding, "middle")
    ctx = torch.randn(3, width(any_clip))
    all_prompts, all_eot = builder(ctx)
    rows = torch.tensor([2, 0])
    some, eot = builder(ctx, rows)
    assert torch.equal(some, all_prompts[rows]) and torch.equal(eot, all_eot[rows])


def test_zero_context_is_the_plain_name_prompt(any_clip):
    builder = PromptBuilder(["plant disease"], 0, any_clip.token_embedding)
    prompts, eot = builder()
    with torch.no_grad():
        assert torch.equal(prompts[0], any_clip.token_embedding(tokenize(["plant disease."]))[0])


def test_gradient_reaches_the_context(any_clip):
    ctx = init_context(4, width(any_clip)).requires_grad_()
    prompts, eot = PromptBuilder(NAMES, 4, any_clip.token_embedding, "front")(ctx)
    TextEncoder(any_clip)(prompts, eot).sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0


def test_context_initialisation(any_clip):
    words = embed_words("a photo of a", any_clip.token_embedding)
    assert words.shape == (4, width(any_clip))
    grouped = init_context(0, width(any_clip), groups=3, words="a photo of a",
                           token_embedding=any_clip.token_embedding)
    assert grouped.shape == (3, 4, width(any_clip)) and torch.equal(grouped[2], words)
    torch.manual_seed(0)
    random_ctx = init_context(16, 512, groups=2)
    assert random_ctx.shape == (2, 16, 512) and abs(random_ctx.std().item() - 0.02) < 1e-3


def test_bad_position_names_the_choices(any_clip):
    with pytest.raises(ValueError, match="end.*middle.*front"):
        PromptBuilder(NAMES, 4, any_clip.token_embedding, "centre")
