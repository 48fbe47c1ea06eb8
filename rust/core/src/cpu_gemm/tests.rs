//! The fused kernels against a naive dequantize-then-multiply, on every ISA this CPU has.

use super::*;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next() >> 24) as u8).collect()
    }
    fn f32s(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| ((self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale).collect()
    }
}

fn isas() -> Vec<Isa> {
    let mut v = vec![Isa::Scalar];
    if Isa::detect() != Isa::Scalar {
        v.push(Isa::detect());
    }
    if Isa::detect() == Isa::Avx512Bf16 {
        v.push(Isa::Avx512);
    }
    if Isa::detect().has_avx512() {
        v.push(Isa::Avx2);
    }
    v
}

/// Naive fp64 product of x with the natural-order dequantized weight, then the epilogue.
fn naive(x: &[f32], m: usize, w: &Weight, op: Operand, epi: &Epilogue) -> Vec<f32> {
    let (n, k) = (w.n(), w.k());
    let mut wd = vec![0f32; n * k];
    dequant(w, op, &mut wd, Isa::Scalar).unwrap();
    let mut y = vec![0f32; m * n];
    for mi in 0..m {
        for ni in 0..n {
            let acc: f64 = (0..k).map(|j| x[mi * k + j] as f64 * wd[ni * k + j] as f64).sum();
            y[mi * n + ni] = epi.apply(acc as f32, mi, ni);
        }
    }
    y
}

fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |s, v| s.max(v.abs())).max(1e-6);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * scale, "{what}: [{i}] {x} vs {y} (scale {scale})");
    }
}

fn check_all(w: &Weight, op: Operand, label: &str, rng: &mut Rng) {
    let (n, k) = (w.n(), w.k());
    let bias = rng.f32s(n, 1.0);
    let cs = rng.f32s(n, 2.0);
    // Activations that are bf16 values take the bf16 kernels where the CPU has them.
    for (m, bf16_x) in [1usize, 2, 3, 4, 5, 9, 17].into_iter().flat_map(|m| [(m, false), (m, true)]) {
        let mut x = rng.f32s(m * k, 4.0);
        if bf16_x {
            x.iter_mut().for_each(|v| *v = half::bf16::from_f32(*v).to_f32());
        }
        let rs = rng.f32s(m, 2.0);
        for epi in [
            Epilogue::NONE,
            Epilogue { a: Factor::Scalar(0.75), b: Factor::Each(&cs), bias: Some(&bias) },
            Epilogue { a: Factor::Each(&rs), b: Factor::Scalar(1.5), bias: None },
        ] {
            let want = naive(&x, m, w, op, &epi);
            for isa in isas() {
                let mut y = vec![0f32; m * n];
                gemm(&x, m, w, op, &epi, &mut y, isa).unwrap();
                close(&y, &want, 1e-5, &format!("{label} m={m} bf16 x {bf16_x} {isa:?}"));
            }
        }
    }
    // Decoding is exact and identical on every ISA, in both orders.
    for natural in [true, false] {
        let mut first: Option<Vec<f32>> = None;
        for isa in isas() {
            let mut row = vec![0f32; k];
            for r in [0, n - 1] {
                w.decode_block(isa, op, r, 1, natural, &mut row, &mut Vec::new());
                match &first {
                    None => first = Some(row.clone()),
                    Some(f) if r == 0 => assert_eq!(
                        f.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        row.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{label} decode {isa:?}"
                    ),
                    _ => {}
                }
            }
        }
    }
}

#[test]
fn w4_all_kinds_match_naive() {
    let mut rng = Rng(0x5eed);
    // K = 256: the 64-wide bf16 kernel; 96: the 32-wide one (K not a multiple of 64).
    let n = 37;
    for (k, element, g) in [
        (256, Element4::E2M1, 16),
        (256, Element4::E2M1, 32),
        (256, Element4::Int4, 128),
        (256, Element4::Int4, 64),
        (96, Element4::E2M1, 16),
        (96, Element4::E2M1, 32),
    ] {
        let packed = rng.bytes(n * k / 2);
        let ng = k / g * n;
        let e4m3: Vec<u8> = rng.bytes(ng).into_iter().map(|b| b & 0x77).collect(); // finite, positive
        let rows = e4m3_rows(&e4m3, n, k / g).unwrap();
        let e8m0: Vec<u8> = rng.bytes(ng).into_iter().map(|b| 120 + (b % 12)).collect();
        let f32s: Vec<f32> = rng.f32s(ng, 0.1);
        for (scales, mul, div) in [
            (Scales4::E4M3(&e4m3), Some(0.01f32), None),
            (Scales4::E4M3Rows(&rows), Some(0.01f32), None),
            (Scales4::E8M0(&e8m0), None, None),
            (Scales4::F32(&f32s), None, None),
            (Scales4::F32(&f32s), None, Some(0.003f32)),
        ] {
            let w = Weight::W4(W4Weight { packed: &packed, n, k, element, scales, group: g, scale_mul: mul, scale_div: div });
            for op in [Operand::F32, Operand::Bf16, Operand::F16, Operand::E4M3] {
                check_all(&w, op, &format!("{element:?} g{g} {scales:?} {op:?}").chars().take(60).collect::<String>(), &mut rng);
            }
        }
    }
}

#[test]
fn w4_decode_matches_definition() {
    // W[n, k] = round(v(nibble) * s[k / G, n] * gs), natural order.
    let mut rng = Rng(7);
    let (n, k, g) = (5, 64, 16);
    let packed = rng.bytes(n * k / 2);
    let sc: Vec<u8> = rng.bytes(k / g * n).into_iter().map(|b| b & 0x77).collect();
    let w = Weight::W4(W4Weight { packed: &packed, n, k, element: Element4::E2M1, scales: Scales4::E4M3(&sc), group: g, scale_mul: Some(0.5), scale_div: None });
    let mut d = vec![0f32; n * k];
    dequant(&w, Operand::Bf16, &mut d, Isa::detect()).unwrap();
    for r in 0..n {
        for j in 0..k {
            let b = packed[r * k / 2 + j / 2];
            let nib = if j % 2 == 0 { b & 15 } else { b >> 4 };
            let s = crate::numeric::E4M3[sc[(j / g) * n + r] as usize] * 0.5;
            let want = half::bf16::from_f32(crate::numeric::E2M1[nib as usize] * s).to_f32();
            assert_eq!(d[r * k + j].to_bits(), want.to_bits(), "[{r},{j}]");
        }
    }
}

#[test]
fn fp8_all_scales_match_naive() {
    let mut rng = Rng(0xf8);
    // K = 256: the bf16 kernels' multiple of 32; 200: not.
    for (n, k) in [(33, 200), (21, 256)] {
        let wb: Vec<u8> = rng.bytes(n * k).into_iter().map(|b| if b & 0x7F == 0x7F { b & 0xF0 } else { b }).collect();
        let blocks = rng.f32s(n.div_ceil(8) * k.div_ceil(8), 0.1);
        let e8: Vec<u8> = rng.bytes(k / 8 * n).into_iter().map(|b| 120 + b % 10).collect();
        for scales in [Fp8Scales::None, Fp8Scales::Block { scales: &blocks, block: 8 }, Fp8Scales::E8M0 { scales: &e8, group: 8 }] {
            let w = Weight::Fp8(Fp8Weight { w: &wb, n, k, scales });
            for op in [Operand::F32, Operand::Bf16, Operand::F16] {
                check_all(&w, op, &format!("fp8 k{k} {op:?}"), &mut rng);
            }
        }
    }
}

#[test]
fn bf16_kernels_take_only_exact_operands() {
    let mut rng = Rng(0xb16);
    let (n, k) = (8, 64);
    let packed = rng.bytes(n * k / 2);
    let sc: Vec<u8> = rng.bytes(k / 16 * n).into_iter().map(|b| b & 0x77).collect();
    let w = Weight::W4(W4Weight { packed: &packed, n, k, element: Element4::E2M1, scales: Scales4::E4M3(&sc), group: 16, scale_mul: Some(0.01), scale_div: None });
    #[cfg(target_arch = "x86_64")]
    {
        assert!(bf16dot::takes(&w, Operand::Bf16).is_some());
        assert!(bf16dot::takes(&w, Operand::F32).is_none(), "fp32 operands are not bf16 values");
        assert!(bf16dot::takes(&w, Operand::F16).is_none());
        let x = rng.f32s(k, 1.0);
        assert!(bf16dot::pack_x(&x, 1, k, bf16dot::Order::Natural).is_none(), "fp32 activations");
        let xb: Vec<f32> = x.iter().map(|v| half::bf16::from_f32(*v).to_f32()).collect();
        let p = bf16dot::pack_x(&xb, 1, k, bf16dot::Order::Nibbles).unwrap();
        // Per 32: the even elements, then the odd ones.
        assert_eq!(p[1], half::bf16::from_f32(xb[2]).to_bits());
        assert_eq!(p[16], half::bf16::from_f32(xb[1]).to_bits());
        assert_eq!(p[33], half::bf16::from_f32(xb[34]).to_bits());
    }
    let _ = w;
}

#[test]
fn int8_weight_only_and_w8a8() {
    let mut rng = Rng(0x18);
    let (n, k) = (19, 300);
    let wq: Vec<i8> = rng.bytes(n * k).into_iter().map(|b| b as i8).collect();
    let s = rng.f32s(n, 0.02);
    let w = Weight::Int8(Int8Weight { w: &wq, n, k, scale: Some(&s) });
    for op in [Operand::F32, Operand::Bf16] {
        check_all(&w, op, "int8", &mut rng);
    }
    let iw = Int8Weight { w: &wq, n, k, scale: None };
    let m = 3;
    let xq: Vec<i8> = rng.bytes(m * k).into_iter().map(|b| b as i8).collect();
    let epi = Epilogue { a: Factor::Scalar(0.02), b: Factor::Each(&s), bias: None };
    let mut want = vec![0f32; m * n];
    for mi in 0..m {
        for ni in 0..n {
            let acc: i64 = (0..k).map(|j| xq[mi * k + j] as i64 * wq[ni * k + j] as i64).sum();
            want[mi * n + ni] = (acc as f32) * (0.02 * s[ni]);
        }
    }
    for isa in isas() {
        let mut y = vec![0f32; m * n];
        gemm_i8(&xq, m, &iw, &epi, &mut y, isa).unwrap();
        assert_eq!(y, want, "{isa:?}"); // exact integer sums
    }
}

#[test]
fn bad_lengths_are_errors() {
    let packed = vec![0u8; 8 * 16];
    let sc = vec![0u8; 2 * 8];
    let w = Weight::W4(W4Weight { packed: &packed, n: 8, k: 32, element: Element4::E2M1, scales: Scales4::E4M3(&sc), group: 16, scale_mul: None, scale_div: None });
    let mut y = vec![0f32; 8];
    assert!(gemm(&[0.0; 31], 1, &w, Operand::F32, &Epilogue::NONE, &mut y, Isa::Scalar).is_err());
    assert!(gemm(&[0.0; 32], 1, &w, Operand::F32, &Epilogue::NONE, &mut y[..7], Isa::Scalar).is_err());
    let bad = Weight::W4(W4Weight { packed: &packed[1..], n: 8, k: 32, element: Element4::E2M1, scales: Scales4::E4M3(&sc), group: 16, scale_mul: None, scale_div: None });
    assert!(gemm(&[0.0; 32], 1, &bad, Operand::F32, &Epilogue::NONE, &mut y, Isa::Scalar).is_err());
    let b = [0f32; 3];
    let epi = Epilogue { a: Factor::One, b: Factor::One, bias: Some(&b) };
    assert!(gemm(&[0.0; 32], 1, &w, Operand::F32, &epi, &mut y, Isa::Scalar).is_err());
}

#[test]
#[ignore]
fn bench_bf16_gemv() {
    let mut rng = Rng(1);
    let (n, k) = (4096, 4096);
    let packed = rng.bytes(n * k / 2);
    let sc: Vec<u8> = rng.bytes(k / 16 * n).into_iter().map(|b| b & 0x77).collect();
    let sf: Vec<f32> = rng.f32s(k / 128 * n, 0.1);
    let w8 = rng.bytes(n * k);
    let x: Vec<f32> = rng.f32s(k, 1.0).iter().map(|v| half::bf16::from_f32(*v).to_f32()).collect();
    let mut y = vec![0f32; n];
    let rows = e4m3_rows(&sc, n, k / 16).unwrap_or_default();
    for (label, w) in [
        ("nvfp4", Weight::W4(W4Weight { packed: &packed, n, k, element: Element4::E2M1, scales: Scales4::E4M3(&sc), group: 16, scale_mul: Some(0.01), scale_div: None })),
        ("nvfp4_rows", Weight::W4(W4Weight { packed: &packed, n, k, element: Element4::E2M1, scales: Scales4::E4M3Rows(&rows), group: 16, scale_mul: Some(0.01), scale_div: None })),
        ("awq", Weight::W4(W4Weight { packed: &packed, n, k, element: Element4::Int4, scales: Scales4::F32(&sf), group: 128, scale_mul: None, scale_div: None })),
        ("fp8", Weight::Fp8(Fp8Weight { w: &w8, n, k, scales: Fp8Scales::None })),
    ] {
        for isa in [Isa::detect(), Isa::Avx512] {
            for _ in 0..3 {
                gemm(&x, 1, &w, Operand::Bf16, &Epilogue::NONE, &mut y, isa).unwrap();
            }
            let t = std::time::Instant::now();
            for _ in 0..20 {
                gemm(&x, 1, &w, Operand::Bf16, &Epilogue::NONE, &mut y, isa).unwrap();
            }
            eprintln!("{label} {isa:?}: {:?} per call, threads {}", t.elapsed() / 20, crate::pool::num_threads());
        }
    }
}

#[test]
#[ignore]
fn bench_w4_gemv() {
    let mut rng = Rng(1);
    let (n, k, g) = (4096, 4096, 16);
    let packed = rng.bytes(n * k / 2);
    let sc: Vec<u8> = rng.bytes(k / g * n).into_iter().map(|b| b & 0x77).collect();
    let w = Weight::W4(W4Weight { packed: &packed, n, k, element: Element4::E2M1, scales: Scales4::E4M3(&sc), group: g, scale_mul: Some(0.01), scale_div: None });
    let x = rng.f32s(k, 1.0);
    let mut y = vec![0f32; n];
    let mut row = vec![0f32; k];
    let isa = Isa::detect();
    let t = std::time::Instant::now();
    let mut sc = Vec::new();
    for r in 0..n { w.decode_block(isa, Operand::Bf16, r, 1, false, &mut row, &mut sc); }
    eprintln!("decode only: {:?}", t.elapsed());
    let t = std::time::Instant::now();
    for _ in 0..n / 4 { std::hint::black_box(dot::dot_1x4(isa, &x, [&row, &row, &row, &row])); }
    eprintln!("dot only: {:?}", t.elapsed());
    let t = std::time::Instant::now();
    gemm(&x, 1, &w, Operand::Bf16, &Epilogue::NONE, &mut y, isa).unwrap();
    eprintln!("gemm: {:?} threads {}", t.elapsed(), rayon::current_num_threads());
}

#[test]
fn bf16_dequant_rows_equal_the_portable_decode() {
    let mut rng = Rng(0xde);
    let (n, k) = (70, 256);
    let packed = rng.bytes(n * k / 2);
    let e4m3: Vec<u8> = rng.bytes(k / 16 * n).into_iter().map(|b| b & 0x77).collect();
    let f32s = rng.f32s(k / 64 * n, 0.1);
    let e8m0: Vec<u8> = rng.bytes(k / 32 * n).into_iter().map(|b| 120 + b % 12).collect();
    // No NaN bytes: the portable decode reads them as +-480 (see `round::e4m3_decode`).
    let w8: Vec<u8> = rng.bytes(n * k).into_iter().map(|b| if b & 0x7F == 0x7F { b & 0xF0 } else { b }).collect();
    let weights = [
        Weight::W4(W4Weight { packed: &packed, n, k, element: Element4::E2M1, scales: Scales4::E4M3(&e4m3), group: 16, scale_mul: Some(0.013), scale_div: None }),
        Weight::W4(W4Weight { packed: &packed, n, k, element: Element4::Int4, scales: Scales4::F32(&f32s), group: 64, scale_mul: None, scale_div: None }),
        Weight::W4(W4Weight { packed: &packed, n, k, element: Element4::E2M1, scales: Scales4::E8M0(&e8m0), group: 32, scale_mul: None, scale_div: None }),
        Weight::Fp8(Fp8Weight { w: &w8, n, k, scales: Fp8Scales::None }),
    ];
    for w in &weights {
        let mut want = vec![0f32; n * k];
        dequant(w, Operand::Bf16, &mut want, Isa::Scalar).unwrap();
        for isa in isas() {
            for (n0, rows) in [(0, n), (3, 40), (69, 1)] {
                let mut got = vec![0u16; rows * k];
                dequant_bf16_rows(w, n0, &mut got, isa).unwrap();
                for (i, g) in got.iter().enumerate() {
                    let e = want[n0 * k + i];
                    assert!((e.to_bits() >> 16) as u16 == *g, "{isa:?} rows {n0}+{rows} [{i}]: {g:#06x} vs {e}");
                }
            }
        }
        let mut bad = vec![0u16; 2 * k];
        assert!(dequant_bf16_rows(w, n - 1, &mut bad, Isa::Scalar).is_err());
        assert!(dequant_bf16_rows(w, 0, &mut bad[..k - 1], Isa::Scalar).is_err());
    }
}

#[test]
fn row_major_e4m3_scales_gather_the_same_values() {
    let (n, k, g) = (37, 64, 16);
    let packed = vec![0u8; n * k / 2];
    // Every non-NaN E4M3 byte, subnormals and zero included.
    let scales: Vec<u8> = (0..(k / g) * n).map(|i| (i * 7 % 256) as u8).map(|b| if b & 0x7F == 0x7F { 0x7E } else { b }).collect();
    let rows = e4m3_rows(&scales, n, k / g).unwrap();
    for (mul, div) in [(None, None), (Some(0.37f32), None), (None, Some(3.0f32))] {
        let w = W4Weight { packed: &packed, n, k, element: Element4::E2M1, scales: Scales4::E4M3(&scales), group: g, scale_mul: mul, scale_div: div };
        let wr = W4Weight { scales: Scales4::E4M3Rows(&rows), ..w };
        wr.validate().unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for n0 in [0, 5, 32] {
            let rows_here = (n - n0).min(9);
            w.gather_scales(n0, rows_here, &mut a);
            wr.gather_scales(n0, rows_here, &mut b);
            assert_eq!(a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), b.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        }
    }
    let mut nan = scales.clone();
    nan[11] = 0xFF;
    assert!(e4m3_rows(&nan, n, k / g).is_none());
    assert!(e4m3_rows(&scales, n + 1, k / g).is_none());
}
