"""Fused dequantize + GEMM kernels for the CPU (Rust, ``motensor._core.cpu_gemm``).

The custom ops' CPU implementations (``motensor.ops``) call these first; each returns ``None``
when its inputs are outside what the Rust kernels take (an unexpected dtype, a CUDA tensor...),
and the op then runs the exact torch reference (``reference.py``), which stays the oracle the
tests compare with. The numbers are the reference's: the same fp32 dequantized weight, rounded
to the same operand type, the same activation quantizers (they run in torch, from
``reference.py``), the same fp32 epilogue; only the order of the fp32 sums differs.

Per call, ``motensor.dispatch.choose`` (the one dispatcher) picks the path:

- ``M <= dispatch.CPU_FUSED_MAX_M``: the fused kernel. Memory-bound decode: the packed weight is read once,
  decoded into L1 a few rows at a time and multiplied with every activation row (rayon + AVX2 /
  AVX-512 / NEON chosen at run time, GIL released).
  On a CPU with AVX-512 BF16 the products whose operands are all exactly bf16 values (4-bit
  weights rounded to bf16 for bf16 activations, FP8 weights) use ``vdpbf16ps``: exact products,
  fp32 sums, as the fp32 kernels.
- larger ``M``: the weight is dequantized once (Rust, all cores) into an fp32 ``[N, K]`` matrix
  and multiplied by torch's BLAS, which is compute-bound-efficient where the fused kernel is not;
  with bf16 operands on a bf16 CPU, dequantized to bf16 a block of rows at a time into a buffer
  that stays in cache, each block multiplied by torch's bf16 GEMM (fp32 accumulation; the bf16
  product is rounded before the fp32 epilogue, one more rounding than the reference).

``MOTENSOR_CPU_KERNELS`` overrides it: ``rust`` (default), ``scalar`` (the Rust kernels forced to
their portable, non-SIMD build), ``reference`` (the pure-torch reference only).
A dispatch choice whose backend is the reference makes these functions return ``None``.
"""
from __future__ import annotations

import threading
import weakref
from typing import Optional

import torch
from torch import Tensor

from motensor import _core, dispatch
from motensor.kernels import reference as ref

_OPERAND = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}

mode = dispatch.cpu_kernel_mode
isa = dispatch.cpu_isa


def path_for(M: int, family: str = "w4a16", dtype: torch.dtype = torch.bfloat16) -> str:
    """``"fused"``, ``"dequant_blas"`` or ``"dequant_bf16_blas"`` for a product with ``M`` activation
    rows of ``dtype`` (dispatch's choice), ``"reference"`` where the torch reference runs."""
    return dispatch.choose(family, device="cpu", dtype=dtype, M=M).path or "reference"


def describe(M: int, family: str = "w4a16", dtype: torch.dtype = torch.bfloat16) -> str:
    """The CPU kernel a forward with ``M`` rows of ``dtype`` runs, and why (dispatch's choice)."""
    return dispatch.choose(family, device="cpu", dtype=dtype, M=M).describe()


def _rows(x: Tensor) -> int:
    return x.numel() // max(x.shape[-1], 1) if x.dim() else 1


def _path(family: str, x: Tensor, *tensors: Optional[Tensor]) -> Optional[str]:
    """The dispatcher's CPU path for this call (one ``choose``), or None where the reference runs."""
    if x.device.type != "cpu" or x.dtype not in _OPERAND:
        return None
    if not all(t is None or t.device.type == "cpu" for t in tensors):
        return None
    choice = dispatch.choose(family, device="cpu", dtype=x.dtype, M=_rows(x))
    return None if choice.is_reference else choice.path


# Bytes of bf16 weight rows per block of the bf16 BLAS path: decoded by all cores, then multiplied
# while still in cache.
_BF16_BLOCK_BYTES = 2 << 20
_buffers = threading.local()


def _bf16_block(rows: int, k: int) -> Tensor:
    """A reused per-thread bf16 buffer of ``rows x k`` (a fresh one per call would page-fault)."""
    buf = getattr(_buffers, "bf16", None)
    if buf is None or buf.numel() < rows * k:
        buf = torch.empty(rows * k, dtype=torch.bfloat16)
        _buffers.bf16 = buf
    return buf[: rows * k].view(rows, k)


def _scalar(t: Optional[Tensor]) -> Optional[Tensor]:
    """A [] / [1] scale as a contiguous 1-element fp32 tensor (the epilogue factor)."""
    return None if t is None else t.float().reshape(1).contiguous()


def _vec(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.float().reshape(-1).contiguous()


def _force_scalar(force_scalar: Optional[bool]) -> bool:
    return mode() == "scalar" if force_scalar is None else force_scalar


def _gemm(family: str, x: Tensor, out_dtype: torch.dtype, kind: str, n: int, k: int, qweight: Tensor, scales: Optional[Tensor],
          element: str, scale_kind: str, group: int, operand: str, *, scale_mul: Optional[float] = None,
          scale_div: Optional[float] = None, a: Optional[Tensor] = None, b: Optional[Tensor] = None,
          bias: Optional[Tensor] = None, force_scalar: Optional[bool] = None, path: Optional[str] = None,
          bf16_exact: bool = False) -> Tensor:
    """``epilogue(x @ W^T)`` in fp32 -> ``out_dtype``; ``x`` [..., K] (any float dtype). ``bf16_exact``:
    every activation and weight operand value is a bf16 value (the bf16 BLAS path may run)."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k).float().contiguous()
    m = x2.shape[0]
    fs = _force_scalar(force_scalar)
    qweight = qweight.contiguous()
    scales = None if scales is None else scales.contiguous()
    bias = _vec(bias)
    path = path or dispatch.choose(family, device="cpu", dtype=torch.float32, M=m).path
    bias_bf16 = None
    if path == "dequant_bf16_blas" and bias is not None:
        # The bias goes into the bf16 GEMM (torch adds it to the fp32 sums before the one rounding):
        # added after a rounded product it would lose what it cancels. It must be a bf16 value, and
        # then there must be no scale epilogue in between (fp8_linear's takes the fp32 path).
        bias_bf16 = bias.to(torch.bfloat16)
        if a is not None or b is not None or not torch.equal(bias_bf16.float(), bias):
            bf16_exact = False
    if path == "dequant_bf16_blas" and not bf16_exact:
        path = "dequant_blas"
    if path in ("dequant_blas", "dequant_bf16_blas"):
        if path == "dequant_bf16_blas":
            xb = x2.to(torch.bfloat16)
            y = torch.empty((m, n), dtype=torch.float32)
            nb = max(32, (_BF16_BLOCK_BYTES // (2 * max(k, 1))) // 32 * 32)
            for n0 in range(0, n, nb):
                wb = _bf16_block(min(nb, n - n0), k)
                n1 = n0 + wb.shape[0]
                _core.cpu_dequant(wb, kind, n, k, qweight, scales, element, scale_kind, group, scale_mul, scale_div,
                                  "bfloat16", fs, n0)
                y[:, n0:n1] = xb @ wb.t() if bias_bf16 is None else torch.addmm(bias_bf16[n0:n1], xb, wb.t())
            bias = None
        else:
            w = torch.empty((n, k), dtype=torch.float32)
            _core.cpu_dequant(w, kind, n, k, qweight, scales, element, scale_kind, group, scale_mul, scale_div,
                              operand, fs)
            y = x2 @ w.t()
        if a is not None and b is not None:
            y = y * (a.reshape(-1, 1) * b.reshape(1, -1) if a.numel() > 1 else a * b)
        elif a is not None:
            y = y * a.reshape(-1, 1)
        elif b is not None:
            y = y * b
        if bias is not None:
            y = y + bias
    else:
        y = torch.empty((m, n), dtype=torch.float32)
        _core.cpu_gemm(x2, y, m, kind, n, k, qweight, scales, element, scale_kind, group, scale_mul, scale_div,
                       operand, a, b, bias, fs)
    return y.reshape(*lead, n).to(out_dtype)


# ----------------------------------------------------------------------------- the families
def w4a16_gemm(x, qweight, scales, global_scale, bias, element: str, scale_kind: str, group_size: int,
               force_scalar: Optional[bool] = None, path: Optional[str] = None) -> Optional[Tensor]:
    """``ref.w4a16_gemm`` (E2M1/INT4 with E4M3/E8M0/F32 group scales), or None."""
    chosen = _path("w4a16", x, qweight, scales, global_scale, bias)
    if chosen is None or qweight.dtype != torch.uint8:
        return None
    if scale_kind == "F32":
        scales = scales.float()
    elif scales.dtype != {"E4M3": torch.float8_e4m3fn, "E8M0": torch.uint8}.get(scale_kind):
        return None
    gs = None if global_scale is None else float(ref.scalar(global_scale))
    n, k = qweight.shape[0], qweight.shape[1] * 2
    return _gemm("w4a16", x, x.dtype, "w4", n, k, qweight, scales, element, scale_kind, group_size, _OPERAND[x.dtype],
                 scale_mul=gs, bias=bias, force_scalar=force_scalar, path=path or chosen,
                 bf16_exact=x.dtype is torch.bfloat16)


def w4a8_gemm(x, qweight, scales, weight_scale_2, input_scale, bias, element: str, scale_kind: str,
              group_size: int, force_scalar: Optional[bool] = None, path: Optional[str] = None) -> Optional[Tensor]:
    """``ref.w4a8_gemm``: FP8 activations x the 4-bit weight rounded to E4M3, or None."""
    chosen = _path("w4a8", x, qweight, scales, weight_scale_2, input_scale, bias)
    if chosen is None or qweight.dtype != torch.uint8:
        return None
    if (element, scale_kind) == ("INT4", "F32"):
        scales, div = scales.float(), float(ref.scalar(weight_scale_2))
    elif (element, scale_kind) == ("E2M1", "E4M3") and scales.dtype == torch.float8_e4m3fn:
        div = None
    else:
        return None
    xq = ref.fp8_quant_static(x, input_scale).float()
    post = _scalar(ref.scalar(input_scale) * ref.scalar(weight_scale_2))
    n, k = qweight.shape[0], qweight.shape[1] * 2
    return _gemm("w4a8", xq, x.dtype, "w4", n, k, qweight, scales, element, scale_kind, group_size, "e4m3",
                 scale_div=div, b=post, bias=bias, force_scalar=force_scalar, path=path or chosen)


def w8a16_gemm(x, qweight, scales, bias, scale_kind: str, block_size: int,
               force_scalar: Optional[bool] = None, path: Optional[str] = None) -> Optional[Tensor]:
    """``ref.w8a16_gemm`` (FP8 weight with 2-D fp32 block or E8M0 group scales), or None."""
    chosen = _path("w8a16", x, qweight, scales, bias)
    if chosen is None or qweight.dtype != torch.float8_e4m3fn:
        return None
    n, k = qweight.shape
    if scale_kind == "F32":  # ScaleEncoding.F32 here: 2-D fp32 blocks (the binding calls them F32_BLOCK)
        scale_kind = "F32_BLOCK"
        scales = scales.float().reshape(-1)
        if scales.numel() != -(-n // block_size) * -(-k // block_size):
            return None
    elif scale_kind != "E8M0" or scales.dtype != torch.uint8:
        return None
    return _gemm("w8a16", x, x.dtype, "fp8", n, k, qweight, scales, "", scale_kind, block_size, _OPERAND[x.dtype],
                 bias=bias, force_scalar=force_scalar, path=path or chosen, bf16_exact=x.dtype is torch.bfloat16)


def fp8_linear(x, weight, weight_scale, input_scale, bias, force_scalar: Optional[bool] = None,
               path: Optional[str] = None) -> Optional[Tensor]:
    """``ref.fp8_linear`` (per-tensor static or per-token dynamic activations), or None."""
    chosen = _path("fp8_linear", x, weight, weight_scale, input_scale, bias)
    if chosen is None or weight.dtype != torch.float8_e4m3fn:
        return None
    n, k = weight.shape
    if input_scale is not None:
        xq, a = ref.fp8_quant_static(x, input_scale).float(), _scalar(input_scale)
    else:
        xq, sx = ref.fp8_quant_per_token(x)
        xq, a = xq.float(), _vec(sx)
    # Activations and weight are E4M3 values: exact in bf16.
    return _gemm("fp8_linear", xq, x.dtype, "fp8", n, k, weight, None, "", "NONE", 0, "float32", a=a, b=_vec(weight_scale),
                 bias=bias, force_scalar=force_scalar, path=path or chosen, bf16_exact=True)


def int8_linear(x, weight, weight_scale, input_scale, bias, force_scalar: Optional[bool] = None,
                path: Optional[str] = None) -> Optional[Tensor]:
    """``ref.int8_linear``: weight-only (scale in the operand) or W8A8 (exact int32 sums), or None."""
    family = "int8_linear" if input_scale is not None else "int8_weight_only"
    chosen = _path(family, x, weight, weight_scale, input_scale, bias)
    if chosen is None or weight.dtype != torch.int8:
        return None
    n, k = weight.shape
    sw = _vec(weight_scale)
    if sw is None or sw.numel() != n:
        return None
    if input_scale is None:
        return _gemm(family, x, x.dtype, "int8", n, k, weight, sw, "", "F32", 0, _OPERAND[x.dtype], bias=bias,
                     force_scalar=force_scalar, path=path or chosen)
    lead = x.shape[:-1]
    xq = ref.int8_quant_static(x, input_scale).reshape(-1, k).contiguous()
    y = torch.empty((xq.shape[0], n), dtype=torch.float32)
    _core.cpu_gemm_i8(xq, y, xq.shape[0], n, k, weight.contiguous(), _scalar(input_scale), sw, _vec(bias),
                      _force_scalar(force_scalar))
    return y.reshape(*lead, n).to(x.dtype)


def nvfp4_fake_quant(x: Tensor, input_scale: Tensor, out_dtype: Optional[torch.dtype] = None) -> Optional[Tensor]:
    """``ref.nvfp4_fake_quant`` in one Rust pass (bit for bit), or None (then the reference runs)."""
    if x.device.type != "cpu" or x.dtype not in _OPERAND or input_scale.device.type != "cpu":
        return None
    k = x.shape[-1] if x.dim() else 0
    if k == 0 or k % 16:
        return None
    if dispatch.choose("nvfp4_fake_quant", device="cpu", dtype=x.dtype, M=_rows(x)).is_reference:
        return None
    rows = x.numel() // k
    if input_scale.numel() == 1:
        gs = input_scale.float().reshape(1).contiguous()
    elif tuple(input_scale.shape) == tuple(x.shape[:-1]):
        gs = input_scale.float().reshape(rows).contiguous()
    else:
        return None  # the reference raises the shape error
    xf = x.float().contiguous()
    out = torch.empty_like(xf)
    _core.cpu_nvfp4_fake_quant(xf, out, k, gs)
    return out.to(out_dtype or x.dtype)



# ----------------------------------------------------------------------------- the prepared layer
# A decode step runs every QuantLinear once with one activation row: through the ops, each pays
# ~0.1 ms of Python and dispatcher work (quantizer op, conversions, GEMM op, argument checks)
# around tens of microseconds of arithmetic. The prepared layer checks a module's tensors once
# and then runs quantizer, fused product and output rounding in one Rust call, with the numbers
# of the op path (the same Rust functions; tests/test_cpu_linear.py compares bit for bit).
_PLANS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, Optional[_core.CpuLinear]]]" = weakref.WeakKeyDictionary()
_ROLES = ("weight", "weight_scale", "weight_scale_2", "input_scale", "pre_quant_scale", "bias")


def linear_plan(module, kind: str, qweight: Tensor, scales: Optional[Tensor], element: str, scale_kind: str,
                group: int, scale_mul: Optional[float] = None, scale_div: Optional[float] = None, act: str = "none",
                act_scale: Optional[float] = None, operand: Optional[str] = None, a: Optional[Tensor] = None,
                b: Optional[Tensor] = None, bias: Optional[Tensor] = None) -> "_core.CpuLinear":
    """The prepared CPU layer of ``module`` (a ``QuantLinear``) from its recipe's ``cpu_linear``
    arguments; ``pre_quant_scale`` is the module's own."""
    pre = module.pre_quant_scale
    return _core.CpuLinear(kind, module.out_features, module.in_features, qweight.detach().contiguous(), _own(scales), element,
                           scale_kind, group, scale_mul, scale_div, act, act_scale, operand, _own(a), _own(b), _own(bias),
                           None if pre is None else _own(pre.float().reshape(-1)))


def _own(t: Optional[Tensor]) -> Optional[Tensor]:
    # The layer keeps a tensor of its own on each storage it reads: when a module's tensor is given
    # new data (``.data =``, ``module.to``), the old storage stays alive until the layer is rebuilt.
    return None if t is None else t.detach().contiguous()


def _state(module) -> Optional[tuple]:
    """Where, at which version and as what each tensor of the module is: a layer prepared from other
    storage or an older in-place state is rebuilt. None when a tensor needs gradients (the ops'
    autograd runs) or is an inference tensor (no version counter)."""
    grad = torch.is_grad_enabled()
    bufs = module._buffers
    key: list[Optional[tuple]] = []
    try:
        for role in _ROLES:
            t = bufs[role] if role in bufs else getattr(module, role)
            if t is None:
                key.append(None)
            elif grad and t.requires_grad:
                return None
            else:
                key.append((t.data_ptr(), t._version, t.dtype))
    except RuntimeError:
        # An inference tensor (made under torch.inference_mode) has no version counter: its
        # in-place changes could not be seen, so such a module runs the op path.
        return None
    return tuple(key)


def linear_forward(module, x: Tensor) -> Optional[Tensor]:
    """``module(x)`` for a 2-D CPU ``x`` in one Rust call where the op path runs the fused kernel,
    else None (the caller then runs the op path: torch.compile, autograd, tensor subclasses, the
    reference or BLAS paths, formats without a prepared layer)."""
    recipe = module.recipe
    if (recipe.cpu_linear is None or type(x) is not torch.Tensor or x.dtype not in _OPERAND
            or (x.requires_grad and torch.is_grad_enabled()) or torch.compiler.is_compiling()):
        return None
    m = x.shape[0]
    kernels = mode()
    if dispatch.cpu_path(recipe.family, x.dtype, m, kernels) != "fused":
        return None
    state = _state(module)
    if state is None:
        return None
    cached = _PLANS.get(module)
    if cached is None or cached[0] != state:
        args = recipe.cpu_linear(module)
        cached = (state, None if args is None else linear_plan(module, **args))
        _PLANS[module] = cached
    plan = cached[1]
    if plan is None:
        return None
    y = torch.empty((m, module.out_features), dtype=x.dtype)
    plan.forward(x.contiguous(), y, kernels == "scalar")
    return y
