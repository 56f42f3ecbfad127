#!/usr/bin/env bash
# Create .venv and install nanochat into it (idempotent; re-running only checks).
#   bash setup.sh          runtime dependencies (what runcpu.sh / speedrun.sh need)
#   bash setup.sh --dev    plus test tools (pytest, openai client, transformers, playwright) and Debian chromium
#
# torch: pyproject pins torch>=2.8,<=2.13.0. Where pip is offered a local CPU wheel of 2.13.0 (our CI, laptops
# with a wheelhouse) it takes that; on a GPU node pip resolves the CUDA build of the newest allowed torch from
# PyPI; a venv that already has a torch in range keeps it. Override with TORCH_SPEC, e.g.
#   TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" bash setup.sh
set -euo pipefail
cd "$(dirname "$0")"
DEV=0; [ "${1:-}" = "--dev" ] && DEV=1
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PY --version)"
    $PY -m venv .venv
fi
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
if [ -n "${TORCH_SPEC:-}" ] && ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "[setup] installing $TORCH_SPEC"
    "${PIP[@]}" $TORCH_SPEC
fi
EXTRA=""; [ $DEV = 1 ] && EXTRA="[dev]"
# the package is installed editable, so only a change of pyproject.toml (or of the extra) needs pip again: a stamp
# per pyproject.toml hash saves the ~15 s pip spends re-checking everything on each recipe run
STAMP=.venv/.nanochat-installed
HASH=$(sha256sum pyproject.toml | cut -c1-16)
if grep -qxF "$HASH$EXTRA" "$STAMP" 2>/dev/null || { [ $DEV = 0 ] && grep -qxF "$HASH[dev]" "$STAMP" 2>/dev/null; }; then
    echo "[setup] nanochat$EXTRA is installed for this pyproject.toml (rm $STAMP to reinstall)"
else
    echo "[setup] installing nanochat$EXTRA and its dependencies"
    if ! "${PIP[@]}" -e ".$EXTRA" > .venv/pip-install.log 2>&1; then
        cat .venv/pip-install.log >&2
        echo "[setup] pip install failed (log above, also in .venv/pip-install.log)" >&2
        exit 1
    fi
    grep -v "is ignored" .venv/pip-install.log || true
    echo "$HASH$EXTRA" >> "$STAMP"
fi
.venv/bin/python -c "import torch; print('[setup] torch', torch.__version__, '| cuda available:', torch.cuda.is_available())"
if [ $DEV = 1 ] && [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "[setup] installing Debian chromium for the browser test"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
            || echo "[setup] WARNING: chromium install failed; tests/test_browser.py will skip"
    else
        echo "[setup] chromium not found and cannot apt-get install it here: tests/test_browser.py will skip"
    fi
fi
