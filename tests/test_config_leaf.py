"""The config is a leaf: ``config/`` imports only yacs, yaml and the standard library,
every key family registers itself through ``register_config_hook``, and
``python train.py --help-config`` answers without torch, Dassl's engine or the trainers.

The two subprocess tests run a Python without torch (about 0.3 s each), so they stay in
the fast tier.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("dassl", reason="Dassl is not installed")

from dassl.config import get_cfg_default  # noqa: E402
from yacs.config import CfgNode as CN  # noqa: E402

import config  # noqa: E402
import train  # noqa: E402
import trainers  # noqa: E402,F401  (the trainers import their config modules, as in a run)
from config import ConfigError  # noqa: E402
from config.merge import merge_list  # noqa: E402
from config.cocoop import check_cocoop_cfg  # noqa: E402
from config.coop import check_coop_cfg  # noqa: E402
from config.softcpt import check_softcpt_cfg, resolve_variant  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# What a torch-free Python must not import: None in sys.modules makes `import x` fail.
HEAVY = ("torch", "open_clip", "dassl.engine", "dassl.data", "trainers", "datasets")
ALLOWED_IMPORTS = {"__future__", "yacs", "yaml", "config"}


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def full_dump() -> str:
    """The key dump of this process, where torch and every trainer are imported."""
    cfg = get_cfg_default()
    config.extend_cfg(cfg)
    return cfg.dump()


def test_help_config_runs_without_torch_and_lists_every_key():
    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in HEAVY)
    done = run_python(f"import runpy, sys; {blocked}; sys.argv = ['train.py', '--help-config']; "
                      "runpy.run_path('train.py', run_name='__main__')")
    assert done.returncode == 0, done.stderr
    assert done.stdout == full_dump() + "\n"
    keys = yaml.safe_load(done.stdout)
    trainer, dataset = keys["TRAINER"], keys["DATASET"]
    # Defaults as README.md#trainers and DATASETS.md give them.
    assert (trainer["SOFTCPT"]["N_CTX"], trainer["SOFTCPT"]["VARIANT"]) == (16, "NATA")
    assert (trainer["COOP"]["N_CTX"], trainer["COOP"]["SHARING"]) == (16, "task")
    assert trainer["COCOOP"]["N_CTX"] == 16 and trainer["ZSCLIP"]["PREC"] == "fp16"
    assert trainer["LINEAR_PROBE"]["MAX_ITER"] == 1000
    assert dataset["MULTITASK"]["TASKS"] == [] and dataset["SUBSAMPLE_TASKS"] == "all"
    assert keys["TEST"]["EVALUATOR"] == "MultiTaskClassification"


def test_importing_config_imports_no_torch_engine_trainer_or_dataset():
    code = ("import sys\nimport config, config.merge, config.run_settings\n"
            f"heavy = {HEAVY!r}\n"
            "below = tuple(h + '.' for h in heavy)\n"
            "print(sorted(m for m in sys.modules if m in heavy or m.startswith(below)))")
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_config_modules_import_only_yacs_yaml_and_the_standard_library():
    """Also imports inside functions: a lazy ``import torch`` would tie the config to it again."""
    found = []
    for path in sorted((REPO / "config").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            else:
                continue
            found += [f"{path.name}: {n}" for n in names
                      if n.split(".")[0] not in ALLOWED_IMPORTS | sys.stdlib_module_names]
    assert found == []


@pytest.fixture
def hooks(monkeypatch):
    """The registered hooks, restored after the test (a hook registered here must not leak)."""
    monkeypatch.setattr(config, "_HOOKS", list(config._HOOKS))


def test_an_out_of_tree_hook_is_called_once_after_the_in_tree_ones(hooks, capsys):
    calls = []

    @config.register_config_hook
    def add_mine(cfg: CN) -> None:
        calls.append("SOFTCPT" in cfg.TRAINER)  # the in-tree nodes exist already
        cfg.TRAINER.MINE = CN()
        config.add_prompt_keys(cfg.TRAINER.MINE)
        cfg.TRAINER.MINE.N_CTX = 3

    assert config.register_config_hook(add_mine) is add_mine  # the module imported twice
    cfg = get_cfg_default()
    config.extend_cfg(cfg)
    assert calls == [True]
    assert (cfg.TRAINER.MINE.N_CTX, cfg.TRAINER.MINE.STEPS_PER_BATCH) == (3, 1)
    train.main(["--help-config"])  # what `python -m examples.my_trainer --help-config` runs
    assert yaml.safe_load(capsys.readouterr().out)["TRAINER"]["MINE"]["N_CTX"] == 3


# ---------------------------------------------------- N_CTX and STEPS_PER_BATCH messages
def parse(*opts: str) -> CN:
    return train.setup_cfg(train.build_parser().parse_args(list(opts)))


def merged(*opts: str) -> CN:
    """The config with ``opts`` merged and no value checked (``parse`` checks them all)."""
    cfg = get_cfg_default()
    config.extend_cfg(cfg)
    merge_list(cfg, list(opts))
    return cfg


FAMILIES = [  # (node, its check on a merged config)
    ("SOFTCPT", lambda cfg: check_softcpt_cfg(resolve_variant(cfg).TRAINER.SOFTCPT)),
    ("COOP", lambda cfg: check_coop_cfg(cfg.TRAINER.COOP)),
    ("COCOOP", lambda cfg: check_cocoop_cfg(cfg.TRAINER.COCOOP)),
]


@pytest.mark.parametrize("name, check", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_n_ctx_reads_the_same_for_every_trainer(name, check):
    cfg = merged(f"TRAINER.{name}.N_CTX", "0")
    with pytest.raises(ConfigError) as info:
        check(cfg)
    assert str(info.value) == f"TRAINER.{name}.N_CTX is 0; allowed: an integer >= 1."
    with pytest.raises(ConfigError) as info:  # train.py's check of every value, before torch
        parse(f"TRAINER.{name}.N_CTX", "0")
    assert str(info.value) == f"TRAINER.{name}.N_CTX is 0; allowed: an integer >= 1."
    cfg.defrost()
    cfg.TRAINER[name].N_CTX = True  # not through the merge, which refuses a bool for an integer
    with pytest.raises(ConfigError, match=rf"^TRAINER\.{name}\.N_CTX is True; allowed: an integer >= 1\.$"):
        check(cfg)


@pytest.mark.parametrize("name", ["COOP", "COCOOP"])
def test_n_ctx_is_not_checked_when_ctx_init_sets_it(name):
    check = dict(FAMILIES)[name]
    check(parse(f"TRAINER.{name}.N_CTX", "0", f"TRAINER.{name}.CTX_INIT", "a photo of a"))


@pytest.mark.parametrize("name", ["SOFTCPT", "COOP", "COCOOP", "ZSCLIP"])
def test_steps_per_batch_is_refused_before_any_trainer_is_built(name):
    with pytest.raises(ConfigError) as info:
        parse(f"TRAINER.{name}.STEPS_PER_BATCH", "0")
    assert str(info.value) == f"TRAINER.{name}.STEPS_PER_BATCH is 0; allowed: an integer >= 1."


@pytest.mark.parametrize("name, check", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_a_trainer_built_without_train_py_still_checks_steps_per_batch(name, check):
    cfg = parse()
    cfg.defrost()
    cfg.TRAINER[name].STEPS_PER_BATCH = 0
    with pytest.raises(ConfigError) as info:
        check(cfg)
    assert str(info.value) == f"TRAINER.{name}.STEPS_PER_BATCH is 0; allowed: an integer >= 1."
