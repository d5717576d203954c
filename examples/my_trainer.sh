#!/bin/bash
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"  # run with sh: bash runs it (written for bash)
# Sweep of the example trainer (examples/my_trainer.py), as scripts/coop/main.sh.
#
#   bash examples/my_trainer.sh [BENCHMARK] [CFG] [KEY VALUE ...]
#
# Environment as scripts/softcpt/main.sh: SHOTS ("1 2 4 8 16"), SEEDS ("1 2 3"), DATA, OUTPUT.
# Runs: $OUTPUT/<BENCHMARK>/TaskWordCoOp/<CFG>_<K>shots[_KEY-VALUE...]/seed<S> (options name the folder).
cd "$(dirname "$0")/.." || exit 1
source scripts/common.sh
TRAIN_ENTRY=(-m examples.my_trainer)      # a built-in trainer keeps train.py
TRAINER_CONFIG_DIR=examples/configs       # and configs/trainers

BENCHMARK=${1:-toy}
CFG=${2:-tiny}
shift $(($# < 2 ? $# : 2))
SHOTS=${SHOTS:-"1 2 4 8 16"}
SEEDS=${SEEDS:-"1 2 3"}

TAG=$(options_tag "$@")
sweep TaskWordCoOp "$CFG" "$OUTPUT/$BENCHMARK/TaskWordCoOp/${CFG}_{shots}shots$TAG/seed{seed}" "$@"
sweep_finish "$OUTPUT/$BENCHMARK"
