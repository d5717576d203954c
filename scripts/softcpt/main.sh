#!/bin/bash
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"  # run with sh: bash runs it (written for bash)
# SoftCPT over shots and seeds, then the results table of the benchmark.
#
#   bash scripts/softcpt/main.sh [BENCHMARK] [CFG] [VARIANT] [KEY VALUE ...]
#
#   BENCHMARK  configs/datasets/<BENCHMARK>.yaml: toy (default), general10, plant6, fashion20, rs8, ...
#   CFG        configs/trainers/SoftCPT/<CFG>.yaml: tiny (default), rn50_ep50, vit_b16_ep50, ...
#   VARIANT    NATA (default), NATS, CATA, CATS, CSTA, CSTS
#   KEY VALUE  more config options for every run; they name the run folders, e.g.
#              OPTIM.LR 0.001 -> rn50_ep50_16shots_OPTIM.LR-0.001 (scripts/common.sh, options_tag)
#
# Environment: SHOTS (default "1 2 4 8 16"), SEEDS (default "1 2 3"), DATA (./data),
# OUTPUT (output), PYTHON (python), SKIP_SETUP=1 to skip scripts/setup.sh; GPUS / JOBS
# (runs at a time) and LAUNCHER=slurm with SLURM_ARGS: docs/clusters.md.
# Runs: $OUTPUT/<BENCHMARK>/SoftCPT/<VARIANT>/<CFG>_<K>shots[_<KEY>-<VALUE>...]/seed<S>.
# With no arguments: the toy benchmark on the tiny backbone, 15 runs, a few minutes on CPU.
cd "$(dirname "$0")/../.." || exit 1
if [ -f scripts/setup.sh ] && [ "${SKIP_SETUP:-0}" != 1 ]; then
    bash scripts/setup.sh || { echo "[sweep] scripts/setup.sh failed" >&2; exit 1; }
fi
source scripts/common.sh
official_form softcpt "$0" "$@"

BENCHMARK=${1:-toy}
CFG=${2:-tiny}
VARIANT=${3:-NATA}
shift $(($# < 3 ? $# : 3))
SHOTS=${SHOTS:-"1 2 4 8 16"}
SEEDS=${SEEDS:-"1 2 3"}

sweep SoftCPT "$CFG" "$OUTPUT/$BENCHMARK/SoftCPT/$VARIANT/${CFG}_{shots}shots$(options_tag "$@")/seed{seed}" \
    TRAINER.SOFTCPT.VARIANT "$VARIANT" "$@"
sweep_finish "$OUTPUT/$BENCHMARK"
