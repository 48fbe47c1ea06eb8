#!/usr/bin/env python
"""GEMM benchmark (issue 4): motensor's quantized Linear layers against the GPU's other GEMMs and
the HBM roofline, on Llama-3.1-8B and -70B projection shapes, over a sweep of M (tokens).

One command on a GPU machine writes ``benches/results/gemm-<gpu>-<YYYYMMDD>.json`` and the PNG
beside it (schema and impl names: shared/BENCHMARKS.md; metric ``us``, case ``<M>x<N>x<K>``)::

    python benches/gemm.py                        # 8b + 70b shapes, M = 1 ... 4096, 10 formats
    python benches/gemm.py --quick                # 14336x4096, M = 1, 16, 1024: a few minutes
    python benches/gemm.py --shapes 8b --m 1,16 --formats NVFP4,W4A16_AWQ
    python benches/gemm.py --smoke                # tiny shape on the CPU: tests the harness
    python benches/gemm.py --merge a.json b.json  # one result file from several partial runs

Rows per case (all bf16 activations, same random weight and input for every impl):

- ``motensor_<quant_algo>``: the whole ``QuantLinear.forward`` (activation quantization, the
  GEMM, the casts), module built with ``QuantLinear.from_float``; the note starts with the
  ratios below and names the kernel dispatch chose (``module.kernel_for(M)``).
- ``motensor_<quant_algo>_gemm``: the bare GEMM op on an input quantized beforehand, where that
  differs from the forward (NVFP4's and MXFP8's fake-quant pass, the FP8 per-token quantizer,
  the INT8 quantizer). W4A8 quantizes its input inside the op, so it has no such row.
- ``cublas_bf16`` (``torch.mm``), ``scaled_mm_fp8`` (``torch._scaled_mm``, per-tensor scales, input
  quantized outside the timed region), ``tinygemm_int4`` (``torch._weight_int4pack_mm`` on the
  W4A16_AWQ weight: INT4, G = 128), ``gemlite_a16w4`` (when ``gemlite`` imports; same weight),
  ``naive_dequant`` (the NVFP4 weight dequantized to bf16 by plain torch ops on every call, then
  ``torch.mm``).
- ``roofline`` (NVFP4: 4.5 bits per weight), ``roofline_<quant_algo>`` and ``roofline_bf16``: the
  weight's bytes (scales included) over the HBM bandwidth of a 1 GiB device-to-device copy
  measured in the same run (bytes read + written). Activations and outputs are not counted.

Timing (GPU): CUDA events around each call; before each call 256 MiB are zeroed (L2 flushed)
and a GPU-side sleep longer than the call's host time is queued, so launch overhead stays out of
the figure (the host time per call is in the note). ``value`` = the median over the calls of a
round, minimum over ``--rounds`` rounds (3). Each row's note also has the output's relative error
against the ``cublas_bf16`` output (quantization error: about 0.1 for 4-bit, 0.03 for FP8; a
broken kernel shows >= 1). A peer or format that fails records ``"value": null`` and the error;
peers that cannot run at all are listed under ``skipped``; shapes that do not fit the GPU's
free memory are skipped. The last lines printed are the ratio table and the issue's targets.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import importlib.util
import json
import math
import os
import shlex
import signal
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import common  # noqa: E402  (benches/common.py)

SHAPES: dict[str, tuple[tuple[int, int], ...]] = {   # (N, K) = (out_features, in_features)
    "8b": ((4096, 4096), (14336, 4096), (4096, 14336)),
    "70b": ((8192, 8192), (28672, 8192), (8192, 28672)),
}
SMOKE_SHAPE = (64, 256)
DEFAULT_M = (1, 4, 16, 64, 256, 1024, 4096)
DEFAULT_FORMATS = ("NVFP4", "W4A16_NVFP4", "W4A16_AWQ", "W4A8_AWQ", "W4A8_NVFP4_FP8", "FP8",
                   "FP8_PER_CHANNEL_PER_TOKEN", "FP8_PB_WO", "MXFP8", "W8A8_SQ_PER_CHANNEL")
# --quick (make gpu-check): the 8B shapes, the targets' shape first (a deadline cuts from the end),
# M = 1, 16, 4096, one format per target of the summary.
QUICK_SHAPES = ((14336, 4096), (4096, 4096), (4096, 14336))
QUICK_M = (1, 16, 4096)
QUICK_FORMATS = ("NVFP4", "W4A16_NVFP4", "W4A16_AWQ", "W4A8_AWQ", "FP8")
SMOKE_M = (1, 3)

WEIGHT_STD = 0.02      # random bf16 weight ~ N(0, 0.02), input ~ N(0, 1)
INPUT_AMAX = 4.0       # calibrated |x| max for the static-activation formats
FLUSH_BYTES = 256 << 20
COPY_BYTES = 1 << 30
TARGET_ROUND_MS = 25.0
TINYGEMM_GROUP, TINYGEMM_INNER_K_TILES = 128, 8

# The issue's targets: (key, description, formats, case filter, ratio(values) -> x, limit, "<=" | ">=")
TARGET_SHAPE = (14336, 4096)
FOUR_BIT = ("NVFP4", "W4A16_NVFP4", "W4A16_AWQ", "W4A8_AWQ", "W4A8_NVFP4_FP8", "NVFP4_AWQ", "MXFP4",
            "W4A8_MXFP4_FP8")
W4A16 = ("W4A16_NVFP4", "W4A16_AWQ")
W4A8 = ("W4A8_AWQ", "W4A8_NVFP4_FP8")
FP8_MODULES = ("FP8", "FP8_PER_CHANNEL_PER_TOKEN")


def log(*a) -> None:
    print(f"[gemm {time.strftime('%H:%M:%S')}]", *a, flush=True)


def short_error(e: BaseException, limit: int = 300) -> str:
    msg = " ".join(f"{type(e).__name__}: {e}".split())
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


# -- timing ---------------------------------------------------------------------------------------
@dataclass
class Timing:
    us: float                      # min over rounds of the per-round median
    medians: list[float]
    best: float                    # fastest single call
    calls: int                     # calls per round
    host_us: Optional[float]       # host time to issue one call (GPU only)
    flags: list[str] = field(default_factory=list)

    def note(self) -> str:
        parts = [f"median {self.us:.2f} us, rounds {'/'.join(f'{m:.2f}' for m in self.medians)}, "
                 f"min {self.best:.2f}, {len(self.medians)}x{self.calls} calls"]
        if self.host_us is not None:
            parts.append(f"host {self.host_us:.0f} us/call")
        return "; ".join(parts + self.flags)


class Timer:
    """Device time of one call. GPU: CUDA events, L2 flushed and the launch hidden before each
    call (module docstring). CPU (``--smoke``): ``perf_counter`` per call."""

    def __init__(self, device: torch.device, rounds: int, smoke: bool):
        self.device, self.rounds, self.smoke = device, rounds, smoke
        self.cuda = device.type == "cuda"
        self.cycles_per_us = None
        if self.cuda:
            self.flush = torch.empty(FLUSH_BYTES // 4, dtype=torch.int32, device=device)
            try:
                torch.cuda._sleep(1000)
                torch.cuda.synchronize()
                cycles = 20_000_000
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                torch.cuda._sleep(cycles)
                e.record()
                e.synchronize()
                self.cycles_per_us = cycles / (s.elapsed_time(e) * 1e3)
            except Exception as err:  # noqa: BLE001 - timing still works, launches may show
                log(f"torch.cuda._sleep unavailable ({short_error(err)}): launch overhead is not hidden")

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _sleep(self, us: float) -> None:
        if self.cycles_per_us and us > 0:
            torch.cuda._sleep(int(us * self.cycles_per_us))

    def measure(self, fn: Callable[[], object]) -> Timing:
        fn()   # first call: compilation, autotuning, handles
        self.sync()
        fn()
        self.sync()
        return self._gpu(fn) if self.cuda else self._cpu(fn)

    def _cpu(self, fn) -> Timing:
        reps = 3 if self.smoke else 10
        medians, best = [], math.inf
        for _ in range(self.rounds):
            ts = []
            for _ in range(reps):
                t = time.perf_counter()
                fn()
                ts.append((time.perf_counter() - t) * 1e6)
            medians.append(statistics.median(ts))
            best = min(best, min(ts))
        return Timing(min(medians), medians, best, reps, None)

    def _gpu(self, fn) -> Timing:
        flags = []
        # Host time per call: the GPU is held by a sleep, so nothing drains and no call waits.
        # A call that waits for the GPU shows the sleep's 5 ms on its first issue.
        host_us, syncs = None, False
        if self.cycles_per_us:
            self._sleep(5000)
            ts = []
            for _ in range(3):
                t = time.perf_counter()
                fn()
                ts.append((time.perf_counter() - t) * 1e6)
            self.sync()
            host_us, syncs = statistics.median(ts), ts[0] > 4000
            if syncs:
                flags.append("the call waits for the GPU (host sync): launch overhead included")
        pad = 0.0 if host_us is None or syncs else min(max(30.0, 1.5 * host_us), 3000.0)
        # Estimate the device time, then size the rounds to about TARGET_ROUND_MS each.
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        self.flush.zero_()
        self._sleep(pad * 3)
        s.record()
        for _ in range(3):
            fn()
        e.record()
        e.synchronize()
        est_us = s.elapsed_time(e) * 1e3 / 3
        reps = int(min(100, max(5, TARGET_ROUND_MS * 1e3 / (est_us + pad + 100.0))))
        medians, best = [], math.inf
        for _ in range(self.rounds):
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
            for i in range(reps):
                self.flush.zero_()
                self._sleep(pad)
                starts[i].record()
                fn()
                ends[i].record()
            ends[-1].synchronize()
            ts = [a.elapsed_time(b) * 1e3 for a, b in zip(starts, ends)]
            medians.append(statistics.median(ts))
            best = min(best, min(ts))
        return Timing(min(medians), medians, best, reps, host_us, flags)


def copy_bandwidth(device: torch.device) -> tuple[float, str]:
    """GB/s of a large device-to-device copy, bytes read + written (best of 5)."""
    if device.type == "cuda":
        src = torch.empty(COPY_BYTES, dtype=torch.uint8, device=device).random_(0, 255)
        dst = torch.empty_like(src)
        dst.copy_(src)
        best = math.inf
        for _ in range(5):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            dst.copy_(src)
            e.record()
            e.synchronize()
            best = min(best, s.elapsed_time(e) / 1e3)
        del src, dst
        torch.cuda.empty_cache()
        return 2 * COPY_BYTES / best / 1e9, f"{COPY_BYTES >> 30} GiB device-to-device copy, read + write counted, best of 5"
    n = 32 << 20
    src = torch.randint(0, 255, (n,), dtype=torch.uint8)
    dst = torch.empty_like(src)
    best = math.inf
    for _ in range(3):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * n / best / 1e9, f"smoke: {n >> 20} MiB host copy (CPU), read + write counted"


# -- the quantized modules --------------------------------------------------------------------------
def build_module(fmt: str, linear: torch.nn.Linear, device: torch.device):
    """``QuantLinear.from_float`` on the weight's device; if that fails (a quantizer that builds
    CPU temporaries, say), on a CPU copy, then moved. Returns (module, note)."""
    from motensor.formats import get_format
    from motensor.nn import QuantLinear

    spec = get_format(fmt)
    kw = {}
    if spec.rule("input_scale") is not None and spec.rule("input_scale").required:
        kw["input_amax"] = INPUT_AMAX
    rule = spec.rule("pre_quant_scale")
    if rule is not None and rule.required:   # SmoothQuant: a per-channel smoothing factor
        g = torch.Generator(device="cpu").manual_seed(7)
        pqs = torch.empty(linear.in_features).uniform_(0.5, 2.0, generator=g)
        kw["pre_quant_scale"] = pqs.to(device=linear.weight.device, dtype=linear.weight.dtype)
    try:
        return QuantLinear.from_float(linear, fmt, **kw), ""
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as e:  # noqa: BLE001
        if device.type != "cuda":
            raise
        first = short_error(e, 160)
    gc.collect()
    torch.cuda.empty_cache()
    cpu = torch.nn.Linear(linear.in_features, linear.out_features, bias=False, device="meta")
    cpu.weight = torch.nn.Parameter(linear.weight.detach().cpu(), requires_grad=False)
    if "pre_quant_scale" in kw:
        kw["pre_quant_scale"] = kw["pre_quant_scale"].cpu()
    mod = QuantLinear.from_float(cpu, fmt, **kw).to(device)
    return mod, f"quantized on the CPU (from_float on {device.type} failed: {first})"


def module_bytes(mod) -> int:
    """The bytes a forward must read for the weight: weight, scales, scalars, pre_quant_scale."""
    total = 0
    for role in ("weight", "weight_scale", "weight_scale_2", "input_scale", "pre_quant_scale"):
        t = getattr(mod, role, None)
        if t is not None:
            total += t.numel() * t.element_size()
    return total


def nvfp4_bytes(n: int, k: int) -> int:
    return n * k // 2 + n * k // 16 + 4   # E2M1 nibbles + one E4M3 scale per 16 + weight_scale_2


class NeedsCuda(RuntimeError):
    pass


def bare_gemm(mod, x: torch.Tensor):
    """(callable, note, comparable) for the GEMM op alone on an input quantized beforehand, or None
    where the forward is the op itself; ``comparable``: the output is y (not a raw accumulator).
    Raises where the op cannot run on this device."""
    from motensor import ops
    from motensor.formats import Activation
    from motensor.kernels import reference as ref

    recipe = mod.recipe
    act = recipe.activation
    if mod.pre_quant_scale is not None:
        x = x * mod.pre_quant_scale.to(x.dtype)
    if act is Activation.NVFP4:
        xq = ops.nvfp4_fake_quant(x, mod.input_scale)
        w4a16 = recipe_for_activation(mod, Activation.NONE)
        return (lambda: w4a16.forward(mod, xq)), "w4a16_gemm on the NVFP4 fake-quantized input", True
    if act is Activation.MXFP8:
        xq = ops.mxfp8_fake_quant(x)
        return (lambda: ops.w8a16_gemm(xq, mod.weight, mod.weight_scale, scale_kind=recipe.kernel.scale.name,
                                       block_size=mod.group_size, bias=mod.bias)), \
            "w8a16_gemm on the MXFP8 fake-quantized input", True
    if act is Activation.FP8_PER_TOKEN:
        if x.device.type != "cuda":
            raise NeedsCuda("needs CUDA (torch._scaled_mm)")
        xq, sa = ops.fp8_quant_per_token(x)
        sb = mod.weight_scale.float().reshape(1, -1)
        return (lambda: torch._scaled_mm(xq, mod.weight.t(), scale_a=sa.float(), scale_b=sb,
                                         out_dtype=torch.bfloat16)), \
            "torch._scaled_mm row-wise on the per-token quantized input", True
    if act is Activation.INT8_PER_TENSOR:
        if x.device.type != "cuda":
            raise NeedsCuda("needs CUDA (torch._int_mm)")
        xq = ref.int8_quant_static(x, mod.input_scale)
        m = xq.shape[0]
        if m <= 16:
            xq = torch.nn.functional.pad(xq, (0, 0, 0, 17 - m))
        wt = mod.weight.t()
        return (lambda: torch._int_mm(xq, wt)), \
            "torch._int_mm on the INT8-quantized input (M padded to 17 if <= 16; int32 out, no rescale)", False
    return None


def recipe_for_activation(mod, activation):
    """The recipe of the module's weight with other activations (the bare weight GEMM)."""
    from motensor.recipes import RECIPES

    return next(r for r in RECIPES if r.codec is mod.recipe.codec and r.activation is activation)


def forward_note(mod) -> str:
    from motensor.formats import Activation

    recipe = mod.recipe
    if recipe.family == "w4a8":
        return "activation quantization inside the w4a8 op"
    if recipe.family == "fp8_linear" and recipe.activation is Activation.FP8_PER_TENSOR:
        return "the bare GEMM is the scaled_mm_fp8 row"
    return ""


# -- peers -----------------------------------------------------------------------------------------
def awq_tensors(modules: dict, w: torch.Tensor):
    """The W4A16_AWQ weight in kernel layout (qweight [N, K/2] codes q + 8, even k low; scales
    fp32 [K/G, N]): the module's when built, else quantized here."""
    if "W4A16_AWQ" in modules:
        m = modules["W4A16_AWQ"]
        return m.weight, m.weight_scale
    from motensor.formats import get_format
    from motensor.layout import to_kernel_layout
    from motensor.quantize import quantize_weight

    spec = get_format("W4A16_AWQ")
    q = quantize_weight(spec, w.float(), group_size=TINYGEMM_GROUP)
    return to_kernel_layout(spec, "weight", q["weight"]), to_kernel_layout(spec, "weight_scale", q["weight_scale"])


def nvfp4_tensors(modules: dict, w: torch.Tensor):
    for name in ("W4A16_NVFP4", "NVFP4"):
        if name in modules:
            m = modules[name]
            return m.weight, m.weight_scale, m.weight_scale_2
    from motensor.formats import get_format
    from motensor.layout import to_kernel_layout
    from motensor.quantize import quantize_weight

    spec = get_format("W4A16_NVFP4")
    q = quantize_weight(spec, w.float())
    return tuple(to_kernel_layout(spec, r, q[r]) for r in ("weight", "weight_scale", "weight_scale_2"))


def fp8_tensors(modules: dict, w: torch.Tensor):
    if "FP8" in modules:
        return modules["FP8"].weight, modules["FP8"].weight_scale
    from motensor.quantize import quantize_weight

    q = quantize_weight("FP8", w.float(), input_amax=INPUT_AMAX)
    return q["weight"], q["weight_scale"].float().reshape(())


def unpack_codes(qweight: torch.Tensor) -> torch.Tensor:
    """Kernel-layout uint8 [N, K/2] -> uint8 codes [N, K] (0..15)."""
    return torch.stack([qweight & 0xF, qweight >> 4], dim=-1).flatten(-2)


def tinygemm_prepare(qweight: torch.Tensor, scales: torch.Tensor):
    """torch's int4 tinygemm operands from the W4A16_AWQ weight. tinygemm computes
    ``(code - 8) * scale + zero`` per group (checked on the CPU twin of the op), so zero = 0 and
    the codes are AWQ's q + 8. The weight operand changed across torch versions: since 2.5 uint8
    [N, K/2] with the *even* k in the high nibble (ours has it low), before that int32 [N, K]
    codes. Each form is tried on the first rows of the weight and kept only if its product
    matches the dequantized weight's (so a wrong nibble order can never be timed)."""
    rows = min(qweight.shape[0], 256)
    probe_q, probe_s = qweight[:rows].contiguous(), scales[:, :rows].contiguous()
    want_w = (unpack_codes(probe_q).float() - 8) * probe_s.float().t().repeat_interleave(TINYGEMM_GROUP, dim=1)
    g = torch.Generator(device=qweight.device).manual_seed(3)
    px = torch.randn(4, qweight.shape[1] * 2, device=qweight.device, generator=g).to(torch.bfloat16)
    want = px.float() @ want_w.t()

    def sz_of(s):
        return torch.stack([s.float(), torch.zeros_like(s, dtype=torch.float32)], dim=-1).to(torch.bfloat16).contiguous()

    forms = (
        ("uint8 [N, K/2], even k in the high nibble (torch >= 2.5)", lambda q: ((q << 4) | (q >> 4)).contiguous()),
        ("uint8 [N, K/2], even k in the low nibble", lambda q: q.contiguous()),
        ("int32 [N, K] codes (torch < 2.5)", lambda q: unpack_codes(q).to(torch.int32).contiguous()),
    )
    tried = []
    for form, make in forms:
        try:
            packed = torch._convert_weight_to_int4pack(make(probe_q), TINYGEMM_INNER_K_TILES)
            got = torch._weight_int4pack_mm(px, packed, TINYGEMM_GROUP, sz_of(probe_s)).float()
            err = float((got - want).norm() / want.norm())
        except (RuntimeError, TypeError) as e:
            tried.append(f"{form}: {short_error(e, 120)}")
            continue
        if err < 0.05:
            packed = torch._convert_weight_to_int4pack(make(qweight), TINYGEMM_INNER_K_TILES)
            return packed, sz_of(scales), f"weight input {form}"
        tried.append(f"{form}: rel err {err:.3g}")
    raise RuntimeError("no _convert_weight_to_int4pack input form gave the right product: " + " | ".join(tried))


@dataclass
class Peer:
    impl: str
    make: Callable[[torch.Tensor], Callable[[], object]]   # x -> timed callable
    note: str = ""


def build_peers(b: "Bench", w: torch.Tensor, modules: dict) -> list[Peer]:
    """The peers that can run here, each built once per shape; failures become rows of nulls."""
    from motensor.kernels import reference as ref

    dev = w.device
    cuda = dev.type == "cuda"
    peers = []
    wt = w.t()
    peers.append(Peer("cublas_bf16", lambda x: (lambda: torch.mm(x, wt)),
                      "torch.mm, bf16" if cuda else "smoke: torch.mm on the CPU"))

    cap = torch.cuda.get_device_capability(dev) if cuda else None
    if not cuda:
        b.skip("scaled_mm_fp8", "needs CUDA")
    elif not hasattr(torch, "_scaled_mm") or cap < (8, 9):
        b.skip("scaled_mm_fp8", f"torch._scaled_mm with FP8 needs sm89+ (this GPU: sm{cap[0]}{cap[1]})")
    else:
        try:
            w8, sb = fp8_tensors(modules, w)
            w8t, sb = w8.t(), sb.float().reshape(())

            def make_fp8(x, w8t=w8t, sb=sb):
                sa = (x.abs().amax().float() / 448.0).clamp(min=1e-12).reshape(())
                xq = (x.float() / sa).clamp(-448, 448).to(torch.float8_e4m3fn)
                return lambda: torch._scaled_mm(xq, w8t, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)

            peers.append(Peer("scaled_mm_fp8", make_fp8, "torch._scaled_mm, per-tensor scales, out bf16, "
                              "use_fast_accum=False; input quantized outside the timed region"))
        except Exception as e:  # noqa: BLE001
            b.peer_error("scaled_mm_fp8", e)

    if not cuda:
        b.skip("tinygemm_int4", "needs CUDA (torch._weight_int4pack_mm)")
    elif not (hasattr(torch, "_weight_int4pack_mm") and hasattr(torch, "_convert_weight_to_int4pack")):
        b.skip("tinygemm_int4", f"torch {torch.__version__} has no _weight_int4pack_mm")
    else:
        try:
            qw, sc = awq_tensors(modules, w)
            packed, sz, form = tinygemm_prepare(qw, sc)
            peers.append(Peer("tinygemm_int4",
                              lambda x, packed=packed, sz=sz: (lambda: torch._weight_int4pack_mm(x, packed, TINYGEMM_GROUP, sz)),
                              f"torch._weight_int4pack_mm, W4A16_AWQ weight (INT4, G={TINYGEMM_GROUP}, "
                              f"innerKTiles={TINYGEMM_INNER_K_TILES}), {form}"))
        except Exception as e:  # noqa: BLE001
            b.peer_error("tinygemm_int4", e)

    if importlib.util.find_spec("gemlite") is None:
        b.skip("gemlite_a16w4", "gemlite is not installed (carry its wheel: benches/README.md)")
    elif not cuda:
        b.skip("gemlite_a16w4", "needs CUDA")
    else:
        try:
            g = gemlite_module(*awq_tensors(modules, w), w.shape[1], w.shape[0])
            peers.append(Peer("gemlite_a16w4", lambda x, g=g: (lambda: g(x)),
                              f"gemlite {gemlite_version()} A16W4, W4A16_AWQ weight (INT4, G=128, zero 8), bf16"))
        except Exception as e:  # noqa: BLE001
            b.peer_error("gemlite_a16w4", e)

    try:
        qw, sc, gs = nvfp4_tensors(modules, w)

        def make_naive(x, qw=qw, sc=sc, gs=gs):
            def run():
                wd = ref.dequant_w4(qw, sc, gs, element="E2M1", scale_kind="E4M3", group_size=16).to(x.dtype)
                return torch.mm(x, wd.t())
            return run

        peers.append(Peer("naive_dequant", make_naive,
                          "NVFP4 weight dequantized to bf16 by plain torch ops every call "
                          "(motensor.kernels.reference.dequant_w4), then torch.mm"))
    except Exception as e:  # noqa: BLE001
        b.peer_error("naive_dequant", e)
    return peers


def gemlite_version() -> str:
    try:
        from importlib.metadata import version

        return version("gemlite")
    except Exception:  # noqa: BLE001
        return "?"


def gemlite_module(qweight: torch.Tensor, scales: torch.Tensor, k: int, n: int):
    """A gemlite A16W4 layer for the AWQ weight: gemlite computes ``(W_q - zeros) * scales``,
    W_q uint8 [N, K] (0..15), scales and zeros [N, K/G]; so W_q = q + 8, zeros = 8. Tries the
    helper API (gemlite >= 0.4), then the layer class of older versions."""
    codes = unpack_codes(qweight).contiguous()
    s = scales.t().contiguous().to(torch.bfloat16)
    z = torch.full_like(s, 8.0)
    errors = []
    try:
        from gemlite.helper import A16Wn

        return A16Wn(device=str(qweight.device)).from_weights(codes, s, z, 4, TINYGEMM_GROUP, None)
    except Exception as e:  # noqa: BLE001
        errors.append(short_error(e, 150))
    try:
        import gemlite.core as gc_

        cls = getattr(gc_, "GemLiteLinearTriton", None) or gc_.GemLiteLinear
        layer = cls(4, group_size=TINYGEMM_GROUP, in_features=k, out_features=n,
                    input_dtype=gc_.DType.BF16, output_dtype=gc_.DType.BF16)
        layer.pack(codes, s, z, None)
        return layer
    except Exception as e:  # noqa: BLE001
        errors.append(short_error(e, 150))
    raise RuntimeError("gemlite: " + " | ".join(errors))


# -- the benchmark ----------------------------------------------------------------------------------
class Deadline(BaseException):  # not caught by the per-row `except Exception`
    pass


class Bench:
    def __init__(self, device: torch.device, timer: Timer, smoke: bool, deadline: Optional[float]):
        self.device, self.timer, self.smoke, self.deadline = device, timer, smoke, deadline
        self.cuda = device.type == "cuda"
        self.rows: list[dict] = []
        self.skipped: dict[str, str] = {}
        self.bandwidth: Optional[float] = None
        self.plot_groups: dict[str, list[str]] = {"4-bit weights": [], "8-bit weights": []}
        self._peer_errors: dict[str, str] = {}
        self.checkpoint: Callable[[], None] = lambda: None   # called after each case

    # bookkeeping
    def skip(self, what: str, why: str) -> None:
        if what not in self.skipped:
            self.skipped[what] = why
            log(f"skip {what}: {why}")

    def peer_error(self, impl: str, e: BaseException) -> None:
        self._peer_errors[impl] = f"failed to build: {short_error(e)}"
        log(f"{impl} could not be built: {short_error(e)}")

    def row(self, case: str, impl: str, value: Optional[float], note: str = "") -> dict:
        r = {"case": case, "impl": impl, "metric": "us", "value": None if value is None else round(float(value), 3)}
        if note:
            r["note"] = note
        self.rows.append(r)
        return r

    def check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise Deadline()

    def group(self, impl: str, fmt: Optional[str] = None, both: bool = False) -> None:
        four = fmt in FOUR_BIT if fmt else False
        for name, impls in self.plot_groups.items():
            if (both or (name == "4-bit weights") == four) and impl not in impls:
                impls.append(impl)

    # one timed row, never raising (except for the deadline)
    def timed_row(self, case: str, impl: str, fn: Callable[[], object], ref: Optional[torch.Tensor],
                  note: str = "") -> Optional[float]:
        self.check_deadline()
        try:
            y = fn()
            self.timer.sync()
            y = y[0] if isinstance(y, tuple) else y
            check = output_check(y, ref)
            t = self.timer.measure(fn)
            del y
        except Exception as e:  # noqa: BLE001 - a failing impl must not lose the other rows
            self.row(case, impl, None, "; ".join(x for x in (short_error(e), note) if x))
            log(f"  {case} {impl}: FAILED {short_error(e)}")
            free(self.device, oom=isinstance(e, torch.cuda.OutOfMemoryError))
            return None
        self.row(case, impl, t.us, "; ".join(x for x in (note, check, t.note()) if x))
        log(f"  {case} {impl:38s} {t.us:10.2f} us  {check}")
        return t.us


def output_check(y: torch.Tensor, ref: Optional[torch.Tensor]) -> str:
    if ref is None:
        return ""
    y = y.float()
    if y.shape != ref.shape:
        return f"output shape {tuple(y.shape)} != {tuple(ref.shape)}"
    if not torch.isfinite(y).all():
        return "NON-FINITE output"
    err = float((y - ref).norm() / ref.norm().clamp_min(1e-30))
    return f"rel err vs cublas_bf16 {err:.3g}" + (" (WRONG?)" if err > 0.5 else "")


def free(device: torch.device, oom: bool = False) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def fits(b: Bench, n: int, k: int, ms: list[int]) -> Optional[str]:
    """None if the shape should fit in the GPU's free memory, else why not. Peak estimate: the
    bf16 weight, quantization temporaries (fp32 copies, codes), every format's module, the naive
    dequant's temporaries, and the inputs/outputs of the largest M (fp32 reference included)."""
    if not b.cuda:
        return None
    free_b, _ = torch.cuda.mem_get_info(b.device)
    m = max(ms)
    need = 40 * n * k + 16 * m * (n + k) + (64 << 20)
    if need > free_b:
        return f"needs about {need / 2**30:.1f} GiB, {free_b / 2**30:.1f} GiB free"
    return None


def bench_shape(b: Bench, n: int, k: int, ms: list[int], formats: list[str]) -> None:
    shape = f"{n}x{k}"
    why = fits(b, n, k, ms)
    if why:
        b.skip(f"shape {shape}", why)
        return
    log(f"shape N x K = {shape}: building {len(formats)} formats")
    dev = b.device
    g = torch.Generator(device=dev).manual_seed(n * 31 + k)
    w = (torch.randn(n, k, device=dev, generator=g) * WEIGHT_STD).to(torch.bfloat16)
    linear = torch.nn.Linear(k, n, bias=False, device="meta")
    linear.weight = torch.nn.Parameter(w, requires_grad=False)

    modules, build_notes, build_errors = {}, {}, {}
    for fmt in formats:
        b.check_deadline()
        try:
            t = time.perf_counter()
            modules[fmt], build_notes[fmt] = build_module(fmt, linear, dev)
            b.timer.sync()
            log(f"  built {fmt} in {time.perf_counter() - t:.1f} s{' (' + build_notes[fmt] + ')' if build_notes[fmt] else ''}")
        except Exception as e:  # noqa: BLE001
            build_errors[fmt] = f"QuantLinear.from_float failed: {short_error(e)}"
            log(f"  {fmt}: {build_errors[fmt]}")
            free(dev)
    b._peer_errors = {}
    peers = build_peers(b, w, modules)
    free(dev)

    bw = b.bandwidth
    roofs = {"roofline": (nvfp4_bytes(n, k), "NVFP4 packed weight (4.5 bits/weight)"),
             "roofline_bf16": (2 * n * k, "bf16 weight")}
    for fmt, mod in modules.items():
        roofs[f"roofline_{fmt}"] = (module_bytes(mod), f"{fmt} weight + scales as stored by motensor")
    # plotted rooflines: NVFP4's (4-bit panel), bf16 (both), the first 8-bit format's (8-bit panel)
    b.group("roofline", "NVFP4")
    b.group("roofline_bf16", both=True)
    eight = [f for f in modules if f not in FOUR_BIT]
    if eight:
        b.group(f"roofline_{eight[0]}", eight[0])
    for p in peers:
        b.group(p.impl, "NVFP4" if p.impl in ("tinygemm_int4", "gemlite_a16w4", "naive_dequant") else "FP8",
                both=p.impl == "cublas_bf16")
    for fmt in formats:
        b.group(f"motensor_{fmt}", fmt)

    for m in ms:
        case = f"{m}x{n}x{k}"
        b.check_deadline()
        xg = torch.Generator(device=dev).manual_seed(m * 7919 + n + k)
        x = torch.randn(m, k, device=dev, generator=xg).to(torch.bfloat16)
        for impl, (nbytes, what) in roofs.items():
            b.row(case, impl, nbytes / (bw * 1e9) * 1e6,
                  f"{what}: {nbytes / 1e6:.2f} MB / {bw:.0f} GB/s (copy bandwidth); activations and output not counted")
        ref = None
        for p in peers:
            try:
                fn = p.make(x)
            except Exception as e:  # noqa: BLE001
                b.row(case, p.impl, None, f"failed to prepare: {short_error(e)}")
                continue
            b.timed_row(case, p.impl, fn, ref, p.note)
            if p.impl == "cublas_bf16" and ref is None:
                try:
                    ref = fn().float()
                except Exception:  # noqa: BLE001 - without a reference the rows carry no error
                    ref = None
        for impl, err in b._peer_errors.items():
            b.row(case, impl, None, err)
        for fmt in formats:
            impl = f"motensor_{fmt}"
            if fmt in build_errors:
                b.row(case, impl, None, build_errors[fmt])
                continue
            mod = modules[fmt]
            try:
                kernel = repr(mod.kernel_choice(m))
            except Exception as e:  # noqa: BLE001
                kernel = f"kernel_for failed: {short_error(e)}"
            notes = [f"kernel: {kernel}", forward_note(mod), build_notes[fmt]]
            b.timed_row(case, impl, lambda mod=mod, x=x: mod(x), ref, "; ".join(s for s in notes if s))
            try:
                bare = bare_gemm(mod, x)
            except NeedsCuda as e:
                b.skip(f"{impl}_gemm", str(e))
                continue
            except Exception as e:  # noqa: BLE001
                b.row(case, f"{impl}_gemm", None, f"failed to prepare: {short_error(e)}")
                continue
            if bare is not None:
                fn, what, comparable = bare
                b.timed_row(case, f"{impl}_gemm", fn, ref if comparable else None, f"{what}; kernel: {kernel}")
        del x, ref
        free(dev)
        b.checkpoint()
    del modules, peers, linear, w
    free(dev)


# -- ratios and targets ------------------------------------------------------------------------------
def _case_key(case: str) -> tuple[int, int, int]:
    m, n, k = (int(v) for v in case.split("x"))
    return n, k, m


def summarize(rows: list[dict]) -> tuple[list[str], list[dict]]:
    """The ratio table (printed) and the issue's targets (into the JSON). Ratios are time
    ratios (motensor us / peer us, < 1 = motensor faster), except 'speed vs cuBLAS'."""
    val = {(r["case"], r["impl"]): r["value"] for r in rows if r.get("metric") == "us"}
    cases = sorted({c for c, _ in val}, key=_case_key)
    fmts = []
    for r in rows:
        i = r["impl"]
        if i.startswith("motensor_") and not i.endswith("_gemm") and i[9:] not in fmts:
            fmts.append(i[9:])

    def ratio(case, a, bimpl):
        x, y = val.get((case, a)), val.get((case, bimpl))
        return None if x is None or y is None or y <= 0 else x / y

    def f(v, w=7):
        return f"{'-':>{w}s}" if v is None else f"{v:{w}.2f}"

    table = [f"{'case':18s} {'impl':34s} {'us':>9s} {'/roof':>7s} {'/tiny':>7s} {'/cuBLAS':>7s} {'/smm8':>7s}"]
    for case in cases:
        for fmt in fmts:
            impl = f"motensor_{fmt}"
            if (case, impl) not in val:
                continue
            t = val[(case, impl)]
            four = fmt in FOUR_BIT
            smm = fmt in W4A8 or fmt in FP8_MODULES or fmt in ("FP8_PB_WO", "MXFP8")
            table.append(f"{case:18s} {impl:34s} {f(t, 9)} {f(ratio(case, impl, 'roofline_' + fmt))} "
                         f"{f(ratio(case, impl, 'tinygemm_int4') if four else None)} {f(ratio(case, impl, 'cublas_bf16'))} "
                         f"{f(ratio(case, impl, 'scaled_mm_fp8') if smm else None)}")

    n_t, k_t = TARGET_SHAPE
    specs = [
        ("M<=16 at 14336x4096: <= 1.3x roofline", FOUR_BIT,
         lambda n, k, m: (n, k) == (n_t, k_t) and m <= 16, lambda c, i, f_: ratio(c, i, "roofline_" + f_), 1.3, "<="),
        ("M<=16 at 14336x4096: >= 1.8x faster than tinygemm", FOUR_BIT,
         lambda n, k, m: (n, k) == (n_t, k_t) and m <= 16,
         lambda c, i, f_: (lambda r: None if r is None else 1 / r)(ratio(c, i, "tinygemm_int4")), 1.8, ">="),
        ("W4A16 M>=1024: >= 0.9x cuBLAS bf16 speed", W4A16, lambda n, k, m: m >= 1024,
         lambda c, i, f_: (lambda r: None if r is None else 1 / r)(ratio(c, i, "cublas_bf16")), 0.9, ">="),
        ("W4A8 M>=1024: <= 1.2x _scaled_mm FP8", W4A8, lambda n, k, m: m >= 1024,
         lambda c, i, f_: ratio(c, i, "scaled_mm_fp8"), 1.2, "<="),
        ("FP8 modules: <= 1.05x _scaled_mm FP8", FP8_MODULES, lambda n, k, m: True,
         lambda c, i, f_: ratio(c, i, "scaled_mm_fp8"), 1.05, "<="),
    ]
    targets = []
    for desc, group, pick, get, limit, op in specs:
        for fmt in fmts:
            if fmt not in group:
                continue
            impl = f"motensor_{fmt}"
            got = []
            for case in cases:
                n, k, m = _case_key(case)
                if pick(n, k, m) and (case, impl) in val:
                    got.append((case, get(case, impl, fmt)))
            if not got:
                continue
            known = [(c, r) for c, r in got if r is not None]
            ok = [r <= limit if op == "<=" else r >= limit for _, r in known]
            worst = (max if op == "<=" else min)(known, key=lambda cr: cr[1]) if known else None
            targets.append({
                "target": desc, "impl": impl, "limit": f"{op} {limit}",
                "cases": len(got), "measured": len(known), "met_cases": sum(ok),
                "worst": None if worst is None else round(worst[1], 3), "worst_case": None if worst is None else worst[0],
                "met": None if not known else (all(ok) and len(known) == len(got)),
            })
    return table, targets


def headline(targets: list[dict]) -> list[str]:
    """One line per target with a measured case: the worst ratio and whether it is met."""
    out = []
    for t in targets:
        if t["measured"]:
            met = "n/a" if t["met"] is None else ("met" if t["met"] else "NOT met")
            worst = "-" if t["worst"] is None else f"{t['worst']:.2f}x"
            out.append(f"{t['impl']} {t['target']}: worst {worst} ({t['worst_case']}), {met}")
    return out


def target_lines(targets: list[dict]) -> list[str]:
    out = [f"{'target':50s} {'impl':34s} {'met/n':>6s} {'worst':>7s}  {'(case)':20s} met"]
    for t in targets:
        met = "n/a" if t["met"] is None else ("YES" if t["met"] else "no")
        worst = "-" if t["worst"] is None else f"{t['worst']:.2f}x"
        out.append(f"{t['target']:50s} {t['impl']:34s} {t['met_cases']:>2d}/{t['cases']:<3d} {worst:>7s}  "
                   f"{t['worst_case'] or '':20s} {met}")
    return out


def annotate(rows: list[dict]) -> None:
    """Prepends each motensor row's ratios to its note (like the load benchmark does)."""
    val = {(r["case"], r["impl"]): r["value"] for r in rows}
    for r in rows:
        impl, case, t = r["impl"], r["case"], r["value"]
        if not impl.startswith("motensor_") or t is None or (r.get("note") or "").startswith("ratios:"):
            continue
        fmt = impl[9:].removesuffix("_gemm")
        parts = []
        for peer, label in ((f"roofline_{fmt}", "roofline"), ("cublas_bf16", "cublas_bf16"),
                            ("tinygemm_int4", "tinygemm_int4"), ("scaled_mm_fp8", "scaled_mm_fp8")):
            p = val.get((case, peer))
            if p:
                parts.append(f"{t / p:.2f}x {label}")
        if parts:
            r["note"] = "ratios: " + ", ".join(parts) + " (time / time)" + ("; " + r["note"] if r.get("note") else "")


# -- result files ------------------------------------------------------------------------------------
TIMING_NOTE = ("value = median of the per-call times of a round, minimum over {rounds} rounds; GPU: CUDA events "
               "around each call, 256 MiB zeroed (L2 flush) and a GPU sleep longer than the call's host time "
               "queued before each call, so launch overhead is hidden (host us/call in each note); ratios in "
               "notes are time / time")


def write(b: Bench, command: str, out: Path, extra: dict, partial: bool = False) -> Path:
    annotate(b.rows)
    table, targets = summarize(b.rows)
    kw = dict(note=TIMING_NOTE.format(rounds=b.timer.rounds), skipped=b.skipped, targets=targets,
              headline=headline(targets),
              bandwidth_GBps=None if b.bandwidth is None else round(b.bandwidth, 1),
              plot_groups=b.plot_groups, **extra)
    if partial:
        out.mkdir(parents=True, exist_ok=True)
        p = out / "gemm-partial.json"
        doc = {"bench": "gemm", "command": command, "machine": common.machine_info(str(b.device)), "rows": b.rows, **kw}
        p.write_text(json.dumps(doc, indent=1) + "\n")
        return p
    return common.write_results("gemm", b.rows, command, out, device=str(b.device), **kw)


def merge(files: list[Path], out: Path) -> Path:
    """One result file from several runs of this benchmark (later files win on the same case and
    impl); the machine and date are the first file's."""
    docs = [json.loads(Path(f).read_text()) for f in files]
    base = dict(docs[0])
    rows: dict[tuple, dict] = {}
    skipped: dict[str, str] = {}
    for d in docs:
        if d.get("bench") != "gemm":
            raise SystemExit(f"not a gemm result: {d.get('bench')}")
        for r in d["rows"]:
            rows[(r["case"], r["impl"], r["metric"])] = r
        skipped.update(d.get("skipped") or {})
    base["rows"] = list(rows.values())
    base["skipped"] = skipped
    base["command"] = " ; ".join(d["command"] for d in docs)
    groups: dict[str, list[str]] = {}
    for d in docs:
        for k, v in (d.get("plot_groups") or {}).items():
            groups.setdefault(k, [])
            groups[k] += [i for i in v if i not in groups[k]]
    base["plot_groups"] = groups
    for key in ("shapes", "m", "formats"):
        base[key] = list(dict.fromkeys(v for d in docs for v in d.get(key) or []))
    base["status"] = "; ".join(str(d.get("status")) for d in docs)
    base["wall_s"] = sum(d.get("wall_s") or 0 for d in docs)
    base["merged_from"] = [str(f) for f in files]
    annotate(base["rows"])
    table, base["targets"] = summarize(base["rows"])
    when = _dt.datetime.strptime(base["when"], "%Y-%m-%dT%H:%M:%SZ")
    out.mkdir(parents=True, exist_ok=True)
    path = common.result_path("gemm", out, base["machine"].get("gpu"), when)
    path.write_text(json.dumps(base, indent=2) + "\n")
    from plot import plot_results

    plot_results(base, path.with_suffix(".png"))
    print("\n".join(table + [""] + target_lines(base["targets"])))
    return path


# -- command line -------------------------------------------------------------------------------------
def parse_shapes(spec: str) -> list[tuple[int, int]]:
    out = []
    for part in spec.split(","):
        part = part.strip().lower()
        if part == "all":
            out += [*SHAPES["8b"], *SHAPES["70b"]]
        elif part in SHAPES:
            out += SHAPES[part]
        elif "x" in part:
            n, k = (int(v) for v in part.split("x"))
            out.append((n, k))
        else:
            raise argparse.ArgumentTypeError(f"shape {part!r}: 8b, 70b, all or NxK")
    return list(dict.fromkeys(out))


def parse_formats(specs: list[str]) -> list[str]:
    from motensor.formats import FORMAT_NAMES

    out = []
    for s in specs:
        for part in s.replace(",", " ").split():
            if part.lower() == "all":
                out += FORMAT_NAMES
            elif part.lower() == "default":
                out += DEFAULT_FORMATS
            else:
                name = part.upper()
                if name not in FORMAT_NAMES:
                    raise SystemExit(f"unknown format {part!r}; known: {', '.join(FORMAT_NAMES)}")
                out.append(name)
    return list(dict.fromkeys(out))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="GEMM benchmark (see the module docstring)")
    p.add_argument("--shapes", default=None, help="8b | 70b | all | NxK[,NxK...] (default all; --quick: 14336x4096)")
    p.add_argument("--m", default=None, help="comma-separated M values (default 1,4,16,64,256,1024,4096)")
    p.add_argument("--formats", nargs="+", default=None,
                   help="quant_algo names, comma or space separated, or 'all' (default: the 10 of issue 4)")
    p.add_argument("--quick", action="store_true",
                   help="8B shapes, M = 1,16,4096, formats " + ",".join(QUICK_FORMATS) + " (make gpu-check)")
    p.add_argument("--rounds", type=int, default=None, help="timing rounds per row, minimum of the medians kept (3)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop starting new cases after this long and write what was measured")
    p.add_argument("--max-seconds", type=float, default=None, help="the same in seconds")
    p.add_argument("--out-dir", type=Path, default=None, help="result directory (default benches/results)")
    p.add_argument("--smoke", action="store_true", help="tiny shape on the CPU, results to a temporary directory")
    p.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                   help="merge result files of earlier runs into one (written to --out-dir)")
    a = p.parse_args(argv)

    if a.merge:
        path = merge(a.merge, a.out_dir or common.RESULTS_DIR)
        print(f"\nwrote {path}")
        return 0

    if a.smoke:
        device = torch.device("cpu")
        shapes = parse_shapes(a.shapes) if a.shapes else [SMOKE_SHAPE]
        ms = [int(v) for v in a.m.split(",")] if a.m else list(SMOKE_M)
        out = a.out_dir or Path(tempfile.mkdtemp(prefix="motensor-gemm-smoke-"))
        rounds = a.rounds or 2
    else:
        if not torch.cuda.is_available():
            p.error("no CUDA GPU: run on a GPU machine, or pass --smoke to test the harness on the CPU")
        device = torch.device("cuda", torch.cuda.current_device())
        shapes = parse_shapes(a.shapes) if a.shapes else (list(QUICK_SHAPES) if a.quick else parse_shapes("all"))
        ms = [int(v) for v in a.m.split(",")] if a.m else list(QUICK_M if a.quick else DEFAULT_M)
        out = a.out_dir or common.RESULTS_DIR
        rounds = a.rounds or 3
        torch.ones(1, device=device)  # CUDA context before any timing
    formats = parse_formats(a.formats) if a.formats else list(QUICK_FORMATS if a.quick else DEFAULT_FORMATS)
    if a.max_seconds is not None:
        a.max_minutes = a.max_seconds / 60
    command = "python " + " ".join(shlex.quote(x) for x in
                                   [os.path.relpath(__file__, common.ROOT), *(argv if argv is not None else sys.argv[1:])])

    start = time.monotonic()
    deadline = start + a.max_minutes * 60 if a.max_minutes else None
    b = Bench(device, Timer(device, rounds, a.smoke), a.smoke, deadline)
    extra = dict(smoke=a.smoke, quick=a.quick, shapes=[f"{n}x{k}" for n, k in shapes], m=ms, formats=formats)
    b.bandwidth, bw_note = copy_bandwidth(device)
    extra["bandwidth_note"] = bw_note
    log(f"{device}: {b.bandwidth:.0f} GB/s ({bw_note}); shapes {extra['shapes']}, M {ms}, {len(formats)} formats")

    def on_term(signum, frame):  # a killed run still writes what it measured
        raise KeyboardInterrupt(f"signal {signum}")

    if not a.smoke:  # rows so far, rewritten after each case: what a killed run leaves behind
        b.checkpoint = lambda: write(b, command, out, extra, partial=True)
    old = signal.signal(signal.SIGTERM, on_term)
    threads = torch.get_num_threads()
    if a.smoke:  # steadier on a small shared box; the smoke figures mean nothing anyway
        torch.set_num_threads(1)
    status = "complete"
    try:
        for n, k in shapes:
            try:
                bench_shape(b, n, k, ms, formats)
            except torch.cuda.OutOfMemoryError as e:
                b.skip(f"shape {n}x{k} (rest)", f"out of memory: {short_error(e)}")
                free(device, oom=True)
    except Deadline:
        status = f"stopped at --max-minutes {a.max_minutes}"
        b.skip("remaining cases", status)
    except KeyboardInterrupt as e:
        status = f"interrupted ({e})"
        b.skip("remaining cases", status)
    except Exception as e:  # noqa: BLE001 - keep what was measured
        traceback.print_exc()
        status = f"aborted: {short_error(e)}"
        b.skip("remaining cases", status)
    finally:
        signal.signal(signal.SIGTERM, old)
        torch.set_num_threads(threads)
    extra["status"] = status
    extra["wall_s"] = round(time.monotonic() - start, 1)
    path = write(b, command, out, extra)
    partial = out / "gemm-partial.json"
    if partial.exists():
        partial.unlink()
    table, targets = summarize(b.rows)
    print("\n" + "\n".join(table))
    if b.skipped:
        print("\nskipped: " + "; ".join(f"{k}: {v}" for k, v in b.skipped.items()))
    print("\n" + "\n".join(target_lines(targets)))
    print(f"\n{status}, {extra['wall_s']:.0f} s; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
