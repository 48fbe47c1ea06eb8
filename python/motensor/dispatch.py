"""Kernel selection: the one place that maps (op family, device, capability, dtype, M) to a kernel.

The custom ops in `motensor.ops` ask `choose(...)` which implementation to run; the Triton
launchers ask `triton_choice(...)` when called without an explicit `path`. Every distinct choice
is logged once (logger "motensor.dispatch", INFO) and `describe()` prints the rules or one
decision, so a module's kernel can always be inspected:

    >>> from motensor import dispatch
    >>> dispatch.choose("w4a16", device="cuda", dtype=torch.bfloat16, M=1, capability=(9, 0))
    KernelChoice(name='w4a16_gemv_splitk', backend='triton', path='gemv', operand='bf16')

The M thresholds come from MEASUREMENTS.md (dequant + cuBLAS wins for prefill) and from static
SASS instruction counts of the compiled kernels (kernels/README.md), not from GPU timings yet.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass
from typing import Optional, Union

import torch

log = logging.getLogger("motensor.dispatch")

GEMV_MAX_M = 2               # FMA GEMV: per-weight SASS 6.6 / 8.5 / 11.5 at M = 1 / 2 / 4 vs ~11.7 for
                             # the split-K dot (sm90, offline compile; kernels/README.md)
SPLITK_MAX_M = 16            # one 16-row MMA tile, split-K to fill the GPU
DEQUANT_CUBLAS_MIN_M = 1024  # dequantize once (CuPy) + cuBLAS when the GEMM is compute-bound

GEMM_FAMILIES = ("w4a16", "w8a16", "w4a8")
QUANT_FAMILIES = ("nvfp4_fake_quant", "mxfp8_fake_quant", "fp8_quant_per_token", "fp8_quant_static")
FAMILIES = GEMM_FAMILIES + QUANT_FAMILIES + ("dequant_w4",)

_PATHS = {
    "w4a16": ("gemv", "splitk", "tiled", "dequant_cublas"),
    "w8a16": ("splitk", "tiled"),
    "w4a8": ("splitk", "tiled"),
}
_DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


@dataclass(frozen=True)
class KernelChoice:
    """What runs: `name` is stable (logs, benchmarks); `path` is the launcher's path argument."""
    name: str
    family: str
    backend: str                 # "triton" | "cupy+cublas" | "cupy" | "torch"
    path: Optional[str] = None
    operand: Optional[str] = None  # MMA operand type: fp16, bf16, tf32, fp8e4m3, fp16(fp8 values)
    reason: str = ""

    def __repr__(self) -> str:
        return (f"KernelChoice(name={self.name!r}, backend={self.backend!r}, path={self.path!r}, "
                f"operand={self.operand!r})")


@functools.lru_cache(maxsize=None)
def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def triton_available() -> bool:
    return _has_module("triton")


def cupy_available() -> bool:
    from motensor.kernels import cupy_dequant
    return cupy_dequant.is_available()


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _device(device: Union[str, torch.device]) -> torch.device:
    return torch.device(device)


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


def triton_choice(family: str, device: Union[str, torch.device], dtype: torch.dtype, M: int,
                  capability: Optional[tuple[int, int]] = None, path: Optional[str] = None) -> KernelChoice:
    """The Triton (or CuPy) kernel for a GEMM/quantizer, by M alone; no CPU fallback.

    Used by the launchers (also under the interpreter, where capability is None) and by `choose`.
    """
    device = _device(device)
    if capability is None and device.type == "cuda":
        capability = _device_capability(device)
    if family in QUANT_FAMILIES:
        return _logged(KernelChoice(f"{family}_triton", family, "triton", None, None, "single Triton kernel"))
    if family not in _PATHS:
        raise ValueError(f"unknown kernel family {family!r}; known: {FAMILIES}")
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
    return _logged(KernelChoice(name, family, backend, path, None if backend != "triton" else operand, reason),
                   capability, dtype)


def choose(family: str, *, device: Union[str, torch.device], dtype: torch.dtype, M: int = 1,
           capability: Optional[tuple[int, int]] = None, path: Optional[str] = None) -> KernelChoice:
    """Pick the implementation the ops run for `family` on `device` with activations of `dtype`.

    Rules, in order: non-CUDA device -> pure-torch reference (the CPU implementation of every op);
    no Triton, compute capability < 7.0, or bf16 before sm80 -> torch reference on the GPU;
    `dequant_w4` -> CuPy kernel when CuPy imports, else torch; otherwise `triton_choice` (M rules).
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown kernel family {family!r}; known: {FAMILIES}")
    device = _device(device)
    if device.type != "cuda":
        return _logged(_reference(family, f"{device.type} device: exact pure-torch reference"), None, dtype)
    if capability is None:
        capability = _device_capability(device)
    if family == "dequant_w4":
        if cupy_available():
            return _logged(KernelChoice("dequant_w4_cupy", family, "cupy", None, None, "CuPy raw kernel"),
                           capability, dtype)
        return _logged(_reference(family, "CuPy not installed"), capability, dtype)
    if not triton_available():
        return _logged(_reference(family, "Triton not installed"), capability, dtype)
    if capability < (7, 0):
        return _logged(_reference(family, f"sm{capability[0]}{capability[1]} < sm70: no Triton"), capability, dtype)
    if dtype == torch.bfloat16 and capability < (8, 0) and family in ("w4a16", "w8a16"):
        return _logged(_reference(family, "bf16 MMA needs sm80"), capability, dtype)
    return triton_choice(family, device, dtype, M, capability, path)


def describe(family: Optional[str] = None, **kwargs) -> str:
    """Without arguments: the rules. With `choose` arguments: that decision and its reason."""
    if family is None:
        return "\n".join([
            "motensor kernel dispatch (motensor/dispatch.py)",
            "  non-CUDA device            -> <family>_torch_reference (exact pure-torch, kernels/reference.py)",
            "  no Triton / < sm70 / bf16 GEMM < sm80 -> <family>_torch_reference on the GPU",
            f"  w4a16  M <= {GEMV_MAX_M}            -> w4a16_gemv_splitk (FMA GEMV, bit-trick decode, split-K)",
            f"  w4a16/w8a16/w4a8 M <= {SPLITK_MAX_M}  -> *_dot_splitk (BLOCK_M = 16 tl.dot, split-K)",
            f"  w4a16  M >= {DEQUANT_CUBLAS_MIN_M} + CuPy, fp16/bf16 -> w4a16_dequant_cublas",
            "  otherwise                  -> *_dot_tiled (tl.dot, grouped tiles)",
            "  w4a8 operands: fp8e4m3 on sm89+, else fp16 holding the fp8-rounded values",
            "  quantizers: one Triton kernel each; dequant_w4: CuPy kernel or torch",
        ])
    c = choose(family, **kwargs)
    return f"{c!r}\n  reason: {c.reason}"


def _reference(family: str, reason: str) -> KernelChoice:
    return KernelChoice(f"{family}_torch_reference", family, "torch", None, None, reason)


_LOGGED: set = set()


def _logged(choice: KernelChoice, capability=None, dtype=None) -> KernelChoice:
    key = (choice.name, choice.operand, capability, dtype)
    if key not in _LOGGED:
        _LOGGED.add(key)
        cap = "" if capability is None else f" sm{capability[0]}{capability[1]}"
        log.info("motensor kernel %s (%s%s, %s): %s", choice.name, choice.backend, cap,
                 _DTYPE_NAMES.get(dtype, dtype), choice.reason)
    return choice
