#!/usr/bin/env bash
# The main job on the embedded default checkpoint: inspect it, load it, generate text with it.
# tests/data/demo is a small Llama trained on the King James Bible and exported by NVIDIA ModelOpt
# as NVFP4. Runs on the CPU (no GPU needed); pass another checkpoint directory and device to try yours:
#   scripts/demo.sh path/to/checkpoint cuda
set -euo pipefail
cd "$(dirname "$0")/.."
CKPT=${1:-tests/data/demo}
DEVICE=${2:-cpu}
PROMPT=${PROMPT:-"And God said unto Moses,"}
MOTENSOR=.venv/bin/motensor

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }

step "motensor inspect $CKPT    (headers and quantization metadata, nothing loaded)"
"$MOTENSOR" inspect "$CKPT"

step "motensor load $CKPT --device $DEVICE    (every tensor onto the device, in kernel layout)"
"$MOTENSOR" load "$CKPT" --device "$DEVICE" --quiet

step "motensor generate $CKPT --prompt \"$PROMPT\" --device $DEVICE"
"$MOTENSOR" generate "$CKPT" --prompt "$PROMPT" --max-new-tokens 32 --device "$DEVICE"
