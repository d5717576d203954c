#!/bin/bash
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"  # run with sh: bash runs it (written for bash)
# The SoftCPT paper's whole comparison on one benchmark: every method of its table, shots
# 1 2 4 8 16 and seeds 1 2 3, then the results table (docs/baselines.md#the-whole-table).
#
#   bash scripts/paper_table.sh [BENCHMARK] [CFG]
#
#   BENCHMARK  configs/datasets/<BENCHMARK>.yaml (default toy)
#   CFG        rn50_ep50, vit_b16_ep50 or tiny (default): every method's config of that
#              name; CoCoOp's is its own (rn50_c4_ep10_batch1_ctxv1 for rn50_ep50,
#              vit_b16_c4_ep10_batch1_ctxv1 for vit_b16_ep50; COCOOP_CFG overrides it)
#
# Runs, in order, each method's sweep script with BENCHMARK and CFG: SoftCPT NATA and NATS,
# zero-shot CLIP, linear probe, ProtoNet, CoOp CA, CS and MT, CoCoOp, KgCoOp, ProGrad and
# PLOT (scripts/<method>/main.sh). Environment as every sweep script (SHOTS, SEEDS,
# DATA, OUTPUT, PYTHON, GPUS, JOBS, LAUNCHER=slurm; README.md#the-papers-protocol-on-real-data);
# TABLE_ARGS: options for the final scripts/results.py call (e.g. "--paper").
# Finished runs are skipped, so the same command resumes a stopped comparison. A method
# whose sweep fails does not stop the others; they are listed at the end (exit status 1).
cd "$(dirname "$0")/.." || exit 1

BENCHMARK=${1:-toy}
CFG=${2:-tiny}
if [ -z "${COCOOP_CFG:-}" ]; then
    COCOOP_CFG=$CFG
    [ -f "configs/trainers/CoCoOp/$CFG.yaml" ] || COCOOP_CFG=${CFG%_ep50}_c4_ep10_batch1_ctxv1
fi

METHODS=(
    "softcpt NATA" "softcpt NATS" "zsclip" "linear_probe" "protonet"
    "coop CA" "coop CS" "coop MT" "cocoop" "kgcoop" "prograd" "plot"
)

# Locally one table at the end, not one per method (a Slurm table job still prints its own).
[ "${LAUNCHER:-local}" = slurm ] || export SWEEP_TABLE=0
FAILED=()
for method in "${METHODS[@]}"; do
    read -r script variant <<< "$method"
    cfg=$CFG
    [ "$script" = cocoop ] && cfg=$COCOOP_CFG
    echo "[paper_table] $script ${variant:+$variant }on $BENCHMARK with $cfg"
    bash "scripts/$script/main.sh" "$BENCHMARK" "$cfg" ${variant:+"$variant"}
    rc=$?
    [ "$rc" -eq 130 ] && exit 130  # interrupted: the same command resumes
    [ "$rc" -ne 0 ] &&
        FAILED+=("scripts/$script/main.sh $BENCHMARK $cfg${variant:+ $variant} (exit code $rc)")
    export SKIP_SETUP=1  # scripts/softcpt/main.sh checked the installation once
done

if [ "${LAUNCHER:-local}" = slurm ]; then
    echo "[paper_table] submitted; once the jobs end:" \
        "${PYTHON:-python} scripts/results.py ${OUTPUT:-output}/$BENCHMARK ${TABLE_ARGS:-}"
else
    # shellcheck disable=SC2086  # TABLE_ARGS: several options
    "${PYTHON:-python}" scripts/results.py "${OUTPUT:-output}/$BENCHMARK" ${TABLE_ARGS:-} ||
        FAILED+=("scripts/results.py")
fi
if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "[paper_table] failed (fix, then run the same command again to redo only what is missing):" >&2
    printf '  %s\n' "${FAILED[@]}" >&2
    exit 1
fi
