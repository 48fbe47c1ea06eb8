"""Triton device helpers shared by the motensor kernels: bit-level decoders and exact rounding.

Everything here is plain integer/float arithmetic on Triton tensors, for two reasons:

* speed: a decoder must cost a handful of integer ops per element (no `tl.where` chains, no
  table in memory). The 4-bit decoders build the fp16 bit pattern directly from the nibble.
* portability and testability: no native fp8 conversion is used, so the helpers run on
  pre-sm89 GPUs and give exact results in the CPU interpreter, whose fp32->fp8 cast is wrong
  (it does not carry a mantissa overflow into the exponent: 126.2 becomes 64, seen with triton
  3.9). Exactly representable values convert correctly there, so the kernels round in software
  and then cast, which is exact on every backend.

Constants below are `tl.constexpr` so jitted code may read them as globals.
"""
import triton
import triton.language as tl

from motensor.formats import Element, ScaleEncoding

# Element kinds of the 4-bit packed weights: the vocabulary's ids (motensor._vocab), which the
# launchers pass as the ELEMENT constexpr.
ELEM_E2M1 = tl.constexpr(Element.E2M1.value)   # NVFP4 family, MXFP4: nibble = E2M1 code (bit3 = sign)
ELEM_INT4 = tl.constexpr(Element.INT4.value)   # AWQ: nibble = q + 8 (offset binary)

# Scale encodings (the SCALE_KIND constexpr).
SCALE_E4M3 = tl.constexpr(ScaleEncoding.E4M3.value)  # float8_e4m3fn bytes (times a global fp32 scale)
SCALE_E8M0 = tl.constexpr(ScaleEncoding.E8M0.value)  # uint8 exponent, value 2^(e-127)
SCALE_F32 = tl.constexpr(ScaleEncoding.F32.value)    # float32

# e2m1_f16_scaled(c) returns value * 2^-14: multiply by this to get the true value.
E2M1_F16_FACTOR = tl.constexpr(16384.0)


@triton.jit
def e2m1_f16_scaled(c):
    """E2M1 code in bits 0..3 of the int32 tensor `c` (higher bits ignored) -> fp16 `value * 2^-14`.

    The three magnitude bits `e1 e0 m` are moved to fp16 bits 11..9 (exponent field = e, top
    mantissa bit = m) and the sign to bit 15. For e > 0 the fp16 value is 2^(e-15) (1 + m/2),
    for e = 0 it is the fp16 subnormal m * 2^-15: exactly the E2M1 value times 2^-14, with E2M1
    subnormals landing on fp16 subnormals. Cost: 2 shifts + 1 lop3 on a GPU, no table.
    """
    bits = ((c << 9) & 0x0E00) | ((c << 12) & 0x8000)
    return bits.to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def int4_f16(c):
    """Offset-binary INT4 nibble (q + 8) in bits 0..3 of int32 `c` -> fp16 q (exact).

    0x6400 | n is the fp16 number 1024 + n (mantissa ulp is 1 in [1024, 2048)), so one OR and
    one subtraction replace an int->float conversion.
    """
    bits = (c & 0xF) | 0x6400
    return bits.to(tl.int16).to(tl.float16, bitcast=True) - 1032.0


@triton.jit
def int4_f32(c):
    """Offset-binary INT4 nibble in bits 0..3 of int32 `c` -> fp32 q (exact), same trick at 2^23."""
    bits = (c & 0xF) | 0x4B000000
    return bits.to(tl.float32, bitcast=True) - 8388616.0


@triton.jit
def e4m3_f16_scaled(b):
    """float8_e4m3fn bit pattern (uint8/int tensor) -> fp16 `value * 2^-8` (exact, no fp8 hardware).

    E4M3's 4 exponent bits and 3 mantissa bits are moved into fp16's exponent (high bit 0) and
    top mantissa bits; the exponent bias differs by 8, hence the 2^-8. E4M3 subnormals map to
    fp16 subnormals. The NaN code (S.1111.111) decodes to 480: never produced by ModelOpt.
    """
    b = b.to(tl.int32)
    bits = ((b & 0x7F) << 7) | ((b & 0x80) << 8)
    return bits.to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def e4m3_f32(b):
    """float8_e4m3fn bit pattern -> fp32 value (exact)."""
    return e4m3_f16_scaled(b).to(tl.float32) * 256.0


@triton.jit
def e8m0_f32(e):
    """E8M0 byte -> fp32 2^(e-127), built from bits. e = 0 gives the fp32 subnormal 2^-127."""
    e = e.to(tl.int32)
    bits = tl.where(e == 0, 0x00400000, e << 23)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def group_scale_f32(raw, SCALE_KIND: tl.constexpr):
    """Raw group scale (E4M3 byte, E8M0 byte or fp32) -> its fp32 value."""
    if SCALE_KIND == SCALE_E4M3:
        s = e4m3_f32(raw)
    elif SCALE_KIND == SCALE_E8M0:
        s = e8m0_f32(raw)
    else:
        s = raw.to(tl.float32)
    return s


@triton.jit
def round_e4m3(t):
    """fp32 -> fp32 holding the nearest float8_e4m3fn value (round-half-even), saturating at +-448.

    The quantum of E4M3 at |t| is 2^(max(exp(t), -6) - 3); t / quantum is rounded to an integer
    with the 1.5 * 2^23 magic-number addition (fp32 addition rounds half to even) and scaled back.
    Both scalings are exact powers of two built from bits. Matches torch's
    `t.clamp(-448, 448).to(torch.float8_e4m3fn)` bit for bit, including -0.
    """
    t = tl.minimum(tl.maximum(t, -448.0), 448.0)
    e = ((t.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    e = tl.maximum(e, -6)
    quantum = ((e + 124) << 23).to(tl.float32, bitcast=True)       # 2^(e-3)
    inv_quantum = ((130 - e) << 23).to(tl.float32, bitcast=True)   # 2^(3-e)
    r = (t * inv_quantum + 12582912.0) - 12582912.0                # |t * inv_quantum| <= 16
    return tl.where(r == 0.0, t * 0.0, r * quantum)                # keep the sign of zero, as torch


@triton.jit
def e4m3_bits(r):
    """fp32 holding an exact E4M3 value (e.g. from `round_e4m3`) -> its uint8 code."""
    sign = (r.to(tl.int32, bitcast=True) >> 24) & 0x80
    a = tl.abs(r)
    normal = (a.to(tl.int32, bitcast=True) >> 20) - 960    # ((E - 120) << 3) | top 3 mantissa bits
    subnormal = (a * 512.0).to(tl.int32)                    # multiples of 2^-9, exact
    code = tl.where(a < 0.015625, subnormal, normal) | sign
    return code.to(tl.uint8)


@triton.jit
def round_e2m1(t):
    """fp32 -> fp32 holding the nearest E2M1 value, ties to even mantissa, saturating at +-6.

    Same decision as ModelOpt's `_cast_fp4`: bounds [.25, .75, 1.25, 1.75, 2.5, 3.5, 5], where a
    value exactly on .75, 1.75 or 3.5 rounds up (to the even mantissa) and on the others down.
    The count of bounds passed is the E2M1 magnitude code, decoded with `e2m1_f16_scaled`.
    """
    a = tl.abs(t)
    code = ((a > 0.25).to(tl.int32) + (a >= 0.75).to(tl.int32) + (a > 1.25).to(tl.int32)
            + (a >= 1.75).to(tl.int32) + (a > 2.5).to(tl.int32) + (a >= 3.5).to(tl.int32)
            + (a > 5.0).to(tl.int32))
    mag = e2m1_f16_scaled(code).to(tl.float32) * E2M1_F16_FACTOR
    return tl.where(t < 0, -mag, mag)


@triton.jit
def ceil_log2_clamped(r):
    """Exact ceil(log2(r)) for fp32 r >= 0 from its bits, clamped to [-127, 127] (E8M0 range).

    A hardware log2 is approximate and can put ceil() on the wrong side of a power of two; the
    exponent field plus "is the mantissa non-zero" is exact. r = 0 gives -127 (log2 0 = -inf).
    """
    bits = r.to(tl.int32, bitcast=True)
    efield = (bits >> 23) & 0xFF
    mant = bits & 0x7FFFFF
    normal = efield - 127 + (mant != 0).to(tl.int32)
    # fp32 subnormal r: ceil(log2 r) is -126 when r > 2^-127, else <= -127 (clamped).
    sub = tl.where(mant > 0x400000, -126, -127)
    e = tl.where(efield == 0, sub, normal)
    return tl.minimum(tl.maximum(e, -127), 127)
