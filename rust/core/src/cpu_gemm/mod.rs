//! Fused dequantize + GEMV/GEMM on the CPU for every weight family motensor loads.
//!
//! `y[m, n] = (sum_k x[m, k] * W[n, k]) * a[m] * b[n] + bias[n]`, with `W` read straight from the
//! packed kernel layout the loader produced (4-bit nibbles with transposed group scales, FP8
//! bytes, INT8), never materialised as a whole: each task decodes a few rows of `W` into an
//! L1-sized buffer and multiplies them with every row of `x` while they are hot.
//!
//! The numbers are those of the torch reference (`motensor/kernels/reference.py`): a weight
//! element is `v * s` computed in fp32 exactly as the reference does and then rounded to the
//! operand type the reference rounds to ([`Operand`]); only the order of the fp32 sums differs.
//!
//! Instruction sets are chosen at run time ([`Isa`]): the kernels are written once as plain
//! Rust over fixed-width lane arrays, which LLVM vectorises, and compiled a second time inside
//! `#[target_feature]` wrappers for AVX2+FMA / AVX-512; the 4-bit lookups have hand-written AVX2
//! versions (table permutes). [`Isa::Scalar`] is the portable build (SSE2 on x86-64, NEON on
//! aarch64, where NEON is the baseline) and is what tests force to compare the paths.

mod actq;
#[cfg(target_arch = "x86_64")]
mod bf16dot;
mod dot;
mod fp8;
mod int8;
mod linear;
mod round;
mod w4;
#[cfg(target_arch = "x86_64")]
mod x86;

use crate::error::{Error, Result};

pub use actq::nvfp4_fake_quant;
pub use fp8::{Fp8Scales, Fp8Weight};
pub use int8::Int8Weight;
pub use linear::{linear, ActQuant, Acts, ActsMut, Dtype, Linear};
pub use round::Operand;
pub use w4::{e4m3_rows, Element4, Scales4, W4Weight};

/// The instruction set a kernel call runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable code, compiled for the target's baseline (SSE2 / NEON).
    Scalar,
    /// x86-64 AVX2 + FMA (+ F16C).
    Avx2,
    /// x86-64 AVX-512 F/BW/VL (+ FMA, F16C); the 4-bit lookups use the AVX2 permutes.
    Avx512,
    /// AVX-512 with BF16 dot products (`vdpbf16ps`): where the operands are exactly bf16
    /// values, small-M products run on the bf16 kernels (`bf16dot.rs`); everything else as `Avx512`.
    Avx512Bf16,
}

impl Isa {
    /// The best instruction set this CPU supports (cached after the first call).
    pub fn detect() -> Isa {
        use std::sync::OnceLock;
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(detect_uncached)
    }

    /// `Scalar` when forced (tests, `MOTENSOR_CPU_KERNELS=scalar`), else [`Isa::detect`].
    pub fn resolve(force_scalar: bool) -> Isa {
        if force_scalar {
            Isa::Scalar
        } else {
            Isa::detect()
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Bf16 => "avx512_bf16",
        }
    }

    /// Ordered by capability (each includes the ones before).
    fn rank(self) -> u8 {
        match self {
            Isa::Scalar => 0,
            Isa::Avx2 => 1,
            Isa::Avx512 => 2,
            Isa::Avx512Bf16 => 3,
        }
    }

    /// Whether the AVX-512 code paths may run.
    pub fn has_avx512(self) -> bool {
        self.rank() >= Isa::Avx512.rank()
    }
}

/// What the CPU has, capped by `MOTENSOR_CPU_ISA` (`scalar`, `avx2`, `avx512`,
/// `avx512_bf16`: to compare the paths on one machine; an unknown value is ignored).
fn detect_uncached() -> Isa {
    let have = detect_cpu();
    let want = std::env::var("MOTENSOR_CPU_ISA").unwrap_or_default().trim().to_ascii_lowercase();
    let cap = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16].into_iter().find(|i| i.name() == want);
    match cap {
        Some(c) if c.rank() < have.rank() => c,
        _ => have,
    }
}

fn detect_cpu() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
        if avx2
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
        {
            if is_x86_feature_detected!("avx512bf16") {
                return Isa::Avx512Bf16;
            }
            return Isa::Avx512;
        }
        if avx2 {
            return Isa::Avx2;
        }
    }
    Isa::Scalar
}

/// A per-row (`m`) or per-column (`n`) factor of the epilogue.
#[derive(Debug, Clone, Copy)]
pub enum Factor<'a> {
    One,
    Scalar(f32),
    Each(&'a [f32]),
}

impl Factor<'_> {
    #[inline]
    fn at(&self, i: usize) -> f32 {
        match self {
            Factor::One => 1.0,
            Factor::Scalar(s) => *s,
            Factor::Each(v) => v[i],
        }
    }

    fn check(&self, len: usize, what: &str) -> Result<()> {
        match self {
            Factor::Each(v) if v.len() != len => Err(arg(format!("{what} has {} values, expected {len}", v.len()))),
            _ => Ok(()),
        }
    }

    fn is_one(&self) -> bool {
        matches!(self, Factor::One)
    }
}

/// `y = acc * (a[m] * b[n]) + bias[n]`, the reference's `_epilogue` (scale product first).
#[derive(Debug, Clone, Copy)]
pub struct Epilogue<'a> {
    pub a: Factor<'a>,
    pub b: Factor<'a>,
    pub bias: Option<&'a [f32]>,
}

impl Epilogue<'_> {
    pub const NONE: Epilogue<'static> = Epilogue { a: Factor::One, b: Factor::One, bias: None };

    #[inline]
    fn apply(&self, acc: f32, m: usize, n: usize) -> f32 {
        let y = if self.a.is_one() && self.b.is_one() {
            acc
        } else if self.a.is_one() {
            acc * self.b.at(n)
        } else if self.b.is_one() {
            acc * self.a.at(m)
        } else {
            acc * (self.a.at(m) * self.b.at(n))
        };
        match self.bias {
            Some(b) => y + b[n],
            None => y,
        }
    }
}

/// A packed weight of one of the families.
#[derive(Debug, Clone, Copy)]
pub enum Weight<'a> {
    W4(W4Weight<'a>),
    Fp8(Fp8Weight<'a>),
    Int8(Int8Weight<'a>),
}

impl Weight<'_> {
    pub fn n(&self) -> usize {
        match self {
            Weight::W4(w) => w.n,
            Weight::Fp8(w) => w.n,
            Weight::Int8(w) => w.n,
        }
    }

    pub fn k(&self) -> usize {
        match self {
            Weight::W4(w) => w.k,
            Weight::Fp8(w) => w.k,
            Weight::Int8(w) => w.k,
        }
    }

    fn validate(&self) -> Result<()> {
        match self {
            Weight::W4(w) => w.validate(),
            Weight::Fp8(w) => w.validate(),
            Weight::Int8(w) => w.validate(),
        }
    }

    /// 4-bit rows are decoded de-interleaved (even k, then odd k): see [`w4`].
    fn deinterleaved(&self) -> bool {
        matches!(self, Weight::W4(_))
    }

    /// Per-task preparation: the effective 4-bit group scales of rows `n0..n0 + rows`
    /// (`[rows, k / group]`, see `W4Weight::gather_scales`); nothing for the other families.
    fn gather(&self, n0: usize, rows: usize, scratch: &mut Vec<f32>) {
        if let Weight::W4(w) = self {
            w.gather_scales(n0, rows, scratch);
        }
    }

    /// Number of gathered scales per row.
    fn gathered_per_row(&self) -> usize {
        match self {
            Weight::W4(w) => w.k / w.group,
            _ => 0,
        }
    }

    /// Decodes rows `n0..n0 + rows` into `out` (`[rows, k]`); `gathered` holds their
    /// `gather`ed scales.
    #[allow(clippy::too_many_arguments)]
    fn decode_rows(&self, isa: Isa, op: Operand, n0: usize, rows: usize, natural: bool, out: &mut [f32], gathered: &[f32]) {
        let k = self.k();
        let ng = self.gathered_per_row();
        for r in 0..rows {
            let dst = &mut out[r * k..(r + 1) * k];
            match self {
                Weight::W4(w) => w.decode_row(isa, op, n0 + r, &gathered[r * ng..(r + 1) * ng], natural, dst),
                Weight::Fp8(w) => fp8::decode_row(w, isa, op, n0 + r, dst),
                Weight::Int8(w) => int8::decode_row(w, isa, op, n0 + r, dst),
            }
        }
    }

    /// `gather` + `decode_rows`.
    #[allow(clippy::too_many_arguments)]
    fn decode_block(&self, isa: Isa, op: Operand, n0: usize, rows: usize, natural: bool, out: &mut [f32], scratch: &mut Vec<f32>) {
        self.gather(n0, rows, scratch);
        self.decode_rows(isa, op, n0, rows, natural, out, scratch);
    }
}

pub(crate) fn arg(msg: String) -> Error {
    Error::Argument { msg: format!("cpu gemm: {msg}") }
}

/// Rows of `W` decoded per group inside a task (the dot kernels take four at a time).
const ROWS: usize = 4;
/// Rows of `W` per rayon task: enough work to amortise scheduling, small enough to balance.
const TASK_ROWS: usize = 32;

/// `out[m, n] = epilogue(x[m, :] . W[n, :])`; `x` fp32 `[m, k]`, `out` fp32 `[m, n]`.
pub fn gemm(x: &[f32], m: usize, w: &Weight, op: Operand, epi: &Epilogue, out: &mut [f32], isa: Isa) -> Result<()> {
    let (n, k) = (w.n(), w.k());
    w.validate()?;
    check_common(x.len(), m, n, k, epi, out.len())?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    crate::fill::num_threads();
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Bf16 && m <= BF16_MAX_M {
        if let Some(xb) = bf16dot::takes(w, op).and_then(|order| bf16dot::pack_x(x, m, k, order)) {
            let mut out_t = if m == 1 { Vec::new() } else { vec![0f32; n * m] };
            let target: &mut [f32] = if m == 1 { &mut out[..] } else { &mut out_t };
            gemm_bf16(&xb, m, w, epi, target);
            if m > 1 {
                transpose_into(&out_t, n, m, out);
            }
            return Ok(());
        }
    }
    // The activations in the order the decoded rows come in.
    let xp: Vec<f32>;
    let xs: &[f32] = if w.deinterleaved() {
        xp = deinterleave_rows(x, m, k);
        &xp
    } else {
        x
    };
    // Tasks own disjoint blocks of output *columns*; they write into a transposed [n, m]
    // buffer (contiguous per task) that is transposed back at the end (free for m = 1).
    let mut out_t = if m == 1 { Vec::new() } else { vec![0f32; n * m] };
    let target: &mut [f32] = if m == 1 { &mut out[..] } else { &mut out_t };
    let fused = m <= FUSED_MAX_M * FUSED_CHUNKS
        && match w {
            Weight::W4(w4) => w4.fused_dot(isa),
            Weight::Fp8(w8) => w8.fused_dot(isa),
            Weight::Int8(_) => false,
        };
    if fused {
        gemm_fused(xs, m, w, op, epi, target, isa);
        if m > 1 {
            transpose_into(&out_t, n, m, out);
        }
        return Ok(());
    }
    run_tasks(target, TASK_ROWS * m, parallel(w, m), || (vec![0f32; ROWS * k], Vec::new()), |(buf, scratch), (t, chunk)| {
        let n0 = t * TASK_ROWS;
        let rows = chunk.len() / m;
        w.gather(n0, rows, scratch);
        let ng = w.gathered_per_row();
        let mut r = 0;
        while r < rows {
            let nr = ROWS.min(rows - r);
            w.decode_rows(isa, op, n0 + r, nr, false, &mut buf[..nr * k], &scratch[r * ng..]);
            for i in nr..ROWS {
                buf[i * k..(i + 1) * k].fill(0.0);
            }
            let ws: [&[f32]; ROWS] = [&buf[..k], &buf[k..2 * k], &buf[2 * k..3 * k], &buf[3 * k..4 * k]];
            let mut mi = 0;
            while mi < m {
                if mi + 1 < m {
                    let acc = dot::dot_2x4(isa, [&xs[mi * k..(mi + 1) * k], &xs[(mi + 1) * k..(mi + 2) * k]], ws);
                    for (dm, row) in acc.iter().enumerate() {
                        for i in 0..nr {
                            chunk[(r + i) * m + mi + dm] = epi.apply(row[i], mi + dm, n0 + r + i);
                        }
                    }
                    mi += 2;
                } else {
                    let acc = dot::dot_1x4(isa, &xs[mi * k..(mi + 1) * k], ws);
                    for i in 0..nr {
                        chunk[(r + i) * m + mi] = epi.apply(acc[i], mi, n0 + r + i);
                    }
                    mi += 1;
                }
            }
            r += nr;
        }
    });
    if m > 1 {
        transpose_into(&out_t, n, m, out);
    }
    Ok(())
}

/// Multiply-adds below which a product runs on the calling thread: waking motensor's pool costs
/// ~10-20 us, more than a 2^18-weight GEMV takes on one core; torch's OpenMP team (`omp.rs`),
/// awake between torch ops, starts in ~1-2 us, worth it from 2^16.
const PARALLEL_MIN_WORK: usize = 1 << 18;
const PARALLEL_MIN_WORK_OMP: usize = 1 << 16;

fn parallel(w: &Weight, m: usize) -> bool {
    let min = if crate::omp::available() { PARALLEL_MIN_WORK_OMP } else { PARALLEL_MIN_WORK };
    w.n().saturating_mul(w.k()).saturating_mul(m) >= min
}

/// `f(state, (task index, chunk))` over `chunk`-sized pieces of `target`: in order on the calling
/// thread, or, when `parallel`, by every thread of torch's OpenMP team (`omp.rs`; threads that are
/// awake between torch ops) or else of motensor's pool (`pool.rs`: rebuilt after a fork), the
/// calling thread included, taking pieces from one counter: the caller starts at once and a
/// late-waking worker costs nothing. Each thread builds `init` once, when it takes a piece.
pub(crate) fn run_tasks<T, S, I, F>(target: &mut [T], chunk: usize, parallel: bool, init: I, f: F)
where
    T: Send,
    I: Fn() -> S + Sync + Send,
    F: Fn(&mut S, (usize, &mut [T])) + Sync + Send,
{
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    let chunk = chunk.max(1);
    if !parallel || target.len() <= chunk {
        let mut state = init();
        target.chunks_mut(chunk).enumerate().for_each(|t| f(&mut state, t));
        return;
    }
    // One lock per piece, each taken exactly once (the counter hands every index out once).
    let parts: Vec<Mutex<&mut [T]>> = target.chunks_mut(chunk).map(Mutex::new).collect();
    let next = AtomicUsize::new(0);
    let work = || {
        let mut state: Option<S> = None;
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(part) = parts.get(i) else { break };
            let mut piece = part.lock().unwrap_or_else(|p| p.into_inner());
            f(state.get_or_insert_with(&init), (i, &mut piece));
        }
    };
    // Torch's OpenMP team where the process has one (`omp.rs`), else motensor's pool.
    if crate::omp::run(&work) {
        return;
    }
    let pool = crate::pool::pool();
    let threads = pool.current_num_threads();
    if threads < 2 {
        work();
        return;
    }
    pool.in_place_scope(|s| {
        for _ in 1..threads.min(parts.len()) {
            s.spawn(|_| work());
        }
        work();
    });
}

/// Activation rows up to which the bf16 kernels run (in calls of `bf16dot::MAX_ROWS` rows, each
/// decoding the weight again): the dispatcher's fused bounds (16; 64 for FP8 x FP8).
const BF16_MAX_M: usize = 64;

/// The bf16 GEMV / small-M GEMM (`bf16dot.rs`): `xb` packed by `bf16dot::pack_x`, `target` `[n, m]`.
#[cfg(target_arch = "x86_64")]
fn gemm_bf16(xb: &[u16], m: usize, w: &Weight, epi: &Epilogue, target: &mut [f32]) {
    let k = w.k();
    let ng = w.gathered_per_row();
    let rows_x: Vec<&[u16]> = xb.chunks_exact(k).collect();
    run_tasks(target, TASK_ROWS * m, parallel(w, m), Vec::new, |scratch, (t, chunk)| {
        let n0 = t * TASK_ROWS;
        let rows = chunk.len() / m;
        w.gather(n0, rows, scratch);
        let mut acc = [0f32; bf16dot::MAX_ROWS];
        for r in 0..rows {
            let sc = if ng > 0 { &scratch[r * ng..(r + 1) * ng] } else { &[][..] };
            for (ci, xs) in rows_x.chunks(bf16dot::MAX_ROWS).enumerate() {
                bf16dot::dot_row(w, n0 + r, sc, xs, &mut acc);
                for (i, v) in acc.iter().take(xs.len()).enumerate() {
                    let mi = ci * bf16dot::MAX_ROWS + i;
                    chunk[r * m + mi] = epi.apply(*v, mi, n0 + r);
                }
            }
        }
    });
}

/// Activation rows up to which 4-bit and FP8 weights are multiplied where they are decoded (in
/// registers, per activation row); above, a decoded block is reused across rows instead.
const FUSED_MAX_M: usize = 4;
/// Up to this many chunks of `FUSED_MAX_M` activation rows a weight row is decoded again per
/// chunk (still cheaper than storing decoded rows up to M = 16, the dispatcher's CPU bound).
const FUSED_CHUNKS: usize = 4;

/// One weight row against `M` activation rows, decoded in registers.
fn dot_row<const M: usize>(w: &Weight, isa: Isa, op: Operand, row: usize, scales: &[f32], xs: [&[f32]; M]) -> Option<[f32; M]> {
    match w {
        Weight::W4(w4) => w4.dot_row::<M>(isa, op, row, scales, xs),
        Weight::Fp8(w8) => w8.dot_row::<M>(isa, op, row, xs),
        Weight::Int8(_) => None,
    }
}

/// The GEMV / small-M GEMM with the weight decoded in registers (`dot_row` of the family): no
/// decoded row is stored, each weight byte is read once per call. `target` is `[n, m]`; `xs` in
/// the family's order (de-interleaved for 4-bit).
fn gemm_fused(xs: &[f32], m: usize, w: &Weight, op: Operand, epi: &Epilogue, target: &mut [f32], isa: Isa) {
    let k = w.k();
    let ng = w.gathered_per_row();
    let x = |i: usize| &xs[i * k..(i + 1) * k];
    run_tasks(target, TASK_ROWS * m, parallel(w, m), || (Vec::new(), Vec::new()), |(scratch, row_buf), (t, chunk)| {
        let n0 = t * TASK_ROWS;
        let rows = chunk.len() / m;
        w.gather(n0, rows, scratch);
        for r in 0..rows {
            let sc = if ng > 0 { &scratch[r * ng..(r + 1) * ng] } else { &[][..] };
            let row = n0 + r;
            let mut m0 = 0;
            while m0 < m {
                let mc = FUSED_MAX_M.min(m - m0);
                let fused = match mc {
                    1 => pad(dot_row::<1>(w, isa, op, row, sc, [x(m0)])),
                    2 => pad(dot_row::<2>(w, isa, op, row, sc, [x(m0), x(m0 + 1)])),
                    3 => pad(dot_row::<3>(w, isa, op, row, sc, [x(m0), x(m0 + 1), x(m0 + 2)])),
                    _ => pad(dot_row::<4>(w, isa, op, row, sc, [x(m0), x(m0 + 1), x(m0 + 2), x(m0 + 3)])),
                };
                // Not taken when the caller checked `fused_dot`; kept so that no path returns zeros.
                let acc = fused.unwrap_or_else(|| {
                    row_buf.resize(k, 0.0);
                    w.decode_rows(isa, op, row, 1, false, row_buf, sc);
                    std::array::from_fn(|i| {
                        if i < mc {
                            x(m0 + i).iter().zip(row_buf.iter()).map(|(a, b)| a * b).sum()
                        } else {
                            0.0
                        }
                    })
                });
                for (i, v) in acc.iter().take(mc).enumerate() {
                    chunk[r * m + m0 + i] = epi.apply(*v, m0 + i, row);
                }
                m0 += mc;
            }
        }
    });
}

/// `dot_row`'s `M` results in a fixed-size array.
fn pad<const M: usize>(v: Option<[f32; M]>) -> Option<[f32; FUSED_MAX_M]> {
    let v = v?;
    let mut out = [0f32; FUSED_MAX_M];
    out[..M].copy_from_slice(&v);
    Some(out)
}

/// W8A8 INT8: `out[m, n] = epilogue(sum_k xq[m, k] * W[n, k])` with exact i32 sums.
pub fn gemm_i8(xq: &[i8], m: usize, w: &Int8Weight, epi: &Epilogue, out: &mut [f32], isa: Isa) -> Result<()> {
    let (n, k) = (w.n, w.k);
    w.validate()?;
    check_common(xq.len(), m, n, k, epi, out.len())?;
    if k > (i32::MAX as usize) / (128 * 128) {
        return Err(arg(format!("K={k} is too large for exact i32 sums")));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    crate::fill::num_threads();
    let mut out_t = vec![0f32; n * m];
    let par = n.saturating_mul(k).saturating_mul(m) >= PARALLEL_MIN_WORK;
    run_tasks(&mut out_t, TASK_ROWS * m, par, || (), |_, (t, chunk)| {
        let n0 = t * TASK_ROWS;
        for (i, col) in chunk.chunks_mut(m).enumerate() {
            let wrow = &w.w[(n0 + i) * k..(n0 + i + 1) * k];
            for (mi, y) in col.iter_mut().enumerate() {
                let acc = dot::dot_i8(isa, &xq[mi * k..(mi + 1) * k], wrow);
                // The reference sums in float64 and rounds once to fp32: the exact i32 sum
                // converted with round-to-nearest is the same number.
                *y = epi.apply(acc as f32, mi, n0 + i);
            }
        }
    });
    transpose_into(&out_t, n, m, out);
    Ok(())
}

/// The whole weight dequantized to fp32 `[n, k]` in natural order (rounded to `op`), for the
/// dequantize + BLAS path the dispatcher takes at larger M.
pub fn dequant(w: &Weight, op: Operand, out: &mut [f32], isa: Isa) -> Result<()> {
    w.validate()?;
    let (n, k) = (w.n(), w.k());
    if out.len() != n * k {
        return Err(arg(format!("output has {} values, expected {n} x {k}", out.len())));
    }
    if n == 0 || k == 0 {
        return Ok(());
    }
    crate::fill::num_threads();
    run_tasks(out, TASK_ROWS * k, true, Vec::new, |scratch, (t, dst)| {
        w.decode_block(isa, op, t * TASK_ROWS, dst.len() / k, true, dst, scratch)
    });
    Ok(())
}

/// Like [`dequant`] but to bf16 bits (`op` must round to bf16 or finer: the values are exact).
pub fn dequant_bf16(w: &Weight, out: &mut [u16], isa: Isa) -> Result<()> {
    dequant_bf16_rows(w, 0, out, isa)
}

/// Rows `n0..n0 + out.len() / k` of the weight as bf16 bits (natural order), as [`dequant_bf16`]
/// computes them: the dequantize + bf16 BLAS path decodes a weight block by block into a buffer
/// that stays in cache.
pub fn dequant_bf16_rows(w: &Weight, n0: usize, out: &mut [u16], isa: Isa) -> Result<()> {
    w.validate()?;
    let (n, k) = (w.n(), w.k());
    if k == 0 || !out.len().is_multiple_of(k) || n0.checked_add(out.len() / k).is_none_or(|end| end > n) {
        return Err(arg(format!("rows {n0}.. ({} values) outside the {n} x {k} weight", out.len())));
    }
    if out.is_empty() {
        return Ok(());
    }
    crate::fill::num_threads();
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Bf16 && bf16dot::takes(w, Operand::Bf16).is_some() {
        let ng = w.gathered_per_row();
        run_tasks(out, TASK_ROWS * k, true, Vec::new, |scratch, (t, dst)| {
            let r0 = n0 + t * TASK_ROWS;
            let rows = dst.len() / k;
            w.gather(r0, rows, scratch);
            for (r, d) in dst.chunks_exact_mut(k).enumerate() {
                let sc = if ng > 0 { &scratch[r * ng..(r + 1) * ng] } else { &[][..] };
                bf16dot::decode_row(w, r0 + r, sc, d);
            }
        });
        return Ok(());
    }
    run_tasks(
        out,
        TASK_ROWS * k,
        true,
        || (vec![0f32; TASK_ROWS * k], Vec::new()),
        |(buf, scratch), (t, dst)| {
            let buf = &mut buf[..dst.len()];
            w.decode_block(isa, Operand::Bf16, n0 + t * TASK_ROWS, dst.len() / k, true, buf, scratch);
            // Already rounded to bf16: the upper half of the fp32 bits is the bf16 value.
            for (d, s) in dst.iter_mut().zip(buf.iter()) {
                *d = (s.to_bits() >> 16) as u16;
            }
        },
    );
    Ok(())
}

fn check_common(x_len: usize, m: usize, n: usize, k: usize, epi: &Epilogue, out_len: usize) -> Result<()> {
    let mk = m.checked_mul(k).ok_or_else(|| arg("M x K overflows".into()))?;
    let mn = m.checked_mul(n).ok_or_else(|| arg("M x N overflows".into()))?;
    if x_len != mk {
        return Err(arg(format!("activations have {x_len} values, expected {m} x {k}")));
    }
    if out_len != mn {
        return Err(arg(format!("output has {out_len} values, expected {m} x {n}")));
    }
    epi.a.check(m, "per-row scale")?;
    epi.b.check(n, "per-channel scale")?;
    if let Some(b) = epi.bias {
        if b.len() != n {
            return Err(arg(format!("bias has {} values, expected {n}", b.len())));
        }
    }
    Ok(())
}

/// Each row `[x0 x1 x2 ...]` -> `[x0 x2 ... | x1 x3 ...]` (the 4-bit decoded-row order).
fn deinterleave_rows(x: &[f32], m: usize, k: usize) -> Vec<f32> {
    let h = k / 2;
    let mut xp = vec![0f32; m * k];
    for (src, dst) in x.chunks_exact(k).zip(xp.chunks_exact_mut(k)) {
        let (ev, od) = dst.split_at_mut(h);
        for j in 0..h {
            ev[j] = src[2 * j];
            od[j] = src[2 * j + 1];
        }
    }
    xp
}

fn transpose_into(src: &[f32], n: usize, m: usize, out: &mut [f32]) {
    for (ni, col) in src.chunks_exact(m).enumerate() {
        for (mi, v) in col.iter().enumerate() {
            out[mi * n + ni] = *v;
        }
    }
}

#[cfg(test)]
mod tests;
