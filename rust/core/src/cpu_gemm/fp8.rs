//! FP8 E4M3 weights `[n, k]`: plain (the scale is applied in the epilogue: FP8 per-tensor and
//! per-channel), with 2-D fp32 block scales `[ceil(n/B), ceil(k/B)]` (FP8_PB_WO), or with
//! transposed E8M0 group scales `[k/G, n]` (MXFP8).

use super::round::{self, Operand};
use super::{arg, Isa};
use crate::error::Result;
use crate::numeric;

#[derive(Debug, Clone, Copy)]
pub enum Fp8Scales<'a> {
    /// No scale in the weight operand.
    None,
    Block { scales: &'a [f32], block: usize },
    E8M0 { scales: &'a [u8], group: usize },
}

#[derive(Debug, Clone, Copy)]
pub struct Fp8Weight<'a> {
    /// E4M3FN bytes, `[n, k]`.
    pub w: &'a [u8],
    pub n: usize,
    pub k: usize,
    pub scales: Fp8Scales<'a>,
}

impl Fp8Weight<'_> {
    pub(super) fn validate(&self) -> Result<()> {
        let (n, k) = (self.n, self.k);
        let nk = n.checked_mul(k).ok_or_else(|| arg("N x K overflows".into()))?;
        if self.w.len() != nk {
            return Err(arg(format!("FP8 weight has {} bytes, expected {n} x {k}", self.w.len())));
        }
        match self.scales {
            Fp8Scales::None => {}
            Fp8Scales::Block { scales, block } => {
                if block == 0 {
                    return Err(arg("block size 0".into()));
                }
                let want = n.div_ceil(block) * k.div_ceil(block);
                if scales.len() != want {
                    return Err(arg(format!("block scales have {} values, expected {want}", scales.len())));
                }
            }
            Fp8Scales::E8M0 { scales, group } => {
                if group == 0 || k % group != 0 {
                    return Err(arg(format!("K={k} must be a multiple of the group size {group}")));
                }
                if scales.len() != (k / group) * n {
                    return Err(arg(format!("E8M0 scales have {} values, expected {} x {n}", scales.len(), k / group)));
                }
            }
        }
        Ok(())
    }
}

impl Fp8Weight<'_> {
    /// Whether [`Fp8Weight::dot_row`] runs fused here: AVX2, and every run of one scale a
    /// multiple of 8 elements.
    pub(super) fn fused_dot(&self, isa: Isa) -> bool {
        let seg_ok = match self.scales {
            Fp8Scales::None => true,
            Fp8Scales::Block { block, .. } => block % 8 == 0,
            Fp8Scales::E8M0 { group, .. } => group % 8 == 0,
        };
        cfg!(target_arch = "x86_64") && isa != Isa::Scalar && self.k.is_multiple_of(8) && seg_ok
    }

    /// `out[i] = xs[i] . W[row]` with the row decoded in registers (`None` where
    /// [`Fp8Weight::fused_dot`] says no).
    pub(super) fn dot_row<const M: usize>(&self, isa: Isa, op: Operand, row: usize, xs: [&[f32]; M]) -> Option<[f32; M]> {
        #[cfg(target_arch = "x86_64")]
        if self.fused_dot(isa) && xs.iter().all(|x| x.len() >= self.k) {
            // SAFETY: non-scalar ISAs come from `Isa::detect` (AVX2 + FMA + F16C present).
            return Some(unsafe { super::x86::fp8_dot_row::<M>(self, op, row, xs) });
        }
        let _ = (isa, op, row, xs);
        None
    }
}

pub(super) fn decode_row(w: &Fp8Weight, isa: Isa, op: Operand, row: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: non-scalar ISAs come from `Isa::detect` (AVX2 + FMA + F16C present).
        unsafe { super::x86::fp8_decode_row(isa, w, op, row, out) };
        return;
    }
    let _ = isa;
    decode_row_generic(w, op, row, out)
}

/// `out[j] = round(e4m3(w[row, j]) * scale(row, j))`, the reference's fp32 product.
#[inline(always)]
pub(super) fn decode_row_generic(w: &Fp8Weight, op: Operand, row: usize, out: &mut [f32]) {
    let k = w.k;
    let src = &w.w[row * k..(row + 1) * k];
    let out = &mut out[..k];
    match w.scales {
        Fp8Scales::None => {
            for (o, &b) in out.iter_mut().zip(src) {
                *o = op.apply(round::e4m3_decode(b));
            }
        }
        Fp8Scales::Block { scales, block } => {
            let srow = &scales[(row / block) * k.div_ceil(block)..];
            for (c, (o, s)) in out.chunks_mut(block).zip(src.chunks(block)).enumerate() {
                let sc = srow[c];
                for (o, &b) in o.iter_mut().zip(s) {
                    *o = op.apply(round::e4m3_decode(b) * sc);
                }
            }
        }
        Fp8Scales::E8M0 { scales, group } => {
            for (g, (o, s)) in out.chunks_mut(group).zip(src.chunks(group)).enumerate() {
                let sc = numeric::e8m0(scales[g * w.n + row]);
                for (o, &b) in o.iter_mut().zip(s) {
                    *o = op.apply(round::e4m3_decode(b) * sc);
                }
            }
        }
    }
}
