//! Fuzzes `Shard::open` through the file system (one scratch file per process), then reads
//! every tensor of an accepted shard. Set TMPDIR=/dev/shm: on a disk file system the writes
//! make it ~10x slower.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use motensor_core::shard::Shard;
use motensor_core::ErrorKind;

fn scratch() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        std::env::temp_dir().join(format!(
            "motensor-fuzz-shard-{}.safetensors",
            std::process::id()
        ))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = scratch();
    if let Err(e) = std::fs::write(path, data) {
        panic!("cannot write the scratch file {}: {e}", path.display());
    }
    match Shard::open(path) {
        Ok(s) => {
            for t in s.tensors() {
                match s.data(t) {
                    Ok(d) => assert_eq!(d.len() as u64, t.nbytes()),
                    Err(e) => panic!("accepted tensor '{}' is not readable: {e}", t.name),
                }
            }
        }
        Err(e) => {
            assert!(matches!(e.kind(), ErrorKind::Header | ErrorKind::Io), "{e}");
            assert_eq!(e.file(), Some(path.as_path()));
        }
    }
});
