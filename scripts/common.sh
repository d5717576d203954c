# Shared by the sweep scripts (scripts/<method>/*.sh), which source it from the
# repository root. Not meant to be run on its own.
#
# Environment (all optional):
#   DATA    dataset root, $DATA of CoOp's DATASETS.md           (default ./data)
#   OUTPUT  where run folders go                                (default output)
#   SHOTS   shots per class to sweep, e.g. "16"                 (default: the script's)
#   SEEDS   seeds to sweep, e.g. "1"                            (default: the script's)
#   PYTHON  the interpreter                                     (default python)
#
# A run folder is skipped only when it holds `done`, which train.py writes last.
# A folder without it is run again with the same command: the trainer resumes from
# its newest checkpoint there that loads (README.md#reliability), so an interrupted sweep
# restarted with the same command loses nothing it finished. A run that fails is
# reported at the end and the sweep goes on. Ctrl-C or SIGTERM stops the run in
# progress and the sweep; starting the same command again resumes it.

DATA=${DATA:-./data}
OUTPUT=${OUTPUT:-output}
PYTHON=${PYTHON:-python}
# What runs a training and where trainer configs live; a script may change them after
# sourcing this file (examples/my_trainer.sh runs a trainer kept outside trainers/).
TRAIN_ENTRY=(train.py)
TRAINER_CONFIG_DIR=configs/trainers
SWEEP_FAILED=()
SWEEP_FLAGS=()
SWEEP_REQUIRES=()
SWEEP_RAN=0
SWEEP_SKIPPED=0
_SWEEP_CHILD=""

_sweep_interrupted() {
    trap - INT TERM
    if [ -n "$_SWEEP_CHILD" ]; then
        kill -TERM "$_SWEEP_CHILD" 2>/dev/null
        wait "$_SWEEP_CHILD" 2>/dev/null
    fi
    echo "[sweep] interrupted: run the same command again to resume (finished runs are kept)." >&2
    exit 130
}
trap _sweep_interrupted INT TERM

# require_file PATH WHAT: stop early, listing the choices, when a config file is missing.
require_file() {
    if [ ! -f "$1" ]; then
        echo "[sweep] error: no $2 $1; available: $(ls "$(dirname "$1")" 2>/dev/null | sed 's/\.yaml$//' | tr '\n' ' ')" >&2
        exit 2
    fi
}

# run_once DIR TRAIN_ARGS...: python train.py --output-dir DIR TRAIN_ARGS, unless DIR/done exists.
run_once() {
    local dir=$1
    shift
    if [ -f "$dir/done" ]; then
        echo "[sweep] skip   $dir (finished)"
        SWEEP_SKIPPED=$((SWEEP_SKIPPED + 1))
        return 0
    fi
    if [ -d "$dir" ]; then
        echo "[sweep] resume $dir"
    else
        echo "[sweep] run    $dir"
    fi
    # In the background so that a signal to this script reaches the run (see the trap).
    "$PYTHON" "${TRAIN_ENTRY[@]}" --output-dir "$dir" "$@" &
    _SWEEP_CHILD=$!
    wait "$_SWEEP_CHILD"
    local rc=$?
    _SWEEP_CHILD=""
    SWEEP_RAN=$((SWEEP_RAN + 1))
    if [ "$rc" -ne 0 ]; then
        # train.py appends every attempt, and the error that ended it, to DIR/log.txt.
        if [ -f "$dir/log.txt" ]; then
            SWEEP_FAILED+=("$dir (exit code $rc; the error is at the end of $dir/log.txt)")
        else
            SWEEP_FAILED+=("$dir (exit code $rc; no log.txt was written: see the error printed above)")
        fi
    elif [ ! -f "$dir/done" ]; then
        SWEEP_FAILED+=("$dir (exited without writing $dir/done)")
    fi
}

# sweep TRAINER CFG DIR [KEY VALUE ...]: one run per shot count in $SHOTS and seed in
# $SEEDS on configs/datasets/$BENCHMARK.yaml with $TRAINER_CONFIG_DIR/TRAINER/CFG.yaml.
# In DIR, and in the optional arrays SWEEP_FLAGS (train.py flags) and SWEEP_REQUIRES
# (run folders that must have finished first), {shots} and {seed} are replaced.
sweep() {
    local trainer=$1 cfg=$2 pattern=$3
    shift 3
    local dataset_cfg=configs/datasets/${BENCHMARK}.yaml trainer_cfg=${TRAINER_CONFIG_DIR}/${trainer}/${cfg}.yaml
    require_file "$dataset_cfg" "benchmark config"
    require_file "$trainer_cfg" "${trainer} config"
    local shots seed item dir missing flags
    for shots in $SHOTS; do
        for seed in $SEEDS; do
            dir=$(_fill "$pattern" "$shots" "$seed")
            missing=""
            for item in "${SWEEP_REQUIRES[@]+"${SWEEP_REQUIRES[@]}"}"; do
                item=$(_fill "$item" "$shots" "$seed")
                [ -f "$item/done" ] || missing=$item
            done
            if [ -n "$missing" ]; then
                echo "[sweep] cannot run $dir: $missing has not finished"
                SWEEP_FAILED+=("$dir (needs the finished run $missing)")
                continue
            fi
            flags=()
            for item in "${SWEEP_FLAGS[@]+"${SWEEP_FLAGS[@]}"}"; do
                flags+=("$(_fill "$item" "$shots" "$seed")")
            done
            run_once "$dir" --root "$DATA" --seed "$seed" --trainer "$trainer" \
                --dataset-config-file "$dataset_cfg" --config-file "$trainer_cfg" \
                "${flags[@]+"${flags[@]}"}" DATASET.NUM_SHOTS "$shots" "$@"
        done
    done
}

_fill() {
    local text=${1//\{shots\}/$2}
    echo "${text//\{seed\}/$3}"
}

# sweep_finish TABLE_ROOT: summary of the sweep, the results table, and exit 1 on failures.
sweep_finish() {
    echo "[sweep] ${SWEEP_RAN} run(s) ran, ${SWEEP_SKIPPED} skipped as finished, ${#SWEEP_FAILED[@]} failed."
    local table_rc=0
    if [ -d "$1" ]; then
        "$PYTHON" scripts/results.py "$1" || table_rc=$?
    fi
    if [ "${#SWEEP_FAILED[@]}" -gt 0 ]; then
        echo "[sweep] failed runs (fix, then run the same command again to redo only these):" >&2
        printf '  %s\n' "${SWEEP_FAILED[@]}" >&2
        exit 1
    fi
    if [ "$table_rc" -ne 0 ]; then
        echo "[sweep] error: the table command (scripts/results.py $1) failed with exit code $table_rc." >&2
        exit 1
    fi
}
