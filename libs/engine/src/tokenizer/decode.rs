//! Tokens back to bytes: per-token pieces, whole-sequence detokenizing like llama.cpp, and a
//! streaming UTF-8 decoder that never splits a character.

use super::{unicode, Attr, Kind, Tokenizer};

impl Tokenizer {
    /// Appends the text of token `id` as llama.cpp renders it (`special = true`): byte-level
    /// BPE characters decoded to bytes, SPM `▁` as spaces, `<0xNN>` as the byte, control and
    /// user-defined tokens as their text.
    pub(super) fn render_piece(&self, id: usize, inv: &[i16; 0x144], out: &mut Vec<u8>) {
        let text = self.texts.get(id);
        let attr = self.attrs[id];
        if attr & (Attr::UNKNOWN | Attr::CONTROL | Attr::USER_DEFINED) != 0 {
            out.extend_from_slice(text);
        } else if attr & Attr::NORMAL != 0 {
            match self.kind {
                Kind::Spm => {
                    // "▁" is E2 96 81.
                    let mut i = 0;
                    while i < text.len() {
                        if text[i..].starts_with("\u{2581}".as_bytes()) {
                            out.push(b' ');
                            i += 3;
                        } else {
                            out.push(text[i]);
                            i += 1;
                        }
                    }
                }
                Kind::Bpe(_) => {
                    let s = std::str::from_utf8(text).expect("token texts come from &str");
                    for c in s.chars() {
                        match unicode::char_to_byte(c, inv) {
                            Some(b) => out.push(b),
                            None => {
                                // llama.cpp's marker for a character outside the byte map.
                                out.extend_from_slice(b"[UNK_BYTE_0x");
                                let mut buf = [0u8; 4];
                                for b in c.encode_utf8(&mut buf).bytes() {
                                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                                }
                                // llama.cpp repeats the whole token text in every marker;
                                // that is quadratic, so absurdly long tokens get it once.
                                if text.len() <= 1024 {
                                    out.extend_from_slice(text);
                                }
                                out.push(b']');
                            }
                        }
                    }
                }
            }
        } else if attr & Attr::BYTE != 0 {
            // "<0xNN>"
            let hex = std::str::from_utf8(text.get(3..5).unwrap_or_default()).unwrap_or_default();
            out.extend(u8::from_str_radix(hex, 16).ok());
        }
    }

    /// The bytes of token `id`; control and unknown tokens are empty unless `special`.
    /// Out-of-range ids are empty.
    pub fn token_to_piece(&self, id: u32, special: bool) -> &[u8] {
        let Some(&attr) = self.attrs.get(id as usize) else {
            return &[];
        };
        if !special && attr & (Attr::UNKNOWN | Attr::CONTROL) != 0 {
            return &[];
        }
        self.pieces.get(id as usize)
    }

    /// Tokens to bytes, exactly like `llama_detokenize`: with `remove_special`, a leading
    /// BOS and trailing EOS that the model adds are dropped; with `unparse_special`,
    /// control tokens are rendered; SPM models drop the space the encoder prefixed; models
    /// that ask for it get llama.cpp's space clean-up (" ," → ",", " 's" → "'s"…).
    pub fn decode(&self, tokens: &[u32], remove_special: bool, unparse_special: bool) -> Vec<u8> {
        let mut toks = tokens;
        let mut remove_space = self.add_space_prefix;
        if remove_special && self.add_bos && toks.first().is_some_and(|&t| Some(t) == self.ids.bos)
        {
            remove_space = false;
            toks = &toks[1..];
        }
        if remove_special && self.add_eos && toks.last().is_some_and(|&t| Some(t) == self.ids.eos) {
            toks = &toks[..toks.len() - 1];
        }
        let mut out = Vec::new();
        for &t in toks {
            let mut p = self.token_to_piece(t, unparse_special);
            if remove_space && p.first() == Some(&b' ') {
                p = &p[1..];
            }
            remove_space = false;
            out.extend_from_slice(p);
        }
        if self.clean_spaces {
            clean_spaces(&mut out);
        }
        out
    }
}

/// llama.cpp's three clean-up passes over detokenized text.
fn clean_spaces(t: &mut Vec<u8>) {
    if t.is_empty() {
        return;
    }
    // " ?", " !", " .", " ," lose the space.
    let src = std::mem::take(t);
    t.push(src[0]);
    for i in 1..src.len() {
        let x = src[i];
        if src[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            t.pop();
        }
        t.push(x);
    }
    // " ' " becomes "'".
    let mut src = std::mem::take(t);
    t.push(src[0]);
    let mut i = 1;
    while i < src.len() {
        let x = src[i];
        if x == b'\'' && i + 1 < src.len() && src[i - 1] == b' ' && src[i + 1] == b' ' {
            t.pop();
            i += 1;
            src[i] = 0;
        }
        t.push(x);
        i += 1;
    }
    // " 's", " 'm", " 're", " 've" lose the space.
    let src = std::mem::take(t);
    t.push(src[0]);
    for i in 1..src.len() {
        let x = src[i];
        if src[i - 1] == b' ' && x == b'\'' && i + 1 < src.len() {
            let x1 = src[i + 1];
            let x2 = src.get(i + 2).copied().filter(|_| i + 2 < src.len());
            let drop = matches!(x1, b's' | b'm')
                || (!matches!(x1, b't' | b'd')
                    && matches!((x1, x2), (b'r', Some(b'e')) | (b'v', Some(b'e'))));
            if drop {
                t.pop();
            }
        }
        t.push(x);
    }
}

/// Turns a stream of token bytes into UTF-8 text without ever splitting a character: bytes
/// of an incomplete character wait for the next token; bytes that can never form one become
/// U+FFFD.
///
/// ```
/// use engine::tokenizer::StreamDecoder;
/// let mut d = StreamDecoder::new();
/// assert_eq!(d.push(b"caf\xC3"), "caf");
/// assert_eq!(d.push(b"\xA9!"), "\u{e9}!");
/// assert_eq!(d.push(b"\xF0\x9F"), "");
/// assert_eq!(d.finish(), "\u{FFFD}");
/// ```
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// An empty decoder.
    pub fn new() -> StreamDecoder {
        StreamDecoder::default()
    }

    /// Adds bytes; returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(good).expect("valid prefix"));
                    match e.error_len() {
                        // An incomplete character at the end: keep it for later.
                        None => {
                            rest = bad;
                            break;
                        }
                        Some(n) => {
                            out.push('\u{FFFD}');
                            rest = &bad[n..];
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let start = self.pending.len() - keep;
        self.pending.drain(..start);
        out
    }

    /// Flushes what is left (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }

    /// Whether bytes are waiting for the rest of a character.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(s: &str) -> String {
        let mut v = s.as_bytes().to_vec();
        clean_spaces(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn clean_spaces_like_llama_cpp() {
        assert_eq!(clean("Hi , there !"), "Hi, there!");
        assert_eq!(clean("it ' s"), "it's");
        assert_eq!(clean("he 's we 're I 'd"), "he's we're I 'd");
        assert_eq!(clean(""), "");
    }

    #[test]
    fn stream_never_splits_characters() {
        let text = "héllo 世界 👩‍👩‍👧 ok";
        for chunk in 1..=4 {
            let mut d = StreamDecoder::new();
            let mut got = String::new();
            for c in text.as_bytes().chunks(chunk) {
                got += &d.push(c);
            }
            assert!(!d.has_pending());
            got += &d.finish();
            assert_eq!(got, text, "chunk {chunk}");
        }
        let mut d = StreamDecoder::new();
        assert_eq!(d.push(b"a\xFFb"), "a\u{FFFD}b");
    }
}
