#!/bin/bash
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"  # run with sh: bash runs it (written for bash)
# Base-to-new, step 2: evaluate the models of base2new_train.sh on the new classes.
#
#   bash scripts/softcpt/base2new_test.sh [BENCHMARK] [CFG] [VARIANT] [KEY VALUE ...]
#
# Same arguments (KEY VALUE options included: they name the folders of the models to load
# and of the tests) and environment as base2new_train.sh, plus SUB (new, the default, or
# base, all) and LOADEP (the epoch to load; default the last one saved).
# Runs: $OUTPUT/base2new/test_<SUB>/<BENCHMARK>/shots_<K>/SoftCPT/<VARIANT>/<CFG>[_<KEY>-<VALUE>...]/seed<S>.
# With LAUNCHER=slurm, cells whose training task is still queued or running are submitted
# with --dependency=afterok on it: submit this right after base2new_train.sh.
# The results table then shows base, new and their harmonic mean H.
# Class-specific contexts (CSTA, CSTS) cannot move to new classes.
cd "$(dirname "$0")/../.." || exit 1
source scripts/common.sh
official_form softcpt "$0" "$@"

BENCHMARK=${1:-toy}
CFG=${2:-tiny}
VARIANT=${3:-NATA}
shift $(($# < 3 ? $# : 3))
SHOTS=${SHOTS:-16}
SEEDS=${SEEDS:-"1 2 3"}
SUB=${SUB:-new}
LOADEP=${LOADEP:-}

COMMON="$BENCHMARK/shots_{shots}/SoftCPT/$VARIANT/$CFG$(options_tag "$@")/seed{seed}"
MODEL_DIR="$OUTPUT/base2new/train_base/$COMMON"
SWEEP_REQUIRES=("$MODEL_DIR")
SWEEP_FLAGS=(--eval-only --model-dir "$MODEL_DIR")
if [ -n "$LOADEP" ]; then
    SWEEP_FLAGS+=(--load-epoch "$LOADEP")
fi
sweep SoftCPT "$CFG" "$OUTPUT/base2new/test_$SUB/$COMMON" \
    DATASET.SUBSAMPLE_CLASSES "$SUB" TRAINER.SOFTCPT.VARIANT "$VARIANT" "$@"
sweep_finish "$OUTPUT/base2new"
