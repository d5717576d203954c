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
from torch import nn
from tqdm import tqdm

from config import ConfigError
from config.run_settings import effective_config
from datasets.task_info import TaskInfo, task_info_of
from trainers import checkpoint as ckpt_io
from trainers import feature_cache
from trainers.atomic import atomic_write
from trainers.backbone import load_clip, resolve_precision
from trainers.checkpoint import HEAD_NAME, CheckpointError  # noqa: F401 (HEAD_NAME: for trainers)
from trainers.losses import multitask_loss, own_task_prediction, training_columns
from trainers.schedule import build_lr_scheduler
from trainers.text_encoder import TextEncoder

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


class MultiTaskPromptTrainer(TrainerX):
    """Dassl trainer for prompt tuning over all tasks of a benchmark at once."""

    TRAINER_KEY = ""  # e.g. "SOFTCPT": the node cfg.TRAINER.<TRAINER_KEY>

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        # SimpleTrainer builds its evaluator from lab2cname alone; ours needs the tasks.
        self.evaluator = build_evaluator(cfg, lab2cname=self.lab2cname, task_info=self.task_info)

    # ------------------------------------------------------------------ build
    @classmethod
    def resolved_cfg(cls, cfg):
        """The config this trainer runs with (SoftCPT fills its variant's keys): what checkpoints
        and results.json record, and what a rerun is compared with."""
        return cfg

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
        """Backward once, then STEPS_PER_BATCH optimizer steps on that gradient (fp32, fp16).

        With amp (a GradScaler in ``self.scaler``): one scaled step per batch whatever
        STEPS_PER_BATCH, as the official code, whose scaler steps the optimizer once;
        the schedule still takes STEPS_PER_BATCH steps per epoch (``update_lr``).
        """
        self.optim.zero_grad()
        if self.scaler is None:
            self.model_backward(loss)
            for _ in range(self.tcfg.STEPS_PER_BATCH):
                self.optim.step()
            return
        self.detect_anomaly(loss)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optim)  # unscales the gradient, skips the step if it is not finite
        self.scaler.update()

    def update_lr(self, names=None) -> None:
        """The scheduler follows the optimizer: STEPS_PER_BATCH steps per epoch."""
        for _ in range(self.tcfg.STEPS_PER_BATCH):
            super().update_lr(names)

    # ------------------------------------------------------------------- test
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
        if self.tcfg.CACHE_EVAL_TEXT and not self.model.head.conditional:
            self._eval_text = self.model.text_features()  # once per evaluation, not per batch
        try:
            result = self.evaluate(split)
        finally:
            self._eval_text = None
        self.write_results(split)
        return result

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
        print(f"Evaluate on the *{split}* set")
        self.evaluator.reset()
        feats, labels = self.split_features(loader, split)
        feats, labels = feats.to(self.device), labels.to(self.device)
        batches = feature_cache.chunks(feats, labels, loader.batch_size)
        for u, y in tqdm(batches, total=len(loader)):
            self.evaluator.process(self.feature_logits(u, y), y)
        results = self.evaluator.evaluate()
        for k, v in results.items():
            self.write_scalar(f"{split}/{k}", v, self.epoch)
        return list(results.values())[0]

    @torch.no_grad()
    def split_features(self, loader, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised features ``(N, D)`` and labels ``(N,)`` of a loader's images, in order.

        Through the image-feature cache (trainers/feature_cache.py) unless
        TEST.FEATURE_CACHE is False or the transform is random.
        """
        wrapper = loader.dataset
        # Same images, batch size and order as the loader, whatever its sampler; its own generator.
        ordered = feature_cache.ordered_loader(loader)

        def encode():
            for batch in tqdm(ordered, desc=f"encoding {split} images"):
                images = batch["img"].to(self.device)
                yield self.model.encode_image(images), batch["label"]

        cfg = self.cfg
        if not cfg.TEST.FEATURE_CACHE or not feature_cache.is_deterministic(wrapper.transform):
            if cfg.TEST.FEATURE_CACHE:
                logger.warning("The %s transform is random: its image features are not cached.", split)
            return feature_cache.compute(encode())
        folder = cfg.TEST.FEATURE_CACHE_DIR or feature_cache.default_folder()
        precision = getattr(self, "precision", str(self.model.dtype))  # a build_model of one's own
        parts = feature_cache.describe(cfg, self.model.image_encoder, precision, self.device,
                                       loader, split)
        return feature_cache.cached_features(folder, parts, cfg.DATASET.NAME, split, encode)

    def write_results(self, split: str) -> None:
        """results.json (test split) or results_val.json: the evaluator's report, unrounded."""
        if not self.cfg.OUTPUT_DIR:
            return
        cfg = self.cfg
        report = dict(getattr(self.evaluator, "report", {}))
        report.update(trainer=cfg.TRAINER.NAME, dataset=cfg.DATASET.NAME, config=cfg.CONFIG_NAME,
                      backbone=cfg.MODEL.BACKBONE.NAME, shots=cfg.DATASET.NUM_SHOTS, seed=cfg.SEED,
                      split=split, epoch=self.epoch + 1 if self.epoch >= 0 else None,
                      subsample_classes=cfg.DATASET.get("SUBSAMPLE_CLASSES", "all"),
                      resumed_from_epoch=getattr(self, "resumed_from_epoch", None),
                      effective_config=effective_config(cfg),
                      **self.training_setting())
        name = "results.json" if split == "test" else f"results_{split}.json"
        atomic_write(osp.join(cfg.OUTPUT_DIR, name), json.dumps(report, indent=2))

    def training_setting(self) -> dict:
        """What results.json records of the precision and steps (scripts/results.py --paper
        marks PARAM_DTYPE fp16 runs as the official training's reproduction)."""
        node = self.tcfg
        return {"prec": getattr(self, "precision", node.get("PREC")),
                "param_dtype": node.get("PARAM_DTYPE", "fp32"),
                "steps_per_batch": node.get("STEPS_PER_BATCH", 1)}

    # ------------------------------------------------------------ checkpoints
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

    def backbone_identity(self) -> dict:
        """The frozen CLIP a checkpoint was trained on: its name and a fingerprint of its weights
        (hashed once: the backbone never changes, and every epoch's checkpoint records it)."""
        if getattr(self, "_backbone_identity", None) is None:
            self._backbone_identity = self._hash_backbone()
        return self._backbone_identity

    def _hash_backbone(self) -> dict:
        cfg = getattr(self, "cfg", None)
        backbone = cfg.MODEL.BACKBONE if cfg is not None else None
        model = self.model
        weights = ":".join(feature_cache.weights_fingerprint(m)[:16]
                           for m in (model.image_encoder, model.text_encoder))
        return {"name": backbone.NAME if backbone is not None else None,
                "pretrained_tag": backbone.PRETRAINED_TAG if backbone is not None else None,
                "weights": weights}

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
        scaler = getattr(self, "scaler", None)
        shared = {
            "epoch": epoch + 1,
            "val_result": val_result,
            "task_keys": list(self.task_info.keys),
            "classnames": self.task_info.all_classnames,
            **self.checkpoint_identity(),
            "backbone": self.backbone_identity(),
            "effective_config": effective_config(self.cfg) if getattr(self, "cfg", None) else None,
            "rng": ckpt_io.rng_state(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "best_result": float(getattr(self, "best_result", float("-inf"))),
        }
        for name in self.get_model_names():
            optim, sched = self._optims[name], self._scheds[name]
            state = dict(shared, state_dict=self._models[name].state_dict(),
                         optimizer=optim.state_dict() if optim else None,
                         scheduler=sched.state_dict() if sched else None)
            folder = osp.join(directory, name)
            ckpt_io.write_checkpoint(state, folder, model_name)
            if is_best and model_name != ckpt_io.BEST:
                ckpt_io.write_checkpoint(state, folder, ckpt_io.BEST)

    def resume_model_if_exist(self, directory: str) -> int:
        """Continue from the newest checkpoint that loads (Dassl's version trusts the pointer).

        Damaged files are skipped with a warning naming them; the random states
        are restored, so the run goes on exactly as it would have uninterrupted.
        """
        found = {}
        for name in self.get_model_names():
            folder = osp.join(directory, name)
            hit = ckpt_io.newest_loadable(folder, self.device) if osp.isdir(folder) else None
            if hit is None:
                if osp.isdir(folder):
                    logger.warning("No checkpoint in %s loads: training from scratch.", folder)
                else:
                    print("No checkpoint found, train from scratch")
                return 0
            found[name] = hit
        print(f"Found checkpoint at {directory} (will resume training)")
        start = 0
        for name, (path, ckpt) in found.items():
            self._check_compatible(ckpt, path, resuming=True)
            self._models[name].load_state_dict(ckpt["state_dict"])
            if self._optims[name] is not None and ckpt.get("optimizer") is not None:
                self._optims[name].load_state_dict(ckpt["optimizer"])
            if self._scheds[name] is not None and ckpt.get("scheduler") is not None:
                self._scheds[name].load_state_dict(ckpt["scheduler"])
            start = ckpt["epoch"]
            print(f"Loaded {path}\nPrevious epoch: {start}")
        self._restore_run_state(next(iter(found.values()))[1])
        self.epoch = start - 1  # what results.json reports if no epoch is left to run
        self.resumed_from_epoch = start
        return start

    def _restore_run_state(self, ckpt: dict) -> None:
        if ckpt.get("rng") is None:
            logger.warning("The checkpoint holds no random states (saved by an older version): the "
                           "resumed run will not repeat an uninterrupted one exactly.")
        else:
            ckpt_io.restore_rng_state(ckpt["rng"])
        scaler = getattr(self, "scaler", None)
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if ckpt.get("best_result") is not None:
            self.best_result = ckpt["best_result"]

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
            path = ckpt_io.path_to_load(osp.join(directory, name), epoch)
            ckpt = ckpt_io.read_checkpoint(path, self.device)
            self._check_compatible(ckpt, path)
            self._models[name].load_state_dict(ckpt["state_dict"])
            self.epoch = ckpt["epoch"] - 1
            logger.info("Loaded %s (epoch %d)", path, ckpt["epoch"])

    def _check_compatible(self, ckpt: dict, path: str, resuming: bool = False) -> None:
        saved = {"trainer": ckpt.get("trainer"), "variant": ckpt.get("variant")}
        own = self.checkpoint_identity()
        if saved["trainer"] is not None and saved != own:  # older checkpoints record no trainer
            todo = ("this output folder holds another run, which is kept: give this run its own "
                    "--output-dir" if resuming else
                    f"evaluate it as {_who(saved)} (--trainer and the variant of its training run), or "
                    f"give a --model-dir trained as {_who(own)}")
            raise CheckpointError(f"{path} was saved by {_who(saved)}; this run is {_who(own)}: {todo}.")
        self._check_backbone(ckpt, path, resuming)
        head = self.model.head
        own_state = head.state_dict()
        same_classes = ckpt.get("classnames") == self.task_info.all_classnames
        same_tasks = ckpt.get("task_keys") == list(self.task_info.keys)
        for key, value in ckpt["state_dict"].items():
            if key not in own_state:
                raise CheckpointError(f"{path}: parameter {key!r} does not exist in "
                                      f"{type(head).__name__} (it has {sorted(own_state)}): was it "
                                      "saved by another trainer or config?")
            if key in head.per_class_keys and not same_classes:
                raise CheckpointError(f"{path}: {key!r} holds one context per class and was trained on "
                                      "other classes than this benchmark's; per-class contexts cannot "
                                      "be transferred (use a class-agnostic variant).")
            if key in head.per_task_keys and not same_tasks:
                raise CheckpointError(f"{path}: {key!r} holds one context per task and was trained on "
                                      f"tasks {ckpt.get('task_keys')}, not {list(self.task_info.keys)}.")
            if value.shape != own_state[key].shape:
                unknown = "" if saved["trainer"] else (" (and the trainer and variant, which this "
                                                       "older checkpoint does not record)")
                raise CheckpointError(f"{path}: {key!r} has shape {tuple(value.shape)}, this model "
                                      f"needs {tuple(own_state[key].shape)}: check N_CTX and the "
                                      f"backbone{unknown}.")


    def _check_backbone(self, ckpt: dict, path: str, resuming: bool) -> None:
        saved = ckpt.get("backbone")
        if not saved:  # older checkpoints record no backbone
            return
        own = self.backbone_identity()
        if saved == own:
            return
        if resuming:
            todo = ("this output folder holds a run on that backbone, which is kept: give this run its "
                    "own --output-dir")
        elif saved["name"] == own["name"]:
            todo = ("the same name with other weights: evaluate with the weights it was trained with "
                    "(the same file or MODEL.BACKBONE.PRETRAINED_TAG), or give a --model-dir trained "
                    "on these")
        else:
            todo = (f"evaluate it with the backbone it was trained on (--backbone {saved['name']}), or give "
                    f"a --model-dir trained on {own['name']}")
        raise CheckpointError(f"{path} was trained on backbone {_backbone(saved)}; this run uses "
                              f"{_backbone(own)}: {todo} (docs/reliability.md#guarantees).")


def _backbone(identity: dict) -> str:
    """``RN50 (weights 1a2b...:3c4d...)``, with the open_clip tag when there is one."""
    tag = f" {identity['pretrained_tag']}" if identity.get("pretrained_tag") else ""
    return f"{identity['name']}{tag} (weights {identity['weights']})"


def _who(identity: dict) -> str:
    """``trainer SoftCPT, variant NATA`` (no variant for trainers without one)."""
    text = f"trainer {identity['trainer']}"
    return f"{text}, variant {identity['variant']}" if identity.get("variant") else text
