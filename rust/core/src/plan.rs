//! The load plan: what each tensor becomes on the device (layout, dtype, shape), where it sits
//! in one contiguous destination arena, and how the arena is cut into staging-sized batches.
//!
//! Re-layouts are decided by the format table's `weight_layout` / `scale_layout`; this module
//! only turns them into transforms with output shapes and row granules (the unit a batch may be
//! cut at, so that a tensor larger than a staging buffer is still filled correctly).

use std::collections::HashMap;

use rayon::prelude::*;

use crate::checkpoint::Checkpoint;
use crate::header::TensorInfo;
use crate::pool;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::exclude::pattern_matches;
use crate::formats::{Packing, Role, ScaleLayout, ShapeRule, WeightLayout};
use crate::modules::QuantModule;

/// How the bytes of a stored tensor become the bytes of its loaded form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// Byte-for-byte.
    Copy,
    /// INT4 `[lead, N/2, K]` signed pairs-along-N -> `[lead, N, K/2]` offset-8 pairs-along-K.
    Int4ToKPacked { n: u64, k: u64 },
    /// `[lead, rows, cols]` -> `[lead, cols, rows]` for `elem`-byte elements.
    Transpose { rows: u64, cols: u64, elem: u64 },
    /// A one-element wide float of any dtype -> f32.
    ScalarToF32 { from: DType },
}

/// A rank's share of one stored tensor (tensor parallelism): indices `[start, start + len)` of
/// `axis`, which must be one of the last two axes of the stored shape (the only axes a
/// column- or row-parallel split of a Linear's tensors cuts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    pub axis: usize,
    pub start: u64,
    pub len: u64,
}

/// The bytes of its stored tensor an item reads. The tensor is seen as `[lead, rows, cols]`
/// elements of `elem` bytes (a 1-D tensor as one row, a scalar as one element); the item reads
/// rows `row0 .. row0 + nrows` and columns `col0 .. col0 + ncols` of each of the `lead` matrices.
/// Unsliced, that is the whole tensor; a row slice is one contiguous range (per matrix), a
/// column slice is `lead * nrows` strided runs of `ncols * elem` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub lead: u64,
    pub rows: u64,
    pub cols: u64,
    pub row0: u64,
    pub col0: u64,
    pub nrows: u64,
    pub ncols: u64,
    pub elem: u64,
}

impl Window {
    fn dims(shape: &[u64]) -> (u64, u64, u64) {
        match shape.len() {
            0 => (1, 1, 1),
            1 => (1, 1, shape[0]),
            n => (shape[..n - 2].iter().product(), shape[n - 2], shape[n - 1]),
        }
    }

    /// The whole stored tensor.
    pub fn full(shape: &[u64], elem: u64) -> Window {
        let (lead, rows, cols) = Self::dims(shape);
        Window { lead, rows, cols, row0: 0, col0: 0, nrows: rows, ncols: cols, elem }
    }

    /// The part `slice` selects of a stored tensor `shape` (checked against it).
    pub fn sliced(tensor: &str, shape: &[u64], elem: u64, slice: Slice) -> Result<Window> {
        let mut w = Self::full(shape, elem);
        let nd = shape.len();
        let end = slice.start.checked_add(slice.len);
        let ok_axis = nd >= 1 && slice.axis < nd && slice.axis + 2 >= nd;
        if !ok_axis || end.is_none_or(|e| e > shape[slice.axis]) || slice.len == 0 {
            return Err(Error::argument(format!(
                "'{tensor}' of shape {shape:?}: cannot take [{}, +{}) of axis {} (a slice must be a non-empty \
                 range of one of the last two axes)",
                slice.start, slice.len, slice.axis
            )));
        }
        if slice.axis + 1 == nd {
            w.col0 = slice.start;
            w.ncols = slice.len;
        } else {
            w.row0 = slice.start;
            w.nrows = slice.len;
        }
        Ok(w)
    }

    /// A whole `[*, rows, cols]` tensor of `elem`-byte elements (how unsliced transforms see
    /// their source).
    pub fn dense(rows: u64, cols: u64, elem: u64) -> Window {
        Window { lead: 0, rows, cols, row0: 0, col0: 0, nrows: rows, ncols: cols, elem }
    }

    pub fn is_full(&self) -> bool {
        self.nrows == self.rows && self.ncols == self.cols
    }

    /// Bytes the item reads from the file.
    pub fn src_bytes(&self) -> u64 {
        self.lead * self.nrows * self.ncols * self.elem
    }

    /// Byte offset in the stored tensor of logical element `(e, r, c)` of the window.
    #[inline]
    pub fn at(&self, e: u64, r: u64, c: u64) -> u64 {
        ((e * self.rows + self.row0 + r) * self.cols + self.col0 + c) * self.elem
    }

    /// The stored shape with the sliced axis shortened.
    fn out_shape(&self, shape: &[u64]) -> Vec<u64> {
        let mut s = shape.to_vec();
        let nd = s.len();
        if nd >= 1 {
            s[nd - 1] = self.ncols;
        }
        if nd >= 2 {
            s[nd - 2] = self.nrows;
        }
        s
    }
}

/// One tensor to load.
#[derive(Debug, Clone)]
pub struct LoadItem {
    pub tensor: String,
    /// The quantized module that owns it, if any.
    pub module: Option<String>,
    pub role: Option<Role>,
    pub transform: Transform,
    pub out_dtype: DType,
    pub out_shape: Vec<u64>,
    pub out_bytes: u64,
    /// Batches cut this tensor only at multiples of this many output bytes.
    pub granule: u64,
    /// Offset in the destination arena (aligned).
    pub offset: u64,
    /// Which bytes of the stored tensor it reads (all of them unless sliced).
    pub window: Window,
}

/// A piece of one item's output: bytes `[out_begin, out_end)` of item `item`, written at
/// `dst` bytes into the batch's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub item: usize,
    pub out_begin: u64,
    pub out_end: u64,
    pub dst: u64,
}

/// A contiguous range `[begin, end)` of the arena filled through one staging buffer.
#[derive(Debug, Clone)]
pub struct Batch {
    pub begin: u64,
    pub end: u64,
    pub pieces: Vec<Piece>,
}

/// Device allocations are 256-byte aligned; keeping every tensor so keeps vector loads legal.
pub const ARENA_ALIGN: u64 = 256;

fn selected(patterns: Option<&[String]>, module: &str, tensor: &str) -> bool {
    match patterns {
        None => true,
        Some(ps) => ps
            .iter()
            .any(|p| pattern_matches(p, module) || pattern_matches(p, tensor)),
    }
}

/// Builds the plan for every tensor (or those of modules matching `patterns`: exact names,
/// fnmatch wildcards, or whole dotted prefixes such as `model.layers.0`).
pub fn build_plan(ck: &Checkpoint, patterns: Option<&[String]>) -> Result<(Vec<LoadItem>, u64)> {
    build_sliced_plan(ck, patterns, &HashMap::new())
}

/// [`build_plan`] where the tensors named in `slices` are read and loaded only in part (a
/// tensor-parallel rank's shard): the fill reads just the slice's bytes of the file and
/// re-lays them out as it would the whole tensor.
pub fn build_sliced_plan(
    ck: &Checkpoint,
    patterns: Option<&[String]>,
    slices: &HashMap<String, Slice>,
) -> Result<(Vec<LoadItem>, u64)> {
    let slice_of = |t: &str| slices.get(t).copied();
    // Which module (and role) owns each tensor id, so that the items can be made straight in
    // arena order = file order (batches read the shards front to back), in parallel, with no
    // name looked up and no sort of ~200-byte items.
    let mut owner = vec![Owner::None; ck.tensor_count()];
    for (mi, m) in ck.modules.iter().enumerate() {
        for &role in m.tensors.keys() {
            if let Some(id) = m.tensor_id(role) {
                owner[id] = Owner::Module(mi as u32, role);
            }
        }
        for t in &m.extras {
            owner[id_of(ck, t)?] = Owner::Extra(mi as u32);
        }
    }
    for t in ck.plain.iter().chain(ck.kv.iter().map(|k| &k.tensor)) {
        owner[id_of(ck, t)?] = Owner::Plain;
    }
    let item = |id: usize| -> Option<Result<LoadItem>> {
        let info = ck.info_at(id);
        let t = info.name.as_str();
        match owner[id] {
            Owner::None => None,
            Owner::Module(mi, role) => {
                let m = &ck.modules[mi as usize];
                selected(patterns, &m.name, t).then(|| module_item(m, role, t, info, slice_of(t)))
            }
            Owner::Extra(mi) => selected(patterns, &ck.modules[mi as usize].name, t).then(|| plain_item(ck, t, slice_of(t))),
            Owner::Plain => {
                let module = t.rsplit_once('.').map(|(m, _)| m).unwrap_or(t);
                selected(patterns, module, t).then(|| plain_item(ck, t, slice_of(t)))
            }
        }
    };
    let made: Result<Vec<LoadItem>> =
        pool::install(|| (0..ck.tensor_count()).into_par_iter().with_min_len(1024).filter_map(item).collect());
    let mut items = match made {
        Ok(items) => items,
        // The error a pass in module order meets first (then the plain tensors').
        Err(e) => return Err(first_error(ck, patterns, &slice_of).err().unwrap_or(e)),
    };
    if !slices.is_empty() {
        let planned: std::collections::HashSet<&str> = items.iter().map(|it| it.tensor.as_str()).collect();
        if let Some(t) = slices.keys().find(|t| !planned.contains(t.as_str())) {
            return Err(Error::argument(format!("a slice is given for '{t}', which this load does not read")));
        }
    }
    if let Some(ps) = patterns {
        if items.is_empty() {
            return Err(Error::argument(format!("no module or tensor matches {ps:?}")));
        }
    }
    let mut off = 0u64;
    for it in &mut items {
        it.offset = off;
        off = (off + it.out_bytes).div_ceil(ARENA_ALIGN) * ARENA_ALIGN;
    }
    Ok((items, off))
}

/// Who a tensor's plan item belongs to.
#[derive(Clone, Copy)]
enum Owner {
    /// Not loaded (a tensor no module or plain list holds).
    None,
    Module(u32, Role),
    /// A tensor under a module's name that its format does not use.
    Extra(u32),
    Plain,
}

/// The plan's items made in module order, then the plain tensors (only to find which error
/// comes first).
fn first_error(ck: &Checkpoint, patterns: Option<&[String]>, slice_of: &dyn Fn(&str) -> Option<Slice>) -> Result<()> {
    for m in &ck.modules {
        for (&role, t) in &m.tensors {
            if selected(patterns, &m.name, t) {
                module_item(m, role, t, info_of(ck, t)?, slice_of(t))?;
            }
        }
        for t in &m.extras {
            if selected(patterns, &m.name, t) {
                plain_item(ck, t, slice_of(t))?;
            }
        }
    }
    for t in ck.plain.iter().chain(ck.kv.iter().map(|k| &k.tensor)) {
        let module = t.rsplit_once('.').map(|(m, _)| m).unwrap_or(t);
        if selected(patterns, module, t) {
            plain_item(ck, t, slice_of(t))?;
        }
    }
    Ok(())
}

fn id_of(ck: &Checkpoint, t: &str) -> Result<usize> {
    ck.tensor_id(t)
        .ok_or_else(|| Error::argument(format!("no tensor '{t}' in the checkpoint")))
}

fn info_of<'a>(ck: &'a Checkpoint, t: &str) -> Result<&'a crate::header::TensorInfo> {
    ck.tensor_info(t)
        .ok_or_else(|| Error::argument(format!("no tensor '{t}' in the checkpoint")))
}

fn window_of(t: &str, info: &crate::header::TensorInfo, slice: Option<Slice>) -> Result<Window> {
    let elem = info.dtype.size() as u64;
    match slice {
        None => Ok(Window::full(&info.shape, elem)),
        Some(s) => Window::sliced(t, &info.shape, elem, s),
    }
}

fn plain_item(ck: &Checkpoint, t: &str, slice: Option<Slice>) -> Result<LoadItem> {
    let info = info_of(ck, t)?;
    let window = window_of(t, info, slice)?;
    let out_shape = window.out_shape(&info.shape);
    Ok(LoadItem {
        tensor: t.to_string(),
        module: None,
        role: None,
        transform: Transform::Copy,
        out_dtype: info.dtype,
        out_bytes: if window.is_full() { info.nbytes() } else { window.src_bytes() },
        out_shape,
        // KV scales are validated as they are filled: never cut one inside an element.
        granule: if is_kv_scale(t) { info.dtype.size().max(1) as u64 } else { 1 },
        offset: 0,
        window,
    })
}

fn is_kv_scale(t: &str) -> bool {
    t.ends_with(".k_scale") || t.ends_with(".v_scale")
}

fn module_item(m: &QuantModule, role: Role, t: &str, info: &TensorInfo, slice: Option<Slice>) -> Result<LoadItem> {
    let window = window_of(t, info, slice)?;
    let sliced = !window.is_full();
    let stored = window.out_shape(&info.shape);
    let lead = &m.lead;
    let with_lead = |tail: &[u64]| -> Vec<u64> { lead.iter().chain(tail).copied().collect() };
    let rule = m.spec.rule(role).map(|r| r.shape);
    if sliced && m.bmm {
        return Err(Error::argument(format!(
            "module '{}': in-place (BMM) expert parameters are not sharded by tensor parallelism yet",
            m.name
        )));
    }
    if sliced && rule == Some(ShapeRule::Scalar) {
        return Err(Error::argument(format!(
            "module '{}': '{t}' is a per-tensor scalar; it is replicated, never sliced",
            m.name
        )));
    }
    // A sliced module tensor is re-laid-out as the module of the slice's size would be.
    let (n, k) = match (role, m.spec.weight_layout) {
        (Role::Weight, WeightLayout::Int4ToKPacked) if sliced => (window.nrows * 2, window.ncols),
        _ => (m.n, m.k),
    };
    if sliced && role == Role::Weight && m.spec.weight_layout == WeightLayout::Int4ToKPacked && k % 2 != 0 {
        return Err(Error::argument(format!(
            "module '{}': '{t}': a slice of {k} INT4 columns cannot be K-packed (odd)",
            m.name
        )));
    }
    let (transform, out_dtype, out_shape, granule) = match (role, rule) {
        // In-place expert parameters `[E, K', N]` become the kernel layout of a stack of
        // Linears, `[E, N, K']` (K' = K/2 for 4-bit pairs, already packed along K).
        (Role::Weight, _) if m.bmm => match m.spec.weight_layout {
            WeightLayout::AsStored => {
                let rows = if m.spec.packing == Packing::PairsAlongK { m.k / 2 } else { m.k };
                (
                    Transform::Transpose { rows, cols: m.n, elem: 1 },
                    info.dtype,
                    with_lead(&[m.n, rows]),
                    rows,
                )
            }
            // The module view refuses pairs-along-N packings for in-place parameters.
            WeightLayout::Int4ToKPacked => {
                return Err(Error::argument(format!("'{}': INT4 in-place expert parameters cannot be laid out", m.name)))
            }
        },
        (Role::Weight, _) => match m.spec.weight_layout {
            WeightLayout::AsStored => (Transform::Copy, info.dtype, stored.clone(), 1),
            WeightLayout::Int4ToKPacked => (
                Transform::Int4ToKPacked { n, k },
                DType::U8,
                with_lead(&[n, k / 2]),
                k / 2,
            ),
        },
        (_, Some(ShapeRule::Scalar)) => (
            Transform::ScalarToF32 { from: info.dtype },
            DType::F32,
            vec![],
            4,
        ),
        // Stored `[E, K/G, N]`: already the kernel's transposed group layout.
        (Role::WeightScale, Some(ShapeRule::Groups)) if m.bmm => {
            let g = m.group.unwrap_or(1) as u64;
            let dt = if info.dtype == DType::F8_E8M0 { DType::U8 } else { info.dtype };
            let shape = with_lead(&[m.k / g, m.n]);
            let copy_shape = if m.spec.scale_layout == ScaleLayout::GroupsTransposed {
                shape
            } else {
                return Err(Error::argument(format!("'{}': {} group scales of in-place expert parameters cannot be laid out", m.name, m.spec.name)));
            };
            (Transform::Copy, dt, copy_shape, 1)
        }
        (Role::WeightScale, Some(ShapeRule::Groups)) if sliced && m.spec.scale_layout == ScaleLayout::GroupsTransposed => {
            let dt = if info.dtype == DType::F8_E8M0 { DType::U8 } else { info.dtype };
            let elem = info.dtype.size() as u64;
            (
                Transform::Transpose { rows: window.nrows, cols: window.ncols, elem },
                dt,
                with_lead(&[window.ncols, window.nrows]),
                window.nrows * elem,
            )
        }
        (Role::WeightScale, Some(ShapeRule::Groups)) => match m.spec.scale_layout {
            ScaleLayout::GroupsTransposed => {
                let g = m.group.unwrap_or(1) as u64;
                let cols = m.k / g;
                // E8M0 scales load as plain uint8 bytes: the kernels decode the exponent.
                let dt = if info.dtype == DType::F8_E8M0 { DType::U8 } else { info.dtype };
                (
                    Transform::Transpose {
                        rows: m.n,
                        cols,
                        elem: info.dtype.size() as u64,
                    },
                    dt,
                    with_lead(&[cols, m.n]),
                    m.n * info.dtype.size() as u64,
                )
            }
            _ => (Transform::Copy, info.dtype, stored.clone(), 1),
        },
        (Role::WeightScale, Some(ShapeRule::Blocks2d)) => {
            let g = m.group.unwrap_or(128) as u64;
            let shape = match m.spec.scale_layout {
                ScaleLayout::Blocks2dSqueezed if sliced => with_lead(&[window.nrows, window.ncols]),
                ScaleLayout::Blocks2dSqueezed => with_lead(&[m.n.div_ceil(g), m.k.div_ceil(g)]),
                _ => stored.clone(),
            };
            (Transform::Copy, info.dtype, shape, 1)
        }
        _ => (Transform::Copy, info.dtype, stored.clone(), 1),
    };
    // Scales are validated piece by piece as they are filled (scales.rs): a batch must not cut
    // one inside an element, or its halves would be read as two wrong values.
    let granule = match (transform, role) {
        (Transform::Copy, Role::WeightScale | Role::WeightScale2 | Role::InputScale | Role::PreQuantScale) => {
            granule.max(info.dtype.size().max(1) as u64)
        }
        _ => granule,
    };
    let out_bytes = out_shape.iter().product::<u64>() * out_dtype.size() as u64;
    Ok(LoadItem {
        tensor: t.to_string(),
        module: Some(m.name.clone()),
        role: Some(role),
        transform,
        out_dtype,
        out_shape,
        out_bytes,
        granule,
        offset: 0,
        window,
    })
}

/// Cuts the arena into batches of at most `chunk` bytes, each a contiguous arena range.
pub fn batches(items: &[LoadItem], chunk: u64) -> Result<Vec<Batch>> {
    if chunk == 0 {
        return Err(Error::argument("staging chunk size must be positive"));
    }
    let mut out: Vec<Batch> = Vec::new();
    let mut cur: Option<Batch> = None;
    for (i, it) in items.iter().enumerate() {
        let mut ob = 0u64;
        while ob < it.out_bytes {
            let pos = it.offset + ob;
            let batch = cur.get_or_insert_with(|| Batch {
                begin: pos,
                end: pos,
                pieces: Vec::new(),
            });
            let space = (batch.begin + chunk).saturating_sub(pos);
            let rest = it.out_bytes - ob;
            let take = if rest <= space {
                rest
            } else {
                (space / it.granule) * it.granule
            };
            if take == 0 {
                if batch.pieces.is_empty() {
                    return Err(Error::argument(format!(
                        "tensor '{}' cannot be cut into staging chunks of {chunk} bytes (its rows are {} bytes)",
                        it.tensor, it.granule
                    )));
                }
                if let Some(b) = cur.take() {
                    out.push(b);
                }
                continue;
            }
            batch.pieces.push(Piece {
                item: i,
                out_begin: ob,
                out_end: ob + take,
                dst: pos - batch.begin,
            });
            batch.end = pos + take;
            ob += take;
            if batch.end - batch.begin >= chunk {
                if let Some(b) = cur.take() {
                    out.push(b);
                }
            }
        }
    }
    if let Some(b) = cur.take() {
        if !b.pieces.is_empty() {
            out.push(b);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(bytes: u64, granule: u64, offset: u64) -> LoadItem {
        LoadItem {
            tensor: format!("t{offset}"),
            module: None,
            role: None,
            transform: Transform::Copy,
            out_dtype: DType::U8,
            out_shape: vec![bytes],
            out_bytes: bytes,
            granule,
            offset,
            window: Window::full(&[bytes], 1),
        }
    }

    #[test]
    fn batches_cover_every_byte_once_and_respect_granules() {
        let items = vec![item(1000, 1, 0), item(600, 100, 1024), item(10, 10, 1792)];
        for chunk in [64u64, 100, 256, 333, 4096] {
            let bs = match batches(&items, chunk) {
                Ok(b) => b,
                Err(_) => {
                    assert!(chunk < 100);
                    continue;
                }
            };
            let mut covered = vec![0u64; items.len()];
            for b in &bs {
                assert!(b.end - b.begin <= chunk);
                for p in &b.pieces {
                    let it = &items[p.item];
                    assert_eq!(p.out_begin, covered[p.item]);
                    assert_eq!(it.offset + p.out_begin, b.begin + p.dst);
                    if p.out_end != it.out_bytes {
                        assert_eq!((p.out_end - p.out_begin) % it.granule, 0);
                    }
                    covered[p.item] = p.out_end;
                }
            }
            for (c, it) in covered.iter().zip(&items) {
                assert_eq!(*c, it.out_bytes);
            }
        }
    }
}
