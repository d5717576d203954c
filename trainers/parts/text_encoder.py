"""CLIP's text tower fed with token embeddings instead of token ids.

The method (docs/method.md#prompts-and-the-text-encoder): add the positional
embedding, run the causal transformer, apply the final layer norm, read the
output at the EOS position and project it. Three exact speed-ups follow from
the causal mask and from reading only the EOS output (docs/method.md#speed-ups):

* truncation: tokens after the last EOS of a call cannot change any result, so
  rows are cut there (77 tokens down to ~25 for class names);
* length buckets: rows with the same EOS position are encoded together and cut
  at their own EOS, so a short name pays for no padding;
* shared prefix: prompts that begin with the same tokens (``[SOS] context``)
  have the same hidden states there, so each distinct prefix is encoded once
  and every prompt's remaining tokens attend to its cached keys and values,
  layer by layer, on the same weights.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)
# Prefixes whose keys one call attends to side by side (a row masks out the others):
# more would spend more on masked scores than the fewer calls save.
PREFIX_CHUNK = 16


class TextEncoder(nn.Module):
    """Encode prompt embeddings ``(N, L, width)`` into text features ``(N, D)``.

    Args:
        clip_model: an open_clip CLIP (or CustomTextCLIP) model; its modules are
            shared, not copied, and stay frozen.
        truncate: cut rows after the longest EOS (exact).
        length_buckets: with ``truncate``, encode rows grouped by EOS position,
            each group cut at its own EOS (exact).
        shared_prefix: ``encode_prefixed`` encodes each shared prefix once (exact);
            off, it encodes the whole prompts like ``forward``.
    """

    def __init__(self, clip_model: nn.Module, truncate: bool = True, length_buckets: bool = True,
                 shared_prefix: bool = True) -> None:
        super().__init__()
        text = clip_model if hasattr(clip_model, "transformer") else clip_model.text
        if getattr(text, "text_pool_type", "argmax") != "argmax":
            raise ValueError("TextEncoder supports text towers pooled at EOS (argmax) only, "
                             f"this model pools with {text.text_pool_type!r}")
        self.transformer = text.transformer
        self.positional_embedding = text.positional_embedding
        self.ln_final = text.ln_final
        self.text_projection = text.text_projection
        self.register_buffer("attn_mask", text.attn_mask, persistent=False)
        self.truncate = truncate
        self.length_buckets = length_buckets
        self.shared_prefix = shared_prefix
        # The prefix path re-implements open_clip's plain residual block from its
        # weights; any other block (custom attention, cross attention) takes the plain path.
        self.prefix_supported = all(_plain_block(b) for b in self.transformer.resblocks)
        if shared_prefix and not self.prefix_supported:
            logger.warning("Shared-prefix text encoding is off: this text tower's blocks are not "
                           "open_clip's plain ResidualAttentionBlock.")

    @property
    def dtype(self) -> torch.dtype:
        return self.positional_embedding.dtype

    def forward(self, prompts: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """Text features, not normalised.

        Args:
            prompts: token embeddings ``(N, L, width)``.
            eot: EOS position of every row ``(N,)``.
        """
        if not self.truncate:
            return self._encode(prompts, eot)
        return _per_bucket(eot, self.length_buckets,
                           lambda rows, length: self._encode(prompts[rows, :length], eot[rows]))

    def encode_prefixed(self, prefix: torch.Tensor, groups: torch.Tensor, suffix: torch.Tensor,
                        eot: torch.Tensor) -> torch.Tensor:
        """Text features of prompts ``cat(prefix[groups], suffix)``, not normalised.

        Args:
            prefix: the distinct prefixes ``(G, P, width)`` (``[SOS]`` + context).
            groups: index of every row's prefix ``(N,)``.
            suffix: every row's remaining tokens ``(N, L - P, width)``; its EOS must
                lie in the suffix (``eot >= P``).
            eot: EOS position of every row in the whole prompt ``(N,)``.
        """
        if not (self.shared_prefix and self.prefix_supported and not self.transformer.grad_checkpointing):
            return self.forward(torch.cat([prefix[groups], suffix.to(prefix.dtype)], 1), eot)
        p = prefix.shape[1]
        past = self._prefix_keys_values(prefix)  # per layer: (G, heads, P, d) keys and values

        def per_chunk(rows: torch.Tensor, _: int) -> torch.Tensor:
            # up to PREFIX_CHUNK prefixes side by side: a row's scores against the other
            # prefixes are masked out, so one call covers them all (cells: EOS buckets only)
            first = int(groups[rows[0]]) // PREFIX_CHUNK * PREFIX_CHUNK
            kv = [(k[first:first + PREFIX_CHUNK], v[first:first + PREFIX_CHUNK]) for k, v in past]
            n = len(kv[0][0])
            kv = [(k.transpose(0, 1).flatten(1, 2)[None], v.transpose(0, 1).flatten(1, 2)[None])
                  for k, v in kv]  # (1, heads, n * P, d)
            own = groups[rows, None] - first == torch.arange(n, device=rows.device)  # (R, n)
            seen = None if n == 1 else torch.zeros(own.shape, dtype=self.dtype, device=rows.device) \
                .masked_fill(~own, float("-inf")).repeat_interleave(p, dim=1)[:, None, None]

            def encode(sub: torch.Tensor, length: int) -> torch.Tensor:
                cell = rows[sub]
                x = suffix[cell, :length - p].to(self.dtype) + self.positional_embedding[p:length]
                mask = self.attn_mask[p:length, p:length]  # causal among the suffix
                for block, (k, v) in zip(self.transformer.resblocks, kv):
                    x = _block(block, x, mask, (k, v, None if seen is None else seen[sub]))[0]
                return self._pool(x, eot[cell] - p)

            cut = eot[rows] if self.truncate else torch.full_like(rows, suffix.shape[1] + p - 1)
            return _per_bucket(cut, self.truncate and self.length_buckets, encode)

        return _per_bucket(groups // PREFIX_CHUNK, True, per_chunk)

    def _prefix_keys_values(self, prefix: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Keys and values of every layer on the prefixes (causal among themselves)."""
        p = prefix.shape[1]
        x = prefix.to(self.dtype) + self.positional_embedding[:p]
        mask = self.attn_mask[:p, :p]
        past = []
        blocks = self.transformer.resblocks
        for i, block in enumerate(blocks):
            x, kv = _block(block, x, mask, last=i == len(blocks) - 1)
            past.append(kv)
        return past

    def _encode(self, prompts: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """The plain path: the whole rows through open_clip's transformer."""
        length = prompts.shape[1]
        x = prompts.to(self.dtype) + self.positional_embedding[:length]
        x = self.transformer(x, attn_mask=self.attn_mask[:length, :length])  # (N, L', width)
        return self._pool(x, eot)

    def _pool(self, x: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """Projected final-norm output at ``eot`` ``(N, D)``."""
        # ln_final works per token, so pooling first is exact and cheaper.
        x = self.ln_final(x[torch.arange(x.shape[0], device=x.device), eot])  # (N, width)
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection  # (N, D)


def _per_bucket(key: torch.Tensor, split: bool, encode) -> torch.Tensor:
    """``encode(rows, length)`` per group of rows with equal ``key`` (or all rows at
    once when not ``split``), ``length`` being the group's largest EOS + 1 for EOS keys;
    results put back in row order."""
    if not split:
        return encode(torch.arange(len(key), device=key.device), int(key.max()) + 1)
    values = torch.unique(key).tolist()
    if len(values) == 1:
        return encode(torch.arange(len(key), device=key.device), values[0] + 1)
    cells = [(key == v).nonzero().squeeze(1) for v in values]
    out = torch.cat([encode(rows, v + 1) for rows, v in zip(cells, values)])
    return out[torch.argsort(torch.cat(cells))]


def _plain_block(block: nn.Module) -> bool:
    """True for open_clip's ResidualAttentionBlock with packed q/k/v weights and no cross attention."""
    attn = getattr(block, "attn", None)
    return (type(block).__name__ == "ResidualAttentionBlock" and not hasattr(block, "ln_1_kv")
            and isinstance(attn, nn.MultiheadAttention) and attn.in_proj_weight is not None
            and attn.bias_k is None and not attn.add_zero_attn and attn.dropout == 0.0)


def _block(block: nn.Module, x: torch.Tensor, mask: torch.Tensor,
           past: Optional[tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]] = None,
           last: bool = False):
    """One residual block of open_clip on ``x`` ``(N, S, width)`` from its own weights.

    ``past``: keys and values ``(1, heads, P, d)`` of earlier tokens, and their additive
    mask per row ``(N, 1, 1, P)`` (None: every row sees them all); ``mask`` ``(S, S)``
    is the additive causal mask among ``x``.
    Returns the block's output (``None`` when ``last``: only keys and values are
    wanted) and this block's keys and values of ``x``.
    """
    attn = block.attn
    heads = attn.num_heads
    q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))  # (N, h, S, d)
    if last:
        return None, (k, v)
    q = q * q.shape[-1] ** -0.5
    scores = q @ k.transpose(-1, -2) + mask.to(q.dtype)  # (N, h, S, S)
    if past is not None:
        # scores against the prefix: einsum folds rows into the matrix product, where a
        # broadcast matmul would copy the prefix's keys and values once per row
        before = torch.einsum("nhsd,hpd->nhsp", q, past[0][0])  # (N, h, S, P)
        if past[2] is not None:
            before = before + past[2]
        scores = torch.cat([before, scores], dim=-1)  # (N, h, S, P + S)
    weights = scores.float().softmax(dim=-1).to(q.dtype)
    if past is None:
        out = weights @ v
    else:
        p = past[1].shape[-2]
        out = torch.einsum("nhsp,hpd->nhsd", weights[..., :p], past[1][0]) + weights[..., p:] @ v
    out = attn.out_proj(out.transpose(1, 2).flatten(2))  # (N, S, width)
    x = x + block.ls_1(out)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, (k, v)
