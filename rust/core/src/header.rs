//! safetensors header parsing with full validation.
//!
//! Layout of a safetensors file: an 8-byte little-endian length `n`, `n` bytes of UTF-8 JSON,
//! then the data region. The JSON maps tensor names to `{dtype, shape, data_offsets}` (offsets
//! relative to the data region) plus an optional `__metadata__` string map.
//!
//! Everything here treats the file as hostile: lengths are checked before they are used, all
//! arithmetic is checked, duplicate keys are rejected (a JSON map with two entries of the same
//! name would otherwise silently keep the last), and spans must lie inside the data region
//! without overlapping.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::Path;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::names::FastSet;

/// Headers above this size are refused before any allocation (the safetensors crate uses the
/// same bound): a hostile length prefix must not make us allocate gigabytes.
pub const MAX_HEADER_LEN: u64 = 100 * 1024 * 1024;
/// No real tensor has more dimensions than this; a larger rank is a corrupt or hostile header.
pub const MAX_RANK: usize = 16;

/// One tensor entry of a validated header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    /// Byte range relative to the start of the data region.
    pub begin: u64,
    pub end: u64,
}

impl TensorInfo {
    pub fn nbytes(&self) -> u64 {
        self.end - self.begin
    }

    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// A validated header.
#[derive(Debug, Clone)]
pub struct Header {
    /// Offset of the data region from the start of the file (8 + JSON length).
    pub data_start: u64,
    /// Length of the data region as the file had it when the header was parsed.
    pub data_len: u64,
    /// Tensors in the order of their data offsets.
    pub tensors: Vec<TensorInfo>,
    pub metadata: BTreeMap<String, String>,
}

/// Reads the 8-byte length prefix and checks it against the file size.
pub fn parse_prefix(file: &Path, prefix: &[u8], file_len: u64) -> Result<u64> {
    if file_len < 8 || prefix.len() < 8 {
        return Err(Error::header(
            file,
            format!("file is {file_len} bytes, shorter than the 8-byte length prefix"),
        ));
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&prefix[..8]);
    let n = u64::from_le_bytes(len_bytes);
    if n > MAX_HEADER_LEN {
        return Err(Error::header(
            file,
            format!("header length {n} exceeds the {MAX_HEADER_LEN}-byte limit"),
        ));
    }
    if n > file_len - 8 {
        return Err(Error::header(
            file,
            format!(
                "header length {n} is larger than the {} bytes that follow the prefix (truncated file?)",
                file_len - 8
            ),
        ));
    }
    if n < 2 {
        return Err(Error::header(file, format!("header length {n} cannot hold a JSON object")));
    }
    Ok(n)
}

/// Parses and validates the JSON part of a header. `json` is exactly the `n` header bytes,
/// `file_len` the size of the whole file.
pub fn parse_header(file: &Path, json: &[u8], file_len: u64) -> Result<Header> {
    let n = json.len() as u64;
    let data_start = 8 + n;
    let data_len = file_len
        .checked_sub(data_start)
        .ok_or_else(|| Error::header(file, "header runs past the end of the file"))?;

    let text = std::str::from_utf8(json)
        .map_err(|e| Error::header(file, format!("header is not UTF-8: {e}")))?;
    if !text.trim_start().starts_with('{') {
        return Err(Error::header(file, "header is not a JSON object"));
    }
    let fast = scan_entries(text).map(Ok).unwrap_or_else(|| serde_json::from_str::<FastEntries>(text));
    let (mut tensors, metadata) = match fast {
        Ok(entries) => entries_fast(file, entries, data_len)?,
        // Anything the typed reading refuses (a wrong type, an escaped name, a missing field, a
        // malformed document) is read again as generic JSON, whose checks name the problem.
        Err(_) => entries_slow(file, text, data_len)?,
    };

    tensors.sort_by_key(|t| (t.begin, t.end));
    // The tensors must tile the data region exactly, front to back, as the reference
    // safetensors reader requires (`InvalidOffset`, `MetadataIncompleteBuffer`). Besides
    // overlaps, this refuses gaps and trailing bytes: a length prefix shortened into the
    // header's space padding still parses as JSON, but moves the data region so that every
    // tensor would be read shifted by a few bytes (silently wrong numbers).
    let mut pos = 0u64;
    let mut prev: Option<&TensorInfo> = None;
    for t in &tensors {
        if t.begin < pos {
            let p = prev.map(|p| format!("tensor '{}' at [{}, {})", p.name, p.begin, p.end));
            return Err(Error::tensor_err(
                file,
                &t.name,
                format!(
                    "data_offsets [{}, {}) overlap {}",
                    t.begin,
                    t.end,
                    p.unwrap_or_else(|| "another tensor".into())
                ),
            ));
        }
        if t.begin > pos {
            return Err(Error::tensor_err(
                file,
                &t.name,
                format!(
                    "data_offsets [{}, {}) leave bytes [{pos}, {}) of the data region that belong to no tensor",
                    t.begin, t.end, t.begin
                ),
            ));
        }
        pos = t.end;
        prev = Some(t);
    }
    if pos != data_len {
        return Err(Error::header(
            file,
            format!(
                "bytes [{pos}, {data_len}) at the end of the data region belong to no tensor (wrong length prefix or extra data?)"
            ),
        ));
    }

    Ok(Header {
        data_start,
        data_len,
        tensors,
        metadata,
    })
}

type Parsed = (Vec<TensorInfo>, BTreeMap<String, String>);

/// The header read through typed entries (no generic JSON tree: a few allocations per tensor);
/// every check of [`entries_slow`] is applied, in the same order.
fn entries_fast(file: &Path, entries: FastEntries<'_>, data_len: u64) -> Result<Parsed> {
    let mut seen = FastSet::with_capacity_and_hasher(entries.0.len(), Default::default());
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(entries.0.len());
    for (name, value) in entries.0 {
        if !seen.insert(name) {
            return Err(Error::tensor_err(file, name, "appears twice in the header"));
        }
        match value {
            FastValue::Meta(v) => metadata = parse_metadata(file, v)?,
            FastValue::Tensor(e) => {
                tensors.push(check_entry(file, name, e.dtype, e.shape, e.data_offsets, data_len)?)
            }
        }
    }
    Ok((tensors, metadata))
}

/// The header read as generic JSON, every field checked by hand (exact error messages).
fn entries_slow(file: &Path, text: &str, data_len: u64) -> Result<Parsed> {
    let entries: Entries = serde_json::from_str(text)
        .map_err(|e| Error::header(file, format!("header is not valid JSON: {e}")))?;
    let mut seen = HashSet::with_capacity(entries.0.len());
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(entries.0.len());
    for (name, value) in entries.0 {
        if !seen.insert(name.clone()) {
            return Err(Error::tensor_err(file, &name, "appears twice in the header"));
        }
        if name == "__metadata__" {
            metadata = parse_metadata(file, value)?;
            continue;
        }
        tensors.push(parse_entry(file, &name, value, data_len)?);
    }
    Ok((tensors, metadata))
}

/// A tensor entry as the typed reading sees it; unknown fields are ignored (as by
/// [`parse_entry`]).
#[derive(serde::Deserialize)]
struct FastEntry<'a> {
    dtype: &'a str,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

enum FastValue<'a> {
    Meta(Value),
    Tensor(FastEntry<'a>),
}

/// The header's top-level object as an ordered list (duplicates are checked afterwards), names
/// borrowed from the text.
struct FastEntries<'a>(Vec<(&'a str, FastValue<'a>)>);

impl<'de> Deserialize<'de> for FastEntries<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FastEntries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object of tensor entries")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<FastEntries<'de>, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(k) = map.next_key::<&'de str>()? {
                    let v = if k == "__metadata__" {
                        FastValue::Meta(map.next_value()?)
                    } else {
                        FastValue::Tensor(map.next_value()?)
                    };
                    out.push((k, v));
                }
                Ok(FastEntries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The index document's `weight_map` read by the scanner (names and files borrowed), when the
/// document is in the form it knows: a top-level object with one `weight_map` object of plain
/// strings, every other member a value [`Scan::skip_value`] knows. `None` otherwise (serde
/// reads it then).
pub(crate) fn scan_weight_map(text: &str) -> Option<Vec<(&str, &str)>> {
    let mut s = Scan { s: text, b: text.as_bytes(), i: 0 };
    s.eat(b'{')?;
    let mut map = None;
    if s.peek()? == b'}' {
        return None;
    }
    loop {
        let k = s.string()?;
        s.eat(b':')?;
        if k == "weight_map" {
            if map.is_some() {
                return None;
            }
            s.eat(b'{')?;
            let mut out = Vec::with_capacity(text.len() / 64 + 1);
            if s.peek()? == b'}' {
                s.i += 1;
            } else {
                loop {
                    let t = s.string()?;
                    s.eat(b':')?;
                    out.push((t, s.string()?));
                    if !s.next_or_end(b'}')? {
                        break;
                    }
                }
            }
            map = Some(out);
        } else {
            s.skip_value(0)?;
        }
        if !s.next_or_end(b'}')? {
            break;
        }
    }
    s.ws();
    if s.i != s.b.len() {
        return None;
    }
    map
}

/// The header's common form read by a scanner (about twice serde's speed on 3k-tensor
/// headers): string keys and values without escapes, entries of exactly `dtype`, `shape` and
/// `data_offsets` (plain non-negative integers), `__metadata__` an object of such strings.
/// Anything else, and anything that is not JSON, gives `None` and goes to serde, whose reading
/// (and error) stands; what the scanner accepts, serde reads the same way.
fn scan_entries(text: &str) -> Option<FastEntries<'_>> {
    let mut s = Scan { s: text, b: text.as_bytes(), i: 0 };
    s.eat(b'{')?;
    let mut out = Vec::with_capacity(text.len() / 96 + 1);
    if s.peek()? == b'}' {
        s.i += 1;
    } else {
        loop {
            let k = s.string()?;
            s.eat(b':')?;
            let v = if k == "__metadata__" { FastValue::Meta(s.string_map()?) } else { FastValue::Tensor(s.entry()?) };
            out.push((k, v));
            if !s.next_or_end(b'}')? {
                break;
            }
        }
    }
    s.ws();
    (s.i == s.b.len()).then_some(FastEntries(out))
}

/// The first `"`, `\\` or control character of `b` (where a plain JSON string ends), eight
/// bytes at a time: per word, the classic "has a zero byte" and "has a byte below n" tests,
/// whose lowest flagged byte is always a true match (borrows only run upwards).
#[inline]
fn find_special(b: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut at = 0;
    while at + 8 <= b.len() {
        let w = u64::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3], b[at + 4], b[at + 5], b[at + 6], b[at + 7]]);
        let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
        let hit = zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\'))) | (w.wrapping_sub(ONES * 0x20) & !w & HIGH);
        if hit != 0 {
            return Some(at + (hit.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    b[at..].iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20).map(|i| at + i)
}

pub(crate) struct Scan<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    #[inline]
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    #[inline]
    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// After a member or element: `Some(true)` on `,`, `Some(false)` on `close`.
    #[inline]
    fn next_or_end(&mut self, close: u8) -> Option<bool> {
        let c = self.peek()?;
        self.i += 1;
        match c {
            b',' => Some(true),
            c if c == close => Some(false),
            _ => None,
        }
    }

    /// A string without escapes or control characters.
    #[inline]
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        let len = find_special(&self.b[start..])?;
        if self.b[start + len] != b'"' {
            return None;
        }
        self.i = start + len + 1;
        // Quotes are ASCII, so both ends are character boundaries of the (UTF-8) text.
        self.s.get(start..start + len)
    }

    /// A JSON integer in `u64` (no sign, fraction, exponent or leading zero).
    #[inline]
    fn uint(&mut self) -> Option<u64> {
        self.ws();
        let start = self.i;
        let mut v = 0u64;
        while let Some(&c) = self.b.get(self.i) {
            if !c.is_ascii_digit() {
                break;
            }
            v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            self.i += 1;
        }
        let n = self.i - start;
        if n == 0 || (n > 1 && self.b[start] == b'0') || matches!(self.b.get(self.i), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        Some(v)
    }

    fn uints(&mut self, out: &mut Vec<u64>) -> Option<()> {
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.i += 1;
            return Some(());
        }
        loop {
            out.push(self.uint()?);
            if out.len() > MAX_RANK + 1 {
                return None; // (serde reads it; the rank check names it)
            }
            if !self.next_or_end(b']')? {
                return Some(());
            }
        }
    }

    fn entry(&mut self) -> Option<FastEntry<'a>> {
        self.eat(b'{')?;
        let (mut dtype, mut shape, mut offsets) = (None, None, None);
        loop {
            let k = self.string()?;
            self.eat(b':')?;
            match k {
                "dtype" if dtype.is_none() => dtype = Some(self.string()?),
                "shape" if shape.is_none() => {
                    let mut v = Vec::with_capacity(4);
                    self.uints(&mut v)?;
                    shape = Some(v);
                }
                "data_offsets" if offsets.is_none() => {
                    self.eat(b'[')?;
                    let b = self.uint()?;
                    self.eat(b',')?;
                    let e = self.uint()?;
                    self.eat(b']')?;
                    offsets = Some((b, e));
                }
                _ => return None,
            }
            if !self.next_or_end(b'}')? {
                break;
            }
        }
        Some(FastEntry { dtype: dtype?, shape: shape?, data_offsets: offsets? })
    }

    /// Skips one JSON value of a form this scanner knows (plain strings, integers and the
    /// other JSON numbers, literals, and arrays / objects of these, nested at most 16 deep).
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        if depth > 16 {
            return None;
        }
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' => {
                self.i += 1;
                if self.peek()? == b'}' {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.string()?;
                    self.eat(b':')?;
                    self.skip_value(depth + 1)?;
                    if !self.next_or_end(b'}')? {
                        return Some(());
                    }
                }
            }
            b'[' => {
                self.i += 1;
                if self.peek()? == b']' {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.skip_value(depth + 1)?;
                    if !self.next_or_end(b']')? {
                        return Some(());
                    }
                }
            }
            b't' | b'f' | b'n' => {
                let rest = &self.b[self.i..];
                let n = [&b"true"[..], b"false", b"null"].into_iter().find(|l| rest.starts_with(l))?.len();
                self.i += n;
                // A literal ends where a token may follow.
                match self.b.get(self.i) {
                    Some(c) if c.is_ascii_alphanumeric() => None,
                    _ => Some(()),
                }
            }
            _ => self.number(),
        }
    }

    /// A JSON number: `-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        let digits = |s: &mut Self| {
            let st = s.i;
            while s.b.get(s.i).is_some_and(u8::is_ascii_digit) {
                s.i += 1;
            }
            s.i - st
        };
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        let st = self.i;
        let n = digits(self);
        if n == 0 || (n > 1 && self.b[st] == b'0') {
            return None;
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if digits(self) == 0 {
                return None;
            }
        }
        if matches!(self.b.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.b.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if digits(self) == 0 {
                return None;
            }
        }
        match self.b.get(self.i) {
            Some(c) if c.is_ascii_alphanumeric() || *c == b'.' => None,
            _ => Some(()),
        }
    }

    fn string_map(&mut self) -> Option<Value> {
        self.eat(b'{')?;
        let mut map = serde_json::Map::new();
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(Value::Object(map));
        }
        loop {
            let k = self.string()?;
            self.eat(b':')?;
            let v = self.string()?;
            // (A key given twice keeps the last value, as serde_json's reading does.)
            map.insert(k.to_string(), Value::String(v.to_string()));
            if !self.next_or_end(b'}')? {
                return Some(Value::Object(map));
            }
        }
    }
}

fn parse_metadata(file: &Path, value: Value) -> Result<BTreeMap<String, String>> {
    let Value::Object(map) = value else {
        return Err(Error::header(file, "__metadata__ is not an object"));
    };
    let mut out = BTreeMap::new();
    for (k, v) in map {
        match v {
            Value::String(s) => {
                out.insert(k, s);
            }
            other => {
                return Err(Error::header(
                    file,
                    format!("__metadata__ value of '{k}' is not a string: {other}"),
                ))
            }
        }
    }
    Ok(out)
}

fn parse_entry(file: &Path, name: &str, value: Value, data_len: u64) -> Result<TensorInfo> {
    let bad = |msg: String| Error::tensor_err(file, name, msg);
    if name.is_empty() {
        return Err(bad("empty tensor name".into()));
    }
    let Value::Object(obj) = value else {
        return Err(bad("entry is not an object".into()));
    };
    let dtype_str = obj
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("missing or non-string 'dtype'".into()))?;
    // (the dtype is checked first by check_entry, as it was read first here)
    DType::parse(dtype_str).ok_or_else(|| bad(format!("unknown dtype '{dtype_str}'")))?;

    let shape_v = obj
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("missing or non-array 'shape'".into()))?;
    if shape_v.len() > MAX_RANK {
        return Err(bad(format!("rank {} exceeds {MAX_RANK}", shape_v.len())));
    }
    let mut shape = Vec::with_capacity(shape_v.len());
    for d in shape_v {
        let d = d
            .as_u64()
            .ok_or_else(|| bad(format!("shape entry {d} is not a non-negative integer")))?;
        shape.push(d);
    }

    let offs = obj
        .get("data_offsets")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("missing or non-array 'data_offsets'".into()))?;
    if offs.len() != 2 {
        return Err(bad(format!("data_offsets has {} entries, expected 2", offs.len())));
    }
    let begin = offs[0]
        .as_u64()
        .ok_or_else(|| bad("data_offsets[0] is not a non-negative integer".into()))?;
    let end = offs[1]
        .as_u64()
        .ok_or_else(|| bad("data_offsets[1] is not a non-negative integer".into()))?;
    check_entry(file, name, dtype_str, shape, (begin, end), data_len)
}

/// The checks of one tensor entry once its fields are read: dtype, rank, offsets against the
/// data region, sizes (overflow, representability, span = shape x dtype).
fn check_entry(file: &Path, name: &str, dtype_str: &str, shape: Vec<u64>, offsets: (u64, u64), data_len: u64) -> Result<TensorInfo> {
    let bad = |msg: String| Error::tensor_err(file, name, msg);
    if name.is_empty() {
        return Err(bad("empty tensor name".into()));
    }
    let dtype = DType::parse(dtype_str).ok_or_else(|| bad(format!("unknown dtype '{dtype_str}'")))?;
    if shape.len() > MAX_RANK {
        return Err(bad(format!("rank {} exceeds {MAX_RANK}", shape.len())));
    }
    let (begin, end) = offsets;
    if end < begin {
        return Err(bad(format!("data_offsets [{begin}, {end}) end before they begin")));
    }
    if end > data_len {
        return Err(bad(format!(
            "data_offsets [{begin}, {end}) run past the end of the data region ({data_len} bytes)"
        )));
    }

    let numel = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    let nbytes = numel
        .checked_mul(dtype.size() as u64)
        .ok_or_else(|| bad(format!("shape {shape:?} x {dtype} overflows")))?;
    // Zero-element shapes pass the overflow check whatever their other dims; refuse sizes no
    // int64-indexed tensor library (torch) can represent, so that an accepted header never
    // fails later outside motensor's errors.
    let nonzero = shape
        .iter()
        .filter(|&&d| d > 0)
        .try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d))
        .filter(|&b| b <= i64::MAX as u64);
    if nonzero.is_none() {
        return Err(bad(format!("shape {shape:?} of {dtype} is too large to represent")));
    }
    if nbytes != end - begin {
        return Err(bad(format!(
            "shape {shape:?} of {dtype} needs {nbytes} bytes but data_offsets [{begin}, {end}) span {}",
            end - begin
        )));
    }
    Ok(TensorInfo {
        name: name.to_string(),
        dtype,
        shape,
        begin,
        end,
    })
}

/// The header's top-level object as an ordered list, so that duplicate keys can be detected.
pub(crate) struct Entries(pub(crate) Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object of tensor entries")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("x.safetensors")
    }

    #[test]
    fn accepts_a_plain_header() {
        let json = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"format":"pt"}}"#;
        let h = parse_header(p(), json, 8 + json.len() as u64 + 8).unwrap();
        assert_eq!(h.tensors.len(), 1);
        assert_eq!(h.metadata["format"], "pt");
    }

    #[test]
    fn rejects_duplicates_overlaps_and_bad_spans() {
        let dup = br#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#;
        assert!(parse_header(p(), dup, 8 + dup.len() as u64 + 2).is_err());
        let ovl = br#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}"#;
        let e = parse_header(p(), ovl, 8 + ovl.len() as u64 + 3).unwrap_err();
        assert!(e.to_string().contains("overlap"), "{e}");
        let span = br#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
        assert!(parse_header(p(), span, 8 + span.len() as u64 + 8).is_err());
        let past = br#"{"a":{"dtype":"U8","shape":[9],"data_offsets":[0,9]}}"#;
        assert!(parse_header(p(), past, 8 + past.len() as u64 + 8).is_err());
    }

    #[test]
    fn typed_and_generic_readings_agree() {
        // Escaped names and unknown fields: the typed reading either agrees or hands over.
        let json = br#"{"b\u0041":{"dtype":"U8","shape":[2],"data_offsets":[0,2],"x":1},"a":{"dtype":"F32","shape":[],"data_offsets":[2,6]},"__metadata__":{"k":"v"}}"#;
        let text = std::str::from_utf8(json).unwrap();
        let h = parse_header(p(), json, 8 + json.len() as u64 + 6).unwrap();
        let names: Vec<&str> = h.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["bA", "a"]);
        let plain = br#"{"a":{"dtype":"F32","shape":[],"data_offsets":[2,6]},"c":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"__metadata__":{"k":"v"}}"#;
        let t = std::str::from_utf8(plain).unwrap();
        let fast = entries_fast(p(), serde_json::from_str::<FastEntries>(t).unwrap(), 6).unwrap();
        assert_eq!(fast, entries_slow(p(), t, 6).unwrap());
        assert_eq!(fast.1["k"], "v");
        // A wrong type is named by the generic reading.
        let bad = br#"{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}"#;
        let e = parse_header(p(), bad, 8 + bad.len() as u64 + 4).unwrap_err();
        assert!(e.to_string().contains("not a non-negative integer"), "{e}");
        assert!(serde_json::from_str::<FastEntries>(text).is_err()); // escaped name: handed over
    }

    /// The scanner reads what serde reads, and hands everything else over.
    #[test]
    fn scanner_agrees_with_serde_or_hands_over() {
        let read = |e: Option<FastEntries>| {
            e.map(|e| {
                e.0.into_iter()
                    .map(|(k, v)| match v {
                        FastValue::Meta(m) => (k.to_string(), format!("{m}")),
                        FastValue::Tensor(t) => (k.to_string(), format!("{} {:?} {:?}", t.dtype, t.shape, t.data_offsets)),
                    })
                    .collect::<Vec<_>>()
            })
        };
        let same = [
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"format":"pt","k":"v"}}"#,
            "{ \"a\" : { \"shape\" : [ ] ,\n\"data_offsets\":[0 ,4],\t\"dtype\":\"F32\"} }   ",
            r#"{"__metadata__":{},"b":{"dtype":"U8","shape":[1,2,3],"data_offsets":[18446744073709551615,0]}}"#,
            r#"{"__metadata__":{"k":"1","k":"2"}}"#,
            r#"{}"#,
            r#"{"é":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},"é":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}"#,
        ];
        for t in same {
            let scanned = read(scan_entries(t));
            assert!(scanned.is_some(), "{t}");
            assert_eq!(scanned, read(serde_json::from_str::<FastEntries>(t).ok()), "{t}");
        }
        let handed_over = [
            r#"{"a\u0041":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}}"#,
            r#"{"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}"#,
            r#"{"a":{"dtype":"F32","shape":[02],"data_offsets":[0,8]}}"#,
            r#"{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#,
            r#"{"a":{"dtype":"F32","shape":[1e2],"data_offsets":[0,8]}}"#,
            r#"{"a":{"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,8]}}"#,
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8,9]}}"#,
            r#"{"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            r#"{"a":{"dtype":"F32","shape":[2]}}"#,
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},}"#,
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}} x"#,
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}"#,
            r#"{"__metadata__":{"k":1}}"#,
            r#"{"__metadata__":null}"#,
            "{\"a\tb\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
            r#"[]"#,
        ];
        for t in handed_over {
            assert!(scan_entries(t).is_none(), "{t}");
        }
    }

    #[test]
    fn index_scanner_agrees_with_serde_or_hands_over() {
        let same = [
            r#"{"metadata":{"total_size":123,"x":[1,-2.5e3,0.5,1E+2,true,false,null,{"a":"b"},[]],"y":{}},"weight_map":{"a":"f1","b":"f2"}}"#,
            "{\n  \"weight_map\": {\n    \"a\": \"f1\"\n  }\n}\n",
            r#"{"weight_map":{}}"#,
        ];
        for t in same {
            let mut got = scan_weight_map(t).unwrap_or_else(|| panic!("{t}"));
            got.sort();
            let v: Value = serde_json::from_str(t).unwrap();
            let want: Vec<(&str, &str)> = v["weight_map"].as_object().unwrap().iter().map(|(k, v)| (k.as_str(), v.as_str().unwrap())).collect();
            assert_eq!(got, want, "{t}");
        }
        let handed_over = [
            r#"{"metadata":{},"weight_map":{"a\u0041":"f"}}"#,
            r#"{"weight_map":{"a":"f"},"weight_map":{"b":"f"}}"#,
            r#"{"weight_map":null}"#,
            r#"{"weight_map":{"a":1}}"#,
            r#"{"weight_map":{"a":"f"}} x"#,
            r#"{"metadata":{"n":01},"weight_map":{"a":"f"}}"#,
            r#"{"metadata":{"n":1.},"weight_map":{"a":"f"}}"#,
            r#"{"metadata":{"n":-},"weight_map":{"a":"f"}}"#,
            r#"{"metadata":{"n":tru},"weight_map":{"a":"f"}}"#,
            r#"{"metadata":{"n":truex},"weight_map":{"a":"f"}}"#,
            r#"{"metadata":{"n":NaN},"weight_map":{"a":"f"}}"#,
            r#"{"metadata":[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]],"weight_map":{"a":"f"}}"#,
            r#"{"metadata":{}}"#,
            r#"{}"#,
        ];
        for t in handed_over {
            assert!(scan_weight_map(t).is_none(), "{t}");
        }
    }

    #[test]
    fn string_ends_are_found_in_every_word_position() {
        for len in 0..40 {
            for special in [b'"', b'\\', 0x00, 0x1F] {
                for at in 0..len {
                    let mut b = vec![b'a'; len];
                    b[at] = special;
                    if at + 1 < len {
                        b[at + 1] = b'"';
                    }
                    assert_eq!(find_special(&b), Some(at), "{len} {special} {at}");
                }
                // High bytes (UTF-8) and 0x20 are not special.
                assert_eq!(find_special(&vec![0xC3u8; len]), None);
                assert_eq!(find_special(&vec![0x20u8; len]), None);
            }
        }
    }

    #[test]
    fn rejects_bad_prefixes() {
        assert!(parse_prefix(p(), &[0u8; 4], 4).is_err());
        assert!(parse_prefix(p(), &u64::MAX.to_le_bytes(), 100).is_err());
        assert!(parse_prefix(p(), &200u64.to_le_bytes(), 100).is_err());
        assert_eq!(parse_prefix(p(), &10u64.to_le_bytes(), 100).unwrap(), 10);
    }
}
