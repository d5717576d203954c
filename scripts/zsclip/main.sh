#!/bin/bash
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"  # run with sh: bash runs it (written for bash)
# Zero-shot CLIP with each task's template, then the results table.
#
#   bash scripts/zsclip/main.sh [BENCHMARK] [CFG] [KEY VALUE ...]
#
#   BENCHMARK  configs/datasets/<BENCHMARK>.yaml (default toy)
#   CFG        configs/trainers/ZeroshotCLIP/<CFG>.yaml: tiny (default), rn50_ep50, vit_b16_ep50
#
# Nothing is trained or sampled, so there is one run (0 shots, seed 1; SEEDS overrides
# the seed list, SHOTS is ignored). Environment otherwise as scripts/softcpt/main.sh.
# KEY VALUE options name the run folder, as in scripts/softcpt/main.sh.
# Run: $OUTPUT/<BENCHMARK>/ZeroshotCLIP/<CFG>_0shots[_<KEY>-<VALUE>...]/seed1.
cd "$(dirname "$0")/../.." || exit 1
source scripts/common.sh

BENCHMARK=${1:-toy}
CFG=${2:-tiny}
shift $(($# < 2 ? $# : 2))
SHOTS=0
SEEDS=${SEEDS:-1}

sweep ZeroshotCLIP "$CFG" "$OUTPUT/$BENCHMARK/ZeroshotCLIP/${CFG}_{shots}shots$(options_tag "$@")/seed{seed}" "$@"
sweep_finish "$OUTPUT/$BENCHMARK"
