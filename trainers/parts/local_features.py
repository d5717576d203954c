"""Local image features of CLIP's image tower: one feature per image region, in the
joint embedding space, beside the usual global one (docs/plot.md#local-image-features).

``local_features(visual, images)`` returns ``(B, 1 + M, D)``, not normalised: output 0
is the tower's usual image feature (what ``visual(images)`` gives), outputs 1..M the
features of the M regions.

* ResNet towers (open_clip's ``ModifiedResNet``): CLIP's attention pool is run with
  every token as a query, the mean token and the H x W grid tokens, each with its
  positional embedding. The mean token's output is CLIP's image feature; the grid
  tokens' outputs are the M = H x W local features (49 for RN50 at 224 px). This is
  the same attention call as CLIP's, whose other outputs CLIP throws away.
* ViT towers (open_clip's ``VisionTransformer``): the patch tokens after the final
  layer norm ``ln_post`` and the projection ``proj``, as the class token is made into
  the image feature (M = 196 for ViT-B/16 at 224 px).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from torch import nn


def local_features(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``(B, 1 + M, D)``: the image feature, then the M local features (not normalised).

    ``images`` must already be in the tower's dtype. Raises ValueError for a tower whose
    local features this module does not know how to read.
    """
    if isinstance(visual, ModifiedResNet):
        return _resnet_local(visual, images)
    if isinstance(visual, VisionTransformer):
        return _vit_local(visual, images)
    raise ValueError(f"local image features: {type(visual).__name__} is neither open_clip's "
                     "ModifiedResNet nor its VisionTransformer (docs/plot.md#local-image-features).")


def _resnet_local(visual: ModifiedResNet, images: torch.Tensor) -> torch.Tensor:
    x = visual.stem(images)
    x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))  # (B, C, H, W)
    pool = visual.attnpool
    x = x.flatten(2).permute(2, 0, 1)  # (HW, B, C)
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)  # (1 + HW, B, C): mean token first
    x = x + pool.positional_embedding[:, None, :].to(x.dtype)
    # CLIP's own attention call (AttentionPool2d.forward), keeping every query's output
    out, _ = F.multi_head_attention_forward(
        query=x, key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight,
        v_proj_weight=pool.v_proj.weight, in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
        out_proj_weight=pool.c_proj.weight, out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True, training=pool.training, need_weights=False)
    return out.permute(1, 0, 2)  # (B, 1 + HW, D)


def _vit_local(visual: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    if visual.attn_pool is not None or visual.pool_type not in ("tok", "avg"):
        raise ValueError("local image features: a VisionTransformer pooled by "
                         f"{'attention' if visual.attn_pool is not None else visual.pool_type!r} "
                         "has no patch tokens to read; CLIP's class-token ('tok') and average "
                         "('avg') pooling are supported (docs/plot.md#local-image-features).")
    x = visual.transformer(visual._embeds(images))  # (B, 1 + M, width)
    pooled, tokens = visual._pool(x)  # the tower's own pooling: output 0 is its image feature
    if visual.final_ln_after_pool:  # the patch tokens get the final norm as the pooled one did
        tokens = visual.ln_post(tokens)
    if visual.proj is not None:
        pooled, tokens = pooled @ visual.proj, tokens @ visual.proj
    return torch.cat([pooled[:, None], tokens], dim=1)
