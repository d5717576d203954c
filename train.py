"""Train or evaluate a trainer on a dataset: CoOp's command line.

    python train.py --root $DATA --seed 1 --trainer SoftCPT \
        --dataset-config-file configs/datasets/toy.yaml \
        --config-file configs/trainers/SoftCPT/tiny.yaml \
        --output-dir output/toy/SoftCPT/seed1 [KEY VALUE ...]

Differences from CoOp: ``--seed 0`` seeds with 0 (CoOp ignores it), bad config
input (unknown key or trainer, wrong type, out of range, missing or binary file, YAML
error, a flag after the KEY VALUE options, an empty --output-dir) ends in one message that
says what to change (docs/troubleshooting.md), before torch is imported where the config
alone decides, a
finished run leaves a ``done`` marker in its output directory, written last, every
attempt of a run (and the error that ends one) goes to the same ``log.txt``,
``--eval-only`` never writes into a training run's folder or into ``./output``
unasked: its results go to ``--output-dir`` or to ``<model-dir>/eval_<epoch>/``; it
evaluates a run that has not finished only at the epoch ``--load-epoch`` names.

A run owns its output folder while it trains or evaluates (a second process into
it stops at once, trainers/run/run_folder.py), refuses a folder recorded with other
settings, and ends cleanly on SIGTERM, SIGINT (Ctrl-C) and SIGUSR1, sent to it or to its
whole process group: the signal is recorded and acted on at the next check point (a
training batch, an epoch's checkpoint, a batch of images evaluated; trainers/run/stops.py),
the last complete epoch stays resumable, log.txt says where it stopped, and the exit code
is 128 + the signal's number (docs/reliability.md#stops). Storage faults (full disk,
read-only folder, a path that is a file) end in one line naming the path.

``--check-finished`` (with the same command line, torch-free) only compares the settings
the finished run in ``--output-dir`` recorded with this command's, and exits 0 (same),
1 (naming the keys that differ) or 2 (a config error): the sweeps ask it before skipping
a finished run (docs/reliability.md#sweeps-and-changed-settings).
"""
from __future__ import annotations

import argparse
import difflib
import errno
import functools
import gc
import importlib
import logging
import os.path as osp
import sys
import contextlib
import json
import traceback
from typing import Optional, Sequence

logger = logging.getLogger("train")
DONE_MARKER = "done"

try:
    import dassl  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised by hand
    raise SystemExit("Dassl is not installed: see INSTALL.md#dassl "
                     "(pip install from github.com/KaiyangZhou/Dassl.pytorch).") from err

# The config is a leaf (config/: yacs and yaml only; dassl.config is torch-free too), so
# --help-config answers before torch, Dassl's engine and the trainers are imported.
from dassl.config import get_cfg_default  # noqa: E402

from atomic_files import append_to_log  # noqa: E402
from config import ConfigError, check_path, check_values, extend_cfg, resolve_cfg  # noqa: E402
from config.official import translate_trainer  # noqa: E402
from config.merge import load_yaml, merge_file, merge_list  # noqa: E402
from config.run_settings import config_differences, describe_differences, effective_config  # noqa: E402


def help_config() -> str:
    """Every valid key with its default (``--help-config``): Dassl's, the in-tree families'
    (config/) and those of any trainer whose module registered a config hook before this call
    (``python -m examples.my_trainer --help-config``)."""
    cfg = get_cfg_default()
    extend_cfg(cfg)
    return cfg.dump()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=str, default="", help="path to dataset ($DATA)")
    p.add_argument("--output-dir", type=str, default=None, help="output directory")
    p.add_argument("--resume", type=str, default="", help="checkpoint directory to resume from")
    p.add_argument("--seed", type=int, default=None, help="random seed (0 is a seed too)")
    p.add_argument("--source-domains", type=str, nargs="+", help="source domains for DA/DG")
    p.add_argument("--target-domains", type=str, nargs="+", help="target domains for DA/DG")
    p.add_argument("--transforms", type=str, nargs="+", help="data augmentation methods")
    p.add_argument("--config-file", type=str, default="", help="trainer config file")
    p.add_argument("--dataset-config-file", type=str, default="", help="dataset config file")
    p.add_argument("--trainer", type=str, default="", help="name of trainer")
    p.add_argument("--backbone", type=str, default="", help="name of CNN backbone")
    p.add_argument("--head", type=str, default="", help="name of head")
    p.add_argument("--eval-only", action="store_true", help="evaluation only")
    p.add_argument("--model-dir", type=str, default="", help="load model from this directory")
    p.add_argument("--load-epoch", type=int, help="load model weights at this epoch")
    p.add_argument("--no-train", action="store_true", help="do not call trainer.train()")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first: a trainer kept outside trainers/ that registers "
                        "itself (and its config keys), e.g. my_pkg.kgcoop; repeatable (one on this "
                        "project's shared parts imports them from trainers.parts and trainers.run)")
    p.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                   help="modify config options using the command-line")
    return p


def read_cfg(args: argparse.Namespace):
    """The merged config with every value checked (config.check_values), not frozen: torch-free,
    so ``python train.py`` refuses a bad value before importing torch. ``--eval-only``'s
    output folder is decided by ``setup_cfg``."""
    check_command_line(args)
    cfg = get_cfg_default()
    extend_cfg(cfg)
    if args.dataset_config_file:
        merge_file(cfg, args.dataset_config_file, "--dataset-config-file")
    if args.config_file:
        merge_file(cfg, args.config_file, "--config-file")
    for flag, key in [("root", "DATASET.ROOT"), ("output_dir", "OUTPUT_DIR"), ("resume", "RESUME"),
                      ("source_domains", "DATASET.SOURCE_DOMAINS"),
                      ("target_domains", "DATASET.TARGET_DOMAINS"), ("transforms", "INPUT.TRANSFORMS"),
                      ("trainer", "TRAINER.NAME"), ("backbone", "MODEL.BACKBONE.NAME"),
                      ("head", "MODEL.HEAD.NAME")]:
        value = getattr(args, flag)
        if value:
            merge_list(cfg, [key, value], f"--{flag.replace('_', '-')}")
    if args.seed is not None:  # unlike CoOp, --seed 0 is honoured
        cfg.SEED = args.seed
    if args.config_file and not load_yaml(args.config_file, "--config-file"):
        raise ConfigError(f"--config-file {args.config_file} is empty: it sets no key, so the run would "
                          "have Dassl's defaults (no backbone, no schedule); start from a file in "
                          f"configs/trainers/{args.trainer or '<trainer>'}/ (docs/troubleshooting.md#configuration).")
    if args.config_file:  # recorded in results.json
        cfg.CONFIG_NAME = osp.splitext(osp.basename(args.config_file))[0]
    merge_list(cfg, args.opts or [])
    check_values(cfg)
    if not args.eval_only and not cfg.OUTPUT_DIR:  # the checkpoints would land in the current folder
        raise ConfigError("OUTPUT_DIR is ''; allowed: a folder for the run's checkpoints and results "
                          "(--output-dir DIR) (docs/troubleshooting.md#configuration).")
    return cfg


def check_command_line(args: argparse.Namespace) -> None:
    """What the config cannot see: a flag among the trailing ``KEY VALUE`` options (argparse
    takes it as a key there), an empty ``--output-dir`` (an unset shell variable: it would
    train into ./output), paths too long for the file system."""
    opts = args.opts or []
    flags = {s for action in build_parser()._actions for s in action.option_strings}
    for word in opts:
        if word.split("=")[0] in flags:
            raise ConfigError(f"command line: {word} comes after the KEY VALUE options "
                              f"({' '.join(opts[:2])} ...), where every word is a config key or its "
                              f"value; allowed: flags before the first KEY VALUE pair, e.g. "
                              f"`python train.py {word.split('=')[0]} ... {' '.join(opts[:2])}` "
                              "(docs/troubleshooting.md#configuration).")
    if args.output_dir == "":
        raise ConfigError("--output-dir is ''; allowed: a folder (an empty value is often an unset "
                          "shell variable; leave the flag out for Dassl's ./output) "
                          "(docs/troubleshooting.md#configuration).")
    for flag in ("model_dir", "config_file", "dataset_config_file"):
        check_path(f"--{flag.replace('_', '-')}", getattr(args, flag) or "")


def record_config_error(args: argparse.Namespace, err: ConfigError) -> None:
    """Add a config error to the run's log.txt (not an evaluation's: its --output-dir may be a
    training run's folder)."""
    if not args.eval_only:
        try:
            append_to_log(args.output_dir, f"error: {err}")
        except OSError:  # a folder that cannot be written: the console has it
            pass


def import_modules(names: Sequence[str]) -> None:
    """``--import``: modules that register trainers (and config hooks) before the config is built.

    A trainer they register under a name this project's trainers already use (CoOp's own
    ``CoOp``, KgCoOp's ``KgCoOp``) takes that name in this process, with a line saying so:
    Dassl's registry would refuse the second registration."""
    if not names:
        return
    from dassl.engine import TRAINER_REGISTRY

    import trainers  # noqa: F401  (this project's names first, so that theirs win)

    ours = set(TRAINER_REGISTRY.registered_names())
    register = TRAINER_REGISTRY._do_register

    def imported_first(name, obj, force=False):
        if name in ours:
            print(f"note: --import: {obj.__module__}.{obj.__name__} is trainer {name!r} in this run, "
                  f"in place of this project's (docs/add_a_trainer.md#other-dassl-trainers)")
        register(name, obj, force=force or name in ours)

    TRAINER_REGISTRY._do_register = imported_first  # this instance, while the modules import
    try:
        for name in names:
            try:
                importlib.import_module(name)
            except ImportError as err:
                raise ConfigError(f"--import {name}: cannot import it ({type(err).__name__}: {err}); give "
                                  "a module path importable from this folder, e.g. my_pkg.my_trainer for "
                                  "my_pkg/my_trainer.py (docs/add_a_trainer.md#other-dassl-trainers).") \
                    from None
    finally:
        del TRAINER_REGISTRY._do_register


CHECK_FINISHED = "--check-finished"


def check_finished_settings(argv: Sequence[str]) -> int:
    """``--check-finished``: whether the finished run in ``--output-dir`` was recorded with the
    settings this command line gives (the sweeps ask before skipping a run folder that holds
    ``done``: their folder names carry the KEY VALUE options, not a config file's contents).

    Torch-free (the recorded config is read from results.json). Returns 0 when the settings
    are the same or nothing was recorded to compare, 1 (printing the keys that differ) when
    they differ, 2 on a config error.
    """
    args = build_parser().parse_args([a for a in argv if a != CHECK_FINISHED])
    args.eval_only = False  # where an evaluation writes is a run-only key: build it as a run
    try:
        import_modules(args.imports)  # an out-of-tree trainer's keys (it imports torch)
        current = effective_config(resolve_cfg(read_cfg(args)))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    path = osp.join(args.output_dir, "results.json")
    try:
        with open(path, encoding="utf-8") as f:
            recorded = json.load(f).get("effective_config")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if not isinstance(recorded, dict):  # an older version's run, or no final evaluation
        print(f"note: {path} records no settings to compare with; {args.output_dir} is kept as "
              "finished", file=sys.stderr)
        return 0
    diffs = config_differences(recorded, current)
    if not diffs:
        return 0
    print(f"error: {args.output_dir} finished with other settings (recorded in {path}) than this "
          f"command gives; it is neither skipped nor run again. Keys that differ:\n"
          f"{describe_differences(diffs)}\nFolder names carry only the sweep's KEY VALUE options: "
          "pass the changed keys as KEY VALUE options (they name new folders), restore the recorded "
          f"values, or move {args.output_dir} away to redo it (docs/reliability.md#sweeps-and-changed-settings).",
          file=sys.stderr)
    return 1


if __name__ == "__main__":  # main() would answer the same, after importing torch (seconds)
    if "--help-config" in sys.argv[1:]:
        print(help_config())
        sys.exit(0)
    if CHECK_FINISHED in sys.argv[1:]:  # a sweep asks before skipping a finished run
        sys.exit(check_finished_settings(sys.argv[1:]))
    _args = build_parser().parse_args(sys.argv[1:])
    try:
        if not _args.imports:  # a trainer to import may add keys: checked once it is, in main()
            read_cfg(_args)
    except ConfigError as _err:
        record_config_error(_args, _err)
        sys.exit(f"error: {_err}")

import torch  # noqa: E402
from dassl.engine import TRAINER_REGISTRY, build_trainer  # noqa: E402
from dassl.utils import collect_env_info, set_random_seed  # noqa: E402

import datasets  # noqa: E402,F401  (registers the datasets)
import trainers  # noqa: E402,F401  (registers the trainers and evaluators)
from datasets.errors import DatasetError  # noqa: E402
from trainers.parts import single_task  # noqa: E402
from trainers.parts.backbone import WeightsError  # noqa: E402
from trainers.plot import TransportError  # noqa: E402
from trainers.run import checkpoint as ckpt_io  # noqa: E402
from trainers.run import stops  # noqa: E402
from trainers.run.atomic import atomic_write  # noqa: E402
from trainers.run.checkpoint import CheckpointError  # noqa: E402
from trainers.run.logs import open_run_log, restore_stdout, setup_logging  # noqa: E402
from trainers.run.run_folder import RunBusy, check_settings, hold  # noqa: E402
from trainers.run.stops import Stopped  # noqa: E402,F401  (train.Stopped: what main() raises on a stop)


class StorageError(RuntimeError):
    """A file could not be written or read for a reason of the file system: the message names it."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.errno = code


# Errors whose message says what to fix: printed as `error: ...`, without a traceback.
USER_ERRORS = (ConfigError, DatasetError, CheckpointError, RunBusy, StorageError, WeightsError,
               TransportError)
STORAGE_ERRNOS = {errno.ENOSPC: "the file system is full: free space there",
                  errno.EDQUOT: "the disk quota is exceeded: free space there",
                  errno.EROFS: "the file system is read-only: choose a writable folder",
                  errno.EACCES: "permission denied: make it writable or choose another folder",
                  errno.EPERM: "permission denied: make it writable or choose another folder",
                  errno.ENOTDIR: "a part of the path is a file, not a folder: give a folder",
                  errno.EEXIST: "a file is in the way of a folder: give a folder",
                  errno.EISDIR: "a folder is where a file should be"}


def setup_cfg(args: argparse.Namespace):
    """``read_cfg``, then where ``--eval-only`` writes; frozen."""
    cfg = read_cfg(args)
    if args.eval_only:
        check_finished(args.model_dir, args.load_epoch)
        explicit = bool(args.output_dir) or "OUTPUT_DIR" in (args.opts or [])[::2]
        cfg.OUTPUT_DIR = eval_output_dir(cfg.OUTPUT_DIR if explicit else "", args.model_dir,
                                         args.load_epoch)
    cfg.freeze()
    return cfg


def check_finished(model_dir: str, epoch: Optional[int]) -> None:
    """``--eval-only`` of a training run that never finished (no ``done`` marker) needs
    ``--load-epoch``: its newest checkpoint is not the model the run would have ended with."""
    folder = osp.join(model_dir, ckpt_io.HEAD_NAME) if model_dir else ""
    if epoch is not None or not folder or not osp.isdir(folder) or \
            osp.exists(osp.join(model_dir, DONE_MARKER)):
        return
    raise ConfigError(f"--model-dir {model_dir} is a training run that has not finished (no "
                      f"'{DONE_MARKER}' marker; saved epochs {ckpt_io.saved_epochs(folder)}): its newest "
                      "checkpoint is not its final model. Rerun its training command to finish it, or "
                      "give --load-epoch N to evaluate epoch N (docs/troubleshooting.md#checkpoints).")


def eval_output_dir(output_dir: str, model_dir: str, epoch: Optional[int]) -> str:
    """Where ``--eval-only`` writes: never a training run's folder, never ./output unasked.

    No output folder, or one that holds a training run (the model folder
    included): its ``eval_epoch<N>/`` (``eval_best/``, ``eval_last/``) sub-folder.
    """
    if not output_dir and not model_dir:
        raise ConfigError("--eval-only needs --output-dir (where results.json goes) or --model-dir "
                          "(then it writes into <model-dir>/eval_<epoch>/); it does not write into "
                          "./output unasked.")
    folder = output_dir or model_dir
    same = model_dir and osp.realpath(folder) == osp.realpath(model_dir)
    if not same and not osp.isdir(osp.join(folder, ckpt_io.HEAD_NAME)):
        return folder
    if epoch is not None:
        tag = f"epoch{epoch}"
    else:
        tag = "best" if osp.exists(osp.join(folder, ckpt_io.HEAD_NAME, "model-best.pth.tar")) else "last"
    return osp.join(folder, f"eval_{tag}")


@functools.lru_cache(maxsize=None)
def environment_report() -> str:
    """Dassl's ``collect_env_info`` (torch's report, which runs ``pip list`` and other commands:
    half a second), asked once per process: runs in one process (a notebook, the tests) share it."""
    return collect_env_info()


def did_you_mean(name: str, valid: Sequence[str]) -> str:
    """`` Did you mean 'X'?`` for the registered name closest to ``name``; "" for none close."""
    near = difflib.get_close_matches(name, valid, n=1)
    return f" Did you mean {near[0]!r}?" if near else ""


def check_trainer(name: str) -> None:
    valid = sorted(TRAINER_REGISTRY.registered_names())
    official = translate_trainer(name) if name not in valid else None
    if official:
        raise ConfigError(official)
    if name not in valid:
        hint = did_you_mean(name, valid)
        raise ConfigError(f"unknown trainer {name!r} (--trainer / TRAINER.NAME).{hint} "
                          f"Registered trainers: {valid}. See README.md#trainers.")


def check_dataset(name: str) -> None:
    """DATASET.NAME is registered (Dassl's own check raises a bare ValueError much later)."""
    from dassl.data.datasets import DATASET_REGISTRY

    valid = sorted(DATASET_REGISTRY.registered_names())
    if name in valid:
        return
    if not name:
        raise ConfigError("no dataset: give --dataset-config-file configs/datasets/<name>.yaml (a "
                          "benchmark such as toy or general10, or one dataset), or DATASET.NAME. "
                          "See DATASETS.md.")
    benchmark = osp.join("configs", "datasets", f"{name.lower().replace('-', '')}.yaml")
    if osp.isfile(osp.join(osp.dirname(osp.abspath(__file__)), benchmark)):
        hint = f" For the benchmark, give --dataset-config-file {benchmark} (it sets DATASET.NAME)."
    else:
        hint = did_you_mean(name, valid)
    raise ConfigError(f"unknown dataset {name!r} (DATASET.NAME).{hint} Registered datasets: {valid}. "
                      "See DATASETS.md.")


def print_args(args: argparse.Namespace, cfg) -> None:
    print("***************\n** Arguments **\n***************")
    for key in sorted(vars(args)):
        print(f"{key}: {getattr(args, key)}")
    print("************\n** Config **\n************")
    print(cfg)


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--help-config" in argv:  # every valid key with its default
        print(help_config())
        return
    if CHECK_FINISHED in argv:  # a trainer module's own entry (python -m examples.my_trainer)
        code = check_finished_settings(argv)
        if code:
            sys.exit(code)
        return
    args = build_parser().parse_args(argv)
    # From here on a stop signal is only recorded; the run acts on it at its check points
    # (trainers/run/stops.py, docs/reliability.md#stops), the first once the log is open.
    with stops.handled():
        try:
            import_modules(args.imports)
            cfg = setup_cfg(args)
            check_trainer(cfg.TRAINER.NAME)
            check_dataset(cfg.DATASET.NAME)
            check_inputs = getattr(TRAINER_REGISTRY.get(cfg.TRAINER.NAME), "check_inputs", None)
            if check_inputs is not None:  # what needs torch to check (the backbone's name)
                check_inputs(cfg)
        except ConfigError as err:  # before log.txt is open: add it there all the same
            record_config_error(args, err)
            raise
        if cfg.SEED >= 0:
            set_random_seed(cfg.SEED)
        with storage_errors(cfg, args), owned(cfg.OUTPUT_DIR):
            logged_run(cfg, args)


def owned(folder: str):
    """The run folder's lock (trainers/run/run_folder.py), when there is a folder."""
    # a stop while it waits for another host's lock ends the wait (trainers/run/run_folder.py)
    return hold(folder, poll=stops.check) if folder else contextlib.nullcontext()


def logged_run(cfg, args: argparse.Namespace) -> None:
    """``run`` with stdout teed into log.txt, and the error or stop that ends it written there."""
    stdout = sys.stdout
    log = open_run_log(cfg.OUTPUT_DIR)  # tees stdout into OUTPUT_DIR/log.txt (appends)
    setup_logging()
    try:
        folders = [cfg.OUTPUT_DIR] if args.eval_only else [cfg.OUTPUT_DIR, cfg.RESUME]
        trainer_class = TRAINER_REGISTRY.get(cfg.TRAINER.NAME)
        resolved = getattr(trainer_class, "resolved_cfg", None)  # Dassl's own trainers have none
        check_settings(resolved(cfg) if resolved else cfg, folders)
        stops.check()
        run(cfg, args)
    except Stopped as err:
        err.where = stopped_where(cfg, args.eval_only)
        _record(log, str(err))
        raise
    except USER_ERRORS as err:  # the console gets it from __main__, the log here
        _record(log, f"error: {err}")
        raise
    except Exception as err:
        wrapped = as_storage_error(err, cfg)  # torch wraps a full disk in a RuntimeError
        if wrapped is None:
            _record(log, traceback.format_exc())
            raise
        _record(log, f"error: {wrapped}")
        raise wrapped from None
    finally:
        restore_stdout(stdout)


def _record(log, text: str) -> None:
    if log is None:
        return
    try:
        log.record(text)
    except OSError:  # the log's own file system may be the full one
        pass


@contextlib.contextmanager
def storage_errors(cfg, args: argparse.Namespace):
    """Storage faults before the log is open (the lock, log.txt itself): one line, no traceback."""
    try:
        yield
    except USER_ERRORS:
        raise
    except Exception as err:
        wrapped = as_storage_error(err, cfg)
        if wrapped is None:
            raise
        if args.eval_only or not osp.isdir(cfg.OUTPUT_DIR or "/nonexistent/"):
            raise wrapped from None
        try:  # the log could not be opened: add the line if the file system lets us
            append_to_log(cfg.OUTPUT_DIR, f"error: {wrapped}")
        except OSError:
            pass
        raise wrapped from None


def as_storage_error(err: BaseException, cfg) -> Optional[StorageError]:
    """A StorageError naming the path, what is wrong and the fix; None for other errors."""
    cause = ckpt_io.storage_cause(err)
    if cause is None or cause.errno not in STORAGE_ERRNOS:
        return None
    path = cause.filename or "?"
    flag = ""
    for option, folder in (("--output-dir", cfg.OUTPUT_DIR), ("--root", cfg.DATASET.ROOT)):
        if folder and osp.abspath(str(path)).startswith(osp.abspath(folder)):
            flag = f" (under {option} {folder})"
            break
    saved = last_saved(cfg)
    kept = (f"; the checkpoints written before are kept: once fixed, the same command resumes after "
            f"epoch {saved[0]}") if saved else ""
    return StorageError(cause.errno, f"cannot write or read {path}{flag}: {cause.strerror}; "
                        f"{STORAGE_ERRNOS[cause.errno]}{kept} (docs/reliability.md#guarantees)")


def last_saved(cfg) -> Optional[tuple[int, str]]:
    """(epoch, file) of the newest epoch checkpoint in the output folder, if any."""
    folder = osp.join(cfg.OUTPUT_DIR, ckpt_io.HEAD_NAME) if cfg.OUTPUT_DIR else ""
    epochs = ckpt_io.saved_epochs(folder) if folder else []
    return (epochs[-1], osp.join(folder, f"model.pth.tar-{epochs[-1]}")) if epochs else None


def stopped_where(cfg, eval_only: bool = False) -> str:
    """`` after epoch 3 of 50 (saved in ...): run the same command again to resume from epoch 3``."""
    if eval_only:
        return " before the evaluation finished: run the same command again to evaluate"
    saved = last_saved(cfg)
    if saved is None:
        return " before the first epoch was saved: run the same command again to start it from epoch 1"
    return (f" after epoch {saved[0]} of {cfg.OPTIM.MAX_EPOCH} (saved in {saved[1]}): run the same "
            f"command again to resume from epoch {saved[0]}")


def run(cfg, args: argparse.Namespace) -> None:
    if torch.cuda.is_available() and cfg.USE_CUDA:
        torch.backends.cudnn.benchmark = True
    print_args(args, cfg)
    print("Collecting env info ...")
    print(f"** System info **\n{environment_report()}\n")

    trainer = build_trainer(cfg)
    stops.check()
    single_task.adopt(trainer, cfg)  # a trainer of one softmax: one task, or refused
    if args.eval_only:
        print(f"Evaluation only: results go to {cfg.OUTPUT_DIR}")
        trainer.load_model(args.model_dir, epoch=args.load_epoch)
        trainer.test()
    elif not args.no_train:
        trainer.train()
    single_task.record_results(trainer, cfg, (args.load_epoch or 0) - 1 if args.eval_only else None)
    # A stop received before the done marker ends the run unfinished (the same command
    # evaluates again), never half-finished; one received after it is too late to matter.
    stops.check()
    if cfg.OUTPUT_DIR and (args.eval_only or not args.no_train):
        # Written last: a sweep skips a run only when this file exists.
        atomic_write(osp.join(cfg.OUTPUT_DIR, DONE_MARKER), "finished\n")


def cli(argv: Optional[Sequence[str]] = None) -> None:
    """``python train.py``: ``main``, its user errors and stops one line on stderr, then the
    exit code (0; 1 for an error; 128 + signum for a stop), as ``SystemExit``."""
    try:
        main(argv)
    except USER_ERRORS as err:  # messages that say what to fix: no traceback
        sys.exit(f"error: {err}")
    except Stopped as err:
        print(err, file=sys.stderr)
        sys.exit(err.code)
    sys.exit(0)


if __name__ == "__main__":
    # What the imports made lives as long as the process: kept out of the garbage collector's
    # passes, they cost nothing in training's collections or at exit (1.3 s a run here).
    gc.freeze()
    cli()
