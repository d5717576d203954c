#!/bin/bash
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"  # run with sh: bash runs it (written for bash)
# CoCoOp per task, over shots and seeds, then the results table.
#
#   bash scripts/cocoop/main.sh [BENCHMARK] [CFG] [KEY VALUE ...]
#
#   BENCHMARK  configs/datasets/<BENCHMARK>.yaml (default toy)
#   CFG        configs/trainers/CoCoOp/<CFG>.yaml: tiny (default),
#              vit_b16_c4_ep10_batch1_ctxv1, rn50_c4_ep10_batch1_ctxv1
#
# Environment as scripts/softcpt/main.sh: SHOTS ("1 2 4 8 16"), SEEDS ("1 2 3"), DATA, OUTPUT.
# KEY VALUE options name the run folders, as in scripts/softcpt/main.sh.
# Runs: $OUTPUT/<BENCHMARK>/CoCoOp/<CFG>_<K>shots[_<KEY>-<VALUE>...]/seed<S>.
cd "$(dirname "$0")/../.." || exit 1
source scripts/common.sh
method_sweep CoCoOp "$@"
