"""The stand-in for ``python`` that the sweep scripts' tests give them as $PYTHON (fast, no Dassl).

It passes the sweep's pre-flight check at once (tests/test_setup.py tests the real one), says
``torch.cuda.device_count()`` is $CUDA_COUNT when that is set (scripts/parallel.sh asks it
without nvidia-smi), and hands anything but ``train.py`` to the real interpreter: the table
(scripts/results.py) without curves.png, whose matplotlib import took most of each sweep's
seconds (the real-run sweep in tests/test_scripts.py and tests/test_results.py draw it). For
``train.py --check-finished`` (the sweep's question before it skips a finished run) it answers
"same settings" at once (tests/test_sweep_settings.py runs the real one); for other calls of
``train.py`` it does what a run does, as told by the environment:

- $CALLS (when set): a line per run, its arguments as given;
- $RUNS (when set): a line per run, ``OUTPUT_DIR gpu=CUDA_VISIBLE_DEVICES threads=OMP_NUM_THREADS
  start=SECONDS``;
- prints ``training OUTPUT_DIR`` (the run's console);
- sleeps $SLEEP seconds (only for the runs of $SLOW_SHOTS shots when that is set);
- fails with exit code 3 for the seed $FAIL_SEED, writing ``boom`` to the console and log.txt;
- otherwise writes what a finished run leaves: results.json (score 50) and ``done``.
"""
from __future__ import annotations

import sys
from pathlib import Path

FAKE_PYTHON = """#!/bin/bash
if [ "$1" = -c ]; then
    case "$2" in
        "# sweep pre-flight"*) exit 0 ;;
        *device_count*) if [ -n "${{CUDA_COUNT:-}}" ]; then echo "$CUDA_COUNT"; exit 0; fi ;;
    esac
fi
if [ "$1" = scripts/results.py ]; then exec {python} "$@" --no-plot; fi
if [ "$1" != train.py ]; then exec {python} "$@"; fi
if [ "$2" = --check-finished ]; then exit 0; fi  # a finished run's settings: taken as the same
if [ -n "${{CALLS:-}}" ]; then echo "$*" >> "$CALLS"; fi
while [ $# -gt 0 ]; do
    case "$1" in --output-dir) out=$2 ;; --seed) seed=$2 ;; --trainer) trainer=$2 ;;
                 --config-file) config=$(basename "$2" .yaml) ;; DATASET.NUM_SHOTS) shots=$2 ;; esac
    shift
done
mkdir -p "$out"  # train.py's first act, as Dassl opens log.txt there
if [ -n "${{RUNS:-}}" ]; then
    echo "$out gpu=${{CUDA_VISIBLE_DEVICES:-none}} threads=${{OMP_NUM_THREADS:-none}} start=$(date +%s.%N)" >> "$RUNS"
fi
echo "training $out"
if [ -n "${{SLEEP:-}}" ] && {{ [ -z "${{SLOW_SHOTS:-}}" ] || [ "$shots" = "$SLOW_SHOTS" ]; }}; then
    sleep "$SLEEP"
fi
if [ -n "${{FAIL_SEED:-}}" ] && [ "$seed" = "$FAIL_SEED" ]; then echo "boom" | tee "$out/log.txt" >&2; exit 3; fi
echo '{{"score": 50.0, "trainer": "'$trainer'", "config": "'$config'", "seed": '$seed', "tasks": []}}' \\
    > "$out/results.json"
touch "$out/done"
"""


def fake_python(folder: Path) -> str:
    """Writes the stand-in as ``folder/python`` (executable) and returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    python = folder / "python"
    python.write_text(FAKE_PYTHON.format(python=sys.executable))
    python.chmod(0o755)
    return str(python)
