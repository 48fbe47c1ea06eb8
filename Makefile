# The two commands of the README. Each sets everything up itself (scripts/setup.sh: a cached
# virtual environment with the pinned requirements, and the Rust extension in release mode).
.PHONY: demo test setup rust-test py-test gpu-check

setup:
	./scripts/setup.sh

demo: setup
	./scripts/demo.sh

test: setup rust-test py-test

rust-test:
	cargo test --release -p motensor-core

py-test:
	.venv/bin/python -m pytest -q

# On a GPU machine (no install, no network): that machine's python3, the abi3 extension built here
# and carried along. Refuses at once without a CUDA GPU. benches/README.md has the device command.
GPU_PYTHON ?= python3
gpu-check:
	$(GPU_PYTHON) scripts/gpu_check.py $(GPU_CHECK_ARGS)
