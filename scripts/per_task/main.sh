#!/bin/bash
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"  # run with sh: bash runs it (written for bash)
# A single-task Dassl trainer (one softmax over the classes it is given: CoOp's own, KgCoOp's,
# yours) on every task of a benchmark separately, over shots and seeds; each seed's task runs
# merged into one multi-task result (scripts/merge_tasks.py), then the results table.
#
#   [TRAINER_MODULE=pkg.module] [TRAINER_CONFIG_DIR=DIR] \
#       bash scripts/per_task/main.sh TRAINER [BENCHMARK] [CFG] [KEY VALUE ...]
#
#   TRAINER         its registered name (--trainer)
#   TRAINER_MODULE  the module that registers it, when it is not one of trainers/ (train.py --import)
#   TRAINER_CONFIG_DIR  folder of <TRAINER>/<CFG>.yaml (default configs/trainers)
#   BENCHMARK, CFG, KEY VALUE and the environment as scripts/coop/main.sh.
# Runs: $OUTPUT/<BENCHMARK>/<TRAINER>/per_task/<CFG>_<K>shots[_<KEY>-<VALUE>...]/seed<S>/task<i>, one per
# task (DATASET.SUBSAMPLE_TASKS i); seed<S>/results.json and done once all have finished.
# docs/add_a_trainer.md#other-dassl-trainers.
config_dir=${TRAINER_CONFIG_DIR:-}
cd "$(dirname "$0")/../.." || exit 1
source scripts/common.sh
[ -n "$config_dir" ] && TRAINER_CONFIG_DIR=$config_dir
if [ -z "${1:-}" ]; then
    echo "[sweep] error: name the trainer: bash scripts/per_task/main.sh TRAINER [BENCHMARK] [CFG] ..." >&2
    exit 2
fi
TRAINER=$1
BENCHMARK=${2:-toy}
CFG=${3:-tiny}
shift $(($# < 3 ? $# : 3))
SHOTS=${SHOTS:-"1 2 4 8 16"}
SEEDS=${SEEDS:-"1 2 3"}
if [ -n "${TRAINER_MODULE:-}" ]; then
    TRAIN_ENTRY=(train.py --import "$TRAINER_MODULE")
fi
require_file "configs/datasets/${BENCHMARK}.yaml" "benchmark config"
N_TASKS=$("$PYTHON" scripts/merge_tasks.py count "configs/datasets/${BENCHMARK}.yaml") || exit 2

# per_task/: its own rows in the table, apart from a joint run of a trainer of the same name
SEED_DIR="$OUTPUT/$BENCHMARK/$TRAINER/per_task/${CFG}_{shots}shots$(options_tag "$@")/seed{seed}"
for ((task = 0; task < N_TASKS; task++)); do
    sweep "$TRAINER" "$CFG" "$SEED_DIR/task$task" DATASET.SUBSAMPLE_TASKS "'$task'" "$@"
done
if [ "$LAUNCHER" != slurm ]; then  # with Slurm, the table job (LAUNCHER=report) merges
    for shots in $SHOTS; do
        for seed in $SEEDS; do
            "$PYTHON" scripts/merge_tasks.py merge "$(_fill "$SEED_DIR" "$shots" "$seed")" "$N_TASKS" \
                || SWEEP_FAILED+=("$(_fill "$SEED_DIR" "$shots" "$seed") (not merged: see above)")
        done
    done
fi
sweep_finish "$OUTPUT/$BENCHMARK"
