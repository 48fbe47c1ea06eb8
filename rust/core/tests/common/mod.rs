//! Builders shared by the hostile-input integration tests: raw safetensors bytes with any
//! header text, whole synthetic checkpoints in ModelOpt layout (driven by the format table), and
//! assertions on `Error` fields.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use motensor_core::dtype::DType;
use motensor_core::formats::{FormatSpec, Packing, Role, ShapeRule};
use motensor_core::{Error, ErrorKind};
use serde_json::{json, Value};

/// `prefix(len(json)) + json + data`: a safetensors file whose header is exactly `json`.
pub fn st_raw(json: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + json.len() + data.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(json);
    out.extend_from_slice(data);
    out
}

/// One tensor to write: name, dtype, shape, and optionally explicit bytes (else a fill pattern).
#[derive(Clone, Debug)]
pub struct T {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub data: Option<Vec<u8>>,
}

pub fn t(name: &str, dtype: DType, shape: &[u64]) -> T {
    T {
        name: name.to_string(),
        dtype,
        shape: shape.to_vec(),
        data: None,
    }
}

pub fn nbytes(dtype: DType, shape: &[u64]) -> u64 {
    shape.iter().product::<u64>() * dtype.size() as u64
}

/// Bytes for a tensor: explicit data, or for wide floats 1.0 everywhere, else a byte pattern.
fn payload(x: &T) -> Vec<u8> {
    if let Some(d) = &x.data {
        return d.clone();
    }
    let n = nbytes(x.dtype, &x.shape) as usize;
    let one: &[u8] = match x.dtype {
        DType::F32 => &[0, 0, 0x80, 0x3f],
        DType::BF16 => &[0x80, 0x3f],
        DType::F16 => &[0x00, 0x3c],
        DType::F64 => &[0, 0, 0, 0, 0, 0, 0xf0, 0x3f],
        _ => &[],
    };
    if one.is_empty() {
        (0..n).map(|i| (i * 37 + 11) as u8).collect()
    } else {
        one.iter().copied().cycle().take(n).collect()
    }
}

/// A well-formed safetensors file (contiguous data, header padded to 8 bytes like the
/// reference writer).
pub fn st_file(tensors: &[T]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for x in tensors {
        let p = payload(x);
        let b = data.len() as u64;
        data.extend_from_slice(&p);
        header.insert(
            x.name.clone(),
            json!({"dtype": x.dtype.name(), "shape": x.shape, "data_offsets": [b, data.len() as u64]}),
        );
    }
    let mut text = serde_json::to_vec(&Value::Object(header)).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    st_raw(&text, &data)
}

pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// `hf_quant_config.json` for one format.
pub fn hf_quant(algo: &str, group: Option<u32>, exclude: &[&str]) -> Value {
    let mut q =
        json!({"quant_algo": algo, "kv_cache_quant_algo": null, "exclude_modules": exclude});
    if let Some(g) = group {
        q["group_size"] = json!(g);
    }
    json!({"producer": {"name": "modelopt", "version": "0.47.0"}, "quantization": q})
}

/// A checkpoint directory with one `model.safetensors` and an optional hf_quant_config.json.
pub fn ckpt_dir(tensors: &[T], quant: Option<&Value>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let shard = write(dir.path(), "model.safetensors", &st_file(tensors));
    if let Some(q) = quant {
        write(dir.path(), "hf_quant_config.json", q.to_string().as_bytes());
    }
    (dir, shard)
}

/// Default logical size of synthetic modules: K divisible by every group size in the table.
pub const N: u64 = 32;
pub const K: u64 = 256;

/// The shape a role must have for a module of `spec` with logical `[n, k]`, group `g`.
pub fn role_shape(spec: &FormatSpec, role: Role, n: u64, k: u64, g: u64) -> Vec<u64> {
    let rule = spec.rule(role).expect("role in spec");
    match rule.shape {
        ShapeRule::Weight => match spec.packing {
            Packing::None => vec![n, k],
            Packing::PairsAlongK => vec![n, k / 2],
            Packing::PairsAlongN => vec![n / 2, k],
        },
        ShapeRule::Scalar => vec![],
        ShapeRule::PerOutput => vec![n],
        ShapeRule::PerInput => vec![k],
        ShapeRule::Groups => vec![n, k / g],
        ShapeRule::Blocks2d => vec![n.div_ceil(g), 1, k.div_ceil(g), 1],
    }
}

/// The tensors of one valid module of `spec` (every optional role too if `optional`).
pub fn module_tensors(spec: &FormatSpec, module: &str, optional: bool) -> Vec<T> {
    let g = spec.default_group.unwrap_or(1) as u64;
    spec.tensors
        .iter()
        .filter(|r| optional || r.presence == motensor_core::formats::Presence::Required)
        .map(|r| {
            t(
                &format!("{module}.{}", r.role.suffix()),
                r.dtypes[0],
                &role_shape(spec, r.role, N, K, g),
            )
        })
        .collect()
}

/// Asserts `e` is of `kind`, names `file` (by file name), and, where given, tensor and module,
/// both as attributes and in the message.
#[track_caller]
pub fn assert_err(
    e: &Error,
    kind: ErrorKind,
    file: &str,
    tensor: Option<&str>,
    module: Option<&str>,
) {
    assert_eq!(e.kind(), kind, "wrong kind for: {e}");
    let msg = e.to_string();
    let f = e.file().unwrap_or_else(|| panic!("no file in: {e}"));
    assert_eq!(
        f.file_name().and_then(|s| s.to_str()),
        Some(file),
        "wrong file {} in: {e}",
        f.display()
    );
    assert!(msg.contains(file), "message does not name {file}: {msg}");
    if let Some(t) = tensor {
        assert_eq!(e.tensor(), Some(t), "wrong tensor in: {e}");
        assert!(msg.contains(t), "message does not name tensor {t}: {msg}");
    }
    if let Some(m) = module {
        assert_eq!(e.module(), Some(m), "wrong module in: {e}");
        assert!(msg.contains(m), "message does not name module {m}: {msg}");
    }
}
