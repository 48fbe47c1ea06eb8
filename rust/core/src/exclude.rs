//! `exclude_modules` / `ignore` matching (FORMATS §1.4).
//!
//! vLLM accepts a module if a pattern (a) equals it, (b) is a substring of it (legacy
//! checkpoints, ModelOpt < 0.39), or (c) matches it as an `fnmatch` wildcard. Plain substring
//! matching is dangerous (`mlp.gate` is a substring of `mlp.gate_proj`), so the legacy rule here
//! only matches whole dotted components: the pattern must equal a run of complete components of
//! the name (`lm_head` matches `language_model.lm_head`; `model.layers.1` matches
//! `model.layers.1.mlp.down_proj` but not `model.layers.11...`). Wildcards are full fnmatch
//! (`*`, `?`, `[seq]`, `[!seq]`; `*` crosses dots, as in Python).

use crate::names::FastMap;

#[derive(Debug, Clone, Default)]
pub struct ExcludeList {
    patterns: Vec<String>,
    /// Plain (non-glob) patterns by their last dotted component: a name can only match one
    /// whose last component is one of its own (long per-layer lists stay cheap per module).
    plain_by_last: FastMap<String, Vec<usize>>,
    /// Bit `l` (l < 64) set when a key of `plain_by_last` is `l` bytes long, bit 63 for any
    /// longer: most components of a name are ruled out without hashing them.
    last_lens: u64,
    /// The glob patterns.
    globs: Vec<usize>,
}

impl ExcludeList {
    pub fn new(patterns: Vec<String>) -> Self {
        let mut plain_by_last: FastMap<String, Vec<usize>> = FastMap::default();
        let mut globs = Vec::new();
        for (i, p) in patterns.iter().enumerate() {
            if is_glob(p) {
                globs.push(i);
            } else {
                let last = p.rsplit('.').next().unwrap_or(p);
                plain_by_last.entry(last.to_string()).or_default().push(i);
            }
        }
        let last_lens = plain_by_last.keys().fold(0u64, |m, k| m | len_bit(k.len()));
        ExcludeList { patterns, plain_by_last, last_lens, globs }
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Is module `name` excluded from quantization? (Same answer as `pattern_matches` with
    /// every pattern.)
    pub fn matches(&self, name: &str) -> bool {
        if self.globs.iter().any(|&i| pattern_matches(&self.patterns[i], name)) {
            return true;
        }
        if self.plain_by_last.is_empty() {
            return false;
        }
        name.split('.').any(|c| {
            self.last_lens & len_bit(c.len()) != 0
                && self.plain_by_last
                .get(c)
                .is_some_and(|ps| ps.iter().any(|&i| pattern_matches(&self.patterns[i], name)))
        })
    }
}

fn len_bit(len: usize) -> u64 {
    1 << len.min(63)
}

fn is_glob(p: &str) -> bool {
    p.contains(['*', '?', '['])
}

pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    if pattern == name {
        return true;
    }
    if is_glob(pattern) {
        return literal_ends_agree(pattern.as_bytes(), name.as_bytes())
            && fnmatch(pattern.as_bytes(), name.as_bytes());
    }
    component_run(pattern, name)
}

/// A cheap necessary condition for `fnmatch(p, s)`: the literal text before the pattern's first
/// special character (`*`, `?`, `[`, `]`) starts `s`, and the literal text after its last one
/// ends it (both are anchored: `fnmatchcase` matches the whole name). Rejects most names of a
/// long exclude list without running the matcher.
fn literal_ends_agree(p: &[u8], s: &[u8]) -> bool {
    let special = |c: &u8| matches!(c, b'*' | b'?' | b'[' | b']');
    let first = p.iter().position(special).unwrap_or(p.len());
    let last = p.iter().rposition(special).map_or(p.len(), |i| i + 1);
    let (head, tail) = (&p[..first], &p[last.max(first)..]);
    s.len() >= head.len() + tail.len() && s.starts_with(head) && s.ends_with(tail)
}

/// True if `pattern` equals a run of whole dot-separated components of `name`: it starts at a
/// component start (the name's start or just after a `.`) and ends at a component end.
fn component_run(pattern: &str, name: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), name.as_bytes());
    if p.is_empty() || p.len() > s.len() {
        return false;
    }
    // Byte comparisons only: '.' is ASCII, so a component start is never inside a multi-byte
    // UTF-8 character of a (hostile) non-ASCII name.
    let mut b = 0;
    loop {
        let e = b + p.len();
        if e > s.len() {
            return false;
        }
        // First and last bytes first: most candidates fail there, without a memcmp call.
        if s[b] == p[0] && s[e - 1] == p[p.len() - 1] && (e == s.len() || s[e] == b'.') && &s[b..e] == p {
            return true;
        }
        match s[b..].iter().position(|&c| c == b'.') {
            Some(i) => b += i + 1,
            None => return false,
        }
    }
}

/// Python `fnmatch.fnmatchcase` semantics, iterative with backtracking on the last `*`.
pub fn fnmatch(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    star = Some((pi, si));
                    pi += 1;
                    continue;
                }
                b'?' => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class_match(p, pi, s[si]) {
                        if matched {
                            pi = next;
                            si += 1;
                            continue;
                        }
                    } else if s[si] == b'[' {
                        // An unterminated '[' is a literal, as in Python.
                        pi += 1;
                        si += 1;
                        continue;
                    }
                }
                c if c == s[si] => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, ss)) => {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// Matches `c` against the class starting at `p[i] == '['`. Returns (matched, index after
/// the class), or None if the class is not terminated.
fn class_match(p: &[u8], i: usize, c: u8) -> Option<(bool, usize)> {
    let mut j = i + 1;
    let negate = j < p.len() && p[j] == b'!';
    if negate {
        j += 1;
    }
    let mut matched = false;
    let mut first = true;
    while j < p.len() {
        if p[j] == b']' && !first {
            return Some((matched != negate, j + 1));
        }
        first = false;
        if j + 2 < p.len() && p[j + 1] == b'-' && p[j + 2] != b']' {
            if p[j] <= c && c <= p[j + 2] {
                matched = true;
            }
            j += 3;
        } else {
            if p[j] == c {
                matched = true;
            }
            j += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_wildcards() {
        let ex = ExcludeList::new(vec![
            "lm_head".into(),
            "model.layers.3.mlp.gate*".into(),
            "model.visual.*".into(),
        ]);
        assert!(ex.matches("lm_head"));
        assert!(ex.matches("language_model.lm_head"));
        assert!(ex.matches("model.layers.3.mlp.gate"));
        assert!(ex.matches("model.visual.blocks.0.attn.qkv"));
        assert!(!ex.matches("model.visual"));
        assert!(!ex.matches("model.layers.4.mlp.gate"));
    }

    #[test]
    fn legacy_component_runs_do_not_match_inside_components() {
        let ex = ExcludeList::new(vec!["model.layers.1".into(), "mlp.gate".into()]);
        assert!(ex.matches("model.layers.1.mlp.down_proj"));
        assert!(!ex.matches("model.layers.11.mlp.down_proj"));
        assert!(ex.matches("model.layers.0.mlp.gate"));
        assert!(!ex.matches("model.layers.0.mlp.gate_proj"));
    }

    #[test]
    fn list_agrees_with_each_pattern() {
        let pats = ["lm_head", "model.layers.1", "mlp.gate", "model.layers.*.mlp.gate", "x", "a.b", "", "é"];
        let ex = ExcludeList::new(pats.iter().map(|s| s.to_string()).collect());
        let names = [
            "lm_head", "model.lm_head", "model.layers.1.mlp.up", "model.layers.11.mlp.up", "model.layers.3.mlp.gate",
            "model.layers.3.mlp.gate_proj", "x.y", "y.x", "xa.b", "a.b.c", "c.a.b", "", "é", "a.é", "ab",
        ];
        for n in names {
            assert_eq!(ex.matches(n), pats.iter().any(|p| pattern_matches(p, n)), "{n}");
        }
    }

    #[test]
    fn fnmatch_semantics() {
        assert!(fnmatch(b"a*c", b"abbbc"));
        assert!(fnmatch(b"a?c", b"abc"));
        assert!(fnmatch(b"a[0-9]c", b"a5c"));
        assert!(!fnmatch(b"a[!0-9]c", b"a5c"));
        assert!(fnmatch(b"*", b""));
        assert!(!fnmatch(b"a*d", b"abc"));
        assert!(fnmatch(b"a[", b"a["));
    }

    #[test]
    fn literal_ends_never_reject_a_match() {
        let pats = ["*mlp.gate", "model.layers.*.mlp.gate", "a[bc]d*e", "a[", "x]y*", "[!a]*", "*", "a?c", "a[!0-9]c*z"];
        let names = ["model.layers.0.mlp.gate", "x.mlp.gate", "abde", "abdxxe", "a[", "x]yz", "ba", "", "abc", "aXcqz", "a5cz"];
        for p in pats {
            for n in names {
                assert_eq!(
                    pattern_matches(p, n),
                    p == n || fnmatch(p.as_bytes(), n.as_bytes()),
                    "{p} vs {n}"
                );
            }
        }
        assert!(!pattern_matches("model.layers.1.*", "model.layers.11.mlp"));
        assert!(pattern_matches("layers.1.mlp", "model.layers.1.mlp.x"));
        assert!(!pattern_matches("layers.1.mlp", "model.layers.1.mlpx"));
        assert!(!pattern_matches("ers.1", "model.layers.1"));
        assert!(pattern_matches("é.b", "a.é.b"));
    }
}
