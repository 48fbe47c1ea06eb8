//! Bindings of `motensor_core::cpu_gemm`: the fused CPU GEMMs behind the custom ops' CPU
//! implementations (`motensor/kernels/cpu.py` checks and prepares the tensors first).
//!
//! Torch tensors cross as (data pointer, element count) read under the GIL; the checks that
//! make borrowing their memory sound are repeated here (CPU device, contiguous, exact dtype,
//! aligned pointer, output not overlapping any input), and the computation runs with the GIL
//! released.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use motensor_core::cpu_gemm::{
    self as core_gemm, ActQuant, Acts, ActsMut, Dtype, Element4, Epilogue, Factor, Fp8Scales, Fp8Weight, Int8Weight, Isa,
    Linear, Operand, Scales4, W4Weight, Weight,
};

use crate::{argument_error, to_py};

/// A borrowed contiguous CPU tensor.
struct View {
    ptr: usize,
    numel: usize,
    elem: usize,
    _owner: Py<PyAny>,
}

impl View {
    /// Checks device, contiguity and dtype (`"torch.float32"`...), and records pointer and length.
    fn new(obj: &Bound<'_, PyAny>, dtype: &str, elem: usize, what: &str) -> PyResult<View> {
        let device: String = obj.getattr("device")?.getattr("type")?.extract()?;
        if device != "cpu" {
            return Err(argument_error(format!("{what} must be a CPU tensor, got device '{device}'")));
        }
        let have: String = obj.getattr("dtype")?.str()?.extract()?;
        if have != dtype {
            return Err(argument_error(format!("{what} must be {dtype}, got {have}")));
        }
        View::storage(obj, elem, what)
    }

    /// Contiguity, pointer and length (device and dtype checked by the caller).
    fn storage(obj: &Bound<'_, PyAny>, elem: usize, what: &str) -> PyResult<View> {
        if !obj.call_method0("is_contiguous")?.extract::<bool>()? {
            return Err(argument_error(format!("{what} must be contiguous")));
        }
        let ptr: usize = obj.call_method0("data_ptr")?.extract()?;
        let numel: usize = obj.call_method0("numel")?.extract()?;
        // `elem` is 1, 2 or 4 (a power of two): the mask tests alignment.
        if numel > 0 && (ptr == 0 || ptr & (elem - 1) != 0) {
            return Err(argument_error(format!("{what} has no storage or a misaligned data pointer")));
        }
        Ok(View { ptr, numel, elem, _owner: obj.clone().unbind() })
    }

    fn opt(obj: Option<&Bound<'_, PyAny>>, dtype: &str, elem: usize, what: &str) -> PyResult<Option<View>> {
        obj.map(|o| View::new(o, dtype, elem, what)).transpose()
    }

    fn range(&self) -> (usize, usize) {
        (self.ptr, self.ptr + self.numel * self.elem)
    }

    /// # Safety
    /// `T` must be the element type checked in `new` (size `elem`), and no `&mut` to the same
    /// memory may exist while the slice lives.
    unsafe fn slice<T>(&self) -> &[T] {
        debug_assert_eq!(std::mem::size_of::<T>(), self.elem);
        if self.numel == 0 {
            return &[];
        }
        // SAFETY: `ptr` is the data pointer of a contiguous CPU tensor of `numel` elements of
        // `T` (device, contiguity, dtype and alignment checked in `new`); its storage stays
        // alive because `_owner` holds a strong reference to the tensor. Python code resizing
        // or freeing that storage from another thread during the call would break this;
        // motensor's own callers never do (cpu.py allocates the output and holds the inputs).
        std::slice::from_raw_parts(self.ptr as *const T, self.numel)
    }

    /// # Safety
    /// As `slice`, and this view must be the only way to reach its memory during the call
    /// (checked against every input by `disjoint`).
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice_mut<T>(&self) -> &mut [T] {
        if self.numel == 0 {
            return &mut [];
        }
        // SAFETY: see `slice`; exclusivity is the caller's `disjoint` check.
        std::slice::from_raw_parts_mut(self.ptr as *mut T, self.numel)
    }
}

/// The output must not overlap any input (it is written while they are read).
fn disjoint(out: &View, inputs: &[Option<&View>]) -> PyResult<()> {
    let (a0, a1) = out.range();
    for v in inputs.iter().flatten() {
        let (b0, b1) = v.range();
        if a0 < b1 && b0 < a1 && a1 > a0 && b1 > b0 {
            return Err(argument_error("the output tensor overlaps an input"));
        }
    }
    Ok(())
}

fn operand(name: &str) -> PyResult<Operand> {
    Ok(match name {
        "float32" => Operand::F32,
        "bfloat16" => Operand::Bf16,
        "float16" => Operand::F16,
        "e4m3" => Operand::E4M3,
        _ => return Err(argument_error(format!("unknown operand rounding '{name}'"))),
    })
}

fn factor<'a>(v: &'a Option<View>) -> Factor<'a> {
    match v {
        None => Factor::One,
        // SAFETY: epilogue factors are checked as float32 in `WeightArgs::views`.
        Some(v) => {
            let s: &[f32] = unsafe { v.slice() };
            if s.len() == 1 {
                Factor::Scalar(s[0])
            } else {
                Factor::Each(s)
            }
        }
    }
}

/// A weight described from Python: family, tensors and format parameters.
struct WeightViews {
    kind: String,
    n: usize,
    k: usize,
    q: View,
    scales: Option<View>,
    element: String,
    scale_kind: String,
    group: usize,
    scale_mul: Option<f32>,
    scale_div: Option<f32>,
}

impl WeightViews {
    #[allow(clippy::too_many_arguments)]
    fn new(
        kind: &str, n: usize, k: usize, q: &Bound<'_, PyAny>, scales: Option<&Bound<'_, PyAny>>, element: &str,
        scale_kind: &str, group: usize, scale_mul: Option<f32>, scale_div: Option<f32>,
    ) -> PyResult<WeightViews> {
        let (qdtype, elem) = match kind {
            "w4" => ("torch.uint8", 1),
            "fp8" => ("torch.float8_e4m3fn", 1),
            "int8" => ("torch.int8", 1),
            _ => return Err(argument_error(format!("unknown weight family '{kind}'"))),
        };
        let q = View::new(q, qdtype, elem, "weight")?;
        let scales = match (kind, scale_kind) {
            ("w4", "E4M3") => View::opt(scales, "torch.float8_e4m3fn", 1, "weight_scale")?,
            ("w4", "E8M0") | ("fp8", "E8M0") => View::opt(scales, "torch.uint8", 1, "weight_scale")?,
            ("w4", "F32") | ("fp8", "F32_BLOCK") | ("int8", "F32") => View::opt(scales, "torch.float32", 4, "weight_scale")?,
            ("fp8", "NONE") | ("int8", "NONE") => None,
            _ => return Err(argument_error(format!("unknown scale kind '{scale_kind}' for '{kind}'"))),
        };
        if scales.is_none() && !matches!(scale_kind, "NONE") {
            return Err(argument_error(format!("'{kind}' with {scale_kind} scales needs the scale tensor")));
        }
        Ok(WeightViews {
            kind: kind.into(),
            n,
            k,
            q,
            scales,
            element: element.into(),
            scale_kind: scale_kind.into(),
            group,
            scale_mul,
            scale_div,
        })
    }

    /// # Safety
    /// The views must stay alive and unaliased by a `&mut` while the weight is used.
    unsafe fn weight(&self) -> PyResult<Weight<'_>> {
        let (n, k) = (self.n, self.k);
        Ok(match self.kind.as_str() {
            "w4" => {
                let element = match self.element.as_str() {
                    "E2M1" => Element4::E2M1,
                    "INT4" => Element4::Int4,
                    e => return Err(argument_error(format!("unknown 4-bit element '{e}'"))),
                };
                let s = self.scales.as_ref().ok_or_else(|| argument_error("missing scales"))?;
                let scales = match self.scale_kind.as_str() {
                    "E4M3" => Scales4::E4M3(s.slice()),
                    "E8M0" => Scales4::E8M0(s.slice()),
                    _ => Scales4::F32(s.slice()),
                };
                Weight::W4(W4Weight {
                    packed: self.q.slice(),
                    n,
                    k,
                    element,
                    scales,
                    group: self.group,
                    scale_mul: self.scale_mul,
                    scale_div: self.scale_div,
                })
            }
            "fp8" => {
                let scales = match (self.scale_kind.as_str(), &self.scales) {
                    ("F32_BLOCK", Some(s)) => Fp8Scales::Block { scales: s.slice(), block: self.group },
                    ("E8M0", Some(s)) => Fp8Scales::E8M0 { scales: s.slice(), group: self.group },
                    _ => Fp8Scales::None,
                };
                Weight::Fp8(Fp8Weight { w: self.q.slice(), n, k, scales })
            }
            _ => Weight::Int8(Int8Weight { w: self.q.slice(), n, k, scale: self.scales.as_ref().map(|s| s.slice()) }),
        })
    }

    fn inputs(&self) -> [Option<&View>; 2] {
        [Some(&self.q), self.scales.as_ref()]
    }
}

/// `out[M, N] = (x[M, K] @ W^T) * a * b + bias` (fp32 x, out, a, b, bias; see cpu.py).
///
/// :rtype: None
#[pyfunction]
#[pyo3(
    signature = (x, out, m, kind, n, k, qweight, scales, element, scale_kind, group, scale_mul, scale_div, operand_dtype, a, b, bias, force_scalar),
    text_signature = "(x: torch.Tensor, out: torch.Tensor, m: int, kind: str, n: int, k: int, qweight: torch.Tensor, scales: Optional[torch.Tensor], element: str, scale_kind: str, group: int, scale_mul: Optional[float], scale_div: Optional[float], operand_dtype: str, a: Optional[torch.Tensor], b: Optional[torch.Tensor], bias: Optional[torch.Tensor], force_scalar: bool)"
)]
#[allow(clippy::too_many_arguments)]
pub fn cpu_gemm(
    py: Python<'_>, x: &Bound<'_, PyAny>, out: &Bound<'_, PyAny>, m: usize, kind: &str, n: usize, k: usize,
    qweight: &Bound<'_, PyAny>, scales: Option<&Bound<'_, PyAny>>, element: &str, scale_kind: &str, group: usize,
    scale_mul: Option<f32>, scale_div: Option<f32>, operand_dtype: &str, a: Option<&Bound<'_, PyAny>>,
    b: Option<&Bound<'_, PyAny>>, bias: Option<&Bound<'_, PyAny>>, force_scalar: bool,
) -> PyResult<()> {
    let w = WeightViews::new(kind, n, k, qweight, scales, element, scale_kind, group, scale_mul, scale_div)?;
    let op = operand(operand_dtype)?;
    let xv = View::new(x, "torch.float32", 4, "x")?;
    let ov = View::new(out, "torch.float32", 4, "out")?;
    let av = View::opt(a, "torch.float32", 4, "row scale")?;
    let bv = View::opt(b, "torch.float32", 4, "column scale")?;
    let biasv = View::opt(bias, "torch.float32", 4, "bias")?;
    let [q, s] = w.inputs();
    disjoint(&ov, &[Some(&xv), q, s, av.as_ref(), bv.as_ref(), biasv.as_ref()])?;
    let isa = Isa::resolve(force_scalar);
    py.detach(|| {
        // SAFETY: every view was checked for device, dtype, contiguity and alignment, the
        // tensors are kept alive by the views, and the output overlaps no input.
        let weight = unsafe { w.weight() }?;
        let epi = Epilogue { a: factor(&av), b: factor(&bv), bias: biasv.as_ref().map(|v| unsafe { v.slice() }) };
        let (xs, os) = unsafe { (xv.slice::<f32>(), ov.slice_mut::<f32>()) };
        core_gemm::gemm(xs, m, &weight, op, &epi, os, isa).map_err(to_py)
    })
}

/// W8A8: `out[M, N] = (xq[M, K] @ W^T, exact int32) * a * b + bias` (int8 xq and weight).
///
/// :rtype: None
#[pyfunction]
#[pyo3(
    signature = (xq, out, m, n, k, qweight, a, b, bias, force_scalar),
    text_signature = "(xq: torch.Tensor, out: torch.Tensor, m: int, n: int, k: int, qweight: torch.Tensor, a: Optional[torch.Tensor], b: Optional[torch.Tensor], bias: Optional[torch.Tensor], force_scalar: bool)"
)]
#[allow(clippy::too_many_arguments)]
pub fn cpu_gemm_i8(
    py: Python<'_>, xq: &Bound<'_, PyAny>, out: &Bound<'_, PyAny>, m: usize, n: usize, k: usize,
    qweight: &Bound<'_, PyAny>, a: Option<&Bound<'_, PyAny>>, b: Option<&Bound<'_, PyAny>>,
    bias: Option<&Bound<'_, PyAny>>, force_scalar: bool,
) -> PyResult<()> {
    let xv = View::new(xq, "torch.int8", 1, "x")?;
    let qv = View::new(qweight, "torch.int8", 1, "weight")?;
    let ov = View::new(out, "torch.float32", 4, "out")?;
    let av = View::opt(a, "torch.float32", 4, "row scale")?;
    let bv = View::opt(b, "torch.float32", 4, "column scale")?;
    let biasv = View::opt(bias, "torch.float32", 4, "bias")?;
    disjoint(&ov, &[Some(&xv), Some(&qv), av.as_ref(), bv.as_ref(), biasv.as_ref()])?;
    let isa = Isa::resolve(force_scalar);
    py.detach(|| {
        // SAFETY: as in `cpu_gemm`.
        let w = Int8Weight { w: unsafe { qv.slice() }, n, k, scale: None };
        let epi = Epilogue { a: factor(&av), b: factor(&bv), bias: biasv.as_ref().map(|v| unsafe { v.slice() }) };
        let (xs, os) = unsafe { (xv.slice::<i8>(), ov.slice_mut::<f32>()) };
        core_gemm::gemm_i8(xs, m, &w, &epi, os, isa).map_err(to_py)
    })
}

/// The weight dequantized into `out`: all of it ([N, K] float32), or, for a bfloat16 `out`
/// (bf16 rounding), rows `row0 .. row0 + out.numel() / K` (a block of the dequantize + bf16 BLAS path).
///
/// :rtype: None
#[pyfunction]
#[pyo3(
    signature = (out, kind, n, k, qweight, scales, element, scale_kind, group, scale_mul, scale_div, operand_dtype, force_scalar, row0 = 0),
    text_signature = "(out: torch.Tensor, kind: str, n: int, k: int, qweight: torch.Tensor, scales: Optional[torch.Tensor], element: str, scale_kind: str, group: int, scale_mul: Optional[float], scale_div: Optional[float], operand_dtype: str, force_scalar: bool, row0: int = 0)"
)]
#[allow(clippy::too_many_arguments)]
pub fn cpu_dequant(
    py: Python<'_>, out: &Bound<'_, PyAny>, kind: &str, n: usize, k: usize, qweight: &Bound<'_, PyAny>,
    scales: Option<&Bound<'_, PyAny>>, element: &str, scale_kind: &str, group: usize, scale_mul: Option<f32>,
    scale_div: Option<f32>, operand_dtype: &str, force_scalar: bool, row0: usize,
) -> PyResult<()> {
    let w = WeightViews::new(kind, n, k, qweight, scales, element, scale_kind, group, scale_mul, scale_div)?;
    let op = operand(operand_dtype)?;
    // bfloat16 storage holds bf16-rounded values exactly; any other rounding is stored as fp32.
    let out_dtype: String = out.getattr("dtype")?.str()?.extract()?;
    let bf16 = out_dtype == "torch.bfloat16";
    if bf16 && op != Operand::Bf16 {
        return Err(argument_error("a bfloat16 output needs bfloat16 operand rounding"));
    }
    if !bf16 && row0 != 0 {
        return Err(argument_error("row0 needs a bfloat16 output (row blocks are a bf16 path)"));
    }
    let ov = if bf16 { View::new(out, "torch.bfloat16", 2, "out")? } else { View::new(out, "torch.float32", 4, "out")? };
    let [q, s] = w.inputs();
    disjoint(&ov, &[q, s])?;
    let isa = Isa::resolve(force_scalar);
    py.detach(|| {
        // SAFETY: as in `cpu_gemm`; `out` is u16 (bfloat16) or f32 as checked above.
        let weight = unsafe { w.weight() }?;
        if bf16 {
            core_gemm::dequant_bf16_rows(&weight, row0, unsafe { ov.slice_mut::<u16>() }, isa)
        } else {
            core_gemm::dequant(&weight, op, unsafe { ov.slice_mut::<f32>() }, isa)
        }
        .map_err(to_py)
    })
}

/// NVFP4 activation fake-quant: `out = fake_quant(x)` (float32 `[rows, K]`), `gs` float32 with one
/// global input scale or one per row (the reference's `nvfp4_fake_quant`, bit for bit).
///
/// :rtype: None
#[pyfunction]
#[pyo3(signature = (x, out, k, gs), text_signature = "(x: torch.Tensor, out: torch.Tensor, k: int, gs: torch.Tensor)")]
pub fn cpu_nvfp4_fake_quant(py: Python<'_>, x: &Bound<'_, PyAny>, out: &Bound<'_, PyAny>, k: usize, gs: &Bound<'_, PyAny>) -> PyResult<()> {
    let xv = View::new(x, "torch.float32", 4, "x")?;
    let ov = View::new(out, "torch.float32", 4, "out")?;
    let gv = View::new(gs, "torch.float32", 4, "input_scale")?;
    disjoint(&ov, &[Some(&xv), Some(&gv)])?;
    py.detach(|| {
        // SAFETY: all three views were checked (CPU, float32, contiguous, aligned), are kept alive
        // by the views, and the output overlaps neither input.
        let (xs, gs, os) = unsafe { (xv.slice::<f32>(), gv.slice::<f32>(), ov.slice_mut::<f32>()) };
        core_gemm::nvfp4_fake_quant(xs, k, gs, os).map_err(to_py)
    })
}

/// A prepared CPU linear layer: a `QuantLinear`'s tensors checked once, then `forward(x, out)`
/// runs the format's activation quantizer, the fused product and the rounding to the activation
/// dtype in one call (`motensor_core::cpu_gemm::linear`), the numbers of the op path.
///
/// `act`: "none", "nvfp4" (`act_scale` = input_scale), "fp8_static" (`act_scale` = input_scale),
/// "fp8_per_token"; `operand_dtype`: the weight operand rounding, or None for the activation
/// dtype's; `a` / `b`: fp32 epilogue factors (per row / per column, or one value); `bias` and
/// `pre_quant_scale` fp32.
#[pyclass(frozen, module = "motensor._core", name = "CpuLinear")]
pub struct CpuLinear {
    w: WeightViews,
    act: ActQuant,
    operand: Option<Operand>,
    a: Option<View>,
    b: Option<View>,
    bias: Option<View>,
    pre: Option<View>,
    /// NVFP4's E4M3 block scales row-major (`core_gemm::e4m3_rows`): 1 byte per 16 weights,
    /// copied once so that every call reads each row's scales contiguously.
    scale_rows: Option<Vec<u8>>,
}

/// torch.float32, torch.bfloat16, torch.float16 (compared by identity: a prepared layer checks
/// its activations on every call, with as few Python calls as the checks need).
fn act_dtypes(py: Python<'_>) -> PyResult<&[Py<PyAny>; 3]> {
    static DTYPES: PyOnceLock<[Py<PyAny>; 3]> = PyOnceLock::new();
    DTYPES.get_or_try_init(py, || {
        let torch = py.import("torch")?;
        Ok([torch.getattr("float32")?.unbind(), torch.getattr("bfloat16")?.unbind(), torch.getattr("float16")?.unbind()])
    })
}

/// A contiguous CPU activation tensor of float32 / bfloat16 / float16 (`want`: that one): the
/// checks of `View::new`, in fewer Python calls.
fn act_view(py: Python<'_>, obj: &Bound<'_, PyAny>, want: Option<Dtype>, what: &str) -> PyResult<(View, Dtype)> {
    let dt = obj.getattr("dtype")?;
    let all = act_dtypes(py)?;
    let (dtype, elem, name) = if dt.is(&all[0]) {
        (Dtype::F32, 4, "torch.float32")
    } else if dt.is(&all[1]) {
        (Dtype::Bf16, 2, "torch.bfloat16")
    } else if dt.is(&all[2]) {
        (Dtype::F16, 2, "torch.float16")
    } else {
        return Err(argument_error(format!("{what} must be float32, bfloat16 or float16, got {}", dt.str()?)));
    };
    if want.is_some_and(|w| w != dtype) {
        return Err(argument_error(format!("{what} must be torch.{}, got {name}", want.map_or("", |w| w.name()))));
    }
    if !obj.getattr("is_cpu")?.extract::<bool>()? {
        return Err(argument_error(format!("{what} must be a CPU tensor")));
    }
    Ok((View::storage(obj, elem, what)?, dtype))
}

#[pymethods]
impl CpuLinear {
    #[new]
    #[pyo3(
        signature = (kind, n, k, qweight, scales, element, scale_kind, group, scale_mul, scale_div, act, act_scale, operand_dtype, a, b, bias, pre_quant_scale),
        text_signature = "(kind: str, n: int, k: int, qweight: torch.Tensor, scales: Optional[torch.Tensor], element: str, scale_kind: str, group: int, scale_mul: Optional[float], scale_div: Optional[float], act: str, act_scale: Optional[float], operand_dtype: Optional[str], a: Optional[torch.Tensor], b: Optional[torch.Tensor], bias: Optional[torch.Tensor], pre_quant_scale: Optional[torch.Tensor])"
    )]
    #[allow(clippy::too_many_arguments)]
    fn new(
        kind: &str, n: usize, k: usize, qweight: &Bound<'_, PyAny>, scales: Option<&Bound<'_, PyAny>>, element: &str,
        scale_kind: &str, group: usize, scale_mul: Option<f32>, scale_div: Option<f32>, act: &str, act_scale: Option<f32>,
        operand_dtype: Option<&str>, a: Option<&Bound<'_, PyAny>>, b: Option<&Bound<'_, PyAny>>,
        bias: Option<&Bound<'_, PyAny>>, pre_quant_scale: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<CpuLinear> {
        let w = WeightViews::new(kind, n, k, qweight, scales, element, scale_kind, group, scale_mul, scale_div)?;
        let need_scale = |what: &str| act_scale.ok_or_else(|| argument_error(format!("activation quantizer '{what}' needs act_scale")));
        let act = match act {
            "none" => ActQuant::None,
            "nvfp4" => ActQuant::Nvfp4 { gs: need_scale(act)? },
            "fp8_static" => ActQuant::Fp8Static { scale: need_scale(act)? },
            "fp8_per_token" => ActQuant::Fp8PerToken,
            _ => return Err(argument_error(format!("unknown activation quantizer '{act}'"))),
        };
        let operand = operand_dtype.map(operand).transpose()?;
        let lin = CpuLinear {
            act,
            operand,
            a: View::opt(a, "torch.float32", 4, "row scale")?,
            b: View::opt(b, "torch.float32", 4, "column scale")?,
            bias: View::opt(bias, "torch.float32", 4, "bias")?,
            pre: View::opt(pre_quant_scale, "torch.float32", 4, "pre_quant_scale")?,
            scale_rows: None,
            w,
        };
        // Validate the weight and the epilogue once (the same checks run again per call, cheaply).
        // SAFETY: the views were checked and are kept alive by `lin`.
        let weight = unsafe { lin.w.weight() }?;
        let (pre, bias) = unsafe { (lin.pre.as_ref().map(|v| v.slice()), lin.bias.as_ref().map(|v| v.slice())) };
        let a = if matches!(act, ActQuant::Fp8PerToken) { Factor::One } else { factor(&lin.a) };
        Linear { weight, act, operand, pre_scale: pre, a, b: factor(&lin.b), bias }.validate().map_err(to_py)?;
        let scale_rows = match weight {
            Weight::W4(W4Weight { scales: Scales4::E4M3(s), group, .. }) if group > 0 => core_gemm::e4m3_rows(s, n, k / group),
            _ => None,
        };
        Ok(CpuLinear { scale_rows, ..lin })
    }

    /// `out[M, N] = linear(x[M, K])`; `x` and `out` contiguous CPU tensors of one dtype
    /// (float32, bfloat16 or float16).
    ///
    /// :rtype: None
    #[pyo3(signature = (x, out, force_scalar=false), text_signature = "(self, x: torch.Tensor, out: torch.Tensor, force_scalar: bool = False)")]
    fn forward(&self, py: Python<'_>, x: &Bound<'_, PyAny>, out: &Bound<'_, PyAny>, force_scalar: bool) -> PyResult<()> {
        let (xv, dtype) = act_view(py, x, None, "x")?;
        let (ov, _) = act_view(py, out, Some(dtype), "out")?;
        let k = self.w.k;
        let m = xv.numel.checked_div(k).unwrap_or(0);
        if xv.numel != m * k {
            return Err(argument_error(format!("x has {} values, not a multiple of K={k}", xv.numel)));
        }
        let [q, s] = self.w.inputs();
        disjoint(&ov, &[Some(&xv), q, s, self.a.as_ref(), self.b.as_ref(), self.bias.as_ref(), self.pre.as_ref()])?;
        let isa = Isa::resolve(force_scalar);
        py.detach(|| {
            // SAFETY: every view was checked for device, dtype, contiguity and alignment (the
            // weight views when this object was built; it keeps their tensors alive), `x` and
            // `out` are `dtype` with `elem`-byte elements, and the output overlaps no input.
            let mut weight = unsafe { self.w.weight() }?;
            if let (Weight::W4(w4), Some(rows)) = (&mut weight, self.scale_rows.as_deref()) {
                w4.scales = Scales4::E4M3Rows(rows);
            }
            let lin = Linear {
                weight,
                act: self.act,
                operand: self.operand,
                pre_scale: self.pre.as_ref().map(|v| unsafe { v.slice() }),
                a: factor(&self.a),
                b: factor(&self.b),
                bias: self.bias.as_ref().map(|v| unsafe { v.slice() }),
            };
            let (xs, os) = if dtype == Dtype::F32 {
                unsafe { (Acts::F32(xv.slice::<f32>()), ActsMut::F32(ov.slice_mut::<f32>())) }
            } else {
                unsafe { (Acts::Bits16(xv.slice::<u16>()), ActsMut::Bits16(ov.slice_mut::<u16>())) }
            };
            core_gemm::linear(&lin, xs, dtype, m, os, isa).map_err(to_py)
        })
    }

    fn __repr__(&self) -> String {
        let act = match self.act {
            ActQuant::None => "none".to_string(),
            ActQuant::Nvfp4 { gs } => format!("nvfp4(input_scale={gs:e})"),
            ActQuant::Fp8Static { scale } => format!("fp8_static(input_scale={scale:e})"),
            ActQuant::Fp8PerToken => "fp8_per_token".to_string(),
        };
        format!(
            "CpuLinear({} {}x{}, element={}, scales={}, group={}, activations={act}{}{})",
            self.w.kind,
            self.w.n,
            self.w.k,
            if self.w.element.is_empty() { "E4M3" } else { &self.w.element },
            self.w.scale_kind,
            self.w.group,
            if self.bias.is_some() { ", bias" } else { "" },
            if self.pre.is_some() { ", pre_quant_scale" } else { "" },
        )
    }
}

/// The instruction set the fused kernels use on this CPU ("avx512_bf16", "avx512", "avx2" or "scalar"; other architectures run the portable build; `MOTENSOR_CPU_ISA` caps it).
///
/// :rtype: str
#[pyfunction]
pub fn cpu_isa() -> &'static str {
    Isa::detect().name()
}

/// Where the CPU kernels' parallel loops run: "openmp" (the process's OpenMP team, torch's) or
/// "motensor" (motensor's own pool: no OpenMP runtime, a forked child, or `MOTENSOR_CPU_POOL=rayon`).
///
/// :rtype: str
#[pyfunction]
pub fn cpu_pool() -> &'static str {
    if motensor_core::omp::available() {
        "openmp"
    } else {
        "motensor"
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(cpu_gemm, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_gemm_i8, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_dequant, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_isa, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_pool, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_nvfp4_fake_quant, m)?)?;
    m.add_class::<CpuLinear>()?;
    Ok(())
}
