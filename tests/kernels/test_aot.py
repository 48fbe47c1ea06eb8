"""The Triton kernels compile to real sm80/sm90 machine code without a GPU, without register spills
(stack frame <= aot_check.SPILL_STACK_BYTES).

The interpreter does not check what the GPU compiler checks (layouts, dot shapes and dtypes,
fp8 support per architecture), so a representative set of variants is compiled ahead of time with
Triton's bundled ptxas, in a subprocess without TRITON_INTERPRET. `python -m
motensor.kernels.aot_check --all-configs` compiles every autotune config (minutes).
"""
import os
import subprocess
import sys

import pytest
import triton

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")

SM90 = ["w4a16 gemv E2M1/E4M3 bf16", "w4a16 splitk INT4/F32 bf16", "w4a16 tiled E2M1/E8M0 bf16",
        "w8a16 F32 bf16", "w4a8 tiled E2M1/E4M3 op=fp8e4nv hw_cvt=False", "nvfp4_fake_quant"]
SM80 = ["w4a8 splitk INT4/F32 op=fp16 hw_cvt=False", "w8a16 E8M0 fp16"]


@pytest.mark.skipif(not os.path.exists(PTXAS), reason="Triton's bundled ptxas not found")
def test_kernels_compile_for_sm90_and_sm80():
    code = ("from motensor.kernels import aot_check as a\n"
            f"print('\\n'.join(a.check({SM90!r}, 90) + a.check({SM80!r}, 80)))\n")
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(r.stdout.strip().splitlines()) == len(SM90) + len(SM80), r.stdout
