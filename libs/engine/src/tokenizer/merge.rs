//! The two merge algorithms: byte-level BPE by merge rank, and SentencePiece (SPM) by
//! token score. Both keep a linked list of symbols over the word and a heap of candidate
//! pairs; a popped pair is skipped when either side has changed since it was pushed.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::Tokenizer;

/// A run of bytes of the word, linked to its live neighbours.
#[derive(Clone, Copy)]
struct Sym {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// Splits `word` into one symbol per UTF-8 character.
fn symbols(word: &str, out: &mut Vec<Sym>) {
    out.clear();
    let n = word.chars().count();
    for (i, (start, c)) in word.char_indices().enumerate() {
        out.push(Sym {
            start,
            len: c.len_utf8(),
            prev: i.checked_sub(1),
            next: (i + 1 < n).then_some(i + 1),
        });
    }
}

/// Merges `right` into `left` and unlinks `right`.
fn merge(syms: &mut [Sym], left: usize, right: usize) {
    syms[left].len += syms[right].len;
    syms[right].len = 0;
    syms[left].next = syms[right].next;
    if let Some(n) = syms[right].next {
        syms[n].prev = Some(left);
    }
}

/// Live symbols in order, from the first.
fn live(syms: &[Sym]) -> impl Iterator<Item = &Sym> {
    let mut cur = (!syms.is_empty()).then_some(0);
    std::iter::from_fn(move || {
        let i = cur?;
        cur = syms[i].next;
        Some(&syms[i])
    })
}

// ---- BPE ----

/// A candidate pair, ordered so that the heap pops the lowest rank, then the leftmost.
#[derive(PartialEq, Eq)]
struct RankPair {
    rank: u32,
    left: usize,
    right: usize,
    size: usize,
}

impl Ord for RankPair {
    fn cmp(&self, o: &Self) -> Ordering {
        o.rank.cmp(&self.rank).then(o.left.cmp(&self.left))
    }
}
impl PartialOrd for RankPair {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl Tokenizer {
    /// BPE over one pre-tokenized, byte-encoded word.
    pub(super) fn bpe_word(&self, word: &str, out: &mut Vec<u32>) {
        let b = word.as_bytes();
        if self.ignore_merges {
            if let Some(id) = self.token_id(b) {
                out.push(id);
                return;
            }
        }
        let mut syms = Vec::new();
        symbols(word, &mut syms);
        let mut heap = BinaryHeap::new();
        let mut key = Vec::new();
        let mut pair =
            |syms: &[Sym], heap: &mut BinaryHeap<RankPair>, l: Option<usize>, r: Option<usize>| {
                let (Some(l), Some(r)) = (l, r) else { return };
                let (sl, sr) = (syms[l], syms[r]);
                key.clear();
                key.extend_from_slice(&b[sl.start..sl.start + sl.len]);
                key.push(b' ');
                key.extend_from_slice(&b[sr.start..sr.start + sr.len]);
                if let Some(rank) = self.merge_rank(&key) {
                    heap.push(RankPair {
                        rank,
                        left: l,
                        right: r,
                        size: sl.len + sr.len,
                    });
                }
            };
        for i in 1..syms.len() {
            pair(&syms, &mut heap, Some(i - 1), Some(i));
        }
        while let Some(p) = heap.pop() {
            let (l, r) = (syms[p.left], syms[p.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != p.size {
                continue;
            }
            merge(&mut syms, p.left, p.right);
            pair(&syms, &mut heap, syms[p.left].prev, Some(p.left));
            pair(&syms, &mut heap, Some(p.left), syms[p.left].next);
        }
        for s in live(&syms) {
            let piece = &b[s.start..s.start + s.len];
            match self.token_id(piece) {
                Some(id) => out.push(id),
                // A merge result missing from the vocabulary: llama.cpp falls back to
                // single-byte tokens and drops bytes that have none.
                None => out.extend(piece.iter().filter_map(|&x| self.token_id(&[x]))),
            }
        }
    }

    // ---- SPM ----

    /// SentencePiece merging over a whole fragment whose spaces are already `▁`.
    pub(super) fn spm(&self, text: &str, out: &mut Vec<u32>) {
        let b = text.as_bytes();
        let mut syms = Vec::new();
        symbols(text, &mut syms);
        let mut heap = BinaryHeap::new();
        let pair =
            |syms: &[Sym], heap: &mut BinaryHeap<ScorePair>, l: Option<usize>, r: Option<usize>| {
                let (Some(l), Some(r)) = (l, r) else { return };
                let (sl, sr) = (syms[l], syms[r]);
                let size = sl.len + sr.len;
                if let Some(id) = self.token_id(&b[sl.start..sl.start + size]) {
                    heap.push(ScorePair {
                        score: self.scores[id as usize],
                        left: l,
                        right: r,
                        size,
                    });
                }
            };
        for i in 1..syms.len() {
            pair(&syms, &mut heap, Some(i - 1), Some(i));
        }
        while let Some(p) = heap.pop() {
            let (l, r) = (syms[p.left], syms[p.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != p.size {
                continue;
            }
            merge(&mut syms, p.left, p.right);
            pair(&syms, &mut heap, syms[p.left].prev, Some(p.left));
            pair(&syms, &mut heap, Some(p.left), syms[p.left].next);
        }
        for s in live(&syms) {
            let piece = &b[s.start..s.start + s.len];
            match self.token_id(piece) {
                Some(id) => out.push(id),
                // Byte fallback: `<0xNN>` tokens (every symbol left unmerged here is one
                // character, so this is the character's UTF-8 bytes).
                None => out.extend(piece.iter().filter_map(|&x| self.byte_tokens[x as usize])),
            }
        }
    }
}

/// A candidate SPM pair: the heap pops the highest score, then the leftmost.
struct ScorePair {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for ScorePair {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for ScorePair {}
impl Ord for ScorePair {
    fn cmp(&self, o: &Self) -> Ordering {
        self.score.total_cmp(&o.score).then(o.left.cmp(&self.left))
    }
}
impl PartialOrd for ScorePair {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
