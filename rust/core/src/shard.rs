//! One safetensors file: validated header plus positioned reads (`pread`) of its data.
//!
//! Why `pread` and not a memory map: a mapped file that another process truncates while it is
//! read kills the reader with SIGBUS, and no size check before the copy closes that window.
//! A `pread` of bytes that are gone returns short, which is reported as `Error::Truncated`
//! naming file and tensor. Reads go straight into the caller's memory (the CPU arena or a
//! pinned staging buffer), so each byte is copied once, out of the page cache, and no mapping
//! outlives the call: a CPU load's resident memory is the arena, not arena + mapped files.
//! On the 2-core CI box a `pread` out of the page cache costs what the first touch of a fresh
//! mapping costs (benches/README.md has the figures).

use std::fs::File;
use std::io::ErrorKind as IoKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::header::{parse_header, parse_prefix, Header, TensorInfo};
use crate::names::hash_str;

/// An opened, validated safetensors file.
#[derive(Debug)]
pub struct Shard {
    pub path: PathBuf,
    pub header: Header,
    /// [`crate::names::hash_str`] of each tensor's name, in header order (computed here, on
    /// the thread that parses the header, for the checkpoint's name index).
    pub(crate) name_hashes: Vec<u64>,
    file: File,
}

impl Shard {
    /// Opens `path` and validates its header against the file size. Only the 8-byte prefix and
    /// the header (at most `MAX_HEADER_LEN` bytes) are read.
    pub fn open(path: &Path) -> Result<Shard> {
        let file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
        let meta = file.metadata().map_err(|e| Error::io(path, "stat", e))?;
        if meta.is_dir() {
            return Err(Error::header(path, "is a directory, not a safetensors file"));
        }
        let file_len = meta.len();

        let mut prefix = [0u8; 8];
        let got = read_up_to(&file, &mut prefix, 0).map_err(|e| Error::io(path, "read", e))?;
        let n = parse_prefix(path, &prefix[..got], file_len).map_err(|e| explain_not_safetensors(path, &prefix[..got], e))?;
        // n is bounded by MAX_HEADER_LEN and by the file size, so this allocation is bounded.
        let mut json = vec![0u8; n as usize];
        file.read_exact_at(&mut json, 8)
            .map_err(|e| Error::io(path, "read header", e))?;
        let header = parse_header(path, &json, file_len)?;
        let name_hashes = header.tensors.iter().map(|t| hash_str(&t.name)).collect();
        Ok(Shard {
            path: path.to_path_buf(),
            header,
            name_hashes,
            file,
        })
    }

    /// The entry of tensor `name` (a linear scan: checkpoints look names up in their own
    /// index, `Checkpoint::locate`; this is for one-off use).
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.header.tensors.iter().find(|t| t.name == name)
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    /// Absolute byte range of a tensor in the file.
    pub fn file_range(&self, t: &TensorInfo) -> (u64, u64) {
        (self.header.data_start + t.begin, self.header.data_start + t.end)
    }

    fn current_len(&self) -> Result<u64> {
        Ok(self
            .file
            .metadata()
            .map_err(|e| Error::io(&self.path, "stat", e))?
            .len())
    }

    /// Fails with `Error::Truncated` if the file no longer holds all bytes of `t` (a cheap
    /// early answer; [`Shard::read_into`] detects a truncation during the read itself).
    pub fn check_backed(&self, t: &TensorInfo) -> Result<()> {
        let now = self.current_len()?;
        let needed = self.header.data_start + t.end;
        if now < needed {
            return Err(self.truncated(t, needed, now));
        }
        Ok(())
    }

    fn truncated(&self, t: &TensorInfo, needed: u64, actual: u64) -> Error {
        Error::Truncated {
            file: self.path.clone(),
            tensor: t.name.clone(),
            needed,
            actual,
        }
    }

    /// Reads bytes `[at, at + dst.len())` of tensor `t` into `dst`. A file that no longer holds
    /// them (truncated before or during the read) is `Error::Truncated`; any other failure of
    /// the read an I/O error naming the file.
    pub fn read_into(&self, t: &TensorInfo, at: u64, dst: &mut [u8]) -> Result<()> {
        let len = dst.len() as u64;
        if at.checked_add(len).is_none_or(|end| end > t.nbytes()) {
            return Err(Error::argument(format!(
                "read of bytes [{at}, {at}+{len}) of '{}' ({} bytes)",
                t.name,
                t.nbytes()
            )));
        }
        if dst.is_empty() {
            return Ok(());
        }
        let pos = self.header.data_start + t.begin + at;
        match self.file.read_exact_at(dst, pos) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == IoKind::UnexpectedEof => {
                let actual = self.current_len().unwrap_or(0);
                Err(self.truncated(t, pos + len, actual))
            }
            Err(e) => Err(Error::io(&self.path, "read", e)),
        }
    }

    /// Reads bytes `[begin, begin + dst.len())` of the data region (any tensors') into `dst`;
    /// a short read (a file truncated since it was opened) is an error.
    pub fn read_data(&self, begin: u64, dst: &mut [u8]) -> std::io::Result<()> {
        let pos = self
            .header
            .data_start
            .checked_add(begin)
            .ok_or_else(|| std::io::Error::new(IoKind::InvalidInput, "offset overflows"))?;
        self.file.read_exact_at(dst, pos)
    }

    /// The bytes of `t`, read into a new buffer (its size was checked against the file at open).
    pub fn data(&self, t: &TensorInfo) -> Result<Vec<u8>> {
        self.check_backed(t)?;
        let mut out = vec![0u8; t.nbytes() as usize];
        self.read_into(t, 0, &mut out)?;
        Ok(out)
    }

    /// Page-cache hint for a tensor about to be read (ignored where unsupported).
    pub fn will_need(&self, t: &TensorInfo) {
        let (b, e) = self.file_range(t);
        if e > b {
            advise_will_need(&self.file, b, e - b);
        }
    }
}

#[cfg(target_os = "linux")]
fn advise_will_need(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return;
    };
    // SAFETY: posix_fadvise takes a file descriptor and three integers and touches no memory of
    // ours; the descriptor is valid for as long as `file` is borrowed. Its result is a hint
    // that may be ignored, so errors are.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), off, len, libc::POSIX_FADV_WILLNEED);
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_will_need(_file: &File, _offset: u64, _len: u64) {}

/// A length prefix that makes no sense, on a file that starts like text, is most likely a JSON
/// file passed by mistake (`motensor.open("ckpt/config.json")`): say so instead of reporting an
/// absurd header length.
fn explain_not_safetensors(path: &Path, prefix: &[u8], err: Error) -> Error {
    // Only called when the length prefix was refused: a real safetensors file may well start
    // with the byte '{' (a header length of 123 + 256 k).
    let first = prefix.iter().copied().find(|b| !b.is_ascii_whitespace());
    let is_json_name = path.extension().is_some_and(|x| x.eq_ignore_ascii_case("json"));
    if matches!(first, Some(b'{') | Some(b'[')) || is_json_name {
        return Error::header(
            path,
            format!(
                "not a safetensors file: it starts like JSON text ({:?}), not with a header length; open the checkpoint directory or a .safetensors file",
                String::from_utf8_lossy(prefix)
            ),
        );
    }
    err
}

fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == IoKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}
