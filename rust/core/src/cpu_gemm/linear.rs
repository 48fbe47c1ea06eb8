//! A whole CPU `QuantLinear` forward in one call: activations in their torch dtype in, the
//! format's activation quantizer, the fused product, the output rounded to the activation dtype.
//!
//! The op path runs the same arithmetic as a chain of torch ops and custom ops (pre-quant scale
//! multiply, quantizer op, `.float()`, the GEMM op, `.to(dtype)`), each paying Python and
//! dispatcher costs that a decode step pays once per linear layer: ~0.1 ms per layer against
//! tens of microseconds of arithmetic. Here the steps are the same functions in the same order
//! ([`gemm`], [`actq`], [`round`]), so the result is the op path's bit for bit (tested in
//! `tests/test_cpu_linear.py`).

use super::{actq, arg, gemm, round, Epilogue, Factor, Isa, Operand, Weight};
use crate::error::Result;

/// The torch dtype of the activations and of the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    Bf16,
    F16,
}

impl Dtype {
    /// Rounds an fp32 value to this dtype (torch's `.to(dtype)`), as fp32.
    #[inline(always)]
    fn round(self, v: f32) -> f32 {
        match self {
            Dtype::F32 => v,
            Dtype::Bf16 => round::bf16(v),
            Dtype::F16 => round::f16(v),
        }
    }

    /// The weight operand rounding of the reference for activations of this dtype.
    pub fn operand(self) -> Operand {
        match self {
            Dtype::F32 => Operand::F32,
            Dtype::Bf16 => Operand::Bf16,
            Dtype::F16 => Operand::F16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::Bf16 => "bfloat16",
            Dtype::F16 => "float16",
        }
    }
}

/// Activations (`[m, k]`) or output (`[m, n]`) storage: fp32 values or 16-bit patterns.
pub enum Acts<'a> {
    F32(&'a [f32]),
    Bits16(&'a [u16]),
}

pub enum ActsMut<'a> {
    F32(&'a mut [f32]),
    Bits16(&'a mut [u16]),
}

impl Acts<'_> {
    fn len(&self) -> usize {
        match self {
            Acts::F32(v) => v.len(),
            Acts::Bits16(v) => v.len(),
        }
    }
}

impl ActsMut<'_> {
    fn len(&self) -> usize {
        match self {
            ActsMut::F32(v) => v.len(),
            ActsMut::Bits16(v) => v.len(),
        }
    }
}

/// The activation quantizer of a format (the op path's quantizer op, `reference.py`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ActQuant {
    /// Weight-only formats: the activations as they are.
    None,
    /// `nvfp4_fake_quant(x, gs)`, returned in the activation dtype (rounded), as the op is.
    Nvfp4 { gs: f32 },
    /// `fp8_quant_static(x, scale)`: `e4m3(clamp(x / scale))` as fp32 values.
    Fp8Static { scale: f32 },
    /// `fp8_quant_per_token(x)`: `s = amax(|x_m|) / 448` per row, `e4m3(x / s)` (0 where `s` is
    /// 0); `s` becomes the epilogue's per-row factor.
    Fp8PerToken,
}

/// A prepared linear layer: the weight, how its activations are quantized and its epilogue.
#[derive(Debug, Clone, Copy)]
pub struct Linear<'a> {
    pub weight: Weight<'a>,
    pub act: ActQuant,
    /// The weight operand rounding; `None`: the activation dtype's ([`Dtype::operand`]).
    pub operand: Option<Operand>,
    /// AWQ's per-input-channel `pre_quant_scale` (`[k]`, fp32 values of the stored tensor),
    /// multiplied in the activation dtype before quantizing.
    pub pre_scale: Option<&'a [f32]>,
    /// Epilogue per-row factor (`Fp8PerToken` replaces it with the row scales).
    pub a: Factor<'a>,
    /// Epilogue per-column factor.
    pub b: Factor<'a>,
    pub bias: Option<&'a [f32]>,
}

impl Linear<'_> {
    /// The checks of [`linear`] that do not depend on the activations: the weight, the
    /// pre-quant scale and the epilogue against its shape (a prepared layer runs them once).
    pub fn validate(&self) -> Result<()> {
        let (n, k) = (self.weight.n(), self.weight.k());
        self.weight.validate()?;
        if let Some(p) = self.pre_scale {
            if p.len() != k {
                return Err(arg(format!("pre_quant_scale has {} values, expected {k}", p.len())));
            }
        }
        if matches!(self.a, Factor::Each(_)) {
            return Err(arg("a prepared linear's row scale must be one value".into()));
        }
        self.b.check(n, "per-channel scale")?;
        match self.bias {
            Some(b) if b.len() != n => Err(arg(format!("bias has {} values, expected {n}", b.len()))),
            _ => Ok(()),
        }
    }
}

const FP8_MAX: f32 = 448.0;

/// `out[m, n] = linear(x[m, k])` with `x` and `out` in `dtype` (`Bits16` for bf16 / fp16).
pub fn linear(lin: &Linear, x: Acts, dtype: Dtype, m: usize, out: ActsMut, isa: Isa) -> Result<()> {
    let (n, k) = (lin.weight.n(), lin.weight.k());
    let half = dtype != Dtype::F32;
    if matches!(x, Acts::Bits16(_)) != half || matches!(out, ActsMut::Bits16(_)) != half {
        return Err(arg(format!("activations and output must both be stored as {}", dtype.name())));
    }
    let (mk, mn) = match (m.checked_mul(k), m.checked_mul(n)) {
        (Some(a), Some(b)) => (a, b),
        _ => return Err(arg("M x K or M x N overflows".into())),
    };
    if x.len() != mk || out.len() != mn {
        return Err(arg(format!("activations have {} values and output {}, expected {m} x {k} and {m} x {n}", x.len(), out.len())));
    }
    lin.validate()?;
    // The activations in fp32, through the dtype-rounded pre-quant scale multiply.
    let mut xf: Vec<f32> = match &x {
        Acts::F32(v) => v.to_vec(),
        Acts::Bits16(v) => v.iter().map(|&b| bits_to_f32(b, dtype)).collect(),
    };
    if let Some(p) = lin.pre_scale {
        for row in xf.chunks_exact_mut(k.max(1)) {
            for (v, s) in row.iter_mut().zip(p) {
                *v = dtype.round(*v * dtype.round(*s));
            }
        }
    }
    let mut row_scales = Vec::new();
    let mut a = lin.a;
    let op = lin.operand.unwrap_or(dtype.operand());
    let xq = match lin.act {
        ActQuant::None => xf,
        ActQuant::Nvfp4 { gs } => {
            let mut q = vec![0f32; xf.len()];
            actq::nvfp4_fake_quant(&xf, k, &[gs], &mut q)?;
            for v in q.iter_mut() {
                *v = dtype.round(*v);
            }
            q
        }
        ActQuant::Fp8Static { scale } => {
            for v in xf.iter_mut() {
                *v = round::e4m3(*v / scale);
            }
            xf
        }
        ActQuant::Fp8PerToken => {
            row_scales.reserve(m);
            for row in xf.chunks_exact_mut(k.max(1)) {
                // torch's amax propagates NaN; f32::max would drop it.
                let amax = row.iter().fold(0f32, |acc, v| if acc.is_nan() || v.is_nan() { f32::NAN } else { acc.max(v.abs()) });
                let s = amax / FP8_MAX;
                for v in row.iter_mut() {
                    *v = if s == 0.0 { 0.0 } else { round::e4m3(*v / s) };
                }
                row_scales.push(s);
            }
            if k == 0 {
                row_scales.resize(m, 0.0);
            }
            a = Factor::Each(&row_scales);
            xf
        }
    };
    let epi = Epilogue { a, b: lin.b, bias: lin.bias };
    match out {
        ActsMut::F32(o) => gemm(&xq, m, &lin.weight, op, &epi, o, isa),
        ActsMut::Bits16(o) => {
            let mut y = vec![0f32; mn];
            gemm(&xq, m, &lin.weight, op, &epi, &mut y, isa)?;
            for (d, v) in o.iter_mut().zip(&y) {
                *d = f32_to_bits(*v, dtype);
            }
            Ok(())
        }
    }
}

#[inline(always)]
fn bits_to_f32(b: u16, dtype: Dtype) -> f32 {
    match dtype {
        Dtype::F16 => half::f16::from_bits(b).to_f32(),
        _ => f32::from_bits((b as u32) << 16),
    }
}

/// torch's `.to(bfloat16 / float16)` of an fp32 value, as bits.
#[inline(always)]
fn f32_to_bits(v: f32, dtype: Dtype) -> u16 {
    match dtype {
        Dtype::F16 => half::f16::from_f32(v).to_bits(),
        _ => {
            if v.is_nan() {
                // torch's canonical bf16 NaN keeps the sign.
                0x7FC0 | (((v.to_bits() >> 16) as u16) & 0x8000)
            } else {
                (round::bf16(v).to_bits() >> 16) as u16
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu_gemm::{Element4, Scales4, W4Weight};

    fn lcg(seed: u32, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((s >> 8) as f32 / (1u32 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    /// The composition of the separate steps (what the op path runs) equals `linear`.
    #[test]
    fn linear_equals_the_steps() {
        let (n, k, m, g) = (48, 64, 3, 16);
        let packed: Vec<u8> = (0..n * k / 2).map(|i| (i * 37 % 251) as u8).collect();
        let scales: Vec<u8> = (0..(k / g) * n).map(|i| 0x30 + (i % 24) as u8).collect();
        let w = Weight::W4(W4Weight {
            packed: &packed,
            n,
            k,
            element: Element4::E2M1,
            scales: Scales4::E4M3(&scales),
            group: g,
            scale_mul: Some(0.75),
            scale_div: None,
        });
        let bias: Vec<f32> = lcg(3, n);
        let x: Vec<f32> = lcg(7, m * k);
        let xb: Vec<u16> = x.iter().map(|v| f32_to_bits(*v, Dtype::Bf16)).collect();
        for act in [ActQuant::None, ActQuant::Nvfp4 { gs: 0.01 }, ActQuant::Fp8Static { scale: 0.02 }, ActQuant::Fp8PerToken] {
            let lin = Linear { weight: w, act, operand: None, pre_scale: None, a: Factor::One, b: Factor::One, bias: Some(&bias) };
            let mut got = vec![0u16; m * n];
            linear(&lin, Acts::Bits16(&xb), Dtype::Bf16, m, ActsMut::Bits16(&mut got), Isa::detect()).unwrap();
            // The steps.
            let xf: Vec<f32> = xb.iter().map(|b| bits_to_f32(*b, Dtype::Bf16)).collect();
            let (xq, a) = match act {
                ActQuant::None => (xf.clone(), vec![]),
                ActQuant::Nvfp4 { gs } => {
                    let mut q = vec![0f32; xf.len()];
                    actq::nvfp4_fake_quant(&xf, k, &[gs], &mut q).unwrap();
                    (q.iter().map(|v| round::bf16(*v)).collect(), vec![])
                }
                ActQuant::Fp8Static { scale } => (xf.iter().map(|v| round::e4m3(v / scale)).collect(), vec![]),
                ActQuant::Fp8PerToken => {
                    let s: Vec<f32> = xf.chunks(k).map(|r| r.iter().fold(0f32, |a, v| a.max(v.abs())) / 448.0).collect();
                    let q = xf.iter().enumerate().map(|(i, v)| round::e4m3(v / s[i / k])).collect();
                    (q, s)
                }
            };
            let epi = Epilogue { a: if a.is_empty() { Factor::One } else { Factor::Each(&a) }, b: Factor::One, bias: Some(&bias) };
            let mut y = vec![0f32; m * n];
            gemm(&xq, m, &w, Operand::Bf16, &epi, &mut y, Isa::detect()).unwrap();
            let want: Vec<u16> = y.iter().map(|v| f32_to_bits(*v, Dtype::Bf16)).collect();
            assert_eq!(got, want, "{act:?}");
        }
    }

    #[test]
    fn linear_rejects_bad_shapes_and_storage() {
        let packed = vec![0u8; 16 * 8];
        let scales = vec![0x38u8; 16];
        let w = Weight::W4(W4Weight {
            packed: &packed,
            n: 16,
            k: 16,
            element: Element4::E2M1,
            scales: Scales4::E4M3(&scales),
            group: 16,
            scale_mul: None,
            scale_div: None,
        });
        let lin = Linear { weight: w, act: ActQuant::None, operand: None, pre_scale: None, a: Factor::One, b: Factor::One, bias: None };
        let x = vec![0u16; 15];
        let mut out = vec![0u16; 16];
        assert!(linear(&lin, Acts::Bits16(&x), Dtype::Bf16, 1, ActsMut::Bits16(&mut out), Isa::Scalar).is_err());
        let xf = vec![0f32; 16];
        assert!(linear(&lin, Acts::F32(&xf), Dtype::Bf16, 1, ActsMut::Bits16(&mut out), Isa::Scalar).is_err());
        let pre = vec![1f32; 3];
        let lin2 = Linear { pre_scale: Some(&pre), ..lin };
        let xb = vec![0u16; 16];
        assert!(linear(&lin2, Acts::Bits16(&xb), Dtype::Bf16, 1, ActsMut::Bits16(&mut out), Isa::Scalar).is_err());
        assert!(linear(&lin, Acts::Bits16(&xb), Dtype::Bf16, 1, ActsMut::Bits16(&mut out), Isa::Scalar).is_ok());
    }
}
