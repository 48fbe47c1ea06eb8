//! Element decoding: FP8 E4M3, E8M0, E2M1 and INT4 nibbles, and wide floats to f32.

use crate::dtype::DType;

/// All 256 FP8 E4M3FN values (NaN at 0x7F/0xFF; no infinities).
pub static E4M3: [f32; 256] = build_e4m3();

/// E2M1 nibble values (FORMATS §2): bit 3 sign, bits 2..0 index the magnitude table.
pub static E2M1: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

const fn build_e4m3() -> [f32; 256] {
    let mut t = [0f32; 256];
    let mut b = 0usize;
    while b < 256 {
        let sign = if b & 0x80 != 0 { -1.0f32 } else { 1.0f32 };
        let e = ((b >> 3) & 0xF) as i32;
        let m = (b & 0x7) as f32;
        let mag = if e == 0xF && (b & 0x7) == 0x7 {
            f32::NAN
        } else if e == 0 {
            // subnormal: m/8 * 2^-6
            m * (1.0 / 512.0)
        } else {
            (1.0 + m / 8.0) * pow2(e - 7)
        };
        t[b] = sign * mag;
        b += 1;
    }
    t
}

const fn pow2(e: i32) -> f32 {
    // Exact powers of two for the small exponents E4M3 uses, in a const context.
    let mut v = 1.0f32;
    let mut i = 0;
    if e >= 0 {
        while i < e {
            v *= 2.0;
            i += 1;
        }
    } else {
        while i < -e {
            v *= 0.5;
            i += 1;
        }
    }
    v
}

/// E8M0 scale: `2^(e-127)`; 255 is NaN (ModelOpt never writes it, FORMATS §2).
#[inline]
pub fn e8m0(b: u8) -> f32 {
    if b == 255 {
        f32::NAN
    } else {
        // 2^(b-127) spans 2^-127 .. 2^127; f32::powi is exact for powers of two in range,
        // and 2^-127 is a subnormal that f32 represents exactly.
        f32::from_bits(if b == 0 { 0x0040_0000 } else { (b as u32) << 23 })
    }
}

/// Rounds to the nearest FP8 E4M3 value (ties to even), saturating at ±448 the way ModelOpt's
/// fake quantizer clamps before its cast. NaN stays NaN.
pub fn round_e4m3(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let a = x.abs();
    if a >= 448.0 {
        return 448.0f32.copysign(x);
    }
    // Quantum: 2^-9 in the subnormal range (|x| < 2^-6), else 2^(floor(log2|x|) - 3).
    let quantum = if a < 2f32.powi(-6) {
        2f32.powi(-9)
    } else {
        let e = ((a.to_bits() >> 23) & 0xFF) as i32 - 127;
        2f32.powi(e - 3)
    };
    // Division and multiplication by a power of two are exact, so only the rounding rounds.
    ((a / quantum).round_ties_even() * quantum).copysign(x)
}

/// Signed INT4 from a nibble (two's complement).
#[inline]
pub fn int4(nibble: u8) -> i8 {
    (((nibble & 0xF) << 4) as i8) >> 4
}

/// Reads element `i` of a little-endian buffer of a wide-float or scale dtype as f32.
#[inline]
pub fn read_f32(bytes: &[u8], dtype: DType, i: usize) -> f32 {
    match dtype {
        DType::F32 => {
            let o = i * 4;
            f32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]])
        }
        DType::BF16 => {
            let o = i * 2;
            half::bf16::from_le_bytes([bytes[o], bytes[o + 1]]).to_f32()
        }
        DType::F16 => {
            let o = i * 2;
            half::f16::from_le_bytes([bytes[o], bytes[o + 1]]).to_f32()
        }
        DType::F64 => {
            let o = i * 8;
            let mut a = [0u8; 8];
            a.copy_from_slice(&bytes[o..o + 8]);
            f64::from_le_bytes(a) as f32
        }
        DType::F8_E4M3 => E4M3[bytes[i] as usize],
        DType::U8 | DType::F8_E8M0 => e8m0(bytes[i]),
        DType::I8 => bytes[i] as i8 as f32,
        _ => f32::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3_table_matches_known_values() {
        assert_eq!(E4M3[0x00], 0.0);
        assert_eq!(E4M3[0x01], 2f32.powi(-9));
        assert_eq!(E4M3[0x08], 2f32.powi(-6));
        assert_eq!(E4M3[0x38], 1.0);
        assert_eq!(E4M3[0x7E], 448.0);
        assert_eq!(E4M3[0xFE], -448.0);
        assert!(E4M3[0x7F].is_nan());
    }

    #[test]
    fn round_e4m3_hits_every_code_and_ties_to_even() {
        for (b, &v) in E4M3.iter().enumerate().take(0x7F) {
            assert_eq!(round_e4m3(v), v, "code {b:#x}");
            assert_eq!(round_e4m3(-v), -v);
        }
        // 1.0625 lies halfway between 1.0 (even mantissa) and 1.125.
        assert_eq!(round_e4m3(1.0625), 1.0);
        assert_eq!(round_e4m3(1.1875), 1.25);
        assert_eq!(round_e4m3(1000.0), 448.0);
        assert_eq!(round_e4m3(2f32.powi(-11)), 0.0);
    }

    #[test]
    fn e8m0_and_int4() {
        assert_eq!(e8m0(127), 1.0);
        assert_eq!(e8m0(130), 8.0);
        assert_eq!(e8m0(0), 2f32.powi(-127));
        assert_eq!(e8m0(254), 2f32.powi(127));
        assert_eq!(int4(0x7), 7);
        assert_eq!(int4(0x8), -8);
        assert_eq!(int4(0xF), -1);
    }
}
