"""Checkpoints: writing them whole, finding the right one, reading it with a clear error, and
their life cycle in a run (``save`` every epoch, ``resume`` the newest that loads, ``load``
one for evaluation); whether a checkpoint belongs to the run is trainers/run/checkpoint_identity.py.

A model's checkpoints live in ``<run>/<model name>/`` (``prompt_learner/`` as in
CoOp): ``model.pth.tar-<epoch>``, optionally ``model-best.pth.tar``, and
``checkpoint``, Dassl's one-line pointer to the newest file. Every file is
written by ``trainers.run.atomic`` (whole or not at all). Each checkpoint also holds
the random number generator states that decide what comes next, so a resumed
run continues exactly as the uninterrupted one would have.

Every epoch is saved (resumable); ``TRAIN.CHECKPOINT_FREQ`` only decides which
epochs are kept as snapshots (every N-th and the last): the previous epoch's
file, if it is not a snapshot, is removed once the new one is written whole.
"""
from __future__ import annotations

import logging
import os
import os.path as osp
import random
import re
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from trainers.run.atomic import atomic_torch_save, atomic_write

logger = logging.getLogger(__name__)
HEAD_NAME = "prompt_learner"  # a run's folder of checkpoints, as in CoOp
POINTER = "checkpoint"  # Dassl's name
BEST = "model-best.pth.tar"
EPOCH_FILE = re.compile(r"^model\.pth\.tar-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or from another model: the message says which."""


# ------------------------------------------------------------------ writing
def write_checkpoint(state: dict, folder: str, model_name: str = "") -> str:
    """``<folder>/model.pth.tar-<epoch>`` (or ``model_name``), then the pointer to it.

    A storage fault raises the ``OSError`` itself (torch wraps a full disk in a
    RuntimeError about the zip writer's position), naming the file.
    """
    name = model_name or f"model.pth.tar-{state['epoch']}"
    path = osp.join(folder, name)
    try:
        atomic_torch_save(state, path)
        atomic_write(osp.join(folder, POINTER), name + "\n")
    except (OSError, RuntimeError) as err:
        cause = storage_cause(err)
        if cause is None:
            raise
        if cause.filename is None:
            cause.filename = path
        raise cause from None
    print(f"Checkpoint saved to {path}")
    return path


def storage_cause(err: BaseException) -> Optional[OSError]:
    """The OSError behind ``err`` (itself, or what it was raised from or during), if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ if err.__suppress_context__ else (err.__cause__ or err.__context__)
    return None


def is_snapshot(epoch: int, freq: int, max_epoch: int) -> bool:
    """Is epoch ``epoch`` (1-based) kept once the next one is saved? Every ``freq``-th and the last."""
    return epoch >= max_epoch or (freq > 0 and epoch % freq == 0)


def prune_resume_points(folder: str, newest: int, freq: int, max_epoch: int) -> list[str]:
    """Remove the epoch files older than ``newest`` that are not snapshots (call after writing
    ``newest``: the previous resumable file goes only once a newer one is whole)."""
    removed = []
    for epoch in saved_epochs(folder):
        if epoch < newest and not is_snapshot(epoch, freq, max_epoch):
            path = osp.join(folder, f"model.pth.tar-{epoch}")
            os.unlink(path)
            removed.append(path)
    return removed


# ------------------------------------------------------------------ finding
def saved_epochs(folder: str) -> list[int]:
    """Epochs with a ``model.pth.tar-<epoch>`` file in ``folder``, ascending."""
    if not osp.isdir(folder):
        return []
    return sorted(int(m.group(1)) for m in map(EPOCH_FILE.match, os.listdir(folder)) if m)


def describe_saved(folder: str) -> str:
    epochs = saved_epochs(folder)
    best = " and model-best.pth.tar" if osp.exists(osp.join(folder, BEST)) else ""
    if not epochs and not best:
        return f"{folder} holds no checkpoint"
    return f"saved epochs in {folder}: {epochs}{best}"


def path_to_load(folder: str, epoch: Optional[int]) -> str:
    """The file ``--eval-only`` loads: epoch ``epoch``, else model-best, else the newest."""
    if not osp.isdir(folder):
        raise CheckpointError(f"no checkpoint folder {folder}: is --model-dir the output folder of a "
                              "training run (it holds prompt_learner/)?")
    if epoch is not None:
        path = osp.join(folder, f"model.pth.tar-{epoch}")
        if not osp.exists(path):
            raise CheckpointError(f"no checkpoint for epoch {epoch} (--load-epoch): "
                                  f"{describe_saved(folder)}. TRAIN.CHECKPOINT_FREQ decides which "
                                  "epochs are kept; the last one always is.")
        return path
    if osp.exists(osp.join(folder, BEST)):
        return osp.join(folder, BEST)
    epochs = saved_epochs(folder)
    if not epochs:
        raise CheckpointError(f"{folder} holds no checkpoint: did the training run save one?")
    return osp.join(folder, f"model.pth.tar-{epochs[-1]}")


# ------------------------------------------------------------------ reading
class UnexpectedClassError(CheckpointError):
    """A file that pickles an object of a class this project does not unpickle."""


READ_DOCS = "docs/reliability.md#reading-checkpoints"


def _plain_defaultdict(factory=None, *items) -> dict:
    """``collections.defaultdict`` read as a plain dict: torch's weights-only reader fills only
    plain dicts, and a pickled optimizer's ``state`` is a defaultdict (nothing reads it here)."""
    return dict(*items)


def dassl_classes() -> list:
    """What Dassl's ``save_checkpoint`` pickles besides tensors and plain containers: a warm-up
    scheduler's (``ConstantWarmupScheduler``, ``LinearWarmupScheduler``) state dict holds its
    successor, one of the schedulers Dassl's ``build_lr_scheduler`` makes, and that holds
    its optimizer, one of ``build_optimizer``'s; the optimizer's state is a defaultdict of dict.
    These exact classes, and no others, are unpickled (``torch.serialization.safe_globals``)."""
    from torch.optim import SGD, Adam, AdamW, RMSprop
    from torch.optim.lr_scheduler import CosineAnnealingLR, MultiStepLR, StepLR
    allowed = [SGD, Adam, AdamW, RMSprop, StepLR, MultiStepLR, CosineAnnealingLR, dict,
               (_plain_defaultdict, "collections.defaultdict")]
    try:
        from dassl.optim.radam import RAdam  # Dassl's own optimizer (OPTIM.NAME radam)
        allowed.append(RAdam)
    except ImportError:  # without Dassl, no Dassl class can be in a file to read
        pass
    return allowed


def _global_name(obj) -> str:
    return obj[1] if isinstance(obj, tuple) else f"{obj.__module__}.{obj.__qualname__}"


def load_file(path: str, device: torch.device | str = "cpu"):
    """``torch.load`` of a file written by this project, CoOp or Dassl: tensors, plain containers
    and ``dassl_classes()`` only (weights_only). A file pickling any other class raises an
    UnexpectedClassError naming the file, the class and what to do; anything else that fails
    (a truncated file, not a torch file) raises torch's own error, for the caller to name."""
    allowed = dassl_classes()
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - see whether a class was the reason
        try:  # reads the pickle's names without unpickling anything
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - truncated or not a zip file: the caller says so
            raise err from None
        names = {_global_name(a) for a in allowed}
        unexpected = sorted(g for g in found if g not in names)
        if not unexpected:
            raise
        raise UnexpectedClassError(
            f"{path} holds a pickled object of class {', '.join(unexpected)}, which is not read: "
            "checkpoints are read with only tensors, plain containers and the optimizer and "
            "scheduler classes Dassl's save_checkpoint writes, so the file was not written as "
            "CoOp, Dassl or this project write checkpoints; if its source is one you trust, "
            f"save its tensors (its state_dict and epoch) in a new file and give that ({READ_DOCS})."
        ) from None


def read_checkpoint(path: str, device: torch.device) -> dict:
    """Load a checkpoint; a truncated or foreign file raises a CheckpointError naming it."""
    try:
        ckpt = load_file(path, device)
    except CheckpointError:
        raise
    except Exception as err:  # torch raises many kinds for a damaged file
        detail = (str(err).strip().splitlines() or ["no detail"])[0].split(". ")[0]  # torch's are long
        raise CheckpointError(f"cannot read checkpoint {path} ({type(err).__name__}: {detail}): the "
                              f"file is truncated or not a checkpoint; "
                              f"{describe_saved(osp.dirname(path))}.") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "epoch" not in ckpt:
        raise CheckpointError(f"{path} is not a checkpoint of this project (no state_dict/epoch).")
    return ckpt


def newest_loadable(folder: str, device: torch.device) -> Optional[tuple[str, dict]]:
    """The newest checkpoint in ``folder`` that loads, for resuming; None when none does.

    Files that do not load and a missing, empty or wrong pointer are reported as
    warnings naming the file; the search then falls back to older epochs.
    """
    candidates = [osp.join(folder, f"model.pth.tar-{e}") for e in reversed(saved_epochs(folder))]
    if osp.exists(osp.join(folder, BEST)):
        candidates.append(osp.join(folder, BEST))
    loaded: list[tuple[str, dict]] = []
    for path in candidates:
        try:
            loaded.append((path, read_checkpoint(path, device)))
        except CheckpointError as err:
            logger.warning("Skipping a damaged checkpoint: %s", err)
            continue
        if not path.endswith(BEST):
            break  # the newest numbered file that loads; model-best may still be newer
    _check_pointer(folder, [p for p, _ in loaded], bool(candidates))
    if not loaded:
        return None
    return max(loaded, key=lambda item: (item[1]["epoch"], not item[0].endswith(BEST)))


def _check_pointer(folder: str, loadable: list[str], any_file: bool) -> None:
    if not any_file:
        return
    pointer = osp.join(folder, POINTER)
    try:
        with open(pointer) as f:
            name = f.read().strip()
    except OSError:
        name = None
    if name is None:
        logger.warning("%s is missing: finding the newest checkpoint by its file name.", pointer)
    elif not name:
        logger.warning("%s is empty: finding the newest checkpoint by its file name.", pointer)
    elif osp.join(folder, name) not in loadable:
        logger.warning("%s names %s, which is not the newest loadable checkpoint: finding it by its "
                       "file name.", pointer, name)


# ------------------------------------------------------------------ life cycle
# What a trainer saves, resumes and loads, over Dassl's registries of models, optimizers
# and schedulers (name -> object, ``TrainerBase._models`` / ``_optims`` / ``_scheds``).
Check = Callable[[dict, str], None]  # raises a CheckpointError if (checkpoint, path) is not this run's


def run_record(epoch: int, val_result: Optional[float], task_keys: Sequence[str],
               classnames: Sequence[str], identity: dict, backbone: dict,
               effective_config: Optional[dict], scaler, best_result: float,
               train_time: Optional[dict] = None) -> dict:
    """What every model's checkpoint of epoch ``epoch`` (0-based) holds besides its own state:
    the classes and tasks it was learned on, who learned it (``identity``: trainer, variant;
    ``backbone``), the config, what decides the next epoch (random states, the amp
    scaler, the best validation result so far) and the training time so far (``train_time``:
    seconds and device, carried over a resume into results.json; None when unknown)."""
    return {
        "epoch": epoch + 1,
        "val_result": val_result,
        "task_keys": list(task_keys),
        "classnames": classnames,
        **identity,
        "backbone": backbone,
        "effective_config": effective_config,
        "rng": rng_state(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "best_result": float(best_result),
        "train_time": dict(train_time) if train_time is not None else None,
    }


def save(directory: str, record: dict, models: Mapping[str, nn.Module], optims: Mapping,
         scheds: Mapping, model_name: str = "", is_best: bool = False) -> None:
    """``<directory>/<name>/model.pth.tar-<epoch>`` (or ``model_name``) for every model: ``record``
    (``run_record``) with the model's, its optimizer's and its scheduler's states; also
    ``model-best.pth.tar`` when ``is_best``."""
    for name in models:
        optim, sched = optims[name], scheds[name]
        state = dict(record, state_dict=models[name].state_dict(),
                     optimizer=optim.state_dict() if optim else None,
                     scheduler=sched.state_dict() if sched else None)
        folder = osp.join(directory, name)
        write_checkpoint(state, folder, model_name)
        if is_best and model_name != BEST:
            write_checkpoint(state, folder, BEST)


def resume(directory: str, models: Mapping[str, nn.Module], optims: Mapping, scheds: Mapping,
           device: torch.device, check: Check) -> Optional[tuple[int, dict]]:
    """Load every model's newest checkpoint that loads (``newest_loadable``), with its
    optimizer's and scheduler's states, after ``check(checkpoint, path)``.

    Returns (the epoch to continue after, the first model's checkpoint, for
    ``restore_run_state``), or None (after saying why) when a model has none: the run
    trains from scratch.
    """
    found = {}
    for name in models:
        folder = osp.join(directory, name)
        hit = newest_loadable(folder, device) if osp.isdir(folder) else None
        if hit is None:
            if osp.isdir(folder):
                logger.warning("No checkpoint in %s loads: training from scratch.", folder)
            else:
                print("No checkpoint found, train from scratch")
            return None
        found[name] = hit
    print(f"Found checkpoint at {directory} (will resume training)")
    start = 0
    for name, (path, ckpt) in found.items():
        check(ckpt, path)
        models[name].load_state_dict(ckpt["state_dict"])
        if optims[name] is not None and ckpt.get("optimizer") is not None:
            optims[name].load_state_dict(ckpt["optimizer"])
        if scheds[name] is not None and ckpt.get("scheduler") is not None:
            scheds[name].load_state_dict(ckpt["scheduler"])
        start = ckpt["epoch"]
        print(f"Loaded {path}\nPrevious epoch: {start}")
    return start, next(iter(found.values()))[1]


def restore_run_state(ckpt: dict, scaler=None) -> Optional[float]:
    """Put back the random states and the amp ``scaler``'s state saved in ``ckpt``; returns the
    best validation result it records (None when it records none)."""
    if ckpt.get("rng") is None:
        logger.warning("The checkpoint holds no random states (saved by an older version): the "
                       "resumed run will not repeat an uninterrupted one exactly.")
    else:
        restore_rng_state(ckpt["rng"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    return ckpt.get("best_result")


def load(directory: str, models: Mapping[str, nn.Module], device: torch.device,
         epoch: Optional[int], check: Check) -> Optional[int]:
    """Load every model's learned parameters from ``<directory>/<name>/`` for evaluation: epoch
    ``epoch``, else model-best, else the newest (``path_to_load``), after ``check``.

    Returns the epoch (1-based) loaded, or None (with a warning) when ``directory`` is empty.
    """
    if not directory:
        logger.warning("No --model-dir given: evaluating the model as initialised.")
        return None
    loaded = None
    for name in models:
        path = path_to_load(osp.join(directory, name), epoch)
        ckpt = read_checkpoint(path, device)
        check(ckpt, path)
        models[name].load_state_dict(ckpt["state_dict"])
        loaded = ckpt["epoch"]
        logger.info("Loaded %s (epoch %d)", path, ckpt["epoch"])
    return loaded


# ------------------------------------------------------------------ random states
def rng_state() -> dict:
    """Every global generator a training step draws from (shuffling, augmentation, class sampling)."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "random": random.getstate(),
    }


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    cuda = [s.cpu() for s in state.get("cuda", [])]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    elif cuda or torch.cuda.is_available():
        logger.warning("The checkpoint's CUDA random states (%d devices) do not match this machine's; "
                       "the resumed run will not repeat the interrupted one exactly.", len(cuda))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["gauss"]))
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))
