//! A whole checkpoint: shard discovery, the tensor index across shards, the quantization
//! metadata and the per-module view.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use rayon::prelude::*;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::header::TensorInfo;
use crate::modules::{self, KvTensor, QuantModule, TensorLookup};
use crate::quant_config::{read_json, QuantConfig};
use crate::shard::Shard;

pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const SINGLE_FILE: &str = "model.safetensors";

/// Where a tensor lives.
#[derive(Debug, Clone, Copy)]
pub struct TensorLoc {
    pub shard: usize,
    pub idx: usize,
}

#[derive(Debug)]
pub struct Checkpoint {
    /// The directory holding the checkpoint (the file's directory for a single file).
    pub root: PathBuf,
    pub shards: Vec<Shard>,
    /// Tensor name -> location, sorted by name.
    pub tensors: BTreeMap<String, TensorLoc>,
    pub quant: Option<QuantConfig>,
    /// Quantized modules, sorted by name.
    pub modules: Vec<QuantModule>,
    module_index: HashMap<String, usize>,
    /// Tensors not owned by a quantized module (embeddings, norms, excluded layers...).
    pub plain: Vec<String>,
    pub kv: Vec<KvTensor>,
    /// Things worth telling the user that are not errors.
    pub notes: Vec<String>,
}

impl Checkpoint {
    /// Opens a checkpoint directory (single `model.safetensors`, an index with shards, or any
    /// `*.safetensors` files) or a single safetensors file.
    pub fn open(path: &Path) -> Result<Checkpoint> {
        let (root, files, index) = discover(path)?;
        let shards: Vec<Shard> = files
            .par_iter()
            .map(|f| Shard::open(f))
            .collect::<Result<Vec<_>>>()?;

        let mut tensors = BTreeMap::new();
        for (si, shard) in shards.iter().enumerate() {
            for (ti, t) in shard.tensors().iter().enumerate() {
                if let Some(prev) = tensors.insert(t.name.clone(), TensorLoc { shard: si, idx: ti }) {
                    return Err(Error::shard(
                        &shard.path,
                        format!(
                            "tensor '{}' is also in {}",
                            t.name,
                            shards[prev.shard].path.display()
                        ),
                    ));
                }
            }
        }
        let mut notes = Vec::new();
        if let Some((index_path, weight_map)) = &index {
            check_index(index_path, weight_map, &shards, &tensors, &mut notes)?;
        }

        let quant = QuantConfig::from_dir(&root)?;
        let mut ckpt = Checkpoint {
            root,
            shards,
            tensors,
            quant,
            modules: Vec::new(),
            module_index: HashMap::new(),
            plain: Vec::new(),
            kv: Vec::new(),
            notes,
        };
        let names: Vec<String> = ckpt.tensors.keys().cloned().collect();
        let view = modules::build(&names, &ckpt, ckpt.quant.as_ref())?;
        ckpt.module_index = view
            .modules
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.clone(), i))
            .collect();
        ckpt.modules = view.modules;
        ckpt.plain = view.plain;
        ckpt.kv = view.kv;
        ckpt.notes.extend(view.notes);
        Ok(ckpt)
    }

    pub fn module(&self, name: &str) -> Option<&QuantModule> {
        self.module_index.get(name).map(|&i| &self.modules[i])
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors
            .get(name)
            .map(|l| &self.shards[l.shard].tensors()[l.idx])
    }

    pub fn shard_of(&self, name: &str) -> Option<&Shard> {
        self.tensors.get(name).map(|l| &self.shards[l.shard])
    }

    /// The bytes of a tensor (checked to still be backed by its file).
    pub fn tensor_data(&self, name: &str) -> Result<&[u8]> {
        let loc = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::argument(format!("no tensor named '{name}' in the checkpoint")))?;
        let shard = &self.shards[loc.shard];
        shard.data(&shard.tensors()[loc.idx])
    }

    /// Total bytes of tensor data across shards.
    pub fn total_bytes(&self) -> u64 {
        self.shards
            .iter()
            .flat_map(|s| s.tensors())
            .map(TensorInfo::nbytes)
            .sum()
    }

    /// `config.json` as JSON text, if the checkpoint has one.
    pub fn config_json(&self) -> Result<Option<Value>> {
        let p = self.root.join("config.json");
        if p.is_file() {
            read_json(&p).map(Some)
        } else {
            Ok(None)
        }
    }
}

impl TensorLookup for Checkpoint {
    fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_info(name)
    }
    fn file_of(&self, name: &str) -> PathBuf {
        self.shard_of(name)
            .map(|s| s.path.clone())
            .unwrap_or_else(|| self.root.clone())
    }
}

type Index = (PathBuf, BTreeMap<String, String>);

fn discover(path: &Path) -> Result<(PathBuf, Vec<PathBuf>, Option<Index>)> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, "open", e))?;
    if meta.is_file() {
        let root = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        return Ok((root, vec![path.to_path_buf()], None));
    }
    let root = path.to_path_buf();
    let index_path = root.join(INDEX_FILE);
    if index_path.is_file() {
        let weight_map = read_index(&index_path)?;
        let mut seen = HashSet::new();
        let mut files = Vec::new();
        for (tensor, file) in &weight_map {
            if !seen.insert(file.clone()) {
                continue;
            }
            let p = root.join(file);
            if !p.is_file() {
                return Err(Error::shard(
                    &p,
                    format!("shard named in {INDEX_FILE} is missing (it holds '{tensor}', among others)"),
                ));
            }
            files.push(p);
        }
        files.sort();
        return Ok((root, files, Some((index_path, weight_map))));
    }
    let single = root.join(SINGLE_FILE);
    if single.is_file() {
        return Ok((root, vec![single], None));
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .map_err(|e| Error::io(&root, "list", e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    if files.is_empty() {
        return Err(Error::shard(
            &root,
            format!("no {SINGLE_FILE}, {INDEX_FILE} or *.safetensors file in this directory"),
        ));
    }
    files.sort();
    Ok((root, files, None))
}

fn read_index(path: &Path) -> Result<BTreeMap<String, String>> {
    let v = read_json(path)?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::config(path, "no 'weight_map' object"))?;
    let mut out = BTreeMap::new();
    for (tensor, file) in map {
        let f = file
            .as_str()
            .ok_or_else(|| Error::config(path, format!("weight_map['{tensor}'] is not a string")))?;
        // A shard name is a plain file name next to the index: anything that could walk out
        // of the checkpoint directory is refused.
        let p = Path::new(f);
        let plain = p.components().count() == 1 && matches!(p.components().next(), Some(Component::Normal(_)));
        if !plain {
            return Err(Error::config(
                path,
                format!("weight_map['{tensor}'] = '{f}' is not a file name inside the checkpoint directory"),
            ));
        }
        out.insert(tensor.clone(), f.to_string());
    }
    Ok(out)
}

fn check_index(
    index_path: &Path,
    weight_map: &BTreeMap<String, String>,
    shards: &[Shard],
    tensors: &BTreeMap<String, TensorLoc>,
    notes: &mut Vec<String>,
) -> Result<()> {
    for (tensor, file) in weight_map {
        match tensors.get(tensor) {
            None => {
                return Err(Error::shard(
                    &index_path.with_file_name(file),
                    format!("tensor '{tensor}' is listed for this shard in {INDEX_FILE} but is not in it"),
                ))
            }
            Some(loc) => {
                let actual = &shards[loc.shard].path;
                if actual.file_name().and_then(|s| s.to_str()) != Some(file.as_str()) {
                    return Err(Error::shard(
                        actual,
                        format!("tensor '{tensor}' is here but {INDEX_FILE} places it in '{file}'"),
                    ));
                }
            }
        }
    }
    let unlisted = tensors.keys().filter(|t| !weight_map.contains_key(*t)).count();
    if unlisted > 0 {
        notes.push(format!("{unlisted} tensors in the shards are not listed in {INDEX_FILE}"));
    }
    Ok(())
}
