"""Kernel tests: Triton kernels run under the CPU interpreter when there is no GPU.

tests/conftest.py (loaded first) sets TRITON_INTERPRET before any kernel is decorated and skips
`gpu`-marked tests without CUDA; this file only pins a Triton default.
"""
import os
from pathlib import Path

import pytest

import torch

if not torch.cuda.is_available():
    # Triton 3.9 warns on every compile that this default will change; pin today's behaviour.
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    """Every kernel test runs compiled (not interpreted) on a GPU machine: make gpu-check selects
    them with the gpu tests (`-m "gpu or gpu_check"`)."""
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.gpu_check)
