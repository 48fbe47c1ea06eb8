//! Dot-product micro-kernels: one or two activation rows against four decoded weight rows.
//!
//! Written over 8-lane fp32 accumulator arrays (a fixed summation order, independent of the
//! instruction set except for FMA contraction), which LLVM turns into SIMD registers; the
//! x86 wrappers compile the same code with AVX2+FMA / AVX-512 enabled.

use super::Isa;

pub(super) const L: usize = 8;

/// FMA is part of the aarch64 baseline (NEON); on x86-64 the portable build has none, and
/// `mul_add` there would be a libm call.
const BASE_FMA: bool = cfg!(target_arch = "aarch64");

#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

#[inline(always)]
fn hsum(v: &[f32; L]) -> f32 {
    ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]))
}

/// `[x . w0, x . w1, x . w2, x . w3]`.
#[inline(always)]
pub(super) fn dot_1x4_generic<const FMA: bool>(x: &[f32], w: [&[f32]; 4]) -> [f32; 4] {
    let k = x.len();
    let body = k - k % L;
    let mut acc = [[0f32; L]; 4];
    let mut i = 0;
    while i < body {
        let xv: &[f32; L] = x[i..i + L].try_into().unwrap_or(&[0.0; L]);
        for r in 0..4 {
            let wv: &[f32; L] = w[r][i..i + L].try_into().unwrap_or(&[0.0; L]);
            for l in 0..L {
                acc[r][l] = madd::<FMA>(xv[l], wv[l], acc[r][l]);
            }
        }
        i += L;
    }
    let mut out = [0f32; 4];
    for r in 0..4 {
        let mut s = hsum(&acc[r]);
        for j in body..k {
            s = madd::<FMA>(x[j], w[r][j], s);
        }
        out[r] = s;
    }
    out
}

/// Two activation rows against four weight rows: `out[i][r] = x[i] . w[r]`.
#[inline(always)]
pub(super) fn dot_2x4_generic<const FMA: bool>(x: [&[f32]; 2], w: [&[f32]; 4]) -> [[f32; 4]; 2] {
    let k = x[0].len();
    let body = k - k % L;
    let mut acc = [[[0f32; L]; 4]; 2];
    let mut i = 0;
    while i < body {
        let x0: &[f32; L] = x[0][i..i + L].try_into().unwrap_or(&[0.0; L]);
        let x1: &[f32; L] = x[1][i..i + L].try_into().unwrap_or(&[0.0; L]);
        for r in 0..4 {
            let wv: &[f32; L] = w[r][i..i + L].try_into().unwrap_or(&[0.0; L]);
            for l in 0..L {
                acc[0][r][l] = madd::<FMA>(x0[l], wv[l], acc[0][r][l]);
                acc[1][r][l] = madd::<FMA>(x1[l], wv[l], acc[1][r][l]);
            }
        }
        i += L;
    }
    let mut out = [[0f32; 4]; 2];
    for m in 0..2 {
        for r in 0..4 {
            let mut s = hsum(&acc[m][r]);
            for j in body..k {
                s = madd::<FMA>(x[m][j], w[r][j], s);
            }
            out[m][r] = s;
        }
    }
    out
}

/// Exact integer dot product of two int8 rows (|sum| < 2^31 is checked by the caller).
#[inline(always)]
pub(super) fn dot_i8_generic(x: &[i8], w: &[i8]) -> i32 {
    const LI: usize = 16;
    let k = x.len();
    let body = k - k % LI;
    let mut acc = [0i32; LI];
    let mut i = 0;
    while i < body {
        for l in 0..LI {
            acc[l] += x[i + l] as i32 * w[i + l] as i32;
        }
        i += LI;
    }
    let mut s: i32 = acc.iter().sum();
    for j in body..k {
        s += x[j] as i32 * w[j] as i32;
    }
    s
}

pub(super) fn dot_1x4(isa: Isa, x: &[f32], w: [&[f32]; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: non-scalar ISAs come from `Isa::detect` (AVX2 + FMA present).
        return unsafe { super::x86::dot_1x4(isa, x, w) };
    }
    let _ = isa;
    dot_1x4_generic::<BASE_FMA>(x, w)
}

pub(super) fn dot_2x4(isa: Isa, x: [&[f32]; 2], w: [&[f32]; 4]) -> [[f32; 4]; 2] {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: as in `dot_1x4`.
        return unsafe { super::x86::dot_2x4(isa, x, w) };
    }
    let _ = isa;
    dot_2x4_generic::<BASE_FMA>(x, w)
}

pub(super) fn dot_i8(isa: Isa, x: &[i8], w: &[i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: as in `dot_1x4`.
        return unsafe { super::x86::dot_i8(isa, x, w) };
    }
    let _ = isa;
    dot_i8_generic(x, w)
}
