//! One safetensors file: validated header plus a read-only memory map of the data.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use memmap2::{Advice, Mmap};

use crate::error::{Error, Result};
use crate::header::{parse_header, parse_prefix, Header, TensorInfo};

/// An opened, validated safetensors file.
#[derive(Debug)]
pub struct Shard {
    pub path: PathBuf,
    pub header: Header,
    file: File,
    mmap: Mmap,
    index: HashMap<String, usize>,
}

impl Shard {
    /// Opens `path`, validates its header against the file size and maps it.
    pub fn open(path: &Path) -> Result<Shard> {
        let mut file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
        let file_len = file
            .metadata()
            .map_err(|e| Error::io(path, "stat", e))?
            .len();

        let mut prefix = [0u8; 8];
        let got = read_up_to(&mut file, &mut prefix).map_err(|e| Error::io(path, "read", e))?;
        let n = parse_prefix(path, &prefix[..got], file_len)?;
        // n is bounded by MAX_HEADER_LEN and by the file size, so this allocation is safe.
        let mut json = vec![0u8; n as usize];
        file.seek(SeekFrom::Start(8))
            .and_then(|_| file.read_exact(&mut json))
            .map_err(|e| Error::io(path, "read header", e))?;
        let header = parse_header(path, &json, file_len)?;

        // SAFETY: the map is read-only and private to this process. The one hazard of a file
        // mapping is the file changing underneath it: a file truncated after this point would
        // raise SIGBUS on access to the lost pages. Every access goes through `data()`, which
        // first re-reads the file size and refuses spans that are no longer backed, so a
        // truncation between open and load is reported as `Error::Truncated` instead.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, "mmap", e))?;

        let index = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Shard {
            path: path.to_path_buf(),
            header,
            file,
            mmap,
            index,
        })
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.header.tensors[i])
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    /// Absolute byte range of a tensor in the file.
    pub fn file_range(&self, t: &TensorInfo) -> (u64, u64) {
        (self.header.data_start + t.begin, self.header.data_start + t.end)
    }

    /// Fails with `Error::Truncated` if the file no longer holds all bytes of `t`.
    pub fn check_backed(&self, t: &TensorInfo) -> Result<()> {
        let now = self
            .file
            .metadata()
            .map_err(|e| Error::io(&self.path, "stat", e))?
            .len();
        let needed = self.header.data_start + t.end;
        if now < needed || (self.mmap.len() as u64) < needed {
            return Err(Error::Truncated {
                file: self.path.clone(),
                tensor: t.name.clone(),
                needed,
                actual: now,
            });
        }
        Ok(())
    }

    /// The bytes of `t`, after checking that the file still backs them.
    pub fn data(&self, t: &TensorInfo) -> Result<&[u8]> {
        self.check_backed(t)?;
        let (b, e) = self.file_range(t);
        // Both bounds were checked against the mapping length in check_backed.
        Ok(&self.mmap[b as usize..e as usize])
    }

    /// Page-cache hint for a tensor about to be read (ignored where unsupported).
    pub fn will_need(&self, t: &TensorInfo) {
        let (b, e) = self.file_range(t);
        if e > b {
            let _ = self
                .mmap
                .advise_range(Advice::WillNeed, b as usize, (e - b) as usize);
        }
    }

    /// Hint that the mapping will be read front to back.
    pub fn advise_sequential(&self) {
        let _ = self.mmap.advise(Advice::Sequential);
    }
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..])? {
            0 => break,
            k => got += k,
        }
    }
    Ok(got)
}
