//! x86-64 instantiations: the portable kernels compiled with AVX2+FMA (or AVX-512) enabled, and
//! the AVX2 4-bit decoder (16-entry table lookups as two `vpermps` and a blend).
//!
//! Every function here is `unsafe` only because of `#[target_feature]`: callers must have
//! checked the CPU (all of them hold an `Isa` other than `Scalar`, which only `Isa::detect`
//! produces after `is_x86_feature_detected!`). Memory is accessed through bounds-checked slices.

use std::arch::x86_64::*;

use super::dot;
use super::fp8::{self, Fp8Scales, Fp8Weight};
use super::int8::{self, Int8Weight};
use super::round::{self, Operand};
use super::w4::W4Weight;
use super::Isa;

macro_rules! multiversion {
    ($(#[$doc:meta])* $name:ident, $avx2:ident, $avx512:ident, ($($arg:ident : $ty:ty),*) -> $ret:ty, $body:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $avx2($($arg: $ty),*) -> $ret {
            $body
        }
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
        unsafe fn $avx512($($arg: $ty),*) -> $ret {
            $body
        }
        $(#[$doc])*
        pub(super) unsafe fn $name(isa: Isa, $($arg: $ty),*) -> $ret {
            match isa {
                Isa::Avx512 | Isa::Avx512Bf16 => $avx512($($arg),*),
                _ => $avx2($($arg),*),
            }
        }
    };
}

multiversion!(dot_1x4, dot_1x4_avx2, dot_1x4_avx512, (x: &[f32], w: [&[f32]; 4]) -> [f32; 4],
    dot::dot_1x4_generic::<true>(x, w));
multiversion!(dot_2x4, dot_2x4_avx2, dot_2x4_avx512, (x: [&[f32]; 2], w: [&[f32]; 4]) -> [[f32; 4]; 2],
    dot::dot_2x4_generic::<true>(x, w));
multiversion!(dot_i8, dot_i8_avx2, dot_i8_avx512, (x: &[i8], w: &[i8]) -> i32,
    dot::dot_i8_generic(x, w));
multiversion!(fp8_decode_row, fp8_decode_avx2, fp8_decode_avx512,
    (w: &Fp8Weight, op: Operand, row: usize, out: &mut [f32]) -> (),
    fp8::decode_row_generic(w, op, row, out));
multiversion!(int8_decode_row, int8_decode_avx2, int8_decode_avx512,
    (w: &Int8Weight, op: Operand, row: usize, out: &mut [f32]) -> (),
    int8::decode_row_generic(w, op, row, out));

/// Rounds 8 lanes to the operand type.
#[inline(always)]
unsafe fn round8(op: Operand, v: __m256) -> __m256 {
    match op {
        Operand::F32 => v,
        Operand::Bf16 => {
            let b = _mm256_castps_si256(v);
            let lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
            let r = _mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7FFF)), lsb);
            let r = _mm256_castsi256_ps(_mm256_and_si256(r, _mm256_set1_epi32(0xFFFF_0000u32 as i32)));
            // NaN stays NaN (as torch's conversion).
            let nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
            _mm256_blendv_ps(r, v, nan)
        }
        // F16C converts with the MXCSR-independent immediate rounding: nearest even,
        // subnormals kept, overflow to infinity, exactly torch's float16 cast.
        Operand::F16 => _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v)),
        Operand::E4M3 => {
            let mut a = [0f32; 8];
            _mm256_storeu_ps(a.as_mut_ptr(), v);
            for x in a.iter_mut() {
                *x = round::e4m3(*x);
            }
            _mm256_loadu_ps(a.as_ptr())
        }
    }
}

/// 16-entry table lookup: nibble `idx` (0..15 per lane) -> `t[idx]`, `t = [t_lo | t_hi]`.
#[inline(always)]
unsafe fn lookup16(t_lo: __m256, t_hi: __m256, idx: __m256i) -> __m256 {
    let a = _mm256_permutevar8x32_ps(t_lo, idx);
    let b = _mm256_permutevar8x32_ps(t_hi, idx);
    // Bit 3 of the nibble, moved to the sign bit, selects the upper half.
    _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32::<28>(idx)))
}

/// The 16-entry table of one group: `round(v * scale)` for the 16 nibble values `v`.
#[inline(always)]
unsafe fn group_table(op: Operand, v_lo: __m256, v_hi: __m256, scale: f32) -> (__m256, __m256) {
    let s = _mm256_set1_ps(scale);
    (round8(op, _mm256_mul_ps(v_lo, s)), round8(op, _mm256_mul_ps(v_hi, s)))
}

/// 8 packed bytes -> their 8 low-nibble and 8 high-nibble values through the group table.
#[inline(always)]
unsafe fn lookup_bytes(t: (__m256, __m256), src: &[u8; 8]) -> (__m256, __m256) {
    let v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(src.as_ptr() as *const __m128i));
    let lo = lookup16(t.0, t.1, _mm256_and_si256(v, _mm256_set1_epi32(15)));
    let hi = lookup16(t.0, t.1, _mm256_srli_epi32::<4>(v));
    (lo, hi)
}

/// Sum of the 8 lanes, in a fixed order.
#[inline(always)]
unsafe fn hsum8(v: __m256) -> f32 {
    let mut l = [0f32; 8];
    _mm256_storeu_ps(l.as_mut_ptr(), v);
    ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]))
}

/// AVX2 version of `W4Weight::decode_row_portable` (same values, bit for bit); `group % 16 == 0`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn w4_decode_row(w: &W4Weight, op: Operand, row: usize, scales: &[f32], natural: bool, out: &mut [f32]) {
    let (k, g) = (w.k, w.group);
    let h = k / 2;
    let bytes = &w.packed[row * h..(row + 1) * h];
    let out = &mut out[..k];
    let vals = w.nibble_values();
    let v_lo = _mm256_loadu_ps(vals[..8].as_ptr());
    let v_hi = _mm256_loadu_ps(vals[8..].as_ptr());
    for (gi, &sc) in scales[..k / g].iter().enumerate() {
        let t = group_table(op, v_lo, v_hi, sc);
        let j0 = gi * g / 2;
        let mut j = j0;
        while j < j0 + g / 2 {
            let src: &[u8; 8] = match bytes[j..j + 8].try_into() {
                Ok(a) => a,
                Err(_) => return,
            };
            let (lo, hi) = lookup_bytes(t, src);
            if natural {
                let a = _mm256_unpacklo_ps(lo, hi); // l0 h0 l1 h1 | l4 h4 l5 h5
                let b = _mm256_unpackhi_ps(lo, hi); // l2 h2 l3 h3 | l6 h6 l7 h7
                let dst = &mut out[2 * j..2 * j + 16];
                _mm256_storeu_ps(dst.as_mut_ptr(), _mm256_permute2f128_ps::<0x20>(a, b));
                _mm256_storeu_ps(dst[8..].as_mut_ptr(), _mm256_permute2f128_ps::<0x31>(a, b));
            } else {
                _mm256_storeu_ps(out[j..j + 8].as_mut_ptr(), lo);
                _mm256_storeu_ps(out[h + j..h + j + 8].as_mut_ptr(), hi);
            }
            j += 8;
        }
    }
}

/// Fused 4-bit dot products: `out[i] = sum_k xs[i][k] * W[row, k]` for `M` activation rows, the
/// weight row decoded 16 values at a time in registers (the same table lookups and operand
/// rounding as [`w4_decode_row`], so the same weight values) and multiplied where it stands,
/// never stored. `xs` are de-interleaved (even k, then odd k: `deinterleave_rows`), `k` values
/// each. `group % 16 == 0`. Only the fp32 summation order differs from decode-then-dot.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn w4_dot_row<const M: usize>(w: &W4Weight, op: Operand, row: usize, scales: &[f32], xs: [&[f32]; M]) -> [f32; M] {
    let (k, g) = (w.k, w.group);
    let h = k / 2;
    let bytes = &w.packed[row * h..(row + 1) * h];
    let xs: [(&[f32], &[f32]); M] = std::array::from_fn(|i| {
        let x = &xs[i][..k];
        x.split_at(h)
    });
    let vals = w.nibble_values();
    let v_lo = _mm256_loadu_ps(vals[..8].as_ptr());
    let v_hi = _mm256_loadu_ps(vals[8..].as_ptr());
    let mut acc_e = [_mm256_setzero_ps(); M];
    let mut acc_o = [_mm256_setzero_ps(); M];
    for (gi, &sc) in scales[..k / g].iter().enumerate() {
        let t = group_table(op, v_lo, v_hi, sc);
        let j0 = gi * g / 2;
        let mut j = j0;
        while j < j0 + g / 2 {
            let src: &[u8; 8] = match bytes[j..j + 8].try_into() {
                Ok(a) => a,
                Err(_) => return [0.0; M],
            };
            let (lo, hi) = lookup_bytes(t, src);
            for i in 0..M {
                let (xe, xo) = xs[i];
                acc_e[i] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(xe[j..j + 8].as_ptr()), acc_e[i]);
                acc_o[i] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(xo[j..j + 8].as_ptr()), acc_o[i]);
            }
            j += 8;
        }
    }
    std::array::from_fn(|i| hsum8(_mm256_add_ps(acc_e[i], acc_o[i])))
}

/// 8 E4M3FN bytes -> 8 fp32 values, exactly `round::e4m3_decode` (subnormals computed, not
/// left to the MXCSR; 0x7F / 0xFF are NaN).
#[inline(always)]
unsafe fn e4m3x8(src: &[u8; 8]) -> __m256 {
    let v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(src.as_ptr() as *const __m128i));
    let mag = _mm256_and_si256(v, _mm256_set1_epi32(0x7F));
    let sign = _mm256_slli_epi32::<24>(_mm256_and_si256(v, _mm256_set1_epi32(0x80)));
    // Normal: exponent field e (bias 7) -> fp32 exponent e + 120, mantissa bits on top.
    let normal = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_slli_epi32::<20>(mag), _mm256_set1_epi32(120 << 23)));
    // Subnormal (e = 0): m * 2^-9.
    let sub = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(mag, _mm256_set1_epi32(7))), _mm256_set1_ps(1.0 / 512.0));
    let is_sub = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(8), mag));
    let val = _mm256_or_ps(_mm256_blendv_ps(normal, sub, is_sub), _mm256_castsi256_ps(sign));
    let is_nan = _mm256_castsi256_ps(_mm256_cmpeq_epi32(mag, _mm256_set1_epi32(0x7F)));
    _mm256_blendv_ps(val, _mm256_set1_ps(f32::NAN), is_nan)
}

/// Fused FP8 dot products: `out[i] = sum_k xs[i][k] * W[row, k]`, each weight element
/// `round(e4m3(b) * scale)` as [`fp8::decode_row_generic`] computes it, multiplied in registers.
/// Natural order. Callers check [`Fp8Weight::fused_dot`] (segments of a constant scale are
/// multiples of 8 long).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn fp8_dot_row<const M: usize>(w: &Fp8Weight, op: Operand, row: usize, xs: [&[f32]; M]) -> [f32; M] {
    let k = w.k;
    let src = &w.w[row * k..(row + 1) * k];
    let mut acc = [_mm256_setzero_ps(); M];
    // (segment length, scale of segment c) of the row.
    let (seg, scale_of): (usize, &dyn Fn(usize) -> Option<f32>) = match w.scales {
        Fp8Scales::None => (k, &|_| None),
        Fp8Scales::Block { scales, block } => {
            let srow = &scales[(row / block) * k.div_ceil(block)..];
            (block, &move |c| Some(srow[c]))
        }
        Fp8Scales::E8M0 { scales, group } => (group, &move |c| Some(crate::numeric::e8m0(scales[c * w.n + row]))),
    };
    let seg = seg.max(8);
    let mut c0 = 0;
    let mut c = 0;
    while c0 < k {
        let c1 = (c0 + seg).min(k);
        let s = scale_of(c).map(|v| _mm256_set1_ps(v));
        let mut j = c0;
        while j + 8 <= c1 {
            let b: &[u8; 8] = match src[j..j + 8].try_into() {
                Ok(a) => a,
                Err(_) => return [0.0; M],
            };
            let mut v = e4m3x8(b);
            if let Some(s) = s {
                v = _mm256_mul_ps(v, s);
            }
            let v = round8(op, v);
            for i in 0..M {
                acc[i] = _mm256_fmadd_ps(v, _mm256_loadu_ps(xs[i][j..j + 8].as_ptr()), acc[i]);
            }
            j += 8;
        }
        c0 = c1;
        c += 1;
    }
    std::array::from_fn(|i| hsum8(acc[i]))
}
