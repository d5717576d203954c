"""CLIP's text tower fed with token embeddings instead of token ids.

docs/method.md#prompts-and-the-text-encoder: add the positional embedding, run the causal transformer, apply the final
layer norm, read the output at the EOS position and project it. Because the
mask is causal and only the EOS output is read, tokens after the last EOS of the
batch cannot change the result: cutting them off is exact and saves most of the
cost (77 tokens down to ~25 for class names).
"""
from __future__ import annotations

import torch
from torch import nn


class TextEncoder(nn.Module):
    """Encode prompt embeddings ``(N, L, width)`` into text features ``(N, D)``.

    Args:
        clip_model: an open_clip CLIP (or CustomTextCLIP) model; its modules are
            shared, not copied, and stay frozen.
        truncate: cut every row after the longest EOS of the batch (exact).
    """

    def __init__(self, clip_model: nn.Module, truncate: bool = True) -> None:
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

    @property
    def dtype(self) -> torch.dtype:
        return self.positional_embedding.dtype

    def forward(self, prompts: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """Text features, not normalised.

        Args:
            prompts: token embeddings ``(N, L, width)``.
            eot: EOS position of every row ``(N,)``.
        """
        if self.truncate:
            length = int(eot.max()) + 1  # positions after this are never attended
            prompts = prompts[:, :length]
        length = prompts.shape[1]
        x = prompts.to(self.dtype) + self.positional_embedding[:length]
        x = self.transformer(x, attn_mask=self.attn_mask[:length, :length])  # (N, L', width)
        # ln_final works per token, so pooling first is exact and cheaper.
        x = self.ln_final(x[torch.arange(x.shape[0], device=x.device), eot])  # (N, width)
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection  # (N, D)
