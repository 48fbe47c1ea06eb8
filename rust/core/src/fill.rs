//! Executes load-plan pieces into a caller-provided buffer (a pinned staging buffer, or the
//! destination arena itself for CPU loads), re-laying-out while reading, on all cores.
//!
//! Bytes come in by `pread` (see `shard.rs` for why not a memory map): plain copies are read
//! straight into their place in `dst`; re-layouts read their source span into a per-thread
//! scratch buffer of about one piece (bounded by [`SPLIT_BYTES`] or one transposed matrix block
//! of [`TRANSPOSE_BLOCK_BYTES`]) and re-lay from there. Scales are validated on the bytes
//! as they are written (`scales.rs`).

use std::cell::RefCell;

use rayon::prelude::*;

use crate::checkpoint::Checkpoint;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::formats::Role;
use crate::header::TensorInfo;
use crate::numeric::read_f32;
use crate::plan::{LoadItem, Piece, Transform, Window};
use crate::pool;
use crate::scales::{self, Rule};

/// Pieces larger than this are split so that rayon can spread one big tensor over all cores.
pub const SPLIT_BYTES: u64 = 1 << 20;

/// Fills `dst` with `pieces` (offsets relative to `dst`). The pieces must not overlap.
pub fn fill(ck: &Checkpoint, items: &[LoadItem], pieces: &[Piece], dst: &mut [u8]) -> Result<()> {
    num_threads();
    let mut work: Vec<Piece> = Vec::with_capacity(pieces.len());
    for p in pieces {
        let it = items
            .get(p.item)
            .ok_or_else(|| Error::argument(format!("piece refers to item {} of {}", p.item, items.len())))?;
        if p.out_end > it.out_bytes || p.out_begin > p.out_end {
            return Err(Error::argument(format!(
                "piece [{}, {}) lies outside '{}' ({} bytes)",
                p.out_begin, p.out_end, it.tensor, it.out_bytes
            )));
        }
        // Split along the item's granule so every sub-piece starts on a row. A transpose is
        // split only at whole matrices (experts): a piece holding some of a matrix's output
        // rows reads every source row of it, so cutting inside one would read it repeatedly.
        let unit = match it.transform {
            Transform::Transpose { rows, cols, elem } => (rows * cols * elem).max(it.granule),
            _ => it.granule,
        };
        let step = (SPLIT_BYTES / unit).max(1) * unit;
        let mut b = p.out_begin;
        while b < p.out_end {
            let e = (b + step).min(p.out_end);
            work.push(Piece {
                item: p.item,
                out_begin: b,
                out_end: e,
                dst: p.dst + (b - p.out_begin),
            });
            b = e;
        }
    }
    work.sort_by_key(|p| p.dst);

    // Carve `dst` into disjoint mutable slices, one per piece, so the parallel writes need no
    // shared mutable state.
    let mut slices: Vec<(&mut [u8], Piece)> = Vec::with_capacity(work.len());
    let mut rest: &mut [u8] = dst;
    let mut consumed = 0u64;
    for p in work {
        if p.dst < consumed {
            return Err(Error::argument("load pieces overlap in the destination buffer"));
        }
        let skip = (p.dst - consumed) as usize;
        let len = (p.out_end - p.out_begin) as usize;
        if skip + len > rest.len() {
            return Err(Error::argument(format!(
                "destination buffer too small: piece of '{}' ends at byte {}",
                items[p.item].tensor,
                p.dst + len as u64
            )));
        }
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(skip);
        let (mine, tail) = tail.split_at_mut(len);
        rest = tail;
        consumed = p.dst + len as u64;
        slices.push((mine, p));
    }

    pool::install(|| {
        slices
            .into_par_iter()
            .try_for_each(|(out, p)| fill_piece(ck, &items[p.item], p.out_begin, out))
    })
}

/// Fills a whole arena (`dst` of at least the plan's total bytes) with every item at its offset.
pub fn fill_all(ck: &Checkpoint, items: &[LoadItem], dst: &mut [u8]) -> Result<()> {
    let pieces: Vec<Piece> = items
        .iter()
        .enumerate()
        .map(|(i, it)| Piece {
            item: i,
            out_begin: 0,
            out_end: it.out_bytes,
            dst: it.offset,
        })
        .collect();
    fill(ck, items, &pieces, dst)
}

/// Asks the kernel to start reading the source bytes of these pieces (page-cache readahead),
/// so that the next batch's reads overlap the current batch's work.
pub fn prefetch(ck: &Checkpoint, items: &[LoadItem], pieces: &[Piece]) {
    for p in pieces {
        // A sliced item (a tensor-parallel rank's part) reads a fraction of its tensor: asking
        // the kernel for all of it would read the other ranks' bytes too.
        if let Some(it) = items.get(p.item).filter(|it| it.window.is_full()) {
            if let Ok((shard, info)) = ck.locate(&it.tensor) {
                shard.will_need(info);
            }
        }
    }
}

/// Largest source block a transpose reads at once (whole source rows, at least one).
pub const TRANSPOSE_BLOCK_BYTES: usize = 256 << 10;

thread_local! {
    /// Source bytes of a re-layout piece; kept per worker thread so pieces reuse it.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a scratch buffer of exactly `len` bytes (contents unspecified).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < len {
            buf.resize(len, 0);
        }
        f(&mut buf[..len])
    })
}

/// Bytes the fills of this process have read out of checkpoint files (see [`source_bytes_read`]).
static SOURCE_BYTES_READ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Bytes of checkpoint data every fill of this process has read so far, counted at each read
/// (a tensor-parallel rank reads only its slices; this measures it rather than trusting the plan).
pub fn source_bytes_read() -> u64 {
    SOURCE_BYTES_READ.load(std::sync::atomic::Ordering::Relaxed)
}

fn count_read(n: usize) {
    SOURCE_BYTES_READ.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
}

/// Reads bytes `[at, at + dst.len())` of window `w` of a stored tensor, as if the window were a
/// dense `[lead, nrows, ncols]` tensor of its own: one read per window row segment, through
/// `read_stored` (which reads bytes of the stored tensor). Every transform then runs on the
/// window exactly as on a whole tensor.
fn read_window(read_stored: &Reader, w: &Window, at: u64, dst: &mut [u8]) -> Result<()> {
    let row = w.ncols * w.elem;
    let (mut done, mut pos) = (0usize, at);
    while done < dst.len() {
        if row == 0 || w.nrows == 0 {
            return Err(Error::argument("read past the end of an empty window"));
        }
        let (g, c) = (pos / row, pos % row);
        let (e, r) = (g / w.nrows, g % w.nrows);
        if e >= w.lead {
            return Err(Error::argument(format!("read at {pos} past the end of a window of {} bytes", w.src_bytes())));
        }
        let take = ((row - c) as usize).min(dst.len() - done);
        read_stored(w.at(e, r, 0) + c, &mut dst[done..done + take])?;
        done += take;
        pos += take as u64;
    }
    Ok(())
}

fn fill_piece(ck: &Checkpoint, it: &LoadItem, out_begin: u64, out: &mut [u8]) -> Result<()> {
    let (shard, info) = ck.locate(&it.tensor)?;
    let ob = out_begin as usize;
    let stored = |at: u64, dst: &mut [u8]| {
        shard.read_into(info, at, dst)?;
        count_read(dst.len());
        Ok(())
    };
    let full = it.window.is_full();
    let w = it.window;
    let stored_bytes = w.lead.saturating_mul(w.rows).saturating_mul(w.cols).saturating_mul(w.elem);
    if !full && stored_bytes > info.nbytes() {
        return Err(short_source(&it.tensor, stored_bytes as usize, info.nbytes() as usize));
    }
    // The source the transforms see: the whole stored tensor, or the item's window of it.
    let (src_len, read): (u64, Box<Reader>) = if full {
        (info.nbytes(), Box::new(stored))
    } else {
        (w.src_bytes(), Box::new(move |at: u64, dst: &mut [u8]| read_window(&stored, &w, at, dst)))
    };
    match it.transform {
        Transform::Copy => {
            if (ob + out.len()) as u64 > src_len {
                return Err(short_source(&it.tensor, ob + out.len(), src_len as usize));
            }
            read(out_begin, out)?;
            check_scales(ck, it, info, out)?;
        }
        Transform::ScalarToF32 { from } => {
            let mut raw = [0u8; 8];
            let n = from.size();
            if n == 0 || n > raw.len() || info.nbytes() < n as u64 {
                return Err(short_source(&it.tensor, n, info.nbytes() as usize));
            }
            // Every piece of the 4-byte output reads the scalar again; count it once.
            shard.read_into(info, 0, &mut raw[..n])?;
            if ob == 0 {
                count_read(n);
            }
            check_scales(ck, it, info, &raw[..n])?;
            let bytes = read_f32(&raw[..n], from, 0).to_le_bytes();
            out.copy_from_slice(&bytes[ob..ob + out.len()]);
        }
        Transform::Int4ToKPacked { n, k } => int4_piece(&*read, src_len, &it.tensor, n as usize, k as usize, ob, out)?,
        Transform::Transpose { rows, cols, elem } => {
            let shape = (rows as usize, cols as usize, elem as usize);
            // Scales are checked on each source block as it is read into the (small, cache-hot)
            // scratch buffer, not on `out` afterwards: a piece's output is a whole matrix, up to
            // a few MiB, which a second pass would read back from memory (that pass cost about
            // as much as the check itself; benches/validate_scales.py). A piece covers whole
            // matrices, so the blocks it reads are exactly its elements.
            let checked = |at: u64, dst: &mut [u8]| -> Result<()> {
                read(at, dst)?;
                check_scales(ck, it, info, dst)
            };
            transpose_piece(&checked, src_len, &it.tensor, shape, ob, out, TRANSPOSE_BLOCK_BYTES)?;
        }
    }
    Ok(())
}

/// INT4 re-pack of output rows `[ob / (k/2), ..)`: reads the contiguous source rows they take
/// their nibbles from, then re-packs.
/// Reads bytes `[at, at + dst.len())` of the source tensor.
type Reader<'a> = dyn Fn(u64, &mut [u8]) -> Result<()> + 'a;

fn int4_piece(read: &Reader, src_len: u64, tensor: &str, n: usize, k: usize, ob: usize, out: &mut [u8]) -> Result<()> {
    let half_k = k / 2;
    if half_k == 0 || !n.is_multiple_of(2) || !ob.is_multiple_of(half_k) || !out.len().is_multiple_of(half_k) {
        return Err(Error::argument(format!(
            "piece of '{tensor}' does not start and end on output rows of {half_k} bytes"
        )));
    }
    if out.is_empty() {
        return Ok(());
    }
    // Pieces start on output rows (granule = K/2). Output row r (expert r / n, row r % n) takes
    // one nibble of every byte of source row (e * N/2 + ni/2) of the [*, N/2, K] buffer: the
    // low nibble for even ni, the high one for odd ni. Consecutive output rows map to
    // non-decreasing, contiguous source rows (N is even), so one read covers the piece.
    let row0 = ob / half_k;
    let nrows = out.len() / half_k;
    let src_row = |r: usize| (r / n) * (n / 2) + (r % n) / 2;
    let (first, last) = (src_row(row0), src_row(row0 + nrows - 1));
    let (sb, se) = (first * k, (last + 1) * k);
    if se as u64 > src_len {
        return Err(short_source(tensor, se, src_len as usize));
    }
    with_scratch(se - sb, |src| -> Result<()> {
        read(sb as u64, src)?;
        for (ri, orow) in out.chunks_mut(half_k).enumerate() {
            let r = row0 + ri;
            let base = (src_row(r) - first) * k;
            let srow = &src[base..base + k];
            if (r % n).is_multiple_of(2) {
                int4_row::<0>(srow, orow);
            } else {
                int4_row::<4>(srow, orow);
            }
        }
        Ok(())
    })
}

/// `[*, rows, cols] -> [*, cols, rows]` of output rows `[ob / (rows*elem), ..)`: for each matrix
/// (expert) the piece touches, reads blocks of whole source rows into scratch and scatters the
/// piece's columns of each block into the output.
fn transpose_piece(
    read: &Reader,
    src_len: u64,
    tensor: &str,
    (rows, cols, elem): (usize, usize, usize),
    ob: usize,
    out: &mut [u8],
    block_bytes: usize,
) -> Result<()> {
    let row_bytes = rows * elem;
    let needed = src_rows_needed(ob, out.len(), row_bytes, rows, cols, elem);
    if (needed as u64) > src_len {
        return Err(short_source(tensor, needed, src_len as usize));
    }
    if out.is_empty() || row_bytes == 0 || cols == 0 {
        return Ok(());
    }
    if !ob.is_multiple_of(row_bytes) || !out.len().is_multiple_of(row_bytes) || !matches!(elem, 1 | 2 | 4) {
        // Any other cut (no plan makes one): read the whole matrices touched, transpose by
        // element.
        let mat = rows * cols * elem;
        let (e0, e1) = (ob / mat, (ob + out.len() - 1) / mat + 1);
        return with_scratch((e1 - e0) * mat, |src| -> Result<()> {
            read((e0 * mat) as u64, src)?;
            transpose_elements(src, out, rows, cols, elem, ob - e0 * mat);
            Ok(())
        });
    }
    let src_row_bytes = cols * elem;
    let block_rows = (block_bytes / src_row_bytes).clamp(1, rows);
    let nout = out.len() / row_bytes;
    let first = ob / row_bytes;
    let mut i = 0;
    while i < nout {
        let g = first + i;
        let (e, c0) = (g / cols, g % cols);
        // Output rows of this piece that belong to matrix `e`: columns c0 .. c0 + run.
        let run = (cols - c0).min(nout - i);
        let block = &mut out[i * row_bytes..(i + run) * row_bytes];
        let mut r0 = 0;
        while r0 < rows {
            let nr = block_rows.min(rows - r0);
            let at = ((e * rows + r0) * cols * elem) as u64;
            with_scratch(nr * src_row_bytes, |src| -> Result<()> {
                read(at, src)?;
                match elem {
                    1 => transpose_block::<1>(src, block, rows, cols, c0, r0, nr),
                    2 => transpose_block::<2>(src, block, rows, cols, c0, r0, nr),
                    _ => transpose_block::<4>(src, block, rows, cols, c0, r0, nr),
                }
                Ok(())
            })?;
            r0 += nr;
        }
        i += run;
    }
    Ok(())
}

/// Validates the bytes of a scale item (raw elements of the tensor's stored dtype) if the
/// checkpoint validates scales.
fn check_scales(ck: &Checkpoint, it: &LoadItem, info: &TensorInfo, bytes: &[u8]) -> Result<()> {
    if !ck.validate_scales {
        return Ok(());
    }
    let rule = match it.role {
        Some(Role::WeightScale | Role::PreQuantScale) if !matches!(it.transform, Transform::ScalarToF32 { .. }) => {
            Rule::NonNegative
        }
        Some(Role::WeightScale | Role::WeightScale2 | Role::InputScale) => Rule::Positive,
        None if it.tensor.ends_with("k_scale") || it.tensor.ends_with("v_scale") => Rule::Positive,
        _ => return Ok(()),
    };
    match scales::first_bad(bytes, scale_dtype(info.dtype), rule) {
        None => Ok(()),
        Some((i, v)) => {
            let module = it.module.clone().unwrap_or_else(|| it.tensor.rsplit_once('.').map_or("", |m| m.0).to_string());
            let algo = ck
                .module(&module)
                .map(|m| m.spec.name.to_string())
                .or_else(|| ck.quant.as_ref().and_then(|q| q.kv_cache_quant_algo.clone()))
                .unwrap_or_default();
            // `i` counts elements of this piece (of the source block, for a transpose); fine for naming the problem.
            Err(ck.bad_scale(&it.tensor, &module, &algo, rule, i, v))
        }
    }
}

/// Scales stored as U8 are E8M0 exponents (MXFP4/MXFP8); other dtypes are what they say.
fn scale_dtype(d: DType) -> DType {
    d
}

fn short_source(tensor: &str, needed: usize, have: usize) -> Error {
    Error::argument(format!("'{tensor}' holds {have} bytes but its re-layout reads {needed}"))
}

/// Bytes of source a transpose piece reads at most: up to the end of the last expert it touches.
fn src_rows_needed(ob: usize, len: usize, row_bytes: usize, rows: usize, cols: usize, elem: usize) -> usize {
    if len == 0 || row_bytes == 0 || cols == 0 {
        return 0;
    }
    let last_out_row = (ob + len - 1) / row_bytes;
    (last_out_row / cols + 1) * rows * cols * elem
}

// The re-layout inner loops below were rewritten for speed (issue 3, motensor.load): the first
// versions divided per element and, on the 2-core CI box, transposed 1-byte NVFP4 block scales
// at 0.27 GB per CPU-second and re-packed INT4 at 1.1, against 11 for a plain copy. The 0.44 GB
// of block scales of an 8B NVFP4 checkpoint alone would then have kept 16 cores busy for 0.1 s,
// as long as the whole 6 GB takes at the 53 GB/s H2D limit. Figures after: benches/README.md.

/// One INT4 output row: `out[j] = code(src[2j]) | code(src[2j+1]) << 4` with
/// `code(b) = ((b >> SHIFT) & 0xF) ^ 8` (two's complement nibble -> offset-binary q + 8).
/// Eight source bytes at a time in a u64 (SWAR): mask the wanted nibble of every byte, flip
/// bit 3, merge byte pairs, then pack the even bytes into 4 output bytes.
fn int4_row<const SHIFT: u32>(srow: &[u8], orow: &mut [u8]) {
    const NIBBLES: u64 = 0x0F0F_0F0F_0F0F_0F0F;
    const EIGHTS: u64 = 0x0808_0808_0808_0808;
    let mut src8 = srow.chunks_exact(8);
    let mut out4 = orow.chunks_exact_mut(4);
    for (s, o) in (&mut src8).zip(&mut out4) {
        let mut word = [0u8; 8];
        word.copy_from_slice(s);
        let x = ((u64::from_le_bytes(word) >> SHIFT) & NIBBLES) ^ EIGHTS;
        // Byte 2j now holds code(2j) | code(2j+1) << 4; odd bytes are junk.
        let t = (x | (x >> 4)) & 0x00FF_00FF_00FF_00FF;
        let t = (t | (t >> 8)) & 0x0000_FFFF_0000_FFFF;
        let t = (t | (t >> 16)) & 0xFFFF_FFFF;
        o.copy_from_slice(&(t as u32).to_le_bytes());
    }
    for (o, pair) in out4.into_remainder().iter_mut().zip(src8.remainder().chunks_exact(2)) {
        let lo = ((pair[0] >> SHIFT) & 0xF) ^ 8;
        let hi = ((pair[1] >> SHIFT) & 0xF) ^ 8;
        *o = lo | (hi << 4);
    }
}

/// One block of the transpose: source rows `r0 .. r0 + nr` of one matrix (`src`, whole rows of
/// `cols` elements) scattered into output rows (columns) `c0 .. c0 + block.len() / (rows * E)`
/// of that matrix. Tiled: `64 / E` source rows at a time (a few KiB, in L1), each output row
/// getting its 64-byte segment of the tile in one go. Writing all output rows per source row
/// instead (the obvious loop) strides by the output row length, a multiple of a large power of
/// two for real shapes (N = 14336 = 7 * 2^11), so the stores crowd into a few L1 sets and the
/// cache thrashes.
fn transpose_block<const E: usize>(src: &[u8], block: &mut [u8], rows: usize, cols: usize, c0: usize, r0: usize, nr: usize) {
    let tile = (64 / E).max(1);
    let row_bytes = rows * E;
    let mut rb = 0;
    while rb < nr {
        let tr = tile.min(nr - rb);
        for (j, orow) in block.chunks_exact_mut(row_bytes).enumerate() {
            let dst = &mut orow[(r0 + rb) * E..(r0 + rb + tr) * E];
            let mut s = (rb * cols + c0 + j) * E;
            for d in dst.chunks_exact_mut(E) {
                d.copy_from_slice(&src[s..s + E]);
                s += cols * E;
            }
        }
        rb += tr;
    }
}

/// The general transpose: any element size, pieces cut anywhere on an element boundary.
fn transpose_elements(src: &[u8], out: &mut [u8], rows: usize, cols: usize, elem: usize, ob: usize) {
    // Output is [*, cols, rows] of `elem`-byte elements; element (e, c, r) comes from
    // source (e, r, c).
    let per = rows * cols;
    let first = ob / elem;
    for (i, chunk) in out.chunks_exact_mut(elem).enumerate() {
        let flat = first + i;
        let (e, within) = (flat / per, flat % per);
        let (c, r) = (within / rows, within % rows);
        let s = (e * per + r * cols + c) * elem;
        chunk.copy_from_slice(&src[s..s + elem]);
    }
}

/// Threads of motensor's pool (`pool.rs`: `MOTENSOR_NUM_THREADS`, else `RAYON_NUM_THREADS`,
/// else every core; rebuilt in a forked child).
pub fn num_threads() -> usize {
    pool::num_threads()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic byte generator (no rand dependency).
    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// A window of `[lead, rows, cols]` (element size `elem`) cut out as its own dense tensor.
    fn cut(src: &[u8], w: &Window) -> Vec<u8> {
        let mut out = Vec::new();
        for e in 0..w.lead {
            for r in 0..w.nrows {
                let s = w.at(e, r, 0) as usize;
                out.extend_from_slice(&src[s..s + (w.ncols * w.elem) as usize]);
            }
        }
        out
    }

    #[test]
    fn windowed_reads_and_transforms_equal_those_of_the_cut_window() {
        // Row and column windows of a [2, 6, 8] source (1- and 2-byte elements): every read range
        // of the window equals the same range of the window cut out first, and so do the
        // transpose and the INT4 re-pack run through the windowed reader, piece by piece.
        for elem in [1u64, 2] {
            let (lead, rows, cols) = (2u64, 6u64, 8u64);
            let src = bytes((lead * rows * cols * elem) as usize, elem);
            let stored = |at: u64, dst: &mut [u8]| {
                dst.copy_from_slice(&src[at as usize..at as usize + dst.len()]);
                Ok(())
            };
            let mut windows = Vec::new();
            for (a, b) in [(0u64, 6u64), (2, 2), (3, 3), (0, 1)] {
                windows.push(Window { lead, rows, cols, row0: a, col0: 0, nrows: b, ncols: cols, elem });
            }
            for (a, b) in [(0u64, 4u64), (4, 4), (2, 3), (7, 1)] {
                windows.push(Window { lead, rows, cols, row0: 0, col0: a, nrows: rows, ncols: b, elem });
            }
            for w in windows {
                let dense = cut(&src, &w);
                let total = dense.len();
                let windowed = |at: u64, dst: &mut [u8]| read_window(&stored, &w, at, dst);
                for at in 0..total {
                    for len in [1usize, 3, total - at] {
                        let len = len.min(total - at);
                        let mut got = vec![0u8; len];
                        windowed(at as u64, &mut got).unwrap();
                        assert_eq!(got, dense[at..at + len], "{w:?} at {at} len {len}");
                    }
                }
                let mut past = [0u8; 1];
                assert!(windowed(total as u64, &mut past).is_err());
                let dense_read = |at: u64, dst: &mut [u8]| {
                    dst.copy_from_slice(&dense[at as usize..at as usize + dst.len()]);
                    Ok(())
                };
                let (r, c, e) = (w.nrows as usize, w.ncols as usize, elem as usize);
                let row_bytes = r * e;
                let mut want = vec![0u8; total];
                transpose_piece(&dense_read, total as u64, "t", (r, c, e), 0, &mut want, 64).unwrap();
                let mut got = vec![0u8; total];
                for (i, piece) in got.chunks_mut(row_bytes).enumerate() {
                    transpose_piece(&windowed, total as u64, "t", (r, c, e), i * row_bytes, piece, 64).unwrap();
                }
                assert_eq!(got, want, "transpose {w:?}");
                if elem == 1 && c % 2 == 0 {
                    // Stored [lead, N/2, K] with N = 2 * nrows, K = ncols.
                    let (n, k) = (2 * r, c);
                    let mut want = vec![0u8; total];
                    int4_piece(&dense_read, total as u64, "t", n, k, 0, &mut want).unwrap();
                    let mut got = vec![0u8; total];
                    for (i, piece) in got.chunks_mut(k / 2).enumerate() {
                        int4_piece(&windowed, total as u64, "t", n, k, i * (k / 2), piece).unwrap();
                    }
                    assert_eq!(got, want, "int4 {w:?}");
                }
            }
        }
    }

    #[test]
    fn int4_row_matches_the_nibble_definition() {
        for k in [2usize, 6, 8, 14, 16, 130, 4096] {
            let src = bytes(k, k as u64);
            for shift in [0u32, 4] {
                let mut out = vec![0u8; k / 2];
                if shift == 0 {
                    int4_row::<0>(&src, &mut out);
                } else {
                    int4_row::<4>(&src, &mut out);
                }
                for j in 0..k / 2 {
                    let lo = ((src[2 * j] >> shift) & 0xF) ^ 8;
                    let hi = ((src[2 * j + 1] >> shift) & 0xF) ^ 8;
                    assert_eq!(out[j], lo | (hi << 4), "k={k} shift={shift} j={j}");
                }
            }
        }
    }

    #[test]
    fn row_transpose_matches_the_element_transpose_for_every_row_aligned_cut() {
        // (lead, rows, cols) with elements of 1, 2 and 4 bytes; every cut on output rows.
        let shapes = [(1usize, 3usize, 5usize), (2, 4, 3), (3, 7, 1), (1, 1, 9), (2, 16, 8), (2, 24, 17), (1, 130, 9)];
        for &(lead, rows, cols) in &shapes {
            for elem in [1usize, 2, 4] {
                let src = bytes(lead * rows * cols * elem, (lead * 100 + rows * 10 + cols) as u64);
                let total = lead * rows * cols * elem;
                let mut want = vec![0u8; total];
                transpose_elements(&src, &mut want, rows, cols, elem, 0);
                let row_bytes = rows * elem;
                for cut in 1..=lead * cols {
                    let mut got = vec![0u8; total];
                    let mut ob = 0;
                    while ob < total {
                        let len = (cut * row_bytes).min(total - ob);
                        let piece = &mut got[ob..ob + len];
                        let read = |at: u64, dst: &mut [u8]| {
                            dst.copy_from_slice(&src[at as usize..at as usize + dst.len()]);
                            Ok(())
                        };
                        // Blocks of one source row, of a few, and of the whole matrix.
                        let block = [1usize, 3 * cols * elem, usize::MAX / 2][cut % 3];
                        transpose_piece(&read, src.len() as u64, "t", (rows, cols, elem), ob, piece, block).unwrap();
                        ob += len;
                    }
                    assert_eq!(got, want, "lead={lead} rows={rows} cols={cols} elem={elem} cut={cut}");
                }
            }
        }
    }

    #[test]
    fn int4_piece_reads_only_its_source_rows_and_matches_the_definition() {
        // [lead, N/2, K] pairs-along-N -> [lead, N, K/2] offset-8 pairs-along-K, cut anywhere
        // on output rows.
        for &(lead, n, k) in &[(1usize, 2usize, 2usize), (2, 4, 6), (3, 6, 16), (1, 10, 130)] {
            let src = bytes(lead * (n / 2) * k, (lead * 1000 + n * 10 + k) as u64);
            let half_k = k / 2;
            let mut want = vec![0u8; lead * n * half_k];
            for r in 0..lead * n {
                let (e, ni) = (r / n, r % n);
                let srow = &src[(e * (n / 2) + ni / 2) * k..][..k];
                let shift = if ni % 2 == 0 { 0 } else { 4 };
                for j in 0..half_k {
                    let lo = ((srow[2 * j] >> shift) & 0xF) ^ 8;
                    let hi = ((srow[2 * j + 1] >> shift) & 0xF) ^ 8;
                    want[r * half_k + j] = lo | (hi << 4);
                }
            }
            for cut in 1..=lead * n {
                let mut got = vec![0u8; want.len()];
                let mut ob = 0;
                while ob < got.len() {
                    let len = (cut * half_k).min(got.len() - ob);
                    let read = |at: u64, dst: &mut [u8]| {
                        dst.copy_from_slice(&src[at as usize..at as usize + dst.len()]);
                        Ok(())
                    };
                    int4_piece(&read, src.len() as u64, "t", n, k, ob, &mut got[ob..ob + len]).unwrap();
                    ob += len;
                }
                assert_eq!(got, want, "lead={lead} n={n} k={k} cut={cut}");
            }
        }
    }

    #[test]
    fn transpose_source_bound_covers_the_last_expert_touched() {
        // [2, rows=3, cols=4] of 2-byte elements: output rows 0..4 are expert 0, 4..8 expert 1.
        let row_bytes = 3 * 2;
        assert_eq!(src_rows_needed(0, 4 * row_bytes, row_bytes, 3, 4, 2), 24);
        assert_eq!(src_rows_needed(0, 5 * row_bytes, row_bytes, 3, 4, 2), 48);
        assert_eq!(src_rows_needed(7 * row_bytes, row_bytes, row_bytes, 3, 4, 2), 48);
        assert_eq!(src_rows_needed(0, 0, row_bytes, 3, 4, 2), 0);
    }
}

