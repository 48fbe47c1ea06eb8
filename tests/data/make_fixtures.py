#!/usr/bin/env python
"""Regenerate motensor's real NVIDIA ModelOpt test fixtures and reference outputs (tests/data/).

Everything under tests/data/ except README.md is written by this script, with fixed seeds:
  * a byte-level BPE tokenizer (vocab 512) and a tiny LlamaForCausalLM trained on CPU on the
    King James Bible (public domain; taken from the Debian packages bible-kjv / bible-kjv-text),
    saved unquantized as llama-bf16/;
  * llama-<slug>/: that model quantized with the stock `modelopt.torch.quantization` configs and
    written by `modelopt.torch.export.export_hf_checkpoint` (one directory per format), plus
    llama-nvfp4-sharded/ (the NVFP4 export re-split into 3 shards + index);
  * <arch>-<slug>/: tiny random-init Qwen3, Qwen3-MoE, Mixtral, Qwen2, Mistral, Phi-3, Gemma 3;
  * demo/: a bigger trained Llama exported as NVFP4 (for the README demo);
  * references/<fixture>.{json,safetensors}: ModelOpt fake-quant outputs, taken from a deep copy
    of the quantized model after ModelOpt's own export-time re-balancing
    (`requantize_resmooth_fused_llm_layers`), so that motensor tests never import ModelOpt.

Environment (a private venv OUTSIDE the repo; CPU only, no GPU needed):

    uv venv -p 3.11 /work/fixenv
    uv pip install -p /work/fixenv/bin/python torch==2.15.0
    echo torch==2.15.0 > /tmp/fixenv-constraints.txt
    uv pip install -p /work/fixenv/bin/python -c /tmp/fixenv-constraints.txt \
        nvidia-modelopt==0.47.0 transformers==5.14.1 accelerate==1.15.0 safetensors==0.8.0 \
        tokenizers==0.22.2 numpy requests
    # (not nvidia-modelopt[hf]: that extra builds deepspeed from source. ModelOpt 0.47 declares
    #  transformers<5.15 for [hf]; 5.14.1 is what these fixtures were made with.)

The corpus is fetched with `apt-get download bible-kjv bible-kjv-text` (Debian/Ubuntu) and
extracted with `dpkg -x` into a temporary directory; or pass `--corpus FILE` (one verse a line).
Intermediate artifacts (corpus, trained demo base model) are cached in $MOTENSOR_FIXTURE_CACHE
(default /tmp/motensor-fixture-cache).

Run (from the repo root):

    /work/fixenv/bin/python tests/data/make_fixtures.py              # everything (~10-40 min, 2 cores)
    /work/fixenv/bin/python tests/data/make_fixtures.py --only llama-nvfp4 qwen3-nvfp4
    /work/fixenv/bin/python tests/data/make_fixtures.py --list

`--only base` retrains the format model (llama-bf16/); every llama-<slug> step re-quantizes the
checked-in llama-bf16/ and so does not retrain.

Block formats (NVFP4 family, MXFP8, MXFP4) need CUDA in ModelOpt's fake-quant op
`modelopt.torch.quantization.tensor_quant.dynamic_block_quantize_op`; this script replaces that
one op with a pure-torch stand-in (`standin_dynamic_block_quantize`, numerics in its docstring).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent
REFS = DATA / "references"
CACHE = Path(os.environ.get("MOTENSOR_FIXTURE_CACHE", "/tmp/motensor-fixture-cache"))
CORPUS_OVERRIDE: Path | None = None

SEED = 1234
PROMPT = "And God said unto Moses, Speak unto the children of Israel, and say unto them,"
N_PROMPT = 16
N_NEW = 32
E4M3_MAX = 448.0

warnings.filterwarnings("ignore")
torch.set_num_threads(int(os.environ.get("MOTENSOR_FIXTURE_THREADS", "2")))


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


# ---------------------------------------------------------------------------------------------
# Pure-torch stand-in for ModelOpt's CUDA-only dynamic block fake-quant op
# ---------------------------------------------------------------------------------------------


def e2m1_round(a: torch.Tensor) -> torch.Tensor:
    """|x| (already divided by the block scale) -> nearest E2M1 magnitude, ties to even.

    Same decision bounds as ModelOpt's Triton `fp4_round_magnitude` and its CUDA
    `round_to_even` table: <=.25 ->0, <.75 ->.5, <=1.25 ->1, <1.75 ->1.5, <=2.5 ->2, <3.5 ->3,
    <=5 ->4, else 6 (saturating)."""
    return torch.where(
        a <= 0.25, 0.0,
        torch.where(a < 0.75, 0.5,
        torch.where(a <= 1.25, 1.0,
        torch.where(a < 1.75, 1.5,
        torch.where(a <= 2.5, 2.0,
        torch.where(a < 3.5, 3.0,
        torch.where(a <= 5.0, 4.0, 6.0)))))))  # fmt: skip


def e8m0_exponent(ratio: torch.Tensor) -> torch.Tensor:
    """clamp(ceil(log2(ratio)), -127, 127) for positive finite fp32 ratios (exact, via frexp)."""
    m, e = torch.frexp(ratio)  # ratio = m * 2**e, m in [0.5, 1)
    e = torch.where(m == 0.5, e - 1, e)  # exact power of two
    return e.clamp(-127, 127)


def standin_dynamic_block_quantize(
    inputs, block_size, amax, num_bits, exponent_bits, scale_num_bits, scale_exponent_bits
):
    """Pure-torch stand-in for `tensor_quant.dynamic_block_quantize_op` (CUDA-only in ModelOpt).

    Blocks of `block_size` consecutive elements along the last axis (zero-padded), fp32 math,
    result cast back to the input dtype (as the CUDA/Triton kernels do).
    * NVFP4 (E2M1 elements, E4M3 scales), as ModelOpt's Triton `fp4_fake_quant_block`:
      gs = amax/(6*448) (amax = calibrated per-tensor amax); s = e4m3(min(block_amax/(6*gs), 448))*gs;
      s = 1 where s < 1e-5; y = sign(x) * e2m1_round(|x|/s) * s.
      (Difference from the Hopper Triton path: that one ignores `block_size` and always uses 16;
      we honour `block_size`, like ModelOpt's CUDA extension path and like the export, which
      matters only for W4A8_NVFP4_FP8 with its block of 32.)
    * MX (E8M0 scales; E4M3 or E2M1 elements), as ModelOpt's CUDA `fused_amax_convert`
      (`compute_scale_e8m0_NV`): e = clamp(ceil(log2(block_amax/emax)), -127, 127) with emax 448
      (E4M3) or 6 (E2M1); e = 0 for an all-zero block; y = sign(x) * cvt(|x| * 2**-e) * 2**e, cvt =
      saturating round-to-nearest-even E4M3 cast or `e2m1_round`.
    """
    fmt = (exponent_bits, num_bits - exponent_bits - 1) if exponent_bits != 0 else num_bits
    sfmt = (scale_exponent_bits, scale_num_bits - scale_exponent_bits - 1)
    shape, dtype = inputs.shape, inputs.dtype
    K = shape[-1]
    x = inputs.float().reshape(-1, K)
    pad = (-K) % block_size
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    xb = x.reshape(x.shape[0], -1, block_size)
    a = xb.abs()
    bamax = a.amax(-1, keepdim=True)
    if fmt == (2, 1) and sfmt == (4, 3):
        g = amax.float()
        if g.numel() != 1:
            g = g.amax()
        gs = g.reshape(()) / (6.0 * 448.0)
        gs = torch.where(gs > 0, gs, torch.full_like(gs, 1e-12))
        s = (bamax / (6.0 * gs)).clamp(max=E4M3_MAX).to(torch.float8_e4m3fn).float() * gs
        s = torch.where(s >= 1e-5, s, torch.ones_like(s))
        q = e2m1_round(a / s) * s
    elif sfmt == (8, 0) and fmt in ((2, 1), (4, 3)):
        emax = 6.0 if fmt == (2, 1) else E4M3_MAX
        bad = (bamax == 0) | ~torch.isfinite(bamax)
        e = e8m0_exponent(torch.where(bad, torch.ones_like(bamax), bamax / emax))
        e = torch.where(bad, torch.zeros_like(e), e).float()
        xs = a * torch.exp2(-e)
        if fmt == (2, 1):
            xs = e2m1_round(xs)
        else:
            xs = xs.clamp(max=E4M3_MAX).to(torch.float8_e4m3fn).float()
        q = xs * torch.exp2(e)
    else:
        raise NotImplementedError(f"stand-in: format {fmt} with scale {sfmt}")
    q = torch.where(xb < 0, -q, q).reshape(x.shape)[:, :K]
    return q.reshape(shape).to(dtype)


STANDIN_CALLS: dict[str, int] = {}


def install_standin():
    import modelopt.torch.quantization.tensor_quant as tq

    def counted(inputs, block_size, amax, num_bits, exponent_bits, sn, se):
        key = f"{(exponent_bits, num_bits - exponent_bits - 1)}/{(se, sn - se - 1)}/b{block_size}"
        STANDIN_CALLS[key] = STANDIN_CALLS.get(key, 0) + 1
        return standin_dynamic_block_quantize(
            inputs, block_size, amax, num_bits, exponent_bits, sn, se
        )

    tq.dynamic_block_quantize_op = counted


# ---------------------------------------------------------------------------------------------
# FORMATS.md section 8 reference dequant (own copy; W returned as [N, K] float32)
# ---------------------------------------------------------------------------------------------

E2M1 = torch.tensor([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6])  # fmt: skip


def s_(t):
    return t.float().reshape(()) if t.numel() == 1 else t.float()


def dq_fp8_tensor(w, ws):
    return w.float() * s_(ws)


def dq_fp8_channel(w, ws):
    return w.float() * ws.float()[:, None]


def dq_fp8_block(w, ws, b=128):
    ws = ws.float().reshape(ws.shape[0], -1) if ws.dim() > 0 else ws.float().reshape(1, 1)
    return w.float() * ws.repeat_interleave(b, 0)[: w.shape[0]].repeat_interleave(b, 1)[:, : w.shape[1]]


def unpack_fp4(p):
    return E2M1[torch.stack([p & 0xF, p >> 4], -1).long()].flatten(-2)


def dq_nvfp4(w, ws, ws2, g=16):
    q = unpack_fp4(w)
    sc = ws.float() * s_(ws2)
    return (q.unflatten(-1, (-1, g)) * sc[..., None]).flatten(-2)


def dq_mxfp8(w, ws, g=32):
    return (w.float().unflatten(-1, (-1, g)) * torch.exp2(ws.float() - 127)[..., None]).flatten(-2)


def dq_mxfp4(w, ws, g=32):
    return (unpack_fp4(w).unflatten(-1, (-1, g)) * torch.exp2(ws.float() - 127)[..., None]).flatten(-2)


def unpack_int4_rows(w):
    b = w.view(torch.uint8).to(torch.int16)
    lo, hi = b & 0xF, b >> 4
    q = torch.stack([lo, hi], 1).reshape(-1, w.shape[-1])
    return torch.where(q >= 8, q - 16, q).float()


def dq_int4_awq(w, ws, g):
    q = unpack_int4_rows(w)
    return q * ws.float().repeat_interleave(g, 1)[:, : q.shape[1]]


def dequant(algo: str, t: dict, group_size: int | None):
    """FORMATS.md section 8 dequant of one Linear's exported tensors -> [N, K] fp32."""
    a = algo.upper()
    if a in ("FP8",):
        return dq_fp8_tensor(t["weight"], t["weight_scale"])
    if a in ("FP8_PER_CHANNEL_PER_TOKEN", "W8A8_SQ_PER_CHANNEL", "W8A16"):
        return dq_fp8_channel(t["weight"], t["weight_scale"])
    if a == "FP8_PB_WO":
        return dq_fp8_block(t["weight"], t["weight_scale"])
    if a in ("NVFP4", "W4A16_NVFP4", "NVFP4_AWQ", "W4A8_NVFP4_FP8"):
        return dq_nvfp4(t["weight"], t["weight_scale"], t["weight_scale_2"], group_size or 16)
    if a == "MXFP8":
        return dq_mxfp8(t["weight"], t["weight_scale"], group_size or 32)
    if a in ("MXFP4", "W4A8_MXFP4_FP8"):
        return dq_mxfp4(t["weight"], t["weight_scale"], group_size or 32)
    if a in ("W4A16_AWQ", "W4A8_AWQ"):
        return dq_int4_awq(t["weight"], t["weight_scale"], group_size or 128)
    raise NotImplementedError(algo)


# ---------------------------------------------------------------------------------------------
# Activation fake-quant emulation (what we believe ModelOpt's fake-quant does; verified below)
# ---------------------------------------------------------------------------------------------

ACT_EMULATION = {
    "FP8": "static per-tensor FP8 E4M3: xq = e4m3(clamp(x/input_scale, +-448)) * input_scale "
    "(input_scale = amax_x/448, calibrated; fp32 math, result rounded to the model dtype)",
    "FP8_PER_CHANNEL_PER_TOKEN": "dynamic per-token FP8 E4M3: s_m = amax(|x[m, :]|)/448 per row "
    "(token), xq = e4m3(x*(448/amax_m)) * (amax_m/448); no input_scale in the checkpoint",
    "FP8_PB_WO": "none (weight-only; activations stay in the model dtype)",
    "NVFP4": "NVFP4, dynamic 16-element blocks along K with the calibrated static global scale "
    "input_scale (= amax_x/2688): s_b = e4m3(amax_b/(6*input_scale)) * input_scale, "
    "xq = e2m1_rne(x/s_b) * s_b (ModelOpt Triton kernel semantics; CPU stand-in used)",
    "W4A16_NVFP4": "none (weight-only; activations stay in the model dtype)",
    "NVFP4_AWQ": "x2 = x * pre_quant_scale where the tensor exists (in the model dtype), then NVFP4 "
    "activation quant as for NVFP4 with input_scale (calibrated on x2)",
    "W4A8_NVFP4_FP8": "static per-tensor FP8 E4M3 with input_scale = amax_x/448",
    "W4A16_AWQ": "none besides x2 = x * pre_quant_scale where the tensor exists (model dtype)",
    "W4A8_AWQ": "x2 = x * pre_quant_scale where the tensor exists, then static per-tensor FP8 "
    "E4M3 with input_scale = amax_x2/448",
    "W8A8_SQ_PER_CHANNEL": "x2 = x * pre_quant_scale (present on every linear; bf16 multiply), then "
    "static per-tensor INT8 with the FULL range: xq = clamp(round_half_even(x2/input_scale), -128, 127) "
    "* input_scale (the quantizer's narrow_range defaults to False, so values below -amax clip to "
    "-128*input_scale, not -127*input_scale; FORMATS 4.9 says narrow range)",
    "W8A16": "none (weight-only)",
    "MXFP8": "dynamic MXFP8: 32-element blocks along K, e = ceil(log2(amax_b/448)) (E8M0), "
    "xq = e4m3(x*2^-e)*2^e; no input_scale (CPU stand-in used)",
    "MXFP4": "dynamic MXFP4: 32-element blocks along K, e = ceil(log2(amax_b/6)) (E8M0), "
    "xq = e2m1_rne(x*2^-e)*2^e; no input_scale (CPU stand-in used)",
    "W4A8_MXFP4_FP8": "ModelOpt's W4A8_MXFP4_FP8_CFG has no calibration algorithm, so the FP8 "
    "input quantizer never gets a calibrated amax and runs DYNAMIC per-tensor: s = amax(|x|)/448 over "
    "the whole activation tensor of that call ([1, T, K]; one token per call when decoding), "
    "xq = e4m3(x/s)*s; no input_scale is exported",
}


_TIE = ("{what}: the export computes the codes as round(W / weight_scale) with weight_scale = "
        "amax/{q} (fp32 division, ModelOpt qu.{fn}); the fake quant computes round(W * ({q}/amax)) "
        "(fp32 multiply by the reciprocal, tensor_quant._tensor_quant). The two differ in the last ulp "
        "and so round the other way where W/scale lies on a .5 tie: a few codes in 10^4 differ by one "
        "step (n_diff_after_bf16_rounding). Every other element is equal once the fp32 dequant is "
        "rounded to bf16 (the fake quant returns bf16).")
_BF16_ONLY = ("exact: the fp32 dequant differs from ModelOpt's bf16 fake-quant weight only by the final "
              "rounding to bf16 (max_abs_after_bf16_rounding == 0).")
DEQUANT_NOTES = {
    "FP8": "Trap: the export divides the bf16 weight by the fp32 0-d weight_scale IN BF16 (a 0-d fp32 "
    "tensor does not promote a bf16 tensor: `(weight / weights_scaling_factor).to(float8_e4m3fn)`, "
    "qu.to_quantized_weight), while the fake quant multiplies in fp32 by 448/amax. The bf16 rounding "
    "of the quotient moves values across an E4M3 rounding midpoint, so a few % of the exported codes "
    "differ by one E4M3 step from the fake quant (n_diff_after_bf16_rounding). Emulating the bf16 "
    "division reproduces every exported byte (checked: 0 of 49152 differ on layers.0.mlp.gate_proj).",
    "FP8_PER_CHANNEL_PER_TOKEN": "the export divides by weight_scale[:, None] in fp32 (a 1-D fp32 "
    "tensor does promote), the fake quant multiplies by 448/amax in fp32: the last-ulp difference flips "
    "the E4M3 rounding of values on a rounding midpoint, a few codes in 10^4 (one E4M3 step). All "
    "other elements equal after bf16 rounding.",
    "FP8_PB_WO": _BF16_ONLY,
    "NVFP4": _BF16_ONLY, "W4A16_NVFP4": _BF16_ONLY, "NVFP4_AWQ": _BF16_ONLY, "MXFP8": _BF16_ONLY,
    "W4A8_NVFP4_FP8": "ModelOpt's fake quant and its export disagree. The export normalises the "
    "per-tensor scale to E4M3's 448 (weight_scale_2 = amax/448, block scale = e4m3(amax_b/(6*"
    "weight_scale_2)) <= 74.7, qu.get_weight_scaling_factor: 'so that the wsf is in range 448/6'), "
    "while the fake-quant op (CUDA fused_amax_convert / Triton fp4_fake_quant_block, and our "
    "stand-in) uses amax/(6*448) like NVFP4, so its E4M3 block scales are e4m3(6x) instead of "
    "6*e4m3(x): about 2/3 of the blocks get a different scale and most weights a different value. "
    "A fake quant with the global scale amax/448 reproduces the exported dequant exactly (checked on "
    "layers.0.mlp.gate_proj). Also on Hopper GPUs ModelOpt's Triton path ignores the block size and "
    "fake-quantizes with 16-element blocks, the export uses 32. The checkpoint is self-consistent; "
    "the weights/logits references of this fixture are what ModelOpt simulated, not what the "
    "checkpoint encodes.",
    "W4A16_AWQ": _TIE.format(what="INT4", q=7, fn="pack_int4_in_uint8"),
    "W4A8_AWQ": "FORMATS section 8 gives only the INT4 stage, W = q * weight_scale. ModelOpt's weight "
    "quantizer is Sequential [INT4 block-128, FP8 per-tensor]: its fake-quant weight is "
    "e4m3(bf16(q*weight_scale) * 448/amax2) * amax2/448 with amax2 = 448*weight_scale_2, which is "
    "the checkpoint's W4A8 kernel view; w4a8_fp8_stage_max_abs/_n_diff compare that with the "
    "reference: what remains are the INT4 .5-tie flips of W4A16_AWQ (the FP8 stage turns each into "
    "one FP8 step).",
    "W8A8_SQ_PER_CHANNEL": _TIE.format(what="INT8", q=127, fn="to_quantized_weight"),
    "W8A16": _TIE.format(what="INT8", q=127, fn="to_quantized_weight"),
    "MXFP4": "the export (MXFP4QTensor.quantize, cast_fp4: ord = number of bounds strictly below |x|) "
    "rounds E2M1 ties TOWARD ZERO (|x|/2^e exactly 0.75, 1.75, 3.5 -> 0.5, 1.5, 3), the fake quant "
    "rounds ties to even (-> 1, 2, 4): about 0.5% of the elements (bf16 weights hit these ties "
    "often) differ by one E2M1 step. E8M0 exponents agree (ceil(log2(amax_b/6))). Ties-toward-zero "
    "reproduces every exported nibble (checked on layers.0.mlp.gate_proj).",
}
DEQUANT_NOTES["W4A8_MXFP4_FP8"] = DEQUANT_NOTES["MXFP4"]


def _mo_amax(scale: torch.Tensor, maxbound: float) -> torch.Tensor:
    """Calibrated amax back from an exported scale (= amax/maxbound). ModelOpt keeps calibrated
    activation amax in the model dtype (bf16), so rounding to bf16 recovers it exactly."""
    return (s_(scale) * maxbound).to(torch.bfloat16).float()


def _fp8_eager(x: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    """ModelOpt tensor_quant._fp8_eager arithmetic: x * (448/amax) -> clamp -> e4m3 -> * (1/scale)."""
    sc = 448.0 / torch.where(amax <= 2.0**-24, torch.ones_like(amax), amax)
    return (x * sc).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).float() * (1 / sc)


def act_quant(algo: str, x2: torch.Tensor, t: dict) -> torch.Tensor:
    """Emulated activation fake-quant (fp32 in, fp32 out) for one Linear (after x*pqs), written
    with ModelOpt's own arithmetic (multiply by maxbound/amax rather than divide by the exported
    scale: the two differ in the last ulp, which flips a rounding tie now and then)."""
    a = algo.upper()
    x = x2.float()
    if a in ("FP8", "W4A8_NVFP4_FP8", "W4A8_AWQ"):  # static per-tensor
        return _fp8_eager(x, _mo_amax(t["input_scale"], E4M3_MAX))
    if a == "FP8_PER_CHANNEL_PER_TOKEN":  # dynamic, amax per token (row)
        return _fp8_eager(x, x.abs().amax(-1, keepdim=True))
    if a == "W4A8_MXFP4_FP8":  # uncalibrated FP8 input quantizer: dynamic amax of the whole tensor
        return _fp8_eager(x, x.abs().amax())
    if a in ("NVFP4", "NVFP4_AWQ"):  # FORMATS section 8, written out (not via the stand-in)
        s = s_(t["input_scale"])
        xb = x.unflatten(-1, (-1, 16))
        sb = (xb.abs().amax(-1, keepdim=True) / (6 * s)).clamp(max=E4M3_MAX).to(torch.float8_e4m3fn).float()
        sc = sb * s
        sc = torch.where(sc > 0, sc, torch.ones_like(sc))
        q = e2m1_round((xb / sc).abs().clamp(max=6.0)) * sc
        return torch.where(xb < 0, -q, q).flatten(-2)
    if a == "W8A8_SQ_PER_CHANNEL":  # static per-tensor INT8, FULL range [-128, 127]: the quantizer's
        sc = torch.tensor(127.0) / _mo_amax(t["input_scale"], 127.0)  # narrow_range defaults to False
        return torch.clamp((x * sc).round(), -128, 127) / sc
    if a in ("MXFP8", "MXFP4"):  # FORMATS 4.10/4.11: e = ceil(log2(amax_b/emax)), E8M0
        emax = E4M3_MAX if a == "MXFP8" else 6.0
        xb = x.unflatten(-1, (-1, 32))
        amax = xb.abs().amax(-1, keepdim=True)
        e = torch.where(amax > 0, e8m0_exponent(torch.where(amax > 0, amax / emax, torch.ones_like(amax))),
                        torch.zeros_like(amax, dtype=torch.int32)).float()
        v = xb.abs() * torch.exp2(-e)
        v = v.clamp(max=E4M3_MAX).to(torch.float8_e4m3fn).float() if a == "MXFP8" else e2m1_round(v)
        return torch.where(xb < 0, -v, v).mul(torch.exp2(e)).flatten(-2)
    return x  # weight-only formats


# ---------------------------------------------------------------------------------------------
# Corpus, tokenizer, training
# ---------------------------------------------------------------------------------------------


def corpus_verses() -> list[str]:
    """King James Bible, one verse a line, from Debian's bible-kjv(-text) packages."""
    if CORPUS_OVERRIDE is not None:
        return [v for v in CORPUS_OVERRIDE.read_text().split("\n") if v.strip()]
    cached = CACHE / "kjv-verses.txt"
    if not cached.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as td:
            log("fetching bible-kjv + bible-kjv-text with apt-get download")
            subprocess.run(["apt-get", "download", "bible-kjv", "bible-kjv-text"], cwd=td, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for deb in Path(td).glob("*.deb"):
                subprocess.run(["dpkg", "-x", str(deb), f"{td}/x"], check=True)
            raw = subprocess.run([f"{td}/x/usr/bin/bible", "-p", f"{td}/x/usr/lib", "-f",
                                  "Gen1:1-Rev22:21"], check=True, capture_output=True, text=True).stdout
        pat = re.compile(r"^[1-3]?[A-Za-z]+\d+:\d+ (.*)$")
        verses = [pat.match(l).group(1) for l in raw.split("\n") if l.strip()]
        assert len(verses) == 31102, len(verses)
        cached.write_text("\n".join(verses) + "\n")
    return [v for v in cached.read_text().split("\n") if v.strip()]


def corpus_sha256() -> str:
    return hashlib.sha256(("\n".join(corpus_verses()) + "\n").encode()).hexdigest()


TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]


def build_tokenizer(out_dir: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    verses = corpus_verses()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, min_frequency=2)
    tok.train_from_iterator([v + "\n" for v in verses], trainer)
    assert tok.get_vocab_size() == 512
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    special = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512,
         "clean_up_tokenization_spaces": False, **special}, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def copy_tokenizer(src: Path, dst: Path):
    for f in TOKENIZER_FILES:
        shutil.copy(src / f, dst / f)


def load_tokenizer(d: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(d))


def token_stream(tok) -> torch.Tensor:
    text = "\n".join(corpus_verses()) + "\n"
    return torch.tensor(tok.backend_tokenizer.encode(text).ids, dtype=torch.long)


def llama_config(hidden, inter, layers, heads, kv_heads, vocab=512, max_pos=512):
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                      tie_word_embeddings=False, max_position_embeddings=max_pos, rms_norm_eps=1e-5,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0)
    cfg.architectures = ["LlamaForCausalLM"]
    return cfg


def train_llama(cfg, tok, steps: int, batch=32, seq=128, lr=3e-3, seed=SEED):
    """Plain fp32 AdamW training on random windows of the corpus; returns the bf16 model."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    data = token_stream(tok)
    g = torch.Generator().manual_seed(seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    model.train()
    t0, ema = time.time(), None
    for step in range(steps):
        idx = torch.randint(0, data.numel() - seq - 1, (batch,), generator=g)
        x = torch.stack([data[i : i + seq] for i in idx])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            log(f"  step {step}/{steps} loss {ema:.3f} ({time.time() - t0:.0f}s)")
    model.eval()
    model = model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.generation_config.do_sample = False
    model.generation_config.pad_token_id = 0
    return model, ema, time.time() - t0


def calib_batches(tok, n=8, seq=128, seed=SEED + 1):
    data = token_stream(tok)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, data.numel() - seq - 1, (n,), generator=g)
    return [data[i : i + seq].unsqueeze(0) for i in idx]


def prompt_ids(tok) -> torch.Tensor:
    ids = tok(PROMPT)["input_ids"]
    assert len(ids) >= N_PROMPT, len(ids)
    return torch.tensor([ids[:N_PROMPT]], dtype=torch.long)


# ---------------------------------------------------------------------------------------------
# ModelOpt quantize / export / references
# ---------------------------------------------------------------------------------------------


def mtq_cfg(name: str, kv: str | None = None):
    import modelopt.torch.quantization as mtq

    c = copy.deepcopy(getattr(mtq, name))
    if kv:
        c["quant_cfg"] = list(c["quant_cfg"]) + copy.deepcopy(getattr(mtq, kv)["quant_cfg"])
    return c


def mixed_cfg():
    """Attention linears FP8 (per-tensor W8A8), MLP linears NVFP4 -> MIXED_PRECISION."""
    c = mtq_cfg("NVFP4_DEFAULT_CFG")
    c["quant_cfg"] = list(c["quant_cfg"]) + [
        {"quantizer_name": "*self_attn*weight_quantizer", "cfg": {"num_bits": (4, 3), "axis": None}},
        {"quantizer_name": "*self_attn*input_quantizer", "cfg": {"num_bits": (4, 3), "axis": None}},
    ]
    return c


MIXED_CFG_TEXT = ("NVFP4_DEFAULT_CFG + {'*self_attn*weight_quantizer': FP8 per-tensor, "
                  "'*self_attn*input_quantizer': FP8 per-tensor}")

# fixture slug -> (config factory, config text)
LLAMA_FORMATS = {
    "fp8": (lambda: mtq_cfg("FP8_DEFAULT_CFG"), "FP8_DEFAULT_CFG"),
    "fp8-kv": (lambda: mtq_cfg("FP8_DEFAULT_CFG", "FP8_KV_CFG"), "FP8_DEFAULT_CFG + FP8_KV_CFG"),
    "fp8_per_channel_per_token": (lambda: mtq_cfg("FP8_PER_CHANNEL_PER_TOKEN_CFG"), "FP8_PER_CHANNEL_PER_TOKEN_CFG"),
    "fp8_pb_wo": (lambda: mtq_cfg("FP8_2D_BLOCKWISE_WEIGHT_ONLY_CFG"), "FP8_2D_BLOCKWISE_WEIGHT_ONLY_CFG"),
    "nvfp4": (lambda: mtq_cfg("NVFP4_DEFAULT_CFG"), "NVFP4_DEFAULT_CFG"),
    "w4a16_nvfp4": (lambda: mtq_cfg("W4A16_NVFP4_CFG"), "W4A16_NVFP4_CFG"),
    "nvfp4_awq": (lambda: mtq_cfg("NVFP4_AWQ_LITE_CFG"), "NVFP4_AWQ_LITE_CFG"),
    "w4a8_nvfp4_fp8": (lambda: mtq_cfg("W4A8_NVFP4_FP8_CFG"), "W4A8_NVFP4_FP8_CFG"),
    "w4a16_awq": (lambda: mtq_cfg("INT4_AWQ_CFG"), "INT4_AWQ_CFG"),
    "w4a8_awq": (lambda: mtq_cfg("W4A8_AWQ_BETA_CFG"), "W4A8_AWQ_BETA_CFG"),
    "w8a8_sq_per_channel": (lambda: mtq_cfg("INT8_SMOOTHQUANT_CFG"), "INT8_SMOOTHQUANT_CFG"),
    "w8a16": (lambda: mtq_cfg("INT8_WEIGHT_ONLY_CFG"), "INT8_WEIGHT_ONLY_CFG"),
    "mxfp8": (lambda: mtq_cfg("MXFP8_DEFAULT_CFG"), "MXFP8_DEFAULT_CFG"),
    "mxfp4": (lambda: mtq_cfg("MXFP4_DEFAULT_CFG"), "MXFP4_DEFAULT_CFG"),
    "w4a8_mxfp4_fp8": (lambda: mtq_cfg("W4A8_MXFP4_FP8_CFG"), "W4A8_MXFP4_FP8_CFG"),
    "mixed_precision": (mixed_cfg, MIXED_CFG_TEXT),
}

REP_LAYERS = [  # representative Linears for layers.<module>.input/output (those that exist)
    "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
    "model.layers.0.self_attn.v_proj", "model.layers.0.self_attn.qkv_proj",
    "model.layers.0.self_attn.o_proj", "model.layers.0.mlp.gate_proj",
    "model.layers.0.mlp.gate_up_proj", "model.layers.0.mlp.down_proj",
    "model.layers.1.mlp.down_proj",
]


def versions() -> dict:
    import accelerate
    import modelopt
    import numpy
    import safetensors
    import tokenizers
    import transformers

    return {"modelopt": modelopt.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "safetensors": safetensors.__version__,
            "tokenizers": tokenizers.__version__, "accelerate": accelerate.__version__,
            "numpy": numpy.__version__, "python": sys.version.split()[0],
            "threads": torch.get_num_threads()}


def prepare_like_export(model):
    """Apply, on a copy, the model changes export_hf_checkpoint makes before packing weights."""
    from modelopt.torch.export import unified_export_hf as ue

    dtype = ue._resolve_export_dtype(model, None)
    ue._prepare_moe_inputs(model, dtype, False)
    ue.requantize_resmooth_fused_llm_layers(model)
    ue._warn_on_unsynced_moe_gate_up(model)
    try:
        ue.sync_tied_input_amax(model, ue.TiedWeightMap(model))
    except Exception as e:  # pragma: no cover - depends on ModelOpt internals
        log("  sync_tied_input_amax skipped:", e)


def quantized_weights(model) -> dict[str, torch.Tensor]:
    """Fake-quant weight of every quantized linear, keyed by its exported module name
    (fused experts split per expert into gate_proj/up_proj/down_proj), [N, K] model dtype."""
    out = {}
    with torch.no_grad():
        for name, mod in model.named_modules():
            wq = getattr(mod, "weight_quantizer", None)
            if wq is not None and getattr(wq, "is_enabled", False) and isinstance(
                getattr(mod, "weight", None), torch.Tensor) and mod.weight.dim() == 2:
                out[name] = wq(mod.weight).detach().clone()
            if hasattr(mod, "gate_up_proj_weight_quantizers"):
                gu, dn = mod.gate_up_proj, mod.down_proj
                inter = gu.shape[1] // 2
                for e in range(gu.shape[0]):
                    q1 = mod.gate_up_proj_weight_quantizers[e]
                    q2 = mod.down_proj_weight_quantizers[e]
                    if q1.is_enabled:
                        w = q1(gu[e])
                        out[f"{name}.{e}.gate_proj"] = w[:inter].detach().clone()
                        out[f"{name}.{e}.up_proj"] = w[inter:].detach().clone()
                    if q2.is_enabled:
                        out[f"{name}.{e}.down_proj"] = q2(dn[e]).detach().clone()
    return out


def exported_name_candidates(name: str) -> list[str]:
    c = [name]
    if name.startswith("model.language_model."):  # multimodal: ModelOpt exports the transformers 4 names
        c.append("language_model.model." + name[len("model.language_model."):])
    m = re.match(r"(.*)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)$", name)
    if m:
        leg = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}[m.group(3)]
        c.append(f"{m.group(1)}.block_sparse_moe.experts.{m.group(2)}.{leg}")
    return c


def run_references(model, ids, layers):
    """Forward (logits + hooked activations) and greedy generation of the fake-quant model."""
    acts, hooks = {}, []
    mods = dict(model.named_modules())
    for name in layers:
        def hook(mod, inp, out, name=name):
            if name not in acts:
                acts[name] = (inp[0].detach().clone(), out.detach().clone())
        hooks.append(mods[name].register_forward_hook(hook))
    with torch.no_grad():
        logits = model(ids).logits.float()
    for h in hooks:
        h.remove()
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=N_NEW, do_sample=False, return_dict_in_generate=True,
                             output_logits=True, pad_token_id=0, eos_token_id=None)
    seq = gen.sequences
    assert seq.shape == (1, N_PROMPT + N_NEW), seq.shape
    margins = []
    for lg in gen.logits:
        top = lg[0].float().topk(2).values
        margins.append((top[0] - top[1]).item())
    return logits, acts, seq, torch.tensor(margins, dtype=torch.float32)


def read_export(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    idx = d / "model.safetensors.index.json"
    files = sorted(set(json.loads(idx.read_text())["weight_map"].values())) if idx.exists() else ["model.safetensors"]
    for f in files:
        out.update(load_file(str(d / f)))
    return out


def layer_algo(hq: dict, name: str) -> tuple[str | None, int | None]:
    q = hq["quantization"]
    if q["quant_algo"] == "MIXED_PRECISION":
        ent = q["quantized_layers"].get(name)
        if ent is None:  # fused-expert container keys (FORMATS 4.12)
            for k, v in q["quantized_layers"].items():
                if name.startswith(k + "."):
                    ent = v
        return (ent["quant_algo"], ent.get("group_size")) if ent else (None, None)
    return q["quant_algo"], q.get("group_size")


def stats(a: torch.Tensor, b: torch.Tensor) -> dict:
    a, b = a.float(), b.float()
    d = (a - b).abs()
    return {"max_abs": float(d.max()), "max_rel": float(d.max() / b.abs().max().clamp_min(1e-30)),
            "n_diff": int((d > 0).sum()), "numel": int(d.numel())}


def dequant_check(export_dir: Path, hq: dict, fq: dict[str, torch.Tensor]) -> dict:
    """FORMATS section 8 dequant of every exported quantized linear vs ModelOpt's fake-quant weight."""
    st = read_export(export_dir)
    per_layer, worst = {}, {}
    for name, w_ref in fq.items():
        algo, gs = layer_algo(hq, name)
        ex = next((c for c in exported_name_candidates(name) if f"{c}.weight" in st), None)
        assert ex is not None, f"{name} not in export"
        t = {k[len(ex) + 1:]: v for k, v in st.items() if k.startswith(ex + ".")}
        w = dequant(algo, t, gs)
        assert w.shape == w_ref.shape, (name, w.shape, w_ref.shape)
        r = stats(w, w_ref)
        r["max_abs_after_bf16_rounding"] = float((w.to(w_ref.dtype).float() - w_ref.float()).abs().max())
        r["n_diff_after_bf16_rounding"] = int((w.to(w_ref.dtype) != w_ref).sum())
        if algo.upper() == "W4A8_AWQ":  # + ModelOpt's 2nd (FP8 per-tensor) weight quantizer stage
            inv = 448.0 / (s_(t["weight_scale_2"]) * 448.0)  # = 448/amax2, as ModelOpt's _fp8_eager
            w8 = ((w.to(w_ref.dtype).float() * inv).clamp(-448, 448).to(torch.float8_e4m3fn).float()
                  * (1 / inv)).to(w_ref.dtype)
            r["w4a8_fp8_stage_max_abs"] = float((w8.float() - w_ref.float()).abs().max())
            r["w4a8_fp8_stage_n_diff"] = int((w8 != w_ref).sum())
        per_layer[ex] = {"algo": algo, **r}
        k = algo.upper()
        wv = worst.setdefault(k, {"max_abs": 0.0, "max_rel": 0.0, "n_diff": 0, "numel": 0,
                                  "max_abs_after_bf16_rounding": 0.0, "n_diff_after_bf16_rounding": 0,
                                  "n_layers": 0})
        for f in ("max_abs", "max_rel", "max_abs_after_bf16_rounding"):
            wv[f] = max(wv[f], r[f])
        for f in ("n_diff", "numel", "n_diff_after_bf16_rounding"):
            wv[f] += r[f]
        if "w4a8_fp8_stage_max_abs" in r:
            wv["w4a8_fp8_stage_max_abs"] = max(wv.get("w4a8_fp8_stage_max_abs", 0.0), r["w4a8_fp8_stage_max_abs"])
            wv["w4a8_fp8_stage_n_diff"] = wv.get("w4a8_fp8_stage_n_diff", 0) + r["w4a8_fp8_stage_n_diff"]
        wv["n_layers"] += 1
    return {"per_algo": worst, "per_layer": per_layer}


def emulation_check(export_dir: Path, hq: dict, acts: dict, fq: dict) -> dict:
    """y_emul = act_quant(x*pqs) @ dequant(W)^T (+bias) from the checkpoint alone, vs ModelOpt's
    fake-quant module output for the same captured input. `with_modelopt_weight`: the same but
    with ModelOpt's own fake-quant weight, which isolates the activation emulation."""
    st = read_export(export_dir)
    res = {}
    for name, (x, y) in acts.items():
        algo, gs = layer_algo(hq, name)
        if algo is None:
            continue
        t = {k[len(name) + 1:]: v for k, v in st.items() if k.startswith(name + ".")}
        w = dequant(algo, t, gs).to(x.dtype).float()  # ModelOpt multiplies bf16 fake-quant weights
        x2 = x * t["pre_quant_scale"].to(x.dtype) if "pre_quant_scale" in t else x
        xq = act_quant(algo, x2, t).to(x.dtype).float()
        b = t["bias"].float() if "bias" in t else 0.0
        r = stats((xq @ w.T + b).to(y.dtype), y)
        r["max_abs_ref"] = float(y.float().abs().max())
        r["with_modelopt_weight"] = stats((xq @ fq[name].float().T + b).to(y.dtype), y)
        res[name] = {"algo": algo, **r}
    return res


def save_refs(fixture: str, tensors: dict, meta: dict):
    from safetensors.torch import save_file

    REFS.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(REFS / f"{fixture}.safetensors"),
              metadata={"format": "pt"})
    meta = {"fixture": fixture, "tensors_file": f"{fixture}.safetensors", **meta}
    (REFS / f"{fixture}.json").write_text(json.dumps(meta, indent=2) + "\n")
    os.chmod(REFS / f"{fixture}.safetensors", 0o644)


REF_WEIGHTS_LLAMA = ("model.layers.0.self_attn.k_proj", "model.layers.0.mlp.down_proj")
REF_WEIGHTS_SMALL = ("model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.qkv_proj")
# Which fake-quant weights go into the reference file (size budget; dequant_check in the JSON covers
# every quantized linear). Llama format fixtures: layer 0's k_proj (N=64: a partial 128-block, member
# of the fused q/k/v group) and down_proj (K=384: several groups/blocks along K, a 4-D FP8_PB_WO
# scale, pre_quant_scale for AWQ/SQ). Other architectures and the demo: k_proj (Phi-3: qkv_proj).


def quantize_export_reference(fixture: str, model, qcfg, cfg_text: str, forward_loop, ids,
                              tok_dir: Path | None, expect_algo: str | None = None, extra_meta=None,
                              ref_weights=REF_WEIGHTS_SMALL):
    import modelopt.torch.quantization as mtq
    from modelopt.torch.export import export_hf_checkpoint

    t0 = time.time()
    STANDIN_CALLS.clear()
    model = mtq.quantize(model, qcfg, forward_loop)
    ref = copy.deepcopy(model)
    prepare_like_export(ref)
    layers = [n for n in REP_LAYERS if n in dict(ref.named_modules())
              and getattr(dict(ref.named_modules())[n], "weight_quantizer", None) is not None]
    logits, acts, seq, margins = run_references(ref, ids, layers)
    fq = quantized_weights(ref)

    out = DATA / fixture
    shutil.rmtree(out, ignore_errors=True)
    export_hf_checkpoint(model, export_dir=str(out))
    if tok_dir is not None:
        copy_tokenizer(tok_dir, out)
    for f in out.iterdir():
        os.chmod(f, 0o644)
    hq = json.loads((out / "hf_quant_config.json").read_text())
    q = hq["quantization"]
    if expect_algo is not None:
        assert q["quant_algo"] == expect_algo, (q["quant_algo"], expect_algo)

    dc = dequant_check(out, hq, fq)
    ec = emulation_check(out, hq, acts, fq)
    tensors = {"model.input_ids": ids, "model.logits": logits, "model.greedy": seq,
               "model.top2_margin": margins}
    for n, (x, y) in acts.items():
        tensors[f"layers.{n}.input"] = x
        tensors[f"layers.{n}.output"] = y
    for n, w in fq.items():
        if n in ref_weights:
            tensors[f"weights.{n}"] = w
    dtypes = {str(w.dtype) for w in fq.values()}
    algos = sorted({layer_algo(hq, n)[0].upper() for n in fq})
    meta = {
        "quant_algo": q["quant_algo"], "kv_cache_quant_algo": q.get("kv_cache_quant_algo"),
        "group_size": q.get("group_size"), "modelopt_config": cfg_text, "versions": versions(),
        "model_dtype": str(model.dtype).replace("torch.", ""), "architecture": type(model).__name__,
        "layers": list(acts), "quantized_linears": list(fq),
        "weights_stored": sorted(n for n in fq if n in ref_weights),
        "weights_dtype": sorted(dtypes),
        "weights_note": "weights.<module> = module.weight_quantizer(module.weight) on the re-balanced "
        "copy, [N, K]. Stored in the dtype ModelOpt computed it in (the model dtype, bfloat16): "
        "the fake-quant op returns its input dtype, so .float() of it is exactly the fp32 value. "
        "Only the linears in weights_stored are kept (size budget); dequant_check covers every "
        "quantized linear.",
        "activation_emulation": {a: ACT_EMULATION.get(a, "?") for a in algos},
        "dequant_check_explanation": {a: DEQUANT_NOTES.get(a, "?") for a in algos},
        "standin_op_calls": dict(STANDIN_CALLS),
        "dequant_check": dc["per_algo"], "dequant_check_per_layer": dc["per_layer"],
        "emulation_check": ec,
        "emulation_check_note": "y_emul = act_quant(x * pre_quant_scale) @ dequant(W)^T computed from "
        "the exported tensors alone (FORMATS section 8 dequant rounded to the model dtype, the "
        "activation rule in activation_emulation, fp32 matmul, rounded to the model dtype) vs "
        "ModelOpt's fake-quant module output for the captured input",
        "prompt": PROMPT if tok_dir is not None else None,
        "seconds": round(time.time() - t0, 1),
    }
    if extra_meta:
        meta.update(extra_meta)
    save_refs(fixture, tensors, meta)
    log(f"  {fixture}: {q['quant_algo']} in {time.time() - t0:.1f}s; dequant_check "
        + ", ".join(f"{a}: max_abs {v['max_abs']:.3g} (bf16-rounded {v['max_abs_after_bf16_rounding']:.3g})"
                    for a, v in dc["per_algo"].items()))
    return meta


# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------

BASE = DATA / "llama-bf16"
FORMAT_MODEL = dict(hidden=128, inter=384, layers=2, heads=4, kv_heads=2)
FORMAT_STEPS = 1500
DEMO_MODEL = dict(hidden=256, inter=768, layers=4, heads=4, kv_heads=2)
DEMO_STEPS = 1000


def greedy_text(model, tok, ids, n=N_NEW) -> str:
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=None)
    return tok.decode(out[0])


def step_base():
    """Tokenizer + trained bf16 format model -> tests/data/llama-bf16/ (+ its references)."""
    tok_dir = CACHE / "tokenizer"
    build_tokenizer(tok_dir)
    tok = load_tokenizer(tok_dir)
    cfg = llama_config(**FORMAT_MODEL)
    log(f"training the format model ({FORMAT_STEPS} steps)")
    model, loss, secs = train_llama(cfg, tok, FORMAT_STEPS)
    shutil.rmtree(BASE, ignore_errors=True)
    model.save_pretrained(str(BASE))
    copy_tokenizer(tok_dir, BASE)
    for f in BASE.iterdir():
        os.chmod(f, 0o644)
    model = load_base()  # reload: the trained model's `.to(bfloat16)` also rounded RoPE inv_freq
    ids = prompt_ids(tok)
    layers = [n for n in REP_LAYERS if n in dict(model.named_modules())]
    logits, acts, seq, margins = run_references(model, ids, layers)
    tensors = {"model.input_ids": ids, "model.logits": logits, "model.greedy": seq,
               "model.top2_margin": margins}
    for n, (x, y) in acts.items():
        tensors[f"layers.{n}.input"] = x
        tensors[f"layers.{n}.output"] = y
    text = tok.decode(seq[0])
    save_refs("llama-bf16", tensors, {
        "quant_algo": None, "versions": versions(), "model_dtype": "bfloat16",
        "architecture": "LlamaForCausalLM", "layers": list(acts), "prompt": PROMPT,
        "train": {"steps": FORMAT_STEPS, "batch": 32, "seq": 128, "final_loss_ema": round(loss, 3),
                  "seconds": round(secs), "corpus_sha256": corpus_sha256()},
        "greedy_text": text})
    log(f"  llama-bf16: loss {loss:.3f}; greedy: {text!r}")


def load_base():
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(str(BASE), dtype=torch.bfloat16).eval()


def make_forward_loop(batches):
    def loop(m):
        with torch.no_grad():
            for b in batches:
                m(b)
    return loop


def step_llama(slug: str):
    factory, text = LLAMA_FORMATS[slug]
    tok = load_tokenizer(BASE)
    ids = prompt_ids(tok)
    model = load_base()
    meta = quantize_export_reference(f"llama-{slug}", model, factory(), text,
                                     make_forward_loop(calib_batches(tok)), ids, BASE,
                                     ref_weights=REF_WEIGHTS_LLAMA)
    algo = meta["quant_algo"].lower()
    want = slug.replace("-kv", "")
    assert algo == want, f"exported quant_algo {meta['quant_algo']} does not match fixture slug {slug}"


def step_sharded():
    """llama-nvfp4 re-split into 3 shards + model.safetensors.index.json (safetensors library)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    src, dst = DATA / "llama-nvfp4", DATA / "llama-nvfp4-sharded"
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir()
    with safe_open(str(src / "model.safetensors"), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    keys = sorted(tensors)
    nbytes = {k: tensors[k].numel() * tensors[k].element_size() for k in keys}
    total = sum(nbytes.values())
    n = len(keys)  # contiguous runs of sorted names, 1/3 of the tensors each: a shard boundary
    shards = [keys[: n // 3], keys[n // 3 : 2 * n // 3], keys[2 * n // 3 :]]  # falls inside a module
    owner = {}
    for i, ks in enumerate(shards):
        for k in ks:
            owner.setdefault(k.rsplit(".", 1)[0], set()).add(i)
    split_modules = sorted(m for m, v in owner.items() if len(v) > 1)
    weight_map = {}
    for i, ks in enumerate(shards):
        fn = f"model-{i + 1:05d}-of-00003.safetensors"
        save_file({k: tensors[k] for k in ks}, str(dst / fn), metadata=meta or {"format": "pt"})
        weight_map.update({k: fn for k in ks})
    (dst / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n")
    for f in ("config.json", "generation_config.json", "hf_quant_config.json", *TOKENIZER_FILES):
        shutil.copy(src / f, dst / f)
    for f in dst.iterdir():
        os.chmod(f, 0o644)
    ref = json.loads((REFS / "llama-nvfp4.json").read_text())
    ref.update({"fixture": "llama-nvfp4-sharded", "tensors_file": "llama-nvfp4.safetensors",
                "shards": {f"model-{i + 1:05d}-of-00003.safetensors": len(ks) for i, ks in enumerate(shards)},
                "modules_split_across_shards": split_modules,
                "note": "same tensors as llama-nvfp4 (byte-identical), re-split into 3 shards; the "
                "reference tensors are those of llama-nvfp4"})
    (REFS / "llama-nvfp4-sharded.json").write_text(json.dumps(ref, indent=2) + "\n")
    log(f"  llama-nvfp4-sharded: {[len(s) for s in shards]} tensors per shard, total_size {total}, "
        f"split modules {split_modules}")


def step_demo():
    """Bigger trained Llama exported as NVFP4 -> demo/ (its NVFP4 greedy text stays close to the
    bf16 model's; both are recorded in references/demo.json)."""
    from transformers import LlamaForCausalLM

    tok = load_tokenizer(BASE)
    base_dir = CACHE / f"demo-bf16-{DEMO_STEPS}"
    if not (base_dir / "model.safetensors").exists():
        log(f"training the demo model ({DEMO_STEPS} steps)")
        model, loss, secs = train_llama(llama_config(**DEMO_MODEL), tok, DEMO_STEPS, lr=2e-3)
        model.save_pretrained(str(base_dir))
        (base_dir / "train.json").write_text(json.dumps({"loss": loss, "seconds": secs}))
    train = json.loads((base_dir / "train.json").read_text())
    ids = prompt_ids(tok)
    base = LlamaForCausalLM.from_pretrained(str(base_dir), dtype=torch.bfloat16).eval()
    bf16_text = greedy_text(base, tok, ids)
    log(f"  demo bf16 greedy: {bf16_text!r}")
    meta = quantize_export_reference(
        "demo", base, mtq_cfg("NVFP4_DEFAULT_CFG"), "NVFP4_DEFAULT_CFG",
        make_forward_loop(calib_batches(tok)), ids, BASE, "NVFP4",
        extra_meta={"bf16_greedy_text": bf16_text,
                    "train": {"steps": DEMO_STEPS, "batch": 32, "seq": 128, "final_loss_ema": round(train["loss"], 3),
                              "seconds": round(train["seconds"]), "corpus_sha256": corpus_sha256()}})
    from safetensors.torch import load_file

    seq = load_file(str(REFS / "demo.safetensors"))["model.greedy"]
    meta["greedy_text"] = tok.decode(seq[0])
    (REFS / "demo.json").write_text(json.dumps(meta | {"fixture": "demo", "tensors_file": "demo.safetensors"},
                                               indent=2) + "\n")
    log(f"  demo nvfp4 greedy: {meta['greedy_text']!r}")


# --- other architectures (random init) --------------------------------------------------------

def arch_specs():
    import transformers as T

    common = dict(hidden_size=128, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=256, max_position_embeddings=256,
                  bos_token_id=0, eos_token_id=1, pad_token_id=0)
    return {
        "qwen3": (T.Qwen3Config, T.Qwen3ForCausalLM, dict(head_dim=32, tie_word_embeddings=True)),
        "qwen3moe": (T.Qwen3MoeConfig, T.Qwen3MoeForCausalLM, dict(
            head_dim=32, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=128,
            decoder_sparse_step=1, mlp_only_layers=[], tie_word_embeddings=False)),
        "mixtral": (T.MixtralConfig, T.MixtralForCausalLM, dict(
            intermediate_size=128, num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False)),
        "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM, dict(tie_word_embeddings=True)),
        "mistral": (T.MistralConfig, T.MistralForCausalLM, dict(head_dim=32, tie_word_embeddings=False)),
        "phi3": (T.Phi3Config, T.Phi3ForCausalLM, dict(tie_word_embeddings=False)),
        "gemma3": (T.Gemma3TextConfig, T.Gemma3ForCausalLM, dict(
            head_dim=32, sliding_window=64, tie_word_embeddings=True)),
    }, common


ARCH_FORMATS = {  # arch -> slugs to export
    "qwen3": ["nvfp4", "w4a16_awq"],
    "qwen3moe": ["nvfp4", "fp8", "w4a16_awq"],
    "mixtral": ["nvfp4", "w4a16_awq"],
    "qwen2": ["nvfp4", "w4a16_awq"],
    "mistral": ["nvfp4", "w4a16_awq"],
    "phi3": ["nvfp4", "w4a16_awq"],
    "gemma3": ["nvfp4", "w4a16_awq"],
}
ARCH_FAILED: dict[str, str] = {}


def step_arch(arch: str, slug: str):
    specs, common = arch_specs()
    C, M, extra = specs[arch]
    cfg = C(**{**common, **extra})
    cfg.architectures = [M.__name__]
    torch.manual_seed(SEED)
    with tempfile.TemporaryDirectory() as td:  # save + from_pretrained(bf16), as a user loads a model:
        M(cfg).save_pretrained(td)  # `.to(bfloat16)` would also round the RoPE inv_freq buffer
        model = M.from_pretrained(td, dtype=torch.bfloat16).eval()
    g = torch.Generator().manual_seed(SEED + 2)
    batches = [torch.randint(2, cfg.vocab_size, (1, 64), generator=g) for _ in range(8)]
    ids = torch.randint(2, cfg.vocab_size, (1, N_PROMPT), generator=g)
    factory, text = LLAMA_FORMATS[slug]
    fixture = f"{arch}-{slug}"
    try:
        quantize_export_reference(fixture, model, factory(), text, make_forward_loop(batches), ids, None,
                                  slug.upper(),
                                  extra_meta={"init": {"random_seed": SEED, "how": "M(config) in fp32 "
                                              "with torch.manual_seed, saved, reloaded with from_pretrained("
                                              "dtype=bfloat16) (RoPE inv_freq stays fp32)"}})
    except Exception as e:  # record, clean up, keep going
        msg = f"{type(e).__name__}: {e}"
        ARCH_FAILED[fixture] = msg
        shutil.rmtree(DATA / fixture, ignore_errors=True)
        for ext in ("json", "safetensors"):
            (REFS / f"{fixture}.{ext}").unlink(missing_ok=True)
        log(f"  {fixture}: FAILED: {msg}")


def all_steps():
    steps = {"base": step_base}
    for slug in LLAMA_FORMATS:
        steps[f"llama-{slug}"] = lambda slug=slug: step_llama(slug)
    steps["llama-nvfp4-sharded"] = step_sharded
    for arch, slugs in ARCH_FORMATS.items():
        for slug in slugs:
            steps[f"{arch}-{slug}"] = lambda arch=arch, slug=slug: step_arch(arch, slug)
    steps["demo"] = step_demo
    return steps


def main():
    global CORPUS_OVERRIDE
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="+", metavar="NAME", help="steps to run (see --list)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--corpus", type=Path, help="text file, one verse a line (default: Debian KJV)")
    args = ap.parse_args()
    CORPUS_OVERRIDE = args.corpus
    steps = all_steps()
    if args.list:
        print("\n".join(steps))
        return
    names = args.only or list(steps)
    bad = [n for n in names if n not in steps]
    if bad:
        sys.exit(f"unknown step(s): {bad}; see --list")
    install_standin()
    if "base" not in names and not (BASE / "model.safetensors").exists():
        names = ["base", *names]
    for n in names:
        log(f"== {n}")
        steps[n]()
    fail_file = REFS / "export_failures.json"
    failed = json.loads(fail_file.read_text()) if fail_file.exists() else {}
    failed = {k: v for k, v in failed.items() if k not in names}  # re-run steps: fresh verdict
    failed.update(ARCH_FAILED)
    if failed:
        fail_file.write_text(json.dumps(dict(sorted(failed.items())), indent=2) + "\n")
        log("export failures:", json.dumps(ARCH_FAILED, indent=2))
    else:
        fail_file.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
