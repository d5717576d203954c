#!/usr/bin/env bash
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"  # run with sh: bash runs it (written for bash)
# Install what this project needs into the active Python; safe to run again.
#   torch + torchvision  only when absent (TORCH_SPEC overrides the pinned pair)
#   requirements.txt     PyPI dependencies (re-run only when the file changes)
#   Dassl                pinned commit (INSTALL.md#dassl), tried in this order:
#                          1. already importable: left alone
#                          2. a local wheel folder: WHEELS=DIR, default ./wheels when it exists
#                             (pip --no-index: no network)
#                          3. GitHub, at the pinned commit
#                        When none works the command to run later is printed.
# WHEELS is also offered to pip for torch and requirements.txt (INSTALL.md#offline-machines).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip install --quiet --disable-pip-version-check"
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
DASSL_COMMIT=c61a1b570ac6333bd50fb5ae06aea59002fb20bb  # the Dassl this project is tested on
DASSL_URL=git+https://github.com/KaiyangZhou/Dassl.pytorch@$DASSL_COMMIT

if [ -z "${WHEELS:-}" ] && [ -d wheels ]; then
    WHEELS=wheels
fi
FIND_LINKS=()
if [ -n "${WHEELS:-}" ]; then
    if [ ! -d "$WHEELS" ]; then
        echo "[setup] error: WHEELS=$WHEELS is not a folder (see INSTALL.md#offline-machines)" >&2
        exit 2
    fi
    FIND_LINKS=(--find-links "$WHEELS")
fi

if ! $PY -c "import torch, torchvision" 2>/dev/null; then
    echo "[setup] installing $TORCH_SPEC"
    # shellcheck disable=SC2086  # TORCH_SPEC is a list of requirements
    $PIP "${FIND_LINKS[@]+"${FIND_LINKS[@]}"}" $TORCH_SPEC
fi

stamp=".cache/setup-$($PY -c 'import hashlib,sys;print(hashlib.md5(open("requirements.txt","rb").read()+sys.executable.encode()).hexdigest()[:12])')"
if [ ! -f "$stamp" ]; then
    echo "[setup] installing requirements.txt"
    $PIP "${FIND_LINKS[@]+"${FIND_LINKS[@]}"}" -r requirements.txt
    mkdir -p .cache && touch "$stamp"
fi

if $PY -c "import dassl" 2>/dev/null; then
    exit 0
fi
if [ -n "${WHEELS:-}" ] && ls "$WHEELS"/dassl-*.whl >/dev/null 2>&1; then
    echo "[setup] installing Dassl from the wheel folder $WHEELS"
    if $PIP --no-index --no-deps --find-links "$WHEELS" dassl; then
        exit 0
    fi
    echo "[setup] the Dassl wheel in $WHEELS did not install; trying GitHub"
fi
echo "[setup] installing Dassl from GitHub (commit ${DASSL_COMMIT:0:7})"
if ! timeout 300 $PIP --no-deps --no-build-isolation "$DASSL_URL" 2>/dev/null; then
    echo "[setup] Dassl could not be installed: no wheel folder (WHEELS=DIR) and GitHub unreachable."
    echo "[setup] Training and the tests that need it cannot run until it is. Either run, where GitHub"
    echo "[setup] is reachable,"
    echo "    $PY -m pip install --no-deps --no-build-isolation $DASSL_URL"
    echo "[setup] or build a wheel folder there and use it here (INSTALL.md#offline-machines):"
    echo "    WHEELS=/path/to/wheels bash scripts/setup.sh"
fi
