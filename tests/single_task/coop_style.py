"""A single-task trainer written the way CoOp-family repositories write theirs, for the tests.

It stands in for CoOp's own ``trainers/coop.py``, KgCoOp's ``kgcoop.py`` and the like (the
project copies none of them): its own prompt learner, text encoder and CLIP wrapper, logits
over every class of ``self.dm.dataset.classnames`` (one softmax), Dassl's ``build_optimizer``
and ``build_lr_scheduler`` (with the warm-up scheduler, as CoOp's configs), ``register_model``,
and ``load_model`` as CoOp writes it. Nothing of this project's shared parts except the
weights loader (``load_clip``, as CoOp's ``load_clip_to_cpu``) and the tokenizer.
Registered as ``SingleTaskCoOp`` on import (``train.py --import tests.single_task.coop_style``).
"""
from __future__ import annotations

import os.path as osp

import torch
import torch.nn as nn
import torch.nn.functional as F
from dassl.engine import TRAINER_REGISTRY, TrainerX
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import load_checkpoint
from yacs.config import CfgNode as CN

from config import register_config_hook
from trainers.parts.backbone import load_clip
from trainers.parts.prompt import tokenize


@register_config_hook
def add_config(cfg):
    cfg.TRAINER.STCOOP = CN()
    cfg.TRAINER.STCOOP.N_CTX = 4


class TextEncoder(nn.Module):
    def __init__(self, clip_model):
        super().__init__()
        self.transformer = clip_model.transformer
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.attn_mask = clip_model.attn_mask

    def forward(self, prompts, tokenized_prompts):
        x = prompts + self.positional_embedding
        x = self.transformer(x, attn_mask=self.attn_mask)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0]), tokenized_prompts.argmax(dim=-1)] @ self.text_projection
        return x


class PromptLearner(nn.Module):
    def __init__(self, cfg, classnames, clip_model):
        super().__init__()
        n_ctx = cfg.TRAINER.STCOOP.N_CTX
        width = clip_model.ln_final.weight.shape[0]
        self.ctx = nn.Parameter(torch.randn(n_ctx, width) * 0.02)
        prompts = [" ".join(["X"] * n_ctx) + " " + name + "." for name in classnames]
        tokenized = tokenize(prompts)
        with torch.no_grad():
            embedding = clip_model.token_embedding(tokenized)
        self.register_buffer("token_prefix", embedding[:, :1, :])
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx:, :])
        self.tokenized_prompts = tokenized
        self.n_cls = len(classnames)

    def forward(self):
        ctx = self.ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)


class CustomCLIP(nn.Module):
    def __init__(self, cfg, classnames, clip_model):
        super().__init__()
        self.prompt_learner = PromptLearner(cfg, classnames, clip_model)
        self.image_encoder = clip_model.visual
        self.text_encoder = TextEncoder(clip_model)
        self.logit_scale = clip_model.logit_scale

    def forward(self, image):
        image_features = F.normalize(self.image_encoder(image), dim=-1)
        text_features = self.text_encoder(self.prompt_learner(), self.prompt_learner.tokenized_prompts)
        text_features = F.normalize(text_features, dim=-1)
        return self.logit_scale.exp() * image_features @ text_features.t()


@TRAINER_REGISTRY.register()
class SingleTaskCoOp(TrainerX):
    def build_model(self):
        cfg = self.cfg
        classnames = self.dm.dataset.classnames
        clip_model = load_clip(cfg.MODEL.BACKBONE.NAME)
        self.model = CustomCLIP(cfg, classnames, clip_model)
        for name, param in self.model.named_parameters():
            if "prompt_learner" not in name:
                param.requires_grad_(False)
        self.model.to(self.device)
        self.optim = build_optimizer(self.model.prompt_learner, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model("prompt_learner", self.model.prompt_learner, self.optim, self.sched)

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)
        output = self.model(image)
        loss = F.cross_entropy(output, label)
        self.model_backward_and_update(loss)
        summary = {"loss": loss.item(), "acc": (output.argmax(1) == label).float().mean().item() * 100}
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return summary

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def load_model(self, directory, epoch=None):
        name = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
        for key in self.get_model_names():
            path = osp.join(directory, key, name)
            state_dict = load_checkpoint(path)["state_dict"]
            for drop in ("token_prefix", "token_suffix"):
                state_dict.pop(drop, None)
            self._models[key].load_state_dict(state_dict, strict=False)
