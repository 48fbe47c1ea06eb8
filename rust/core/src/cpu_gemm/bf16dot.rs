//! AVX-512 BF16 kernels (`vdpbf16ps`): 4-bit and FP8 weights decoded straight to bf16 in
//! registers by one word permute and multiplied 32 at a time with bf16 activations, fp32 sums.
//!
//! They run only where that is *exactly* the reference's arithmetic up to the order of the fp32
//! sums: every weight element the reference multiplies is a bf16 value (4-bit weights whose
//! operand rounding is bf16: the group's 16 possible values `round_bf16(v * s)` are built once
//! per group and looked up; FP8 weights without an operand scale: every E4M3 value is a bf16
//! value), and every activation is a bf16 value (checked while packing; a row that is not
//! makes the caller take the fp32 kernels). Products of two bf16 values are exact in fp32, so
//! the only difference from the fp32-FMA kernels is where the sums round.
//!
//! `vdpbf16ps` and `vcvtne2ps2bf16` treat fp32/bf16 subnormal inputs as zero; a weight element
//! or activation below 2^-126 in magnitude therefore contributes 0 here (the reference would add
//! a product below 2^-126 * max|x|: far under the output's rounding).
//!
//! Every function is `unsafe` only because of `#[target_feature]`: callers hold
//! `Isa::Avx512Bf16`, which only `Isa::detect` produces after checking the CPU. Memory is read
//! through bounds-checked slices.

use std::arch::x86_64::*;

use super::fp8::{Fp8Scales, Fp8Weight};
use super::round::Operand;
use super::w4::W4Weight;
use super::Weight;

/// The activation order a kernel reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Order {
    /// Per 32-element chunk: the 16 even elements, then the 16 odd ones (the low and high
    /// nibbles of the chunk's 16 packed bytes).
    Nibbles,
    /// Per 64-element chunk: the 32 even elements, then the 32 odd ones ([`w4_row64`]).
    Nibbles64,
    /// As stored.
    Natural,
}

/// Elements per kernel step (one 512-bit register of bf16).
const CHUNK: usize = 32;

/// Whether `w` with operand rounding `op` runs here, and the activation order it needs.
pub(super) fn takes(w: &Weight, op: Operand) -> Option<Order> {
    match w {
        // 4-bit: a chunk's 32 elements span at most two groups (group 16) or one.
        Weight::W4(w4) if op == Operand::Bf16 && wide(w4) => Some(Order::Nibbles64),
        Weight::W4(w4) => (op == Operand::Bf16
            && w4.k % CHUNK == 0
            && (w4.group == 16 || (w4.group > 0 && w4.group % CHUNK == 0)))
            .then_some(Order::Nibbles),
        // E4M3 values are bf16 values; any operand rounding to bf16 or finer leaves them as they are.
        Weight::Fp8(w8) => (matches!(w8.scales, Fp8Scales::None)
            && matches!(op, Operand::F32 | Operand::Bf16 | Operand::E4M3)
            && w8.k % CHUNK == 0)
            .then_some(Order::Natural),
        Weight::Int8(_) => None,
    }
}

/// Whether the 64-element kernel [`w4_row64`] takes this 4-bit weight: K in whole 64-chunks and
/// groups of 16, 32 or a multiple of 64 (a chunk spans 4, 2 or 1 of them).
fn wide(w: &W4Weight) -> bool {
    w.k.is_multiple_of(WIDE) && (w.group == 16 || w.group == 32 || (w.group > 0 && w.group.is_multiple_of(WIDE)))
}

/// Elements per step of [`w4_row64`].
const WIDE: usize = 64;

/// Bytes ahead of the weight stream that the kernels prefetch: a decode step finds its weights
/// in DRAM (the model is larger than the caches); 1 KiB ahead left 2816x1024 NVFP4 products at
/// 114 us in the h1024 model, 4-16 KiB at 100 us (benches/cpu_decode.py's model, 2-core EPYC).
const PREFETCH: usize = 4096;

/// The activations `[m, k]` as bf16 bits in `order`, or `None` if a value is not exactly a
/// bf16 (then the fp32 kernels run).
pub(super) fn pack_x(x: &[f32], m: usize, k: usize, order: Order) -> Option<Vec<u16>> {
    let mut out = vec![0u16; m * k];
    let mut inexact = 0u32;
    let chunk = if order == Order::Nibbles64 { WIDE } else { CHUNK };
    for (src, dst) in x.chunks_exact(k).zip(out.chunks_exact_mut(k)) {
        for (s, d) in src.chunks_exact(chunk).zip(dst.chunks_exact_mut(chunk)) {
            for i in 0..chunk / 2 {
                let (e, o) = (s[2 * i].to_bits(), s[2 * i + 1].to_bits());
                inexact |= (e | o) & 0xFFFF;
                let (je, jo) = match order {
                    Order::Nibbles | Order::Nibbles64 => (i, chunk / 2 + i),
                    Order::Natural => (2 * i, 2 * i + 1),
                };
                d[je] = (e >> 16) as u16;
                d[jo] = (o >> 16) as u16;
            }
        }
    }
    (inexact == 0).then_some(out)
}

#[inline(always)]
unsafe fn bh(v: __m512i) -> __m512bh {
    // SAFETY: both are plain 512-bit vectors; the bits are reinterpreted, not converted.
    std::mem::transmute::<__m512i, __m512bh>(v)
}

#[inline(always)]
unsafe fn from_bh(v: __m512bh) -> __m512i {
    // SAFETY: as `bh`.
    std::mem::transmute::<__m512bh, __m512i>(v)
}

/// The 32-word table `[round_bf16(vals * sa) | round_bf16(vals * sb)]` (nearest even, as the
/// reference's cast: the product is one fp32 multiply, as in `W4Weight::decode_row_portable`).
#[inline(always)]
unsafe fn table2(vals: __m512, sa: f32, sb: f32) -> __m512i {
    let a = _mm512_mul_ps(vals, _mm512_set1_ps(sa));
    let b = _mm512_mul_ps(vals, _mm512_set1_ps(sb));
    // Words 0..16 from the second operand.
    from_bh(_mm512_cvtne2ps_pbh(b, a))
}

/// `out[i] = xs[i] . W[row]` for up to 8 activation rows, 4-bit weight, operand bf16.
/// `xs` in [`Order::Nibbles`], `scales` the row's effective group scales (`gather_scales`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(super) unsafe fn w4_row<const M: usize>(
    w: &W4Weight,
    row: usize,
    scales: &[f32],
    xs: [&[u16]; M],
) -> [f32; M] {
    let (k, g) = (w.k, w.group);
    let h = k / 2;
    let bytes = &w.packed[row * h..(row + 1) * h];
    let vals = _mm512_loadu_ps(w.nibble_values().as_ptr());
    // Words 0..16 keep the byte (low nibble after the mask), words 16..32 the high nibble.
    let shift = _mm512_set_epi64(
        0x0004_0004_0004_0004,
        0x0004_0004_0004_0004,
        0x0004_0004_0004_0004,
        0x0004_0004_0004_0004,
        0,
        0,
        0,
        0,
    );
    // Group 16: bytes 8..16 of a chunk belong to the second group, looked up in the table's
    // upper half (index + 16).
    let upper = if g == 16 {
        _mm512_set_epi64(
            0x0010_0010_0010_0010,
            0x0010_0010_0010_0010,
            0,
            0,
            0x0010_0010_0010_0010,
            0x0010_0010_0010_0010,
            0,
            0,
        )
    } else {
        _mm512_setzero_si512()
    };
    let low4 = _mm512_set1_epi16(15);
    let mut acc0 = [_mm512_setzero_ps(); M];
    let mut acc1 = [_mm512_setzero_ps(); M];
    let mut table = _mm512_setzero_si512();
    for c in 0..k / CHUNK {
        let e0 = c * CHUNK;
        if g == 16 {
            table = table2(vals, scales[e0 / 16], scales[e0 / 16 + 1]);
        } else if e0.is_multiple_of(g) {
            let s = scales[e0 / g];
            table = table2(vals, s, s);
        }
        let src: &[u8; 16] = match bytes[c * 16..c * 16 + 16].try_into() {
            Ok(a) => a,
            Err(_) => return [0.0; M],
        };
        let v = _mm512_cvtepu8_epi16(_mm256_broadcastsi128_si256(_mm_loadu_si128(
            src.as_ptr() as *const __m128i
        )));
        let v = _mm512_srlv_epi16(v, shift);
        // (v & 15) | upper
        let idx = _mm512_ternarylogic_epi32::<0xEA>(v, low4, upper);
        let wv = bh(_mm512_permutexvar_epi16(idx, table));
        for i in 0..M {
            let xv = bh(_mm512_loadu_si512(
                xs[i][e0..e0 + CHUNK].as_ptr() as *const _
            ));
            if c & 1 == 0 {
                acc0[i] = _mm512_dpbf16_ps(acc0[i], wv, xv);
            } else {
                acc1[i] = _mm512_dpbf16_ps(acc1[i], wv, xv);
            }
        }
    }
    std::array::from_fn(|i| _mm512_reduce_add_ps(_mm512_add_ps(acc0[i], acc1[i])))
}

/// As [`w4_row`], 64 weights per step (32 packed bytes widened once; the even and the odd
/// elements each looked up in a table of the chunk's 1, 2 or 4 groups by one two-register word
/// permute): ~8 instructions per 32 weights against ~11. `xs` in [`Order::Nibbles64`]; only where
/// [`wide`] holds.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(super) unsafe fn w4_row64<const M: usize>(
    w: &W4Weight,
    row: usize,
    scales: &[f32],
    xs: [&[u16]; M],
) -> [f32; M] {
    let (k, g) = (w.k, w.group);
    let h = k / 2;
    let bytes = &w.packed[row * h..(row + 1) * h];
    let vals = _mm512_loadu_ps(w.nibble_values().as_ptr());
    // Word i of a chunk is packed byte i, elements 2i and 2i + 1: group 2i / g. Its table offset
    // (16 words per group) picks the group's values in [table_a | table_b] (64 words).
    let mut off = [0u16; 32];
    for (i, o) in off.iter_mut().enumerate() {
        *o = match g {
            16 => (i / 8 * 16) as u16,
            32 => (i / 16 * 16) as u16,
            _ => 0,
        };
    }
    let off = _mm512_loadu_si512(off.as_ptr() as *const _);
    let low4 = _mm512_set1_epi16(15);
    let mut acc0 = [_mm512_setzero_ps(); M];
    let mut acc1 = [_mm512_setzero_ps(); M];
    let (mut ta, mut tb) = (_mm512_setzero_si512(), _mm512_setzero_si512());
    for c in 0..k / WIDE {
        let e0 = c * WIDE;
        match g {
            16 => {
                let s = &scales[e0 / 16..e0 / 16 + 4];
                ta = table2(vals, s[0], s[1]);
                tb = table2(vals, s[2], s[3]);
            }
            32 => ta = table2(vals, scales[e0 / 32], scales[e0 / 32 + 1]),
            _ => {
                if e0.is_multiple_of(g) {
                    let s = scales[e0 / g];
                    ta = table2(vals, s, s);
                }
            }
        }
        let src: &[u8; 32] = match bytes[c * 32..c * 32 + 32].try_into() {
            Ok(a) => a,
            Err(_) => return [0.0; M],
        };
        // The weight streams from memory once per call: ask for it ahead (the next rows of the
        // task follow this one in memory, so the hint runs past the row's end on purpose).
        _mm_prefetch::<_MM_HINT_T0>(src.as_ptr().wrapping_add(PREFETCH) as *const i8);
        let v = _mm512_cvtepu8_epi16(_mm256_loadu_si256(src.as_ptr() as *const __m256i));
        // (v & 15) | off and (v >> 4) | off (a widened byte's high nibble needs no mask).
        let ilo = _mm512_ternarylogic_epi32::<0xEA>(v, low4, off);
        let ihi = _mm512_or_si512(_mm512_srli_epi16::<4>(v), off);
        let (wlo, whi) = if g == 16 {
            (_mm512_permutex2var_epi16(ta, ilo, tb), _mm512_permutex2var_epi16(ta, ihi, tb))
        } else {
            (_mm512_permutexvar_epi16(ilo, ta), _mm512_permutexvar_epi16(ihi, ta))
        };
        for i in 0..M {
            let x = &xs[i][e0..e0 + WIDE];
            let xe = bh(_mm512_loadu_si512(x[..32].as_ptr() as *const _));
            let xo = bh(_mm512_loadu_si512(x[32..].as_ptr() as *const _));
            acc0[i] = _mm512_dpbf16_ps(acc0[i], bh(wlo), xe);
            acc1[i] = _mm512_dpbf16_ps(acc1[i], bh(whi), xo);
        }
    }
    std::array::from_fn(|i| _mm512_reduce_add_ps(_mm512_add_ps(acc0[i], acc1[i])))
}

/// `out[i] = xs[i] . W[row]` for up to 8 activation rows, FP8 E4M3 weight without an operand
/// scale (the scale is in the epilogue). `xs` in [`Order::Natural`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(super) unsafe fn fp8_row<const M: usize>(
    w: &Fp8Weight,
    row: usize,
    xs: [&[u16]; M],
) -> [f32; M] {
    let k = w.k;
    let src = &w.w[row * k..(row + 1) * k];
    let dec = Fp8Bf16::new();
    let mut acc0 = [_mm512_setzero_ps(); M];
    let mut acc1 = [_mm512_setzero_ps(); M];
    for c in 0..k / CHUNK {
        let e0 = c * CHUNK;
        let b: &[u8; 32] = match src[e0..e0 + CHUNK].try_into() {
            Ok(a) => a,
            Err(_) => return [0.0; M],
        };
        if c & 1 == 0 {
            _mm_prefetch::<_MM_HINT_T0>(b.as_ptr().wrapping_add(PREFETCH) as *const i8);
        }
        let wv = bh(dec.decode(b));
        for i in 0..M {
            let xv = bh(_mm512_loadu_si512(
                xs[i][e0..e0 + CHUNK].as_ptr() as *const _
            ));
            if c & 1 == 0 {
                acc0[i] = _mm512_dpbf16_ps(acc0[i], wv, xv);
            } else {
                acc1[i] = _mm512_dpbf16_ps(acc1[i], wv, xv);
            }
        }
    }
    std::array::from_fn(|i| _mm512_reduce_add_ps(_mm512_add_ps(acc0[i], acc1[i])))
}

/// Activation rows per kernel call.
pub(super) const MAX_ROWS: usize = 8;

/// One weight row against `xs.len() <= MAX_ROWS` packed activation rows.
pub(super) fn dot_row(w: &Weight, row: usize, scales: &[f32], xs: &[&[u16]], out: &mut [f32]) {
    macro_rules! call {
        ($m:literal) => {{
            let a: [&[u16]; $m] = std::array::from_fn(|i| xs[i]);
            // SAFETY: `Isa::Avx512Bf16` (the only caller's condition) comes from `Isa::detect`,
            // which checked avx512f/bw/vl/bf16 on this CPU.
            let r = unsafe {
                match w {
                    Weight::W4(w4) if wide(w4) => w4_row64::<$m>(w4, row, scales, a),
                    Weight::W4(w4) => w4_row::<$m>(w4, row, scales, a),
                    Weight::Fp8(w8) => fp8_row::<$m>(w8, row, a),
                    Weight::Int8(_) => [0.0; $m],
                }
            };
            out[..$m].copy_from_slice(&r);
        }};
    }
    match xs.len() {
        1 => call!(1),
        2 => call!(2),
        3 => call!(3),
        4 => call!(4),
        5 => call!(5),
        6 => call!(6),
        7 => call!(7),
        _ => call!(8),
    }
}

/// Row `row` of a 4-bit weight (operand bf16) as bf16 bits in natural order: `out[j] =
/// round_bf16(v(nibble j) * s)`, the values `W4Weight::decode_row_portable` rounds to, bit for bit
/// (except subnormal products, flushed: see the module notes). Only where [`takes`] said yes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(super) unsafe fn w4_decode_bf16(w: &W4Weight, row: usize, scales: &[f32], out: &mut [u16]) {
    let (k, g) = (w.k, w.group);
    let h = k / 2;
    let bytes = &w.packed[row * h..(row + 1) * h];
    let vals = _mm512_loadu_ps(w.nibble_values().as_ptr());
    // Dword i of a chunk = byte i: word 2i its low nibble, word 2i + 1 its high nibble.
    let nib = _mm512_set1_epi32(0x000F_000F);
    let upper = if g == 16 {
        _mm512_set_epi64(
            0x0010_0010_0010_0010,
            0x0010_0010_0010_0010,
            0x0010_0010_0010_0010,
            0x0010_0010_0010_0010,
            0,
            0,
            0,
            0,
        )
    } else {
        _mm512_setzero_si512()
    };
    let mut table = _mm512_setzero_si512();
    for c in 0..k / CHUNK {
        let e0 = c * CHUNK;
        if g == 16 {
            table = table2(vals, scales[e0 / 16], scales[e0 / 16 + 1]);
        } else if e0.is_multiple_of(g) {
            let s = scales[e0 / g];
            table = table2(vals, s, s);
        }
        let src: &[u8; 16] = match bytes[c * 16..c * 16 + 16].try_into() {
            Ok(a) => a,
            Err(_) => return,
        };
        let d = _mm512_cvtepu8_epi32(_mm_loadu_si128(src.as_ptr() as *const __m128i));
        // (d | d << 12) & 0x000F000F, then the second group's table half.
        let idx = _mm512_ternarylogic_epi32::<0xA8>(d, _mm512_slli_epi32::<12>(d), nib);
        let idx = _mm512_or_si512(idx, upper);
        let v = _mm512_permutexvar_epi16(idx, table);
        let dst: &mut [u16; 32] = match (&mut out[e0..e0 + CHUNK]).try_into() {
            Ok(a) => a,
            Err(_) => return,
        };
        _mm512_storeu_si512(dst.as_mut_ptr() as *mut _, v);
    }
}

/// Row `row` of an FP8 weight without operand scale as bf16 bits (every E4M3 value is one).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(super) unsafe fn fp8_decode_bf16(w: &Fp8Weight, row: usize, out: &mut [u16]) {
    let k = w.k;
    let src = &w.w[row * k..(row + 1) * k];
    let dec = Fp8Bf16::new();
    for c in 0..k / CHUNK {
        let e0 = c * CHUNK;
        let b: &[u8; 32] = match src[e0..e0 + CHUNK].try_into() {
            Ok(a) => a,
            Err(_) => return,
        };
        let v = dec.decode(b);
        let dst: &mut [u16; 32] = match (&mut out[e0..e0 + CHUNK]).try_into() {
            Ok(a) => a,
            Err(_) => return,
        };
        _mm512_storeu_si512(dst.as_mut_ptr() as *mut _, v);
    }
}

/// E4M3 bytes -> bf16 bits, 32 at a time (NaN stays NaN).
struct Fp8Bf16 {
    sub: __m512i,
    m7f: __m512i,
    bias: __m512i,
    eight: __m512i,
    sign: __m512i,
    nan: __m512i,
}

impl Fp8Bf16 {
    #[inline(always)]
    unsafe fn new() -> Fp8Bf16 {
        // E4M3 subnormals m * 2^-9 (m = 0..8) as bf16 bits, looked up by the magnitude.
        let mut sub = [0u16; 32];
        for (m, s) in sub.iter_mut().take(8).enumerate() {
            *s = ((m as f32 / 512.0).to_bits() >> 16) as u16;
        }
        Fp8Bf16 {
            sub: _mm512_loadu_si512(sub.as_ptr() as *const _),
            m7f: _mm512_set1_epi16(0x7F),
            bias: _mm512_set1_epi16(120 << 7),
            eight: _mm512_set1_epi16(8),
            sign: _mm512_set1_epi16(0x8000u16 as i16),
            nan: _mm512_set1_epi16(0x7FC0),
        }
    }

    #[inline(always)]
    unsafe fn decode(&self, b: &[u8; 32]) -> __m512i {
        let v = _mm512_cvtepu8_epi16(_mm256_loadu_si256(b.as_ptr() as *const __m256i));
        let mag = _mm512_and_si512(v, self.m7f);
        // Normal: exponent e (bias 7) -> bf16 exponent e + 120, the 3 mantissa bits on top.
        let normal = _mm512_add_epi16(_mm512_slli_epi16::<4>(mag), self.bias);
        let val = _mm512_mask_permutexvar_epi16(normal, _mm512_cmplt_epu16_mask(mag, self.eight), mag, self.sub);
        let val = _mm512_mask_mov_epi16(val, _mm512_cmpeq_epi16_mask(mag, self.m7f), self.nan);
        // val | (v << 8 & 0x8000): the sign bit.
        _mm512_ternarylogic_epi32::<0xF8>(val, _mm512_slli_epi16::<8>(v), self.sign)
    }
}

/// One row as bf16 bits, natural order (only where [`takes`] said yes for operand bf16).
pub(super) fn decode_row(w: &Weight, row: usize, scales: &[f32], out: &mut [u16]) {
    // SAFETY: callers hold `Isa::Avx512Bf16`, which `Isa::detect` produces only after checking
    // avx512f/bw/vl/bf16 on this CPU.
    unsafe {
        match w {
            Weight::W4(w4) => w4_decode_bf16(w4, row, scales, out),
            Weight::Fp8(w8) => fp8_decode_bf16(w8, row, out),
            Weight::Int8(_) => {}
        }
    }
}
