#!/bin/bash
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"  # run with sh: bash runs it (written for bash)
# ProtoNet on CLIP image features (class prototypes of the shots, nothing trained), over
# shots and seeds, then the results table.
#
#   bash scripts/protonet/main.sh [BENCHMARK] [CFG] [KEY VALUE ...]
#
#   BENCHMARK  configs/datasets/<BENCHMARK>.yaml (default toy)
#   CFG        configs/trainers/ProtoNet/<CFG>.yaml: tiny (default), rn50_ep50, vit_b16_ep50
#
# Environment as scripts/softcpt/main.sh: SHOTS ("1 2 4 8 16"), SEEDS ("1 2 3"), DATA, OUTPUT.
# Uses the same few-shot images as the prompt learners for the same shots and seed.
# KEY VALUE options name the run folders, as in scripts/softcpt/main.sh.
# Runs: $OUTPUT/<BENCHMARK>/ProtoNet/<CFG>_<K>shots[_<KEY>-<VALUE>...]/seed<S>.
cd "$(dirname "$0")/../.." || exit 1
source scripts/common.sh
method_sweep ProtoNet "$@"
