#!/bin/bash
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"  # run with sh: bash runs it (written for bash)
# CoOp on every task at once, over shots and seeds, then the results table.
#
#   bash scripts/coop/main.sh [BENCHMARK] [CFG] [VARIANT] [KEY VALUE ...]
#
#   BENCHMARK  configs/datasets/<BENCHMARK>.yaml (default toy)
#   CFG        configs/trainers/CoOp/<CFG>.yaml: tiny (default), rn50_ep50, vit_b16_ep50
#   VARIANT    CA (default): one context per task; CS: one per class;
#              MT: one context for every class of every task
#   KEY VALUE  more options, e.g. TRAINER.COOP.N_CTX 4 TRAINER.COOP.CLASS_TOKEN_POSITION middle
#              (they name the run folders: tiny_16shots_TRAINER.COOP.N_CTX-4_...)
#
# Environment as scripts/softcpt/main.sh: SHOTS ("1 2 4 8 16"), SEEDS ("1 2 3"), DATA, OUTPUT.
# Runs: $OUTPUT/<BENCHMARK>/CoOp/<VARIANT>/<CFG>_<K>shots[_<KEY>-<VALUE>...]/seed<S>.
cd "$(dirname "$0")/../.." || exit 1
source scripts/common.sh
official_form coop "$0" "$@"

BENCHMARK=${1:-toy}
CFG=${2:-tiny}
VARIANT=${3:-CA}
shift $(($# < 3 ? $# : 3))
SHOTS=${SHOTS:-"1 2 4 8 16"}
SEEDS=${SEEDS:-"1 2 3"}

case "$VARIANT" in
    CA) OPTS=(TRAINER.COOP.SHARING task TRAINER.COOP.CSC False) ;;
    CS) OPTS=(TRAINER.COOP.SHARING task TRAINER.COOP.CSC True) ;;
    MT) OPTS=(TRAINER.COOP.SHARING all TRAINER.COOP.CSC False) ;;
    *) echo "[sweep] error: CoOp VARIANT is '$VARIANT'; allowed: CA, CS, MT" >&2; exit 2 ;;
esac
sweep CoOp "$CFG" "$OUTPUT/$BENCHMARK/CoOp/$VARIANT/${CFG}_{shots}shots$(options_tag "$@")/seed{seed}" "${OPTS[@]}" "$@"
sweep_finish "$OUTPUT/$BENCHMARK"
