//! Executes load-plan pieces into a caller-provided buffer (a pinned staging buffer, or the
//! destination arena itself for CPU loads), re-laying-out while copying, on all cores.

use rayon::prelude::*;

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::numeric::read_f32;
use crate::plan::{LoadItem, Piece, Transform, Window};

/// Bytes the fills of this process have read out of checkpoint files (see [`source_bytes_read`]).
static SOURCE_BYTES_READ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Bytes of checkpoint data every fill of this process has read so far, counted as the pieces
/// are copied (a tensor-parallel rank reads only its slices; this measures it rather than
/// trusting the plan).
pub fn source_bytes_read() -> u64 {
    SOURCE_BYTES_READ.load(std::sync::atomic::Ordering::Relaxed)
}

fn count_read(n: usize) {
    SOURCE_BYTES_READ.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
}

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
        // Split along the item's granule so every sub-piece starts on a row.
        let step = (SPLIT_BYTES / it.granule).max(1) * it.granule;
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

    slices
        .into_par_iter()
        .try_for_each(|(out, p)| fill_piece(ck, &items[p.item], p.out_begin, out))
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
        if let Some(it) = items.get(p.item) {
            if let (Some(shard), Some(info)) = (ck.shard_of(&it.tensor), ck.tensor_info(&it.tensor)) {
                shard.will_need(info);
            }
        }
    }
}

fn fill_piece(ck: &Checkpoint, it: &LoadItem, out_begin: u64, out: &mut [u8]) -> Result<()> {
    let src = ck.tensor_data(&it.tensor)?;
    let ob = out_begin as usize;
    let sliced = !it.window.is_full();
    match it.transform {
        Transform::Copy if sliced => {
            copy_window(it, src, ob, out)?;
            count_read(out.len());
        }
        Transform::Copy => {
            out.copy_from_slice(&src[ob..ob + out.len()]);
            count_read(out.len());
        }
        Transform::ScalarToF32 { from } => {
            let v = read_f32(src, from, 0);
            let bytes = v.to_le_bytes();
            out.copy_from_slice(&bytes[ob..ob + out.len()]);
            if ob == 0 {
                count_read(src.len());
            }
        }
        Transform::Int4ToKPacked { n, k } => {
            let (n, k) = (n as usize, k as usize);
            let half_k = k / 2;
            if half_k == 0 || ob % half_k != 0 || out.len() % half_k != 0 {
                return Err(Error::argument(format!(
                    "piece of '{}' does not start and end on output rows of {half_k} bytes",
                    it.tensor
                )));
            }
            // Pieces start on output rows (granule = K/2). Output row r (expert r / n, row
            // r % n) takes one nibble of every byte of source row (e * N/2 + ni/2) of the
            // [*, N/2, K] buffer: the low nibble for even ni, the high one for odd ni. A sliced
            // item reads the same rows of its window (K columns from col0 of longer rows).
            let w = if sliced { it.window } else { Window::dense(n as u64 / 2, k as u64, 1) };
            let row0 = ob / half_k;
            // Two output rows (even and odd ni) share one source row: as many bytes are read
            // as written.
            count_read(out.len());
            for (ri, orow) in out.chunks_mut(half_k).enumerate() {
                let r = row0 + ri;
                let (e, ni) = (r / n, r % n);
                let base = w.at(e as u64, (ni / 2) as u64, 0) as usize;
                let srow = src.get(base..base + k).ok_or_else(|| short_source(it, base + k, src.len()))?;
                if ni % 2 == 0 {
                    int4_row::<0>(srow, orow);
                } else {
                    int4_row::<4>(srow, orow);
                }
            }
        }
        Transform::Transpose { rows, cols, elem } => {
            // A sliced item transposes its window: `rows` x `cols` out of longer source rows.
            let w = if sliced { it.window } else { Window::dense(rows, cols, elem) };
            let (rows, elem) = (rows as usize, elem as usize);
            let row_bytes = rows * elem;
            let needed = src_bytes_needed(ob, out.len(), row_bytes, &w);
            if src.len() < needed {
                return Err(short_source(it, needed, src.len()));
            }
            count_read(out.len());
            // Whole output rows (the plan's granule) take the cache-friendly path; the
            // element-by-element loop stays for any other cut.
            let aligned = row_bytes > 0 && ob % row_bytes == 0 && out.len() % row_bytes == 0;
            match elem {
                1 if aligned => transpose_rows::<1>(src, out, &w, ob / row_bytes),
                2 if aligned => transpose_rows::<2>(src, out, &w, ob / row_bytes),
                4 if aligned => transpose_rows::<4>(src, out, &w, ob / row_bytes),
                _ => transpose_elements(src, out, &w, ob),
            }
        }
    }
    Ok(())
}

fn short_source(it: &LoadItem, needed: usize, have: usize) -> Error {
    Error::argument(format!(
        "'{}' holds {have} bytes but its re-layout reads {needed}",
        it.tensor
    ))
}

/// Bytes of source a transpose piece reads at most: up to the last element of the last expert
/// it touches.
fn src_bytes_needed(ob: usize, len: usize, row_bytes: usize, w: &Window) -> usize {
    if len == 0 || row_bytes == 0 || w.ncols == 0 || w.nrows == 0 {
        return 0;
    }
    let last_out_row = ((ob + len - 1) / row_bytes) as u64;
    (w.at(last_out_row / w.ncols, w.nrows - 1, w.ncols - 1) + w.elem) as usize
}

/// A sliced plain copy: output bytes `[ob, ob + out.len())` of the window's rows laid end to
/// end, each row `ncols * elem` bytes read from its place in the stored tensor.
fn copy_window(it: &LoadItem, src: &[u8], ob: usize, out: &mut [u8]) -> Result<()> {
    let w = &it.window;
    let run = (w.ncols * w.elem) as usize;
    if run == 0 {
        return Ok(());
    }
    let mut done = 0usize;
    while done < out.len() {
        let pos = ob + done;
        let (row, within) = ((pos / run) as u64, pos % run);
        let (e, r) = (row / w.nrows, row % w.nrows);
        let s = w.at(e, r, 0) as usize + within;
        let take = (run - within).min(out.len() - done);
        let bytes = src.get(s..s + take).ok_or_else(|| short_source(it, s + take, src.len()))?;
        out[done..done + take].copy_from_slice(bytes);
        done += take;
    }
    Ok(())
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

/// `[*, rows, cols] -> [*, cols, rows]` for whole output rows `first.. first + out.len() /
/// (rows * E)` (an output row is one `(expert, col)`). Tiled: a tile of `64 / E` source rows
/// (a few KiB, in L1) is read, and each output row gets its 64-byte segment of the tile written
/// in one go. Writing all output rows per source row instead (the obvious loop) strides by the
/// output row length, a multiple of a large power of two for real shapes (N = 14336 = 7 * 2^11),
/// so the stores crowd into a few L1 sets and the cache thrashes. The caller checked that `src`
/// holds every expert the piece touches. The source is the window `w` (its `nrows` x `ncols`
/// elements, in rows of `w.cols`).
fn transpose_rows<const E: usize>(src: &[u8], out: &mut [u8], w: &Window, first: usize) {
    let (rows, cols, stride) = (w.nrows as usize, w.ncols as usize, w.cols as usize);
    let tile = (64 / E).max(1);
    let row_bytes = rows * E;
    let nout = out.len() / row_bytes;
    let mut i = 0;
    while i < nout {
        let g = first + i;
        let (e, c0) = (g / cols, g % cols);
        // Output rows of this piece that belong to expert `e`.
        let run = (cols - c0).min(nout - i);
        let block = &mut out[i * row_bytes..(i + run) * row_bytes];
        let mut rb = 0;
        while rb < rows {
            let tr = tile.min(rows - rb);
            for (j, orow) in block.chunks_exact_mut(row_bytes).enumerate() {
                let dst = &mut orow[rb * E..(rb + tr) * E];
                let mut s = w.at(e as u64, rb as u64, (c0 + j) as u64) as usize;
                for d in dst.chunks_exact_mut(E) {
                    d.copy_from_slice(&src[s..s + E]);
                    s += stride * E;
                }
            }
            rb += tr;
        }
        i += run;
    }
}

/// The general transpose: any element size, pieces cut anywhere on an element boundary.
fn transpose_elements(src: &[u8], out: &mut [u8], w: &Window, ob: usize) {
    // Output is [*, cols, rows] of `elem`-byte elements; element (e, c, r) comes from
    // source (e, r, c) of the window.
    let (rows, cols, elem) = (w.nrows as usize, w.ncols as usize, w.elem as usize);
    let per = rows * cols;
    let first = ob / elem;
    for (i, chunk) in out.chunks_exact_mut(elem).enumerate() {
        let flat = first + i;
        let (e, within) = (flat / per, flat % per);
        let (c, r) = (within / rows, within % rows);
        let s = w.at(e as u64, r as u64, c as u64) as usize;
        chunk.copy_from_slice(&src[s..s + elem]);
    }
}

/// Sizes rayon's global pool from `MOTENSOR_NUM_THREADS` once (default: rayon's own choice,
/// `RAYON_NUM_THREADS` or the number of cores), and returns its size.
pub fn num_threads() -> usize {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        if let Some(n) = std::env::var("MOTENSOR_NUM_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
        {
            // Fails only if the pool was already built; then the existing pool is used.
            let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
        }
    });
    rayon::current_num_threads()
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
                let w = Window::dense(rows as u64, cols as u64, elem as u64);
                transpose_elements(&src, &mut want, &w, 0);
                let row_bytes = rows * elem;
                for cut in 1..=lead * cols {
                    let mut got = vec![0u8; total];
                    let mut ob = 0;
                    while ob < total {
                        let len = (cut * row_bytes).min(total - ob);
                        let piece = &mut got[ob..ob + len];
                        match elem {
                            1 => transpose_rows::<1>(&src, piece, &w, ob / row_bytes),
                            2 => transpose_rows::<2>(&src, piece, &w, ob / row_bytes),
                            _ => transpose_rows::<4>(&src, piece, &w, ob / row_bytes),
                        }
                        ob += len;
                    }
                    assert_eq!(got, want, "lead={lead} rows={rows} cols={cols} elem={elem} cut={cut}");
                }
            }
        }
    }

    #[test]
    fn transpose_source_bound_covers_the_last_expert_touched() {
        // [2, rows=3, cols=4] of 2-byte elements: output rows 0..4 are expert 0, 4..8 expert 1.
        let row_bytes = 3 * 2;
        let w = Window::dense(3, 4, 2);
        assert_eq!(src_bytes_needed(0, 4 * row_bytes, row_bytes, &w), 24);
        assert_eq!(src_bytes_needed(0, 5 * row_bytes, row_bytes, &w), 48);
        assert_eq!(src_bytes_needed(7 * row_bytes, row_bytes, row_bytes, &w), 48);
        assert_eq!(src_bytes_needed(0, 0, row_bytes, &w), 0);
    }

    /// A window of `[lead, rows, cols]` (element size `elem`) as its own dense tensor.
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
    fn sliced_transforms_equal_the_transform_of_the_slice() {
        // Every row and column window of a [2, 6, 8] source, for 1- and 2-byte elements: the
        // sliced transpose (rows, elements) and the sliced copy equal the dense transform of
        // the window cut out first.
        for elem in [1u64, 2] {
            let (lead, rows, cols) = (2u64, 6u64, 8u64);
            let src = bytes((lead * rows * cols * elem) as usize, elem);
            let mut windows = Vec::new();
            for (a, b) in [(0u64, 6u64), (2, 2), (3, 3), (0, 1)] {
                windows.push(Window { lead, rows, cols, row0: a, col0: 0, nrows: b, ncols: cols, elem });
            }
            for (a, b) in [(0u64, 4u64), (4, 4), (2, 3), (7, 1)] {
                windows.push(Window { lead, rows, cols, row0: 0, col0: a, nrows: rows, ncols: b, elem });
            }
            for w in windows {
                let dense_src = cut(&src, &w);
                let d = Window::dense(w.nrows, w.ncols, elem);
                let total = (lead * w.nrows * w.ncols * elem) as usize;
                let mut want = vec![0u8; total];
                transpose_elements(&dense_src, &mut want, &d, 0);
                let mut got = vec![0u8; total];
                transpose_elements(&src, &mut got, &w, 0);
                assert_eq!(got, want, "{w:?}");
                let mut got = vec![0u8; total];
                if elem == 1 {
                    transpose_rows::<1>(&src, &mut got, &w, 0);
                } else {
                    transpose_rows::<2>(&src, &mut got, &w, 0);
                }
                assert_eq!(got, want, "{w:?}");
                let item = LoadItem {
                    tensor: "t".into(),
                    module: None,
                    role: None,
                    transform: Transform::Copy,
                    out_dtype: crate::dtype::DType::U8,
                    out_shape: vec![total as u64],
                    out_bytes: total as u64,
                    granule: 1,
                    offset: 0,
                    window: w,
                };
                for split in [1usize, 3, total] {
                    let mut got = vec![0u8; total];
                    let mut ob = 0;
                    while ob < total {
                        let len = split.min(total - ob);
                        copy_window(&item, &src, ob, &mut got[ob..ob + len]).unwrap();
                        ob += len;
                    }
                    assert_eq!(got, dense_src, "{w:?} split {split}");
                }
            }
        }
    }
}

