#!/bin/bash
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"  # run with sh: bash runs it (written for bash)
# The job after a sweep's Slurm job array (submitted by scripts/slurm/submit.sh):
#
#   sbatch --dependency=afterany:ARRAY scripts/slurm/table.sh SWEEP_SCRIPT [ARGS...]
#
# runs the same sweep with LAUNCHER=report: the summary, the results table and the runs
# that did not finish, without running anything.
exec env LAUNCHER=report SKIP_SETUP=1 bash "$@"
