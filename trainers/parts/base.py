"""What every prompt-tuning trainer shares: the frozen CLIP around a learnable
text head, and the multi-task training step.

A trainer subclasses ``MultiTaskPromptTrainer``, names its config node
(``TRAINER_KEY``) and builds a ``PromptHead``: the module that turns context
into class text features. Built and run here: precision, PARAM_DTYPE, the
optimizer and Dassl-style schedule, STEPS_PER_BATCH, the speed-up switches and
the loss. The hooks Dassl's loop calls for the rest are thin: ``test()`` runs
trainers/parts/evaluation.py (the test loop on cached image features, results.json);
``save_model()``, ``resume_model_if_exist()`` and ``load_model()`` run
trainers/run/checkpoint.py, which trainers/run/checkpoint_identity.py guards (trainer,
backbone fingerprint, head shapes).
"""
from __future__ import annotations

import logging
import os.path as osp
import time
from typing import Optional

import torch
import torch.nn.functional as F
from dassl.engine import TrainerX
from dassl.evaluation import build_evaluator
from dassl.optim import build_optimizer
from torch import nn

from config import ConfigError, resolve_cfg
from config.run_settings import effective_config
from datasets.task_info import TaskInfo, task_info_of
from trainers.parts import evaluation
from trainers.parts.backbone import check_backbone, load_clip, resolve_precision
from trainers.parts.losses import multitask_loss, own_task_prediction, training_columns
from trainers.parts.text_encoder import TextEncoder
from trainers.run import checkpoint as ckpt_io
from trainers.run import checkpoint_identity as identity
from trainers.run import stops
from trainers.run.checkpoint import HEAD_NAME, CheckpointError  # noqa: F401 (HEAD_NAME: for trainers)
from trainers.run.schedule import build_lr_scheduler

logger = logging.getLogger(__name__)


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
    # The learned contexts (parameter names): stored in fp16 under PARAM_DTYPE fp16.
    # Meta networks are not listed: they stay fp32, as in the official code.
    context_keys: tuple[str, ...] = ()


def apply_param_dtype(head: PromptHead, param_dtype: str, key: str = "PARAM_DTYPE") -> list[str]:
    """Store ``head``'s learned contexts in ``param_dtype`` (``fp32`` or ``fp16``), in place,
    before the optimizer is built, so SGD and its momentum run in that dtype. Returns the
    names of the parameters cast (docs/method.md#differences-from-the-official-code)."""
    dtypes = {"fp32": torch.float32, "fp16": torch.float16}
    if param_dtype not in dtypes:
        raise ConfigError(f"{key} is {param_dtype!r}; allowed: {sorted(dtypes)} "
                          "(docs/method.md#differences-from-the-official-code).")
    params = dict(head.named_parameters())
    cast = [k for k in head.context_keys if k in params]
    for name in cast:
        params[name].data = params[name].data.to(dtypes[param_dtype])
    if param_dtype != "fp32" and not cast:
        logger.warning("PARAM_DTYPE %s: %s lists no context_keys, so every parameter stays fp32.",
                       param_dtype, type(head).__name__)
    return cast


class MultiTaskCLIP(nn.Module):
    """Frozen CLIP + a prompt head: logits over the classes of every task (docs/method.md#forward-pass)."""

    def __init__(self, clip_model: nn.Module, head: PromptHead, truncate_text: bool = True,
                 length_buckets: bool = True, shared_prefix: bool = True) -> None:
        super().__init__()
        self.image_encoder = clip_model.visual
        self.text_encoder = TextEncoder(clip_model, truncate_text, length_buckets, shared_prefix)
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
        return self.logits(self.encode_image(images), columns, text_features)

    def logits(self, u: torch.Tensor, columns: Optional[torch.Tensor] = None,
               text_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``forward`` from normalised image features u ``(B, D)`` (e.g. read from the cache)."""
        scale = self.logit_scale.exp().float()
        if self.head.conditional:
            h = self.text_features(columns, image_features=u)  # (B, C', D)
            return scale * torch.einsum("bd,bcd->bc", u, h)
        h = self.text_features(columns) if text_features is None else text_features
        return scale * u @ h.t()


def resumed_train_time(recorded: Optional[dict], now: Optional[dict]) -> Optional[dict]:
    """The training time a resumed run goes on from: the checkpoint's ``recorded`` one, its device
    joined with this attempt's (``now``) when they differ; None when the checkpoint records none."""
    if not isinstance(recorded, dict) or not isinstance(recorded.get("seconds"), (int, float)):
        return None
    device = recorded.get("device") or "unknown device"
    here = (now or {}).get("device")
    if here and here not in device.split(" + "):
        device = f"{device} + {here}"
    return {"seconds": float(recorded["seconds"]), "device": device}


class MultiTaskPromptTrainer(TrainerX):
    """Dassl trainer for prompt tuning over all tasks of a benchmark at once."""

    TRAINER_KEY = ""  # e.g. "SOFTCPT": the node cfg.TRAINER.<TRAINER_KEY>
    # Each image is scored within its own task (trainers/parts/single_task.py refuses, on a benchmark,
    # trainers without this).
    SCORES_WITHIN_TASKS = True

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        # SimpleTrainer builds its evaluator from lab2cname alone; ours needs the tasks.
        self.evaluator = build_evaluator(cfg, lab2cname=self.lab2cname, task_info=self.task_info)

    # ------------------------------------------------------------------ build
    def build_data_loader(self) -> None:
        """Dassl's loaders, their workers made to ignore the stop signals (trainers/run/stops.py)."""
        super().build_data_loader()
        for loader in (self.train_loader_x, self.train_loader_u, self.val_loader, self.test_loader):
            stops.quiet_workers(loader)

    @classmethod
    def check_inputs(cls, cfg) -> None:
        """What ``config.check_values`` cannot check without torch, checked by train.py before
        any data or model is built: the backbone's name (open_clip's list)."""
        backbone = cfg.MODEL.BACKBONE
        check_backbone(backbone.NAME, backbone.PRETRAINED_TAG, backbone.PRETRAINED)

    @classmethod
    def resolved_cfg(cls, cfg):
        """The config this trainer runs with (SoftCPT fills its variant's keys): what checkpoints
        and results.json record, and what a rerun is compared with: ``config.resolve_cfg``, whose
        resolvers are torch-free so that a sweep compares a finished run's settings cheaply."""
        return resolve_cfg(cfg)

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
        self.param_dtype = self.tcfg.get("PARAM_DTYPE", "fp32")
        cast = apply_param_dtype(head, self.param_dtype, f"TRAINER.{self.TRAINER_KEY}.PARAM_DTYPE")
        if cast and self.param_dtype != "fp32":
            logger.info("PARAM_DTYPE %s: %s stored and updated by SGD in %s", self.param_dtype,
                        ", ".join(cast), self.param_dtype)
        self.model = MultiTaskCLIP(clip_model, head, self.tcfg.TRUNCATE_TEXT, self.tcfg.LENGTH_BUCKETS,
                                   self.tcfg.SHARED_PREFIX).to(self.device)
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
        stops.check()  # between batches: a stop resumes from the last complete epoch
        images, labels, _ = self.parse_batch_train(batch)
        columns = self.training_columns(labels)
        targets = torch.searchsorted(columns, labels)  # position of each label among the columns
        with torch.autocast(self.device.type, enabled=self.precision == "amp"):
            logits, losses = self.batch_loss(images, labels, columns, targets)
        self.optimizer_steps(losses)
        pred = own_task_prediction(logits, self.task_of_class[labels], self.task_of_class[columns])
        acc = (pred == targets).float().mean()
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return {**{k: v.item() for k, v in losses.items()}, "acc": 100.0 * acc.item()}

    def batch_loss(self, images: torch.Tensor, labels: torch.Tensor, columns: torch.Tensor,
                   targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits ``(B, C')`` over ``columns`` and the losses of one training batch (under
        autocast with amp), each logged: ``loss``, the multi-task loss (docs/method.md#loss),
        is what ``optimizer_steps`` minimises. ``targets`` are the labels' positions among
        ``columns``. A trainer with a loss of its own overrides this (trainers/kgcoop.py)."""
        logits = self.model(images, columns)
        loss = multitask_loss(logits, targets, self.task_of_class[labels], self.task_of_class[columns])
        return logits, {"loss": loss}

    def optimizer_steps(self, losses: dict[str, torch.Tensor]) -> None:
        """Backward ``losses["loss"]`` once, then the optimizer steps on that gradient
        (``step_optimizer``). A trainer that combines gradients itself overrides this
        (trainers/prograd.py)."""
        loss = losses["loss"]
        self.optim.zero_grad()
        if self.scaler is None:
            self.model_backward(loss)
        else:
            self.detect_anomaly(loss)
            self.scaler.scale(loss).backward()
        self.step_optimizer()

    def step_optimizer(self) -> None:
        """STEPS_PER_BATCH optimizer steps on the gradients in ``.grad`` (fp32, fp16).

        With amp (a GradScaler in ``self.scaler``, the gradients scaled by it): one scaled
        step per batch whatever STEPS_PER_BATCH, as the official code, whose scaler steps the
        optimizer once; the schedule still takes STEPS_PER_BATCH steps per epoch (``update_lr``).
        """
        if self.scaler is None:
            for _ in range(self.tcfg.STEPS_PER_BATCH):
                self.optim.step()
            return
        self.scaler.step(self.optim)  # unscales the gradient, skips the step if it is not finite
        self.scaler.update()

    def update_lr(self, names=None) -> None:
        """The scheduler follows the optimizer: STEPS_PER_BATCH steps per epoch."""
        for _ in range(self.tcfg.STEPS_PER_BATCH):
            super().update_lr(names)

    # ------------------------------------------------------------------- test
    # The loop, the feature source and results.json: trainers/parts/evaluation.py.
    def feature_logits(self, u: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Evaluation logits ``(B, C)`` from normalised image features u ``(B, D)``.

        ``labels`` are for heads that encode only each image's own task (CoCoOp).
        """
        return self.model.logits(u, text_features=self._eval_text)

    def model_inference(self, images: torch.Tensor) -> torch.Tensor:
        return self.feature_logits(self.model.encode_image(images), None)

    @torch.no_grad()
    def test(self, split: Optional[str] = None) -> float:
        split = split or self.cfg.TEST.SPLIT
        if split == "val" and self.val_loader is None:
            split = "test"
        self.set_model_mode("eval")
        self._eval_text = self.eval_text_features()
        try:
            result = self.evaluate(split)
        finally:
            self._eval_text = None
        self.write_results(split)
        return result

    def eval_text_features(self) -> Optional[torch.Tensor]:
        """The class text features one evaluation reuses for every batch (None: each batch's own)."""
        return evaluation.class_text_features(self.model, self.tcfg.CACHE_EVAL_TEXT)

    @torch.no_grad()
    def evaluate(self, split: str) -> float:
        """Dassl's test loop on image features (read from the cache when stored)."""
        own = type(self)
        if (own.model_inference is not MultiTaskPromptTrainer.model_inference
                and own.feature_logits is MultiTaskPromptTrainer.feature_logits):
            logger.warning("%s overrides model_inference but not feature_logits: evaluating from "
                           "images, without the image-feature cache (docs/speed.md#image-feature-cache).", own.__name__)
            return TrainerX.test(self, split)
        loader = self.val_loader if split == "val" else self.test_loader
        results = evaluation.evaluate_split(self.evaluator, loader, split, self.split_features,
                                            self.feature_logits, self.device)
        for k, v in results.items():
            self.write_scalar(f"{split}/{k}", v, self.epoch)
        return list(results.values())[0]

    @torch.no_grad()
    def split_features(self, loader, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised features ``(N, D)`` and labels ``(N,)`` of a loader's images, in order
        (``evaluation.split_features``: through the image-feature cache when it can)."""
        precision = getattr(self, "precision", str(self.model.dtype))  # a build_model of one's own
        return evaluation.split_features(self.model, loader, split, self.cfg, self.device, precision)

    def write_results(self, split: str) -> None:
        """results.json (test split) or results_val.json: the evaluator's report, unrounded."""
        if not self.cfg.OUTPUT_DIR:
            return
        report = evaluation.results_report(
            self.cfg, getattr(self.evaluator, "report", {}), split, self.epoch,
            getattr(self, "resumed_from_epoch", None), effective_config(self.cfg),
            self.training_setting(),
            evaluation.run_costs(getattr(self, "_optims", {}).values(), getattr(self, "train_time", None)))
        evaluation.write_results(self.cfg.OUTPUT_DIR, split, report)

    def training_setting(self) -> dict:
        """What results.json records of the precision and steps (``evaluation.training_setting``)."""
        return evaluation.training_setting(self.tcfg, getattr(self, "precision", None))

    # ------------------------------------------------------------ training time
    # results.json's train_seconds (scripts/results.py's ``train min``): the wall time of the
    # training epochs (Dassl's run_epoch: data, forward, backward, steps), not model building,
    # validation, checkpoints or the final evaluation; summed over the attempts of a resumed
    # run through the checkpoints (``train_time`` None: unknown, e.g. resumed from an older one).
    def before_train(self) -> None:
        self.train_time = {"seconds": 0.0, "device": evaluation.device_name(self.device)}
        super().before_train()  # resumes: the checkpoint's train_time replaces this one

    def run_epoch(self) -> None:
        start = time.perf_counter()
        super().run_epoch()
        if getattr(self, "train_time", None) is not None:
            self.train_time["seconds"] += time.perf_counter() - start

    # ------------------------------------------------------------ checkpoints
    # Files, save, resume and load: trainers/run/checkpoint.py; the identity check:
    # trainers/run/checkpoint_identity.py. These are the hooks Dassl's loop calls.
    def after_epoch(self) -> None:
        """Dassl's, except that every epoch is saved: a run stopped at any point resumes from its
        last complete epoch. TRAIN.CHECKPOINT_FREQ decides which epochs stay as snapshots."""
        cfg = self.cfg
        if not cfg.TEST.NO_TEST and cfg.TEST.FINAL_MODEL == "best_val":
            result = self.test(split="val")
            if result > self.best_result:
                self.best_result = result
                self.save_model(self.epoch, self.output_dir, val_result=result,
                                model_name=ckpt_io.BEST)
        self.save_model(self.epoch, self.output_dir)
        for name in self.get_model_names():  # the previous epoch goes once this one is whole
            ckpt_io.prune_resume_points(osp.join(self.output_dir, name), self.epoch + 1,
                                        cfg.TRAIN.CHECKPOINT_FREQ, self.max_epoch)
        stops.check()  # this epoch is saved: a stop resumes after it

    def backbone_identity(self) -> dict:
        """The frozen CLIP a checkpoint was trained on: its name and a fingerprint of its weights
        file, the same in every precision (hashed once: the backbone never changes, and every
        epoch's checkpoint records it)."""
        if getattr(self, "_backbone_identity", None) is None:
            cfg = getattr(self, "cfg", None)
            backbone = cfg.MODEL.BACKBONE if cfg is not None else None
            self._backbone_identity = identity.backbone_identity(self.model, backbone)
        return self._backbone_identity

    def checkpoint_identity(self) -> dict:
        """Who saved a checkpoint: the trainer and (SoftCPT) its variant, checked on load."""
        cfg = getattr(self, "cfg", None)
        if cfg is None:  # a bare trainer built without a config (tests)
            return {"trainer": type(self).__name__, "variant": None}
        return {"trainer": cfg.TRAINER.NAME, "variant": self.tcfg.get("VARIANT", None)}

    def save_model(self, epoch: int, directory: str, is_best: bool = False,
                   val_result: Optional[float] = None, model_name: str = "") -> None:
        """What was learned, the classes and tasks it was learned on, who learned it, and
        everything that decides the next epoch (optimizer, schedule, random states)."""
        cfg = getattr(self, "cfg", None)
        record = ckpt_io.run_record(
            epoch, val_result, self.task_info.keys, self.task_info.all_classnames,
            self.checkpoint_identity(), self.backbone_identity(),
            effective_config(cfg) if cfg else None, getattr(self, "scaler", None),
            getattr(self, "best_result", float("-inf")), getattr(self, "train_time", None))
        ckpt_io.save(directory, record, self._models, self._optims, self._scheds, model_name, is_best)

    def resume_model_if_exist(self, directory: str) -> int:
        """Continue from the newest checkpoint that loads (Dassl's version trusts the pointer).

        Damaged files are skipped with a warning naming them; the random states
        are restored, so the run goes on exactly as it would have uninterrupted.
        """
        found = ckpt_io.resume(directory, self._models, self._optims, self._scheds, self.device,
                               lambda ckpt, path: self._check_compatible(ckpt, path, resuming=True))
        if found is None:
            return 0
        start, ckpt = found
        best = ckpt_io.restore_run_state(ckpt, getattr(self, "scaler", None))
        if best is not None:
            self.best_result = best
        self.train_time = resumed_train_time(ckpt.get("train_time"), getattr(self, "train_time", None))
        self.epoch = start - 1  # what results.json reports if no epoch is left to run
        self.resumed_from_epoch = start
        return start

    def load_model(self, directory: str, epoch: Optional[int] = None) -> None:
        """Load learned parameters from ``<directory>/prompt_learner``.

        Without ``epoch``: ``model-best.pth.tar`` if present, else the newest
        checkpoint. Parts that do not depend on the classes load into any
        benchmark; per-class (per-task) parts need the same classes (tasks).
        """
        loaded = ckpt_io.load(directory, self._models, self.device, epoch, self._check_compatible)
        if loaded is not None:
            self.epoch = loaded - 1

    def _check_compatible(self, ckpt: dict, path: str, resuming: bool = False) -> None:
        cfg = getattr(self, "cfg", None)
        legacy = (lambda: identity.legacy_weights(cfg.MODEL.BACKBONE)) if cfg is not None else None
        identity.check_compatible(ckpt, path, self.checkpoint_identity(), self.backbone_identity,
                                  self.model.head, self.task_info, resuming, legacy)
