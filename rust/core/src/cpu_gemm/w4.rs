//! 4-bit weights: E2M1 (NVFP4, MXFP4) and INT4 (AWQ, offset-8 nibbles), K-packed two per byte
//! (even k in the low nibble), with group scales stored transposed `[K/G, N]` as E4M3 bytes,
//! E8M0 bytes or fp32 (FORMATS §2).
//!
//! Within a group every element is `round(v * s)` for one of 16 nibble values `v`, so a row is
//! decoded through a 16-entry table built once per group. Rows come out de-interleaved (the low
//! nibbles, i.e. even k, first, then the high nibbles) so that the decode is two contiguous
//! streams; the GEMM permutes the activations the same way once per call.

use super::round::{self, Operand};
use super::{arg, Isa};
use crate::error::Result;
use crate::numeric;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Element4 {
    E2M1,
    /// Stored as `q + 8`.
    Int4,
}

#[derive(Debug, Clone, Copy)]
pub enum Scales4<'a> {
    E4M3(&'a [u8]),
    E8M0(&'a [u8]),
    F32(&'a [f32]),
    /// E4M3 scales row-major, `[n, k / group]`: a prepared layer's copy of the kernel layout's
    /// `[k / group, n]` (see [`e4m3_rows`]), whose per-call gather then reads each row's scales
    /// contiguously instead of one byte per cache line. No NaN byte (the copy is refused then).
    E4M3Rows(&'a [u8]),
}

/// The E4M3 scales `[k / group, n]` of a 4-bit weight row-major (`[n, k / group]`), or None if a
/// scale is NaN (0x7F / 0xFF: the vectorised decode of the rows has no NaN; the transposed
/// scales keep the table lookup, which propagates it as the reference does).
pub fn e4m3_rows(scales: &[u8], n: usize, groups: usize) -> Option<Vec<u8>> {
    if scales.len() != n.checked_mul(groups)? || scales.iter().any(|b| b & 0x7F == 0x7F) {
        return None;
    }
    let mut out = vec![0u8; scales.len()];
    if n > 0 {
        for (g, col) in scales.chunks_exact(n).enumerate() {
            for (r, b) in col.iter().enumerate() {
                out[r * groups + g] = *b;
            }
        }
    }
    Some(out)
}

/// A packed 4-bit weight `[n, k]` (`packed` is `[n, k/2]`, scales `[k/group, n]`).
///
/// The effective scale of a group is `s * scale_mul` (NVFP4's `weight_scale_2`) or
/// `s / scale_div` (W4A8_AWQ's FP8 stage), each one fp32 operation as in the reference.
#[derive(Debug, Clone, Copy)]
pub struct W4Weight<'a> {
    pub packed: &'a [u8],
    pub n: usize,
    pub k: usize,
    pub element: Element4,
    pub scales: Scales4<'a>,
    pub group: usize,
    pub scale_mul: Option<f32>,
    pub scale_div: Option<f32>,
}

impl W4Weight<'_> {
    pub(super) fn validate(&self) -> Result<()> {
        let (n, k, g) = (self.n, self.k, self.group);
        if g == 0 || g % 2 != 0 || k % g != 0 {
            return Err(arg(format!("K={k} must be a multiple of the (even) group size {g}")));
        }
        let packed = n.checked_mul(k / 2).ok_or_else(|| arg("N x K overflows".into()))?;
        if self.packed.len() != packed {
            return Err(arg(format!("packed weight has {} bytes, expected {n} x {}", self.packed.len(), k / 2)));
        }
        let ns = (k / g) * n;
        let have = match self.scales {
            Scales4::E4M3(s) | Scales4::E8M0(s) | Scales4::E4M3Rows(s) => s.len(),
            Scales4::F32(s) => s.len(),
        };
        if have != ns {
            return Err(arg(format!("scales have {have} values, expected {} x {n}", k / g)));
        }
        if self.scale_mul.is_some() && self.scale_div.is_some() {
            return Err(arg("a 4-bit weight has either a multiplying or a dividing global scale".into()));
        }
        Ok(())
    }

    /// The effective fp32 scale of group `g` of row `row`.
    #[inline(always)]
    fn scale(&self, g: usize, row: usize) -> f32 {
        let i = g * self.n + row;
        let s = match self.scales {
            Scales4::E4M3(s) => numeric::E4M3[s[i] as usize],
            Scales4::E8M0(s) => numeric::e8m0(s[i]),
            Scales4::F32(s) => s[i],
            Scales4::E4M3Rows(s) => numeric::E4M3[s[row * (self.k / self.group) + g] as usize],
        };
        match (self.scale_mul, self.scale_div) {
            (Some(gs), _) => s * gs,
            (_, Some(d)) => s / d,
            _ => s,
        }
    }

    /// Effective scales of rows `n0..n0 + rows`, row-major `[rows, k / group]`. The stored
    /// scales are `[k / group, n]`: gathering a block of rows at once reads each cache line
    /// (and page) of them once per block instead of once per row.
    pub(super) fn gather_scales(&self, n0: usize, rows: usize, out: &mut Vec<f32>) {
        let ng = self.k / self.group;
        out.clear();
        out.resize(rows * ng, 0.0);
        if let Scales4::E4M3Rows(s) = self.scales {
            // Contiguous and branch-free: LLVM vectorises it. The product is the table value
            // times the global scale, one fp32 rounding, as in `scale`.
            let src = &s[n0 * ng..(n0 + rows) * ng];
            match (self.scale_mul, self.scale_div) {
                (Some(m), _) => out.iter_mut().zip(src).for_each(|(o, b)| *o = round::e4m3_decode(*b) * m),
                (_, Some(d)) => out.iter_mut().zip(src).for_each(|(o, b)| *o = round::e4m3_decode(*b) / d),
                _ => out.iter_mut().zip(src).for_each(|(o, b)| *o = round::e4m3_decode(*b)),
            }
            return;
        }
        for g in 0..ng {
            for r in 0..rows {
                out[r * ng + g] = self.scale(g, n0 + r);
            }
        }
    }

    /// The 16 nibble values of the element kind.
    #[inline(always)]
    fn values(&self) -> &'static [f32; 16] {
        match self.element {
            Element4::E2M1 => &numeric::E2M1,
            Element4::Int4 => &INT4,
        }
    }

    /// Decodes row `row` into `out` (`k` values) given its effective group scales (from
    /// `gather_scales`): natural order, or de-interleaved.
    pub(super) fn decode_row(&self, isa: Isa, op: Operand, row: usize, scales: &[f32], natural: bool, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if isa != Isa::Scalar && self.group & 15 == 0 {
            // SAFETY: Isa::Avx2/Avx512 are only produced by `Isa::detect`, which checked
            // that this CPU has AVX2, FMA and F16C.
            unsafe { super::x86::w4_decode_row(self, op, row, scales, natural, out) };
            return;
        }
        let _ = isa;
        self.decode_row_portable(op, row, scales, natural, out)
    }

    /// Whether [`W4Weight::dot_row`] runs fused on this instruction set.
    pub(super) fn fused_dot(&self, isa: Isa) -> bool {
        cfg!(target_arch = "x86_64") && isa != Isa::Scalar && self.group & 15 == 0
    }

    /// `out[i] = xs[i] . W[row]` for de-interleaved activation rows, the row decoded in
    /// registers (only where [`W4Weight::fused_dot`] says so; `None` otherwise).
    pub(super) fn dot_row<const M: usize>(&self, isa: Isa, op: Operand, row: usize, scales: &[f32], xs: [&[f32]; M]) -> Option<[f32; M]> {
        #[cfg(target_arch = "x86_64")]
        if self.fused_dot(isa) && xs.iter().all(|x| x.len() >= self.k) && scales.len() >= self.k / self.group {
            // SAFETY: Isa::Avx2/Avx512 are only produced by `Isa::detect`, which checked
            // that this CPU has AVX2, FMA and F16C.
            return Some(unsafe { super::x86::w4_dot_row::<M>(self, op, row, scales, xs) });
        }
        let _ = (isa, op, row, scales, xs);
        None
    }

    pub(super) fn decode_row_portable(&self, op: Operand, row: usize, scales: &[f32], natural: bool, out: &mut [f32]) {
        let (k, g) = (self.k, self.group);
        let h = k / 2;
        let bytes = &self.packed[row * h..(row + 1) * h];
        let values = self.values();
        let mut table = [0f32; 16];
        for (gi, &s) in scales[..k / g].iter().enumerate() {
            for (t, v) in table.iter_mut().zip(values.iter()) {
                *t = op.apply(v * s);
            }
            let j0 = gi * g / 2;
            let src = &bytes[j0..j0 + g / 2];
            if natural {
                for (j, &b) in src.iter().enumerate() {
                    out[2 * (j0 + j)] = table[(b & 15) as usize];
                    out[2 * (j0 + j) + 1] = table[(b >> 4) as usize];
                }
            } else {
                let (lo, hi) = out.split_at_mut(h);
                for (j, &b) in src.iter().enumerate() {
                    lo[j0 + j] = table[(b & 15) as usize];
                    hi[j0 + j] = table[(b >> 4) as usize];
                }
            }
        }
    }

    pub(super) fn nibble_values(&self) -> &'static [f32; 16] {
        self.values()
    }
}

/// INT4 nibble values: stored `q + 8`, so nibble c is `c - 8`.
static INT4: [f32; 16] = [
    -8.0, -7.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0,
];
