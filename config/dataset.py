"""The DATASET.* keys this project adds to Dassl's defaults.

``add_dataset_config(cfg)`` is a config hook: ``config.extend_cfg`` calls it on
``dassl.config.get_cfg_default()`` before any merge, and datasets/multitask.py
(for each member) and the tests call it directly. Every key has a default, so
yacs still rejects a misspelt key. Calling it twice is harmless: keys that exist
are left as they are. Named for the DATASET node (not ``datasets``, the package
that builds them).
"""
from __future__ import annotations

from yacs.config import CfgNode as CN

from config import register_config_hook

# Sub-nodes that describe one member; MultiTask resets them to these defaults
# before applying a member's own options, so top-level values never leak in.
MEMBER_NODES = ("IMAGE_FOLDER", "FASHION20", "MULTITASK")


@register_config_hook
def add_dataset_config(cfg: CN) -> None:
    """Add the dataset keys to ``cfg`` (a Dassl default config)."""
    d = cfg.DATASET
    # Shots per class drawn from the training split; 0 = the whole training set.
    # Dassl's default -1 means the same, but a negative value is refused here
    # (config.check_values), so the default becomes 0.
    if d.get("NUM_SHOTS") == -1:
        d.NUM_SHOTS = 0
    # CoOp's base-to-new split, applied after the few-shot draw and, in a
    # multi-task dataset, inside each task: "all" (every class), "base" (first
    # ceil(K/2) labels) or "new" (the rest, relabelled from 0). DATASETS.md#base-to-new
    _set(d, "SUBSAMPLE_CLASSES", "all")
    # Tasks of a MultiTask dataset to keep, relabelled in the kept order: "all",
    # or one task or a comma-separated list, each a task index (0-based), KEY or
    # NAME, e.g. "OxfordPets", "0,3", "EuroSAT, texture recognition". A string,
    # because yacs fixes the type: on the command line quote a bare index,
    # DATASET.SUBSAMPLE_TASKS "'3'". DATASETS.md#selecting-tasks
    _set(d, "SUBSAMPLE_TASKS", "all")
    # Tasks of a MultiTask dataset to leave out (after SUBSAMPLE_TASKS), same values; "" none.
    # The task-transfer protocol trains with one task held out (docs/method.md#task-transfer).
    _set(d, "HOLD_OUT_TASKS", "")
    _set(d, "MULTITASK", multitask_node())
    _set(d, "IMAGE_FOLDER", image_folder_node())
    _set(d, "FASHION20", fashion20_node())


def multitask_node() -> CN:
    node = CN()
    # Members of a MultiTask dataset (DATASET.NAME "MultiTask"), in task order;
    # task 0's classes get the first global labels. Each entry is a mapping:
    #   MEMBER: registered dataset name (e.g. "OxfordPets"); "ImageFolder" if omitted
    #           and IMAGE_FOLDER is given
    #   KEY: short unique id used in tables (default: MEMBER, or IMAGE_FOLDER.DIR)
    #   NAME: task name fed to the prompt (default: the member's, e.g. "pet breed recognition")
    #   METRIC: "overall_acc" or "mean_acc" (default: the member's)
    #   TEMPLATE: zero-shot template with one {} (default: the member's)
    #   IMAGE_FOLDER: DATASET.IMAGE_FOLDER keys for an ImageFolder member
    #   OPTIONS: any other DATASET.* keys for this member only (e.g. {FASHION20: {TASK: 3}})
    # DATASETS.md#your-own-benchmark
    node.TASKS = []
    return node


def image_folder_node() -> CN:
    node = CN()
    # Folder holding the class folders, relative to DATASET.ROOT ($DATA) or absolute.
    # The split file and the few-shot cache (split_fewshot/) are written here too.
    node.DIR = ""
    # Split sub-folders of a download whose class folders are pooled, e.g.
    # ["train", "test", "validation"]; [] = class folders directly under DIR.
    node.SUBDIRS = []
    # Class folders to leave out (e.g. a background class).
    node.IGNORE = []
    # Class name per folder name, {folder: name}; unlisted folders get the folder
    # name with "_" and CamelCase turned into lower-case words.
    node.CLASSNAMES = CN(new_allowed=True)
    # Fractions of each class (of each sub-folder) for train, val and test; sum 1, train > 0.
    node.SPLIT_RATIOS = (0.5, 0.2, 0.3)
    # Name of the split file in DIR: read if present, else written once (deterministic).
    # Delete it (and split_fewshot/) to re-split after changing the folder or SPLIT_RATIOS.
    node.SPLIT_FILE = "split_imagefolder.json"
    # Built-in generator that writes DIR when it is missing: "" (none), "toy_shapes",
    # "toy_colours" or "toy_stripes" (datasets/toy.py).
    node.GENERATE = ""
    # DATASETS.md section that error messages point to.
    node.DOCS = "image-folders"
    return node


def fashion20_node() -> CN:
    node = CN()
    # Fashion-20 task id (0-19, row of fashion20/task_info.csv) built by DATASET.NAME "Fashion20".
    node.TASK = 0
    return node


def _set(node: CN, key: str, value) -> None:
    if key not in node:
        node[key] = value
