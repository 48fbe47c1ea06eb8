#!/usr/bin/env bash
# The main job on the embedded default checkpoint: inspect it, load it, generate text with it.
set -euo pipefail
cd "$(dirname "$0")/.."
CKPT=${1:-tests/data/demo}
.venv/bin/motensor inspect "$CKPT"
