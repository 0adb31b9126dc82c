//! Text ↔ tokens from a GGUF file's `tokenizer.*` metadata, token for token like llama.cpp.
//!
//! Two tokenizer models are implemented:
//! - **BPE** (`tokenizer.ggml.model = "gpt2"`): byte-level BPE with merge ranks from
//!   `tokenizer.ggml.merges`, after the pre-tokenizer llama.cpp picks from
//!   `tokenizer.ggml.pre` (see [`PreTokenizer`]: gpt2, smollm/starcoder, llama3, qwen2,
//!   default and their aliases);
//! - **SPM** (`"llama"`: Llama 2, Gemma): SentencePiece merging by token score, with
//!   `<0xNN>` byte fallback and `▁` for spaces.
//!
//! Special tokens (control, user-defined, unknown) are cut out of the text first, as
//! llama.cpp does: control and unknown tokens only when `parse_special` is set (so user
//! text like `"<|im_start|>"` is plain text by default), user-defined ones always.
//! BOS/EOS are added when `add_special` is set and the metadata asks for them.
//!
//! Behaviour that is llama.cpp's rather than the original tokenizers' (its fast paths for
//! the regexes, its end-of-generation heuristics, its detokenizer clean-up) is reproduced
//! on purpose: the differential test compares us with llama.cpp in-process. Where
//! llama.cpp's result depends on hash-map or unstable-sort order we pick a fixed rule:
//! the end-of-turn token found by text is the lowest matching id, and special tokens of
//! equal length are tried in id order. Character classes come from a table generated from
//! Unicode 15.1, the version llama.cpp's table matches (`gen_unicode.py`).
//!
//! Not implemented: the WPM, UGM, RWKV and PLaMo-2 models and the BPE pre-tokenizers other
//! than those of [`PreTokenizer`] (deepseek, tekken, gpt-4o, …): [`Tokenizer::new`] refuses
//! them with an error naming the value.
//!
//! ```
//! use engine::tokenizer::{Tokenizer, Vocab};
//! // A tiny byte-level BPE vocabulary: "a", "b", "ab" and one merge.
//! let vocab = Vocab {
//!     model: "gpt2",
//!     pre: "gpt-2",
//!     tokens: vec!["a", "b", "ab", "Ġ"],
//!     merges: vec!["a b"],
//!     ..Vocab::default()
//! };
//! let tok = Tokenizer::new(&vocab)?;
//! assert_eq!(tok.encode("abab a", false, false), [2, 2, 3, 0]);
//! assert_eq!(tok.decode(&[2, 3, 0], false, false), b"ab a");
//! # Ok::<(), engine::tokenizer::Error>(())
//! ```

mod decode;
mod load;
mod merge;
mod pretok;
mod table;
mod unicode;
mod unicode_data;

pub use decode::StreamDecoder;
pub use load::{SpecialIds, Vocab};
pub use pretok::PreTokenizer;

use table::{Arena, Index, Trie};

// ---- errors ----

/// An error building a tokenizer.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct Error {
    kind: ErrorKind,
}

impl Error {
    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }
}

/// The kinds of [`Error`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A required metadata key is absent or has the wrong type.
    #[error("cannot find {0} in gguf metadata")]
    Missing(&'static str),
    /// A metadata value is out of range.
    #[error("invalid {key} in gguf metadata: {why}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// Why it is refused.
        why: String,
    },
    /// `tokenizer.ggml.model` names a tokenizer we do not implement.
    #[error("unsupported tokenizer model {0:?} (supported: gpt2, llama)")]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer we do not implement.
    #[error("unsupported pre-tokenizer {0:?}")]
    UnsupportedPre(String),
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Error { kind }
    }
}

// ---- token attributes ----

/// Token attribute bits (llama.cpp's `llama_token_attr`).
#[derive(Clone, Copy, Debug)]
pub struct Attr;

impl Attr {
    /// `<unk>`-like.
    pub const UNKNOWN: u32 = 1;
    /// Never produced by the tokenizer's normal path.
    pub const UNUSED: u32 = 1 << 1;
    /// An ordinary token.
    pub const NORMAL: u32 = 1 << 2;
    /// A control token (`<|im_start|>`, `<bos>`…).
    pub const CONTROL: u32 = 1 << 3;
    /// A user-defined token, matched in text before tokenizing.
    pub const USER_DEFINED: u32 = 1 << 4;
    /// A `<0xNN>` byte token.
    pub const BYTE: u32 = 1 << 5;
    /// Eats whitespace to its left when matched.
    pub const LSTRIP: u32 = 1 << 7;
    /// Eats whitespace to its right when matched.
    pub const RSTRIP: u32 = 1 << 8;

    /// Attributes from a `tokenizer.ggml.token_type` value.
    pub fn from_token_type(t: i32) -> u32 {
        match t {
            1 => Attr::NORMAL,
            2 => Attr::UNKNOWN,
            3 => Attr::CONTROL,
            4 => Attr::USER_DEFINED,
            5 => Attr::UNUSED,
            6 => Attr::BYTE,
            _ => 0,
        }
    }
}

// ---- the tokenizer ----

/// Which algorithm a tokenizer runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Byte-level BPE with this pre-tokenizer.
    Bpe(PreTokenizer),
    /// SentencePiece.
    Spm,
}

/// A tokenizer built once from metadata; encoding and decoding borrow it immutably.
#[derive(Clone)]
pub struct Tokenizer {
    kind: Kind,
    /// Token texts by id, and text → id (the last id for a repeated text, like llama.cpp).
    texts: Arena,
    index: Index,
    scores: Vec<f32>,
    attrs: Vec<u32>,
    /// Merges by rank, and `"left right"` → rank (the first rank for a repeated merge).
    merges: Arena,
    merge_index: Index,
    /// Rendered bytes of every token (special tokens as their text).
    pieces: Arena,
    /// Special tokens in matching order (longest text first), and a trie over their texts.
    special: Vec<u32>,
    special_trie: Trie,
    /// SPM byte fallback: the token of each byte.
    byte_tokens: [Option<u32>; 256],
    /// BPE: the printable character standing for each byte.
    byte_chars: [char; 256],
    ids: SpecialIds,
    eog: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    ignore_merges: bool,
    clean_spaces: bool,
}

impl Tokenizer {
    // ---- encoding ----

    /// Text to token ids, like `llama_tokenize`: with `add_special`, BOS/EOS as the model
    /// asks; with `parse_special`, control-token texts in `text` become those tokens.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if add_special && self.add_bos {
            out.extend(self.ids.bos);
        }
        let frags = if text.is_empty() {
            Vec::new()
        } else {
            self.partition(text, parse_special)
        };
        match self.kind {
            Kind::Spm => {
                let mut prev_special = true;
                let mut buf = String::new();
                for f in &frags {
                    match *f {
                        Frag::Text(a, b) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.push(' ');
                            }
                            buf.push_str(&text[a..b]);
                            let escaped = buf.replace(' ', "\u{2581}");
                            self.spm(&escaped, &mut out);
                            prev_special = false;
                        }
                        Frag::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
            Kind::Bpe(pre) => {
                let mut words = Vec::new();
                let mut enc = String::new();
                for f in &frags {
                    match *f {
                        Frag::Text(a, b) => {
                            words.clear();
                            pre.split(&text[a..b], &mut words);
                            for w in &words {
                                enc.clear();
                                enc.extend(w.bytes().map(|x| self.byte_chars[x as usize]));
                                self.bpe_word(&enc, &mut out);
                            }
                        }
                        Frag::Token(id) => out.push(id),
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.ids.eos);
        }
        out
    }

    /// Cuts special-token texts out of `text`, as llama.cpp does: each special token in
    /// turn, longest first, splits every remaining text fragment at its occurrences.
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Frag> {
        let eligible = |id: u32| {
            parse_special || self.attrs[id as usize] & (Attr::CONTROL | Attr::UNKNOWN) == 0
        };
        // Only the special tokens that occur at all need a pass.
        let mut present = Vec::new();
        self.special_trie.occurring(text.as_bytes(), |id| {
            if eligible(id) {
                present.push(id);
            }
        });
        let mut frags = vec![Frag::Text(0, text.len())];
        if present.is_empty() {
            return frags;
        }
        present.sort_unstable();
        present.dedup();
        let rank = |id: u32| {
            self.special
                .iter()
                .position(|&s| s == id)
                .unwrap_or(usize::MAX)
        };
        present.sort_by_key(|&id| rank(id));
        let bytes = text.as_bytes();
        let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r');
        for id in present {
            let needle = self.texts.get(id as usize);
            let attr = self.attrs[id as usize];
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Frag::Text(mut a, b) = f else {
                    next.push(f);
                    continue;
                };
                while let Some(m) = find(&bytes[a..b], needle).map(|m| a + m) {
                    let mut left_end = m;
                    if attr & Attr::LSTRIP != 0 {
                        while left_end > a && is_space(bytes[left_end - 1]) {
                            left_end -= 1;
                        }
                    }
                    if left_end > a {
                        next.push(Frag::Text(a, left_end));
                    }
                    next.push(Frag::Token(id));
                    a = m + needle.len();
                    if attr & Attr::RSTRIP != 0 {
                        while a < b && is_space(bytes[a]) {
                            a += 1;
                        }
                    }
                }
                if a < b {
                    next.push(Frag::Text(a, b));
                }
            }
            frags = next;
        }
        frags
    }

    // ---- lookups ----

    fn token_id(&self, text: &[u8]) -> Option<u32> {
        self.index.get(&self.texts, text)
    }

    fn merge_rank(&self, key: &[u8]) -> Option<u32> {
        self.merge_index.get(&self.merges, key)
    }

    /// The id of a token text, if it is in the vocabulary.
    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        self.token_id(text.as_bytes())
    }

    /// The raw text of a token as stored in the vocabulary (`Ġ`/`▁` not decoded).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        ((id as usize) < self.vocab_size())
            .then(|| std::str::from_utf8(self.texts.get(id as usize)).expect("from &str"))
    }

    /// The token's attribute bits ([`Attr`]); 0 for out-of-range ids.
    pub fn token_attr(&self, id: u32) -> u32 {
        self.attrs.get(id as usize).copied().unwrap_or(0)
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.texts.len()
    }

    /// The algorithm.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Beginning-of-sequence token.
    pub fn bos(&self) -> Option<u32> {
        self.ids.bos
    }

    /// End-of-sequence token.
    pub fn eos(&self) -> Option<u32> {
        self.ids.eos
    }

    /// End-of-turn token (from metadata, else found by text like `<|im_end|>`).
    pub fn eot(&self) -> Option<u32> {
        self.ids.eot
    }

    /// All special ids after defaults and detection.
    pub fn special_ids(&self) -> &SpecialIds {
        &self.ids
    }

    /// Whether encoding with `add_special` prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether encoding with `add_special` appends EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// Whether `id` ends generation (EOS, EOT, EOM, `<|im_end|>`, `<end_of_turn>`…).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// The end-of-generation tokens, sorted.
    pub fn eog_tokens(&self) -> &[u32] {
        &self.eog
    }

    /// Whether `id` is a control token.
    pub fn is_control(&self, id: u32) -> bool {
        self.token_attr(id) & Attr::CONTROL != 0
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("vocab_size", &self.vocab_size())
            .field("merges", &self.merges.len())
            .field("special_tokens", &self.special.len())
            .field("ids", &self.ids)
            .field("eog", &self.eog)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .finish_non_exhaustive()
    }
}

/// A piece of input after special-token partitioning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frag {
    /// Raw text, byte range of the input.
    Text(usize, usize),
    /// A special token.
    Token(u32),
}

/// First occurrence of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > hay.len() {
        return None;
    }
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        match hay[i..=hay.len() - needle.len()]
            .iter()
            .position(|&b| b == first)
        {
            None => return None,
            Some(k) => {
                i += k;
                if &hay[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests;
