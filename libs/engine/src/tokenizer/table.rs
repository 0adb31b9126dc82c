//! Compact string storage and lookup for large vocabularies.
//!
//! A 262k-token vocabulary as a `HashMap<String, u32>` costs 262k allocations at load;
//! here all strings live in one byte arena and an open-addressing table of ids indexes
//! them, so building it is a few linear passes.

/// Strings stored back to back; string `i` is `bytes[offs[i]..offs[i + 1]]`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Arena {
    bytes: Vec<u8>,
    offs: Vec<u32>,
}

impl Arena {
    pub fn with_capacity(n: usize, bytes: usize) -> Arena {
        let mut offs = Vec::with_capacity(n + 1);
        offs.push(0);
        Arena {
            bytes: Vec::with_capacity(bytes),
            offs,
        }
    }

    pub fn push(&mut self, s: &[u8]) {
        self.bytes.extend_from_slice(s);
        self.offs.push(self.bytes.len() as u32);
    }

    /// Appends a string written by `f`.
    pub fn push_with(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        f(&mut self.bytes);
        self.offs.push(self.bytes.len() as u32);
    }

    pub fn get(&self, i: usize) -> &[u8] {
        &self.bytes[self.offs[i] as usize..self.offs[i + 1] as usize]
    }

    pub fn len(&self) -> usize {
        self.offs.len().saturating_sub(1)
    }
}

/// FxHash-style hash over bytes (fast, not DoS-resistant; the keys come from the model).
fn hash(s: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h: u64 = s.len() as u64;
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    }
    for &b in chunks.remainder() {
        h = (h.rotate_left(5) ^ b as u64).wrapping_mul(K);
    }
    h
}

/// Slot of a hash in a table of `1 << (64 - shift)` slots (the high bits of a multiplied
/// hash: the low bits of a multiplicative hash are poorly mixed).
fn slot(h: u64, shift: u32) -> usize {
    (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> shift) as usize
}

/// Which id a key keeps when it appears more than once.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dup {
    /// The first one (like `unordered_map::emplace`).
    First,
    /// The last one (like `map[key] = id`).
    Last,
}

/// An index from the strings of an [`Arena`] to their position.
#[derive(Clone, Debug, Default)]
pub(crate) struct Index {
    /// Slots hold `id + 1` (0 is empty) and 32 bits of the key's hash, compared before
    /// the key itself so that a probe rarely touches the arena.
    slots: Vec<(u32, u32)>,
    mask: usize,
    shift: u32,
}

impl Index {
    pub fn build(arena: &Arena, dup: Dup) -> Index {
        let cap = (arena.len() * 2).next_power_of_two().max(16);
        let mut ix = Index {
            slots: vec![(0, 0); cap],
            mask: cap - 1,
            shift: 64 - cap.trailing_zeros(),
        };
        for id in 0..arena.len() {
            let key = arena.get(id);
            let h = hash(key);
            let tag = h as u32;
            let mut i = slot(h, ix.shift);
            loop {
                let (s, t) = ix.slots[i];
                if s == 0 {
                    ix.slots[i] = (id as u32 + 1, tag);
                    break;
                }
                if t == tag && arena.get(s as usize - 1) == key {
                    if dup == Dup::Last {
                        ix.slots[i].0 = id as u32 + 1;
                    }
                    break;
                }
                i = (i + 1) & ix.mask;
            }
        }
        ix
    }

    pub fn get(&self, arena: &Arena, key: &[u8]) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let h = hash(key);
        let tag = h as u32;
        let mut i = slot(h, self.shift);
        loop {
            let (s, t) = self.slots[i];
            if s == 0 {
                return None;
            }
            if t == tag && arena.get(s as usize - 1) == key {
                return Some(s - 1);
            }
            i = (i + 1) & self.mask;
        }
    }
}

/// A byte trie over special-token texts, to find which of them occur in a text.
#[derive(Clone, Debug, Default)]
pub(crate) struct Trie {
    /// Node 0 is the root. Each node: sorted children and the tokens ending there.
    nodes: Vec<Node>,
}

#[derive(Clone, Debug, Default)]
struct Node {
    children: Vec<(u8, u32)>,
    ends: Vec<u32>,
}

impl Trie {
    pub fn new() -> Trie {
        Trie {
            nodes: vec![Node::default()],
        }
    }

    pub fn insert(&mut self, key: &[u8], id: u32) {
        let mut n = 0usize;
        for &b in key {
            n = match self.nodes[n].children.binary_search_by_key(&b, |c| c.0) {
                Ok(i) => self.nodes[n].children[i].1 as usize,
                Err(i) => {
                    let new = self.nodes.len();
                    self.nodes.push(Node::default());
                    self.nodes[n].children.insert(i, (b, new as u32));
                    new
                }
            };
        }
        self.nodes[n].ends.push(id);
    }

    /// Calls `f` with every inserted id whose key occurs somewhere in `text`.
    pub fn occurring(&self, text: &[u8], mut f: impl FnMut(u32)) {
        for start in 0..text.len() {
            let mut n = 0usize;
            for &b in &text[start..] {
                match self.nodes[n].children.binary_search_by_key(&b, |c| c.0) {
                    Ok(i) => n = self.nodes[n].children[i].1 as usize,
                    Err(_) => break,
                }
                self.nodes[n].ends.iter().for_each(|&id| f(id));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_finds_and_keeps_first_or_last() {
        let mut a = Arena::with_capacity(4, 16);
        for s in ["a", "bc", "a", ""] {
            a.push(s.as_bytes());
        }
        let first = Index::build(&a, Dup::First);
        let last = Index::build(&a, Dup::Last);
        assert_eq!(first.get(&a, b"a"), Some(0));
        assert_eq!(last.get(&a, b"a"), Some(2));
        assert_eq!(first.get(&a, b"bc"), Some(1));
        assert_eq!(first.get(&a, b""), Some(3));
        assert_eq!(first.get(&a, b"b"), None);
        assert_eq!(Index::default().get(&a, b"a"), None);
    }

    #[test]
    fn trie_reports_occurring_keys() {
        let mut t = Trie::new();
        t.insert(b"<a>", 1);
        t.insert(b"<ab>", 2);
        t.insert(b"b", 3);
        let mut seen = Vec::new();
        t.occurring(b"x<ab>", |id| seen.push(id));
        seen.sort();
        assert_eq!(seen, [2, 3]);
    }
}
