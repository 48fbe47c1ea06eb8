//! Fuzzes a whole one-shard checkpoint. Input: a little-endian u16 `L`, then `L` bytes of
//! `hf_quant_config.json`, then the bytes of `model.safetensors` (seeds: `make_seeds.py`).
//! Accepted checkpoints are dequantized module by module and loaded through the plan: any
//! panic, overflow, out-of-bounds read or error there is a finding. Set TMPDIR=/dev/shm: on a
//! disk file system the writes make it ~10x slower.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use motensor_core::dequant::{dequantize_into, OutDType};
use motensor_core::plan::{batches, build_plan};
use motensor_core::{fill, Checkpoint, ErrorKind};

fn scratch() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("motensor-fuzz-ckpt-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir_all(&d) {
            panic!("cannot create the scratch directory {}: {e}", d.display());
        }
        d
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let l = u16::from_le_bytes([data[0], data[1]]) as usize;
    let rest = &data[2..];
    let (cfg, st) = rest.split_at(l.min(rest.len()));
    let dir = scratch();
    for (name, bytes) in [("hf_quant_config.json", cfg), ("model.safetensors", st)] {
        if let Err(e) = std::fs::write(dir.join(name), bytes) {
            panic!("cannot write the scratch file {name}: {e}");
        }
    }
    let ck = match Checkpoint::open(dir) {
        Ok(ck) => ck,
        Err(e) => {
            assert!(e.kind() != ErrorKind::Argument, "{e}");
            assert!(e.file().is_some(), "{e}");
            return;
        }
    };
    // Everything below must succeed on an accepted checkpoint: an Err is a finding too.
    let found = |what: &str, e: motensor_core::Error| -> ! {
        panic!("{what} failed on an accepted checkpoint: {e}")
    };
    for m in &ck.modules {
        let Some(bytes) = m.numel().checked_mul(4) else {
            panic!("{}: numel overflows", m.name);
        };
        assert!(
            bytes <= 1 << 30,
            "{}: {bytes} bytes from a {}-byte file",
            m.name,
            st.len()
        );
        let mut out = vec![0u8; bytes as usize];
        if let Err(e) = dequantize_into(&ck, m, &mut out, OutDType::F32) {
            found("dequantize", e);
        }
    }
    let (items, total) = build_plan(&ck, None).unwrap_or_else(|e| found("build_plan", e));
    assert!(
        total <= 1 << 30,
        "plan of {total} bytes from a {}-byte file",
        st.len()
    );
    let mut arena = vec![0u8; total as usize];
    if let Err(e) = fill::fill_all(&ck, &items, &mut arena) {
        found("fill", e);
    }
    if let Ok(bs) = batches(&items, 4096) {
        let mut buf = vec![0u8; 4096];
        for b in &bs {
            if let Err(e) = fill::fill(&ck, &items, &b.pieces, &mut buf) {
                found("fill batch", e);
            }
        }
    }
});
