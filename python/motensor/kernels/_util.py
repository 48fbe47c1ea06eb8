"""Host-side helpers shared by the Triton launchers: argument checks, interpreter detection, configs."""
from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any, Optional, Union, overload

import torch

from motensor.formats import Element, ScaleEncoding, as_enum

if TYPE_CHECKING:  # pragma: no cover
    import triton

#: The elements the 4-bit kernels decode (``Element.value`` is their ``ELEMENT`` constexpr).
W4_ELEMENTS = (Element.E2M1, Element.INT4)
#: dtype of each group-scale encoding in the kernel layout (``ScaleEncoding.value`` is the
#: kernels' ``SCALE_KIND`` constexpr).
SCALE_DTYPES = {ScaleEncoding.E4M3: torch.float8_e4m3fn, ScaleEncoding.E8M0: torch.uint8,
                ScaleEncoding.F32: torch.float32}
ACT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def interpreting() -> bool:
    """True when Triton kernels are decorated for the CPU interpreter (TRITON_INTERPRET=1).

    The variable is read when `@triton.jit` runs, i.e. at kernel-module import; launchers use this
    to skip autotuning (the interpreter would execute every config) and to allow CPU tensors.
    """
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_device(*tensors: Optional[torch.Tensor]) -> None:
    """Kernels run on CUDA tensors, or on CPU tensors only under the interpreter."""
    devs = {t.device for t in tensors if t is not None}
    if len(devs) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devs))}")
    dev = devs.pop()
    if dev.type == "cpu" and not interpreting():
        raise RuntimeError(
            "motensor Triton kernels need CUDA tensors; CPU tensors work only under the Triton "
            "interpreter (set TRITON_INTERPRET=1 before importing motensor.kernels). The ops in "
            "motensor.ops run the pure-torch reference on CPU.")


def w4_element(element: Union[Element, str]) -> Element:
    """A 4-bit element kind (``Element`` or its name); ``ValueError`` for anything else."""
    el = as_enum(Element, element, "element")
    if el not in W4_ELEMENTS:
        raise ValueError(f"4-bit kernels decode {[e.name for e in W4_ELEMENTS]}, got {el.name}")
    return el


def check_w4_layout(qweight: torch.Tensor, scales: torch.Tensor, scale_kind: Union[ScaleEncoding, str],
                    group_size: int) -> tuple[int, int]:
    """Validate the 4-bit contract (qweight uint8 [N, K//2], scales [K//G, N]); return (N, K)."""
    if qweight.dtype != torch.uint8 or qweight.dim() != 2:
        raise ValueError(f"qweight must be uint8 [N, K//2], got {qweight.dtype} {tuple(qweight.shape)}")
    n, k = qweight.shape[0], qweight.shape[1] * 2
    if group_size < 8 or group_size & (group_size - 1) or k % group_size:
        # ModelOpt uses 16/32/64/128; powers of two keep every tile view a power of two.
        raise ValueError(f"group_size {group_size} must be a power of two >= 8 dividing K={k}")
    kind = as_enum(ScaleEncoding, scale_kind, "scale_kind")
    want = SCALE_DTYPES[kind]
    if scales.dtype != want or tuple(scales.shape) != (k // group_size, n):
        raise ValueError(f"{kind.name} scales must be {want} [K//G, N] = [{k // group_size}, {n}], "
                         f"got {scales.dtype} {tuple(scales.shape)}")
    return n, k


@overload
def as_scalar(t: torch.Tensor, name: str) -> torch.Tensor: ...
@overload
def as_scalar(t: None, name: str) -> None: ...
def as_scalar(t: Optional[torch.Tensor], name: str) -> Optional[torch.Tensor]:
    """0-d or [1] float tensor -> contiguous fp32 [1] view for a kernel pointer (no host sync)."""
    if t is None:
        return None
    if t.numel() != 1:
        raise ValueError(f"{name} must be a scalar tensor, got shape {tuple(t.shape)}")
    return t.reshape(1).to(torch.float32)


def flatten_rows(x: torch.Tensor, k: int) -> torch.Tensor:
    """[..., K] activation -> 2-D [M, K] with unit stride along K (a view when possible)."""
    if x.shape[-1] != k:
        raise ValueError(f"x has K={x.shape[-1]}, weight expects K={k}")
    if x.dtype not in ACT_DTYPES:
        raise ValueError(f"x dtype must be fp16/bf16/fp32, got {x.dtype}")
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    return x2


def m_bucket(m: int) -> int:
    """Autotune key bucket for M: next power of two, capped (large M all tune alike)."""
    b = 1
    while b < m and b < 4096:
        b *= 2
    return b


@functools.lru_cache(maxsize=None)
def sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def config(num_warps: int = 4, num_stages: int = 3, **meta: Any) -> "triton.Config":
    """An autotune candidate: block sizes as keyword meta-parameters."""
    import triton

    return triton.Config(meta, num_warps=num_warps, num_stages=num_stages)


def resolve_path(family: str, x: torch.Tensor, m: int, path: Optional[str], paths: tuple[str, ...]) -> str:
    """The launcher path: the caller's, checked, or dispatch's choice for M rows of x."""
    if path is None:
        from motensor import dispatch

        path = dispatch.triton_choice(family, x.device, x.dtype, m).path
    if path not in paths:
        raise ValueError(f"path must be one of {paths}, got {path!r}")
    return path
