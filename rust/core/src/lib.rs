//! motensor-core: the pure-Rust core of motensor.
//!
//! Data flow, in module order: files ([`shard`], [`header`]) -> checkpoint discovery and
//! metadata ([`checkpoint`], [`quant_config`], [`exclude`]) -> the format table ([`formats`])
//! and per-module view ([`modules`]) -> CPU dequantization ([`dequant`]) and the load plan with
//! re-layout into caller-provided (pinned) memory ([`plan`], [`fill`]).
//!
//! Nothing here knows about Python or CUDA; the binding crate adds both.

pub mod checkpoint;
pub mod cpu_gemm;
pub mod dequant;
pub mod dtype;
pub mod error;
pub mod exclude;
pub mod fill;
pub mod formats;
pub mod header;
pub mod modules;
pub mod names;
pub mod numeric;
pub mod omp;
pub mod plan;
pub mod pool;
pub mod quant_config;
pub mod scales;
pub mod shard;

pub use checkpoint::{Checkpoint, OpenOptions};
pub use error::{Error, ErrorKind, Result};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
