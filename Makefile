# The two commands of the README. Each sets everything up itself (scripts/setup.sh: a cached
# virtual environment with the pinned requirements, and the Rust extension in release mode).
.PHONY: demo test setup lint stubs stub-check py-lint rust-lint rust-test py-test gpu-check

setup:
	./scripts/setup.sh

demo: setup
	./scripts/demo.sh

test: setup lint rust-test py-test

# Static checks (seconds once caches are warm): the generated stub and enums match the built
# extension, ruff, mypy on python/motensor, clippy with warnings as errors.
lint: stub-check py-lint rust-lint

stub-check:
	.venv/bin/python scripts/gen_stubs.py --check

# Rewrites python/motensor/_core.pyi and _vocab.py after a change to the Rust bindings or table.
stubs:
	.venv/bin/python scripts/gen_stubs.py

py-lint:
	.venv/bin/ruff check python scripts benches tests examples
	.venv/bin/mypy

rust-lint:
	cargo clippy --release --workspace --all-targets -- -D warnings

rust-test:
	cargo test --release -p motensor-core

py-test:
	.venv/bin/python -m pytest -q

# On a GPU machine (no install, no network): that machine's python3, the abi3 extension built here
# and carried along. Refuses at once without a CUDA GPU. benches/README.md has the device command.
GPU_PYTHON ?= python3
gpu-check:
	$(GPU_PYTHON) scripts/gpu_check.py $(GPU_CHECK_ARGS)
