"""The Triton kernels compile to real sm80/sm89/sm90 machine code without a GPU, and their IR has
the properties a first GPU run would otherwise find the hard way.

The interpreter does not check what the GPU compiler checks (layouts, dot shapes and dtypes,
fp8 support per architecture), so variants are compiled ahead of time with Triton's bundled
ptxas, in a subprocess without TRITON_INTERPRET:

- a representative set (one config per path): no compile error, no register spill
  (stack frame <= aot_check.SPILL_STACK_BYTES), and in the Triton IR every row stride widened to
  64 bits (row * stride passes 2^31 at M * N >= 2^31) and every fp8 dot promoting to fp32 at
  least every 32 products (Hopper's fp8 MMA accumulates with fewer bits);
- the covering sweep (`slow`): every autotune config of every kernel path, for every format kind
  and W4A8 operand, with the other launcher choices rotated, for sm80, sm89 and sm90 (about 370
  compiles; minutes on two cores, cached by Triton afterwards). `make gpu-check` runs it again
  with the GPU machine's triton; `--sweep exhaustive` compiles the full product.
"""
import os
import subprocess
import sys

import pytest
import triton

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
needs_ptxas = pytest.mark.skipif(not os.path.exists(PTXAS), reason="Triton's bundled ptxas not found")
ENV = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")

SM90 = ["w4a16 gemv E2M1/E4M3 bf16", "w4a16 splitk INT4/F32 bf16", "w4a16 tiled E2M1/E8M0 bf16",
        "w8a16 splitk F32_BLOCK bf16", "w4a8 tiled E2M1/E4M3 op=fp8e4nv hw_cvt=False",
        "w4a8 splitk INT4/F32 op=fp8e4nv hw_cvt=True", "nvfp4_fake_quant", "fp8_quant_per_token",
        "moe_w4a16 E2M1/E4M3 bf16 gate_up", "moe_w4a16 INT4/F32 bf16 down", "moe_w8a16 F32_BLOCK bf16 down",
        "moe_w8a16 E8M0 bf16 gate_up"]
SM89 = ["w4a8 splitk E2M1/E4M3 op=fp8e4nv hw_cvt=False"]
SM80 = ["w4a8 splitk INT4/F32 op=fp16 hw_cvt=False", "w8a16 tiled E8M0 fp16", "moe_w4a16 E2M1/E8M0 bf16 down"]


def _run(code: str, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=timeout)


@needs_ptxas
def test_kernels_compile_for_sm90_sm89_sm80():
    code = ("from motensor.kernels import aot_check as a\n"
            f"print('\\n'.join(a.check({SM90!r}, 90) + a.check({SM89!r}, 89) + a.check({SM80!r}, 80)))\n")
    r = _run(code, 1200)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(r.stdout.strip().splitlines()) == len(SM90) + len(SM89) + len(SM80), r.stdout


def test_ir_checks_catch_32_bit_offsets_and_unbounded_fp8_accumulation():
    """The IR checks can fail: fed the IR lines of a kernel without the fixes, they say so."""
    from motensor.kernels import aot_check as a

    v = next(v for v in a.variants() if v.name.startswith("w4a8 tiled E2M1/E4M3 op=fp8e4nv"))
    good = ("%a = arith.extsi %stride_xm : i32 to i64\n%b = arith.extsi %stride_wn : i32 to i64\n"
            "%c = arith.extsi %stride_cm : i32 to i64\n"
            "%d = tt.dot %x, %w, %acc, inputPrecision = tf32 {maxNumImpreciseAcc = 32 : i32} : "
            "tensor<64x32xf8E4M3FN> * tensor<32x128xf8E4M3FN> -> tensor<64x128xf32>\n")
    assert a.ir_problems(v, good) == []
    narrow = good.replace("%c = arith.extsi %stride_cm : i32 to i64\n", "")
    assert a.ir_problems(v, narrow) == ["stride_cm is used in 32-bit offsets"]
    unbounded = good.replace("maxNumImpreciseAcc = 32", "maxNumImpreciseAcc = 1073741824")
    assert len(a.ir_problems(v, unbounded)) == 1
    assert "imprecise" in a.ir_problems(v, unbounded)[0]


def test_sweeps_cover_every_config_and_kind():
    """The covering sweep holds every autotune config of every path for every format kind (and
    every W4A8 operand), and both values of each launcher flag somewhere."""
    from motensor.kernels import aot_check as a, w4a8, w4a16, w8a16

    vs = a.variants(sweep="covering")
    names = [v.name for v in vs]
    for path, configs in (("gemv", w4a16.GEMV_CONFIGS), ("splitk", w4a16.SPLITK_CONFIGS),
                          ("tiled", w4a16.TILED_CONFIGS)):
        for el, sk, _ in a.W4_KINDS:
            for cfg in configs:
                assert any(n.startswith(f"w4a16 {path} {el}/{sk} ") and str(cfg.kwargs) in n
                           and f"w{cfg.num_warps}s{cfg.num_stages}" in n for n in names), (path, el, sk, cfg)
    for path, configs in (("splitk", w8a16.SPLITK_CONFIGS), ("tiled", w8a16.TILED_CONFIGS)):
        for sk, _ in a.W8_KINDS:
            assert sum(n.startswith(f"w8a16 {path} {sk} ") for n in names) == len(configs)
    for path, configs in (("splitk", w4a8.SPLITK_CONFIGS), ("tiled", w4a8.TILED_CONFIGS)):
        assert sum(n.startswith(f"w4a8 {path} ") for n in names) == len(configs) * len(a.W4A8_KINDS) * len(
            a.W4A8_OPERANDS)
    for flag in ("HAS_BIAS", "EVEN_K", "X_PREQUANT"):
        for value in (True, False):
            assert any(f"{flag}={value}" in n for n in names), (flag, value)
    for act in ("bf16", "fp16", "fp32"):
        assert any(n.startswith("w4a16 tiled") and f" {act} " in n for n in names)
    from motensor.kernels import moe_w4a16

    for cfg in [c for _, c in moe_w4a16.CONFIGS] + [moe_w4a16.PRE_SM90_LARGE]:
        for el, sk, _ in a.W4_KINDS:
            assert any(n.startswith(f"moe_w4a16 {el}/{sk} ") and str(cfg.kwargs) in n for n in names), (el, sk, cfg)
        for sk, _ in a.W8_KINDS:
            assert any(n.startswith(f"moe_w8a16 {sk} ") and str(cfg.kwargs) in n for n in names), (sk, cfg)
    assert len(a.variants(sweep="exhaustive")) > 4 * len(vs)


@pytest.mark.slow
@needs_ptxas
def test_covering_sweep_compiles_for_sm80_sm89_sm90():
    """Every config x format kind x W4A8 operand compiles, with the IR properties above; 16-bit
    activations never spill on sm90 (fp32/tf32 tiles may: autotuning discards slow configs)."""
    jobs = max(1, min(4, os.cpu_count() or 1))
    r = subprocess.run([sys.executable, "-m", "motensor.kernels.aot_check", "--sweep", "covering", "--arch",
                        "90,89,80", "--jobs", str(jobs), "--quiet"], env=ENV, capture_output=True, text=True,
                       timeout=3600)
    out = r.stdout
    assert r.returncode == 0, (out + r.stderr)[-5000:]
    assert "covering sweep" in out.strip().splitlines()[-1], out[-2000:]
    spills16 = [line for line in out.splitlines() if line.startswith("SPILL sm90") and " fp32 " not in line]
    assert not spills16, "\n".join(spills16)
