#!/bin/bash
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"  # run with sh: bash runs it (written for bash)
# ProGrad per task (CoOp with the gradient projected against zero-shot CLIP's), over shots
# and seeds, then the results table.
#
#   bash scripts/prograd/main.sh [BENCHMARK] [CFG] [KEY VALUE ...]
#
#   BENCHMARK  configs/datasets/<BENCHMARK>.yaml (default toy)
#   CFG        configs/trainers/ProGrad/<CFG>.yaml: tiny (default), rn50_ep50, vit_b16_ep50
#   KEY VALUE  more options, e.g. TRAINER.PROGRAD.LAMBDA 0.8 (they name the run folders)
#
# Environment as scripts/softcpt/main.sh: SHOTS ("1 2 4 8 16"), SEEDS ("1 2 3"), DATA, OUTPUT.
# Runs: $OUTPUT/<BENCHMARK>/ProGrad/<CFG>_<K>shots[_<KEY>-<VALUE>...]/seed<S>.
cd "$(dirname "$0")/../.." || exit 1
source scripts/common.sh
method_sweep ProGrad "$@"
