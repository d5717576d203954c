# Shared by the sweep scripts (scripts/<method>/*.sh), which source it from the
# repository root. Not meant to be run on its own.
#
# Environment (all optional):
#   DATA      dataset root, $DATA of CoOp's DATASETS.md         (default ./data)
#   OUTPUT    where run folders go                              (default output)
#   SHOTS     shots per class to sweep, e.g. "16"               (default: the script's)
#   SEEDS     seeds to sweep, e.g. "1"                          (default: the script's)
#   PYTHON    the interpreter, resolved to an absolute path     (default python)
#   GPUS      e.g. "0 1 2 3": one run at a time on each listed GPU (CUDA_VISIBLE_DEVICES);
#             list a GPU twice to run two on it; a GPU this machine lacks is an error
#   JOBS      N runs at a time without choosing GPUs, e.g. on CPU (default 1)
#   LAUNCHER  local (default) or slurm: submit the runs as a job array, see scripts/slurm/
#   SLURM_ARGS, SLURM_TABLE_ARGS  sbatch options with LAUNCHER=slurm (docs/clusters.md#slurm)
#   SWEEP_TABLE  0: no results table at the end (scripts/paper_table.sh prints one for all)
#
# Extra KEY VALUE options name the run folder (options_tag): <cfg>_<K>shots_KEY-VALUE...
#
# A run folder is skipped only when it holds `done`, which train.py writes last, and its
# results.json records the settings this sweep would run it with (train.py --check-finished):
# a finished run recorded with others (an edited config file) stops the sweep, naming the keys.
# A folder without it is run again with the same command: the trainer resumes from
# its newest checkpoint there that loads (docs/reliability.md#run-folders), so an interrupted sweep
# restarted with the same command loses nothing it finished. A run that fails is
# reported at the end and the sweep goes on. Ctrl-C or SIGTERM stops the runs in
# progress and the sweep; starting the same command again resumes it. With GPUS or
# JOBS, each run's console output goes to console.txt in its folder.

DATA=${DATA:-./data}
OUTPUT=${OUTPUT:-output}
PYTHON=${PYTHON:-python}
LAUNCHER=${LAUNCHER:-local}
# What runs a training and where trainer configs live; a script may change them after
# sourcing this file (examples/my_trainer.sh runs a trainer kept outside trainers/).
TRAIN_ENTRY=(train.py)
TRAINER_CONFIG_DIR=configs/trainers
SWEEP_FAILED=()  # indexed by cell, so that parallel runs list failures in sweep order
SWEEP_FLAGS=()
SWEEP_REQUIRES=()
SWEEP_RAN=0
SWEEP_SKIPPED=0
_SWEEP_CELL=0
_SWEEP_CHILD=""  # the runs in progress (pids)
# This script and its arguments, for the table job of LAUNCHER=slurm (scripts cd first).
_SWEEP_ARGV=("$@")
case "$0" in /*) _SWEEP_SCRIPT=$0 ;; *) _SWEEP_SCRIPT=${OLDPWD:-$PWD}/$0 ;; esac
source scripts/preflight.sh
source scripts/parallel.sh
source scripts/slurm/submit.sh

_sweep_interrupted() {
    trap - INT TERM
    if [ -n "$_SWEEP_CHILD" ]; then
        kill -TERM $_SWEEP_CHILD 2>/dev/null
        wait $_SWEEP_CHILD 2>/dev/null
    fi
    echo "[sweep] interrupted: run the same command again to resume (finished runs are kept)." >&2
    exit 130
}
trap _sweep_interrupted INT TERM

# check_python: PYTHON as an absolute path (Slurm tasks run it on nodes whose PATH may
# differ); stop when there is no such interpreter.
check_python() {
    local resolved
    if ! resolved=$(command -v "$PYTHON" 2>/dev/null) || [ -z "$resolved" ]; then
        echo "[sweep] error: no Python interpreter '$PYTHON'; set PYTHON=/path/to/python (INSTALL.md)." >&2
        exit 3
    fi
    PYTHON=$(_abs_path "$resolved")
}

# check_imports: stop before the first run, creating nothing, when $PYTHON lacks a package
# that every run needs; name each missing one and the command that installs it. Once per
# sweep, when its first cell comes (so that a mistyped argument is answered at once, not
# after the seconds that importing torch takes).
_SWEEP_IMPORTS_OK=0
check_imports() {
    [ "$_SWEEP_IMPORTS_OK" = 1 ] && return 0
    local missing
    missing=$(preflight_missing "$PYTHON")
    if [ -n "$missing" ]; then
        echo "[sweep] error: $PYTHON cannot import: $missing." >&2
        echo "[sweep] Fix: PYTHON=$PYTHON bash scripts/setup.sh (Dassl: INSTALL.md#dassl; without" >&2
        echo "[sweep] GitHub: WHEELS=/path/to/wheels bash scripts/setup.sh). No run was started." >&2
        exit 3
    fi
    _SWEEP_IMPORTS_OK=1
}

# official_form KIND SCRIPT ARGS...: stop before any run when ARGS are the official SoftCPT code's
# positional form (BENCH CFG SHOTS ...: a number third), printing the equivalent command of
# SCRIPT, or (KIND softcpt) when the variant is not one (config/official.py,
# docs/from_the_official_code.md#sweep-scripts).
official_form() {
    "$PYTHON" -m config.official "$@" || exit 2
}

# _abs_path PATH: PATH made absolute against the repository root (the scripts' cwd).
_abs_path() {
    case "$1" in
        /*) echo "$1" ;;
        *) local p=${1#./}; echo "$PWD/${p:-.}" ;;
    esac
}

# options_tag [KEY VALUE ...]: the extra options as a suffix for a run folder's name, e.g.
# "_OPTIM.LR-0.001_TRAINER.COOP.N_CTX-4", so that runs of other settings never share a
# folder (scripts/results.py shows them as rows of their own). Characters other than
# letters, digits and . _ , + = @ - are written %XX, as in URLs: "/" and spaces neither
# split nor blur the name. Empty without options.
options_tag() {
    local tag="" key value
    while [ $# -gt 0 ]; do
        key=$1 value=${2-}
        shift $(($# < 2 ? $# : 2))
        tag+="_$(_folder_word "$key")-$(_folder_word "$value")"
    done
    if [ "${#tag}" -gt 160 ]; then  # file names stop at 255 bytes: keep the start, add a hash
        tag="${tag:0:140}_~$(printf '%s' "$tag" | sha1sum | cut -c1-12)"
    fi
    printf '%s' "$tag"
}

_folder_word() {
    local LC_ALL=C
    local text=$1 out="" c i
    for ((i = 0; i < ${#text}; i++)); do
        c=${text:i:1}
        case "$c" in
            [A-Za-z0-9._,+=@-]) out+=$c ;;
            *) printf -v c '%%%02X' "'$c"; out+=$c ;;
        esac
    done
    printf '%s' "$out"
}

# require_file PATH WHAT: stop early, listing the choices, when a config file is missing.
require_file() {
    if [ ! -f "$1" ]; then
        echo "[sweep] error: no $2 $1; available: $(ls "$(dirname "$1")" 2>/dev/null | sed 's/\.yaml$//' | tr '\n' ' ')" >&2
        exit 2
    fi
}

# check_launcher: stop before any run when LAUNCHER, GPUS or JOBS make no sense.
check_launcher() {
    case "$LAUNCHER" in
        local) parallel_setup ;;
        slurm) slurm_setup ;;
        report) ;;  # what the table job of LAUNCHER=slurm runs
        *) echo "[sweep] error: LAUNCHER is '$LAUNCHER'; allowed: local, slurm" >&2; exit 2 ;;
    esac
}

# run_once DIR TRAIN_ARGS...: python train.py --output-dir DIR TRAIN_ARGS, unless DIR/done
# exists; here, in the background on a free GPU / job slot, or in a Slurm job array.
run_once() {
    local dir=$1
    shift
    if [ -f "$dir/done" ]; then
        if [ "$LAUNCHER" != report ]; then  # (the table job only reports)
            _finished_with_these_settings "$dir" "$@"
        fi
        echo "[sweep] skip   $dir (finished)"
        SWEEP_SKIPPED=$((SWEEP_SKIPPED + 1))
        return 0
    fi
    case "$LAUNCHER" in
        slurm) slurm_add "$dir" "$PYTHON" "${TRAIN_ENTRY[@]}" --output-dir "$dir" "$@"; return 0 ;;
        report) slurm_report "$dir"; return 0 ;;
    esac
    local device=""
    if parallel_sweep; then
        parallel_take_slot  # waits for one; sets PARALLEL_DEVICE
        device=$PARALLEL_DEVICE
    fi
    if [ -d "$dir" ]; then
        echo "[sweep] resume $dir${device:+ [GPU $device]}"
    else
        echo "[sweep] run    $dir${device:+ [GPU $device]}"
    fi
    if parallel_sweep; then
        parallel_start "$dir" "$PYTHON" "${TRAIN_ENTRY[@]}" --output-dir "$dir" "$@"
        return 0
    fi
    # In the background so that a signal to this script reaches the run (see the trap).
    "$PYTHON" "${TRAIN_ENTRY[@]}" --output-dir "$dir" "$@" &
    _SWEEP_CHILD=$!
    wait "$_SWEEP_CHILD"
    local rc=$?
    _SWEEP_CHILD=""
    run_ended "$dir" "$rc"
}

# _finished_with_these_settings DIR TRAIN_ARGS...: return when the finished run in DIR recorded
# the settings this command would run with (train.py --check-finished: torch-free, well under a
# second); otherwise stop the sweep, as train.py stops a run into a folder recorded with other
# settings. Folder names carry only the KEY VALUE options, so an edited config file would
# otherwise be skipped silently. train.py has printed the keys that differ (old -> new).
_finished_with_these_settings() {
    local dir=$1 rc=0
    shift
    "$PYTHON" "${TRAIN_ENTRY[@]}" --check-finished --output-dir "$dir" "$@" || rc=$?
    [ "$rc" -eq 0 ] && return 0
    if [ -n "$_SWEEP_CHILD" ]; then  # runs in progress stop cleanly and resume next time
        kill -TERM $_SWEEP_CHILD 2>/dev/null
        wait $_SWEEP_CHILD 2>/dev/null
    fi
    if [ "$rc" -eq 1 ]; then
        echo "[sweep] stopped at the finished run $dir: its recorded settings differ from this" \
            "sweep's (above). No further run was started (docs/reliability.md#sweeps-and-changed-settings)." >&2
    else
        echo "[sweep] stopped at $dir: checking its recorded settings failed (exit code $rc, the" \
            "error is above). No further run was started." >&2
    fi
    exit 2
}

# run_ended DIR EXIT_CODE: count the run, and list it as failed unless it wrote DIR/done.
run_ended() {
    local dir=$1 rc=$2
    SWEEP_RAN=$((SWEEP_RAN + 1))
    if [ "$rc" -ne 0 ]; then
        # train.py appends every attempt, and the error that ended it, to DIR/log.txt.
        if [ -f "$dir/log.txt" ]; then
            SWEEP_FAILED[_SWEEP_CELL]="$dir (exit code $rc; the error is at the end of $dir/log.txt)"
        else
            SWEEP_FAILED[_SWEEP_CELL]="$dir (exit code $rc; no log.txt was written: see the error printed above)"
        fi
    elif [ ! -f "$dir/done" ]; then
        SWEEP_FAILED[_SWEEP_CELL]="$dir (exited without writing $dir/done)"
    fi
}

# sweep TRAINER CFG DIR [KEY VALUE ...]: one run per shot count in $SHOTS and seed in
# $SEEDS on configs/datasets/$BENCHMARK.yaml with $TRAINER_CONFIG_DIR/TRAINER/CFG.yaml.
# In DIR, and in the optional arrays SWEEP_FLAGS (train.py flags) and SWEEP_REQUIRES
# (run folders that must have finished first; with LAUNCHER=slurm, or be queued in Slurm),
# {shots} and {seed} are replaced. DIR names the user's KEY VALUE options through
# options_tag (each script adds it), so that other settings get other folders.
sweep() {
    local trainer=$1 cfg=$2 pattern=$3
    shift 3
    local dataset_cfg=configs/datasets/${BENCHMARK}.yaml trainer_cfg=${TRAINER_CONFIG_DIR}/${trainer}/${cfg}.yaml
    require_file "$dataset_cfg" "benchmark config"
    require_file "$trainer_cfg" "${trainer} config"
    check_imports
    SWEEP_JOB_NAME=${trainer}_${BENCHMARK}
    local shots seed item dir missing flags
    for shots in $SHOTS; do
        for seed in $SEEDS; do
            _SWEEP_CELL=$((_SWEEP_CELL + 1))
            dir=$(_fill "$pattern" "$shots" "$seed")
            missing=""
            SLURM_CELL_AFTER=()  # with LAUNCHER=slurm: the queued tasks this cell waits for
            for item in "${SWEEP_REQUIRES[@]+"${SWEEP_REQUIRES[@]}"}"; do
                item=$(_fill "$item" "$shots" "$seed")
                [ -f "$item/done" ] && continue
                # Still queued or running in Slurm: the array starts after it (afterok).
                [ "$LAUNCHER" = slurm ] && slurm_queued_task "$item" && continue
                missing=$item
            done
            if [ -n "$missing" ]; then
                echo "[sweep] cannot run $dir: $missing has not finished"
                SWEEP_FAILED[_SWEEP_CELL]="$dir (needs the finished run $missing)"
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
    parallel_wait_all
}

_fill() {
    local text=${1//\{shots\}/$2}
    echo "${text//\{seed\}/$3}"
}

# method_sweep TRAINER [BENCHMARK] [CFG] [KEY VALUE ...]: the whole sweep of a method without
# variants (scripts/<method>/main.sh): BENCHMARK (default toy) and CFG (default tiny), runs in
# $OUTPUT/<BENCHMARK>/<TRAINER>/<CFG>_<K>shots[<options>]/seed<S>, then the table.
method_sweep() {
    local trainer=$1
    shift
    BENCHMARK=${1:-toy}
    local cfg=${2:-tiny}
    shift $(($# < 2 ? $# : 2))
    SHOTS=${SHOTS:-"1 2 4 8 16"}
    SEEDS=${SEEDS:-"1 2 3"}
    sweep "$trainer" "$cfg" "$OUTPUT/$BENCHMARK/$trainer/${cfg}_{shots}shots$(options_tag "$@")/seed{seed}" "$@"
    sweep_finish "$OUTPUT/$BENCHMARK"
}

# sweep_finish TABLE_ROOT: summary of the sweep, the results table, and exit 1 on failures.
# With LAUNCHER=slurm, while runs are submitted or still queued, the table is left to the
# table job (which runs this script with LAUNCHER=report).
sweep_finish() {
    if [ "$LAUNCHER" = slurm ] && slurm_submit "$1"; then
        _sweep_failures
        return 0
    fi
    if [ "$LAUNCHER" = report ]; then
        slurm_summary
    else
        echo "[sweep] ${SWEEP_RAN} run(s) ran, ${SWEEP_SKIPPED} skipped as finished, ${#SWEEP_FAILED[@]} failed."
    fi
    local table_rc=0
    if [ -d "$1" ] && [ "${SWEEP_TABLE:-1}" != 0 ]; then
        "$PYTHON" scripts/results.py "$1" || table_rc=$?
    fi
    _sweep_failures
    if [ "$table_rc" -ne 0 ]; then
        echo "[sweep] error: the table command (scripts/results.py $1) failed with exit code $table_rc." >&2
        exit 1
    fi
}

# _sweep_failures: list the failed runs and exit 1, if there are any.
_sweep_failures() {
    if [ "${#SWEEP_FAILED[@]}" -gt 0 ]; then
        echo "[sweep] failed runs (fix, then run the same command again to redo only these):" >&2
        printf '  %s\n' "${SWEEP_FAILED[@]}" >&2
        exit 1
    fi
}

check_launcher  # once, when a sweep script sources this file
check_python
