//! A whole checkpoint: shard discovery, the tensor index across shards, the quantization
//! metadata and the per-module view.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use rayon::prelude::*;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::header::TensorInfo;
use crate::formats::{Role, ShapeRule};
use crate::header::Entries;
use crate::modules::{self, KvTensor, QuantModule, TensorLookup};
use crate::pool;
use crate::quant_config::{read_json, read_side_file, QuantConfig};
use crate::scales::{self, Rule};
use crate::shard::Shard;

pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const SINGLE_FILE: &str = "model.safetensors";
/// Per-tensor scales closer than this in a file are read in one run ...
const SCALE_RUN_GAP: u64 = 64 << 10;
/// ... of at most this many bytes.
const SCALE_RUN_MAX: u64 = 1 << 20;

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
    /// Tensor name -> location (unordered: sort the names where order matters).
    pub tensors: HashMap<String, TensorLoc>,
    pub quant: Option<QuantConfig>,
    /// Quantized modules, sorted by name.
    pub modules: Vec<QuantModule>,
    module_index: HashMap<String, usize>,
    /// Tensors not owned by a quantized module (embeddings, norms, excluded layers...).
    pub plain: Vec<String>,
    pub kv: Vec<KvTensor>,
    /// Things worth telling the user that are not errors.
    pub notes: Vec<String>,
    /// Whether scales are checked (scalars at open, block scales in fills and dequantization).
    pub validate_scales: bool,
}

/// How to open a checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct OpenOptions {
    /// Refuse NaN/Inf/negative scales and non-positive per-tensor scales (`FormatError`).
    /// Turn off only to inspect a broken file: its numbers will be wrong.
    pub validate_scales: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions { validate_scales: true }
    }
}

impl Checkpoint {
    /// Opens a checkpoint directory (single `model.safetensors`, an index with shards, or any
    /// `*.safetensors` files) or a single safetensors file.
    pub fn open(path: &Path) -> Result<Checkpoint> {
        Checkpoint::open_with(path, OpenOptions::default())
    }

    /// [`Checkpoint::open`] with options.
    pub fn open_with(path: &Path, opts: OpenOptions) -> Result<Checkpoint> {
        let (root, files, index) = discover(path)?;
        let shards: Vec<Shard> =
            pool::install(|| files.par_iter().map(|f| Shard::open(f)).collect::<Result<Vec<_>>>())?;

        let mut tensors = HashMap::with_capacity(shards.iter().map(|s| s.tensors().len()).sum());
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
            validate_scales: opts.validate_scales,
        };
        let mut names: Vec<String> = ckpt.tensors.keys().cloned().collect();
        names.sort_unstable();
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
        ckpt.check_kv_scales()?;
        if ckpt.validate_scales {
            ckpt.validate_scalar_scales()?;
        }
        Ok(ckpt)
    }

    /// A KV-cache algorithm needs k/v scales, in pairs: FP8 KV without them would run with
    /// scale 1 (wrong by the calibrated amax / 448). Without validation it is only a note.
    fn check_kv_scales(&mut self) -> Result<()> {
        let Some(q) = &self.quant else { return Ok(()) };
        let Some(algo) = q.kv_cache_quant_algo.clone() else {
            if !self.kv.is_empty() {
                self.notes.push(format!(
                    "{} KV-cache scale tensors, but no kv_cache_quant_algo: the cache stays unquantized",
                    self.kv.len()
                ));
            }
            return Ok(());
        };
        let source = q.source.clone();
        let mut kinds: BTreeMap<&str, HashSet<&str>> = BTreeMap::new();
        for k in &self.kv {
            kinds.entry(k.attention.as_str()).or_default().insert(k.kind.as_str());
        }
        let problem = if kinds.is_empty() {
            Some(Error::config(
                &source,
                format!("kv_cache_quant_algo is {algo} but the checkpoint has no k_scale/v_scale tensors"),
            ))
        } else {
            kinds.iter().find_map(|(att, have)| {
                let missing: Vec<&str> = ["k_scale", "v_scale"].into_iter().filter(|k| !have.contains(k)).collect();
                (!missing.is_empty()).then(|| Error::Format {
                    file: source.clone(),
                    module: att.to_string(),
                    algo: algo.clone(),
                    tensor: format!("{att}.{}", missing.join("/")),
                    msg: format!("the KV cache is {algo} but this attention has no {}", missing.join(" or ")),
                })
            })
        };
        match problem {
            Some(e) if self.validate_scales => Err(e),
            Some(e) => {
                self.notes.push(format!("{e} (scale validation is off)"));
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Checks every per-tensor scale (`weight_scale_2`, `input_scale`, per-tensor
    /// `weight_scale`, KV `k_scale`/`v_scale`) is finite and positive: a few bytes each.
    fn validate_scalar_scales(&self) -> Result<()> {
        let mut jobs: Vec<(&str, &str, String)> = Vec::new(); // (tensor, module, algo)
        for m in &self.modules {
            for (&role, t) in &m.tensors {
                let scalar = matches!(m.spec.rule(role).map(|r| r.shape), Some(ShapeRule::Scalar));
                if scalar && role != Role::Bias && role != Role::Weight {
                    jobs.push((t, &m.name, m.spec.name.to_string()));
                }
            }
        }
        let kv_algo = self
            .quant
            .as_ref()
            .and_then(|q| q.kv_cache_quant_algo.clone())
            .unwrap_or_else(|| "KV cache".into());
        for k in &self.kv {
            if k.kind.ends_with("_scale") {
                jobs.push((&k.tensor, &k.attention, kv_algo.clone()));
            }
        }
        // Scalars sit close together in the files (safetensors writes tensors grouped by dtype),
        // so they are read in runs, a few preads per shard instead of one (and an fstat) each.
        let mut located = Vec::with_capacity(jobs.len());
        for (j, (t, _, _)) in jobs.iter().enumerate() {
            let loc = *self
                .tensors
                .get(*t)
                .ok_or_else(|| Error::argument(format!("no tensor named '{t}' in the checkpoint")))?;
            let info = &self.shards[loc.shard].tensors()[loc.idx];
            located.push((loc.shard, info.begin, info.end, j, info.dtype));
        }
        located.sort_unstable();
        let mut runs: Vec<(usize, usize)> = Vec::new();
        let mut start = 0;
        for i in 1..=located.len() {
            let cut = i == located.len() || {
                let (s0, b0, ..) = located[start];
                let (s, b, e, ..) = located[i];
                let prev_end = located[i - 1].2;
                s != s0 || b > prev_end.saturating_add(SCALE_RUN_GAP) || e - b0 > SCALE_RUN_MAX
            };
            if cut {
                if i > start {
                    runs.push((start, i));
                }
                start = i;
            }
        }
        pool::install(|| {
            runs.par_iter().try_for_each(|&(a, b)| {
                let run = &located[a..b];
                let shard = &self.shards[run[0].0];
                let begin = run[0].1;
                let end = run.iter().map(|r| r.2).max().unwrap_or(begin);
                let one = |j: usize| {
                    let (t, module, algo) = &jobs[j];
                    self.check_scale_tensor(t, module, algo, Rule::Positive)
                };
                if end - begin > SCALE_RUN_MAX {
                    // A lone large "scalar" (refused by the format check; bounded anyway).
                    return run.iter().try_for_each(|r| one(r.3));
                }
                let mut buf = vec![0u8; (end - begin) as usize];
                if shard.read_data(begin, &mut buf).is_err() {
                    // Short (truncated file) or failed: tensor by tensor, for the exact error.
                    return run.iter().try_for_each(|r| one(r.3));
                }
                run.iter().try_for_each(|&(_, tb, te, j, dtype)| {
                    let bytes = &buf[(tb - begin) as usize..(te - begin) as usize];
                    match scales::first_bad(bytes, dtype, Rule::Positive) {
                        None => Ok(()),
                        Some((i, v)) => {
                            let (t, module, algo) = &jobs[j];
                            Err(self.bad_scale(t, module, algo, Rule::Positive, i, v))
                        }
                    }
                })
            })
        })
    }

    /// Reads a (small) scale tensor whole and checks it against `rule`.
    fn check_scale_tensor(&self, tensor: &str, module: &str, algo: &str, rule: Rule) -> Result<()> {
        let (shard, info) = self.locate(tensor)?;
        // Per-tensor scales are one element; a larger "scalar" was refused by the format check,
        // but stay bounded whatever the header says.
        if info.nbytes() > 1 << 20 {
            return Ok(());
        }
        let bytes = shard.data(info)?;
        match scales::first_bad(&bytes, info.dtype, rule) {
            None => Ok(()),
            Some((i, v)) => Err(self.bad_scale(tensor, module, algo, rule, i, v)),
        }
    }

    /// The error for a poisoned scale.
    pub fn bad_scale(&self, tensor: &str, module: &str, algo: &str, rule: Rule, index: usize, value: f32) -> Error {
        let want = match rule {
            Rule::Positive => "finite and > 0",
            Rule::NonNegative => "finite and >= 0",
        };
        Error::Format {
            file: self.file_of(tensor),
            module: module.to_string(),
            algo: algo.to_string(),
            tensor: tensor.to_string(),
            msg: format!(
                "scale element {index} is {value}, a scale must be {want} (the file is corrupt; open it with validate_scales=False to inspect it anyway)"
            ),
        }
    }

    /// The shard and header entry of tensor `name`.
    pub fn locate(&self, name: &str) -> Result<(&Shard, &TensorInfo)> {
        let loc = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::argument(format!("no tensor named '{name}' in the checkpoint")))?;
        let shard = &self.shards[loc.shard];
        Ok((shard, &shard.tensors()[loc.idx]))
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

    /// The bytes of a tensor, read into a new buffer (a truncated file is `Error::Truncated`).
    pub fn tensor_data(&self, name: &str) -> Result<Vec<u8>> {
        let (shard, info) = self.locate(name)?;
        shard.data(info)
    }

    /// Reads bytes `[at, at + dst.len())` of tensor `name` straight into `dst`.
    pub fn read_into(&self, name: &str, at: u64, dst: &mut [u8]) -> Result<()> {
        let (shard, info) = self.locate(name)?;
        shard.read_into(info, at, dst)
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

    /// `config.json` as text, checked to be valid JSON of bounded size and depth (so that a
    /// parser without those limits can read it safely), if the checkpoint has one.
    pub fn config_text(&self) -> Result<Option<String>> {
        let p = self.root.join("config.json");
        if !p.is_file() {
            return Ok(None);
        }
        let bytes = read_side_file(&p)?;
        serde_json::from_slice::<Value>(&bytes).map_err(|e| Error::config(&p, format!("invalid JSON: {e}")))?;
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|e| Error::config(&p, format!("not UTF-8: {e}")))
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

/// The index's `weight_map`: (tensor, shard file name), sorted by tensor name, names unique.
type WeightMap = Vec<(String, String)>;
type Index = (PathBuf, WeightMap);

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
        let mut seen: HashSet<&str> = HashSet::new();
        let mut files = Vec::new();
        for (tensor, file) in &weight_map {
            if !seen.insert(file.as_str()) {
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

/// The index document: only `weight_map` matters, read as an ordered list so that a name listed
/// twice is caught (a JSON map would silently keep the last).
#[derive(serde::Deserialize)]
struct IndexDoc {
    weight_map: Option<Entries>,
}

/// The same document read with the names borrowed from the text (no generic JSON tree); any
/// entry that is not a plain string pair falls back to [`IndexDoc`], whose checks name it.
#[derive(serde::Deserialize)]
struct FastIndexDoc<'a> {
    #[serde(borrow)]
    weight_map: Option<StrPairs<'a>>,
}

struct StrPairs<'a>(Vec<(&'a str, &'a str)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for StrPairs<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = StrPairs<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<StrPairs<'a>, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(kv) = map.next_entry::<&'de str, &'de str>()? {
                    out.push(kv);
                }
                Ok(StrPairs(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

fn read_index(path: &Path) -> Result<WeightMap> {
    let bytes = read_side_file(path)?;
    let fast = serde_json::from_slice::<FastIndexDoc>(&bytes).ok().and_then(|d| d.weight_map);
    let pairs: Vec<(&str, &str)>;
    let slow: Entries;
    let list: Vec<(&str, &str)> = match fast {
        Some(StrPairs(p)) => {
            pairs = p;
            pairs
        }
        None => {
            let doc: IndexDoc = serde_json::from_slice(&bytes)
                .map_err(|e| Error::config(path, format!("invalid JSON: {e}")))?;
            slow = doc
                .weight_map
                .ok_or_else(|| Error::config(path, "no 'weight_map' object"))?;
            let mut out = Vec::with_capacity(slow.0.len());
            for (tensor, file) in &slow.0 {
                let f = file
                    .as_str()
                    .ok_or_else(|| Error::config(path, format!("weight_map['{tensor}'] is not a string")))?;
                out.push((tensor.as_str(), f));
            }
            out
        }
    };
    if list.is_empty() {
        return Err(Error::config(
            path,
            "'weight_map' is empty: the index lists no tensors (a broken export? remove the index to load the shards beside it)",
        ));
    }
    for &(tensor, f) in &list {
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
    }
    // Stable sort: a name listed twice keeps its entries in document order.
    let mut sorted = list;
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    if let Some(w) = sorted.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(Error::config(
            path,
            format!("weight_map lists '{}' twice ('{}' and '{}')", w[0].0, w[0].1, w[1].1),
        ));
    }
    Ok(sorted.into_iter().map(|(t, f)| (t.to_string(), f.to_string())).collect())
}

fn check_index(
    index_path: &Path,
    weight_map: &WeightMap,
    shards: &[Shard],
    tensors: &HashMap<String, TensorLoc>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let shard_names: Vec<Option<&str>> = shards
        .iter()
        .map(|s| s.path.file_name().and_then(|n| n.to_str()))
        .collect();
    for (tensor, file) in weight_map {
        match tensors.get(tensor) {
            None => {
                return Err(Error::shard(
                    &index_path.with_file_name(file),
                    format!("tensor '{tensor}' is listed for this shard in {INDEX_FILE} but is not in it"),
                ))
            }
            Some(loc) => {
                if shard_names[loc.shard] != Some(file.as_str()) {
                    return Err(Error::shard(
                        &shards[loc.shard].path,
                        format!("tensor '{tensor}' is here but {INDEX_FILE} places it in '{file}'"),
                    ));
                }
            }
        }
    }
    // Every listed name (unique) was found above, so the others are the unlisted ones.
    let unlisted = tensors.len() - weight_map.len();
    if unlisted > 0 {
        notes.push(format!("{unlisted} tensors in the shards are not listed in {INDEX_FILE}"));
    }
    Ok(())
}
