//! The per-module view: which HF modules are quantized, with which format, and their tensors
//! checked against the format table.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::formats::{FormatSpec, Packing, Presence, Role, ShapeRule};
use crate::header::TensorInfo;
use crate::names::FastMap;
use crate::pool;
use crate::quant_config::{QuantConfig, Scheme};

use rayon::prelude::*;

/// Suffixes of KV-cache tensors (FORMATS §6); they live under `k_proj`/`v_proj` names.
pub const KV_SUFFIXES: [&str; 4] = ["k_scale", "v_scale", "k_bias", "v_bias"];

/// Sibling suffixes of a BMM expert parameter `P` (`P_weight_scale`, ...), longest first so that
/// `_weight_scale_2` is not read as `_weight_scale`. Any of the scale suffixes marks `P` as a
/// quantized-in-place parameter; `_bias` (gpt-oss) only joins a `P` so marked.
const BMM_SUFFIXES: [(&str, Role); 5] = [
    ("_weight_scale_2", Role::WeightScale2),
    ("_pre_quant_scale", Role::PreQuantScale),
    ("_weight_scale", Role::WeightScale),
    ("_input_scale", Role::InputScale),
    ("_bias", Role::Bias),
];

/// `"...experts.gate_up_proj_weight_scale"` -> `("...experts.gate_up_proj", WeightScale)` when
/// the parameter exists in `names`.
fn bmm_sibling<'a>(name: &'a str, names: &std::collections::HashSet<&str>) -> Option<(&'a str, Role)> {
    BMM_SUFFIXES.iter().find_map(|(suffix, role)| {
        let param = name.strip_suffix(suffix)?;
        // The parameter is a leaf attribute (no role suffix of its own) that the index holds.
        let leaf = param.rsplit_once('.').map(|(_, l)| l).unwrap_or(param);
        (!leaf.is_empty() && Role::from_suffix(leaf).is_none() && names.contains(param)).then_some((param, *role))
    })
}

/// A quantized Linear (or a stack of them along leading expert dims).
#[derive(Debug, Clone)]
pub struct QuantModule {
    pub name: String,
    pub spec: &'static FormatSpec,
    /// Logical output features.
    pub n: u64,
    /// Logical input features.
    pub k: u64,
    /// Group / block size along K (and N for 2-D blocks), if the format has one.
    pub group: Option<u32>,
    /// Leading dims before `[N, K]` (stacked experts); usually empty.
    pub lead: Vec<u64>,
    /// A 3-D expert parameter quantized in place (Llama 4 / gpt-oss "BMM" experts, FORMATS 5):
    /// the weight tensor is the parameter itself (`experts.gate_up_proj`), its scales are
    /// siblings named `<param>_weight_scale`..., and everything is stored input-major: weight
    /// `[E, K, N]` (4-bit: `[E, K/2, N]`, two K-neighbours per byte), group scales `[E, K/G, N]`.
    /// `n`/`k` and every other field still describe the logical Linear `[E, N, K]`.
    pub bmm: bool,
    /// Role -> tensor name.
    pub tensors: BTreeMap<Role, String>,
    /// Tensors under this module's name that its format does not use (kept, reported).
    pub extras: Vec<String>,
    /// Role -> id of its tensor in the checkpoint ([`NO_TENSOR`] for none).
    ids: [u32; Role::ALL.len()],
}

/// No tensor in [`QuantModule`]'s id table.
const NO_TENSOR: u32 = u32::MAX;

impl QuantModule {
    pub fn tensor(&self, role: Role) -> Option<&str> {
        self.tensors.get(&role).map(String::as_str)
    }

    /// The checkpoint's id of the tensor of `role` (`Checkpoint::info_at`).
    pub fn tensor_id(&self, role: Role) -> Option<usize> {
        let id = self.ids[role as usize];
        (id != NO_TENSOR).then_some(id as usize)
    }

    /// Elements of the logical (dequantized) weight.
    pub fn numel(&self) -> u64 {
        self.lead.iter().product::<u64>() * self.n * self.k
    }
}

/// A KV-cache scale tensor (FORMATS §6).
#[derive(Debug, Clone)]
pub struct KvTensor {
    pub tensor: String,
    /// The attention module owning the quantizer (parent of `k_proj`/`v_proj`).
    pub attention: String,
    /// `k_scale`, `v_scale`, `k_bias` or `v_bias`.
    pub kind: String,
}

/// What module-building needs to know about the tensors, numbered `0..count()`.
pub trait TensorLookup {
    fn count(&self) -> usize;
    fn info_at(&self, id: usize) -> &TensorInfo;
    /// The id of tensor `name`.
    fn find(&self, name: &str) -> Option<usize>;
    /// The file holding tensor `name` (for error messages).
    fn file_of(&self, name: &str) -> PathBuf;
}

pub struct ModuleView {
    pub modules: Vec<QuantModule>,
    pub plain: Vec<String>,
    pub kv: Vec<KvTensor>,
    pub notes: Vec<String>,
}

/// The format (and configured group size) the metadata assigns to a module, if any.
pub fn configured_format(cfg: &QuantConfig, module: &str) -> Option<(&'static FormatSpec, Option<u32>)> {
    match &cfg.scheme {
        Scheme::Single { spec, group_size } => {
            if cfg.exclude.matches(module) {
                None
            } else {
                Some((*spec, *group_size))
            }
        }
        Scheme::Mixed { layers } => {
            // exact key; then a descendant key (vLLM `_resolve_quant_algo`); then an ancestor key
            // (transformers-5 fused-expert containers are keyed by the container, FORMATS §4.12).
            if let Some(l) = layers.get(module) {
                return Some((l.spec, l.group_size));
            }
            let prefix = format!("{module}.");
            if let Some((_, l)) = layers.range(prefix.clone()..).next().filter(|(k, _)| k.starts_with(&prefix)) {
                return Some((l.spec, l.group_size));
            }
            let mut anc = module;
            while let Some(pos) = anc.rfind('.') {
                anc = &anc[..pos];
                if let Some(l) = layers.get(anc) {
                    return Some((l.spec, l.group_size));
                }
            }
            None
        }
    }
}

/// A module's tensors: role -> tensor id (a fixed table in role order, [`NO_TENSOR`] for none).
#[derive(Clone, Copy)]
struct Roles([u32; Role::ALL.len()]);

impl Roles {
    fn new() -> Roles {
        Roles([NO_TENSOR; Role::ALL.len()])
    }
    fn insert(&mut self, role: Role, id: usize) {
        self.0[role as usize] = id as u32;
    }
    fn get(&self, role: &Role) -> Option<usize> {
        let id = self.0[*role as usize];
        (id != NO_TENSOR).then_some(id as usize)
    }
    fn contains_key(&self, role: &Role) -> bool {
        self.0[*role as usize] != NO_TENSOR
    }
    fn len(&self) -> usize {
        self.0.iter().filter(|&&id| id != NO_TENSOR).count()
    }
    /// (role, id) in role order.
    fn iter(&self) -> impl Iterator<Item = (Role, usize)> + '_ {
        Role::ALL.iter().filter_map(|&r| self.get(&r).map(|id| (r, id)))
    }
    fn keys(&self) -> impl Iterator<Item = Role> + '_ {
        self.iter().map(|(r, _)| r)
    }
    fn values(&self) -> impl Iterator<Item = usize> + '_ {
        self.iter().map(|(_, id)| id)
    }
    /// Adds `other`'s tensors (a role in both keeps `other`'s).
    fn merge(&mut self, other: &Roles) {
        for (a, &b) in self.0.iter_mut().zip(&other.0) {
            if b != NO_TENSOR {
                *a = b;
            }
        }
    }
}

/// Tensors (ids) grouped by module, with the tensors that belong to none. A module's tensors
/// are usually adjacent in the order they come in, so the last group is checked first and a
/// hash index catches the rest.
#[derive(Default)]
struct Groups<'a> {
    list: Vec<(&'a str, Roles)>,
    index: FastMap<&'a str, usize>,
    plain: Vec<usize>,
    kv: Vec<KvTensor>,
}

/// What a tensor's name makes it.
enum Class<'a> {
    Member(&'a str, Role),
    Kv(KvTensor),
    Plain,
}

fn classify(name: &str) -> Class<'_> {
    let Some((module, suffix)) = name.rsplit_once('.') else {
        return Class::Plain;
    };
    if let Some(role) = Role::from_suffix(suffix) {
        Class::Member(module, role)
    } else if KV_SUFFIXES.contains(&suffix) {
        let attention = module.rsplit_once('.').map(|(a, _)| a).unwrap_or(module);
        Class::Kv(KvTensor {
            tensor: name.to_string(),
            attention: attention.to_string(),
            kind: suffix.to_string(),
        })
    } else {
        Class::Plain
    }
}

impl<'a> Groups<'a> {
    /// Room for the groups of about `tensors` tensors (no rehash on the way).
    fn with_capacity(tensors: usize) -> Self {
        let n = tensors / 2 + 1;
        Groups {
            list: Vec::with_capacity(n),
            index: FastMap::with_capacity_and_hasher(n, Default::default()),
            ..Default::default()
        }
    }

    fn entry(&mut self, module: &'a str) -> &mut Roles {
        let i = match self.list.last() {
            Some((m, _)) if *m == module => self.list.len() - 1,
            _ => *self.index.entry(module).or_insert_with(|| {
                self.list.push((module, Roles::new()));
                self.list.len() - 1
            }),
        };
        &mut self.list[i].1
    }

    fn add(&mut self, id: usize, name: &'a str) {
        match classify(name) {
            Class::Member(module, role) => self.entry(module).insert(role, id),
            Class::Kv(k) => self.kv.push(k),
            Class::Plain => self.plain.push(id),
        }
    }

    /// Takes in the groups of a later part of the tensors.
    fn absorb(&mut self, other: Groups<'a>) {
        for (module, roles) in &other.list {
            self.entry(module).merge(roles);
        }
        self.plain.extend(other.plain);
        self.kv.extend(other.kv);
    }

    /// The groups in module-name order. A stable (run-adaptive) sort: groups come in runs that
    /// are already in name order (each shard's tensors of one dtype), so it merges a few runs.
    fn into_sorted(mut self) -> Self {
        self.list.sort_by(|a, b| a.0.cmp(b.0));
        self.kv.sort_by(|a, b| a.tensor.cmp(&b.tensor));
        self
    }
}

/// What one group of tensors turns out to be.
enum Outcome {
    Module(QuantModule),
    /// Plain tensors after all (ids), with a note worth telling.
    Plain(Vec<usize>, Option<String>),
    Failed(Error),
}

/// Tensors grouped per task when the grouping runs in parallel.
const GROUP_CHUNK: usize = 8192;

/// Builds the module view of all tensors of `lookup`.
pub fn build(lookup: &(dyn TensorLookup + Sync), cfg: Option<&QuantConfig>) -> Result<ModuleView> {
    let name = |id: usize| lookup.info_at(id).name.as_str();
    let count = lookup.count();
    let mut notes = Vec::new();

    // BMM expert parameters first: `P` with a `P_weight_scale` (etc.) sibling is a module.
    // (Only when some name ends like a BMM scale sibling: most checkpoints have none.)
    let bmm_like = |id: usize| BMM_SUFFIXES.iter().any(|(suffix, role)| *role != Role::Bias && name(id).ends_with(suffix));
    let any_bmm = pool::install(|| (0..count).into_par_iter().with_min_len(GROUP_CHUNK).any(bmm_like));
    let mut bmm: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    let mut groups = Groups::default();
    if any_bmm {
        // One pass in name order, as a role met twice (`P` and `P.weight`) keeps the later one.
        let mut ids: Vec<usize> = (0..count).collect();
        ids.sort_by(|&a, &b| name(a).cmp(name(b)));
        let all: std::collections::HashSet<&str> = ids.iter().map(|&id| name(id)).collect();
        for &id in &ids {
            if let Some((param, role)) = bmm_sibling(name(id), &all) {
                if role != Role::Bias {
                    bmm.insert(param);
                }
            }
        }
        for &id in &ids {
            let nm = name(id);
            if bmm.contains(nm) {
                groups.entry(nm).insert(Role::Weight, id);
            } else if let Some((param, role)) = bmm_sibling(nm, &all).filter(|(p, _)| bmm.contains(p)) {
                groups.entry(param).insert(role, id);
            } else {
                groups.add(id, nm);
            }
        }
    } else {
        // Names are unique, so a (module, role) pair has one tensor: grouped in parts in
        // parallel, the parts merged in order.
        let parts: Vec<Groups<'_>> = pool::install(|| {
            (0..count.div_ceil(GROUP_CHUNK))
                .into_par_iter()
                .map(|c| {
                    let mut g = Groups::with_capacity(GROUP_CHUNK);
                    for id in c * GROUP_CHUNK..((c + 1) * GROUP_CHUNK).min(count) {
                        g.add(id, name(id));
                    }
                    g
                })
                .collect()
        });
        groups = Groups::with_capacity(count);
        for p in parts {
            groups.absorb(p);
        }
    }
    let Groups { list: groups, plain, kv, .. } = groups.into_sorted();
    let mut plain = plain;

    // Each group is judged on its own (in parallel); the outcomes are taken in name order, so
    // the first error, the notes and the module list are those of a serial pass.
    let judge = |(module, roles): &(&str, Roles)| -> Outcome {
        let module: &str = module;
        let Some(wid) = roles.get(&Role::Weight) else {
            let note = (roles.len() > 1 || !roles.contains_key(&Role::Bias))
                .then(|| format!("'{module}' has {:?} but no weight; kept as plain tensors", roles.keys().collect::<Vec<_>>()));
            return Outcome::Plain(roles.values().collect(), note);
        };
        let w = lookup.info_at(wid);
        let evidence = !w.dtype.is_wide_float() || roles.contains_key(&Role::WeightScale);
        let assigned = cfg.and_then(|c| configured_format(c, module));
        match (evidence, assigned) {
            (true, Some((spec, group))) => match validate(module, roles, spec, group, lookup, bmm.contains(module)) {
                Ok(m) => Outcome::Module(m),
                Err(e) => Outcome::Failed(e),
            },
            (true, None) => {
                let why = match cfg {
                    None => "the checkpoint has no ModelOpt quantization config".to_string(),
                    Some(c) => match c.scheme {
                        Scheme::Single { .. } => "it is excluded by exclude_modules".to_string(),
                        Scheme::Mixed { .. } => "MIXED_PRECISION quantized_layers does not list it".to_string(),
                    },
                };
                Outcome::Failed(
                    Error::Format {
                        file: lookup.file_of(&w.name),
                        module: module.to_string(),
                        algo: cfg.map(|c| c.quant_algo.clone()).unwrap_or_else(|| "none".into()),
                        tensor: w.name.clone(),
                        msg: format!("stores quantized tensors ({} weight) but {why}", w.dtype),
                    },
                )
            }
            (false, assigned) => {
                let note = (assigned.is_some() && w.shape.len() >= 2 && roles.len() > 1).then(|| {
                    format!("'{module}' is covered by the quant config but stores an unquantized {} weight", w.dtype)
                });
                Outcome::Plain(roles.values().collect(), note)
            }
        }
    };
    let outcomes: Vec<Outcome> = if groups.len() >= 256 {
        pool::install(|| groups.par_iter().with_min_len(64).map(judge).collect())
    } else {
        groups.iter().map(judge).collect()
    };
    let mut modules = Vec::new();
    for o in outcomes {
        match o {
            Outcome::Module(m) => modules.push(m),
            Outcome::Plain(ids, note) => {
                notes.extend(note);
                plain.extend(ids);
            }
            Outcome::Failed(e) => return Err(e),
        }
    }
    let mut plain: Vec<&str> = plain.into_iter().map(name).collect();
    plain.sort_unstable();
    Ok(ModuleView {
        modules,
        plain: plain.into_iter().map(str::to_string).collect(),
        kv,
        notes,
    })
}

fn validate(
    module: &str,
    roles: &Roles,
    spec: &'static FormatSpec,
    configured_group: Option<u32>,
    lookup: &dyn TensorLookup,
    bmm: bool,
) -> Result<QuantModule> {
    let err = |tensor: &str, msg: String| Error::Format {
        file: lookup.file_of(tensor),
        module: module.to_string(),
        algo: spec.name.to_string(),
        tensor: tensor.to_string(),
        msg,
    };

    let mut tensors = BTreeMap::new();
    let mut ids = [NO_TENSOR; Role::ALL.len()];
    let mut infos: [Option<&TensorInfo>; Role::ALL.len()] = [None; Role::ALL.len()];
    let mut extras = Vec::new();
    for (role, id) in roles.iter() {
        let ti = lookup.info_at(id);
        let t = ti.name.as_str();
        match spec.rule(role) {
            Some(rule) => {
                infos[role as usize] = Some(ti);
                if !rule.dtypes.contains(&ti.dtype) {
                    return Err(err(
                        t,
                        format!("dtype {} but {} expects {}", ti.dtype, spec.name, dtype_list(rule.dtypes)),
                    ));
                }
                tensors.insert(role, t.to_string());
                ids[role as usize] = id as u32;
            }
            None => extras.push(t.to_string()),
        }
    }
    for rule in spec.tensors {
        if rule.presence == Presence::Required && !tensors.contains_key(&rule.role) {
            let missing = format!("{module}.{}", rule.role.suffix());
            let near = roles.get(&Role::Weight).map(|id| lookup.info_at(id).name.as_str()).unwrap_or(module);
            return Err(Error::Format {
                file: lookup.file_of(near),
                module: module.to_string(),
                algo: spec.name.to_string(),
                tensor: missing,
                msg: format!("missing: {} requires '{}'", spec.name, rule.role.suffix()),
            });
        }
    }

    let w = infos[Role::Weight as usize].ok_or_else(|| Error::argument(format!("module '{module}' lost its weight")))?;
    let wname = w.name.as_str();
    if w.shape.len() < 2 {
        return Err(err(wname, format!("weight has shape {:?}; a Linear weight needs 2 dims", w.shape)));
    }
    // Any zero dimension, leading (expert) dims included, is refused before the logical sizes
    // are computed: with a zero expert count the header admits huge N/K (no bytes are stored),
    // and later size arithmetic (K * 4 bytes per row, N * scale bytes per granule) would
    // overflow. With every dim non-zero, N * K is bounded by twice the stored byte count.
    if w.shape.contains(&0) {
        return Err(err(wname, format!("weight has an empty dimension: {:?}", w.shape)));
    }
    let (lead, last2) = w.shape.split_at(w.shape.len() - 2);
    let (r, c) = (last2[0], last2[1]);
    let (n, k) = match (bmm, spec.packing) {
        (false, Packing::None) => (r, c),
        (false, Packing::PairsAlongK) => (r, c * 2),
        (false, Packing::PairsAlongN) => (r * 2, c),
        // In-place expert parameters are stored input-major `[E, K, N]`; ModelOpt packs 4-bit
        // pairs along K there too (it transposes to `[E, N, K]`, packs, transposes back).
        (true, Packing::None) => (c, r),
        (true, Packing::PairsAlongK) => (c, r * 2),
        (true, Packing::PairsAlongN) => {
            return Err(err(wname, format!("{} is not known for in-place (BMM) expert parameters; cannot lay it out", spec.name)))
        }
    };
    if bmm {
        if lead.is_empty() {
            return Err(err(wname, format!("in-place expert parameter has shape {:?}; expected [experts, K, N]", w.shape)));
        }
        if matches!(spec.rule(Role::WeightScale).map(|r| r.shape), Some(ShapeRule::Blocks2d)) {
            return Err(err(wname, format!("{} block scales are not known for in-place (BMM) expert parameters", spec.name)));
        }
    }

    if bmm {
        stale_bmm_scale(spec, roles, lead, n, k, configured_group, lookup).map_err(|(t, msg)| err(t, msg))?;
    }

    let group = resolve_group(spec, configured_group, roles, k, lookup, bmm)
        .map_err(|msg| err(roles.get(&Role::WeightScale).map(|id| lookup.info_at(id).name.as_str()).unwrap_or(wname), msg))?;

    for (&role, t) in &tensors {
        let rule = spec.rule(role).ok_or_else(|| Error::argument("rule vanished"))?;
        let ti = infos[role as usize].ok_or_else(|| Error::argument("tensor vanished"))?;
        if let Err(msg) = check_shape(rule.shape, &ti.shape, lead, n, k, group, bmm) {
            return Err(err(t, msg));
        }
    }

    Ok(QuantModule {
        name: module.to_string(),
        spec,
        n,
        k,
        group,
        lead: lead.to_vec(),
        bmm,
        tensors,
        extras,
        ids,
    })
}

/// ModelOpt 0.35 (and other releases before the fix) registers a BMM expert's group scale
/// before transposing the parameter, i.e. computed over blocks along N of `[E, K, N]`
/// (`[E, K, N/G]`), then packs the weight with *other* scales (blocks along K) that it does not
/// write: the packed bytes cannot be dequantized from what the file holds. Named as such
/// instead of as a generic shape mismatch.
fn stale_bmm_scale<'a>(
    spec: &FormatSpec,
    roles: &Roles,
    lead: &[u64],
    n: u64,
    k: u64,
    configured: Option<u32>,
    lookup: &'a dyn TensorLookup,
) -> std::result::Result<(), (&'a str, String)> {
    if !matches!(spec.rule(Role::WeightScale).map(|r| r.shape), Some(ShapeRule::Groups)) {
        return Ok(());
    }
    let (Some(t), Some(g)) = (roles.get(&Role::WeightScale), configured.or(spec.default_group)) else {
        return Ok(());
    };
    let g = g as u64;
    let ti = lookup.info_at(t);
    let t = ti.name.as_str();
    let stale: Vec<u64> = lead.iter().copied().chain([k, n / g.max(1)]).collect();
    let good: Vec<u64> = lead.iter().copied().chain([k / g.max(1), n]).collect();
    if n.is_multiple_of(g) && ti.shape == stale && ti.shape != good {
        return Err((
            t,
            format!(
                "in-place expert scale has shape {:?} = [E, K, N/{g}]: the scale ModelOpt computed before transposing                  the parameter (written by nvidia-modelopt 0.35 and similar releases), not the [E, K/{g}, N] scale its                  packed weights were quantized with, which the file lacks; this module cannot be dequantized (re-export                  with a current nvidia-modelopt, e.g. 0.47)",
                ti.shape
            ),
        ));
    }
    Ok(())
}

/// The group size: configured, else the format default; checked against the scale's shape
/// when the format has per-group scales.
fn resolve_group(
    spec: &FormatSpec,
    configured: Option<u32>,
    roles: &Roles,
    k: u64,
    lookup: &dyn TensorLookup,
    bmm: bool,
) -> std::result::Result<Option<u32>, String> {
    let rule = spec.rule(Role::WeightScale);
    let is_groups = matches!(rule.map(|r| r.shape), Some(ShapeRule::Groups));
    let is_blocks = matches!(rule.map(|r| r.shape), Some(ShapeRule::Blocks2d));
    if !is_groups && !is_blocks {
        return Ok(None);
    }
    let g = match configured.or(spec.default_group) {
        Some(g) => g as u64,
        None => return Err(format!("{} needs a group size and none is configured", spec.name)),
    };
    if is_groups {
        // The scale's last dim says how many groups there are; a checkpoint without a
        // group_size key (config.json form) may use another size than the default.
        if let Some(ti) = roles.get(&Role::WeightScale).map(|id| lookup.info_at(id)) {
            // `[.., N, K/G]`, or `[.., K/G, N]` for in-place expert parameters.
            let at = if bmm { ti.shape.len().checked_sub(2) } else { ti.shape.len().checked_sub(1) };
            let cols = at.and_then(|i| ti.shape.get(i)).copied().unwrap_or(0);
            if cols == 0 || !k.is_multiple_of(cols) {
                return Err(format!(
                    "weight_scale has {cols} groups, which does not divide K={k} (shape {:?})",
                    ti.shape
                ));
            }
            let from_shape = k / cols;
            if from_shape != g {
                if configured.is_some() {
                    return Err(format!(
                        "group_size {g} is configured but weight_scale {:?} implies {from_shape} for K={k}",
                        ti.shape
                    ));
                }
                return Ok(Some(from_shape as u32));
            }
        }
        if spec.group_divides_k && !k.is_multiple_of(g) {
            return Err(format!("K={k} is not a multiple of group size {g}"));
        }
    }
    Ok(Some(g as u32))
}

fn check_shape(
    rule: ShapeRule,
    shape: &[u64],
    lead: &[u64],
    n: u64,
    k: u64,
    group: Option<u32>,
    bmm: bool,
) -> std::result::Result<(), String> {
    // The accepted shapes of `expected_shapes`, tested without building them (this runs for
    // every tensor of every module); a mismatch is explained by the list.
    let is = |tail: &[u64]| shape.len() == lead.len() + tail.len() && shape[..lead.len()] == *lead && shape[lead.len()..] == *tail;
    let scalar = shape.is_empty() || shape == [1];
    let ok = match rule {
        ShapeRule::Weight => true,
        ShapeRule::Scalar => scalar,
        ShapeRule::PerOutput => is(&[n]),
        ShapeRule::PerInput => is(&[k]) || shape == [k],
        ShapeRule::Groups => {
            let g = group.unwrap_or(1) as u64;
            if bmm {
                is(&[k / g, n])
            } else {
                is(&[n, k / g])
            }
        }
        ShapeRule::Blocks2d => {
            let g = group.unwrap_or(128) as u64;
            let (nb, kb) = (n.div_ceil(g), k.div_ceil(g));
            is(&[nb, 1, kb, 1]) || is(&[nb, kb]) || (nb * kb == 1 && lead.is_empty() && scalar)
        }
    };
    if ok {
        Ok(())
    } else {
        expected_shapes(rule, shape, lead, n, k, group, bmm)
    }
}

fn expected_shapes(
    rule: ShapeRule,
    shape: &[u64],
    lead: &[u64],
    n: u64,
    k: u64,
    group: Option<u32>,
    bmm: bool,
) -> std::result::Result<(), String> {
    let with_lead = |tail: &[u64]| -> Vec<u64> { lead.iter().chain(tail).copied().collect() };
    let expect: Vec<Vec<u64>> = match rule {
        ShapeRule::Weight => return Ok(()),
        ShapeRule::Scalar => vec![vec![], vec![1]],
        ShapeRule::PerOutput => vec![with_lead(&[n])],
        ShapeRule::PerInput => vec![with_lead(&[k]), vec![k]],
        ShapeRule::Groups => {
            let g = group.unwrap_or(1) as u64;
            if bmm {
                vec![with_lead(&[k / g, n])]
            } else {
                vec![with_lead(&[n, k / g])]
            }
        }
        ShapeRule::Blocks2d => {
            let g = group.unwrap_or(128) as u64;
            let (nb, kb) = (n.div_ceil(g), k.div_ceil(g));
            let mut shapes = vec![with_lead(&[nb, 1, kb, 1]), with_lead(&[nb, kb])];
            if nb * kb == 1 && lead.is_empty() {
                // ModelOpt squeezes a single-block scale to 0-d (seen in its FP8_PB_WO exports
                // of 64x128 and 128x128 weights).
                shapes.extend([vec![], vec![1]]);
            }
            shapes
        }
    };
    if expect.iter().any(|e| e.as_slice() == shape) {
        Ok(())
    } else {
        let alts: Vec<String> = expect.iter().map(|e| format!("{e:?}")).collect();
        Err(format!(
            "shape {shape:?} but expected {} for N={n}, K={k}{}",
            alts.join(" or "),
            group.map(|g| format!(", group {g}")).unwrap_or_default()
        ))
    }
}

fn dtype_list(d: &[DType]) -> String {
    d.iter().map(|d| d.name()).collect::<Vec<_>>().join("/")
}
