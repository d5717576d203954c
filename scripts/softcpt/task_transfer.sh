#!/bin/bash
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"  # run with sh: bash runs it (written for bash)
# Task transfer: for each task in turn, train with that task held out, then evaluate the
# held-out task with the context the model generates from its name, next to zero-shot CLIP
# and CoOp-MT under the same protocol (docs/method.md#task-transfer).
#
#   bash scripts/softcpt/task_transfer.sh [BENCHMARK] [CFG] [VARIANT] [KEY VALUE ...]
#
#   BENCHMARK  configs/datasets/<BENCHMARK>.yaml, a multi-task benchmark (default toy)
#   CFG        the trainer config, the same name for SoftCPT, CoOp and ZeroshotCLIP:
#              tiny (default), rn50_ep50, vit_b16_ep50
#   VARIANT    NATA (default) or CATA: the variants whose every learned part is shared by all
#              tasks. NATS, CATS (a task context per task), CSTA, CSTS (a class context per
#              class) have nothing learned for a task they never saw, and are refused.
#   KEY VALUE  more config options for every run (they name the folders: <CFG>_<K>shots_KEY-VALUE)
#
# Environment: HELD_OUT (the task keys to hold out in turn, default every task), SHOTS (default 16),
# SEEDS (default "1 2 3"), COOP (MT, the default, or none:
# the CoOp baseline; per-task CoOp, CA or CS, is refused), and DATA, OUTPUT, PYTHON, GPUS, JOBS,
# LAUNCHER as scripts/softcpt/main.sh. Finished runs are skipped.
# Runs: $OUTPUT/task_transfer/<BENCHMARK>/heldout_<KEY>/train/<Trainer>/<VARIANT>/<CFG>_<K>shots[_KEY-VALUE...]/seed<S>
# (trained without task KEY) and .../heldout_<KEY>/test/... (evaluated on task KEY alone);
# zero-shot CLIP: .../heldout_<KEY>/test/ZeroshotCLIP/<CFG>_0shots/seed1.
# With LAUNCHER=slurm the evaluations need the finished trainings: run the same command
# again once the training jobs have ended.
cd "$(dirname "$0")/../.." || exit 1

BENCHMARK=${1:-toy}
CFG=${2:-tiny}
VARIANT=${3:-NATA}
shift $(($# < 3 ? $# : 3))
COOP=${COOP:-MT}

refuse() {
    echo "[sweep] error: $1 cannot be evaluated on a task it never trained on: $2 (docs/method.md#task-transfer)." >&2
    exit 2
}
case "$VARIANT" in
    NATA | CATA) ;;
    NATS | CATS) refuse "SoftCPT $VARIANT" "it learns one task context per task, and the held-out task has none; use ${VARIANT%S}A" ;;
    CSTA | CSTS) refuse "SoftCPT $VARIANT" "it learns one class context per class, and the held-out task's classes have none; use CATA" ;;
    *) echo "[sweep] error: VARIANT is '$VARIANT'; allowed: NATA, CATA (NATS, CATS, CSTA, CSTS cannot transfer)" >&2; exit 2 ;;
esac
case "$COOP" in
    MT | none) ;;
    CA | CS) refuse "CoOp-$COOP" "it learns one context per $([ "$COOP" = CA ] && echo task || echo class), and the held-out task has none; COOP=MT shares one context by all tasks" ;;
    *) echo "[sweep] error: COOP is '$COOP'; allowed: MT, none (CA and CS cannot transfer)" >&2; exit 2 ;;
esac

source scripts/common.sh
SHOTS=${SHOTS:-16}
SEEDS=${SEEDS:-"1 2 3"}

DATASET_CFG=configs/datasets/${BENCHMARK}.yaml
require_file "$DATASET_CFG" "benchmark config"
# index<TAB>key of every task of the benchmark, the key made safe for a folder name
_LIST_TASKS='import re, sys
sys.path.insert(0, ".")
import yaml
import datasets  # registers the member datasets
from datasets.errors import DatasetError
from datasets.multitask import parse_entries
with open(sys.argv[1]) as f:
    node = yaml.safe_load(f) or {}
tasks = ((node.get("DATASET") or {}).get("MULTITASK") or {}).get("TASKS")
if (node.get("DATASET") or {}).get("NAME") != "MultiTask" or not tasks:
    sys.exit(f"{sys.argv[1]} is not a multi-task benchmark (DATASET.NAME MultiTask with DATASET.MULTITASK.TASKS)")
try:
    entries = parse_entries(tasks)
except DatasetError as err:
    sys.exit(f"{sys.argv[1]}: {err}")
if len(entries) < 2:
    sys.exit(f"{sys.argv[1]} has one task: holding it out leaves nothing to train on")
for e in entries:
    print(e.index, re.sub(r"[^A-Za-z0-9._-]+", "_", e.key), sep="\t")'
check_imports  # the listing imports the datasets, so Dassl
if ! LISTING=$("$PYTHON" -c "$_LIST_TASKS" "$DATASET_CFG"); then
    echo "[sweep] error: cannot list the tasks of $DATASET_CFG (see above). No run was started." >&2
    exit 2
fi
mapfile -t TASK_LINES <<< "$LISTING"
if [ -n "${HELD_OUT:-}" ]; then  # only these tasks are held out (each in turn)
    chosen=()
    for key in $HELD_OUT; do
        match=$(printf '%s\n' "${TASK_LINES[@]}" | awk -F'\t' -v k="$key" '$2 == k')
        if [ -z "$match" ]; then
            echo "[sweep] error: HELD_OUT names '$key', not a task of $DATASET_CFG; its tasks:" \
                "$(printf '%s\n' "${TASK_LINES[@]}" | cut -f2 | paste -sd' ')." >&2
            exit 2
        fi
        chosen+=("$match")
    done
    TASK_LINES=("${chosen[@]}")
fi

ROOT="$OUTPUT/task_transfer/$BENCHMARK"
SOFTCPT_OPTS=(TRAINER.SOFTCPT.VARIANT "$VARIANT")
COOP_OPTS=(TRAINER.COOP.SHARING all TRAINER.COOP.CSC False)
TAG=$(options_tag "$@")  # the user's KEY VALUE options name the folders, as in the other sweeps
SOFTCPT_RUN="SoftCPT/$VARIANT/${CFG}_{shots}shots$TAG/seed{seed}"
COOP_RUN="CoOp/MT/${CFG}_{shots}shots$TAG/seed{seed}"

# 1. train without each task (yacs reads a bare index as a number: it is quoted)
for line in "${TASK_LINES[@]}"; do
    index=${line%%$'\t'*} key=${line#*$'\t'}
    held="$ROOT/heldout_$key"
    SWEEP_REQUIRES=() SWEEP_FLAGS=()
    sweep SoftCPT "$CFG" "$held/train/$SOFTCPT_RUN" DATASET.HOLD_OUT_TASKS "'$index'" "${SOFTCPT_OPTS[@]}" "$@"
    if [ "$COOP" = MT ]; then
        sweep CoOp "$CFG" "$held/train/$COOP_RUN" DATASET.HOLD_OUT_TASKS "'$index'" "${COOP_OPTS[@]}" "$@"
    fi
done

# 2. evaluate each held-out task alone: its context comes from its name (SoftCPT), the shared
#    context (CoOp-MT) or the task's template (zero-shot CLIP)
for line in "${TASK_LINES[@]}"; do
    index=${line%%$'\t'*} key=${line#*$'\t'}
    held="$ROOT/heldout_$key"
    SWEEP_REQUIRES=("$held/train/$SOFTCPT_RUN")
    SWEEP_FLAGS=(--eval-only --model-dir "$held/train/$SOFTCPT_RUN")
    sweep SoftCPT "$CFG" "$held/test/$SOFTCPT_RUN" DATASET.SUBSAMPLE_TASKS "'$index'" "${SOFTCPT_OPTS[@]}" "$@"
    if [ "$COOP" = MT ]; then
        SWEEP_REQUIRES=("$held/train/$COOP_RUN")
        SWEEP_FLAGS=(--eval-only --model-dir "$held/train/$COOP_RUN")
        sweep CoOp "$CFG" "$held/test/$COOP_RUN" DATASET.SUBSAMPLE_TASKS "'$index'" "${COOP_OPTS[@]}" "$@"
    fi
    SWEEP_REQUIRES=() SWEEP_FLAGS=()
    few_shots=$SHOTS few_seeds=$SEEDS
    SHOTS=0 SEEDS=1  # nothing is learned or sampled
    sweep ZeroshotCLIP "$CFG" "$held/test/ZeroshotCLIP/${CFG}_{shots}shots$TAG/seed{seed}" \
        DATASET.SUBSAMPLE_TASKS "'$index'" "$@"
    SHOTS=$few_shots SEEDS=$few_seeds
done
sweep_finish "$ROOT"
