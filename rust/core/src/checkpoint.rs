//! A whole checkpoint: shard discovery, the tensor index across shards, the quantization
//! metadata and the per-module view.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::path::{Component, Path, PathBuf};

use rayon::prelude::*;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::header::TensorInfo;
use crate::formats::{Role, ShapeRule};
use crate::header::{scan_weight_map, Entries};
use crate::modules::{self, KvTensor, QuantModule, TensorLookup};
use crate::names::{hash_str, FastMap, NameIndex};
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
    /// Tensor id -> location. Ids number the tensors shard by shard, each shard's in header
    /// (data offset) order.
    locs: Vec<TensorLoc>,
    /// Tensor name -> id (names stay in the shard headers).
    index: NameIndex,
    pub quant: Option<QuantConfig>,
    /// Quantized modules, sorted by name.
    pub modules: Vec<QuantModule>,
    module_index: NameIndex,
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

/// A per-tensor scale to check at open: the module (index into `modules`, or into `kv` for a
/// KV-cache scale) that owns it.
#[derive(Clone, Copy)]
enum ScaleJob {
    Module(u32),
    Kv(u32),
}

impl Checkpoint {
    /// Opens a checkpoint directory (single `model.safetensors`, an index with shards, or any
    /// `*.safetensors` files) or a single safetensors file.
    pub fn open(path: &Path) -> Result<Checkpoint> {
        Checkpoint::open_with(path, OpenOptions::default())
    }

    /// [`Checkpoint::open`] with options.
    ///
    /// Cost at 100k+ tensors (benches/open_scale.py): the headers are parsed (and their names
    /// hashed) in parallel, one shard per task; everything after works on tensor ids, with the
    /// names left in the headers: no name is copied or sorted, an index entry costs one probe,
    /// modules are validated in parallel, and the per-tensor scales are found by id.
    pub fn open_with(path: &Path, opts: OpenOptions) -> Result<Checkpoint> {
        let (root, source) = discover(path)?;
        // The index document, read with its names borrowed from its text.
        let index_doc = match &source {
            Source::Index(p, bytes) => Some((p.as_path(), parse_index(p, bytes)?)),
            Source::Files(_) => None,
        };
        let files = match (&source, &index_doc) {
            (Source::Files(f), _) => f.clone(),
            (_, Some((p, doc))) => index_files(&root, p, doc)?,
            (Source::Index(..), None) => unreachable!("an index source has its document"),
        };
        // Errors of the index document were found before the shards were read: a shard error
        // comes after them.
        let index_first = |e: Error| match &index_doc {
            Some((p, doc)) => index_duplicates(p, doc).err().unwrap_or(e),
            None => e,
        };
        let shards: Vec<Shard> = pool::install(|| files.par_iter().map(|f| Shard::open(f)).collect::<Result<Vec<_>>>())
            .map_err(index_first)?;

        let total: usize = shards.iter().map(|s| s.tensors().len()).sum();
        if total >= u32::MAX as usize {
            return Err(Error::shard(&root, format!("{total} tensors: more than this reader indexes")));
        }
        let mut locs = Vec::with_capacity(total);
        for (si, shard) in shards.iter().enumerate() {
            locs.extend((0..shard.tensors().len()).map(|ti| TensorLoc { shard: si, idx: ti }));
        }
        let mut index = NameIndex::with_capacity(total);
        {
            let name_of = |id: usize| {
                let l = locs[id];
                shards[l.shard].tensors()[l.idx].name.as_str()
            };
            let mut id = 0;
            for shard in &shards {
                for (ti, t) in shard.tensors().iter().enumerate() {
                    if let Err(prev) = index.insert(shard.name_hashes[ti], id, name_of) {
                        return Err(index_first(Error::shard(
                            &shard.path,
                            format!("tensor '{}' is also in {}", t.name, shards[locs[prev].shard].path.display()),
                        )));
                    }
                    id += 1;
                }
            }
        }
        let mut ckpt = Checkpoint {
            root,
            shards,
            locs,
            index,
            quant: None,
            modules: Vec::new(),
            module_index: NameIndex::default(),
            plain: Vec::new(),
            kv: Vec::new(),
            notes: Vec::new(),
            validate_scales: opts.validate_scales,
        };
        if let Some((index_path, doc)) = &index_doc {
            ckpt.check_index(index_path, doc)?;
        }
        drop(index_doc);
        drop(source);

        ckpt.quant = QuantConfig::from_dir(&ckpt.root)?;
        let view = modules::build(&ckpt, ckpt.quant.as_ref())?;
        let mut module_index = NameIndex::with_capacity(view.modules.len());
        for (i, m) in view.modules.iter().enumerate() {
            // Module names are unique (grouped by name).
            let _ = module_index.insert(hash_str(&m.name), i, |j| view.modules[j].name.as_str());
        }
        ckpt.module_index = module_index;
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

    /// The index's `weight_map` against the shards: every listed tensor is in the shard it is
    /// listed for, and no name is listed twice. Any problem is reported by [`check_index_exact`]
    /// (the first in name order, as the sorted list would meet it).
    fn check_index(&mut self, index_path: &Path, doc: &IndexDoc<'_>) -> Result<()> {
        // The shard of each file name of the document.
        let shard_of_file: Vec<Option<usize>> = doc
            .files
            .iter()
            .map(|f| self.shards.iter().position(|s| s.path.file_name().and_then(|n| n.to_str()) == Some(f.as_ref())))
            .collect();
        let found: Vec<u32> = pool::install(|| {
            doc.entries
                .par_iter()
                .map(|(tensor, fid)| match self.tensor_id(tensor) {
                    Some(id) if shard_of_file[*fid as usize] == Some(self.locs[id].shard) => id as u32,
                    _ => u32::MAX,
                })
                .collect()
        });
        let mut listed = vec![false; self.locs.len()];
        let mut ok = true;
        for &id in &found {
            if id == u32::MAX || std::mem::replace(&mut listed[id as usize], true) {
                ok = false;
                break;
            }
        }
        if !ok {
            return check_index_exact(index_path, doc, self);
        }
        // Every listed name (unique) was found above, so the others are the unlisted ones.
        let unlisted = self.locs.len() - doc.entries.len();
        if unlisted > 0 {
            self.notes.push(format!("{unlisted} tensors in the shards are not listed in {INDEX_FILE}"));
        }
        Ok(())
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
        // Which tensors (by id) are per-tensor scales, and whose.
        let mut job: Vec<Option<ScaleJob>> = vec![None; self.locs.len()];
        for (mi, m) in self.modules.iter().enumerate() {
            for rule in m.spec.tensors {
                if rule.shape == ShapeRule::Scalar && rule.role != Role::Bias && rule.role != Role::Weight {
                    if let Some(id) = m.tensor_id(rule.role) {
                        job[id] = Some(ScaleJob::Module(mi as u32));
                    }
                }
            }
        }
        let kv_algo = self
            .quant
            .as_ref()
            .and_then(|q| q.kv_cache_quant_algo.clone())
            .unwrap_or_else(|| "KV cache".into());
        for (ki, k) in self.kv.iter().enumerate() {
            if k.kind.ends_with("_scale") {
                let id = self
                    .tensor_id(&k.tensor)
                    .ok_or_else(|| Error::argument(format!("no tensor named '{}' in the checkpoint", k.tensor)))?;
                job[id] = Some(ScaleJob::Kv(ki as u32));
            }
        }
        let owner = |j: ScaleJob| -> (&str, &str) {
            match j {
                ScaleJob::Module(mi) => {
                    let m = &self.modules[mi as usize];
                    (m.name.as_str(), m.spec.name)
                }
                ScaleJob::Kv(ki) => (self.kv[ki as usize].attention.as_str(), kv_algo.as_str()),
            }
        };
        // The scales in file order (ids run through each shard's tensors by data offset).
        // Scalars sit close together in the files (safetensors writes tensors grouped by dtype),
        // so they are read in runs, a few preads per shard instead of one (and an fstat) each.
        let located: Vec<(usize, ScaleJob)> = job.iter().enumerate().filter_map(|(id, j)| j.map(|j| (id, j))).collect();
        let span = |id: usize| {
            let info = self.info_at(id);
            (self.locs[id].shard, info.begin, info.end)
        };
        let mut runs: Vec<(usize, usize)> = Vec::new();
        let mut start = 0;
        for i in 1..=located.len() {
            let cut = i == located.len() || {
                let (s0, b0, _) = span(located[start].0);
                let (s, b, e) = span(located[i].0);
                let prev_end = span(located[i - 1].0).2;
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
                let shard = &self.shards[self.locs[run[0].0].shard];
                let begin = self.info_at(run[0].0).begin;
                let end = run.iter().map(|r| self.info_at(r.0).end).max().unwrap_or(begin);
                let one = |(id, j): (usize, ScaleJob)| {
                    let (module, algo) = owner(j);
                    self.check_scale_tensor(&self.info_at(id).name, module, algo, Rule::Positive)
                };
                if end - begin > SCALE_RUN_MAX {
                    // A lone large "scalar" (refused by the format check; bounded anyway).
                    return run.iter().try_for_each(|&r| one(r));
                }
                let mut buf = vec![0u8; (end - begin) as usize];
                if shard.read_data(begin, &mut buf).is_err() {
                    // Short (truncated file) or failed: tensor by tensor, for the exact error.
                    return run.iter().try_for_each(|&r| one(r));
                }
                run.iter().try_for_each(|&(id, j)| {
                    let info = self.info_at(id);
                    let bytes = &buf[(info.begin - begin) as usize..(info.end - begin) as usize];
                    match scales::first_bad(bytes, info.dtype, Rule::Positive) {
                        None => Ok(()),
                        Some((i, v)) => {
                            let (module, algo) = owner(j);
                            Err(self.bad_scale(&info.name, module, algo, Rule::Positive, i, v))
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
            .tensor_loc(name)
            .ok_or_else(|| Error::argument(format!("no tensor named '{name}' in the checkpoint")))?;
        let shard = &self.shards[loc.shard];
        Ok((shard, &shard.tensors()[loc.idx]))
    }

    /// The id of tensor `name` (see [`Checkpoint::info_at`]).
    pub fn tensor_id(&self, name: &str) -> Option<usize> {
        self.index.get(hash_str(name), name, |id| self.info_at(id).name.as_str())
    }

    /// The header entry of the tensor with id `id` (ids number the tensors shard by shard,
    /// `0..tensor_count()`).
    pub fn info_at(&self, id: usize) -> &TensorInfo {
        let l = self.locs[id];
        &self.shards[l.shard].tensors()[l.idx]
    }

    /// Where the tensor with id `id` is.
    pub fn loc_at(&self, id: usize) -> TensorLoc {
        self.locs[id]
    }

    /// Where tensor `name` is.
    pub fn tensor_loc(&self, name: &str) -> Option<TensorLoc> {
        self.tensor_id(name).map(|id| self.locs[id])
    }

    /// How many tensors the shards hold.
    pub fn tensor_count(&self) -> usize {
        self.locs.len()
    }

    /// Every tensor name, shard by shard (in data order within a shard; not sorted).
    pub fn tensor_names(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.locs.len()).map(|id| self.info_at(id).name.as_str())
    }

    pub fn module(&self, name: &str) -> Option<&QuantModule> {
        self.module_index
            .get(hash_str(name), name, |i| self.modules[i].name.as_str())
            .map(|i| &self.modules[i])
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_id(name).map(|id| self.info_at(id))
    }

    pub fn shard_of(&self, name: &str) -> Option<&Shard> {
        self.tensor_loc(name).map(|l| &self.shards[l.shard])
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
    fn count(&self) -> usize {
        self.locs.len()
    }
    fn info_at(&self, id: usize) -> &TensorInfo {
        Checkpoint::info_at(self, id)
    }
    fn find(&self, name: &str) -> Option<usize> {
        self.tensor_id(name)
    }
    fn file_of(&self, name: &str) -> PathBuf {
        self.shard_of(name)
            .map(|s| s.path.clone())
            .unwrap_or_else(|| self.root.clone())
    }
}

/// Where the tensors are: these files, or the shards an index names (its path and bytes).
enum Source {
    Files(Vec<PathBuf>),
    Index(PathBuf, Vec<u8>),
}

fn discover(path: &Path) -> Result<(PathBuf, Source)> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, "open", e))?;
    if meta.is_file() {
        let root = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        return Ok((root, Source::Files(vec![path.to_path_buf()])));
    }
    let root = path.to_path_buf();
    let index_path = root.join(INDEX_FILE);
    if index_path.is_file() {
        let bytes = read_side_file(&index_path)?;
        return Ok((root, Source::Index(index_path, bytes)));
    }
    let single = root.join(SINGLE_FILE);
    if single.is_file() {
        return Ok((root, Source::Files(vec![single])));
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
    Ok((root, Source::Files(files)))
}

/// The index's `weight_map` in document order: (tensor, index into `files`), names borrowed
/// from the document's text where it has no escapes.
struct IndexDoc<'a> {
    entries: Vec<(Cow<'a, str>, u32)>,
    /// The distinct shard file names, in order of first mention.
    files: Vec<Cow<'a, str>>,
}

impl IndexDoc<'_> {
    /// (tensor, file) sorted by tensor name; a name listed twice keeps document order.
    fn sorted(&self) -> Vec<(&str, &str)> {
        let mut v: Vec<(&str, &str)> = self.entries.iter().map(|(t, f)| (t.as_ref(), self.files[*f as usize].as_ref())).collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    }
}

/// The index document read generically (only for the error messages of a document the typed
/// reading refuses): `weight_map` as an ordered list, so that a name listed twice is kept.
#[derive(serde::Deserialize)]
struct SlowIndexDoc {
    weight_map: Option<Entries>,
}

/// The same document read with the names borrowed from the text (no generic JSON tree).
#[derive(serde::Deserialize)]
struct FastIndexDoc<'a> {
    #[serde(borrow)]
    weight_map: Option<StrPairs<'a>>,
}

struct StrPairs<'a>(Vec<(CowStr<'a>, CowStr<'a>)>);

/// A JSON string, borrowed from the text unless it has escapes.
struct CowStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for CowStr<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = CowStr<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> std::result::Result<CowStr<'a>, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<CowStr<'a>, E> {
                Ok(CowStr(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

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
                while let Some(kv) = map.next_entry::<CowStr<'de>, CowStr<'de>>()? {
                    out.push(kv);
                }
                Ok(StrPairs(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Reads the index document: `weight_map` present and not empty, every shard a plain file name
/// (the first entry naming a bad one is reported). Names listed twice are caught later
/// ([`index_duplicates`]), before any shard error.
fn parse_index<'a>(path: &Path, bytes: &'a [u8]) -> Result<IndexDoc<'a>> {
    // The scanner for the usual form; else serde's typed reading (escapes...); else the
    // generic one, for its error messages.
    let scanned = std::str::from_utf8(bytes).ok().and_then(scan_weight_map);
    let pairs: Vec<(Cow<'a, str>, Cow<'a, str>)> = match scanned {
        Some(p) => p.into_iter().map(|(t, f)| (Cow::Borrowed(t), Cow::Borrowed(f))).collect(),
        None => match serde_json::from_slice::<FastIndexDoc>(bytes).ok().and_then(|d| d.weight_map) {
            Some(StrPairs(p)) => p.into_iter().map(|(t, f)| (t.0, f.0)).collect(),
            None => slow_weight_map(path, bytes)?,
        },
    };
    if pairs.is_empty() {
        return Err(Error::config(
            path,
            "'weight_map' is empty: the index lists no tensors (a broken export? remove the index to load the shards beside it)",
        ));
    }
    let mut files: Vec<Cow<'a, str>> = Vec::new();
    let mut file_ids: FastMap<String, u32> = FastMap::default();
    let mut entries = Vec::with_capacity(pairs.len());
    let mut last: Option<u32> = None;
    for (tensor, f) in pairs {
        let id = match last {
            Some(l) if files[l as usize] == f => l,
            _ => match file_ids.get(f.as_ref()) {
                Some(&id) => id,
                None => {
                    // A shard name is a plain file name next to the index: anything that could
                    // walk out of the checkpoint directory is refused.
                    let p = Path::new(f.as_ref());
                    let plain = p.components().count() == 1 && matches!(p.components().next(), Some(Component::Normal(_)));
                    if !plain {
                        return Err(Error::config(
                            path,
                            format!("weight_map['{tensor}'] = '{f}' is not a file name inside the checkpoint directory"),
                        ));
                    }
                    let id = files.len() as u32;
                    file_ids.insert(f.to_string(), id);
                    files.push(f);
                    id
                }
            },
        };
        last = Some(id);
        entries.push((tensor, id));
    }
    Ok(IndexDoc { entries, files })
}

/// The index document read generically: only for the error it explains.
fn slow_weight_map(path: &Path, bytes: &[u8]) -> Result<Vec<(Cow<'static, str>, Cow<'static, str>)>> {
    let doc: SlowIndexDoc = serde_json::from_slice(bytes).map_err(|e| Error::config(path, format!("invalid JSON: {e}")))?;
    let slow = doc
        .weight_map
        .ok_or_else(|| Error::config(path, "no 'weight_map' object"))?;
    let mut out = Vec::with_capacity(slow.0.len());
    for (tensor, file) in slow.0 {
        let Value::String(f) = file else {
            return Err(Error::config(path, format!("weight_map['{tensor}'] is not a string")));
        };
        out.push((Cow::Owned(tensor), Cow::Owned(f)));
    }
    Ok(out)
}

/// A name the index lists twice, reported for the first such name in name order.
fn index_duplicates(path: &Path, doc: &IndexDoc<'_>) -> Result<()> {
    let sorted = doc.sorted();
    if let Some(w) = sorted.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(Error::config(
            path,
            format!("weight_map lists '{}' twice ('{}' and '{}')", w[0].0, w[0].1, w[1].1),
        ));
    }
    Ok(())
}

/// The shard files the index names (sorted), each checked to exist.
fn index_files(root: &Path, index_path: &Path, doc: &IndexDoc<'_>) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = doc.files.iter().map(|f| root.join(f.as_ref())).collect();
    if files.iter().any(|p| !p.is_file()) {
        // Reported as the sorted list meets it: a duplicate first, then the missing shard of
        // the first tensor in name order.
        index_duplicates(index_path, doc)?;
        let mut seen: HashSet<&str> = HashSet::new();
        for (tensor, file) in doc.sorted() {
            if !seen.insert(file) {
                continue;
            }
            let p = root.join(file);
            if !p.is_file() {
                return Err(Error::shard(
                    &p,
                    format!("shard named in {INDEX_FILE} is missing (it holds '{tensor}', among others)"),
                ));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The index cross-check with the exact errors (a listed name twice, then in name order: a
/// listed tensor the shards lack, or one in another shard than listed).
fn check_index_exact(index_path: &Path, doc: &IndexDoc<'_>, ck: &Checkpoint) -> Result<()> {
    index_duplicates(index_path, doc)?;
    for (tensor, file) in doc.sorted() {
        match ck.tensor_loc(tensor) {
            None => {
                return Err(Error::shard(
                    &index_path.with_file_name(file),
                    format!("tensor '{tensor}' is listed for this shard in {INDEX_FILE} but is not in it"),
                ))
            }
            Some(loc) => {
                let shard = &ck.shards[loc.shard];
                if shard.path.file_name().and_then(|n| n.to_str()) != Some(file) {
                    return Err(Error::shard(
                        &shard.path,
                        format!("tensor '{tensor}' is here but {INDEX_FILE} places it in '{file}'"),
                    ));
                }
            }
        }
    }
    Ok(())
}
