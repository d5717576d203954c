"""What every prompt-tuning trainer shares: the frozen CLIP around a learnable
text head, the multi-task training step, evaluation and learned-only checkpoints.

A trainer subclasses ``MultiTaskPromptTrainer``, names its config node
(``TRAINER_KEY``) and builds a ``PromptHead``: the module that turns context
into class text features. Everything else (precision, optimizer and Dassl-style
schedule, STEPS_PER_BATCH, the speed-up switches, results.json) lives here.
"""
from __future__ import annotations

import json
import logging
import os.path as osp
from typing import Optional

import torch
import torch.nn.functional as F
from dassl.engine import TrainerX
from dassl.evaluation import build_evaluator
from dassl.optim import build_optimizer
from dassl.utils import save_checkpoint
from torch import nn

from datasets.task_info import TaskInfo, task_info_of
from trainers.backbone import load_clip, resolve_precision
from trainers.losses import multitask_loss, own_task_prediction, training_columns
from trainers.schedule import build_lr_scheduler
from trainers.text_encoder import TextEncoder

logger = logging.getLogger(__name__)
HEAD_NAME = "prompt_learner"  # folder of the checkpoints, as in CoOp


class PromptHead(nn.Module):
    """The learnable part of a prompt-tuning model.

    ``forward(encoder, columns, image_features=None)`` returns the (not yet
    normalised) text features of the global classes ``columns`` (all when
    None): ``(C', D)``, or ``(B, C', D)`` when ``conditional`` (the features
    depend on each image, as in CoCoOp).
    """

    conditional: bool = False
    # State-dict keys that only make sense for the classes / tasks they were
    # trained on: loading them elsewhere fails with a clear message.
    per_class_keys: tuple[str, ...] = ()
    per_task_keys: tuple[str, ...] = ()


class MultiTaskCLIP(nn.Module):
    """Frozen CLIP + a prompt head: logits over the classes of every task (docs/method.md#forward-pass, step 5)."""

    def __init__(self, clip_model: nn.Module, head: PromptHead, truncate_text: bool = True) -> None:
        super().__init__()
        self.image_encoder = clip_model.visual
        self.text_encoder = TextEncoder(clip_model, truncate=truncate_text)
        self.logit_scale = clip_model.logit_scale
        self.head = head

    @property
    def dtype(self) -> torch.dtype:
        return self.text_encoder.dtype

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image features u ``(B, D)``."""
        return F.normalize(self.image_encoder(images.to(self.dtype)).float(), dim=-1)

    def text_features(self, columns: Optional[torch.Tensor] = None,
                      image_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Normalised class features h ``(C', D)`` (``(B, C', D)`` for conditional heads)."""
        feats = self.head(self.text_encoder, columns, image_features=image_features)
        return F.normalize(feats.float(), dim=-1)

    def forward(self, images: torch.Tensor, columns: Optional[torch.Tensor] = None,
                text_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """logit = exp(logit_scale) * cos(u, h): ``(B, C')``."""
        u = self.encode_image(images)
        scale = self.logit_scale.exp().float()
        if self.head.conditional:
            h = self.text_features(columns, image_features=u)  # (B, C', D)
            return scale * torch.einsum("bd,bcd->bc", u, h)
        h = self.text_features(columns) if text_features is None else text_features
        return scale * u @ h.t()


class MultiTaskPromptTrainer(TrainerX):
    """Dassl trainer for prompt tuning over all tasks of a benchmark at once."""

    TRAINER_KEY = ""  # e.g. "SOFTCPT": the node cfg.TRAINER.<TRAINER_KEY>

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        # SimpleTrainer builds its evaluator from lab2cname alone; ours needs the tasks.
        self.evaluator = build_evaluator(cfg, lab2cname=self.lab2cname, task_info=self.task_info)

    # ------------------------------------------------------------------ build
    @property
    def tcfg(self):
        return self.cfg.TRAINER[self.TRAINER_KEY]

    def build_head(self, clip_model: nn.Module, task_info: TaskInfo) -> PromptHead:
        raise NotImplementedError

    def build_model(self) -> None:
        cfg = self.cfg
        self.task_info = task_info_of(self.dm.dataset, cfg.DATASET.NAME)
        self.precision = resolve_precision(self.tcfg.PREC, self.device)
        backbone = cfg.MODEL.BACKBONE
        logger.info("Loading CLIP (backbone: %s)", backbone.NAME)
        clip_model = load_clip(backbone.NAME, backbone.PRETRAINED_TAG, self.precision, self.device,
                               pretrained=backbone.PRETRAINED)
        head = self.build_head(clip_model, self.task_info).to(self.device)
        self.model = MultiTaskCLIP(clip_model, head, self.tcfg.TRUNCATE_TEXT).to(self.device)
        self.task_of_class = torch.tensor(self.task_info.task_of_class, device=self.device)
        learnable = [p for p in head.parameters() if p.requires_grad]
        logger.info("Learnable parameters: %s", f"{sum(p.numel() for p in learnable):,}")
        self.optim = build_optimizer(head, cfg.OPTIM) if learnable else None
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM) if learnable else None
        self.register_model(HEAD_NAME, head, self.optim, self.sched)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "amp" else None
        self._eval_text: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------ train
    def training_columns(self, labels: torch.Tensor) -> torch.Tensor:
        """Global classes whose features this batch needs (docs/method.md#loss)."""
        rate = self.tcfg.get("CLS_SAMPLE_RATE", 0.0)
        return training_columns(labels, self.task_of_class, self.tcfg.SKIP_ABSENT_TASKS, rate)

    def forward_backward(self, batch: dict) -> dict:
        images, labels, _ = self.parse_batch_train(batch)
        columns = self.training_columns(labels)
        targets = torch.searchsorted(columns, labels)  # position of each label among the columns
        with torch.autocast(self.device.type, enabled=self.precision == "amp"):
            logits = self.model(images, columns)
            loss = multitask_loss(logits, targets, self.task_of_class[labels],
                                  self.task_of_class[columns])
        self.optimizer_steps(loss)
        pred = own_task_prediction(logits, self.task_of_class[labels], self.task_of_class[columns])
        acc = (pred == targets).float().mean()
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return {"loss": loss.item(), "acc": 100.0 * acc.item()}

    def optimizer_steps(self, loss: torch.Tensor) -> None:
        """Backward once, then STEPS_PER_BATCH optimizer steps on that gradient."""
        steps = self.tcfg.STEPS_PER_BATCH
        self.optim.zero_grad()
        if self.scaler is None:
            self.model_backward(loss)
            for _ in range(steps):
                self.optim.step()
            return
        self.detect_anomaly(loss)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optim)  # unscales the gradient in place, skips it if not finite
        grads = [p.grad for g in self.optim.param_groups for p in g["params"] if p.grad is not None]
        if all(torch.isfinite(g).all() for g in grads):
            for _ in range(steps - 1):
                self.optim.step()
        self.scaler.update()

    def update_lr(self, names=None) -> None:
        """The scheduler follows the optimizer: STEPS_PER_BATCH steps per epoch."""
        for _ in range(self.tcfg.STEPS_PER_BATCH):
            super().update_lr(names)

    # ------------------------------------------------------------------- test
    def model_inference(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images, text_features=self._eval_text)

    @torch.no_grad()
    def test(self, split: Optional[str] = None) -> float:
        split = split or self.cfg.TEST.SPLIT
        if split == "val" and self.val_loader is None:
            split = "test"
        self.set_model_mode("eval")
        if self.tcfg.CACHE_EVAL_TEXT and not self.model.head.conditional:
            self._eval_text = self.model.text_features()  # once per evaluation, not per batch
        try:
            result = super().test(split)
        finally:
            self._eval_text = None
        self.write_results(split)
        return result

    def write_results(self, split: str) -> None:
        """results.json (test split) or results_val.json: the evaluator's report, unrounded."""
        if not self.cfg.OUTPUT_DIR:
            return
        cfg = self.cfg
        report = dict(getattr(self.evaluator, "report", {}))
        report.update(trainer=cfg.TRAINER.NAME, dataset=cfg.DATASET.NAME, config=cfg.CONFIG_NAME,
                      backbone=cfg.MODEL.BACKBONE.NAME, shots=cfg.DATASET.NUM_SHOTS, seed=cfg.SEED,
                      split=split, epoch=self.epoch + 1 if self.epoch >= 0 else None,
                      subsample_classes=cfg.DATASET.get("SUBSAMPLE_CLASSES", "all"))
        name = "results.json" if split == "test" else f"results_{split}.json"
        with open(osp.join(cfg.OUTPUT_DIR, name), "w") as f:
            json.dump(report, f, indent=2)

    # ------------------------------------------------------------ checkpoints
    def save_model(self, epoch: int, directory: str, is_best: bool = False,
                   val_result: Optional[float] = None, model_name: str = "") -> None:
        """Only what was learned, plus the classes and tasks it was learned on."""
        for name in self.get_model_names():
            optim, sched = self._optims[name], self._scheds[name]
            save_checkpoint({
                "state_dict": self._models[name].state_dict(),
                "epoch": epoch + 1,
                "optimizer": optim.state_dict() if optim else None,
                "scheduler": sched.state_dict() if sched else None,
                "val_result": val_result,
                "task_keys": list(self.task_info.keys),
                "classnames": self.task_info.all_classnames,
            }, osp.join(directory, name), is_best=is_best, model_name=model_name)

    def load_model(self, directory: str, epoch: Optional[int] = None) -> None:
        """Load learned parameters from ``<directory>/prompt_learner``.

        Without ``epoch``: ``model-best.pth.tar`` if present, else the newest
        checkpoint. Parts that do not depend on the classes load into any
        benchmark; per-class (per-task) parts need the same classes (tasks).
        """
        if not directory:
            logger.warning("No --model-dir given: evaluating the model as initialised.")
            return
        for name in self.get_model_names():
            path = _checkpoint_path(osp.join(directory, name), epoch)
            ckpt = torch.load(path, map_location=self.device, weights_only=True)
            self._check_compatible(ckpt, path)
            self._models[name].load_state_dict(ckpt["state_dict"])
            self.epoch = ckpt["epoch"] - 1
            logger.info("Loaded %s (epoch %d)", path, ckpt["epoch"])

    def _check_compatible(self, ckpt: dict, path: str) -> None:
        head = self.model.head
        own = head.state_dict()
        same_classes = ckpt.get("classnames") == self.task_info.all_classnames
        same_tasks = ckpt.get("task_keys") == list(self.task_info.keys)
        for key, value in ckpt["state_dict"].items():
            if key not in own:
                raise KeyError(f"{path}: parameter {key!r} does not exist in {type(head).__name__} "
                               f"(it has {sorted(own)}): was it saved by another trainer or config?")
            if key in head.per_class_keys and not same_classes:
                raise ValueError(f"{path}: {key!r} holds one context per class and was trained on "
                                 "other classes than this benchmark's; per-class contexts cannot be "
                                 "transferred (use a class-agnostic variant).")
            if key in head.per_task_keys and not same_tasks:
                raise ValueError(f"{path}: {key!r} holds one context per task and was trained on "
                                 f"tasks {ckpt.get('task_keys')}, not {list(self.task_info.keys)}.")
            if value.shape != own[key].shape:
                raise ValueError(f"{path}: {key!r} has shape {tuple(value.shape)}, this model needs "
                                 f"{tuple(own[key].shape)}: check N_CTX and the backbone.")


def _checkpoint_path(folder: str, epoch: Optional[int]) -> str:
    if epoch is not None:
        path = osp.join(folder, f"model.pth.tar-{epoch}")
    elif osp.exists(osp.join(folder, "model-best.pth.tar")):
        path = osp.join(folder, "model-best.pth.tar")
    elif osp.exists(osp.join(folder, "checkpoint")):  # Dassl's pointer to the newest file
        with open(osp.join(folder, "checkpoint")) as f:
            path = osp.join(folder, f.read().strip())
    else:
        path = osp.join(folder, "model-best.pth.tar")
    if not osp.exists(path):
        raise FileNotFoundError(f"No checkpoint at {path}: check --model-dir and --load-epoch.")
    return path
