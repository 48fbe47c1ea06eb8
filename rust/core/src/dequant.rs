//! CPU dequantization of a quantized module to a wide float, multi-threaded over rows.
//!
//! The math is driven by the format table (element, packing, scale shape and encoding, what
//! `weight_scale_2` does); it reproduces FORMATS §8 and ModelOpt's fake-quant weight.

use rayon::prelude::*;

use crate::checkpoint::Checkpoint;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::formats::{Element, GlobalScale, Packing, Role, ShapeRule};
use crate::modules::QuantModule;
use crate::numeric::{int4, read_f32, round_e4m3, E2M1, E4M3};
use crate::pool;
use crate::scales::{self, Rule};

/// The float type dequantized values are written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutDType {
    F32,
    BF16,
    F16,
}

impl OutDType {
    pub fn size(self) -> usize {
        match self {
            OutDType::F32 => 4,
            OutDType::BF16 | OutDType::F16 => 2,
        }
    }

    pub fn parse(s: &str) -> Option<OutDType> {
        match s {
            "float32" | "f32" | "F32" => Some(OutDType::F32),
            "bfloat16" | "bf16" | "BF16" => Some(OutDType::BF16),
            "float16" | "f16" | "F16" => Some(OutDType::F16),
            _ => None,
        }
    }

    #[inline]
    fn write(self, dst: &mut [u8], i: usize, v: f32) {
        match self {
            OutDType::F32 => dst[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes()),
            OutDType::BF16 => dst[i * 2..i * 2 + 2].copy_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
            OutDType::F16 => dst[i * 2..i * 2 + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes()),
        }
    }
}

/// A module's raw bytes plus what is needed to interpret them.
struct Parts<'a> {
    m: &'a QuantModule,
    weight: &'a [u8],
    scale: Option<(&'a [u8], DType)>,
    global: Option<f32>,
}

fn scalar(ck: &Checkpoint, name: &str) -> Result<f32> {
    let info = ck
        .tensor_info(name)
        .ok_or_else(|| Error::argument(format!("no tensor '{name}'")))?;
    if info.nbytes() < info.dtype.size() as u64 || info.dtype.size() == 0 {
        return Err(Error::argument(format!("scalar '{name}' holds no element")));
    }
    let mut raw = [0u8; 8];
    let n = info.dtype.size().min(raw.len());
    ck.read_into(name, 0, &mut raw[..n])?;
    Ok(read_f32(&raw[..n], info.dtype, 0))
}

/// Dequantizes `m` into `out`, a buffer of exactly `m.numel() * out_dtype.size()` bytes laid
/// out as `[*lead, N, K]` row-major.
pub fn dequantize_into(ck: &Checkpoint, m: &QuantModule, out: &mut [u8], out_dtype: OutDType) -> Result<()> {
    let need = m.numel() as usize * out_dtype.size();
    if out.len() != need {
        return Err(Error::argument(format!(
            "output buffer for '{}' has {} bytes, needs {need}",
            m.name,
            out.len()
        )));
    }
    let wname = m
        .tensor(Role::Weight)
        .ok_or_else(|| Error::argument(format!("'{}' has no weight", m.name)))?;
    // The module's bytes are read once into memory (less than the dequantized output); a file
    // truncated meanwhile is an error here, never a fault later.
    let scale = match m.tensor(Role::WeightScale) {
        Some(s) => {
            let info = ck
                .tensor_info(s)
                .ok_or_else(|| Error::argument(format!("no tensor '{s}'")))?;
            let bytes = ck.tensor_data(s)?;
            if ck.validate_scales {
                let rule = match m.spec.rule(Role::WeightScale).map(|r| r.shape) {
                    Some(ShapeRule::Scalar) => Rule::Positive,
                    _ => Rule::NonNegative,
                };
                if let Some((i, v)) = scales::first_bad(&bytes, info.dtype, rule) {
                    return Err(ck.bad_scale(s, &m.name, m.spec.name, rule, i, v));
                }
            }
            Some((bytes, info.dtype))
        }
        None => None,
    };
    let global = match (m.spec.global_scale, m.tensor(Role::WeightScale2)) {
        (GlobalScale::None, _) | (_, None) => None,
        (_, Some(name)) => Some(scalar(ck, name)?),
    };
    if let (true, Some(g), Some(name)) = (ck.validate_scales, global, m.tensor(Role::WeightScale2)) {
        if !(g.is_finite() && g > 0.0) {
            return Err(ck.bad_scale(name, &m.name, m.spec.name, Rule::Positive, 0, g));
        }
    }
    let weight = ck.tensor_data(wname)?;
    let parts = Parts {
        m,
        weight: &weight,
        scale: scale.as_ref().map(|(b, d)| (b.as_slice(), *d)),
        global,
    };
    let k = m.k as usize;
    let n = m.n as usize;
    let row_bytes = k * out_dtype.size();
    pool::install(|| {
        out.par_chunks_mut(row_bytes).enumerate().for_each_init(
            || vec![0f32; k],
            |buf, (row, dst)| {
                parts.row(row / n, row % n, buf);
                for (j, &v) in buf.iter().enumerate() {
                    out_dtype.write(dst, j, v);
                }
            },
        )
    });
    Ok(())
}

impl Parts<'_> {
    /// Scale multiplier for (expert e, output row n, input column j).
    #[inline]
    fn scale_at(&self, e: usize, n: usize, j: usize) -> f32 {
        let Some((bytes, dtype)) = self.scale else {
            return 1.0;
        };
        let m = self.m;
        let (nn, kk) = (m.n as usize, m.k as usize);
        let g = m.group.unwrap_or(1) as usize;
        let rule = m.spec.rule(Role::WeightScale).map(|r| r.shape);
        let idx = match rule {
            Some(ShapeRule::Scalar) => 0,
            Some(ShapeRule::PerOutput) => e * nn + n,
            Some(ShapeRule::Groups) if m.bmm => (e * (kk / g) + j / g) * nn + n,
            Some(ShapeRule::Groups) => (e * nn + n) * (kk / g) + j / g,
            Some(ShapeRule::Blocks2d) => {
                let (nb, kb) = (nn.div_ceil(g), kk.div_ceil(g));
                e * nb * kb + (n / g) * kb + j / g
            }
            _ => 0,
        };
        read_f32(bytes, dtype, idx)
    }

    /// Fills `out[..K]` with the dequantized row `n` of expert `e`.
    fn row(&self, e: usize, n: usize, out: &mut [f32]) {
        let m = self.m;
        let (nn, kk) = (m.n as usize, m.k as usize);
        let w = self.weight;
        for (j, o) in out.iter_mut().enumerate() {
            // Byte offset of element (n, j) for one-byte elements: `[E, N, K]`, or `[E, K, N]`
            // for in-place expert parameters.
            let at = if m.bmm { (e * kk + j) * nn + n } else { (e * nn + n) * kk + j };
            let q = match (m.spec.element, m.spec.packing) {
                (Element::E4m3, _) => E4M3[w[at] as usize],
                (Element::Int8, _) => w[at] as i8 as f32,
                (Element::E2m1, Packing::PairsAlongK) if m.bmm => {
                    let b = w[(e * (kk / 2) + j / 2) * nn + n];
                    E2M1[(if j % 2 == 0 { b & 0xF } else { b >> 4 }) as usize]
                }
                (Element::E2m1, Packing::PairsAlongK) => {
                    let b = w[(e * nn + n) * (kk / 2) + j / 2];
                    E2M1[(if j % 2 == 0 { b & 0xF } else { b >> 4 }) as usize]
                }
                (Element::Int4, Packing::PairsAlongN) => {
                    let b = w[(e * (nn / 2) + n / 2) * kk + j];
                    int4(if n.is_multiple_of(2) { b & 0xF } else { b >> 4 }) as f32
                }
                // The table pairs E2M1 with PairsAlongK and INT4 with PairsAlongN only.
                _ => f32::NAN,
            };
            let s = self.scale_at(e, n, j);
            *o = match (m.spec.global_scale, self.global) {
                (GlobalScale::Multiplies, Some(g)) => q * s * g,
                // ModelOpt's second (FP8) quantizer sees the INT4-dequantized weight in the
                // model dtype (bf16): rounding there first reproduces its fake quant except for
                // INT4 ties (tests/test_dequant_oracle.py).
                (GlobalScale::Fp8Requant, Some(g)) => round_e4m3(half::bf16::from_f32(q * s).to_f32() / g) * g,
                _ => q * s,
            };
        }
    }
}
