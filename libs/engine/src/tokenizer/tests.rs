//! Unit tests on small in-memory vocabularies (no model files).

use super::*;

/// The 256 byte-level BPE characters, as token texts.
fn byte_texts() -> Vec<String> {
    unicode::byte_to_char_table()
        .iter()
        .map(|c| c.to_string())
        .collect()
}

/// A byte-level BPE vocabulary: the 256 byte characters, then merged tokens, then specials.
fn bpe_vocab<'a>(pre: &'a str, merges: &[&'a str], bytes: &'a [String]) -> Vocab<'a> {
    let tokens = bytes.iter().map(String::as_str).collect();
    Vocab {
        model: "gpt2",
        pre,
        merges: merges.to_vec(),
        tokens,
        ..Vocab::default()
    }
}

fn build_bpe(pre: &str, merged: &[&str], merges: &[&str], specials: &[&str]) -> Tokenizer {
    let bytes = byte_texts();
    let mut v = bpe_vocab(pre, merges, &bytes);
    let mut tokens = v.tokens.clone();
    tokens.extend_from_slice(merged);
    let mut types = vec![1; tokens.len()];
    tokens.extend_from_slice(specials);
    types.extend(specials.iter().map(|_| 3));
    v.tokens = tokens;
    v.token_types = Some(types);
    Tokenizer::new(&v).unwrap()
}

fn id(t: &Tokenizer, s: &str) -> u32 {
    t.token_to_id(s).unwrap_or_else(|| panic!("no token {s:?}"))
}

#[test]
fn bpe_merges_by_rank_not_by_position() {
    // "abc": ranks say "b c" before "a b", so the result is a + bc, not ab + c.
    let t = build_bpe("gpt-2", &["ab", "bc"], &["b c", "a b"], &[]);
    assert_eq!(t.encode("abc", false, false), [id(&t, "a"), id(&t, "bc")]);
    // Equal ranks cannot happen; the leftmost of two applications of one merge goes first.
    let t = build_bpe("gpt-2", &["aa"], &["a a"], &[]);
    assert_eq!(t.encode("aaa", false, false), [id(&t, "aa"), id(&t, "a")]);
}

#[test]
fn bpe_is_byte_level_and_round_trips() {
    let t = build_bpe("gpt-2", &["Ġw", "Ġwo"], &["Ġ w", "Ġw o"], &[]);
    let text = "héllo wo 😀\t\n";
    let ids = t.encode(text, false, false);
    assert!(ids.contains(&id(&t, "Ġwo")));
    assert_eq!(t.decode(&ids, false, false), text.as_bytes());
    // Every byte of the emoji is its own token here.
    assert_eq!(ids.len(), "héllo".len() + 1 + 1 + 4 + 2);
}

#[test]
fn special_tokens_only_when_asked() {
    let t = build_bpe("gpt-2", &[], &[], &["<|im_start|>", "<|im_end|>"]);
    let start = id(&t, "<|im_start|>");
    let plain = t.encode("<|im_start|>x", false, false);
    assert!(!plain.contains(&start));
    assert_eq!(plain.len(), "<|im_start|>x".len());
    assert_eq!(t.encode("<|im_start|>x", false, true), [start, id(&t, "x")]);
    // Control tokens render only with `special`.
    assert_eq!(t.token_to_piece(start, false), b"");
    assert_eq!(t.token_to_piece(start, true), b"<|im_start|>");
    assert!(
        t.is_eog(id(&t, "<|im_end|>")),
        "<|im_end|> is end of generation by text"
    );
    assert_eq!(t.eot(), Some(id(&t, "<|im_end|>")));
}

#[test]
fn longer_special_tokens_win() {
    let t = build_bpe("gpt-2", &[], &[], &["<a>", "<a><b>"]);
    assert_eq!(
        t.encode("<a><b><a>", false, true),
        [id(&t, "<a><b>"), id(&t, "<a>")]
    );
}

#[test]
fn user_defined_tokens_are_always_matched() {
    let bytes = byte_texts();
    let mut v = bpe_vocab("gpt-2", &[], &bytes);
    let mut tokens = v.tokens.clone();
    tokens.push("<tool>");
    let mut types = vec![1; 256];
    types.push(4);
    v.tokens = tokens;
    v.token_types = Some(types);
    let t = Tokenizer::new(&v).unwrap();
    assert_eq!(t.encode("a<tool>", false, false), [id(&t, "a"), 256]);
    assert_eq!(t.token_to_piece(256, false), b"<tool>");
}

#[test]
fn bos_eos_follow_metadata() {
    let bytes = byte_texts();
    let mut v = bpe_vocab("llama-bpe", &[], &bytes);
    let mut tokens = v.tokens.clone();
    tokens.extend(["<s>", "</s>"]);
    v.tokens = tokens;
    v.ids.bos = Some(256);
    v.ids.eos = Some(257);
    let t = Tokenizer::new(&v).unwrap();
    assert!(t.add_bos(), "llama3 pre-tokenizer adds BOS by default");
    assert_eq!(t.encode("a", true, false), [256, id(&t, "a")]);
    v.add_bos = Some(false);
    v.add_eos = Some(true);
    let t = Tokenizer::new(&v).unwrap();
    assert_eq!(t.encode("a", true, false), [id(&t, "a"), 257]);
    assert_eq!(t.encode("a", false, false), [id(&t, "a")]);
    assert_eq!(t.encode("", true, false), [257]);
    assert!(t.is_eog(257));
}

/// A small SentencePiece vocabulary with byte fallback.
fn spm(add_space_prefix: bool) -> Tokenizer {
    let mut tokens = vec!["<unk>", "<s>", "</s>"];
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0, 0.0, 0.0];
    let hex: Vec<String> = (0..256).map(|b| format!("<0x{b:02X}>")).collect();
    for h in &hex {
        tokens.push(h);
        types.push(6);
        scores.push(0.0);
    }
    for (t, s) in [
        ("▁", -1.0),
        ("a", -2.0),
        ("b", -2.0),
        ("ab", -3.0),
        ("▁a", -1.5),
        ("▁ab", -0.5),
        ("ba", -0.1),
    ] {
        tokens.push(t);
        types.push(1);
        scores.push(s);
    }
    let v = Vocab {
        model: "llama",
        tokens,
        scores: Some(scores),
        token_types: Some(types),
        add_space_prefix: Some(add_space_prefix),
        ..Vocab::default()
    };
    Tokenizer::new(&v).unwrap()
}

#[test]
fn spm_merges_by_score_with_byte_fallback() {
    let t = spm(true);
    // " ab" → "▁ab" is reachable (▁a then ▁ab); "ba" scores higher than "ab" in "bab".
    assert_eq!(t.encode("ab", true, false), [1, id(&t, "▁ab")]);
    assert_eq!(
        t.encode("bab", false, false),
        [id(&t, "▁"), id(&t, "ba"), id(&t, "b")]
    );
    // "é" is not in the vocabulary: its two UTF-8 bytes as <0xC3> <0xA9>.
    let ids = t.encode("é", false, false);
    assert_eq!(ids, [id(&t, "▁"), id(&t, "<0xC3>"), id(&t, "<0xA9>")]);
    // Decode drops the prefixed space and joins the bytes.
    assert_eq!(t.decode(&ids, false, false), "é".as_bytes());
    // As in llama.cpp, the prefixed space is only dropped from the very first token, and
    // not at all once a BOS was removed.
    assert_eq!(
        t.decode(&t.encode("ab ab", false, false), false, false),
        b"ab ab"
    );
    assert_eq!(
        t.decode(&t.encode("ab ab", true, false), true, false),
        b" ab ab"
    );
}

#[test]
fn spm_without_space_prefix() {
    let t = spm(false);
    assert_eq!(t.encode("ab", false, false), [id(&t, "ab")]);
}

#[test]
fn unsupported_inputs_are_errors() {
    let v = Vocab {
        model: "t5",
        tokens: vec!["a"],
        ..Vocab::default()
    };
    assert!(matches!(
        Tokenizer::new(&v).unwrap_err().kind(),
        ErrorKind::UnsupportedModel(_)
    ));
    let v = Vocab {
        model: "gpt2",
        pre: "deepseek-llm",
        tokens: vec!["a"],
        ..Vocab::default()
    };
    let e = Tokenizer::new(&v).unwrap_err();
    assert_eq!(e.to_string(), "unsupported pre-tokenizer \"deepseek-llm\"");
    let v = Vocab {
        model: "llama",
        tokens: vec!["a", "b"],
        scores: Some(vec![0.0]),
        ..Vocab::default()
    };
    assert!(matches!(
        Tokenizer::new(&v).unwrap_err().kind(),
        ErrorKind::Invalid { .. }
    ));
    let v = Vocab {
        model: "llama",
        ..Vocab::default()
    };
    assert!(Tokenizer::new(&v).is_err());
}

#[test]
fn find_substring() {
    assert_eq!(find(b"hello", b"ll"), Some(2));
    assert_eq!(find(b"aaab", b"ab"), Some(2));
    assert_eq!(find(b"ab", b"abc"), None);
    assert_eq!(find(b"ab", b""), None);
}
