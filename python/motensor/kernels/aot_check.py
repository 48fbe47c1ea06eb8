"""Compile every motensor Triton kernel variant for a GPU target without a GPU (Triton's bundled ptxas).

The CPU interpreter checks numerics but is lenient about types, layouts and dot shapes; this
compiles the real PTX/cubin for e.g. sm80, sm89, sm90 so such errors show up on a CPU-only
machine, and reports registers, spills and the instruction mix per kernel for review:

    TRITON_INTERPRET=0 python -m motensor.kernels.aot_check --arch 90 [--dump DIR]

Must run with TRITON_INTERPRET unset/0 (the kernels have to be real JITFunctions).
"""
from __future__ import annotations

from typing import Any

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

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


def _from_config(name, fn, types, consts, cfg, min_arch=80) -> Variant:
    consts = dict(consts, **cfg.kwargs)
    if "EVEN_K" in fn.arg_names:
        consts["EVEN_K"] = True     # the common case: K a multiple of BLOCK_K * SPLIT_K
    return Variant(f"{name} {cfg.kwargs}", fn, types, consts, cfg.num_warps, cfg.num_stages, min_arch)


def variants(all_configs: bool = False) -> list[Variant]:
    """Kernel variants to compile: every kind combination with one config per path, or with
    `all_configs` every autotune config (to check the tuning space for spills)."""
    from motensor.kernels import act_quant, w4a8, w4a16, w8a16
    import triton.language as tl

    from motensor.formats import Element, ScaleEncoding

    def pick(configs):
        return configs if all_configs else configs[:1]

    out = []
    kinds = [("E2M1", "E4M3", 16, "*u8"), ("E2M1", "E8M0", 32, "*u8"), ("INT4", "F32", 128, "*fp32")]
    for el, sk, g, st in kinds:
        base = dict(ELEMENT=Element[el].value, SCALE_KIND=ScaleEncoding[sk].value, GROUP=g,
                    HAS_GS=sk == "E4M3", HAS_BIAS=True)
        for act in ("bf16", "fp16"):
            for cfg in pick(w4a16.GEMV_CONFIGS):
                out.append(_from_config(f"w4a16 gemv {el}/{sk} {act}", w4a16._gemv_kernel,
                                        _w4_types(act, "*i32", st, "*fp32"), dict(base, BLOCK_M=1), cfg))
            for cfg in pick(w4a16.SPLITK_CONFIGS):
                out.append(_from_config(f"w4a16 splitk {el}/{sk} {act}", w4a16._dot_kernel,
                                        _w4_types(act, "*u8", st, "*fp32"), base, cfg))
            for cfg in pick(w4a16.TILED_CONFIGS):
                out.append(_from_config(f"w4a16 tiled {el}/{sk} {act}", w4a16._dot_kernel,
                                        _w4_types(act, "*u8", st, _ACT[act]), base, cfg))
    for cfg in pick(w4a16.TILED_CONFIGS):
        out.append(_from_config("w4a16 tiled E2M1/E4M3 fp32(tf32)", w4a16._dot_kernel,
                                _w4_types("fp32", "*u8", "*u8", "*fp32"),
                                dict(ELEMENT=Element.E2M1.value, SCALE_KIND=ScaleEncoding.E4M3.value, GROUP=16,
                                     HAS_GS=True, HAS_BIAS=False), cfg))
    for sk, sb, st in (("F32", 128, "*fp32"), ("E8M0", 32, "*u8")):
        for act in ("bf16", "fp16"):
            t = dict(x_ptr=_ACT[act], w_ptr="*u8", s_ptr=st, b_ptr=_ACT[act], c_ptr="*fp32", M="i32", N="i32",
                     K="i32", stride_xm="i32", stride_wn="i32", stride_s0="i32", stride_cm="i32", M_BUCKET="i32")
            base = dict(SCALE_KIND=ScaleEncoding[sk].value, SBLOCK=sb, HAS_BIAS=True)
            for cfg in pick(w8a16.SPLITK_CONFIGS) + pick(w8a16.TILED_CONFIGS):
                out.append(_from_config(f"w8a16 {sk} {act}", w8a16._w8a16_kernel, t, base, cfg))
    for el, sk, g, st in (("INT4", "F32", 128, "*fp32"), ("E2M1", "E4M3", 32, "*u8")):
        for op, hw, arch in ((tl.float8e4nv, False, 89), (tl.float8e4nv, True, 89), (tl.float16, False, 80)):
            for path, configs in (("splitk", w4a8.SPLITK_CONFIGS), ("tiled", w4a8.TILED_CONFIGS)):
                pre = path == "tiled"     # what the launcher does by default
                t = dict(x_ptr="*u8" if pre else "*bf16", w_ptr="*u8", s_ptr=st, ws2_ptr="*fp32", is_ptr="*fp32",
                         b_ptr="*bf16", c_ptr="*fp32", M="i32", N="i32", K="i32", stride_xm="i32",
                         stride_wn="i32", stride_sg="i32", stride_cm="i32", M_BUCKET="i32")
                base = dict(ELEMENT=Element[el].value, SCALE_KIND=ScaleEncoding[sk].value, GROUP=g,
                            HAS_BIAS=True, X_PREQUANT=pre, OP_DTYPE=op, HW_CVT=hw)
                for cfg in pick(configs):
                    out.append(_from_config(f"w4a8 {path} {el}/{sk} op={op} hw_cvt={hw}", w4a8._w4a8_kernel, t,
                                            base, cfg, min_arch=arch))
    aq = dict(M="i32", K="i32", stride_xm="i32", stride_om="i32")
    out.append(Variant("nvfp4_fake_quant", act_quant._nvfp4_fake_quant_kernel,
                       dict(x_ptr="*bf16", is_ptr="*fp32", o_ptr="*bf16", **aq), dict(BLOCK_M=16, NB=16, BS=16)))
    out.append(Variant("mxfp8_fake_quant", act_quant._mxfp8_fake_quant_kernel,
                       dict(x_ptr="*bf16", o_ptr="*bf16", **aq), dict(BLOCK_M=16, NB=8, BS=32)))
    out.append(Variant("fp8_quant_per_token", act_quant._fp8_per_token_kernel,
                       dict(x_ptr="*bf16", q_ptr="*u8", s_ptr="*fp32", M="i32", K="i32", stride_xm="i32",
                            stride_qm="i32"), dict(BLOCK_M=8, BLOCK_K=256)))
    out.append(Variant("fp8_quant_static", act_quant._fp8_static_kernel,
                       dict(x_ptr="*bf16", is_ptr="*fp32", q_ptr="*u8", M="i32", K="i32", stride_xm="i32",
                            stride_qm="i32"), dict(BLOCK_M=16, BLOCK_K=256)))
    return out


# Runtime arguments that are multiples of 16 in real models (pointers 16-byte aligned, K, N,
# strides): the launcher specializes on this at run time, so compile the same way.
_NOT_DIVISIBLE = {"M", "M_BUCKET"}


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


def check(name_prefixes, arch: int) -> list[str]:
    """Compile the first variant whose name starts with each prefix; raise on an error or a spill.
    Returns one report line per variant (used by tests/kernels/test_aot.py)."""
    pool = variants()
    lines = []
    for prefix in name_prefixes:
        v = next(v for v in pool if v.name.startswith(prefix))
        usage = resource_usage(compile_variant(v, arch).asm["cubin"])
        if spills(usage):
            raise AssertionError(f"sm{arch} {v.name} spills registers: {usage}")
        lines.append(f"sm{arch} {v.name}: {usage}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--filter", default="")
    p.add_argument("--dump", help="write ptx/sass per variant into this folder")
    p.add_argument("--sass", action="store_true", help="print SASS instruction counts")
    p.add_argument("--all-configs", action="store_true", help="every autotune config, not one per path")
    a = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: AOT compilation needs real JITFunctions", file=sys.stderr)
        return 2
    failures = 0
    for v in variants(a.all_configs):
        if a.filter not in v.name or a.arch < v.min_arch:
            continue
        try:
            k = compile_variant(v, a.arch)
        except Exception as e:  # report all variants, then fail
            failures += 1
            print(f"FAIL sm{a.arch} {v.name}: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
            continue
        usage = resource_usage(k.asm["cubin"])
        line = f"{'SPILL' if spills(usage) else 'ok   '} sm{a.arch} {v.name}: {usage} smem={k.metadata.shared}"
        if a.sass:
            line += "  " + sass_summary(k.asm["cubin"])
        print(line)
        if a.dump:
            os.makedirs(a.dump, exist_ok=True)
            stem = re.sub(r"[^A-Za-z0-9]+", "_", v.name)
            with open(os.path.join(a.dump, f"{stem}.sm{a.arch}.ptx"), "w") as f:
                f.write(k.asm["ptx"])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
