//! The format table: one declarative description per ModelOpt `quant_algo`.
//!
//! Everything format-specific lives here as data (tensor suffixes, dtypes, shape rules, packing,
//! scale encoding, activation scheme, the layout motensor's kernels read). The validator, the
//! CPU dequantizer, the loader's re-layout and (through the bindings) the Python modules and
//! tests all read this one table, so adding a format is adding a row, not branches elsewhere.
//! Facts cite `shared/FORMATS.md` sections.

use crate::dtype::DType;

/// Declares a fieldless enum together with the stable name of each variant.
///
/// The names are the vocabulary every consumer shares (the Python enums generated from
/// `motensor._core.vocabulary()`, the kernels' arguments, `motensor inspect`): they are written
/// out here, not derived from the Rust identifiers, so renaming a variant cannot silently change
/// a string that Python compares. `ALL` lists the variants in declaration order; a variant's
/// position in it is its integer id (what the Triton kernels take as a constexpr).
macro_rules! named_enum {
    ($(#[$m:meta])* pub enum $T:ident { $($(#[$vm:meta])* $V:ident = $name:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $T {
            $($(#[$vm])* $V,)*
        }
        impl $T {
            pub const ALL: &'static [$T] = &[$($T::$V,)*];
            /// The stable name of this value (see `named_enum!`).
            pub const fn name(self) -> &'static str {
                match self {
                    $($T::$V => $name,)*
                }
            }
        }
    };
}

named_enum! {
    /// How a stored weight element is encoded.
    pub enum Element {
        /// FP8 E4M3, one byte per element.
        E4m3 = "E4M3",
        /// FP4 E2M1 nibbles (FORMATS §2).
        E2m1 = "E2M1",
        /// Signed two's-complement INT4 nibbles, no zero point (FORMATS §2, §4.7).
        Int4 = "INT4",
        /// Signed INT8.
        Int8 = "INT8",
    }
}

named_enum! {
    /// Where two 4-bit values share a byte.
    pub enum Packing {
        /// One element per byte: stored `[N, K]`.
        None = "NONE",
        /// Stored `[N, K/2]`, element `2j` in the low nibble (NVFP4, MXFP4).
        PairsAlongK = "PAIRS_ALONG_K",
        /// Stored `[N/2, K]`, output row `2r` in the low nibble (INT4 AWQ).
        PairsAlongN = "PAIRS_ALONG_N",
    }
}

named_enum! {
    /// How a scale value is encoded.
    pub enum ScaleEncoding {
        /// A wide float: F32 (BF16/F16 accepted for scalars, FORMATS §3.3, and widened to F32 by the
        /// loader, so kernels always read F32).
        Float = "F32",
        /// FP8 E4M3 block scales (NVFP4 family).
        E4m3 = "E4M3",
        /// E8M0 power-of-two exponents, value `2^(e-127)` (MX formats).
        E8m0 = "E8M0",
    }
}

named_enum! {
    /// The shape a tensor must have, in terms of the weight's logical `[N, K]` and group `G`.
    pub enum ShapeRule {
        /// The stored weight, shape given by the packing.
        Weight = "WEIGHT",
        /// A per-tensor scalar: `[]` or `[1]` (FORMATS §3.3).
        Scalar = "SCALAR",
        /// One value per output channel: `[N]`.
        PerOutput = "PER_OUTPUT",
        /// One value per input channel: `[K]`.
        PerInput = "PER_INPUT",
        /// One value per output row and K-group: `[N, K/G]`.
        Groups = "GROUPS",
        /// Square 2-D blocks of side G: `[ceil(N/G), 1, ceil(K/G), 1]` or `[ceil(N/G), ceil(K/G)]`.
        Blocks2d = "BLOCKS2D",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Weight,
    WeightScale,
    WeightScale2,
    InputScale,
    PreQuantScale,
    Bias,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Weight,
        Role::WeightScale,
        Role::WeightScale2,
        Role::InputScale,
        Role::PreQuantScale,
        Role::Bias,
    ];

    /// The tensor-name suffix ModelOpt writes for this role (`<module>.<suffix>`).
    pub fn suffix(self) -> &'static str {
        match self {
            Role::Weight => "weight",
            Role::WeightScale => "weight_scale",
            Role::WeightScale2 => "weight_scale_2",
            Role::InputScale => "input_scale",
            Role::PreQuantScale => "pre_quant_scale",
            Role::Bias => "bias",
        }
    }

    pub fn from_suffix(s: &str) -> Option<Role> {
        // (A match: one comparison per tensor name instead of one per role.)
        Some(match s {
            "weight" => Role::Weight,
            "weight_scale" => Role::WeightScale,
            "weight_scale_2" => Role::WeightScale2,
            "input_scale" => Role::InputScale,
            "pre_quant_scale" => Role::PreQuantScale,
            "bias" => Role::Bias,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Required,
    Optional,
}

named_enum! {
    /// How activations are quantized at run time.
    pub enum Activation {
        /// Weight-only: activations stay in the model dtype.
        None = "NONE",
        /// FP8 E4M3 per-tensor, static `input_scale` (dynamic per-tensor if the scale is absent).
        Fp8PerTensor = "FP8_PER_TENSOR",
        /// FP8 E4M3 per-token dynamic (`amax(|x[m,:]|)/448`).
        Fp8PerToken = "FP8_PER_TOKEN",
        /// NVFP4 per-16-block dynamic with a calibrated global `input_scale`.
        Nvfp4 = "NVFP4",
        /// MXFP8 per-32-block dynamic E8M0 scales.
        Mxfp8 = "MXFP8",
        /// MXFP4 per-32-block dynamic E8M0 scales.
        Mxfp4 = "MXFP4",
        /// INT8 per-tensor static `input_scale`, full range -128..127 (ModelOpt 0.47's fake quant;
        /// FORMATS 4.9 describes the narrow ±127 range, which its exports do not use).
        Int8PerTensor = "INT8_PER_TENSOR",
    }
}

named_enum! {
    /// What `weight_scale_2` does to the weight.
    pub enum GlobalScale {
        /// The format has no `weight_scale_2`.
        None = "NONE",
        /// `W = element * weight_scale * weight_scale_2` (NVFP4 family, FORMATS 4.4).
        Multiplies = "MULTIPLIES",
        /// A second, FP8 per-tensor weight quantizer on top of the INT4 one (W4A8_AWQ, FORMATS 4.8):
        /// `W = e4m3(bf16(q * weight_scale) / weight_scale_2) * weight_scale_2`, which is what
        /// ModelOpt's fake-quant computes with (the FP8 stage sees the bf16 INT4-dequantized weight);
        /// the FP8 tensor-core kernel feeds the MMA `e4m3(q * weight_scale / weight_scale_2)`.
        Fp8Requant = "FP8_REQUANT",
    }
}

named_enum! {
    /// How the loader lays a weight out for motensor's kernels.
    pub enum WeightLayout {
        /// Kept exactly as stored.
        AsStored = "AS_STORED",
        /// INT4 `[N/2, K]` pairs-along-N signed -> `[N, K/2]` pairs-along-K offset-binary (`q + 8`),
        /// so one 4-bit kernel family reads FP4 and INT4 alike.
        Int4ToKPacked = "INT4_TO_K_PACKED",
    }
}

named_enum! {
    /// How the loader lays the per-group/per-block scale out for motensor's kernels.
    pub enum ScaleLayout {
        /// Kept exactly as stored.
        AsStored = "AS_STORED",
        /// `[N, K/G]` -> `[K/G, N]`: one row per K-group, contiguous along N, so a kernel tile
        /// reads its scales with the same wide loads it uses for the weight columns.
        GroupsTransposed = "GROUPS_TRANSPOSED",
        /// `[ceil(N/B), 1, ceil(K/B), 1]` -> `[ceil(N/B), ceil(K/B)]` (a reshape, no data movement).
        Blocks2dSqueezed = "BLOCKS2D_SQUEEZED",
    }
}

/// One tensor a format expects per module.
#[derive(Debug, Clone, Copy)]
pub struct TensorRule {
    pub role: Role,
    pub presence: Presence,
    pub dtypes: &'static [DType],
    pub shape: ShapeRule,
    pub encoding: ScaleEncoding,
}

/// The full description of one `quant_algo`.
#[derive(Debug, Clone, Copy)]
pub struct FormatSpec {
    /// The canonical `quant_algo` string (upper case; matching is case-insensitive).
    pub name: &'static str,
    pub element: Element,
    pub packing: Packing,
    /// Group (block) size along K if the checkpoint does not say; `None` for per-tensor/channel.
    pub default_group: Option<u32>,
    pub activation: Activation,
    pub global_scale: GlobalScale,
    pub tensors: &'static [TensorRule],
    pub weight_layout: WeightLayout,
    pub scale_layout: ScaleLayout,
    /// Whether K (and N for 2-D blocks) must be a multiple of the group size.
    pub group_divides_k: bool,
    /// One line describing the dequantization and forward math.
    pub math: &'static str,
}

/// Rows are identified by their (unique) `quant_algo` name.
impl PartialEq for FormatSpec {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
impl Eq for FormatSpec {}

impl FormatSpec {
    pub fn rule(&self, role: Role) -> Option<&TensorRule> {
        self.tensors.iter().find(|r| r.role == role)
    }

    pub fn weight_dtypes(&self) -> &'static [DType] {
        self.rule(Role::Weight).map(|r| r.dtypes).unwrap_or(&[])
    }
}

const WIDE: &[DType] = &[DType::F32, DType::BF16, DType::F16, DType::F64];
const F32: &[DType] = &[DType::F32];
const FP8: &[DType] = &[DType::F8_E4M3];
const U8: &[DType] = &[DType::U8];
const I8: &[DType] = &[DType::I8];
const U8_OR_I8: &[DType] = &[DType::U8, DType::I8];
const E8M0: &[DType] = &[DType::U8, DType::F8_E8M0];

const fn rule(role: Role, presence: Presence, dtypes: &'static [DType], shape: ShapeRule) -> TensorRule {
    TensorRule {
        role,
        presence,
        dtypes,
        shape,
        encoding: ScaleEncoding::Float,
    }
}

const fn scale(presence: Presence, dtypes: &'static [DType], shape: ShapeRule, enc: ScaleEncoding) -> TensorRule {
    TensorRule {
        role: Role::WeightScale,
        presence,
        dtypes,
        shape,
        encoding: enc,
    }
}

use Presence::{Optional as Opt, Required as Req};
use ShapeRule as S;

const BIAS: TensorRule = rule(Role::Bias, Opt, WIDE, S::PerOutput);
const PQS: TensorRule = rule(Role::PreQuantScale, Opt, WIDE, S::PerInput);
/// SmoothQuant never folds `pre_quant_scale` into a norm (fusion is gated on AWQ, FORMATS 3.2),
/// so every W8A8_SQ linear carries it and its weight holds `1/pqs`: loading one without it
/// would compute silently wrong outputs.
const PQS_REQ: TensorRule = rule(Role::PreQuantScale, Req, WIDE, S::PerInput);
const WS2: TensorRule = rule(Role::WeightScale2, Req, WIDE, S::Scalar);
const IN_REQ: TensorRule = rule(Role::InputScale, Req, WIDE, S::Scalar);
const IN_OPT: TensorRule = rule(Role::InputScale, Opt, WIDE, S::Scalar);

const fn weight(dtypes: &'static [DType]) -> TensorRule {
    rule(Role::Weight, Req, dtypes, S::Weight)
}

const NVFP4_SCALE: TensorRule = scale(Req, FP8, S::Groups, ScaleEncoding::E4m3);
const MX_SCALE: TensorRule = scale(Req, E8M0, S::Groups, ScaleEncoding::E8m0);
const INT4_SCALE: TensorRule = scale(Req, F32, S::Groups, ScaleEncoding::Float);
const CHANNEL_SCALE: TensorRule = scale(Req, F32, S::PerOutput, ScaleEncoding::Float);

/// The table. Order is the order `motensor inspect` and the docs list formats in.
pub static FORMATS: &[FormatSpec] = &[
    FormatSpec {
        name: "FP8",
        element: Element::E4m3,
        packing: Packing::None,
        default_group: None,
        activation: Activation::Fp8PerTensor,
        global_scale: GlobalScale::None,
        tensors: &[weight(FP8), scale(Req, WIDE, S::Scalar, ScaleEncoding::Float), IN_REQ, BIAS],
        weight_layout: WeightLayout::AsStored,
        scale_layout: ScaleLayout::AsStored,
        group_divides_k: false,
        math: "W = w_fp8 * weight_scale; y = (fp8(x/input_scale) @ w_fp8^T) * input_scale * weight_scale (FORMATS 4.1)",
    },
    FormatSpec {
        name: "FP8_PER_CHANNEL_PER_TOKEN",
        element: Element::E4m3,
        packing: Packing::None,
        default_group: None,
        activation: Activation::Fp8PerToken,
        global_scale: GlobalScale::None,
        tensors: &[weight(FP8), CHANNEL_SCALE, BIAS],
        weight_layout: WeightLayout::AsStored,
        scale_layout: ScaleLayout::AsStored,
        group_divides_k: false,
        math: "W = w_fp8 * weight_scale[n]; x quantized per token to FP8 (amax/448) (FORMATS 4.2)",
    },
    FormatSpec {
        name: "FP8_PB_WO",
        element: Element::E4m3,
        packing: Packing::None,
        default_group: Some(128),
        activation: Activation::None,
        global_scale: GlobalScale::None,
        tensors: &[weight(FP8), scale(Req, F32, S::Blocks2d, ScaleEncoding::Float), BIAS],
        weight_layout: WeightLayout::AsStored,
        scale_layout: ScaleLayout::Blocks2dSqueezed,
        group_divides_k: false,
        math: "W[n,k] = w_fp8[n,k] * s[n//128, k//128]; weight-only (FORMATS 4.3)",
    },
    FormatSpec {
        name: "NVFP4",
        element: Element::E2m1,
        packing: Packing::PairsAlongK,
        default_group: Some(16),
        activation: Activation::Nvfp4,
        global_scale: GlobalScale::Multiplies,
        tensors: &[weight(U8), NVFP4_SCALE, WS2, IN_REQ, BIAS],
        weight_layout: WeightLayout::AsStored,
        scale_layout: ScaleLayout::GroupsTransposed,
        group_divides_k: true,
        math: "W = e2m1 * e4m3(weight_scale) * weight_scale_2; x NVFP4 per-16-block with global input_scale (FORMATS 4.4)",
    },
    FormatSpec {
        name: "W4A16_NVFP4",
        element: Element::E2m1,
        packing: Packing::PairsAlongK,
        default_group: Some(16),
        activation: Activation::None,
        global_scale: GlobalScale::Multiplies,
        tensors: &[weight(U8), NVFP4_SCALE, WS2, BIAS],
        weight_layout: WeightLayout::AsStored,
        scale_layout: ScaleLayout::GroupsTransposed,
        group_divides_k: true,
        math: "W = e2m1 * e4m3(weight_scale) * weight_scale_2; weight-only (FORMATS 4.5)",
    },
    FormatSpec {
        name: "NVFP4_AWQ",
        element: Element::E2m1,
        packing: Packing::PairsAlongK,
        default_group: Some(16),
        activation: Activation::Nvfp4,
        global_scale: GlobalScale::Multiplies,
        tensors: &[weight(U8), NVFP4_SCALE, WS2, IN_REQ, PQS, BIAS],
        weight_layout: WeightLayout::AsStored,
        scale_layout: ScaleLayout::GroupsTransposed,
        group_divides_k: true,
        math: "as NVFP4 on x * pre_quant_scale (FORMATS 4.6)",
    },
    FormatSpec {
        name: "W4A8_NVFP4_FP8",
        element: Element::E2m1,
        packing: Packing::PairsAlongK,
        default_group: Some(32),
        activation: Activation::Fp8PerTensor,
        global_scale: GlobalScale::Multiplies,
        tensors: &[weight(U8), NVFP4_SCALE, WS2, IN_REQ, BIAS],
        weight_layout: WeightLayout::AsStored,
        scale_layout: ScaleLayout::GroupsTransposed,
        group_divides_k: true,
        math: "W = e2m1 * e4m3(weight_scale) * weight_scale_2 (block 32, ws2 = amax/448); x FP8 static per-tensor (FORMATS 4.6b)",
    },
    FormatSpec {
        name: "W4A16_AWQ",
        element: Element::Int4,
        packing: Packing::PairsAlongN,
        default_group: Some(128),
        activation: Activation::None,
        global_scale: GlobalScale::None,
        tensors: &[weight(U8_OR_I8), INT4_SCALE, PQS, BIAS],
        weight_layout: WeightLayout::Int4ToKPacked,
        scale_layout: ScaleLayout::GroupsTransposed,
        group_divides_k: true,
        math: "W = int4 * weight_scale[n, k//G]; y = (x * pre_quant_scale) @ W^T (FORMATS 4.7)",
    },
    FormatSpec {
        name: "W4A8_AWQ",
        element: Element::Int4,
        packing: Packing::PairsAlongN,
        default_group: Some(128),
        activation: Activation::Fp8PerTensor,
        global_scale: GlobalScale::Fp8Requant,
        tensors: &[weight(U8_OR_I8), INT4_SCALE, WS2, IN_REQ, PQS, BIAS],
        weight_layout: WeightLayout::Int4ToKPacked,
        scale_layout: ScaleLayout::GroupsTransposed,
        group_divides_k: true,
        math: "W = int4 * weight_scale[n, k//G] (weight_scale_2 is the FP8 range factor); x FP8 static per-tensor (FORMATS 4.8)",
    },
    FormatSpec {
        name: "W8A8_SQ_PER_CHANNEL",
        element: Element::Int8,
        packing: Packing::None,
        default_group: None,
        activation: Activation::Int8PerTensor,
        global_scale: GlobalScale::None,
        tensors: &[weight(I8), CHANNEL_SCALE, IN_REQ, PQS_REQ, BIAS],
        weight_layout: WeightLayout::AsStored,
        scale_layout: ScaleLayout::AsStored,
        group_divides_k: false,
        math: "W = int8 * weight_scale[n]; x_q = clamp(round(x*pqs/input_scale), -128, 127) (FORMATS 4.9)",
    },
    FormatSpec {
        name: "W8A16",
        element: Element::Int8,
        packing: Packing::None,
        default_group: None,
        activation: Activation::None,
        global_scale: GlobalScale::None,
        tensors: &[weight(I8), CHANNEL_SCALE, PQS, BIAS],
        weight_layout: WeightLayout::AsStored,
        scale_layout: ScaleLayout::AsStored,
        group_divides_k: false,
        math: "W = int8 * weight_scale[n]; weight-only (FORMATS 4.9)",
    },
    FormatSpec {
        name: "MXFP8",
        element: Element::E4m3,
        packing: Packing::None,
        default_group: Some(32),
        activation: Activation::Mxfp8,
        global_scale: GlobalScale::None,
        tensors: &[weight(FP8), MX_SCALE, BIAS],
        weight_layout: WeightLayout::AsStored,
        scale_layout: ScaleLayout::GroupsTransposed,
        group_divides_k: true,
        math: "W = w_fp8 * 2^(weight_scale-127) per 32-block; x MXFP8 per-32-block dynamic (FORMATS 4.10)",
    },
    FormatSpec {
        name: "MXFP4",
        element: Element::E2m1,
        packing: Packing::PairsAlongK,
        default_group: Some(32),
        activation: Activation::Mxfp4,
        global_scale: GlobalScale::None,
        tensors: &[weight(U8), MX_SCALE, BIAS],
        weight_layout: WeightLayout::AsStored,
        scale_layout: ScaleLayout::GroupsTransposed,
        group_divides_k: true,
        math: "W = e2m1 * 2^(weight_scale-127) per 32-block; x MXFP4 per-32-block dynamic (FORMATS 4.11)",
    },
    FormatSpec {
        name: "W4A8_MXFP4_FP8",
        element: Element::E2m1,
        packing: Packing::PairsAlongK,
        default_group: Some(32),
        activation: Activation::Fp8PerTensor,
        global_scale: GlobalScale::None,
        tensors: &[weight(U8), MX_SCALE, IN_OPT, BIAS],
        weight_layout: WeightLayout::AsStored,
        scale_layout: ScaleLayout::GroupsTransposed,
        group_divides_k: true,
        math: "W = e2m1 * 2^(weight_scale-127) per 32-block; x FP8 per-tensor (static if input_scale present) (FORMATS 4.11)",
    },
];

/// `quant_algo` strings that ModelOpt writes but whose tensor layout is not settled
/// (FORMATS §9); refused with the reason instead of being loaded wrongly.
pub static KNOWN_UNSUPPORTED: &[(&str, &str)] = &[
    ("FP8_PB_REAL", "the layout of its weight_scale is unconfirmed (FORMATS 4.3)"),
    ("NVFP4_SVD", "the names of its low-rank LoRA tensors are unconfirmed (FORMATS 4.6)"),
];

/// The config-level mode where every layer names its own `quant_algo`.
pub const MIXED_PRECISION: &str = "MIXED_PRECISION";

/// Outcome of looking up a `quant_algo` string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlgoLookup {
    Format(&'static FormatSpec),
    Mixed,
    Unsupported(&'static str),
    Unknown,
}

/// Case-insensitive lookup (ModelOpt writes some algos lower-case, FORMATS §1.3).
pub fn lookup(quant_algo: &str) -> AlgoLookup {
    let up = quant_algo.trim().to_ascii_uppercase();
    if up == MIXED_PRECISION {
        return AlgoLookup::Mixed;
    }
    if let Some(spec) = FORMATS.iter().find(|f| f.name == up) {
        return AlgoLookup::Format(spec);
    }
    if let Some((_, why)) = KNOWN_UNSUPPORTED.iter().find(|(n, _)| *n == up) {
        return AlgoLookup::Unsupported(why);
    }
    AlgoLookup::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_row_has_a_weight() {
        let mut names: Vec<_> = FORMATS.iter().map(|f| f.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), FORMATS.len());
        for f in FORMATS {
            assert!(f.rule(Role::Weight).is_some(), "{} has no weight rule", f.name);
        }
    }

    #[test]
    fn lookup_is_case_insensitive() {
        assert!(matches!(lookup("fp8_pb_wo"), AlgoLookup::Format(f) if f.name == "FP8_PB_WO"));
        assert!(matches!(lookup("mxfp4"), AlgoLookup::Format(f) if f.name == "MXFP4"));
        assert_eq!(lookup("mixed_precision"), AlgoLookup::Mixed);
        assert!(matches!(lookup("fp8_pb_real"), AlgoLookup::Unsupported(_)));
        assert_eq!(lookup("INT4_AWQ"), AlgoLookup::Unknown);
    }
}
