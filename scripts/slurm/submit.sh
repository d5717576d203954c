# LAUNCHER=slurm for scripts/common.sh (sourced there): the runs that are not done go to
# one Slurm job array, one task per shots x seed cell, and one more job, started when the
# array ends (afterany), runs the same sweep with LAUNCHER=report to print the summary,
# the results table and the failed runs.
#
#   SLURM_ARGS         sbatch options for the array and the table job, e.g.
#                      "-p gpu --gres=gpu:1 -t 2:00:00 -A myproject %8" (a bare %N lets at
#                      most N tasks run at a time); words split on spaces
#   SLURM_TABLE_ARGS   the table job's options instead (default: SLURM_ARGS without %N and
#                      without its GPU requests, --gres, --gpus, -G, --gpus-per-*, ...)
#   SLURM_SIGNAL_SECS  seconds before a task's time limit at which Slurm warns it (default
#                      180): the task stops its run, which keeps its last complete epoch,
#                      and requeues itself (scripts/slurm/task.sh); 0: no warning
#
# As on a real cluster, where tasks run on other nodes: PYTHON is an absolute path
# (scripts/common.sh), DATA and OUTPUT are made absolute, and both jobs get --export=ALL
# (whatever a site's SBATCH_EXPORT says), so a task sees the environment of the
# submission. Each task checks its imports again on its node. A cell that needs another
# run still queued in Slurm (base2new_test.sh needs its training run) makes the array wait
# for that task (--dependency=afterok, --kill-on-invalid-dep=yes: if it fails, the array
# is cancelled and the table job reports it).
#
# A submission writes <table root>/slurm/<stamp>.cmds (line i: task i's run folder and
# command), the Slurm output files beside it, and in each run folder `slurm_job` (the
# task's id, e.g. 1234_5). Running the same command again leaves alone the cells whose
# task is still queued or running (asked of squeue) and submits only the others not done.
# Each task logs to <run folder>/slurm-<array job>_<task>.out (--open-mode=append: every
# start of a requeued task adds to it); a requeued task runs the same command again,
# which resumes from the run folder's checkpoint.

SLURM_ARGS=${SLURM_ARGS:-}
SLURM_SIGNAL_SECS=${SLURM_SIGNAL_SECS:-180}
SLURM_MARKER=slurm_job
SLURM_CELL_AFTER=()  # set by sweep for each cell: queued tasks it needs (slurm_queued_task)
_SLURM_AFTER=()      # tasks the array waits for (afterok)
_SLURM_DIRS=()     # cells to submit: run folder
_SLURM_LINES=()    # and "folder command..." quoted for scripts/slurm/task.sh
_SLURM_QUEUED=0    # cells whose task is still queued or running
_SLURM_WAIT=()     # the array jobs of those
declare -A _SLURM_ACTIVE=()  # array job id -> " its queued or running tasks "

slurm_setup() {
    if [ -n "$GPUS" ] || [ "$JOBS" != 1 ]; then
        echo "[sweep] error: GPUS and JOBS are for LAUNCHER=local; on Slurm ask for GPUs in" \
            "SLURM_ARGS (e.g. --gres=gpu:1) and throttle with %N" >&2
        exit 2
    fi
    local tool
    for tool in sbatch squeue; do
        if ! command -v "$tool" >/dev/null; then
            echo "[sweep] error: LAUNCHER=slurm needs $tool on PATH (run this on a Slurm login node)" >&2
            exit 2
        fi
    done
    if ! [[ "$SLURM_SIGNAL_SECS" =~ ^[0-9]+$ ]]; then
        echo "[sweep] error: SLURM_SIGNAL_SECS is '$SLURM_SIGNAL_SECS'; it must be a whole number of" \
            "seconds (0: no warning before the time limit)" >&2
        exit 2
    fi
    # Tasks run with another working directory on other nodes: no path may be relative.
    DATA=$(_abs_path "$DATA")
    OUTPUT=$(_abs_path "$OUTPUT")
}

# slurm_queued_task DIR: whether DIR's run is still queued or running in Slurm; if so,
# it is added to SLURM_CELL_AFTER (the cell being planned waits for it).
slurm_queued_task() {
    local task
    task=$(_slurm_task_of "$1")
    [ -n "$task" ] && _slurm_active "$task" || return 1
    SLURM_CELL_AFTER+=("$task")
}

# slurm_add DIR COMMAND...: queue the cell for submission, unless its task is still in Slurm.
slurm_add() {
    local dir=$1 task
    task=$(_slurm_task_of "$dir")
    if [ -n "$task" ] && _slurm_active "$task"; then
        echo "[sweep] queued $dir (Slurm job $task)"
        _slurm_wait_for "$task"
        return 0
    fi
    echo "[sweep] submit $dir${SLURM_CELL_AFTER[*]:+ (after Slurm job ${SLURM_CELL_AFTER[*]})}"
    _SLURM_DIRS+=("$dir")
    _SLURM_LINES+=("$(printf '%q ' "$@")")
    _SLURM_AFTER+=("${SLURM_CELL_AFTER[@]+"${SLURM_CELL_AFTER[@]}"}")
}

# slurm_report DIR: in the table job, a cell without `done`: still in Slurm, or failed.
slurm_report() {
    local dir=$1 task
    task=$(_slurm_task_of "$dir")
    if [ -z "$task" ]; then
        SWEEP_FAILED[_SWEEP_CELL]="$dir (never submitted)"
    elif _slurm_active "$task"; then
        echo "[sweep] still queued or running: $dir (Slurm job $task)"
        _SLURM_QUEUED=$((_SLURM_QUEUED + 1))
    elif [ -f "$dir/slurm-$task.out" ]; then
        SWEEP_FAILED[_SWEEP_CELL]="$dir (Slurm job $task ended without writing done; see $dir/slurm-$task.out)"
    else
        SWEEP_FAILED[_SWEEP_CELL]="$dir (Slurm job $task never started: cancelled, or refused by Slurm)"
    fi
}

# slurm_summary: the table job's first line.
slurm_summary() {
    echo "[sweep] ${SWEEP_SKIPPED} run(s) finished, ${_SLURM_QUEUED} still queued or running," \
        "${#SWEEP_FAILED[@]} failed."
}

# slurm_submit ROOT: submit the array and the table job; false when there is nothing to
# wait for (everything finished or failed before running), so the table is printed now.
slurm_submit() {
    local root=$1
    if [ "${#_SLURM_LINES[@]}" -eq 0 ]; then
        [ "$_SLURM_QUEUED" -gt 0 ] || return 1
        echo "[sweep] nothing new to submit: ${_SLURM_QUEUED} run(s) still queued or running" \
            "(Slurm job(s) ${_SLURM_WAIT[*]}), ${SWEEP_SKIPPED} finished, ${#SWEEP_FAILED[@]} failed."
        echo "[sweep] their table job prints the table when they end; then run the same command" \
            "again to submit what did not finish. Follow: squeue -j $(IFS=,; echo "${_SLURM_WAIT[*]}")"
        return 0
    fi
    local args=() table_args=() words=() throttle="" word
    read -ra words <<< "$SLURM_ARGS"
    for word in "${words[@]+"${words[@]}"}"; do
        if [[ "$word" =~ ^%[0-9]+$ ]]; then throttle=$word; else args+=("$word"); fi
    done
    if [ -n "${SLURM_TABLE_ARGS+set}" ]; then
        read -ra table_args <<< "$SLURM_TABLE_ARGS"
    else
        _slurm_without_gpus "${args[@]+"${args[@]}"}"  # sets table_args
    fi
    local array_opts=(--export=ALL --requeue --open-mode=append)
    if [ "$SLURM_SIGNAL_SECS" -gt 0 ]; then  # B: the batch script gets it (task.sh)
        array_opts+=("--signal=B:USR1@$SLURM_SIGNAL_SECS")
    fi
    if [ "${#_SLURM_AFTER[@]}" -gt 0 ]; then
        array_opts+=("--dependency=afterok:$(printf '%s\n' "${_SLURM_AFTER[@]}" | sort -u | paste -sd:)"
                     --kill-on-invalid-dep=yes)
    fi
    # The jobs' environment (--export=ALL) carries these to the tasks and the table job.
    export PYTHON DATA OUTPUT
    mkdir -p "$root/slurm" || exit 1
    local dir n=${#_SLURM_LINES[@]} stamp
    dir=$(cd "$root/slurm" && pwd)
    stamp=$(date +%Y%m%d-%H%M%S)-$$
    # Tasks read their line from this file: written whole before anything is submitted.
    printf '%s\n' "${_SLURM_LINES[@]}" > "$dir/$stamp.cmds.tmp" && mv "$dir/$stamp.cmds.tmp" "$dir/$stamp.cmds" || exit 1

    local array_id table_id
    array_id=$(sbatch --parsable --job-name="$SWEEP_JOB_NAME" --array="1-$n$throttle" "${array_opts[@]}" \
        --chdir="$PWD" --output="$dir/$stamp-%A_%a.out" \
        "${args[@]+"${args[@]}"}" scripts/slurm/task.sh "$dir/$stamp.cmds") || {
        echo "[sweep] error: sbatch refused the job array (see above); nothing was submitted." \
            "SLURM_ARGS was: $SLURM_ARGS" >&2
        exit 1
    }
    array_id=${array_id%%;*}
    local i
    for ((i = 0; i < n; i++)); do
        _slurm_mark "${_SLURM_DIRS[$i]}" "${array_id}_$((i + 1))"
    done
    _SLURM_WAIT=("$array_id" "${_SLURM_WAIT[@]+"${_SLURM_WAIT[@]}"}")
    table_id=$(sbatch --parsable --job-name="${SWEEP_JOB_NAME}_table" --export=ALL \
        --dependency="afterany:$(IFS=:; echo "${_SLURM_WAIT[*]}")" --chdir="$PWD" \
        --output="$dir/$stamp-table-%j.out" "${table_args[@]+"${table_args[@]}"}" \
        scripts/slurm/table.sh "$_SWEEP_SCRIPT" "${_SWEEP_ARGV[@]+"${_SWEEP_ARGV[@]}"}") || {
        echo "[sweep] error: sbatch refused the table job; the runs are submitted (job $array_id):" \
            "run the same command again after they end to print the table." >&2
        exit 1
    }
    table_id=${table_id%%;*}
    echo "[sweep] submitted $n run(s) as Slurm job array $array_id (tasks 1-$n, in the order of" \
        "$dir/$stamp.cmds), ${_SLURM_QUEUED} still queued or running, ${SWEEP_SKIPPED} finished," \
        "${#SWEEP_FAILED[@]} failed; job $table_id prints the table after them (afterany)."
    echo "[sweep] follow:  squeue -j $array_id,$table_id"
    echo "[sweep] a run:   tail -f ${_SLURM_DIRS[0]}/slurm-${array_id}_1.out (each run folder has its own)"
    echo "[sweep] table:   $dir/$stamp-table-$table_id.out and $root/summary/table.md, once job $table_id has run"
    echo "[sweep] cancel:  scancel $array_id $table_id; run the same command again to submit what is not done"
    return 0
}

# _slurm_without_gpus ARGS...: table_args=ARGS without GPU requests (the table job reads
# files and prints; it should not wait for a GPU). Options whose value is the next word
# lose it too.
_slurm_without_gpus() {
    table_args=()
    local skip_next="" word
    for word in "$@"; do
        if [ -n "$skip_next" ]; then skip_next=""; continue; fi
        case "$word" in
            --gres=*|--gpus=*|--gpus-per-*=*|--cpus-per-gpu=*|--mem-per-gpu=*|--gpu-bind=*|--gpu-freq=*|-G?*) ;;
            --gres|--gpus|--gpus-per-*|--cpus-per-gpu|--mem-per-gpu|--gpu-bind|--gpu-freq|-G) skip_next=1 ;;
            *) table_args+=("$word") ;;
        esac
    done
}

# _slurm_task_of DIR: the Slurm task recorded for the run folder, if any.
_slurm_task_of() {
    if [ -f "$1/$SLURM_MARKER" ]; then
        cat "$1/$SLURM_MARKER"
    fi
}

_slurm_mark() {
    mkdir -p "$1" && echo "$2" > "$1/$SLURM_MARKER.tmp" && mv "$1/$SLURM_MARKER.tmp" "$1/$SLURM_MARKER"
}

# _slurm_active TASK: whether TASK (JOB_INDEX) is pending, running or requeued; squeue is
# asked once per array job. Exits when squeue fails for another reason than a job that
# Slurm has forgotten: submitting again then could run a cell twice.
_slurm_active() {
    local job=${1%%_*}
    if [ -z "${_SLURM_ACTIVE[$job]+set}" ]; then
        local out
        if ! out=$(squeue -h -r -j "$job" -o %i 2>&1); then
            if [[ "$out" != *"Invalid job id"* ]]; then
                echo "[sweep] error: cannot ask Slurm whether job $job is still queued: $out" >&2
                exit 1
            fi
            out=""
        fi
        _SLURM_ACTIVE[$job]=" $(echo $out) "
    fi
    [[ "${_SLURM_ACTIVE[$job]}" == *" $1 "* ]]
}

_slurm_wait_for() {
    local job=${1%%_*}
    _SLURM_QUEUED=$((_SLURM_QUEUED + 1))
    [[ " ${_SLURM_WAIT[*]+"${_SLURM_WAIT[*]}"} " == *" $job "* ]] || _SLURM_WAIT+=("$job")
}
