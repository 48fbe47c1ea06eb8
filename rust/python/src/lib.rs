//! `motensor._core`: thin pyo3 bindings of motensor-core.
//!
//! Only glue lives here: argument conversion, the GIL released around file work, and core
//! errors mapped onto the `motensor.errors` exception hierarchy. The exception classes are
//! plain Python classes defined in `motensor/errors.py` (so that they can also derive from
//! `OSError` / `ValueError` and print as `motensor.errors.X`); this module looks them up there
//! when it raises one.

mod cpu_gemm;

use std::sync::Arc;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::intern;
use pyo3::types::{PyDict, PyList, PyString};

use motensor_core::dequant::{dequantize_into, OutDType};
use motensor_core::formats::{Activation, Element, GlobalScale, Packing, Presence, ScaleEncoding, ScaleLayout, ShapeRule, WeightLayout, FORMATS, KNOWN_UNSUPPORTED};
use motensor_core::plan::{self, Batch, LoadItem, Transform};
use motensor_core::quant_config::Scheme;
use motensor_core::{fill, Error, ErrorKind, OpenOptions};

/// An instance of `motensor.errors.<class>` carrying `msg` and the location attributes.
fn motensor_error(class: &str, msg: String, file: Option<String>, tensor: Option<String>, module: Option<String>) -> PyErr {
    Python::attach(|py| {
        let made = py
            .import("motensor.errors")
            .and_then(|m| m.getattr(class))
            .and_then(|cls| {
                let kw = PyDict::new(py);
                kw.set_item("file", file)?;
                kw.set_item("tensor", tensor)?;
                kw.set_item("module", module)?;
                cls.call((msg.clone(),), Some(&kw))
            });
        match made {
            Ok(v) => PyErr::from_value(v),
            // motensor.errors is part of this package; if it cannot be imported the install is
            // broken, and saying so with the original message is all that is left.
            Err(e) => PyRuntimeError::new_err(format!("{msg} (and motensor.errors.{class} is unavailable: {e})")),
        }
    })
}

fn argument_error(msg: impl Into<String>) -> PyErr {
    motensor_error("ArgumentError", msg.into(), None, None, None)
}

fn to_py(err: Error) -> PyErr {
    let class = match err.kind() {
        ErrorKind::Io | ErrorKind::Shard => "ShardError",
        ErrorKind::Header => "HeaderError",
        ErrorKind::Config => "ConfigError",
        ErrorKind::Format => "FormatError",
        ErrorKind::UnsupportedFormat => "UnsupportedFormatError",
        ErrorKind::Argument => "ArgumentError",
    };
    motensor_error(
        class,
        err.to_string(),
        err.file().map(|f| f.display().to_string()),
        err.tensor().map(str::to_string),
        err.module().map(str::to_string),
    )
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
            return Err(argument_error(format!("buffer must be a CPU tensor, got device '{device}'")));
        }
        let contiguous: bool = obj.call_method0("is_contiguous")?.extract()?;
        if !contiguous {
            return Err(argument_error("buffer must be contiguous"));
        }
        let ptr: usize = obj.call_method0("data_ptr")?.extract()?;
        let len: usize = obj.getattr("nbytes")?.extract()?;
        if ptr == 0 && len > 0 {
            return Err(argument_error("buffer has no storage"));
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
    // The memory belongs to the Python tensor, not to `self` (which only keeps it alive), so a
    // mutable slice from a shared borrow is what this is; callers hold the only handle.
    #[allow(clippy::mut_from_ref)]
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
    #[pyo3(
        signature = (path, validate_scales=true),
        text_signature = "(path: str | PathLike[str], validate_scales: bool = True)"
    )]
    fn new(py: Python<'_>, path: std::path::PathBuf, validate_scales: bool) -> PyResult<Self> {
        let ck = py
            .detach(|| motensor_core::Checkpoint::open_with(&path, OpenOptions { validate_scales }))
            .map_err(to_py)?;
        Ok(Checkpoint { inner: Arc::new(ck) })
    }

    /// Whether scales are validated (see `motensor.open`).
    ///
    /// :type: bool
    #[getter]
    fn validate_scales(&self) -> bool {
        self.inner.validate_scales
    }

    /// `config.json` as text, checked to be bounded, valid JSON (None if there is none).
    ///
    /// :rtype: str | None
    fn config_text(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let inner = self.inner.clone();
        py.detach(move || inner.config_text()).map_err(to_py)
    }
    /// :type: str
    #[getter]
    fn root(&self) -> String {
        self.inner.root.display().to_string()
    }

    /// :type: list[str]
    #[getter]
    fn shards(&self) -> Vec<String> {
        self.inner.shards.iter().map(|s| s.path.display().to_string()).collect()
    }

    /// :type: int
    #[getter]
    fn total_bytes(&self) -> u64 {
        self.inner.total_bytes()
    }

    /// :type: list[str]
    #[getter]
    fn notes(&self) -> Vec<String> {
        self.inner.notes.clone()
    }

    /// :rtype: list[str]
    fn tensor_names(&self) -> Vec<String> {
        self.inner.tensor_names().map(str::to_string).collect()
    }

    /// :rtype: list[str]
    fn plain_tensors(&self) -> Vec<String> {
        self.inner.plain.clone()
    }

    /// `{name, dtype, shape, file, offset, nbytes}` of one tensor (offset is absolute).
    ///
    /// :rtype: dict[str, Any]
    #[pyo3(text_signature = "($self, name: str)")]
    fn tensor_info<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyDict>> {
        let info = self
            .inner
            .tensor_info(name)
            .ok_or_else(|| argument_error(format!("no tensor named '{name}'")))?;
        let shard = self
            .inner
            .shard_of(name)
            .ok_or_else(|| argument_error(format!("no tensor named '{name}'")))?;
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
    ///
    /// :rtype: Optional[dict[str, Any]]
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

    /// Every quantized module as a dict: name, quant_algo, n, k, group_size, lead, bmm, tensors
    /// (role -> tensor name), extras.
    ///
    /// :rtype: list[dict[str, Any]]
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
            d.set_item("bmm", m.bmm)?;
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
    ///
    /// :rtype: list[dict[str, str]]
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
    ///
    /// :rtype: None
    #[pyo3(text_signature = "($self, name: str, buffer: torch.Tensor)")]
    fn read_into(&self, py: Python<'_>, name: &str, buffer: &Bound<'_, PyAny>) -> PyResult<()> {
        let buf = HostBuffer::from_tensor(buffer)?;
        let inner = self.inner.clone();
        let name = name.to_string();
        py.detach(move || -> Result<(), Error> {
            let (_, info) = inner.locate(&name)?;
            // SAFETY: `buf` is the only handle on this memory inside this call.
            let dst = unsafe { buf.slice() };
            if dst.len() as u64 != info.nbytes() {
                return Err(Error::argument(format!(
                    "buffer for '{name}' has {} bytes, tensor has {}",
                    dst.len(),
                    info.nbytes()
                )));
            }
            inner.read_into(&name, 0, dst)
        })
        .map_err(to_py)
    }

    /// Dequantizes module `name` into `buffer` (contiguous CPU tensor of [*lead, N, K] in
    /// `dtype`: "float32", "bfloat16" or "float16"), on all cores with the GIL released.
    ///
    /// :rtype: None
    #[pyo3(text_signature = "($self, name: str, buffer: torch.Tensor, dtype: str)")]
    fn dequantize_into(&self, py: Python<'_>, name: &str, buffer: &Bound<'_, PyAny>, dtype: &str) -> PyResult<()> {
        let out_dtype = OutDType::parse(dtype)
            .ok_or_else(|| argument_error(format!("unsupported output dtype '{dtype}'")))?;
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
    ///
    /// :rtype: LoadPlan
    #[pyo3(
        signature = (modules=None, slices=None),
        text_signature = "($self, modules: Optional[Sequence[str]] = None, slices: Optional[Mapping[str, tuple[int, int, int]]] = None)"
    )]
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
            self.inner.tensor_count(),
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
    ///
    /// :type: int
    #[getter]
    fn total_bytes(&self) -> u64 {
        self.total
    }

    /// Bytes of the checkpoint files these tensors (or their slices) occupy: what is read.
    ///
    /// :type: int
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
    ///
    /// :rtype: list[dict[str, Any]]
    fn items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        // Keys and the few distinct values are Python strings made once (interned), not per
        // item: at 180k tensors that is most of the cost.
        let keys = [
            intern!(py, "tensor"),
            intern!(py, "module"),
            intern!(py, "role"),
            intern!(py, "transform"),
            intern!(py, "dtype"),
            intern!(py, "shape"),
            intern!(py, "nbytes"),
            intern!(py, "offset"),
        ];
        let mut words: std::collections::HashMap<&'static str, Bound<'py, PyString>> = std::collections::HashMap::new();
        let mut word = |w: &'static str| words.entry(w).or_insert_with(|| PyString::intern(py, w)).clone();
        let mut modules: Option<(&str, Bound<'py, PyString>)> = None;
        let mut items = Vec::with_capacity(self.items.len());
        for it in self.items.iter() {
            let d = PyDict::new(py);
            d.set_item(keys[0], &it.tensor)?;
            // Items of one module are mostly adjacent: reuse its name object.
            let module = it.module.as_deref().map(|m| match &modules {
                Some((prev, obj)) if *prev == m => obj.clone(),
                _ => {
                    let obj = PyString::new(py, m);
                    modules = Some((m, obj.clone()));
                    obj
                }
            });
            d.set_item(keys[1], module)?;
            d.set_item(keys[2], it.role.map(|r| word(r.suffix())))?;
            d.set_item(keys[3], word(transform_name(&it.transform)))?;
            d.set_item(keys[4], word(it.out_dtype.name()))?;
            d.set_item(keys[5], PyList::new(py, &it.out_shape)?)?;
            d.set_item(keys[6], it.out_bytes)?;
            d.set_item(keys[7], it.offset)?;
            items.push(d);
        }
        PyList::new(py, items)
    }

    /// Cuts the arena into batches of at most `chunk_bytes`.
    ///
    /// :rtype: BatchList
    #[pyo3(text_signature = "($self, chunk_bytes: int)")]
    fn batches(&self, chunk_bytes: u64) -> PyResult<BatchList> {
        let b = plan::batches(&self.items, chunk_bytes).map_err(to_py)?;
        Ok(BatchList {
            ck: self.ck.clone(),
            items: self.items.clone(),
            batches: b,
        })
    }

    /// Fills the whole arena `buffer` (a CPU tensor of `total_bytes` bytes) in one go.
    ///
    /// :rtype: None
    #[pyo3(text_signature = "($self, buffer: torch.Tensor)")]
    fn fill_all(&self, py: Python<'_>, buffer: &Bound<'_, PyAny>) -> PyResult<()> {
        let buf = HostBuffer::from_tensor(buffer)?;
        if (buf.len as u64) < self.total {
            return Err(argument_error(format!(
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
    ///
    /// :rtype: tuple[int, int]
    #[pyo3(text_signature = "($self, i: int)")]
    fn range(&self, i: usize) -> PyResult<(u64, u64)> {
        let b = self.get(i)?;
        Ok((b.begin, b.end))
    }

    /// Fills batch `i` into `buffer` (a CPU tensor, typically pinned, of at least
    /// `end - begin` bytes) with the GIL released.
    ///
    /// :rtype: None
    #[pyo3(text_signature = "($self, i: int, buffer: torch.Tensor)")]
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
    ///
    /// :rtype: None
    #[pyo3(text_signature = "($self, i: int)")]
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
            .ok_or_else(|| argument_error(format!("batch {i} of {}", self.batches.len())))
    }
}

/// The names of every value of the format table's enums, in id order: the vocabulary that
/// `motensor/_vocab.py` is generated from (`scripts/gen_stubs.py`) and that `format_table` uses.
///
/// :rtype: dict[str, list[str]]
#[pyfunction]
fn vocabulary(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    fn names<T: Copy>(all: &[T], name: fn(T) -> &'static str) -> Vec<&'static str> {
        all.iter().map(|v| name(*v)).collect()
    }
    let d = PyDict::new(py);
    d.set_item("Element", names(Element::ALL, Element::name))?;
    d.set_item("Packing", names(Packing::ALL, Packing::name))?;
    d.set_item("ScaleEncoding", names(ScaleEncoding::ALL, ScaleEncoding::name))?;
    d.set_item("ShapeRule", names(ShapeRule::ALL, ShapeRule::name))?;
    d.set_item("Activation", names(Activation::ALL, Activation::name))?;
    d.set_item("GlobalScale", names(GlobalScale::ALL, GlobalScale::name))?;
    d.set_item("WeightLayout", names(WeightLayout::ALL, WeightLayout::name))?;
    d.set_item("ScaleLayout", names(ScaleLayout::ALL, ScaleLayout::name))?;
    Ok(d)
}

/// The format table (one dict per quant_algo), the single source of format facts. Enum-valued
/// fields hold the stable names of `vocabulary()`.
///
/// :rtype: list[dict[str, Any]]
#[pyfunction]
fn format_table(py: Python<'_>) -> PyResult<Bound<'_, PyList>> {
    let out = PyList::empty(py);
    for f in FORMATS {
        let d = PyDict::new(py);
        d.set_item("name", f.name)?;
        d.set_item("element", f.element.name())?;
        d.set_item("packing", f.packing.name())?;
        d.set_item("default_group", f.default_group)?;
        d.set_item("activation", f.activation.name())?;
        d.set_item("global_scale", f.global_scale.name())?;
        d.set_item("weight_layout", f.weight_layout.name())?;
        d.set_item("scale_layout", f.scale_layout.name())?;
        d.set_item("group_divides_k", f.group_divides_k)?;
        d.set_item("math", f.math)?;
        let rules = PyList::empty(py);
        for r in f.tensors {
            let rd = PyDict::new(py);
            rd.set_item("role", r.role.suffix())?;
            rd.set_item("required", r.presence == Presence::Required)?;
            rd.set_item("dtypes", r.dtypes.iter().map(|d| d.name()).collect::<Vec<_>>())?;
            rd.set_item("shape", r.shape.name())?;
            rd.set_item("encoding", r.encoding.name())?;
            rules.append(rd)?;
        }
        d.set_item("tensors", rules)?;
        out.append(d)?;
    }
    Ok(out)
}

/// `quant_algo` strings recognised but refused, with the reason.
///
/// :rtype: list[tuple[str, str]]
#[pyfunction]
fn unsupported_formats() -> Vec<(&'static str, &'static str)> {
    KNOWN_UNSUPPORTED.to_vec()
}

/// Bytes of checkpoint data the fills of this process have read so far (counted at each read).
///
/// :rtype: int
#[pyfunction]
fn source_bytes_read() -> u64 {
    fill::source_bytes_read()
}

/// Threads used for host work (motensor's own pool, rebuilt in a forked child; set
/// MOTENSOR_NUM_THREADS or RAYON_NUM_THREADS before the first load of a process to change it).
///
/// :rtype: int
#[pyfunction]
fn num_threads() -> usize {
    motensor_core::fill::num_threads()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // No thread is started at import: the pool is built on first use (and again in a forked
    // child, see motensor-core's pool.rs). A child forked after this import keeps off the
    // OpenMP team (motensor-core's omp.rs).
    motensor_core::omp::register_fork_handler();
    m.add("__version__", motensor_core::VERSION)?;
    m.add_class::<Checkpoint>()?;
    m.add_class::<LoadPlan>()?;
    m.add_class::<BatchList>()?;
    m.add_function(wrap_pyfunction!(format_table, m)?)?;
    m.add_function(wrap_pyfunction!(vocabulary, m)?)?;
    m.add_function(wrap_pyfunction!(unsupported_formats, m)?)?;
    m.add_function(wrap_pyfunction!(num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(source_bytes_read, m)?)?;
    cpu_gemm::register(m)?;
    Ok(())
}
