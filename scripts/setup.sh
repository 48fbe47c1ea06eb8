#!/usr/bin/env bash
# Idempotent set-up: a project virtual environment (.venv) with the pinned test requirements and
# motensor built in release mode (Rust extension via maturin, Python sources in place).
# torch is a multi-GB download: uv keeps it in its cache, so only the first run on a machine pays.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if ! command -v uv >/dev/null 2>&1; then
  "$PY" -m pip install --quiet --user "uv>=0.4" || "$PY" -m pip install --quiet "uv>=0.4"
  export PATH="$HOME/.local/bin:$PATH"
fi

stamp=.venv/.motensor-requirements
if [ ! -x .venv/bin/python ]; then
  uv venv --quiet --python "$PY" .venv
fi
if ! cmp -s requirements/test.txt "$stamp" 2>/dev/null; then
  uv pip install --quiet --compile-bytecode --python .venv/bin/python -r requirements/test.txt
  cp requirements/test.txt "$stamp"
fi

# maturin develop: builds the abi3 extension in release mode and installs the package editable,
# so python/motensor edits need no rebuild; Rust edits do (cargo keeps the build incremental).
VIRTUAL_ENV="$PWD/.venv" .venv/bin/maturin develop --release --uv --quiet
.venv/bin/python -c "import motensor, motensor._core as c; print('motensor', motensor.__version__, 'core', c.__version__)"
