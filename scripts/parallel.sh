# Several runs at a time on one machine, for scripts/common.sh (sourced there).
#
#   GPUS="0 1 2 3"  one run at a time per listed GPU, each with CUDA_VISIBLE_DEVICES set
#                   to it (list a GPU twice to run two on it)
#   JOBS=N          N runs at a time, GPUs left alone (e.g. on CPU)
#
# Each run's console goes to console.txt in its folder; the sweep prints when runs
# start and end, waits for all of them, and lists failures in the order of a serial
# sweep. Without OMP_NUM_THREADS, each run gets an equal share of the CPU cores, so
# that N runs do not fight over them.

GPUS=${GPUS:-}
JOBS=${JOBS:-1}
PARALLEL_DEVICE=""      # the GPU of the slot parallel_take_slot took ("" with JOBS)
_PARALLEL_DEVICES=()    # per slot: its GPU, or ""
_PARALLEL_FREE=()       # slots free now
_PARALLEL_SLOT=""
declare -A _PARALLEL_DIR=() _PARALLEL_CELL=() _PARALLEL_SLOT_OF=()  # per running pid

# parallel_setup: slots from GPUS or JOBS; exit 2 on a bad value.
parallel_setup() {
    _PARALLEL_DEVICES=()
    if [ -n "$GPUS" ]; then
        if [ "$JOBS" != 1 ]; then
            echo "[sweep] error: set GPUS (one run per listed GPU) or JOBS, not both;" \
                "to run two per GPU list it twice: GPUS=\"0 0 1 1\"" >&2
            exit 2
        fi
        read -ra _PARALLEL_DEVICES <<< "$GPUS"
    elif [[ "$JOBS" =~ ^[1-9][0-9]*$ ]]; then
        local i
        for ((i = 0; i < JOBS; i++)); do _PARALLEL_DEVICES+=(""); done
    else
        echo "[sweep] error: JOBS is '$JOBS'; it must be a whole number of runs at a time, 1 or more" >&2
        exit 2
    fi
    _PARALLEL_FREE=("${!_PARALLEL_DEVICES[@]}")
}

# parallel_sweep: whether runs go to the background (GPUS given, or JOBS above 1).
parallel_sweep() {
    [ -n "$GPUS" ] || [ "$JOBS" != 1 ]
}

# parallel_take_slot: wait until a slot is free and take it (sets PARALLEL_DEVICE).
parallel_take_slot() {
    while [ "${#_PARALLEL_FREE[@]}" -eq 0 ]; do
        _parallel_reap
    done
    _PARALLEL_SLOT=${_PARALLEL_FREE[0]}
    _PARALLEL_FREE=("${_PARALLEL_FREE[@]:1}")
    PARALLEL_DEVICE=${_PARALLEL_DEVICES[$_PARALLEL_SLOT]}
}

# parallel_start DIR COMMAND...: run COMMAND in the background in the slot just taken.
parallel_start() {
    local dir=$1
    shift
    local env=()
    if [ -n "$PARALLEL_DEVICE" ]; then
        env+=("CUDA_VISIBLE_DEVICES=$PARALLEL_DEVICE")
    fi
    if [ -z "${OMP_NUM_THREADS:-}" ]; then
        local cores
        cores=$(nproc 2>/dev/null || echo 1)
        env+=("OMP_NUM_THREADS=$(( cores / ${#_PARALLEL_DEVICES[@]} > 0 ? cores / ${#_PARALLEL_DEVICES[@]} : 1 ))")
    fi
    mkdir -p "$dir"
    env "${env[@]}" "$@" >> "$dir/console.txt" 2>&1 &
    local pid=$!
    _PARALLEL_DIR[$pid]=$dir
    _PARALLEL_CELL[$pid]=$_SWEEP_CELL
    _PARALLEL_SLOT_OF[$pid]=$_PARALLEL_SLOT
    _SWEEP_CHILD="${!_PARALLEL_DIR[*]}"
}

# parallel_wait_all: wait for every run started (a no-op when none is running).
parallel_wait_all() {
    while [ "${#_PARALLEL_DIR[@]}" -gt 0 ]; do
        _parallel_reap
    done
}

# _parallel_reap: wait for a run to end; record each ended run as a serial sweep would.
_parallel_reap() {
    wait -n 2>/dev/null
    local pid rc cell=$_SWEEP_CELL
    for pid in "${!_PARALLEL_DIR[@]}"; do
        kill -0 "$pid" 2>/dev/null && continue
        wait "$pid"
        rc=$?
        _SWEEP_CELL=${_PARALLEL_CELL[$pid]}  # failures are listed by cell
        run_ended "${_PARALLEL_DIR[$pid]}" "$rc"
        echo "[sweep] ended  ${_PARALLEL_DIR[$pid]} (exit code $rc)"
        _PARALLEL_FREE+=("${_PARALLEL_SLOT_OF[$pid]}")
        unset "_PARALLEL_DIR[$pid]" "_PARALLEL_CELL[$pid]" "_PARALLEL_SLOT_OF[$pid]"
    done
    _SWEEP_CELL=$cell
    _SWEEP_CHILD="${!_PARALLEL_DIR[*]}"
}
