//! Fuzzes the safetensors header parser. Byte 0 picks the mode: odd = the input is a whole
//! file (prefix included); even = the rest is a JSON header body placed behind a correct
//! prefix, followed by `byte0 / 2` data bytes, so the fuzzer spends its time inside the JSON.
//! Any accepted header must satisfy the invariants the loader relies on.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use motensor_core::header::{parse_header, parse_prefix, Header};
use motensor_core::ErrorKind;

fn check(h: &Header, file_len: u64) {
    assert_eq!(h.data_start + h.data_len, file_len);
    let mut pos = 0u64;
    for t in &h.tensors {
        assert_eq!(t.begin, pos, "{t:?}");
        assert!(t.end <= h.data_len);
        assert_eq!(t.numel() * t.dtype.size() as u64, t.end - t.begin);
        pos = t.end;
    }
    assert_eq!(pos, h.data_len);
}

fuzz_target!(|data: &[u8]| {
    let p = Path::new("fuzz.safetensors");
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file: Vec<u8> = if mode & 1 == 1 {
        rest.to_vec()
    } else {
        let mut f = (rest.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(rest);
        f.extend(std::iter::repeat_n(0u8, (mode / 2) as usize));
        f
    };
    let len = file.len() as u64;
    let r = parse_prefix(p, &file[..file.len().min(8)], len)
        .and_then(|n| parse_header(p, &file[8..8 + n as usize], len));
    match r {
        Ok(h) => check(&h, len),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Header);
            assert_eq!(e.file(), Some(p));
        }
    }
});
