"""The CuPy dequant kernel: optional dependency handling, CUDA source compile check, GPU numerics.

(That importing the module never imports CuPy is checked in test_ops.test_imports_are_lazy.)
"""
import importlib.util
import os
import sys

import pytest
import torch

from kcases import make_w4
from motensor.formats import Element, ScaleEncoding
from motensor.kernels import cupy_dequant, reference as R


def test_missing_cupy_gives_a_clear_error(monkeypatch):
    """Import of the module never needs CuPy; using the kernel without it raises with a hint."""
    monkeypatch.setitem(sys.modules, "cupy", None)      # makes `import cupy` raise ImportError
    cupy_dequant._import_cupy.cache_clear()
    try:
        assert not cupy_dequant.is_available()
        qw, sc, gs = make_w4(8, 32, "E2M1", "E4M3", 16, seed=1, device="cpu")
        with pytest.raises(cupy_dequant.CupyUnavailableError, match="motensor\\[cuda12\\]"):
            cupy_dequant.dequant_w4(qw, sc, gs, element="E2M1", scale_kind="E4M3", group_size=16)
    finally:
        cupy_dequant._import_cupy.cache_clear()


def _nvrtc_and_headers():
    if importlib.util.find_spec("cuda") is None or importlib.util.find_spec("cuda.bindings") is None:
        return None
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations if spec else []):
        for sub in ("cu13/include", "cuda_runtime/include"):
            if os.path.exists(os.path.join(root, sub, "cuda_fp16.h")):
                return os.path.join(root, sub)
    return None


@pytest.mark.skipif(_nvrtc_and_headers() is None, reason="needs cuda-bindings NVRTC and CUDA headers")
@pytest.mark.parametrize("element,scale_kind,dtype", [("E2M1", "E4M3", torch.bfloat16), ("E2M1", "E8M0", torch.float16),
                                                      ("INT4", "F32", torch.bfloat16)])
def test_cuda_source_compiles_with_nvrtc(element, scale_kind, dtype):
    """NVRTC compiles the raw kernel without a GPU: catches C++ errors before a GPU ever sees it."""
    from cuda.bindings import nvrtc
    defines = cupy_dequant.defines(Element[element], ScaleEncoding[scale_kind], dtype, has_gs=True)
    err, prog = nvrtc.nvrtcCreateProgram((defines + cupy_dequant._SOURCE).encode(), b"dequant.cu", 0, [], [])
    opts = [b"--std=c++17", f"-I{_nvrtc_and_headers()}".encode(), b"-arch=compute_80"]
    (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
    _, n = nvrtc.nvrtcGetProgramLogSize(prog)
    # A fresh, mutable buffer: NVRTC writes into it. (`b" " * n` is the interned one-byte object
    # when the log is empty, n == 1; writing into it corrupted every later b" " in the process.)
    log = bytearray(n)
    nvrtc.nvrtcGetProgramLog(prog, log)
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, log.decode(errors="replace")


@pytest.mark.gpu
@pytest.mark.skipif(not cupy_dequant.is_available(), reason="CuPy not installed")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", [("E2M1", "E4M3", 16), ("E2M1", "E8M0", 32), ("INT4", "F32", 128)])
def test_cupy_dequant_matches_reference_gpu(kind, dtype):
    el, sk, g = kind
    qw, sc, gs = make_w4(200, 512, el, sk, g, seed=2, device="cuda")
    w = cupy_dequant.dequant_w4(qw, sc, gs, element=el, scale_kind=sk, group_size=g, dtype=dtype)
    ref = R.dequant_w4(qw, sc, gs, element=el, scale_kind=sk, group_size=g).to(dtype)
    assert torch.equal(w, ref)   # same fp32 products, one rounding


def _nvrtc():
    if importlib.util.find_spec("cuda") is None or importlib.util.find_spec("cuda.bindings") is None:
        return None
    try:
        from cuda.bindings import nvrtc
        err = nvrtc.nvrtcVersion()[0]
        return nvrtc if err == nvrtc.nvrtcResult.NVRTC_SUCCESS else None
    except Exception:   # no libnvrtc on this machine
        return None


@pytest.mark.skipif(_nvrtc() is None, reason="needs cuda-bindings with a loadable NVRTC")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("element,scale_kind,has_gs", [("E2M1", "E4M3", 1), ("E2M1", "E8M0", 0), ("INT4", "F32", 0),
                                                       ("INT4", "E4M3", 1)])
def test_cuda_source_needs_no_headers(element, scale_kind, has_gs, dtype):
    """The kernel compiles with no include path at all (cupy-cuda13x's NVRTC may not find
    cuda_fp16.h / cuda_bf16.h), for sm80 and sm90."""
    nvrtc = _nvrtc()
    src = cupy_dequant.defines(Element[element], ScaleEncoding[scale_kind], dtype, has_gs=bool(has_gs))
    src += cupy_dequant._SOURCE
    assert not any(line.lstrip().startswith("#include") for line in cupy_dequant._SOURCE.splitlines())
    for arch in (b"-arch=compute_80", b"-arch=compute_90"):
        err, prog = nvrtc.nvrtcCreateProgram(src.encode(), b"dequant.cu", 0, [], [])
        opts = [b"--std=c++17", arch]
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        _, n = nvrtc.nvrtcGetProgramLogSize(prog)
        log = bytearray(n)
        nvrtc.nvrtcGetProgramLog(prog, log)
        assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, log.decode(errors="replace")


def test_bit_tricks_of_the_cuda_source():
    """The fp32 bit constructions the CUDA source uses, done in numpy: every E2M1 code and every
    finite E4M3 byte decode exactly, and the bf16 rounding is round-to-nearest-even."""
    import numpy as np

    c = np.arange(16, dtype=np.uint32)
    e2m1 = (((c & 7) << 22) | ((c & 8) << 28)).view(np.float32) * np.float32(2.0 ** 126)
    assert np.array_equal(e2m1, np.array(R.E2M1_VALUES, dtype=np.float32))
    b = np.arange(256, dtype=np.uint32)
    e4m3 = (((b & 0x7F) << 20) | ((b & 0x80) << 24)).view(np.float32) * np.float32(2.0 ** 120)
    want = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float().numpy()
    finite = np.isfinite(want)
    assert np.array_equal(e4m3[finite], want[finite])
    v = (torch.randn(100000) * torch.logspace(-30, 30, 100000)).numpy().astype(np.float32)
    u = v.view(np.uint32)
    bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    assert np.array_equal(bits, torch.from_numpy(v).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16))
