"""How a trainer evaluates a split: Dassl's test loop on image features, and results.json.

The image encoder is frozen, so the loop runs on the split's normalised image
features u, read from the image-feature cache (trainers/parts/feature_cache.py) or
encoded by the image encoder (``split_features``). Heads whose class text
features do not depend on the image encode them once per evaluation
(``class_text_features``, TRAINER.<KEY>.CACHE_EVAL_TEXT) instead of once per
batch. The evaluator (trainers/parts/evaluator.py, ``MultiTaskClassification``)
scores the predictions and prints the log lines; ``results_report`` is what
results.json (results_val.json for the val split) records of the run.
"""
from __future__ import annotations

import itertools
import json
import logging
import os.path as osp
from collections import OrderedDict
from typing import Callable, Iterable, Iterator, Optional

import torch
from torch import nn
from tqdm import tqdm

from datasets.errors import DatasetError
from datasets.splits import image_problem
from trainers.parts import feature_cache
from trainers.run import stops
from trainers.run.atomic import atomic_write

logger = logging.getLogger(__name__)
Features = tuple[torch.Tensor, torch.Tensor]  # normalised features (N, D), labels (N,)
Logits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (u (B, D), labels (B,)) -> (B, C)


# ------------------------------------------------------------------ the feature source
@torch.no_grad()
def split_features(model: nn.Module, loader, split: str, cfg, device: torch.device,
                   precision: str) -> Features:
    """Normalised features ``(N, D)`` and labels ``(N,)`` of a loader's images, in order.

    ``model`` gives ``encode_image`` and its ``image_encoder`` (a MultiTaskCLIP). Through
    the image-feature cache unless TEST.FEATURE_CACHE is False or the transform is random.
    """
    wrapper = loader.dataset
    # Same images, batch size and order as the loader, whatever its sampler; its own generator.
    ordered = feature_cache.ordered_loader(loader)

    def encode():
        for batch in tqdm(named_image_errors(ordered, split), desc=f"encoding {split} images"):
            stops.check()  # nothing is cached until every image is encoded
            images = batch["img"].to(device)
            yield model.encode_image(images), batch["label"]

    if not cfg.TEST.FEATURE_CACHE or not feature_cache.is_deterministic(wrapper.transform):
        if cfg.TEST.FEATURE_CACHE:
            logger.warning("The %s transform is random: its image features are not cached.", split)
        return feature_cache.compute(encode())
    folder = cfg.TEST.FEATURE_CACHE_DIR or feature_cache.default_folder()
    parts = feature_cache.describe(cfg, model.image_encoder, precision, device, loader, split)
    return feature_cache.cached_features(folder, parts, cfg.DATASET.NAME, split, encode)


def named_image_errors(loader, split: str) -> Iterator[dict]:
    """``loader``'s batches (a sequential loader); a batch that fails to load ends in a
    DatasetError naming the image at fault. The split's images are checked when its file is
    written (datasets/splits.py); one damaged later is found here, among the failing batch's
    images only, so a healthy evaluation reads nothing twice."""
    batches = iter(loader)
    for index in itertools.count():
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as err:
            items = loader.dataset.data_source[index * loader.batch_size:(index + 1) * loader.batch_size]
            for item in items:
                problem = image_problem(item.impath, decode=True)
                if problem:
                    raise DatasetError(f"cannot read image {item.impath} of the {split} split "
                                       f"({problem}); replace the file, or remove it and delete "
                                       "the split file to re-split", "error-messages") from None
            raise
        yield batch


@torch.no_grad()
def class_text_features(model: nn.Module, cache: bool) -> Optional[torch.Tensor]:
    """Every class's normalised text features, encoded once for a whole evaluation; None
    (encode them per batch) when ``cache`` is off or the head is conditional (CoCoOp)."""
    if cache and not model.head.conditional:
        return model.text_features()
    return None


# ------------------------------------------------------------------ the test loop
@torch.no_grad()
def evaluate_split(evaluator, loader, split: str, features: Callable[[object, str], Features],
                   logits: Logits, device: torch.device) -> OrderedDict:
    """Dassl's test loop (``SimpleTrainer.test``) on image features: the ``evaluator``'s
    results of the split whose ``loader`` gives the batch size and number of batches.

    ``features(loader, split)`` gives the split's features and labels; ``logits(u, labels)``
    the logits of one batch of them.
    """
    print(f"Evaluate on the *{split}* set")
    feats, labels = features(loader, split)
    feats, labels = feats.to(device), labels.to(device)
    return evaluate_batches(evaluator, feature_cache.chunks(feats, labels, loader.batch_size),
                            logits, len(loader))


@torch.no_grad()
def evaluate_batches(evaluator, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], logits: Logits,
                     total: int) -> OrderedDict:
    """The ``evaluator``'s results on ``(features, labels)`` batches, ``logits(features, labels)``
    scoring each: the loop of ``evaluate_split``, also fed batch by batch from the images by a
    trainer whose features are too large to hold for a whole split (trainers/plot.py)."""
    evaluator.reset()
    for u, y in tqdm(batches, total=total):
        evaluator.process(logits(u, y), y)
    return evaluator.evaluate()


# ------------------------------------------------------------------ results.json
def training_setting(node, precision: Optional[str]) -> dict:
    """What results.json records of the precision and steps (scripts/results.py --paper
    marks PARAM_DTYPE fp16 runs as the official training's reproduction). ``node`` is the
    trainer's config node, ``precision`` the one the run resolved (None: the node's PREC)."""
    return {"prec": precision if precision is not None else node.get("PREC"),
            "param_dtype": node.get("PARAM_DTYPE", "fp32"),
            "steps_per_batch": node.get("STEPS_PER_BATCH", 1)}


def device_name(device: torch.device) -> str:
    """``cpu``, or the GPU's name (``NVIDIA H100 80GB HBM3``): where a training time was measured."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def run_costs(optims: Iterable, train_time: Optional[dict]) -> dict:
    """What results.json records of a run's cost (scripts/results.py's ``#params`` and ``train
    min``): ``learnable_params``, the elements of the parameters the optimizers update, each
    counted once (None without an optimizer: nothing is learned by gradient), and from
    ``train_time`` (``{"seconds", "device"}`` of the training epochs over every attempt; None
    when not measured: no epochs ran here, or a resume from a checkpoint that does not record
    it) ``train_seconds`` and ``train_device``."""
    sizes: dict[int, int] = {}
    optims = [o for o in optims if o is not None]
    for optim in optims:
        for group in optim.param_groups:
            for param in group["params"]:
                sizes[id(param)] = param.numel()
    timed = train_time or {}
    return {"learnable_params": sum(sizes.values()) if optims else None,
            "train_seconds": timed.get("seconds"), "train_device": timed.get("device")}


def results_report(cfg, report: dict, split: str, epoch: int, resumed_from_epoch: Optional[int],
                   effective_config: dict, setting: dict, costs: Optional[dict] = None) -> dict:
    """The evaluator's ``report`` (unrounded) and what the run was: trainer, dataset, config,
    backbone, shots, seed, split, the epoch evaluated (1-based; None for ``epoch`` -1: nothing
    learned), ``effective_config``, the training ``setting`` (``training_setting``) and, when
    given, its ``costs`` (``run_costs``)."""
    out = dict(report)
    out.update(trainer=cfg.TRAINER.NAME, dataset=cfg.DATASET.NAME, config=cfg.CONFIG_NAME,
               backbone=cfg.MODEL.BACKBONE.NAME, shots=cfg.DATASET.NUM_SHOTS, seed=cfg.SEED,
               split=split, epoch=epoch + 1 if epoch >= 0 else None,
               subsample_classes=cfg.DATASET.get("SUBSAMPLE_CLASSES", "all"),
               resumed_from_epoch=resumed_from_epoch,
               effective_config=effective_config,
               **setting, **(costs or {}))
    return out


def results_name(split: str) -> str:
    """``results.json`` for the test split, ``results_<split>.json`` for another."""
    return "results.json" if split == "test" else f"results_{split}.json"


def write_results(output_dir: str, split: str, report: dict) -> str:
    """Write ``report`` (``results_report``) into ``output_dir`` atomically; returns the path."""
    path = osp.join(output_dir, results_name(split))
    atomic_write(path, json.dumps(report, indent=2))
    return path
