"""Kernel tests: Triton kernels run under the CPU interpreter when there is no GPU.

tests/conftest.py (loaded first) sets TRITON_INTERPRET before any kernel is decorated and skips
`gpu`-marked tests without CUDA; this file only pins a Triton default.
"""
import os

import torch

if not torch.cuda.is_available():
    # Triton 3.9 warns on every compile that this default will change; pin today's behaviour.
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
