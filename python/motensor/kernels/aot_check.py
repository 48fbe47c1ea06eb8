"""Compile every motensor Triton kernel variant for a GPU target without a GPU (Triton's bundled ptxas).

The CPU interpreter checks numerics but is lenient about types, layouts and dot shapes; this
compiles the real PTX/cubin for e.g. sm80, sm89, sm90 so such errors show up on a CPU-only
machine, and reports registers, spills and the instruction mix per kernel for review:

    TRITON_INTERPRET=0 python -m motensor.kernels.aot_check --arch 90 [--dump DIR]
    TRITON_INTERPRET=0 python -m motensor.kernels.aot_check --sweep covering --arch 80,89,90 --jobs 2

Sweeps: representative (one config per path), covering (every autotune config of every kernel
for every format kind, the other launcher choices rotated), exhaustive (the full product).
Besides compiling, each variant's Triton IR is checked (`ir_problems`): 64-bit row offsets, and
fp8 dots that promote to fp32 at least every 32 products.

Must run with TRITON_INTERPRET unset/0 (the kernels have to be real JITFunctions).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Optional

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

_ACT = {"fp16": "*fp16", "bf16": "*bf16", "fp32": "*fp32"}


@dataclass
class Variant:
    name: str
    fn: Any         # a triton.JITFunction
    types: dict      # runtime argument name -> Triton type string
    consts: dict     # constexpr name -> value
    num_warps: int = 4
    num_stages: int = 3
    min_arch: int = 80


def _w4_types(act: str, w: str, s: str, out: str):
    return dict(x_ptr=_ACT[act], w_ptr=w, s_ptr=s, gs_ptr="*fp32", b_ptr=_ACT[act], c_ptr=out, M="i32", N="i32",
                K="i32", stride_xm="i32", stride_wn="i32", stride_sg="i32", stride_cm="i32", M_BUCKET="i32")


def _from_config(name, fn, types, consts, cfg, min_arch=80, even: bool = True) -> Variant:
    consts = dict(consts, **cfg.kwargs)
    if "EVEN_K" in fn.arg_names:
        consts["EVEN_K"] = even     # True is the common case: K a multiple of BLOCK_K * SPLIT_K
    extra = "".join(f" {k}={consts[k]}" for k in ("HAS_BIAS", "EVEN_K", "X_PREQUANT", "BLOCK_M")
                    if k in consts and k not in cfg.kwargs)
    return Variant(f"{name} {cfg.kwargs}{extra} w{cfg.num_warps}s{cfg.num_stages}", fn, types, consts,
                   cfg.num_warps, cfg.num_stages, min_arch)


# The (element, scale kind, group) combinations of the formats (rust/core/src/formats.rs) that the
# 4-bit launchers see: NVFP4 / W4A16_NVFP4 / NVFP4_AWQ (global scale), MXFP4, W4A16_AWQ / W4A8_AWQ.
W4_KINDS = (("E2M1", "E4M3", 16), ("E2M1", "E8M0", 32), ("INT4", "F32", 128))
W4A8_KINDS = (("INT4", "F32", 128), ("E2M1", "E4M3", 16))
W8_KINDS = (("F32_BLOCK", 128), ("E8M0", 32))
# W4A8 MMA operands: (OP_DTYPE, HW_CVT, lowest arch); sm80 gets the fp16 route only.
W4A8_OPERANDS = (("fp8", False, 89), ("fp8", True, 89), ("fp16", False, 80))
SWEEPS = ("representative", "covering", "exhaustive")


def _w4_consts(el: str, sk: str, g: int, bias: bool) -> dict:
    from motensor.formats import Element, ScaleEncoding

    return dict(ELEMENT=Element[el].value, SCALE_KIND=ScaleEncoding[sk].value, GROUP=g,
                HAS_GS=sk == "E4M3", HAS_BIAS=bias)


def _pick(choices: tuple, i: int, full: bool) -> tuple:
    """All choices (exhaustive sweep), or the i-th in rotation (covering sweep)."""
    return choices if full else (choices[i % len(choices)],)


def variants(all_configs: bool = False, sweep: Optional[str] = None) -> list[Variant]:
    """Kernel variants to compile.

    sweep "representative" (default; `all_configs` False): every kind combination with the first
    config per path. "covering" (`all_configs` True): every autotune config of every kernel path
    for every format kind and W4A8 operand, with the remaining launcher choices (activation dtype,
    bias, EVEN_K, gemv BLOCK_M, X_PREQUANT) rotated across configs so each value is compiled with
    several configs. "exhaustive": the full product of all of those (what the launchers can
    produce; thousands of compiles, for a many-core machine: make gpu-check runs it).
    """
    from motensor.kernels import act_quant, w4a8, w4a16, w8a16
    import triton.language as tl

    from motensor.formats import Element, ScaleEncoding

    W8_SCALE_ENCODING = {"F32_BLOCK": ScaleEncoding.F32, "E8M0": ScaleEncoding.E8M0}
    sweep = sweep or ("covering" if all_configs else "representative")
    if sweep not in SWEEPS:
        raise ValueError(f"sweep must be one of {SWEEPS}")
    rep, full = sweep == "representative", sweep == "exhaustive"

    def pick(configs):
        return configs[:1] if rep else configs

    out = []
    acts = ("bf16", "fp16", "fp32")
    for ki, (el, sk, g) in enumerate(W4_KINDS):
        st = "*fp32" if sk == "F32" else "*u8"
        for path, configs, kernel in (("gemv", w4a16.GEMV_CONFIGS, w4a16._gemv_kernel),
                                      ("splitk", w4a16.SPLITK_CONFIGS, w4a16._dot_kernel),
                                      ("tiled", w4a16.TILED_CONFIGS, w4a16._dot_kernel)):
            for ci, cfg in enumerate(pick(configs)):
                i = ci + ki
                for act in (("bf16", "fp16") if rep else _pick(acts, i, full)):
                    for bias in ((True,) if rep else _pick((True, False), i // 3, full)):
                        for even in ((True,) if rep else _pick((True, False), i // 2, full)):
                            # the launcher: gemv and split-K accumulate into fp32, tiled stores x.dtype
                            out_t = _ACT[act] if path == "tiled" else "*fp32"
                            w_t = "*i32" if path == "gemv" else "*u8"
                            consts = _w4_consts(el, sk, g, bias)
                            if path == "gemv":
                                for bm in ((1,) if rep else _pick((1, 2, 4), i, full)):
                                    out.append(_from_config(f"w4a16 {path} {el}/{sk} {act}", kernel,
                                                            _w4_types(act, w_t, st, out_t),
                                                            dict(consts, BLOCK_M=bm), cfg, even=even))
                            else:
                                out.append(_from_config(f"w4a16 {path} {el}/{sk} {act}", kernel,
                                                        _w4_types(act, w_t, st, out_t), consts, cfg, even=even))
    if rep:
        for cfg in pick(w4a16.TILED_CONFIGS):
            out.append(_from_config("w4a16 tiled E2M1/E4M3 fp32(tf32)", w4a16._dot_kernel,
                                    _w4_types("fp32", "*u8", "*u8", "*fp32"),
                                    dict(ELEMENT=Element.E2M1.value, SCALE_KIND=ScaleEncoding.E4M3.value, GROUP=16,
                                         HAS_GS=True, HAS_BIAS=False), cfg))
    for ki, (sk, sb) in enumerate(W8_KINDS):
        st = "*fp32" if sk == "F32_BLOCK" else "*u8"
        for path, configs in (("splitk", w8a16.SPLITK_CONFIGS), ("tiled", w8a16.TILED_CONFIGS)):
            for ci, cfg in enumerate(pick(configs)):
                i = ci + ki
                for act in (("bf16", "fp16") if rep else _pick(acts, i, full)):
                    for bias in ((True,) if rep else _pick((True, False), i // 3, full)):
                        for even in ((True,) if rep else _pick((True, False), i // 2, full)):
                            t = dict(x_ptr=_ACT[act], w_ptr="*u8", s_ptr=st, b_ptr=_ACT[act],
                                     c_ptr=_ACT[act] if path == "tiled" else "*fp32", M="i32", N="i32",
                                     K="i32", stride_xm="i32", stride_wn="i32", stride_s0="i32", stride_cm="i32",
                                     M_BUCKET="i32")
                            base = dict(SCALE_KIND=W8_SCALE_ENCODING[sk].value, SBLOCK=sb, HAS_BIAS=bias)
                            out.append(_from_config(f"w8a16 {path} {sk} {act}", w8a16._w8a16_kernel, t, base, cfg,
                                                    even=even))
    ops = {"fp8": tl.float8e4nv, "fp16": tl.float16}
    for ki, (el, sk, g) in enumerate(W4A8_KINDS):
        st = "*fp32" if sk == "F32" else "*u8"
        for op, hw, arch in W4A8_OPERANDS:
            for path, configs in (("splitk", w4a8.SPLITK_CONFIGS), ("tiled", w4a8.TILED_CONFIGS)):
                for ci, cfg in enumerate(pick(configs)):
                    i = ci + ki
                    default_pre = path == "tiled"      # what the launcher does unless told
                    for pre in ((default_pre,) if rep else _pick((default_pre, not default_pre), i, full)):
                        for bias in ((True,) if rep else _pick((True, False), i // 2, full)):
                            for even in ((True,) if rep else _pick((True, False), i // 3, full)):
                                t = dict(x_ptr="*u8" if pre else "*bf16", w_ptr="*u8", s_ptr=st, ws2_ptr="*fp32",
                                         is_ptr="*fp32", b_ptr="*bf16",
                                         c_ptr="*bf16" if path == "tiled" else "*fp32", M="i32", N="i32",
                                         K="i32", stride_xm="i32", stride_wn="i32", stride_sg="i32",
                                         stride_cm="i32", M_BUCKET="i32")
                                base = dict(ELEMENT=Element[el].value, SCALE_KIND=ScaleEncoding[sk].value,
                                            GROUP=g, HAS_BIAS=bias, X_PREQUANT=pre, OP_DTYPE=ops[op], HW_CVT=hw)
                                out.append(_from_config(f"w4a8 {path} {el}/{sk} op={ops[op]} hw_cvt={hw}",
                                                        w4a8._w4a8_kernel, t, base, cfg, min_arch=arch, even=even))
    # Grouped routed experts (moe_w4a16): every fixed config per format kind, gate/up (ROW_DIV=top_k,
    # x per token) and down (ROW_DIV=1, routing weights) forms; AWQ with its pre_quant_scale.
    from motensor.kernels import moe_w4a16

    for ki, (el, sk, g) in enumerate(W4_KINDS):
        st = "*fp32" if sk == "F32" else "*u8"
        moe_cfgs = [c for _, c in moe_w4a16.CONFIGS] + [moe_w4a16.PRE_SM90_LARGE]
        for ci, cfg in enumerate(moe_cfgs if not rep else moe_cfgs[:1]):
            i = ci + ki
            for act in (("bf16", "fp16") if rep else _pick(acts, i, full)):
                for down in ((False, True) if rep or full else ((i % 2) == 1,)):
                    t = dict(x_ptr=_ACT[act], w_ptr="*u8", s_ptr=st, gs_ptr="*fp32", pqs_ptr=_ACT[act],
                             tw_ptr="*fp32", c_ptr=_ACT[act], sorted_ptr="*i32", expert_ptr="*i32", N="i32",
                             K="i32", EM="i32", num_pairs="i32", stride_xm="i32", stride_we="i32", stride_wn="i32",
                             stride_se="i32", stride_sg="i32", stride_pe="i32", stride_cm="i32")
                    base = dict(ROW_DIV=1 if down else 8, ELEMENT=Element[el].value, SCALE_KIND=ScaleEncoding[sk].value,
                                GROUP=g, HAS_GS=sk == "E4M3", HAS_PQS=el == "INT4", MUL_ROUTED=down)
                    out.append(_from_config(f"moe_w4a16 {el}/{sk} {act} {'down' if down else 'gate_up'}",
                                            moe_w4a16._moe_w4a16_kernel, t, base, cfg))
    from motensor.kernels import moe_w8a16

    for ki, (sk, sb) in enumerate(W8_KINDS):
        st = "*fp32" if sk == "F32_BLOCK" else "*u8"
        for ci, cfg in enumerate(moe_cfgs if not rep else moe_cfgs[:1]):
            i = ci + ki
            for act in (("bf16", "fp16") if rep else _pick(acts, i, full)):
                for down in ((False, True) if rep or full else ((i % 2) == 1,)):
                    t = dict(x_ptr=_ACT[act], w_ptr="*u8", s_ptr=st, tw_ptr="*fp32", c_ptr=_ACT[act],
                             sorted_ptr="*i32", expert_ptr="*i32", N="i32", K="i32", EM="i32", num_pairs="i32",
                             stride_xm="i32", stride_we="i32", stride_wn="i32", stride_se="i32", stride_s0="i32",
                             stride_cm="i32")
                    base = dict(ROW_DIV=1 if down else 8, SCALE_KIND=W8_SCALE_ENCODING[sk].value, SBLOCK=sb,
                                MUL_ROUTED=down)
                    out.append(_from_config(f"moe_w8a16 {sk} {act} {'down' if down else 'gate_up'}",
                                            moe_w8a16._moe_w8a16_kernel, t, base, cfg))
    aq = dict(M="i32", K="i32", stride_xm="i32", stride_om="i32")
    for act in (("bf16",) if rep else acts):
        a_t = _ACT[act]
        out.append(Variant(f"nvfp4_fake_quant {act}", act_quant._nvfp4_fake_quant_kernel,
                           dict(x_ptr=a_t, is_ptr="*fp32", o_ptr=a_t, **aq), dict(BLOCK_M=16, NB=16, BS=16)))
        out.append(Variant(f"mxfp8_fake_quant {act}", act_quant._mxfp8_fake_quant_kernel,
                           dict(x_ptr=a_t, o_ptr=a_t, **aq), dict(BLOCK_M=16, NB=8, BS=32)))
        out.append(Variant(f"fp8_quant_per_token {act}", act_quant._fp8_per_token_kernel,
                           dict(x_ptr=a_t, q_ptr="*u8", s_ptr="*fp32", M="i32", K="i32", stride_xm="i32",
                                stride_qm="i32"), dict(BLOCK_M=8, BLOCK_K=256)))
        out.append(Variant(f"fp8_quant_static {act}", act_quant._fp8_static_kernel,
                           dict(x_ptr=a_t, is_ptr="*fp32", q_ptr="*u8", M="i32", K="i32", stride_xm="i32",
                                stride_qm="i32"), dict(BLOCK_M=16, BLOCK_K=256)))
    return out


# Runtime arguments that are multiples of 16 in real models (pointers 16-byte aligned, K, N,
# strides): the launcher specializes on this at run time, so compile the same way.
_NOT_DIVISIBLE = {"M", "M_BUCKET", "num_pairs"}


def compile_variant(v: Variant, arch: int):
    fn = v.fn
    signature = {n: ("constexpr" if n in v.consts else v.types[n]) for n in fn.arg_names}
    constexprs = {(fn.arg_names.index(k),): val for k, val in v.consts.items()}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
             if n not in v.consts and n not in _NOT_DIVISIBLE}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options=dict(num_warps=v.num_warps, num_stages=v.num_stages))


def _cuobjdump(cubin: bytes, flag: str) -> str:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool, flag, f.name], capture_output=True, text=True).stdout


# A few stack bytes are a register saved around a CALL outside the main loop (seen: 8 bytes
# around the split-K atomic branch); real register-pressure spills run to hundreds of bytes.
SPILL_STACK_BYTES = 32


def resource_usage(cubin: bytes) -> str:
    """Registers / stack / local memory per thread from the cubin (no device needed)."""
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", _cuobjdump(cubin, "-res-usage"))
    return "regs=? stack=? " if m is None else f"regs={m[1]} stack={m[2]} local={m[4]}"


def spills(usage: str) -> bool:
    m = re.search(r"stack=(\d+)", usage)
    return m is None or int(m[1]) > SPILL_STACK_BYTES


def sass_summary(cubin: bytes) -> str:
    """Instruction-class counts from the SASS (cuobjdump shipped with Triton)."""
    sass = _cuobjdump(cubin, "-sass")
    ops = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)(\.[A-Z0-9_.]+)?", sass)
    counts: dict = {}
    for op, mod in ops:
        key = op + (".128" if mod and ".128" in mod else "")
        counts[key] = counts.get(key, 0) + 1
    keys = ("HGMMA", "QGMMA", "HMMA", "FFMA", "HFMA2", "LOP3", "LDG.128", "LDG", "STG", "RED", "LDL", "STL")
    return " ".join(f"{k}={counts[k]}" for k in keys if k in counts) + f" total={sum(counts.values())}"


# Row strides whose products with a row index must be 64-bit (kernels/_tiles.row_offsets): the
# activation and output rows (M * K, M * N pass 2^31 in a long prefill against a large vocabulary)
# and the weight rows of the byte-per-element and nibble layouts (N * K for a large lm_head). The
# GEMV reads the weight as int32 words (N * K / 8): 32 bits are enough there.
WIDE_STRIDES = {
    "_gemv_kernel": ("stride_xm", "stride_cm"),
    "_dot_kernel": ("stride_xm", "stride_wn", "stride_cm"),
    "_w8a16_kernel": ("stride_xm", "stride_wn", "stride_cm"),
    "_w4a8_kernel": ("stride_xm", "stride_wn", "stride_cm"),
    "_nvfp4_fake_quant_kernel": ("stride_xm", "stride_om"),
    "_mxfp8_fake_quant_kernel": ("stride_xm", "stride_om"),
    "_fp8_per_token_kernel": ("stride_xm", "stride_qm"),
    "_fp8_static_kernel": ("stride_xm", "stride_qm"),
    "_moe_w4a16_kernel": ("stride_xm", "stride_wn", "stride_cm"),
    "_moe_w8a16_kernel": ("stride_xm", "stride_wn", "stride_cm"),
}


def ir_problems(v: Variant, ttir: str) -> list[str]:
    """What the Triton IR of a variant must show, beyond compiling: every row stride widened to
    64 bits before use, and every fp8 x fp8 dot promoting to fp32 at least every 32 products."""
    problems = []
    for name in WIDE_STRIDES.get(v.fn.__name__, ()):
        if f"arith.extsi %{name} : i32 to i64" not in ttir:
            problems.append(f"{name} is used in 32-bit offsets")
    for line in ttir.splitlines():
        if "tt.dot " in line and "xf8E" in line.split(":")[-1]:
            m = re.search(r"maxNumImpreciseAcc = (\d+)", line)
            if m is None or not 0 < int(m[1]) <= 32:
                problems.append(f"fp8 dot without a bounded imprecise accumulation: {line.strip()[:160]}")
    return problems


def _one(job) -> dict:
    """Compile one variant (in a worker process): status ok | spill | ir | fail."""
    sweep, index, arch = job
    v = variants(sweep=sweep)[index]
    try:
        k = compile_variant(v, arch)
    except Exception as e:  # noqa: BLE001 - reported per variant
        return dict(name=v.name, arch=arch, status="fail", detail=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
    usage = resource_usage(k.asm["cubin"])
    problems = ir_problems(v, k.asm["ttir"])
    status = "ir" if problems else ("spill" if spills(usage) else "ok")
    return dict(name=v.name, arch=arch, status=status, detail="; ".join(problems) or f"{usage} smem={k.metadata.shared}")


def sweep(sweep: str, archs, jobs: int = 1, name_filter: str = "", progress=None) -> list[dict]:
    """Compiles every variant of `sweep` for each arch (those at or above the variant's minimum),
    in `jobs` processes; returns one result per compile, in order."""
    pool = variants(sweep=sweep)
    work = [(sweep, i, arch) for arch in archs for i, v in enumerate(pool)
            if arch >= v.min_arch and name_filter in v.name]
    if jobs <= 1:
        results = []
        for j in work:
            results.append(_one(j))
            if progress:
                progress(results[-1])
        return results
    import concurrent.futures as cf
    import multiprocessing as mp

    results = []
    with cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as ex:
        for r in ex.map(_one, work, chunksize=2):
            results.append(r)
            if progress:
                progress(r)
    return results


def check(name_prefixes, arch: int) -> list[str]:
    """Compile the first variant whose name starts with each prefix; raise on an error or a spill.
    Returns one report line per variant (used by tests/kernels/test_aot.py)."""
    pool = variants()
    lines = []
    for prefix in name_prefixes:
        v = next(v for v in pool if v.name.startswith(prefix))
        k = compile_variant(v, arch)
        usage = resource_usage(k.asm["cubin"])
        if spills(usage):
            raise AssertionError(f"sm{arch} {v.name} spills registers: {usage}")
        problems = ir_problems(v, k.asm["ttir"])
        if problems:
            raise AssertionError(f"sm{arch} {v.name}: " + "; ".join(problems))
        lines.append(f"sm{arch} {v.name}: {usage}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="90", help="comma-separated, e.g. 80,89,90")
    p.add_argument("--filter", default="")
    p.add_argument("--dump", help="write ptx per variant into this folder (one process)")
    p.add_argument("--sass", action="store_true", help="print SASS instruction counts (one process)")
    p.add_argument("--all-configs", action="store_true", help="same as --sweep covering")
    p.add_argument("--sweep", choices=SWEEPS, default=None, help="which variants (default representative)")
    p.add_argument("--jobs", type=int, default=1, help="compile in this many processes")
    p.add_argument("--quiet", action="store_true", help="print only problems and the summary")
    a = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: AOT compilation needs real JITFunctions", file=sys.stderr)
        return 2
    archs = [int(x) for x in str(a.arch).split(",") if x.strip()]
    which = a.sweep or ("covering" if a.all_configs else "representative")
    if a.dump or a.sass:
        return _inspect(which, archs, a)
    counts: dict = {}
    t0 = time.time()

    def show(r: dict) -> None:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
        if not a.quiet or r["status"] != "ok":
            tag = {"ok": "ok   ", "spill": "SPILL", "ir": "IR   ", "fail": "FAIL "}[r["status"]]
            print(f"{tag} sm{r['arch']} {r['name']}: {r['detail']}", flush=True)

    results = sweep(which, archs, a.jobs, a.filter, show)
    print(f"aot_check {which} sweep, triton {triton.__version__}, sm{'/sm'.join(map(str, archs))}: "
          f"{len(results)} compiles in {time.time() - t0:.0f} s: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), flush=True)
    return 1 if counts.get("fail") or counts.get("ir") else 0


def _inspect(which: str, archs, a) -> int:
    failures = 0
    for arch in archs:
        for v in variants(sweep=which):
            if a.filter not in v.name or arch < v.min_arch:
                continue
            try:
                k = compile_variant(v, arch)
            except Exception as e:  # noqa: BLE001 - report all variants, then fail
                failures += 1
                print(f"FAIL sm{arch} {v.name}: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
                continue
            usage = resource_usage(k.asm["cubin"])
            line = f"{'SPILL' if spills(usage) else 'ok   '} sm{arch} {v.name}: {usage} smem={k.metadata.shared}"
            if a.sass:
                line += "  " + sass_summary(k.asm["cubin"])
            print(line)
            if a.dump:
                os.makedirs(a.dump, exist_ok=True)
                stem = re.sub(r"[^A-Za-z0-9]+", "_", v.name)
                with open(os.path.join(a.dump, f"{stem}.sm{arch}.ptx"), "w") as f:
                    f.write(k.asm["ptx"])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
