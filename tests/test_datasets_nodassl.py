"""The parts of ``datasets`` and ``trainers`` that must work without Dassl."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_task_info_config_and_toy_import_without_dassl():
    """With Dassl missing, ``import datasets`` registers nothing and fails nothing."""
    code = ("import sys; sys.modules['dassl'] = None\n"
            "import datasets, datasets.task_info, config.dataset, datasets.toy\n"
            "assert 'datasets.multitask' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_trainers_dassl_free_parts_import_without_dassl():
    """With Dassl missing, ``import trainers`` registers nothing and fails nothing, and the
    Dassl-free parts (trainers/parts/, trainers/run/) import under their own paths."""
    code = ("import sys; sys.modules['dassl'] = None\n"
            "import trainers\n"
            "from trainers.parts import backbone, prompt, text_encoder, losses, feature_cache\n"
            "from trainers.run import schedule, checkpoint, run_folder, logs, stops\n"
            "assert 'trainers.coop' not in sys.modules and 'trainers.parts.base' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_toy_generation_is_quick_and_deterministic(tmp_path):
    from datasets import toy
    for run in ("a", "b"):
        toy.generate("stripes", str(tmp_path / run / "stripes"))
    a = sorted(p.read_bytes() for p in (tmp_path / "a").rglob("*.png"))
    b = sorted(p.read_bytes() for p in (tmp_path / "b").rglob("*.png"))
    assert a == b and len(a) == len(toy.STRIPES) * toy.PER_CLASS
