//! `motensor._core`: thin pyo3 bindings of motensor-core.
//!
//! Only glue lives here: argument conversion, the GIL released around file work, and core
//! errors mapped onto the `motensor.errors` exception hierarchy (defined here so that the
//! extension can raise them; `motensor.errors` re-exports them).

use std::sync::Arc;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use motensor_core::dequant::{dequantize_into, OutDType};
use motensor_core::formats::{Activation, Element, GlobalScale, Packing, Presence, ScaleEncoding, ScaleLayout, ShapeRule, WeightLayout, FORMATS, KNOWN_UNSUPPORTED};
use motensor_core::plan::{self, Batch, LoadItem, Transform};
use motensor_core::quant_config::Scheme;
use motensor_core::{fill, Error, ErrorKind};

create_exception!(_core, MotensorError, PyException, "Base class of every motensor error.");
create_exception!(_core, HeaderError, MotensorError, "A safetensors header is invalid (length, JSON, dtype, shape or offsets).");
create_exception!(_core, ShardError, MotensorError, "A shard is missing, unreadable, inconsistent with the index, or was truncated.");
create_exception!(_core, ConfigError, MotensorError, "config.json / hf_quant_config.json / the index JSON is invalid.");
create_exception!(_core, FormatError, MotensorError, "A module's tensors do not match its quantization format.");
create_exception!(_core, UnsupportedFormatError, FormatError, "A quant_algo motensor does not know or cannot load.");
create_exception!(_core, ArgumentError, MotensorError, "An argument is inconsistent with the checkpoint or buffer.");

fn to_py(err: Error) -> PyErr {
    let msg = err.to_string();
    let e = match err.kind() {
        ErrorKind::Io | ErrorKind::Shard => ShardError::new_err(msg),
        ErrorKind::Header => HeaderError::new_err(msg),
        ErrorKind::Config => ConfigError::new_err(msg),
        ErrorKind::Format => FormatError::new_err(msg),
        ErrorKind::UnsupportedFormat => UnsupportedFormatError::new_err(msg),
        ErrorKind::Argument => ArgumentError::new_err(msg),
    };
    Python::attach(|py| {
        let v = e.value(py);
        let file = err.file().map(|f| f.display().to_string());
        // Setting attributes on a fresh exception instance cannot meaningfully fail; if it
        // did, the message still names file and tensor.
        let _ = v.setattr("file", file);
        let _ = v.setattr("tensor", err.tensor().map(str::to_string));
        let _ = v.setattr("module", err.module().map(str::to_string));
    });
    e
}

/// A writable CPU buffer handed over from Python (a contiguous torch tensor).
struct HostBuffer {
    ptr: usize,
    len: usize,
    _owner: Py<PyAny>,
}

impl HostBuffer {
    fn from_tensor(obj: &Bound<'_, PyAny>) -> PyResult<HostBuffer> {
        let device: String = obj.getattr("device")?.getattr("type")?.extract()?;
        if device != "cpu" {
            return Err(ArgumentError::new_err(format!("buffer must be a CPU tensor, got device '{device}'")));
        }
        let contiguous: bool = obj.call_method0("is_contiguous")?.extract()?;
        if !contiguous {
            return Err(ArgumentError::new_err("buffer must be contiguous"));
        }
        let ptr: usize = obj.call_method0("data_ptr")?.extract()?;
        let len: usize = obj.getattr("nbytes")?.extract()?;
        if ptr == 0 && len > 0 {
            return Err(ArgumentError::new_err("buffer has no storage"));
        }
        Ok(HostBuffer {
            ptr,
            len,
            _owner: obj.clone().unbind(),
        })
    }

    /// # Safety
    /// The caller must not create another reference to the same memory while the returned
    /// slice lives.
    unsafe fn slice(&self) -> &mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: `ptr`/`len` are the data pointer and byte size of a contiguous CPU tensor
        // whose storage stays alive because `_owner` holds a strong reference to the tensor
        // for as long as this HostBuffer exists. torch allocates that storage as one block of
        // at least `nbytes` bytes, so the range is valid and writable. Python code resizing or
        // freeing the tensor's storage from another thread during the call would break this;
        // motensor's own callers never do, and the public docstrings say not to.
        std::slice::from_raw_parts_mut(self.ptr as *mut u8, self.len)
    }
}

/// An opened checkpoint (see `motensor.open`).
#[pyclass(frozen, module = "motensor._core")]
struct Checkpoint {
    inner: Arc<motensor_core::Checkpoint>,
}

#[pymethods]
impl Checkpoint {
    #[new]
    fn new(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Self> {
        let ck = py
            .detach(|| motensor_core::Checkpoint::open(&path))
            .map_err(to_py)?;
        Ok(Checkpoint { inner: Arc::new(ck) })
    }

    #[getter]
    fn root(&self) -> String {
        self.inner.root.display().to_string()
    }

    #[getter]
    fn shards(&self) -> Vec<String> {
        self.inner.shards.iter().map(|s| s.path.display().to_string()).collect()
    }

    #[getter]
    fn total_bytes(&self) -> u64 {
        self.inner.total_bytes()
    }

    #[getter]
    fn notes(&self) -> Vec<String> {
        self.inner.notes.clone()
    }

    fn tensor_names(&self) -> Vec<String> {
        self.inner.tensors.keys().cloned().collect()
    }

    fn plain_tensors(&self) -> Vec<String> {
        self.inner.plain.clone()
    }

    /// `{name, dtype, shape, file, offset, nbytes}` of one tensor (offset is absolute).
    fn tensor_info<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyDict>> {
        let info = self
            .inner
            .tensor_info(name)
            .ok_or_else(|| ArgumentError::new_err(format!("no tensor named '{name}'")))?;
        let shard = self
            .inner
            .shard_of(name)
            .ok_or_else(|| ArgumentError::new_err(format!("no tensor named '{name}'")))?;
        let d = PyDict::new(py);
        d.set_item("name", &info.name)?;
        d.set_item("dtype", info.dtype.name())?;
        d.set_item("shape", info.shape.clone())?;
        d.set_item("file", shard.path.display().to_string())?;
        d.set_item("offset", shard.file_range(info).0)?;
        d.set_item("nbytes", info.nbytes())?;
        Ok(d)
    }

    /// The quantization metadata as a dict, or None for an unquantized checkpoint.
    fn quant_config<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(q) = &self.inner.quant else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("source", q.source.display().to_string())?;
        d.set_item("quant_algo", &q.quant_algo)?;
        d.set_item("kv_cache_quant_algo", q.kv_cache_quant_algo.clone())?;
        d.set_item("exclude_modules", q.exclude.patterns().to_vec())?;
        d.set_item("producer_version", q.producer_version.clone())?;
        match &q.scheme {
            Scheme::Single { spec, group_size } => {
                d.set_item("scheme", "single")?;
                d.set_item("format", spec.name)?;
                d.set_item("group_size", *group_size)?;
            }
            Scheme::Mixed { layers } => {
                d.set_item("scheme", "mixed")?;
                let l = PyDict::new(py);
                for (name, lq) in layers {
                    let e = PyDict::new(py);
                    e.set_item("quant_algo", lq.spec.name)?;
                    e.set_item("group_size", lq.group_size)?;
                    l.set_item(name, e)?;
                }
                d.set_item("quantized_layers", l)?;
            }
        }
        Ok(Some(d))
    }

    /// Every quantized module as a dict: name, quant_algo, n, k, group_size, lead, tensors
    /// (role -> tensor name), extras.
    fn modules<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for m in &self.inner.modules {
            let d = PyDict::new(py);
            d.set_item("name", &m.name)?;
            d.set_item("quant_algo", m.spec.name)?;
            d.set_item("n", m.n)?;
            d.set_item("k", m.k)?;
            d.set_item("group_size", m.group)?;
            d.set_item("lead", m.lead.clone())?;
            let t = PyDict::new(py);
            for (role, name) in &m.tensors {
                t.set_item(role.suffix(), name)?;
            }
            d.set_item("tensors", t)?;
            d.set_item("extras", m.extras.clone())?;
            out.append(d)?;
        }
        Ok(out)
    }

    /// KV-cache tensors: list of {tensor, attention, kind}.
    fn kv_tensors<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for k in &self.inner.kv {
            let d = PyDict::new(py);
            d.set_item("tensor", &k.tensor)?;
            d.set_item("attention", &k.attention)?;
            d.set_item("kind", &k.kind)?;
            out.append(d)?;
        }
        Ok(out)
    }

    /// Copies the raw bytes of tensor `name` into `buffer` (a contiguous CPU tensor of
    /// exactly that many bytes).
    fn read_into(&self, py: Python<'_>, name: &str, buffer: &Bound<'_, PyAny>) -> PyResult<()> {
        let buf = HostBuffer::from_tensor(buffer)?;
        let inner = self.inner.clone();
        let name = name.to_string();
        py.detach(move || -> Result<(), Error> {
            let src = inner.tensor_data(&name)?;
            // SAFETY: `buf` is the only handle on this memory inside this call.
            let dst = unsafe { buf.slice() };
            if dst.len() != src.len() {
                return Err(Error::argument(format!(
                    "buffer for '{name}' has {} bytes, tensor has {}",
                    dst.len(),
                    src.len()
                )));
            }
            dst.copy_from_slice(src);
            Ok(())
        })
        .map_err(to_py)
    }

    /// Dequantizes module `name` into `buffer` (contiguous CPU tensor of [*lead, N, K] in
    /// `dtype`: "float32", "bfloat16" or "float16"), on all cores with the GIL released.
    fn dequantize_into(&self, py: Python<'_>, name: &str, buffer: &Bound<'_, PyAny>, dtype: &str) -> PyResult<()> {
        let out_dtype = OutDType::parse(dtype)
            .ok_or_else(|| ArgumentError::new_err(format!("unsupported output dtype '{dtype}'")))?;
        let buf = HostBuffer::from_tensor(buffer)?;
        let inner = self.inner.clone();
        let name = name.to_string();
        py.detach(move || -> Result<(), Error> {
            let m = inner
                .module(&name)
                .ok_or_else(|| Error::argument(format!("'{name}' is not a quantized module of this checkpoint")))?;
            // SAFETY: `buf` is the only handle on this memory inside this call.
            dequantize_into(&inner, m, unsafe { buf.slice() }, out_dtype)
        })
        .map_err(to_py)
    }

    /// The load plan for all tensors, or for the modules matching `modules` (names, globs or
    /// dotted prefixes). `slices` maps tensor names to `(axis, start, len)`: only that part of
    /// the stored tensor is read and loaded (a tensor-parallel rank's shard).
    #[pyo3(signature = (modules=None, slices=None))]
    fn plan(
        &self,
        py: Python<'_>,
        modules: Option<Vec<String>>,
        slices: Option<std::collections::HashMap<String, (usize, u64, u64)>>,
    ) -> PyResult<LoadPlan> {
        let inner = self.inner.clone();
        let slices: std::collections::HashMap<String, plan::Slice> = slices
            .unwrap_or_default()
            .into_iter()
            .map(|(t, (axis, start, len))| (t, plan::Slice { axis, start, len }))
            .collect();
        let (items, total) = py
            .detach(|| plan::build_sliced_plan(&inner, modules.as_deref(), &slices))
            .map_err(to_py)?;
        Ok(LoadPlan {
            ck: inner,
            items: Arc::new(items),
            total,
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "<motensor._core.Checkpoint {} ({} shards, {} tensors, {} quantized modules)>",
            self.inner.root.display(),
            self.inner.shards.len(),
            self.inner.tensors.len(),
            self.inner.modules.len()
        )
    }
}

/// Where every tensor goes in one destination arena, and how to fill it.
#[pyclass(frozen, module = "motensor._core")]
struct LoadPlan {
    ck: Arc<motensor_core::Checkpoint>,
    items: Arc<Vec<LoadItem>>,
    total: u64,
}

fn transform_name(t: &Transform) -> &'static str {
    match t {
        Transform::Copy => "copy",
        Transform::Int4ToKPacked { .. } => "int4_to_k_packed",
        Transform::Transpose { .. } => "transpose",
        Transform::ScalarToF32 { .. } => "scalar_to_f32",
    }
}

/// Batches of one staging size (returned by `LoadPlan.batches`).
#[pyclass(frozen, module = "motensor._core")]
struct BatchList {
    ck: Arc<motensor_core::Checkpoint>,
    items: Arc<Vec<LoadItem>>,
    batches: Vec<Batch>,
}

#[pymethods]
impl LoadPlan {
    /// Bytes of the destination arena (all tensors, 256-byte aligned).
    #[getter]
    fn total_bytes(&self) -> u64 {
        self.total
    }

    /// Bytes of the checkpoint files these tensors (or their slices) occupy: what is read.
    #[getter]
    fn source_bytes(&self) -> u64 {
        self.items
            .iter()
            .filter_map(|it| {
                let info = self.ck.tensor_info(&it.tensor)?;
                Some(if it.window.is_full() { info.nbytes() } else { it.window.src_bytes() })
            })
            .sum()
    }

    fn __len__(&self) -> usize {
        self.items.len()
    }

    /// Items as dicts: tensor, module, role, transform, dtype, shape, nbytes, offset.
    fn items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for it in self.items.iter() {
            let d = PyDict::new(py);
            d.set_item("tensor", &it.tensor)?;
            d.set_item("module", it.module.clone())?;
            d.set_item("role", it.role.map(|r| r.suffix()))?;
            d.set_item("transform", transform_name(&it.transform))?;
            d.set_item("dtype", it.out_dtype.name())?;
            d.set_item("shape", it.out_shape.clone())?;
            d.set_item("nbytes", it.out_bytes)?;
            d.set_item("offset", it.offset)?;
            out.append(d)?;
        }
        Ok(out)
    }

    /// Cuts the arena into batches of at most `chunk_bytes`.
    fn batches(&self, chunk_bytes: u64) -> PyResult<BatchList> {
        let b = plan::batches(&self.items, chunk_bytes).map_err(to_py)?;
        Ok(BatchList {
            ck: self.ck.clone(),
            items: self.items.clone(),
            batches: b,
        })
    }

    /// Fills the whole arena `buffer` (a CPU tensor of `total_bytes` bytes) in one go.
    fn fill_all(&self, py: Python<'_>, buffer: &Bound<'_, PyAny>) -> PyResult<()> {
        let buf = HostBuffer::from_tensor(buffer)?;
        if (buf.len as u64) < self.total {
            return Err(ArgumentError::new_err(format!(
                "arena buffer has {} bytes, plan needs {}",
                buf.len, self.total
            )));
        }
        let (ck, items) = (self.ck.clone(), self.items.clone());
        py.detach(move || {
            // SAFETY: `buf` is the only handle on this memory inside this call.
            fill::fill_all(&ck, &items, unsafe { buf.slice() })
        })
        .map_err(to_py)
    }
}

#[pymethods]
impl BatchList {
    fn __len__(&self) -> usize {
        self.batches.len()
    }

    /// `(begin, end)` arena range of batch `i`.
    fn range(&self, i: usize) -> PyResult<(u64, u64)> {
        let b = self.get(i)?;
        Ok((b.begin, b.end))
    }

    /// Fills batch `i` into `buffer` (a CPU tensor, typically pinned, of at least
    /// `end - begin` bytes) with the GIL released.
    fn fill(&self, py: Python<'_>, i: usize, buffer: &Bound<'_, PyAny>) -> PyResult<()> {
        let buf = HostBuffer::from_tensor(buffer)?;
        let (ck, items) = (self.ck.clone(), self.items.clone());
        let pieces = self.get(i)?.pieces.clone();
        py.detach(move || {
            // SAFETY: `buf` is the only handle on this memory inside this call.
            fill::fill(&ck, &items, &pieces, unsafe { buf.slice() })
        })
        .map_err(to_py)
    }

    /// Starts page-cache readahead for batch `i` (cheap; returns at once).
    fn prefetch(&self, py: Python<'_>, i: usize) -> PyResult<()> {
        let pieces = self.get(i)?.pieces.clone();
        let (ck, items) = (self.ck.clone(), self.items.clone());
        py.detach(move || fill::prefetch(&ck, &items, &pieces));
        Ok(())
    }
}

impl BatchList {
    fn get(&self, i: usize) -> PyResult<&Batch> {
        self.batches
            .get(i)
            .ok_or_else(|| ArgumentError::new_err(format!("batch {i} of {}", self.batches.len())))
    }
}

fn enum_name<T: std::fmt::Debug>(t: T) -> String {
    // Debug of a fieldless enum variant is its name; snake_case it for Python.
    let s = format!("{t:?}");
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The format table (one dict per quant_algo), the single source of format facts.
#[pyfunction]
fn format_table(py: Python<'_>) -> PyResult<Bound<'_, PyList>> {
    let out = PyList::empty(py);
    for f in FORMATS {
        let d = PyDict::new(py);
        d.set_item("name", f.name)?;
        d.set_item("element", enum_name::<Element>(f.element))?;
        d.set_item("packing", enum_name::<Packing>(f.packing))?;
        d.set_item("default_group", f.default_group)?;
        d.set_item("activation", enum_name::<Activation>(f.activation))?;
        d.set_item("global_scale", enum_name::<GlobalScale>(f.global_scale))?;
        d.set_item("weight_layout", enum_name::<WeightLayout>(f.weight_layout))?;
        d.set_item("scale_layout", enum_name::<ScaleLayout>(f.scale_layout))?;
        d.set_item("group_divides_k", f.group_divides_k)?;
        d.set_item("math", f.math)?;
        let rules = PyList::empty(py);
        for r in f.tensors {
            let rd = PyDict::new(py);
            rd.set_item("role", r.role.suffix())?;
            rd.set_item("required", r.presence == Presence::Required)?;
            rd.set_item("dtypes", r.dtypes.iter().map(|d| d.name()).collect::<Vec<_>>())?;
            rd.set_item("shape", enum_name::<ShapeRule>(r.shape))?;
            rd.set_item("encoding", enum_name::<ScaleEncoding>(r.encoding))?;
            rules.append(rd)?;
        }
        d.set_item("tensors", rules)?;
        out.append(d)?;
    }
    Ok(out)
}

/// `quant_algo` strings recognised but refused, with the reason.
#[pyfunction]
fn unsupported_formats() -> Vec<(&'static str, &'static str)> {
    KNOWN_UNSUPPORTED.to_vec()
}

/// Threads used for host work (rayon's pool; set MOTENSOR_NUM_THREADS or RAYON_NUM_THREADS
/// before the first load to change it).
/// Bytes of checkpoint data the fills of this process have read so far (counted as copied).
#[pyfunction]
fn source_bytes_read() -> u64 {
    fill::source_bytes_read()
}

#[pyfunction]
fn num_threads() -> usize {
    rayon_threads()
}

fn rayon_threads() -> usize {
    motensor_core::fill::num_threads()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    // Size rayon's global pool from MOTENSOR_NUM_THREADS now, before anything uses it:
    // `Checkpoint::open` already runs on rayon, and a pool, once built, cannot be resized, so
    // setting the pool up only at the first fill silently ignored the variable.
    rayon_threads();
    m.add("__version__", motensor_core::VERSION)?;
    m.add_class::<Checkpoint>()?;
    m.add_class::<LoadPlan>()?;
    m.add_class::<BatchList>()?;
    m.add_function(wrap_pyfunction!(format_table, m)?)?;
    m.add_function(wrap_pyfunction!(unsupported_formats, m)?)?;
    m.add_function(wrap_pyfunction!(num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(source_bytes_read, m)?)?;
    m.add("MotensorError", py.get_type::<MotensorError>())?;
    m.add("HeaderError", py.get_type::<HeaderError>())?;
    m.add("ShardError", py.get_type::<ShardError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("FormatError", py.get_type::<FormatError>())?;
    m.add("UnsupportedFormatError", py.get_type::<UnsupportedFormatError>())?;
    m.add("ArgumentError", py.get_type::<ArgumentError>())?;
    Ok(())
}
