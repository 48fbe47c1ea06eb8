//! Rounding of a dequantized weight element to the operand type the reference multiplies with,
//! and the FP8 E4M3 decode, as branch-free lane code that LLVM vectorises.

/// What the reference rounds the fp32 dequantized weight to before its fp32 matmul.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operand {
    /// No rounding (fp32 activations, FP8 weights whose scale goes to the epilogue).
    F32,
    /// `_as_operand(w, bfloat16)`: round to nearest even bf16.
    Bf16,
    /// `_as_operand(w, float16)`: round to nearest even fp16 (subnormals, overflow to inf).
    F16,
    /// `round_e4m3`: saturate to +-448, round to nearest even E4M3 (the W4A8 FP8 operand).
    E4M3,
}

impl Operand {
    #[inline(always)]
    pub fn apply(self, v: f32) -> f32 {
        match self {
            Operand::F32 => v,
            Operand::Bf16 => bf16(v),
            Operand::F16 => f16(v),
            Operand::E4M3 => e4m3(v),
        }
    }
}

/// Nearest-even bf16 of `v`, as f32 (NaN stays NaN, as torch's conversion keeps it).
#[inline(always)]
pub fn bf16(v: f32) -> f32 {
    let b = v.to_bits();
    let r = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) & 0xFFFF_0000;
    if v.is_nan() {
        v
    } else {
        f32::from_bits(r)
    }
}

/// Nearest-even fp16 of `v`, as f32: 10 mantissa bits for normal fp16 magnitudes, a 2^-24
/// quantum below 2^-14, infinity from 65520 up (torch's `to(float16)`).
#[inline(always)]
pub fn f16(v: f32) -> f32 {
    let a = v.abs();
    let b = a.to_bits();
    let normal = f32::from_bits(b.wrapping_add(0xFFF + ((b >> 13) & 1)) & 0xFFFF_E000);
    // Adding 0.5 leaves an ulp of 2^-24 (exactly the fp16 subnormal quantum), so the sum
    // is rounded there, ties to even; subtracting it back is exact.
    let sub = (a + 0.5) - 0.5;
    let r = if a < 6.103_515_6e-5 { sub } else { normal };
    let r = if a >= 65520.0 { f32::INFINITY } else { r };
    if v.is_nan() {
        v
    } else {
        r.copysign(v)
    }
}

/// Nearest-even E4M3 of `v` saturated to +-448 (torch's clamp + `to(float8_e4m3fn)`).
#[inline(always)]
pub fn e4m3(v: f32) -> f32 {
    let a = v.abs().min(448.0);
    let b = a.to_bits();
    let normal = f32::from_bits(b.wrapping_add(0x7FFFF + ((b >> 20) & 1)) & 0xFFF0_0000);
    // Below 2^-6 the E4M3 quantum is 2^-9: adding 2^14 (ulp 2^-9) rounds there, ties to even.
    let sub = (a + 16384.0) - 16384.0;
    let r = if a < 0.015625 { sub } else { normal };
    if v.is_nan() {
        v
    } else {
        r.copysign(v)
    }
}

/// FP8 E4M3FN byte -> f32 without a table lookup (vectorisable). 0x7F/0xFF (NaN) decode as
/// +-480 instead of NaN; a checkpoint with NaN weights is not a supported input of the fused
/// path (the loader validates E4M3 weights elsewhere; the reference stays the oracle).
#[inline(always)]
pub fn e4m3_decode(byte: u8) -> f32 {
    let b = byte as u32;
    let mag = b & 0x7F;
    // Normal: exponent field e (bias 7) -> fp32 exponent e + 120, 3 mantissa bits on top.
    let normal = f32::from_bits((mag << 20) + (120 << 23));
    // Subnormal (e = 0): m * 2^-9.
    let sub = (mag & 7) as f32 * (1.0 / 512.0);
    let v = if mag < 8 { sub } else { normal };
    f32::from_bits(v.to_bits() | ((b & 0x80) << 24))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numeric;

    #[test]
    fn e4m3_decode_matches_table() {
        for b in 0..=255u8 {
            let t = numeric::E4M3[b as usize];
            if t.is_nan() {
                continue;
            }
            assert_eq!(e4m3_decode(b).to_bits(), t.to_bits(), "byte {b:#x}");
        }
    }

    #[test]
    fn e4m3_round_matches_core() {
        let mut x = 0x1234_5678u32;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let v = f32::from_bits(x);
            if !v.is_finite() {
                continue;
            }
            for s in [1.0f32, 1e-3, 1e3, 1e-30, 1e30] {
                let v = v * s;
                if !v.is_finite() {
                    continue;
                }
                assert_eq!(e4m3(v).to_bits(), numeric::round_e4m3(v).to_bits(), "{v:e}");
            }
        }
    }

    #[test]
    fn bf16_and_f16_round_like_half() {
        let mut x = 0x9E37_79B9u32;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let v = f32::from_bits(x);
            if v.is_nan() {
                continue;
            }
            assert_eq!(bf16(v).to_bits(), half::bf16::from_f32(v).to_f32().to_bits(), "{v:e}");
            let h = half::f16::from_f32(v).to_f32();
            assert_eq!(f16(v).to_bits(), h.to_bits(), "{v:e}");
        }
    }
}
