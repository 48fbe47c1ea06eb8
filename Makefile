# The two commands of the README. Each sets everything up itself (scripts/setup.sh: a cached
# virtual environment with the pinned requirements, and the Rust extension in release mode).
.PHONY: demo test setup rust-test py-test

setup:
	./scripts/setup.sh

demo: setup
	./scripts/demo.sh

test: setup rust-test py-test

rust-test:
	cargo test --release -p motensor-core

py-test:
	.venv/bin/python -m pytest -q
