"""Kernel selection: the one place that maps (op family, device, capability, dtype, shape) to a kernel.

Every ``motensor::`` custom op asks `choose(...)` which implementation to run and runs what the
returned `KernelChoice` names (its ``backend`` and ``path``); the Triton launchers ask
`triton_choice(...)` when called without an explicit ``path``; ``QuantLinear.kernel_for`` prints
the same choice. Every distinct choice is logged once (logger "motensor.dispatch", INFO).
`describe()` without arguments prints the rules by running `choose` over representative devices
and sizes, so the text is the decision itself and cannot drift from it:

    >>> from motensor import dispatch
    >>> dispatch.choose("w4a16", device="cuda", dtype=torch.bfloat16, M=1, capability=(9, 0))
    KernelChoice(name='w4a16_gemv_splitk', backend='triton', path='gemv', operand='bf16')

The M thresholds come from MEASUREMENTS.md (dequant + cuBLAS wins for prefill) and from static
SASS instruction counts of the compiled kernels (kernels/README.md), not from GPU timings yet.
This module imports no kernel module (the kernels import it).
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch

from motensor import _cupy

log = logging.getLogger("motensor.dispatch")

GEMV_MAX_M = 2               # FMA GEMV: per-weight SASS 6.6 / 8.5 / 11.5 at M = 1 / 2 / 4 vs ~11.7 for
                             # the split-K dot (sm90, offline compile; kernels/README.md)
SPLITK_MAX_M = 16            # one 16-row MMA tile, split-K to fill the GPU
DEQUANT_CUBLAS_MIN_M = 1024  # dequantize once (CuPy) + cuBLAS when the GEMM is compute-bound
SCALED_MM_ALIGN = 16         # torch._scaled_mm: K and N multiples of 16
INT_MM_ALIGN = 8             # torch._int_mm: K and N multiples of 8
INT_MM_MIN_M = 17            # cuBLASLt's int8 GEMM wants more than 16 rows (smaller M is padded)
CPU_FUSED_MAX_M = 16         # CPU: fused Rust dequant+GEMM up to here; above, Rust dequantize + torch BLAS
                             # (benches/cpu_gemm.py on a 2-core AVX2 box: fused wins at M = 8, BLAS at 64)
CPU_BF16_ISA = "avx512_bf16"  # CPUs whose bf16 dot products make torch's bf16 GEMM the fast one
CPU_FP8_FUSED_MAX_M = 64     # fp8_linear on those CPUs: the fused bf16-dot kernel up to here (12.6 ms vs
                             # 38 ms for dequantize + fp32 BLAS at 64x4096x4096, benches/cpu_gemm.py)
CPU_KERNEL_MODES = ("rust", "scalar", "reference")  # MOTENSOR_CPU_KERNELS

GEMM_FAMILIES = ("w4a16", "w8a16", "w4a8")
QUANT_FAMILIES = ("nvfp4_fake_quant", "mxfp8_fake_quant", "fp8_quant_per_token", "fp8_quant_static")
# FP8 / INT8 weights on torch's own cuBLAS(Lt) GEMMs.
NATIVE_FAMILIES = ("fp8_linear", "int8_linear", "int8_weight_only")
# Routed experts: one grouped launch over every (token, expert) pair (kernels/moe_w4a16.py).
MOE_FAMILIES = ("moe_w4a16", "moe_w8a16")
FAMILIES = GEMM_FAMILIES + QUANT_FAMILIES + ("dequant_w4",) + NATIVE_FAMILIES + MOE_FAMILIES
# Families with a Rust CPU kernel (motensor.kernels.cpu); the rest run the reference on the CPU.
CPU_FAMILIES = GEMM_FAMILIES + NATIVE_FAMILIES
_CPU_PATHS = ("fused", "dequant_blas", "dequant_bf16_blas")
# Activation quantizers with a Rust CPU implementation (the rest run the reference on the CPU).
CPU_QUANT_FAMILIES = ("nvfp4_fake_quant",)
# Families whose weight operand is exactly bf16 with bf16 activations and whose scales are all in
# the operand: above CPU_FUSED_MAX_M on a bf16 CPU they dequantize to bf16 blocks for torch's bf16
# GEMM, whose one rounding is then the reference's. (fp8_linear's scales come after the sums: torch's
# CPU bf16 GEMM rounds before them, a second rounding that MoE routing can amplify; it keeps fp32.)
CPU_BF16_BLAS_FAMILIES = ("w4a16", "w8a16")

_PATHS = {
    "w4a16": ("gemv", "splitk", "tiled", "dequant_cublas"),
    "w8a16": ("splitk", "tiled"),
    "w4a8": ("splitk", "tiled"),
}
_DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


@dataclass(frozen=True)
class KernelChoice:
    """What runs: `name` is stable (logs, benchmarks); `backend` says which implementation the op
    runs ("triton", "cupy", "cupy+cublas", "torch._scaled_mm", "torch._int_mm", "torch.matmul",
    or "torch" for the exact reference); `path` is the Triton launcher's path argument."""
    name: str
    family: str
    backend: str
    path: Optional[str] = None
    operand: Optional[str] = None  # MMA operand type: fp16, bf16, tf32, fp8e4m3, fp16(fp8 values)
    reason: str = ""

    @property
    def is_reference(self) -> bool:
        return self.backend == "torch"

    def describe(self) -> str:
        return f"{self!r}\n  reason: {self.reason}"

    def __repr__(self) -> str:
        return (f"KernelChoice(name={self.name!r}, backend={self.backend!r}, path={self.path!r}, "
                f"operand={self.operand!r})")


@functools.lru_cache(maxsize=None)
def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def triton_available() -> bool:
    return _has_module("triton")


def cupy_available() -> bool:
    return _cupy.is_available()


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _device_capability(device: torch.device) -> tuple[int, int]:
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _capability(index)


def _operand(family: str, dtype: torch.dtype, capability: Optional[tuple[int, int]]) -> str:
    if family == "w4a8":
        # fp8 tensor cores from sm89; the interpreter's fp8 dot is exact on fp8 operands.
        if capability is None or capability >= (8, 9):
            return "fp8e4m3"
        return "fp16(fp8 values)"
    return "tf32" if dtype == torch.float32 else _DTYPE_NAMES[dtype]


def _triton(family: str, device: torch.device, dtype: torch.dtype, M: int,
            capability: Optional[tuple[int, int]], path: Optional[str]) -> KernelChoice:
    if family in QUANT_FAMILIES:
        return KernelChoice(f"{family}_triton", family, "triton", None, None, "single Triton kernel")
    if family in MOE_FAMILIES:
        if path is not None and path != "grouped":
            raise ValueError(f"{family} path must be 'grouped', got {path!r}")
        return KernelChoice(f"{family}_grouped_dot", family, "triton", "grouped", _operand(family, dtype, capability),
                            f"M={M} routed pairs: one grouped launch, pairs sorted by expert (fused_moe scheme)")
    if family not in _PATHS:
        raise ValueError(f"{family!r} has no Triton kernel; Triton families: {tuple(_PATHS) + QUANT_FAMILIES}")
    if path is not None:
        if path not in _PATHS[family]:
            raise ValueError(f"{family} path must be one of {_PATHS[family]}, got {path!r}")
        reason = "path forced by caller"
    elif family == "w4a16" and M <= GEMV_MAX_M:
        path, reason = "gemv", f"M={M} <= {GEMV_MAX_M}: FMA GEMV, split-K"
    elif M <= SPLITK_MAX_M:
        path, reason = "splitk", f"M={M} <= {SPLITK_MAX_M}: 16-row MMA tile, split-K"
    elif (family == "w4a16" and M >= DEQUANT_CUBLAS_MIN_M and device.type == "cuda"
          and dtype != torch.float32 and cupy_available()):
        path, reason = "dequant_cublas", f"M={M} >= {DEQUANT_CUBLAS_MIN_M}: dequantize once + cuBLAS"
    else:
        path, reason = "tiled", f"M={M}: tiled MMA"
    operand = _operand(family, dtype, capability)
    name = {
        ("w4a16", "gemv"): "w4a16_gemv_splitk",
        ("w4a16", "dequant_cublas"): "w4a16_dequant_cublas",
    }.get((family, path))
    if name is None:
        kind = "dot" if family != "w4a8" else ("fp8_dot" if operand == "fp8e4m3" else "fp16emu_dot")
        name = f"{family}_{kind}_{path}"
    backend = "cupy+cublas" if path == "dequant_cublas" else "triton"
    return KernelChoice(name, family, backend, path, None if backend != "triton" else operand, reason)


def cpu_kernel_mode() -> str:
    """``MOTENSOR_CPU_KERNELS``: ``rust`` (default), ``scalar`` (the Rust kernels' portable,
    non-SIMD build) or ``reference`` (the pure-torch reference only). Read on every call."""
    m = os.environ.get("MOTENSOR_CPU_KERNELS", "rust").strip().lower()
    return m if m in CPU_KERNEL_MODES else "rust"


def cpu_isa() -> str:
    """The instruction set the Rust CPU kernels use here: ``avx512_bf16``, ``avx512``, ``avx2`` or
    ``scalar`` (no NEON path yet: ARM runs the portable build). ``MOTENSOR_CPU_ISA`` caps it (read
    once per process)."""
    if cpu_kernel_mode() == "scalar":
        return "scalar"
    from motensor import _core

    return _core.cpu_isa()


def _cpu(family: str, dtype: torch.dtype, M: int, path: Optional[str]) -> KernelChoice:
    mode = cpu_kernel_mode()
    if family not in CPU_FAMILIES + CPU_QUANT_FAMILIES:
        return _reference(family, "cpu device: exact pure-torch reference")
    if mode == "reference":
        return _reference(family, "MOTENSOR_CPU_KERNELS=reference")
    if family in CPU_QUANT_FAMILIES:
        return KernelChoice(f"{family}_cpu", family, "rust", "fused", None,
                            "Rust, one pass per row, the reference's arithmetic bit for bit")
    if dtype not in _DTYPE_NAMES:
        return _reference(family, f"{dtype} activations: exact pure-torch reference")
    if family == "int8_linear":
        # W8A8: exact int32 sums at every M, one kernel.
        return KernelChoice("int8_linear_cpu_fused", family, "rust", "fused", "int8",
                            f"Rust int8 x int8 -> int32 kernel ({cpu_isa()})")
    if path is not None:
        if path not in _CPU_PATHS:
            raise ValueError(f"CPU path must be one of {_CPU_PATHS}, got {path!r}")
        reason = "path forced by caller"
    elif M <= CPU_FUSED_MAX_M:
        path, reason = "fused", f"M={M} <= {CPU_FUSED_MAX_M}: fused dequant+GEMM, packed weight read once"
        if dtype is torch.bfloat16 and cpu_isa() == CPU_BF16_ISA:
            reason += " (bf16 dot products where weight and activations are exact bf16 values)"
    elif family == "fp8_linear" and M <= CPU_FP8_FUSED_MAX_M and cpu_isa() == CPU_BF16_ISA:
        # E4M3 activations and weights are exact bf16 values: the fused kernel's bf16 dot products
        # keep fp32 sums before the scale epilogue, which torch's bf16 GEMM would round first.
        path, reason = "fused", (f"M={M} <= {CPU_FP8_FUSED_MAX_M}, FP8 activations x FP8 weights on a CPU with bf16 dot "
                                 "products: fused kernel, fp32 sums before the scales")
    elif dtype is torch.bfloat16 and family in CPU_BF16_BLAS_FAMILIES and cpu_isa() == CPU_BF16_ISA:
        path, reason = "dequant_bf16_blas", (f"M={M} > {CPU_FUSED_MAX_M}, bf16 on a CPU with bf16 dot products: "
                                             "Rust dequantize to bf16 block by block + torch bf16 GEMM")
    else:
        path, reason = "dequant_blas", f"M={M} > {CPU_FUSED_MAX_M}: Rust dequantize once + torch fp32 BLAS"
    operand = "bf16" if path == "dequant_bf16_blas" else "fp32"
    return KernelChoice(f"{family}_cpu_{path}", family, "rust", path, operand, f"{reason} ({cpu_isa()})")


@functools.lru_cache(maxsize=1024)
def _cpu_logged(family: str, dtype: torch.dtype, M: int, mode: str) -> KernelChoice:
    return _logged(_cpu(family, dtype, M, None), None, dtype)


def cpu_path(family: str, dtype: torch.dtype, M: int, mode: Optional[str] = None) -> Optional[str]:
    """The ``path`` of ``choose(family, device="cpu", dtype=dtype, M=M)``, or None where the
    reference runs: the same decision, memoised (a decode step asks once per layer). ``mode``:
    ``cpu_kernel_mode()`` if the caller has just read it."""
    choice = _cpu_logged(family, dtype, M, mode or cpu_kernel_mode())
    return None if choice.is_reference else choice.path


def _aligned(N: Optional[int], K: Optional[int], align: int) -> bool:
    return all(d is None or d % align == 0 for d in (N, K))


def _native(family: str, M: int, N: Optional[int], K: Optional[int],
            capability: tuple[int, int]) -> KernelChoice:
    """FP8 / INT8 weights on torch's cuBLAS(Lt) GEMMs, where their shape rules are met."""
    if family == "fp8_linear":
        if not hasattr(torch, "_scaled_mm"):
            return _reference(family, "this torch has no _scaled_mm")
        if capability < (8, 9):
            return _reference(family, f"sm{capability[0]}{capability[1]} < sm89: no FP8 tensor cores")
        if not _aligned(N, K, SCALED_MM_ALIGN):
            return _reference(family, f"N={N}, K={K} not multiples of {SCALED_MM_ALIGN} (torch._scaled_mm)")
        return KernelChoice("fp8_linear_scaled_mm", family, "torch._scaled_mm", None, "fp8e4m3",
                            "cuBLASLt FP8 GEMM (per-tensor or row-wise scales)")
    if family == "int8_linear":
        if not _aligned(N, K, INT_MM_ALIGN):
            return _reference(family, f"N={N}, K={K} not multiples of {INT_MM_ALIGN} (torch._int_mm)")
        pad = f", M={M} padded to {INT_MM_MIN_M}" if M < INT_MM_MIN_M else ""
        return KernelChoice("int8_linear_int_mm", family, "torch._int_mm", None, "int8", f"cuBLASLt INT8 GEMM{pad}")
    # int8_weight_only
    return KernelChoice("int8_weight_only_dequant_matmul", family, "torch.matmul", None, None,
                        "dequantize to the activation dtype + cuBLAS")


def _decide(family: str, device: torch.device, dtype: torch.dtype, M: int, N: Optional[int], K: Optional[int],
            capability: Optional[tuple[int, int]], path: Optional[str]) -> tuple[KernelChoice, Optional[tuple[int, int]]]:
    """The decision (see `choose`), without logging; also returns the capability it used."""
    if family not in FAMILIES:
        raise ValueError(f"unknown kernel family {family!r}; known: {FAMILIES}")
    if device.type == "cpu":
        return _cpu(family, dtype, M, path), None
    if device.type != "cuda":
        return _reference(family, f"{device.type} device: exact pure-torch reference"), None
    if capability is None:
        capability = _device_capability(device)
    if family in NATIVE_FAMILIES:
        return _native(family, M, N, K, capability), capability
    if family == "dequant_w4":
        if cupy_available():
            return KernelChoice("dequant_w4_cupy", family, "cupy", None, None, "CuPy raw kernel"), capability
        return _reference(family, "CuPy not installed"), capability
    if not triton_available():
        return _reference(family, "Triton not installed"), capability
    if capability < (7, 0):
        return _reference(family, f"sm{capability[0]}{capability[1]} < sm70: no Triton"), capability
    if dtype == torch.bfloat16 and capability < (8, 0) and family in ("w4a16", "w8a16") + MOE_FAMILIES:
        return _reference(family, "bf16 MMA needs sm80"), capability
    return _triton(family, device, dtype, M, capability, path), capability


def triton_choice(family: str, device: Union[str, torch.device], dtype: torch.dtype, M: int,
                  capability: Optional[tuple[int, int]] = None, path: Optional[str] = None) -> KernelChoice:
    """The Triton (or CuPy) kernel for a GEMM/quantizer, by M alone; no CPU fallback.

    Used by the launchers (also under the interpreter, where capability is None) and by `choose`.
    """
    device = torch.device(device)
    if capability is None and device.type == "cuda":
        capability = _device_capability(device)
    return _logged(_triton(family, device, dtype, M, capability, path), capability, dtype)


def choose(family: str, *, device: Union[str, torch.device], dtype: torch.dtype, M: int = 1,
           N: Optional[int] = None, K: Optional[int] = None, capability: Optional[tuple[int, int]] = None,
           path: Optional[str] = None) -> KernelChoice:
    """Pick the implementation the ops run for `family` on `device` with activations of `dtype`
    and a product of `M` rows, `N` outputs and `K` inputs (N/K matter to the torch GEMMs).

    Rules, in order: CPU -> the Rust kernels for the GEMM families (fused dequant+GEMM up to
    ``CPU_FUSED_MAX_M`` rows, Rust dequantize + torch BLAS above; the W8A8 INT8 kernel at every M),
    the pure-torch reference for the rest, for other dtypes, or with ``MOTENSOR_CPU_KERNELS=reference``;
    other non-CUDA devices -> pure-torch reference;
    FP8 / INT8 weights -> torch._scaled_mm (sm89+, N/K % 16) / torch._int_mm (N/K % 8) / dequantize
    + matmul (weight-only INT8), else the reference; `dequant_w4` -> CuPy kernel when CuPy imports,
    else torch; no Triton, compute capability < 7.0, or bf16 before sm80 -> torch reference on the
    GPU; otherwise `triton_choice` (M rules; the routed-experts families ``moe_w4a16`` / ``moe_w8a16`` ->
    their one grouped kernel, with ``M`` the number of routed (token, expert) pairs).
    """
    choice, cap = _decide(family, torch.device(device), dtype, M, N, K, capability, path)
    return _logged(choice, cap, dtype)


# Representative situations `describe()` runs `choose` on: (label, device, capability, dtype).
_SITUATIONS = (
    ("cpu", "cpu", None, torch.bfloat16),
    ("sm75 bf16", "cuda", (7, 5), torch.bfloat16),
    ("sm80 bf16", "cuda", (8, 0), torch.bfloat16),
    ("sm90 bf16", "cuda", (9, 0), torch.bfloat16),
)


def _rules() -> str:
    lines = ["motensor kernel dispatch (motensor/dispatch.py; each line is choose() on that case)"]
    ms = sorted({1, GEMV_MAX_M, SPLITK_MAX_M, SPLITK_MAX_M + 1, CPU_FUSED_MAX_M, CPU_FUSED_MAX_M + 1,
                 DEQUANT_CUBLAS_MIN_M})
    for family in FAMILIES:
        seen: set[tuple[str, str]] = set()
        for label, device, cap, dtype in _SITUATIONS:
            for m in ms if family in GEMM_FAMILIES else (1,):
                for n, k in ((4096, 4096), (4100, 4100)) if family in NATIVE_FAMILIES else ((None, None),):
                    c, _ = _decide(family, torch.device(device), dtype, m, n, k, cap, None)
                    if (c.name, c.reason) in seen:
                        continue
                    seen.add((c.name, c.reason))
                    shape = f" M={m}" if family in GEMM_FAMILIES else ""
                    shape += f" N=K={n}" if n is not None else ""
                    lines.append(f"  {family:<20} {label:<9}{shape:<14} -> {c.name} ({c.backend}): {c.reason}")
    return "\n".join(lines)


def describe(family: Optional[str] = None, **kwargs: Any) -> str:
    """Without arguments: the rules. With `choose` arguments: that decision and its reason."""
    if family is None:
        return _rules()
    return choose(family, **kwargs).describe()


def _reference(family: str, reason: str) -> KernelChoice:
    return KernelChoice(f"{family}_torch_reference", family, "torch", None, None, reason)


_LOGGED: set[tuple[Any, ...]] = set()


def _logged(choice: KernelChoice, capability: Optional[tuple[int, int]] = None,
            dtype: Optional[torch.dtype] = None) -> KernelChoice:
    key = (choice.name, choice.operand, capability, dtype)
    if key not in _LOGGED:
        _LOGGED.add(key)
        cap = "" if capability is None else f" sm{capability[0]}{capability[1]}"
        log.info("motensor kernel %s (%s%s, %s): %s", choice.name, choice.backend, cap,
                 _DTYPE_NAMES.get(dtype, dtype) if dtype is not None else None, choice.reason)
    return choice
