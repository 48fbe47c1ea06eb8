"""Kernel tests: Triton kernels run under the CPU interpreter when there is no GPU.

TRITON_INTERPRET is read when `@triton.jit` decorates a kernel, i.e. when motensor.kernels.* is
first imported, so it must be set here, before any test module imports a kernel. The ops
(motensor.ops) import kernel modules lazily, so importing them elsewhere does not interfere.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # Triton 3.9 warns on every compile that this default will change; pin today's behaviour.
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip)
