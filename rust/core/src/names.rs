//! Name hashing and the checkpoint's tensor index.
//!
//! A checkpoint of 180k tensors looks names up a few times each while it is opened (index
//! cross-check, module grouping, scale validation) and again for the load plan. The standard
//! library's SipHash costs ~3x the rest of such a lookup on 50-80 byte names, and a map keyed
//! by owned `String`s costs one allocation per tensor (and its free). So: a fast non-keyed hash
//! (names come from files, but a collision only costs a probe: every hit compares the name),
//! computed once per tensor while the shard headers are parsed in parallel, and an open-
//! addressing table of tensor ids whose names stay where the headers keep them.

use std::hash::{BuildHasherDefault, Hasher};

const K1: u64 = 0x9E37_79B9_7F4A_7C15;
const K2: u64 = 0xD6E8_FEB8_6659_FD93;

#[inline(always)]
fn fold_mul(a: u64, b: u64) -> u64 {
    let r = (a as u128).wrapping_mul(b as u128);
    (r as u64) ^ ((r >> 64) as u64)
}

#[inline(always)]
fn mix_bytes(mut h: u64, bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = fold_mul(h ^ w, K1);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        h = fold_mul(h ^ u64::from_le_bytes(b), K1);
    }
    h
}

/// The hash of a name (a folded-multiply hash over 8-byte words, length mixed in).
#[inline]
pub fn hash_str(s: &str) -> u64 {
    fold_mul(mix_bytes(K2 ^ s.len() as u64, s.as_bytes()), K2)
}

/// A [`Hasher`] for the maps built while opening (keys are names): the same word mixing as
/// [`hash_str`].
#[derive(Default, Clone, Copy)]
pub struct FastHasher(u64);

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.0 = mix_bytes(self.0 ^ (bytes.len() as u64).wrapping_mul(K2), bytes);
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.0 = fold_mul(self.0 ^ i as u64, K1);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.0 = fold_mul(self.0 ^ i as u64, K1);
    }
    #[inline]
    fn finish(&self) -> u64 {
        fold_mul(self.0, K2)
    }
}

pub type FastBuild = BuildHasherDefault<FastHasher>;
pub type FastMap<K, V> = std::collections::HashMap<K, V, FastBuild>;
pub type FastSet<K> = std::collections::HashSet<K, FastBuild>;

/// An open-addressing table of ids `0..n` keyed by name, names kept by the caller (`name_of`).
/// Each slot holds the upper half of the name's hash and the id + 1 (0 = empty), so a probe
/// compares a name only when 32 hash bits agree.
#[derive(Debug, Default, Clone)]
pub struct NameIndex {
    slots: Vec<u64>,
    len: usize,
}

impl NameIndex {
    /// An empty table for up to `n` names (load factor <= 1/2).
    pub fn with_capacity(n: usize) -> NameIndex {
        let cap = (n.max(4) * 2).next_power_of_two();
        NameIndex { slots: vec![0; cap], len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline(always)]
    fn start(&self, hash: u64) -> usize {
        // The low bits pick the slot, the high bits are the tag.
        (hash as usize) & (self.slots.len() - 1)
    }

    /// Adds `id` (whose name hashes to `hash`); if the name is already there, returns the id
    /// holding it and adds nothing.
    pub fn insert<'a>(&mut self, hash: u64, id: usize, name_of: impl Fn(usize) -> &'a str) -> std::result::Result<(), usize> {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow(&name_of);
        }
        let tag = hash >> 32;
        let mask = self.slots.len() - 1;
        let mut i = self.start(hash);
        let name = name_of(id);
        loop {
            let s = self.slots[i];
            if s == 0 {
                self.slots[i] = (tag << 32) | (id as u64 + 1);
                self.len += 1;
                return Ok(());
            }
            if s >> 32 == tag {
                let other = (s & 0xFFFF_FFFF) as usize - 1;
                if name_of(other) == name {
                    return Err(other);
                }
            }
            i = (i + 1) & mask;
        }
    }

    fn grow<'a>(&mut self, name_of: &impl Fn(usize) -> &'a str) {
        let cap = (self.slots.len() * 2).max(8);
        let old = std::mem::replace(&mut self.slots, vec![0; cap]);
        let mask = self.slots.len() - 1;
        for s in old.into_iter().filter(|&s| s != 0) {
            let id = (s & 0xFFFF_FFFF) as usize - 1;
            let hash = hash_str(name_of(id));
            let mut i = self.start(hash);
            while self.slots[i] != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = s;
        }
    }

    /// The id of `name` (whose hash is `hash`).
    #[inline]
    pub fn get<'a>(&self, hash: u64, name: &str, name_of: impl Fn(usize) -> &'a str) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let tag = hash >> 32;
        let mask = self.slots.len() - 1;
        let mut i = self.start(hash);
        loop {
            let s = self.slots[i];
            if s == 0 {
                return None;
            }
            if s >> 32 == tag {
                let id = (s & 0xFFFF_FFFF) as usize - 1;
                if name_of(id) == name {
                    return Some(id);
                }
            }
            i = (i + 1) & mask;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_finds_every_name_and_refuses_duplicates() {
        let names: Vec<String> = (0..5000).map(|i| format!("model.layers.{}.mlp.experts.{}.w", i % 61, i)).collect();
        let of = |i: usize| names[i].as_str();
        let mut ix = NameIndex::with_capacity(10); // grows
        for (i, n) in names.iter().enumerate() {
            ix.insert(hash_str(n), i, of).unwrap();
        }
        assert_eq!(ix.len(), names.len());
        for (i, n) in names.iter().enumerate() {
            assert_eq!(ix.get(hash_str(n), n, of), Some(i));
        }
        assert_eq!(ix.get(hash_str("nope"), "nope", of), None);
        let mut dup = names.clone();
        dup.push(names[17].clone());
        let of2 = |i: usize| dup[i].as_str();
        let mut ix2 = NameIndex::with_capacity(dup.len());
        let errs: Vec<_> = (0..dup.len()).filter_map(|i| ix2.insert(hash_str(&dup[i]), i, of2).err().map(|p| (i, p))).collect();
        assert_eq!(errs, [(5000, 17)]);
        // Hashes of different lengths / tails differ.
        assert_ne!(hash_str("a"), hash_str("a\0"));
        assert_ne!(hash_str(""), hash_str("\0"));
    }
}
