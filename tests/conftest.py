"""Shared pytest set-up: fixture locations, the `gpu` marker, Triton's CPU interpreter."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Triton reads TRITON_INTERPRET when a kernel is decorated, so it must be set before any kernel
# module is imported. Without a GPU, every Triton kernel in the tests runs in the interpreter.
try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except Exception:  # pragma: no cover - torch is a hard dependency of the tests
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from helpers.fixtures import DATA, REFERENCES, fixture_dirs  # noqa: E402,F401  (re-exported)


def pytest_collection_modifyitems(config, items):
    if _HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA
