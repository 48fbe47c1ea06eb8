//! The ModelOpt quantization metadata (FORMATS §1).
//!
//! Loader rule (FORMATS §1.2): `hf_quant_config.json` if it exists (the complete record), else
//! `config.json["quantization_config"]` with `ignore` -> exclude_modules, `kv_cache_scheme` ->
//! KV algo and `group_size` from `config_groups.*.weights.group_size`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::exclude::ExcludeList;
use crate::formats::{lookup, AlgoLookup, FormatSpec};

/// The quantization of one layer in a MIXED_PRECISION checkpoint.
#[derive(Debug, Clone)]
pub struct LayerQuant {
    pub spec: &'static FormatSpec,
    pub group_size: Option<u32>,
}

/// What the checkpoint says about its quantization.
#[derive(Debug, Clone)]
pub enum Scheme {
    /// One format for every quantized module except the excluded ones.
    Single {
        spec: &'static FormatSpec,
        group_size: Option<u32>,
    },
    /// Per-layer formats; a module absent from the map is unquantized (FORMATS §4.12).
    Mixed { layers: BTreeMap<String, LayerQuant> },
}

#[derive(Debug, Clone)]
pub struct QuantConfig {
    /// The file the metadata came from.
    pub source: PathBuf,
    /// The `quant_algo` string exactly as written.
    pub quant_algo: String,
    pub scheme: Scheme,
    /// `kv_cache_quant_algo`, upper-cased (`FP8`, `NVFP4`, ...), if any.
    pub kv_cache_quant_algo: Option<String>,
    pub exclude: ExcludeList,
    /// `producer.version` if written.
    pub producer_version: Option<String>,
}

impl QuantConfig {
    /// Reads the metadata of a checkpoint directory. `Ok(None)` if neither file carries any.
    pub fn from_dir(dir: &Path) -> Result<Option<QuantConfig>> {
        let hf = dir.join("hf_quant_config.json");
        if hf.is_file() {
            let v = read_json(&hf)?;
            return from_hf_quant_config(&hf, &v).map(Some);
        }
        let cfg = dir.join("config.json");
        if cfg.is_file() {
            let v = read_json(&cfg)?;
            if let Some(qc) = v.get("quantization_config") {
                return from_config_json(&cfg, qc).map(Some);
            }
        }
        Ok(None)
    }
}

/// Side files (`config.json`, `hf_quant_config.json`, the index) larger than this are refused
/// before they are read. The largest real ones are indexes of trillion-parameter MoE checkpoints
/// (a few hundred thousand tensor names, ~30 MB); a hostile or sparse file of gigabytes must be
/// a quick `ConfigError`, not gigabytes of memory and seconds of parsing.
pub const MAX_SIDE_FILE_BYTES: u64 = 64 << 20;

/// Reads a side file, refusing one over [`MAX_SIDE_FILE_BYTES`] (checked before and while
/// reading, so a file growing meanwhile is bounded too).
pub fn read_side_file(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let too_big = |n: u64| {
        Error::config(
            path,
            format!("is {n} bytes, over the {MAX_SIDE_FILE_BYTES}-byte limit for a JSON side file (not a real config or index)"),
        )
    };
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, "open", e))?;
    let len = file.metadata().map_err(|e| Error::io(path, "stat", e))?.len();
    if len > MAX_SIDE_FILE_BYTES {
        return Err(too_big(len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(MAX_SIDE_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, "read", e))?;
    if bytes.len() as u64 > MAX_SIDE_FILE_BYTES {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Parses a side file as JSON. Nesting deeper than serde_json's limit (128 levels) is refused
/// as invalid JSON rather than recursing without bound.
pub fn read_json(path: &Path) -> Result<Value> {
    // Read bytes, not a String: a file that is not UTF-8 is invalid JSON (a Config error naming
    // the file), not an I/O failure (which the bindings report as a ShardError).
    let bytes = read_side_file(path)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::config(path, format!("invalid JSON: {e}")))
}

fn str_field<'a>(file: &Path, obj: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(Error::config(file, format!("'{key}' is not a string: {other}"))),
    }
}

fn group_field(file: &Path, obj: &Map<String, Value>, key: &str) -> Result<Option<u32>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(g) if g > 0 && g <= 1 << 20 => Ok(Some(g as u32)),
            _ => Err(Error::config(file, format!("'{key}' is not a positive integer: {v}"))),
        },
    }
}

fn string_list(file: &Path, v: Option<&Value>, key: &str) -> Result<Vec<String>> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| Error::config(file, format!("'{key}' entry is not a string: {i}")))
            })
            .collect(),
        Some(other) => Err(Error::config(file, format!("'{key}' is not a list: {other}"))),
    }
}

fn resolve_algo(file: &Path, algo: &str) -> Result<AlgoLookup> {
    match lookup(algo) {
        AlgoLookup::Unknown => Err(Error::UnsupportedFormat {
            file: file.to_path_buf(),
            algo: algo.to_string(),
            msg: format!(
                "unknown quant_algo; motensor knows {}",
                crate::formats::FORMATS
                    .iter()
                    .map(|f| f.name)
                    .chain([crate::formats::MIXED_PRECISION])
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
        AlgoLookup::Unsupported(why) => Err(Error::UnsupportedFormat {
            file: file.to_path_buf(),
            algo: algo.to_string(),
            msg: why.to_string(),
        }),
        found => Ok(found),
    }
}

fn parse_layers(file: &Path, v: Option<&Value>) -> Result<BTreeMap<String, LayerQuant>> {
    let Some(v) = v else {
        return Err(Error::config(file, "MIXED_PRECISION without 'quantized_layers'"));
    };
    let Value::Object(map) = v else {
        return Err(Error::config(file, "'quantized_layers' is not an object"));
    };
    let mut out = BTreeMap::new();
    for (name, entry) in map {
        let Value::Object(e) = entry else {
            return Err(Error::config(file, format!("quantized_layers['{name}'] is not an object")));
        };
        let algo = str_field(file, e, "quant_algo")?
            .ok_or_else(|| Error::config(file, format!("quantized_layers['{name}'] has no quant_algo")))?;
        let spec = match resolve_algo(file, algo)? {
            AlgoLookup::Format(s) => s,
            _ => {
                return Err(Error::config(
                    file,
                    format!("quantized_layers['{name}'] is itself '{algo}'"),
                ))
            }
        };
        let group_size = group_field(file, e, "group_size")?;
        out.insert(name.clone(), LayerQuant { spec, group_size });
    }
    Ok(out)
}

/// `kv_cache_quant_algo` values ModelOpt writes (`modelopt/torch/export/model_config.py`:
/// KV_CACHE_FP8, KV_CACHE_NVFP4, KV_CACHE_NVFP4_AFFINE, KV_CACHE_INT8).
pub const KV_CACHE_ALGOS: [&str; 4] = ["FP8", "NVFP4", "NVFP4_AFFINE", "INT8"];

/// The KV-cache algorithm, upper-cased; `None` for absent / null / empty. Anything else than
/// [`KV_CACHE_ALGOS`] is a ConfigError: a typo must not silently run the cache unquantized.
fn kv_algo(file: &Path, s: Option<&str>) -> Result<Option<String>> {
    let Some(a) = s.map(|s| s.trim().to_ascii_uppercase()).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    if a == "NONE" {
        return Ok(None);
    }
    if !KV_CACHE_ALGOS.contains(&a.as_str()) {
        return Err(Error::config(
            file,
            format!("kv_cache_quant_algo '{a}' is not one of {}", KV_CACHE_ALGOS.join(", ")),
        ));
    }
    Ok(Some(a))
}

/// `hf_quant_config.json`: `{"producer": {...}, "quantization": {...}}` (FORMATS §1.1).
pub fn from_hf_quant_config(file: &Path, v: &Value) -> Result<QuantConfig> {
    let root = v
        .as_object()
        .ok_or_else(|| Error::config(file, "top level is not an object"))?;
    let q = match root.get("quantization") {
        Some(Value::Object(q)) => q,
        Some(_) => return Err(Error::config(file, "'quantization' is not an object")),
        None => return Err(Error::config(file, "no 'quantization' section")),
    };
    let quant_algo = str_field(file, q, "quant_algo")?
        .ok_or_else(|| Error::config(file, "no quantization.quant_algo"))?
        .to_string();
    let scheme = match resolve_algo(file, &quant_algo)? {
        AlgoLookup::Mixed => Scheme::Mixed {
            layers: parse_layers(file, q.get("quantized_layers"))?,
        },
        AlgoLookup::Format(spec) => Scheme::Single {
            spec,
            group_size: group_field(file, q, "group_size")?,
        },
        _ => unreachable_lookup(file, &quant_algo)?,
    };
    let exclude = ExcludeList::new(string_list(file, q.get("exclude_modules"), "exclude_modules")?);
    let producer_version = root
        .get("producer")
        .and_then(|p| p.get("version"))
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(QuantConfig {
        source: file.to_path_buf(),
        quant_algo,
        scheme,
        kv_cache_quant_algo: kv_algo(file, str_field(file, q, "kv_cache_quant_algo")?)?,
        exclude,
        producer_version,
    })
}

/// `config.json["quantization_config"]` (FORMATS §1.2).
pub fn from_config_json(file: &Path, qc: &Value) -> Result<QuantConfig> {
    let q = qc
        .as_object()
        .ok_or_else(|| Error::config(file, "'quantization_config' is not an object"))?;
    // An hf_quant_config-shaped section nested here is read the same way (vLLM accepts both).
    if q.contains_key("quantization") {
        return from_hf_quant_config(file, qc);
    }
    match str_field(file, q, "quant_method")? {
        Some(m) if m.eq_ignore_ascii_case("modelopt") => {}
        Some(m) => {
            return Err(Error::config(
                file,
                format!("quantization_config.quant_method is '{m}', not 'modelopt': not a ModelOpt checkpoint"),
            ))
        }
        None => return Err(Error::config(file, "quantization_config has no quant_method")),
    }
    let quant_algo = str_field(file, q, "quant_algo")?
        .ok_or_else(|| Error::config(file, "quantization_config has no quant_algo"))?
        .to_string();
    let group_size = match group_field(file, q, "group_size")? {
        Some(g) => Some(g),
        None => group_from_config_groups(file, q.get("config_groups"))?,
    };
    let scheme = match resolve_algo(file, &quant_algo)? {
        AlgoLookup::Mixed => Scheme::Mixed {
            layers: parse_layers(file, q.get("quantized_layers"))?,
        },
        AlgoLookup::Format(spec) => Scheme::Single { spec, group_size },
        _ => unreachable_lookup(file, &quant_algo)?,
    };
    let kv = match q.get("kv_cache_scheme") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => kv_algo(file, Some(s))?,
        Some(Value::Object(o)) => {
            let ty = o.get("type").and_then(Value::as_str).unwrap_or("");
            let bits = o.get("num_bits").and_then(Value::as_u64).unwrap_or(0);
            match (ty, bits) {
                ("float", 8) => Some("FP8".to_string()),
                ("int", 8) => Some("INT8".to_string()),
                _ => {
                    return Err(Error::config(
                        file,
                        format!("kv_cache_scheme {{type: '{ty}', num_bits: {bits}}} is not an FP8 or INT8 cache"),
                    ))
                }
            }
        }
        Some(other) => return Err(Error::config(file, format!("kv_cache_scheme is not understood: {other}"))),
    };
    let producer_version = q
        .get("producer")
        .and_then(|p| p.get("version"))
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(QuantConfig {
        source: file.to_path_buf(),
        quant_algo,
        scheme,
        kv_cache_quant_algo: kv,
        exclude: ExcludeList::new(string_list(file, q.get("ignore"), "ignore")?),
        producer_version,
    })
}

fn group_from_config_groups(file: &Path, v: Option<&Value>) -> Result<Option<u32>> {
    let Some(Value::Object(groups)) = v else {
        return Ok(None);
    };
    for g in groups.values() {
        if let Some(Value::Object(w)) = g.get("weights") {
            if let Some(gs) = group_field(file, w, "group_size")? {
                return Ok(Some(gs));
            }
        }
    }
    Ok(None)
}

fn unreachable_lookup<T>(file: &Path, algo: &str) -> Result<T> {
    // resolve_algo only returns Format or Mixed; this keeps the match total without a panic.
    Err(Error::config(file, format!("quant_algo '{algo}' could not be resolved")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_hf_quant_config() {
        let v = json!({"producer": {"name": "modelopt", "version": "0.47.0"},
            "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": null, "group_size": 16,
                             "exclude_modules": ["lm_head"]}});
        let c = from_hf_quant_config(Path::new("h.json"), &v).unwrap();
        assert!(matches!(c.scheme, Scheme::Single { spec, group_size: Some(16) } if spec.name == "NVFP4"));
        assert!(c.exclude.matches("lm_head"));
        assert_eq!(c.producer_version.as_deref(), Some("0.47.0"));
    }

    #[test]
    fn reads_config_json_form() {
        let v = json!({"quant_method": "modelopt", "quant_algo": "fp8_pb_wo", "ignore": ["lm_head"],
            "kv_cache_scheme": {"dynamic": false, "num_bits": 8, "type": "float"}});
        let c = from_config_json(Path::new("c.json"), &v).unwrap();
        assert_eq!(c.kv_cache_quant_algo.as_deref(), Some("FP8"));
        assert!(matches!(c.scheme, Scheme::Single { spec, .. } if spec.name == "FP8_PB_WO"));
    }

    #[test]
    fn rejects_unknown_and_foreign() {
        let v = json!({"quantization": {"quant_algo": "INT3_MAGIC"}});
        let e = from_hf_quant_config(Path::new("h.json"), &v).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::UnsupportedFormat);
        let v = json!({"quant_method": "awq", "bits": 4});
        assert!(from_config_json(Path::new("c.json"), &v).is_err());
    }
}
