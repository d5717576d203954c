#!/bin/bash
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"  # run with sh: bash runs it (written for bash)
# The checks that need a GPU, as one prepared run (under 10 minutes on one GPU) that
# writes one Markdown table: output/gpu_check/gpu_check.md (docs/speed.md#on-a-gpu).
#
#   bash scripts/bench/gpu_check.sh              # on a CUDA machine
#   bash scripts/bench/gpu_check.sh --dry-run    # its own logic on CPU at tiny size
#
# What it runs: scripts/bench/gpu_check.py's docstring. Exit status 0 when every row is ok.
# Environment: PYTHON (python), LIMIT (590: seconds before the whole run is stopped).
cd "$(dirname "$0")/../.." || exit 1
exec timeout "${LIMIT:-590}" "${PYTHON:-python}" scripts/bench/gpu_check.py "$@"
