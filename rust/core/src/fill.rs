//! Executes load-plan pieces into a caller-provided buffer (a pinned staging buffer, or the
//! destination arena itself for CPU loads), re-laying-out while copying, on all cores.

use rayon::prelude::*;

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::numeric::read_f32;
use crate::plan::{LoadItem, Piece, Transform};

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
    match it.transform {
        Transform::Copy => {
            out.copy_from_slice(&src[ob..ob + out.len()]);
        }
        Transform::ScalarToF32 { from } => {
            let v = read_f32(src, from, 0);
            let bytes = v.to_le_bytes();
            out.copy_from_slice(&bytes[ob..ob + out.len()]);
        }
        Transform::Int4ToKPacked { n, k } => {
            let (n, k) = (n as usize, k as usize);
            let half_k = k / 2;
            // Pieces start on output rows (granule = K/2). Output row r (expert r / n, row
            // r % n) takes one nibble of every byte of source row (e * N/2 + ni/2) of the
            // [*, N/2, K] buffer; `nibble ^ 8` turns two's complement into offset-binary q + 8.
            let row0 = ob / half_k;
            for (ri, orow) in out.chunks_mut(half_k).enumerate() {
                let r = row0 + ri;
                let (e, ni) = (r / n, r % n);
                let base = (e * (n / 2) + ni / 2) * k;
                let srow = &src[base..base + k];
                let shift = if ni % 2 == 0 { 0 } else { 4 };
                for (o, pair) in orow.iter_mut().zip(srow.chunks_exact(2)) {
                    let lo = ((pair[0] >> shift) & 0xF) ^ 8;
                    let hi = ((pair[1] >> shift) & 0xF) ^ 8;
                    *o = lo | (hi << 4);
                }
            }
        }
        Transform::Transpose { rows, cols, elem } => {
            let (rows, cols, elem) = (rows as usize, cols as usize, elem as usize);
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
    }
    Ok(())
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
