#!/bin/bash
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"  # run with sh: bash runs it (written for bash)
# Linear-probe CLIP (logistic regression per task, C chosen on val), then the results table.
#
#   bash scripts/linear_probe/main.sh [BENCHMARK] [CFG] [KEY VALUE ...]
#
#   BENCHMARK  configs/datasets/<BENCHMARK>.yaml (default toy)
#   CFG        configs/trainers/LinearProbeCLIP/<CFG>.yaml: tiny (default), rn50_ep50, vit_b16_ep50
#
# Environment as scripts/softcpt/main.sh: SHOTS ("1 2 4 8 16"), SEEDS ("1 2 3"), DATA, OUTPUT.
# Uses the same few-shot images as the prompt learners for the same shots and seed.
# KEY VALUE options name the run folders, as in scripts/softcpt/main.sh.
# Runs: $OUTPUT/<BENCHMARK>/LinearProbeCLIP/<CFG>_<K>shots[_<KEY>-<VALUE>...]/seed<S>.
cd "$(dirname "$0")/../.." || exit 1
source scripts/common.sh
method_sweep LinearProbeCLIP "$@"
