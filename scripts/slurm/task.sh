#!/bin/bash
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"  # run with sh: bash runs it (written for bash)
# One task of a sweep's Slurm job array (submitted by scripts/slurm/submit.sh):
#
#   sbatch --array=1-N --requeue --open-mode=append --signal=B:USR1@SECS scripts/slurm/task.sh CMDS_FILE
#
# Line $SLURM_ARRAY_TASK_ID of CMDS_FILE is the run folder and the command (an absolute
# interpreter first), quoted for bash. The task's output goes to
# <run folder>/slurm-<array job>_<task>.out. A run already done is not run again. Before
# the run, the task checks on its own node that the interpreter imports what every run
# needs (scripts/preflight.sh, as the sweep did on the submitting host) and names the
# node when it does not.
#
# Time limits: SECS before the job's limit Slurm sends this script SIGUSR1 (--signal
# B:USR1@SECS; Slurm may send it up to a minute earlier). The task then stops the run
# with SIGTERM (train.py ends cleanly, its last complete epoch saved), or does not start
# it when the warning comes during the import check, and requeues itself (scontrol
# requeue); the next start runs the same command, which resumes from the run folder's
# newest checkpoint, so a run longer than -t finishes over several allocations. An
# allocation that saved no new checkpoint (warned during the import check, during the
# first epoch it ran, or while only the final evaluation was left) is requeued once: the
# next one starts that step with the whole time limit. When that one saves none either,
# the task is not requeued (it would never finish: -t is too short for that step). Such
# an allocation's job id and start number are kept in <run folder>/.slurm_no_progress.
# SIGTERM itself (scancel) stops the run, no requeue.
set -u
cmds=${1:?usage: task.sh CMDS_FILE}
task=${SLURM_ARRAY_TASK_ID:?not a Slurm array task}

stop=""   # what is stopping the run: "timelimit" (SIGUSR1) or "cancel" (SIGTERM, SIGINT)
child=""
trapped=0  # a signal arrived since the last `wait` began
_stop() {
    [ -n "$stop" ] || stop=$1
    trapped=1
    echo "[task] $(date -u '+%T UTC') $2 received"
    if [ -n "$child" ]; then
        kill -TERM "$child" 2>/dev/null
    fi
}
trap '_stop timelimit SIGUSR1' USR1
trap '_stop cancel SIGTERM' TERM
trap '_stop cancel SIGINT' INT

line=$(sed -n "${task}p" "$cmds")
if [ -z "$line" ]; then
    echo "[task] error: no line $task in $cmds" >&2
    exit 2
fi
eval "argv=($line)"
dir=${argv[0]}
mkdir -p "$dir" || exit 1
log=$dir/slurm-${SLURM_ARRAY_JOB_ID}_$task.out
echo "[task] $dir: output in $log"
exec >> "$log" 2>&1
node=$(hostname)
started=$(date +%s)
restart=${SLURM_RESTART_COUNT:-0}  # 0 for the first start, then one more for each requeue
# This task, by array id: one task's SLURM_JOB_ID may equal SLURM_ARRAY_JOB_ID, and
# `scontrol requeue <array job id>` requeues every task of the array.
me=${SLURM_ARRAY_JOB_ID}_$task
echo "[task] $(date -u '+%F %T UTC') Slurm job ${SLURM_ARRAY_JOB_ID}_$task (job id ${SLURM_JOB_ID:-?})" \
    "on $node, start $((restart + 1))"
if [ -f "$dir/done" ]; then
    echo "[task] $dir is done already"
    exit 0
fi

# The submitting host's check says nothing about this node's software.
source scripts/preflight.sh  # the job's working directory is the repository (--chdir)
missing=$(preflight_missing "${argv[1]}")
if [ -n "$missing" ]; then
    echo "[task] error on node $node: ${argv[1]} cannot import: $missing. Fix: install them" \
        "there (PYTHON=${argv[1]} bash scripts/setup.sh on $node, INSTALL.md), or set PYTHON to an" \
        "interpreter every node has; then run the same sweep command again. The run was not started."
    exit 3
fi

rc=0
ran=0
offset=$(stat -c %s "$log")  # this start's output begins there
if [ -z "$stop" ]; then
    ran=1
    "${argv[@]:1}" &
    child=$!
    rc=127
    while true; do
        trapped=0
        wait "$child"
        status=$?
        [ "$status" -eq 127 ] && break  # collected already: rc holds its exit code
        rc=$status
        # A trapped signal ends `wait` early, with 128 + its number: wait again for the
        # run's own exit code (bash keeps it, even once the run has ended).
        [ "$trapped" = 1 ] || break
    done
    child=""
fi

noprog=$dir/.slurm_no_progress
if [ -f "$dir/done" ]; then
    rm -f "$noprog"
    exit 0
fi

# stopped_where: where the warning found the run, for the messages (train.py's stop line
# says "after epoch K of N": K = N leaves only the final evaluation).
stopped_where() {
    if [ "$ran" = 0 ]; then
        echo "before its run started (during the import check)"
        return
    fi
    local line where="before this allocation saved a checkpoint"
    line=$(tail -c +"$((offset + 1))" "$log" | grep -o 'stopped by signal [A-Z0-9]* after epoch [0-9]* of [0-9]*' \
        | tail -n 1)
    if [[ "$line" =~ after\ epoch\ ([0-9]+)\ of\ ([0-9]+)$ ]] && [ "${BASH_REMATCH[1]}" = "${BASH_REMATCH[2]}" ]; then
        where="with only the final evaluation left (all ${BASH_REMATCH[2]} epochs were saved before)"
    fi
    echo "$where (run stopped, exit code $rc)"
}

case "$stop" in
    timelimit)
        now=$(date -u '+%T UTC')
        if [ -n "$(find "$dir" -name '*.pth.tar*' -newermt "@$started" -print -quit 2>/dev/null)" ]; then
            rm -f "$noprog"
            echo "[task] $now the time limit is near (SIGUSR1): run stopped (exit code $rc);" \
                "requeueing job $me, whose next start resumes from the last checkpoint."
        elif [ "$(cat "$noprog" 2>/dev/null)" = "$me $((restart - 1))" ]; then
            rm -f "$noprog"
            echo "[task] $now the time limit is near (SIGUSR1) $(stopped_where), and the previous allocation" \
                "saved no checkpoint either: not requeued, it would never finish. Fix: a longer -t in" \
                "SLURM_ARGS (or a smaller SLURM_SIGNAL_SECS): the import check, one epoch and the final" \
                "evaluation must each fit in -t minus SLURM_SIGNAL_SECS (Slurm may warn up to a minute" \
                "early); then run the same sweep command again."
            exit 1
        else
            if ! echo "$me $restart" > "$noprog"; then
                echo "[task] error: cannot write $noprog (see above): not requeued; run the same sweep" \
                    "command again to resume."
                exit 1
            fi
            echo "[task] $now the time limit is near (SIGUSR1) $(stopped_where):" \
                "requeueing job $me once more, whose next start has the whole time limit for" \
                "it (if that one saves no checkpoint either, it is not requeued)."
        fi
        trapped=0
        scontrol requeue "$me"
        status=$?
        # The requeue ends this allocation: Slurm's SIGTERM may kill scontrol before it returns.
        if [ "$status" -ne 0 ] && [ "$trapped" = 0 ]; then
            echo "[task] error: scontrol requeue $me failed (see above); run the same sweep" \
                "command again to resume."
            exit 1
        fi
        echo "[task] $(date -u '+%T UTC') requeued."
        exit 0 ;;
    cancel)
        echo "[task] stopped by SIGTERM (scancel, or the time limit without the SIGUSR1 warning):" \
            "not requeued; run the same sweep command again to resume."
        exit "$rc" ;;
esac
if [ "$rc" -eq 0 ]; then
    echo "[task] exited without writing $dir/done"
    rc=1
fi
exit "$rc"
