//! Fuzzes a whole one-shard checkpoint. Input: a little-endian u16 `L`, then `L` bytes of
//! `hf_quant_config.json`, then the bytes of `model.safetensors` (seeds: `make_seeds.py`).
//! Accepted checkpoints are dequantized module by module and loaded through the plan, opened
//! with scale validation and again without it (the `validate_scales=False` opt-out): any panic,
//! overflow, out-of-bounds read or error there is a finding, except the clean `Format` error of
//! a poisoned block / channel scale with validation on (those are checked as their bytes pass
//! through, not at open; the first 300 s run of this target after validation came in stopped on
//! a negative W8A8 `pre_quant_scale` for that reason). Set TMPDIR=/dev/shm: on a disk file
//! system the writes make it ~10x slower.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use motensor_core::dequant::{dequantize_into, OutDType};
use motensor_core::plan::{batches, build_plan};
use motensor_core::{fill, Checkpoint, ErrorKind, OpenOptions};

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
    // Opened as users open it (scale validation on), then as the `validate_scales=False`
    // opt-out opens it: whatever the first accepts the second accepts too, and the opt-out
    // must then dequantize and fill everything without an error.
    let refused = |e: &motensor_core::Error| {
        assert!(e.kind() != ErrorKind::Argument, "{e}");
        assert!(e.file().is_some(), "{e}");
    };
    let validated = Checkpoint::open(dir);
    if let Ok(ck) = &validated {
        exercise(ck, st.len(), true);
    }
    match Checkpoint::open_with(dir, OpenOptions { validate_scales: false }) {
        Ok(ck) => exercise(&ck, st.len(), false),
        Err(e) => {
            refused(&e);
            assert!(validated.is_err(), "accepted with scale validation, refused without: {e}");
        }
    }
    if let Err(e) = &validated {
        refused(e);
    }
});

/// Dequantizes every module and fills the whole load plan, in one go and in small batches.
/// With scale validation on, a poisoned block / channel scale (checked only as its bytes pass
/// through, not at open) is a clean `Format` error naming the file; any other error is a
/// finding, and without validation every error is.
fn exercise(ck: &Checkpoint, file_len: usize, validating: bool) {
    let found = |what: &str, e: motensor_core::Error| {
        let poisoned = e.kind() == ErrorKind::Format && e.to_string().contains("a scale must be");
        if validating && poisoned {
            assert!(e.file().is_some(), "{e}");
            return;
        }
        panic!("{what} failed on an accepted checkpoint (validate_scales={validating}): {e}")
    };
    for m in &ck.modules {
        let Some(bytes) = m.numel().checked_mul(4) else {
            panic!("{}: numel overflows", m.name);
        };
        assert!(bytes <= 1 << 30, "{}: {bytes} bytes from a {file_len}-byte file", m.name);
        let mut out = vec![0u8; bytes as usize];
        if let Err(e) = dequantize_into(ck, m, &mut out, OutDType::F32) {
            found("dequantize", e);
        }
    }
    let (items, total) = match build_plan(ck, None) {
        Ok(p) => p,
        Err(e) => panic!("build_plan failed on an accepted checkpoint: {e}"),
    };
    assert!(total <= 1 << 30, "plan of {total} bytes from a {file_len}-byte file");
    let mut arena = vec![0u8; total as usize];
    if let Err(e) = fill::fill_all(ck, &items, &mut arena) {
        found("fill", e);
    }
    if let Ok(bs) = batches(&items, 4096) {
        let mut buf = vec![0u8; 4096];
        for b in &bs {
            if let Err(e) = fill::fill(ck, &items, &b.pieces, &mut buf) {
                found("fill batch", e);
            }
        }
    }
}
