"""The one prompt builder: ``[SOS] v_1 ... v_n <name> . [EOS]`` as token embeddings.

Every trainer (SoftCPT's task and class prompts, CoOp's class prompts, CoCoOp)
builds its prompts here. The words of each prompt are tokenised and embedded
once; a forward pass only splices the context vectors in.
"""
from __future__ import annotations

from typing import Optional, Sequence

import open_clip
import torch
from torch import nn

from config import CONTEXT_LENGTH, POSITIONS, ConfigError


def tokenize(texts: Sequence[str]) -> torch.Tensor:
    """CLIP's tokenizer (77 tokens, SOS/EOS added): ``(N, 77)`` token ids."""
    return open_clip.tokenize(list(texts))


def num_tokens(text: str) -> int:
    """BPE tokens in ``text`` without SOS/EOS."""
    return int(tokenize([text])[0].argmax()) - 1


def check_prompt_length(texts: Sequence[str], names: Sequence[str], n_ctx: int, key: str) -> None:
    """Every prompt fits CLIP's context: the tokenizer would cut a longer one silently (and the
    context vectors would not fit). ``key``: the config key that set ``n_ctx``."""
    lengths = tokenize_long(texts).argmax(dim=-1) + 1  # tokens with [SOS] and [EOS]
    longest = int(lengths.argmax())
    if int(lengths[longest]) > CONTEXT_LENGTH:
        name_tokens = int(lengths[longest]) - n_ctx - 2
        raise ConfigError(
            f"{key} is {n_ctx}; allowed here: at most {CONTEXT_LENGTH - 2 - name_tokens}: the name "
            f"{names[longest]!r} and '.' take {name_tokens} of CLIP's {CONTEXT_LENGTH} text tokens, "
            "with [SOS] and [EOS] (docs/troubleshooting.md#configuration).")


def tokenize_long(texts: Sequence[str]) -> torch.Tensor:
    """Token ids without CLIP's cut at 77 (to measure a prompt): ``(N, L)``. A BPE token holds
    at least one character, so L = the longest text's characters + [SOS] and [EOS] is enough."""
    return open_clip.tokenize(list(texts), context_length=max(map(len, texts)) + 2)


def embed_words(words: str, token_embedding: nn.Embedding) -> torch.Tensor:
    """Token embeddings of ``words`` ``(n, width)``: CTX_INIT's initial context."""
    words = words.replace("_", " ").strip()
    n = num_tokens(words)
    with torch.no_grad():
        emb = token_embedding(tokenize([words]).to(token_embedding.weight.device))
    return emb[0, 1:1 + n].float().clone()


def init_context(n_ctx: int, width: int, groups: Optional[int] = None, words: str = "",
                 token_embedding: Optional[nn.Embedding] = None, std: float = 0.02) -> torch.Tensor:
    """Initial context vectors: ``(n_ctx, width)``, or ``(groups, n_ctx, width)``.

    From the embeddings of ``words`` when given (then ``n_ctx`` is their token
    count and every group starts from them), else N(0, std^2) as in CoOp.
    """
    if words:
        ctx = embed_words(words, token_embedding)
        return ctx if groups is None else ctx.expand(groups, -1, -1).clone()
    shape = (n_ctx, width) if groups is None else (groups, n_ctx, width)
    return torch.empty(shape).normal_(0.0, std)


class PromptBuilder(nn.Module):
    """Prompt embeddings for a fixed list of names with ``n_ctx`` context slots.

    Args:
        names: task or class names; ``_`` becomes a space (docs/method.md#prompts-and-the-text-encoder).
        n_ctx: number of context vectors; 0 gives the plain ``<name> .`` prompt.
        token_embedding: CLIP's token embedding (frozen).
        position: where the name goes relative to the context: ``end`` (after
            it), ``middle`` (between its first ``n_ctx // 2`` vectors and the
            rest) or ``front`` (before it). CoOp's CLASS_TOKEN_POSITION.
    """

    def __init__(self, names: Sequence[str], n_ctx: int, token_embedding: nn.Embedding,
                 position: str = "end", key: str = "N_CTX") -> None:
        super().__init__()
        if position not in POSITIONS:
            raise ValueError(f"class-token position must be one of {POSITIONS}, got {position!r}")
        names = [n.replace("_", " ") for n in names]
        slots = " ".join(["X"] * n_ctx)
        texts = [f"{slots} {n}." if n_ctx else f"{n}." for n in names]
        if n_ctx:
            check_prompt_length(texts, names, n_ctx, key)
        tokens = tokenize(texts)  # (N, L)
        with torch.no_grad():
            embedding = token_embedding(tokens.to(token_embedding.weight.device))  # (N, L, width)
        self.n_ctx = n_ctx
        self.position = position
        # Frozen and derivable from CLIP: kept out of checkpoints.
        self.register_buffer("embedding", embedding, persistent=False)
        self.register_buffer("eot", tokens.argmax(dim=-1), persistent=False)  # (N,)
        order = None
        if position != "end" and n_ctx > 0:
            order = torch.stack([_order(n_ctx, num_tokens(n), tokens.shape[1], position) for n in names])
        self.register_buffer("order", order, persistent=False)  # (N, L) or None

    def __len__(self) -> int:
        return self.embedding.shape[0]

    def forward(self, ctx: Optional[torch.Tensor] = None,
                rows: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts for the selected names.

        Args:
            ctx: ``(n_ctx, width)`` shared by every row, or ``(R, n_ctx, width)``
                one per selected row. Ignored when ``n_ctx`` is 0.
            rows: indices of the names to build (default: all, in order).

        Returns:
            prompt embeddings ``(R, L, width)`` and EOS positions ``(R,)``.
        """
        emb = self.embedding if rows is None else self.embedding[rows]
        eot = self.eot if rows is None else self.eot[rows]
        if self.n_ctx == 0:
            return emb, eot
        if ctx.dim() == 2:
            ctx = ctx.expand(emb.shape[0], -1, -1)
        prefix, suffix = emb[:, :1], emb[:, 1 + self.n_ctx:]  # [SOS] | <name> . [EOS] ...
        x = torch.cat([prefix, ctx.to(emb.dtype), suffix], dim=1)  # (R, L, width), name at end
        if self.order is not None:  # move the name to the front or the middle
            order = self.order if rows is None else self.order[rows]
            x = x.gather(1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return x, eot

    def encode(self, encoder: nn.Module, ctx: Optional[torch.Tensor] = None,
               rows: Optional[torch.Tensor] = None,
               groups: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Text features ``(R, D)`` of the selected names' prompts through ``encoder``.

        Args:
            ctx: as in ``forward``, or ``(G, n_ctx, width)`` with ``groups``.
            rows: indices of the names to encode (default: all, in order).
            groups: which of ctx's ``G`` contexts every selected row uses ``(R,)``.

        Rows that share a context share the prefix ``[SOS] ctx``: with the class
        name at the end, the encoder computes it once per context
        (``TextEncoder.encode_prefixed``); a context per row, no context or
        another name position take the plain path.
        """
        shared = ctx is not None and (ctx.dim() == 2 or groups is not None)
        if not (shared and self.n_ctx and self.order is None and hasattr(encoder, "encode_prefixed")):
            if groups is not None:
                ctx = ctx[groups]
            return encoder(*self(ctx, rows))
        emb = self.embedding if rows is None else self.embedding[rows]
        eot = self.eot if rows is None else self.eot[rows]
        if ctx.dim() == 2:
            ctx, groups = ctx[None], torch.zeros(len(emb), dtype=torch.long, device=emb.device)
        sos = emb[:1, :1].expand(len(ctx), -1, -1)  # the same [SOS] embedding in every row
        prefix = torch.cat([sos, ctx.to(emb.dtype)], dim=1)  # (G, 1 + n_ctx, width)
        return encoder.encode_prefixed(prefix, groups, emb[:, 1 + self.n_ctx:], eot)


def _order(n_ctx: int, name_len: int, length: int, position: str) -> torch.Tensor:
    """Source index of every output token, reading from the ``end`` layout.

    ``end`` layout: [SOS] ctx(1..n) name(n+1..n+l) rest(n+l+1..).
    """
    head = n_ctx // 2 if position == "middle" else 0
    ctx = list(range(1, 1 + n_ctx))
    name = list(range(1 + n_ctx, 1 + n_ctx + name_len))
    rest = list(range(1 + n_ctx + name_len, length))
    return torch.tensor([0] + ctx[:head] + name + ctx[head:] + rest)
