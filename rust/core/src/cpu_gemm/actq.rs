//! NVFP4 activation fake-quant on the CPU, the reference's `nvfp4_fake_quant` in fp32
//! (FORMATS §4.4): per 16-block of a row, `s = e4m3(amax / (6 * gs))`,
//! `q = e2m1(clamp(x / (s * gs), +-6))` (ties to the even mantissa), `y = (q * s) * gs`; a block
//! whose `s * gs` is 0 gives 0. The torch reference spends ~15 ops (and their temporaries) on it
//! per call; here it is one pass.

use super::arg;
use super::round;
use crate::error::Result;

const BLOCK: usize = 16;

/// Nearest E2M1 value of `t` (saturating, ties to even mantissa), as `e2m1_codes` +
/// `round_e2m1` of the reference compute it (the comparisons are false for NaN: 0). Written as
/// a chain of selects over rising bounds (the last one passed wins), which LLVM vectorises; the
/// `>` / `>=` of each bound are the reference's ties.
#[inline(always)]
pub(super) fn e2m1(t: f32) -> f32 {
    let a = t.abs();
    let mut mag = 0.0;
    mag = if a > 0.25 { 0.5 } else { mag };
    mag = if a >= 0.75 { 1.0 } else { mag };
    mag = if a > 1.25 { 1.5 } else { mag };
    mag = if a >= 1.75 { 2.0 } else { mag };
    mag = if a > 2.5 { 3.0 } else { mag };
    mag = if a >= 3.5 { 4.0 } else { mag };
    mag = if a > 5.0 { 6.0 } else { mag };
    if t < 0.0 {
        -mag
    } else {
        mag
    }
}

/// One 16-element block: `y = (e2m1(x / (s g)) * s) * g`, `s = e4m3(amax / (6 g))`.
#[inline(always)]
fn block(xb: &[f32; BLOCK], yb: &mut [f32; BLOCK], g: f32, six_g: f32) {
    // torch's amax propagates NaN; f32::max drops it, so NaN is looked for apart.
    let nan = xb.iter().fold(false, |n, v| n | v.is_nan());
    let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
    let amax = if nan { f32::NAN } else { amax };
    let s = round::e4m3(amax / six_g);
    let denom = s * g;
    if denom == 0.0 {
        *yb = [0.0; BLOCK];
        return;
    }
    for (y, v) in yb.iter_mut().zip(xb) {
        *y = (e2m1((v / denom).clamp(-6.0, 6.0)) * s) * g;
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
    // Whole rows per task, about 64 Ki elements each; small inputs (decode) on the calling thread.
    let rows_per_task = ((1usize << 16) / k).max(1);
    let parallel = x.len() >= 1 << 16;
    super::run_tasks(out, rows_per_task * k, parallel, || (), |_, (t, dst)| {
        let r0 = t * rows_per_task;
        for (i, (src, dst)) in x[r0 * k..r0 * k + dst.len()].chunks_exact(k).zip(dst.chunks_exact_mut(k)).enumerate() {
            let g = if gs.len() == 1 { gs[0] } else { gs[r0 + i] };
            let six_g = 6.0 * g;
            for (xb, yb) in src.chunks_exact(BLOCK).zip(dst.chunks_exact_mut(BLOCK)) {
                if let (Ok(xb), Ok(yb)) = (<&[f32; BLOCK]>::try_from(xb), <&mut [f32; BLOCK]>::try_from(yb)) {
                    block(xb, yb, g, six_g);
                }
            }
        }
    });
    Ok(())
}
