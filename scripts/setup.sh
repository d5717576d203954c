#!/usr/bin/env bash
# Install what this project needs into the active Python; safe to run again.
#   torch + torchvision  only when absent (TORCH_SPEC overrides the pinned pair)
#   requirements.txt     PyPI dependencies (re-run only when the file changes)
#   Dassl                from GitHub when reachable, else the command is printed
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip install --quiet --disable-pip-version-check"
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
DASSL_URL=git+https://github.com/KaiyangZhou/Dassl.pytorch

if ! $PY -c "import torch, torchvision" 2>/dev/null; then
    echo "[setup] installing $TORCH_SPEC"
    $PIP $TORCH_SPEC
fi

stamp=".cache/setup-$($PY -c 'import hashlib,sys;print(hashlib.md5(open("requirements.txt","rb").read()+sys.executable.encode()).hexdigest()[:12])')"
if [ ! -f "$stamp" ]; then
    echo "[setup] installing requirements.txt"
    $PIP -r requirements.txt
    mkdir -p .cache && touch "$stamp"
fi

if ! $PY -c "import dassl" 2>/dev/null; then
    echo "[setup] installing Dassl from GitHub"
    if ! timeout 300 $PIP --no-deps --no-build-isolation "$DASSL_URL" 2>/dev/null; then
        echo "[setup] Dassl could not be installed (GitHub unreachable?). Tests that need it will be"
        echo "[setup] skipped. Install it when you can, then run this again (INSTALL.md#dassl):"
        echo "    $PY -m pip install --no-deps --no-build-isolation $DASSL_URL"
    fi
fi
