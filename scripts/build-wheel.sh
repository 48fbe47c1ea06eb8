#!/usr/bin/env bash
# Builds the release wheel for users: abi3 (Python >= 3.9), manylinux2014 (glibc 2.17).
# A plain `maturin build` links against this machine's glibc (tagged e.g. manylinux_2_34, refused by
# older distributions); with --zig, zig links against glibc 2.17 whatever the build machine has, and
# --compatibility makes maturin check the result (it refuses a non-compliant wheel).
# Output: dist/motensor-<version>-cp39-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
# ziglang: zig as a PyPI package (no toolchain download outside the package index).
.venv/bin/python -c "import ziglang" 2>/dev/null || uv pip install --quiet --python .venv/bin/python "ziglang>=0.13"
VIRTUAL_ENV="$PWD/.venv" PATH="$PWD/.venv/bin:$PATH" \
  .venv/bin/maturin build --release --zig --compatibility manylinux2014 --out dist "$@"
ls -1 dist/*.whl
