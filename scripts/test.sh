#!/usr/bin/env bash
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"  # run with sh: bash runs it (written for bash)
# The test command of README.md: set up on first use, then run the suite.
#   bash scripts/test.sh [PYTEST ARGS]
# Tests run in TEST_WORKERS processes (pytest-xdist; default: the cores nproc reports, at
# most 4; 1 runs them in this process). The Slurm tests share one local cluster, so they
# stay together on one worker (--dist loadgroup, xdist_group "slurm").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=${PYTHON:-python3}
cores=$(nproc)
workers=${TEST_WORKERS:-$(( cores < 4 ? cores : 4 ))}
if ! [[ "$workers" =~ ^[0-9]+$ ]] || [ "$workers" -lt 1 ]; then
    echo "[test] error: TEST_WORKERS is '$workers'; give a number of processes, 1 or more" >&2
    exit 2
fi
if [ "$workers" -gt 1 ]; then
    exec "$PY" -m pytest -n "$workers" --dist loadgroup "$@"
fi
exec "$PY" -m pytest "$@"
