"""``MultiTask``: several datasets as one, each a task, configured by a YAML list.

Global labels follow task order (task 0's classes first), so a sample's task
is ``TaskInfo.task_of_label(label)``; ``Datum.domain`` holds the task index as
well, so ``batch["domain"]`` carries it without changing Dassl. Each member is
the registered dataset built from a copy of the config with
``DATASET.NAME = MEMBER``, so its few-shot draw, cache and base/new split are
exactly those it has when built alone.
"""
from __future__ import annotations

import copy
import difflib
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional, Sequence

from dassl.data.datasets import DATASET_REGISTRY, DatasetBase, Datum
from yacs.config import CfgNode as CN

from config.dataset import MEMBER_NODES, add_dataset_config

from .errors import DatasetError
from .task_info import METRICS, TaskInfo, task_info_of

logger = logging.getLogger(__name__)

SECTION = "your-own-benchmark"
ENTRY_KEYS = ("MEMBER", "KEY", "NAME", "METRIC", "TEMPLATE", "IMAGE_FOLDER", "OPTIONS")


@dataclass(frozen=True)
class TaskEntry:
    """One validated entry of ``DATASET.MULTITASK.TASKS``."""

    index: int
    member: str
    key: str  # given KEY, else MEMBER (or IMAGE_FOLDER.DIR)
    given_key: str = ""
    given_name: str = ""
    default_name: str = ""  # the member class's task name, when known before building
    metric: str = ""
    template: str = ""
    options: dict = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"DATASET.MULTITASK.TASKS[{self.index}]"

    @property
    def name(self) -> str:
        return self.given_name or self.default_name


def parse_entries(tasks: Sequence) -> list[TaskEntry]:
    """Validate every entry, before anything is built or written."""
    if not tasks:
        raise DatasetError("DATASET.MULTITASK.TASKS is empty: list the member datasets", SECTION)
    entries = [_parse_entry(i, raw) for i, raw in enumerate(tasks)]
    _check_unique([(e.index, e.key) for e in entries], "KEY")
    _check_unique([(e.index, e.name) for e in entries], "NAME")
    return entries


def _parse_entry(i: int, raw) -> TaskEntry:
    where = f"DATASET.MULTITASK.TASKS[{i}]"
    if not isinstance(raw, dict):
        raise DatasetError(f"{where} is {raw!r}: each task is a mapping with keys {ENTRY_KEYS}", SECTION)
    unknown = sorted(set(raw) - set(ENTRY_KEYS))
    if unknown:
        raise DatasetError(f"{where} has unknown keys {unknown}; valid: {ENTRY_KEYS}", SECTION)
    if not isinstance(raw.get("OPTIONS") or {}, dict):
        raise DatasetError(f"{where}.OPTIONS must be a mapping of DATASET.* keys", SECTION)
    options = copy.deepcopy(dict(raw.get("OPTIONS") or {}))
    folder = raw.get("IMAGE_FOLDER")
    member = raw.get("MEMBER") or ("ImageFolder" if folder else "")
    _check_member(where, member)
    if folder:
        if member != "ImageFolder" or "IMAGE_FOLDER" in options:
            raise DatasetError(f"{where}: IMAGE_FOLDER is for MEMBER ImageFolder, given once", SECTION)
        options["IMAGE_FOLDER"] = copy.deepcopy(dict(folder))
    metric, template = raw.get("METRIC", ""), raw.get("TEMPLATE", "")
    if metric and metric not in METRICS:
        raise DatasetError(f"{where}.METRIC is {metric!r}; valid: {METRICS}", SECTION)
    if template and template.count("{}") != 1:
        raise DatasetError(f"{where}.TEMPLATE {template!r} needs exactly one {{}}", SECTION)
    default_key = str((options.get("IMAGE_FOLDER") or {}).get("DIR", "")).rstrip("/") or member
    given_key, given_name = str(raw.get("KEY", "")), str(raw.get("NAME", ""))
    return TaskEntry(i, member, given_key or default_key, given_key, given_name,
                     getattr(DATASET_REGISTRY.get(member), "task_name", ""), metric, template, options)


def _check_member(where: str, member: str) -> None:
    names = sorted(n for n in DATASET_REGISTRY.registered_names() if n != "MultiTask")
    if not member:
        raise DatasetError(f"{where} needs MEMBER (a registered dataset) or IMAGE_FOLDER", SECTION)
    if member not in names:
        close = difflib.get_close_matches(member, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise DatasetError(f"{where}.MEMBER {member!r} is not a registered dataset{hint}; "
                           f"valid: {names}", SECTION)


def _check_unique(values: Sequence[tuple[int, str]], what: str) -> None:
    """Fail on two tasks with the same KEY or NAME; ``values`` are (entry index, value), "" = unknown yet."""
    seen: dict[str, int] = {}
    for index, value in values:
        if value and value in seen:
            raise DatasetError(f"DATASET.MULTITASK.TASKS[{seen[value]}] and [{index}] have the same "
                               f"task {what} {value!r}; give each task a distinct {what}", SECTION)
        seen[value] = index


def select_tasks(entries: list[TaskEntry], selector, key: str = "DATASET.SUBSAMPLE_TASKS") -> list[TaskEntry]:
    """``DATASET.SUBSAMPLE_TASKS``: every task, or those named by index, KEY or NAME (benchmark order)."""
    tokens = _tokens(selector)
    if tokens == ["all"]:
        return entries
    chosen: set[int] = set()
    for token in tokens:
        if token.lstrip("-").isdigit():
            if not 0 <= int(token) < len(entries):
                raise DatasetError(f"{key}: task index {token} is not in "
                                   f"0..{len(entries) - 1}", "selecting-tasks")
            chosen.add(int(token))
            continue
        hits = {e.index for e in entries if token in (e.key, e.name, e.member)}
        if len(hits) != 1:
            valid = [f"{e.index}: {e.key}" + (f" / {e.name}" if e.name else "") for e in entries]
            problem = "matches no task" if not hits else f"matches tasks {sorted(hits)}"
            raise DatasetError(f"{key}: {token!r} {problem}; give an index, KEY or "
                               f"NAME of one task: {valid}", "selecting-tasks")
        chosen |= hits
    return [e for e in entries if e.index in chosen]


def hold_out_tasks(entries: list[TaskEntry], selector) -> list[TaskEntry]:
    """``DATASET.HOLD_OUT_TASKS``: ``entries`` without the tasks named (index, KEY or NAME)."""
    if (isinstance(selector, str) and not selector.strip()) or (isinstance(selector, (list, tuple))
                                                                 and not selector):
        return entries
    if _tokens(selector) == ["all"]:
        raise DatasetError("DATASET.HOLD_OUT_TASKS 'all' would hold out every task; name the tasks "
                           "to leave out", "selecting-tasks")
    held = {e.index for e in select_tasks(entries, selector, "DATASET.HOLD_OUT_TASKS")}
    kept = [e for e in entries if e.index not in held]
    if not kept:
        raise DatasetError(f"DATASET.HOLD_OUT_TASKS {selector!r} holds out every selected task; keep "
                           "at least one to train on", "selecting-tasks")
    return kept


def _tokens(selector) -> list[str]:
    if isinstance(selector, (list, tuple)):
        return [str(s).strip() for s in selector]
    return [s.strip() for s in str(selector).split(",") if s.strip()] or ["all"]


def member_cfg(cfg: CN, entry: TaskEntry) -> CN:
    """The config a member is built from: ``cfg`` with DATASET.NAME = MEMBER and its own options."""
    out = cfg.clone()
    out.defrost()
    fresh = CN({"DATASET": CN()})
    add_dataset_config(fresh)
    for node in MEMBER_NODES:  # top-level image-folder etc. settings must not leak into members
        out.DATASET[node] = fresh.DATASET[node]
    out.DATASET.SUBSAMPLE_TASKS = "all"
    out.DATASET.HOLD_OUT_TASKS = ""
    out.DATASET.NAME = entry.member
    try:
        out.merge_from_other_cfg(CN({"DATASET": entry.options}))
    except (KeyError, ValueError) as err:
        raise DatasetError(f"{entry.where} options: {err}", SECTION) from None
    out.freeze()
    return out


def preflight(entry: TaskEntry, cfg: CN) -> None:
    """The member class's cheap checks (folders, split files), if it has any."""
    check = getattr(DATASET_REGISTRY.get(entry.member), "preflight", None)
    if check is not None:
        with _in_task(entry):
            check(cfg)


def build_member(entry: TaskEntry, cfg: CN) -> DatasetBase:
    with _in_task(entry):
        return DATASET_REGISTRY.get(entry.member)(cfg)


@contextmanager
def _in_task(entry: TaskEntry):
    """Prefix a member's DatasetError with the entry it comes from."""
    try:
        yield
    except DatasetError as err:
        raise DatasetError(f"{entry.where} ({entry.key}): {err.message}", err.section) from None


def task_info(entries: Sequence[TaskEntry], members: Sequence[DatasetBase]) -> TaskInfo:
    """Per-task facts: the entry's values where given, else the member's own."""
    keys, names, classnames, metrics, templates = [], [], [], [], []
    for e, m in zip(entries, members):
        own = task_info_of(m, e.member)
        if len(m.classnames) != m.num_classes:
            raise DatasetError(f"{e.where} ({e.key}): some labels below {m.num_classes} have no training "
                               "image, so classes cannot be named", SECTION)
        check_labels_in_range(e, m)
        keys.append(e.given_key or own.keys[0])
        names.append(e.given_name or own.names[0])
        classnames.append(tuple(m.classnames))
        metrics.append(e.metric or own.metrics[0])
        templates.append(e.template or own.templates[0])
    indices = [e.index for e in entries]
    _check_unique(list(zip(indices, keys)), "KEY")  # defaults known only now (e.g. Fashion-20's table)
    _check_unique(list(zip(indices, names)), "NAME")
    return TaskInfo(tuple(keys), tuple(names), tuple(classnames), tuple(metrics), tuple(templates))


def check_labels_in_range(entry: TaskEntry, member: DatasetBase) -> None:
    """Every image's label within its task's classes: merged with the task's offset, a label
    beyond them would name a class of the next task, and the image be scored there."""
    for split in ("train_x", "val", "test"):
        for d in getattr(member, split) or ():
            if not 0 <= d.label < member.num_classes:
                raise DatasetError(f"{entry.where} ({entry.key}): {split} image {d.impath} has label "
                                   f"{d.label}, outside the task's classes 0..{member.num_classes - 1}",
                                   SECTION)


def merge(splits: Sequence[Optional[list[Datum]]], offsets: Sequence[int]) -> list[Datum]:
    """One split of every task in task order: label += the task's offset, domain = task index."""
    return [Datum(d.impath, d.label + offsets[t], t, d.classname)
            for t, items in enumerate(splits) for d in items or ()]


@DATASET_REGISTRY.register()
class MultiTask(DatasetBase):
    """The members of ``DATASET.MULTITASK.TASKS`` as one dataset; ``self.task_info`` describes the tasks."""

    def __init__(self, cfg):
        entries = select_tasks(parse_entries(cfg.DATASET.MULTITASK.TASKS), cfg.DATASET.SUBSAMPLE_TASKS)
        entries = hold_out_tasks(entries, cfg.DATASET.get("HOLD_OUT_TASKS", ""))
        cfgs = [member_cfg(cfg, e) for e in entries]
        for e, c in zip(entries, cfgs):  # every cheap check before the first member writes a file
            preflight(e, c)
        members = [build_member(e, c) for e, c in zip(entries, cfgs)]
        info = task_info(entries, members)
        train, val, test = (merge([getattr(m, split) for m in members], info.offsets)
                            for split in ("train_x", "val", "test"))
        super().__init__(train_x=train, val=val or None, test=test)
        self.task_info = info
        for t, m in enumerate(members):
            logger.info("task %d %s (%s): %d classes, %d train, %d val, %d test, %s", t, info.keys[t],
                        info.names[t], info.num_classes[t], len(m.train_x), len(m.val or []),
                        len(m.test), info.metrics[t])
