#!/bin/bash
# One task of a sweep's Slurm job array (submitted by scripts/slurm/submit.sh):
#
#   sbatch --array=1-N scripts/slurm/task.sh CMDS_FILE
#
# Line $SLURM_ARRAY_TASK_ID of CMDS_FILE is the run folder and the command, quoted for
# bash. The task's output goes to <run folder>/slurm-<array job>_<task>.out. A run
# already done is not run again; a requeued task runs the same command, which resumes
# from the newest checkpoint in the run folder.
set -u
cmds=${1:?usage: task.sh CMDS_FILE}
task=${SLURM_ARRAY_TASK_ID:?not a Slurm array task}
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
echo "[task] $(date -u '+%F %T UTC') Slurm job ${SLURM_ARRAY_JOB_ID}_$task on $(hostname)," \
    "start $(( ${SLURM_RESTART_COUNT:-0} + 1 ))"
if [ -f "$dir/done" ]; then
    echo "[task] $dir is done already"
    exit 0
fi
"${argv[@]:1}"
rc=$?
if [ "$rc" -eq 0 ] && [ ! -f "$dir/done" ]; then
    echo "[task] exited without writing $dir/done"
    rc=1
fi
exit "$rc"
