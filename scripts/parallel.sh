# Several runs at a time on one machine, for scripts/common.sh (sourced there).
#
#   GPUS="0 1 2 3"  one run at a time per listed GPU, each with CUDA_VISIBLE_DEVICES set
#                   to it (list a GPU twice to run two on it); indices or UUIDs as
#                   `nvidia-smi -L` shows them, checked before any run
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
        _parallel_check_gpus
    elif [[ "$JOBS" =~ ^[1-9][0-9]*$ ]]; then
        local i
        for ((i = 0; i < JOBS; i++)); do _PARALLEL_DEVICES+=(""); done
    else
        echo "[sweep] error: JOBS is '$JOBS'; it must be a whole number of runs at a time, 1 or more" >&2
        exit 2
    fi
    _PARALLEL_FREE=("${!_PARALLEL_DEVICES[@]}")
}

# _parallel_check_gpus: exit 2, before any run, when GPUS names a device this machine
# does not have (an index beyond `nvidia-smi -L`'s list, or a UUID not in it); without
# nvidia-smi, torch.cuda.device_count() of $PYTHON counts them.
_parallel_check_gpus() {
    local listing="" found device bad=() n
    if command -v nvidia-smi >/dev/null 2>&1; then
        if listing=$(nvidia-smi -L 2>&1); then
            found="nvidia-smi -L lists $(grep -c '^GPU [0-9]' <<< "$listing") GPU(s)"
        else
            found="nvidia-smi -L failed: $(head -n 1 <<< "$listing")"
            listing=""
        fi
    else
        n=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null | tail -n 1)
        if [[ "$n" =~ ^[0-9]+$ ]]; then
            found="no nvidia-smi on PATH, and torch.cuda.device_count() is $n"
        else
            n=0 found="no nvidia-smi on PATH, and $PYTHON could not import torch to count them"
        fi
        listing=$(for ((i = 0; i < n; i++)); do echo "GPU $i:"; done)
    fi
    for device in "${_PARALLEL_DEVICES[@]}"; do
        if [[ "$device" =~ ^[0-9]+$ ]]; then
            grep -q "^GPU $((10#$device)):" <<< "$listing" || bad+=("$device")
        elif [[ "$device" =~ ^(GPU|MIG)-[0-9A-Za-z/-]+$ ]]; then
            grep -qF "UUID: $device)" <<< "$listing" || bad+=("$device")
        else
            bad+=("$device")
        fi
    done
    if [ "${#bad[@]}" -gt 0 ]; then
        echo "[sweep] error: GPUS=\"$GPUS\" names GPU(s) this machine does not have: ${bad[*]}" \
            "($found). Fix: list indices or UUIDs that nvidia-smi -L shows, or unset GPUS to run" \
            "on CPU (JOBS=N for N runs at a time). No run was started." >&2
        exit 2
    fi
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
