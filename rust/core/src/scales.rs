//! Scale validation: a NaN, an infinity or a negative number in a scale silently poisons every
//! product it touches (one NaN byte in an NVFP4 block scale turned 75% of the logits NaN), and a
//! zero or negative per-tensor scale gives finite, wrong numbers. So scales are checked while
//! their bytes pass through the core anyway: per-tensor scalars when the checkpoint is opened,
//! block / channel scales and `pre_quant_scale` during the fill and the CPU dequantization.
//!
//! The rules (FORMATS §3): every scale is finite (not NaN, not ±Inf); per-tensor scalars
//! (`weight_scale_2`, `input_scale`, per-tensor `weight_scale`, KV `k_scale`/`v_scale`) are
//! strictly positive; block and channel scales are not negative (0 and -0 are legal: an
//! all-zero block has scale 0). The checks are branch-free folds over the raw bytes that the
//! compiler vectorises, so they cost a fraction of the copy that brings the bytes in.

use crate::dtype::DType;
use crate::numeric::read_f32;

/// What a scale must satisfy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Finite and > 0 (per-tensor scalars).
    Positive,
    /// Finite and >= 0 (block, group, channel scales, `pre_quant_scale`).
    NonNegative,
}

/// The first element of `bytes` (raw little-endian elements of `dtype`) that breaks `rule`:
/// `(index, value)`. `None` if all are fine, or if `dtype` is not a scale encoding.
pub fn first_bad(bytes: &[u8], dtype: DType, rule: Rule) -> Option<(usize, f32)> {
    if !any_bad(bytes, dtype, rule) {
        return None;
    }
    // Slow path, only on a broken file: find which element.
    let n = bytes.len() / dtype.size().max(1);
    (0..n)
        .map(|i| (i, read_f32(bytes, dtype, i)))
        .find(|&(_, v)| !ok(v, rule))
}

fn ok(v: f32, rule: Rule) -> bool {
    match rule {
        Rule::Positive => v.is_finite() && v > 0.0,
        Rule::NonNegative => v.is_finite() && v >= 0.0,
    }
}

/// Whether any element breaks the rule, decided on the bit patterns in wide chunks.
fn any_bad(bytes: &[u8], dtype: DType, rule: Rule) -> bool {
    let positive = rule == Rule::Positive;
    match dtype {
        // E4M3 (fn): NaN is S.1111.111 (no infinities); negative is a set sign bit on a
        // non-zero magnitude; zero is a zero magnitude.
        DType::F8_E4M3 => fold_u8(bytes, |b| {
            let mag = b & 0x7F;
            (mag == 0x7F) | (b > 0x80) | (positive & (mag == 0))
        }),
        // E8M0: unsigned powers of two, 0xFF is NaN; never zero or negative.
        DType::F8_E8M0 | DType::U8 => fold_u8(bytes, |b| b == 0xFF),
        DType::BF16 => fold_u16(bytes, |h| float_bad(h as u32, 0x7F80, 0x7FFF, 0x8000, positive)),
        DType::F16 => fold_u16(bytes, |h| float_bad(h as u32, 0x7C00, 0x7FFF, 0x8000, positive)),
        DType::F32 => fold_u32(bytes, |w| float_bad(w, 0x7F80_0000, 0x7FFF_FFFF, 0x8000_0000, positive)),
        DType::F64 => bytes
            .chunks_exact(8)
            .any(|c| !ok(f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32, rule)),
        _ => false,
    }
}

/// A wide float's bits are bad if the exponent is all ones (NaN/Inf), or negative and not zero,
/// or (for `positive`) zero.
#[inline(always)]
fn float_bad(bits: u32, exp: u32, mag: u32, sign: u32, positive: bool) -> bool {
    let m = bits & mag;
    ((bits & exp) == exp) | ((bits & sign != 0) & (m != 0)) | (positive & (m == 0))
}

#[inline(always)]
fn fold_u8(bytes: &[u8], bad: impl Fn(u8) -> bool) -> bool {
    bytes
        .chunks(4096)
        .any(|c| c.iter().fold(0u8, |acc, &b| acc | bad(b) as u8) != 0)
}

#[inline(always)]
fn fold_u16(bytes: &[u8], bad: impl Fn(u16) -> bool) -> bool {
    bytes.chunks(4096).any(|c| {
        c.chunks_exact(2)
            .fold(0u8, |acc, p| acc | bad(u16::from_le_bytes([p[0], p[1]])) as u8)
            != 0
    })
}

#[inline(always)]
fn fold_u32(bytes: &[u8], bad: impl Fn(u32) -> bool) -> bool {
    bytes.chunks(4096).any(|c| {
        c.chunks_exact(4)
            .fold(0u8, |acc, p| acc | bad(u32::from_le_bytes([p[0], p[1], p[2], p[3]])) as u8)
            != 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn e4m3_rules() {
        let good = [0x00u8, 0x80, 0x01, 0x38, 0x7E];
        assert_eq!(first_bad(&good, DType::F8_E4M3, Rule::NonNegative), None);
        for (b, i) in [(0x7Fu8, 2usize), (0xFF, 2), (0x81, 2), (0xB8, 2)] {
            let v = [0x38u8, 0x00, b, 0x38];
            assert_eq!(first_bad(&v, DType::F8_E4M3, Rule::NonNegative).map(|x| x.0), Some(i), "{b:#x}");
        }
        assert_eq!(first_bad(&[0x38, 0x00], DType::F8_E4M3, Rule::Positive).map(|x| x.0), Some(1));
    }

    #[test]
    fn e8m0_rules() {
        assert_eq!(first_bad(&[0u8, 127, 254], DType::F8_E8M0, Rule::NonNegative), None);
        assert_eq!(first_bad(&[0u8, 255], DType::F8_E8M0, Rule::NonNegative).map(|x| x.0), Some(1));
    }

    #[test]
    fn wide_float_rules() {
        for rule in [Rule::Positive, Rule::NonNegative] {
            assert_eq!(first_bad(&f32s(&[1.0, 2.5e-8]), DType::F32, rule), None);
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -1.0, -1e-30] {
                let got = first_bad(&f32s(&[1.0, bad]), DType::F32, rule);
                assert_eq!(got.map(|x| x.0), Some(1), "{bad}");
            }
        }
        assert_eq!(first_bad(&f32s(&[0.0, -0.0]), DType::F32, Rule::NonNegative), None);
        assert_eq!(first_bad(&f32s(&[1.0, 0.0]), DType::F32, Rule::Positive).map(|x| x.0), Some(1));
        assert_eq!(first_bad(&f32s(&[-0.0]), DType::F32, Rule::Positive).map(|x| x.0), Some(0));
        let bf = |v: f32| half::bf16::from_f32(v).to_le_bytes();
        let hf = |v: f32| half::f16::from_f32(v).to_le_bytes();
        for bad in [f32::NAN, f32::INFINITY, -2.0] {
            let b: Vec<u8> = [bf(1.0), bf(bad)].concat();
            assert_eq!(first_bad(&b, DType::BF16, Rule::NonNegative).map(|x| x.0), Some(1));
            let h: Vec<u8> = [hf(1.0), hf(bad)].concat();
            assert_eq!(first_bad(&h, DType::F16, Rule::NonNegative).map(|x| x.0), Some(1));
        }
        let b: Vec<u8> = [bf(1.0), bf(0.0)].concat();
        assert_eq!(first_bad(&b, DType::BF16, Rule::NonNegative), None);
    }

    #[test]
    fn large_buffers_find_the_one_bad_element() {
        let mut v = vec![0x38u8; 1 << 20];
        assert_eq!(first_bad(&v, DType::F8_E4M3, Rule::NonNegative), None);
        v[777_777] = 0x7F;
        assert_eq!(first_bad(&v, DType::F8_E4M3, Rule::NonNegative).map(|x| x.0), Some(777_777));
    }
}
