//! INT8 weights `[n, k]` with per-output-channel fp32 scales: weight-only (the scale is part of
//! the operand, rounded to the activation dtype like the reference) or W8A8 (the integer GEMM
//! `gemm_i8`, scale in the epilogue).

use super::round::Operand;
use super::{arg, Isa};
use crate::error::Result;

#[derive(Debug, Clone, Copy)]
pub struct Int8Weight<'a> {
    pub w: &'a [i8],
    pub n: usize,
    pub k: usize,
    /// Per-channel scale folded into the decoded operand (weight-only); `None` for W8A8.
    pub scale: Option<&'a [f32]>,
}

impl Int8Weight<'_> {
    pub(super) fn validate(&self) -> Result<()> {
        let (n, k) = (self.n, self.k);
        let nk = n.checked_mul(k).ok_or_else(|| arg("N x K overflows".into()))?;
        if self.w.len() != nk {
            return Err(arg(format!("INT8 weight has {} bytes, expected {n} x {k}", self.w.len())));
        }
        if let Some(s) = self.scale {
            if s.len() != n {
                return Err(arg(format!("INT8 scales have {} values, expected {n}", s.len())));
            }
        }
        Ok(())
    }
}

pub(super) fn decode_row(w: &Int8Weight, isa: Isa, op: Operand, row: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: non-scalar ISAs come from `Isa::detect` (AVX2 + FMA + F16C present).
        unsafe { super::x86::int8_decode_row(isa, w, op, row, out) };
        return;
    }
    let _ = isa;
    decode_row_generic(w, op, row, out)
}

/// `out[j] = round(q[row, j] * s[row])` (the reference's `weight.float() * sw[:, None]`).
#[inline(always)]
pub(super) fn decode_row_generic(w: &Int8Weight, op: Operand, row: usize, out: &mut [f32]) {
    let k = w.k;
    let src = &w.w[row * k..(row + 1) * k];
    let s = w.scale.map_or(1.0, |s| s[row]);
    for (o, &q) in out[..k].iter_mut().zip(src) {
        *o = op.apply(q as f32 * s);
    }
}
