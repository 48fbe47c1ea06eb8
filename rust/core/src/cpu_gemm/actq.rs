//! NVFP4 activation fake-quant on the CPU, the reference's `nvfp4_fake_quant` in fp32
//! (FORMATS §4.4): per 16-block of a row, `s = e4m3(amax / (6 * gs))`,
//! `q = e2m1(clamp(x / (s * gs), +-6))` (ties to the even mantissa), `y = (q * s) * gs`; a block
//! whose `s * gs` is 0 gives 0. The torch reference spends ~15 ops (and their temporaries) on it
//! per call; here it is one pass.

use rayon::prelude::*;

use super::arg;
use super::round;
use crate::error::Result;

const BLOCK: usize = 16;

/// Nearest E2M1 value of `t` (saturating, ties to even mantissa), as `e2m1_codes` +
/// `round_e2m1` of the reference compute it (the comparisons are false for NaN: 0).
#[inline(always)]
fn e2m1(t: f32) -> f32 {
    let a = t.abs();
    let mag = if a > 5.0 {
        6.0
    } else if a >= 3.5 {
        4.0
    } else if a > 2.5 {
        3.0
    } else if a >= 1.75 {
        2.0
    } else if a > 1.25 {
        1.5
    } else if a >= 0.75 {
        1.0
    } else if a > 0.25 {
        0.5
    } else {
        0.0
    };
    if t < 0.0 {
        -mag
    } else {
        mag
    }
}

/// `out = fake_quant(x)` for `x` `[rows, k]` (`k % 16 == 0`); `gs` one global scale or one per row.
pub fn nvfp4_fake_quant(x: &[f32], k: usize, gs: &[f32], out: &mut [f32]) -> Result<()> {
    if k == 0 || !k.is_multiple_of(BLOCK) || !x.len().is_multiple_of(k) {
        return Err(arg(format!("NVFP4 fake-quant: K={k} must be a positive multiple of 16 dividing {} values", x.len())));
    }
    let rows = x.len() / k;
    if out.len() != x.len() {
        return Err(arg(format!("NVFP4 fake-quant: output has {} values, expected {}", out.len(), x.len())));
    }
    if gs.len() != 1 && gs.len() != rows {
        return Err(arg(format!("NVFP4 fake-quant: {} global scales for {rows} rows", gs.len())));
    }
    crate::fill::num_threads();
    let work = |(r, (src, dst)): (usize, (&[f32], &mut [f32]))| {
        let g = if gs.len() == 1 { gs[0] } else { gs[r] };
        let six_g = 6.0 * g;
        for (xb, yb) in src.chunks_exact(BLOCK).zip(dst.chunks_exact_mut(BLOCK)) {
            // torch's amax propagates NaN; f32::max would drop it.
            let amax = xb.iter().fold(0f32, |m, v| if m.is_nan() || v.is_nan() { f32::NAN } else { m.max(v.abs()) });
            let s = round::e4m3(amax / six_g);
            let denom = s * g;
            if denom == 0.0 {
                yb.fill(0.0);
                continue;
            }
            for (y, v) in yb.iter_mut().zip(xb) {
                *y = (e2m1((v / denom).clamp(-6.0, 6.0)) * s) * g;
            }
        }
    };
    // Small inputs (decode) are not worth waking the pool.
    if x.len() < 1 << 16 {
        x.chunks_exact(k).zip(out.chunks_exact_mut(k)).enumerate().for_each(work);
    } else {
        crate::pool::install(|| x.par_chunks_exact(k).zip(out.par_chunks_exact_mut(k)).enumerate().for_each(work));
    }
    Ok(())
}
