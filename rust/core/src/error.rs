//! The one error type of motensor-core.
//!
//! Every variant names the file it came from and, where there is one, the tensor or module, so
//! that a user holding a broken checkpoint learns *where* it is broken. The Python binding maps
//! each [`ErrorKind`] onto a class of the `motensor.errors` hierarchy.

use std::path::{Path, PathBuf};

/// Coarse classification used by the bindings to pick an exception class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The operating system refused a read, open or map.
    Io,
    /// A safetensors header (length prefix, JSON, tensor entries) is invalid.
    Header,
    /// A shard is missing, disagrees with the index, or shrank after it was opened.
    Shard,
    /// `config.json` / `hf_quant_config.json` / the index JSON is unreadable or inconsistent.
    Config,
    /// A module's tensors do not match its quantization format (missing scale, wrong shape...).
    Format,
    /// A `quant_algo` string motensor does not know, or knows but cannot load.
    UnsupportedFormat,
    /// The caller passed something inconsistent (buffer too small, unknown module name...).
    Argument,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}: {op}: {source}")]
    Io {
        file: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("{file}: invalid safetensors header: {msg}")]
    Header { file: PathBuf, msg: String },

    #[error("{file}: tensor '{tensor}': {msg}")]
    Tensor {
        file: PathBuf,
        tensor: String,
        msg: String,
    },

    #[error("{file}: {msg}")]
    Shard { file: PathBuf, msg: String },

    #[error("{file}: tensor '{tensor}' needs bytes up to {needed} but the file now has {actual} (was it truncated after it was opened?)")]
    Truncated {
        file: PathBuf,
        tensor: String,
        needed: u64,
        actual: u64,
    },

    #[error("{file}: {msg}")]
    Config { file: PathBuf, msg: String },

    #[error("{file}: module '{module}' ({algo}): tensor '{tensor}': {msg}")]
    Format {
        file: PathBuf,
        module: String,
        algo: String,
        tensor: String,
        msg: String,
    },

    #[error("{file}: quant_algo '{algo}' is not supported: {msg}")]
    UnsupportedFormat {
        file: PathBuf,
        algo: String,
        msg: String,
    },

    #[error("{msg}")]
    Argument { msg: String },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { .. } => ErrorKind::Io,
            Error::Header { .. } | Error::Tensor { .. } => ErrorKind::Header,
            Error::Shard { .. } | Error::Truncated { .. } => ErrorKind::Shard,
            Error::Config { .. } => ErrorKind::Config,
            Error::Format { .. } => ErrorKind::Format,
            Error::UnsupportedFormat { .. } => ErrorKind::UnsupportedFormat,
            Error::Argument { .. } => ErrorKind::Argument,
        }
    }

    /// The file the error is about, if any.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Error::Io { file, .. }
            | Error::Header { file, .. }
            | Error::Tensor { file, .. }
            | Error::Shard { file, .. }
            | Error::Truncated { file, .. }
            | Error::Config { file, .. }
            | Error::Format { file, .. }
            | Error::UnsupportedFormat { file, .. } => Some(file),
            Error::Argument { .. } => None,
        }
    }

    /// The tensor the error is about, if any.
    pub fn tensor(&self) -> Option<&str> {
        match self {
            Error::Tensor { tensor, .. }
            | Error::Truncated { tensor, .. }
            | Error::Format { tensor, .. } => Some(tensor),
            _ => None,
        }
    }

    /// The module the error is about, if any.
    pub fn module(&self) -> Option<&str> {
        match self {
            Error::Format { module, .. } => Some(module),
            _ => None,
        }
    }

    pub(crate) fn io(file: &Path, op: &'static str, source: std::io::Error) -> Self {
        Error::Io {
            file: file.to_path_buf(),
            op,
            source,
        }
    }

    pub(crate) fn header(file: &Path, msg: impl Into<String>) -> Self {
        Error::Header {
            file: file.to_path_buf(),
            msg: msg.into(),
        }
    }

    pub(crate) fn tensor_err(file: &Path, tensor: &str, msg: impl Into<String>) -> Self {
        Error::Tensor {
            file: file.to_path_buf(),
            tensor: tensor.to_string(),
            msg: msg.into(),
        }
    }

    pub(crate) fn shard(file: &Path, msg: impl Into<String>) -> Self {
        Error::Shard {
            file: file.to_path_buf(),
            msg: msg.into(),
        }
    }

    pub(crate) fn config(file: &Path, msg: impl Into<String>) -> Self {
        Error::Config {
            file: file.to_path_buf(),
            msg: msg.into(),
        }
    }

    pub fn argument(msg: impl Into<String>) -> Self {
        Error::Argument { msg: msg.into() }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
