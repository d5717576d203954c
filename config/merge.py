"""Merge config files and ``KEY VALUE`` options into a config, with messages a user can act on.

The merge follows yacs's rules (values decoded as Python literals, unknown keys
refused, a value must have its default's type) but reports every bad input as a
``ConfigError`` naming the source, the key, the type expected and the value given,
instead of yacs's bare ``KeyError`` / "Type mismatch" / YAML traceback. One
coercion is added: an integer where the default is a float (``OPTIM.LR 1``,
``CLS_SAMPLE_RATE 2``) is taken as that float, so a range error, if any, reads the
same for ``2`` and ``2.0``.
"""
from __future__ import annotations

import difflib
import os
from typing import Any, Sequence

import yaml
from yacs.config import CfgNode as CN

from config import ConfigError
from config.official import official_file_keys, translate_key

HELP = "see docs/troubleshooting.md#configuration; `python train.py --help-config` lists every key"


def merge_file(cfg: CN, path: str, flag: str) -> None:
    """Merge the YAML file ``path`` (given by ``flag``, e.g. ``--config-file``) into ``cfg``."""
    data = load_yaml(path, flag)
    official = official_file_keys(data)
    if official:  # a config of the official SoftCPT code: every key it needs translated, at once
        raise ConfigError(f"{flag} {path} is written for the official SoftCPT code: "
                          + "; ".join(official))
    _merge_tree(cfg, cfg, data, path, "")


def merge_list(cfg: CN, opts: Sequence[str], source: str = "command line") -> None:
    """Merge ``KEY VALUE`` pairs (``train.py``'s trailing options) into ``cfg``."""
    if len(opts) % 2:
        raise ConfigError(f"{source}: options come in KEY VALUE pairs; {opts[-1]!r} has no "
                          f"value ({HELP}).")
    for key, raw in zip(opts[0::2], opts[1::2]):
        official = translate_key(key, CN._decode_cfg_value(raw))
        if official:
            raise ConfigError(f"{source}: {official}")
        *parents, last = key.split(".")
        node = cfg
        for part in parents:
            if not isinstance(node, CN) or part not in node:
                raise unknown_key(cfg, key, source)
            node = node[part]
        if not isinstance(node, CN) or (last not in node and not node.is_new_allowed()):
            raise unknown_key(cfg, key, source)
        if isinstance(node.get(last), CN):
            raise ConfigError(f"{source}: {key} is a group of keys ({sorted(node[last])}); set one "
                              f"of them, e.g. {key}.{sorted(node[last])[0]} VALUE ({HELP}).")
        value = CN._decode_cfg_value(raw)
        node[last] = coerce(value, node[last], key, source) if last in node else value


def load_yaml(path: str, flag: str) -> dict:
    """The mapping in a YAML file; a missing file lists its folder, a syntax error
    names the file, line and column."""
    if not os.path.isfile(path):
        folder = os.path.dirname(path) or "."
        if os.path.isdir(folder):
            entries = sorted(os.listdir(folder))
            files = [f for f in entries if f.endswith((".yaml", ".yml"))]
            dirs = [f + "/" for f in entries if os.path.isdir(os.path.join(folder, f))]
            there = f"files in {folder}/: {', '.join(files)}" if files else \
                f"{folder}/ has no .yaml file; folders: {', '.join(dirs) or 'none'}"
        else:
            there = f"the folder {folder}/ does not exist either"
        raise ConfigError(f"{flag} {path}: no such file ({there}).")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as err:  # an image, a checkpoint, an archive given by mistake
        raise ConfigError(f"{flag} {path}: not a text file (byte {err.object[err.start]:#04x} at "
                          f"offset {err.start} is not UTF-8); allowed: a YAML file of config keys, "
                          f"e.g. one in configs/trainers/ ({HELP}).") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{flag} {path}: YAML syntax error{where}: {problem}. Check the "
                          "indentation, colons, brackets and quotes there.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{flag} {path}: expected a mapping of config keys (KEY: value), "
                          f"found a {type(data).__name__}.")
    return data


def _merge_tree(root: CN, node: CN, data: dict, source: str, prefix: str) -> None:
    """yacs's recursive merge of a file's mapping into ``node`` (at ``prefix`` in ``root``)."""
    for key, raw in data.items():
        full = f"{prefix}{key}"
        if key not in node:
            if node.is_new_allowed():
                node[key] = CN._decode_cfg_value(raw)
                continue
            raise unknown_key(root, full, source)
        current = node[key]
        if isinstance(current, CN):
            if not isinstance(raw, dict):
                raise ConfigError(f"{source}: {full} is a group of keys ({sorted(current)}), "
                                  f"not a value; got {raw!r} ({HELP}).")
            _merge_tree(root, current, raw, source, full + ".")
            continue
        node[key] = coerce(CN._decode_cfg_value(raw), current, full, source)


def coerce(value: Any, default: Any, key: str, source: str) -> Any:
    """``value`` checked against the type of ``default`` (yacs's rule, plus int -> float)."""
    if default is None or value is None or type(value) is type(default):
        return value
    if isinstance(default, float) and type(value) is int:
        return float(value)
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return type(default)(value)
    hint = ""
    if isinstance(default, str) and source == "command line":
        hint = f" On the command line quote it twice to keep it a string: {key} \"'{value}'\"."
    raise ConfigError(f"{source}: {key} expects {describe_type(default)} (default {default!r}); "
                      f"got {value!r}, {describe_type(value)}.{hint} ({HELP})")


def describe_type(value: Any) -> str:
    """``a number (float)``, ``an integer``, ... in words."""
    if isinstance(value, bool):
        return "True or False"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number (float)"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def unknown_key(cfg: CN, key: str, source: str) -> ConfigError:
    """An unknown key with the closest valid names."""
    near = difflib.get_close_matches(key, all_keys(cfg), n=5, cutoff=0.6)
    hint = f" Did you mean one of {near}?" if near else ""
    return ConfigError(f"{source}: unknown config key {key!r}.{hint} Valid keys are those printed "
                       "by `python train.py --help-config`; see README.md#configuration.")


def all_keys(node: CN, prefix: str = "") -> list[str]:
    """Every leaf key under ``node``, dotted."""
    out = []
    for k, v in node.items():
        full = f"{prefix}{k}"
        out.extend(all_keys(v, full + ".") if isinstance(v, dict) else [full])
    return out
