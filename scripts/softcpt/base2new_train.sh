#!/bin/bash
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"  # run with sh: bash runs it (written for bash)
# Base-to-new, step 1: train SoftCPT on the base classes (the first ceil(K/2) of every task).
#
#   bash scripts/softcpt/base2new_train.sh [BENCHMARK] [CFG] [VARIANT] [KEY VALUE ...]
#
# Same arguments and environment as scripts/softcpt/main.sh, but SHOTS defaults to 16.
# Runs: $OUTPUT/base2new/train_base/<BENCHMARK>/shots_<K>/SoftCPT/<VARIANT>/<CFG>[_<KEY>-<VALUE>...]/seed<S>
# (KEY VALUE options name the folder, as in main.sh);
# each is tested on the base classes when it finishes. Then run base2new_test.sh.
cd "$(dirname "$0")/../.." || exit 1
source scripts/common.sh
official_form softcpt "$0" "$@"

BENCHMARK=${1:-toy}
CFG=${2:-tiny}
VARIANT=${3:-NATA}
shift $(($# < 3 ? $# : 3))
SHOTS=${SHOTS:-16}
SEEDS=${SEEDS:-"1 2 3"}

sweep SoftCPT "$CFG" "$OUTPUT/base2new/train_base/$BENCHMARK/shots_{shots}/SoftCPT/$VARIANT/$CFG$(options_tag "$@")/seed{seed}" \
    DATASET.SUBSAMPLE_CLASSES base TRAINER.SOFTCPT.VARIANT "$VARIANT" "$@"
sweep_finish "$OUTPUT/base2new"
