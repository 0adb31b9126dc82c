//! Differential test: our tokenizer against llama.cpp's, in process, on the two real models
//! (SmolLM2: byte-level BPE, pre-tokenizer "smollm"; Gemma 3: SentencePiece).
//!
//! Every corpus string is encoded with (add_special, parse_special) in all four
//! combinations and compared id for id; decoding is compared on every encoding and on every
//! single token of the vocabulary; special-token facts (BOS/EOS, end-of-generation set,
//! control flags) are compared over the whole vocabulary. Mismatches are listed before the
//! test fails, with a count per model.

use std::path::PathBuf;
use std::time::Instant;

use engine::llama_cpp::{LlamaModel, ModelOptions};
use engine::tokenizer::{StreamDecoder, Tokenizer};

fn model_path(name: &str) -> PathBuf {
    pipeline_tests::real_model(name)
}

/// Hand-written cases: scripts, whitespace, digits, code, emoji, contractions, specials.
const CORPUS: &[&str] = &[
    "",
    " ",
    "  ",
    "\n",
    "\t",
    "The capital of France is",
    "Hello world! How are you today? 12345 naïve café",
    "Hello",
    " Hello",
    "  Hello",
    "Hello  world",
    "Hello   world   ",
    "Hello\nworld",
    "Hello\n\nworld\n",
    "line one\r\nline two\r\n",
    "\n\n\n",
    " \n \n ",
    "\t\tindented\twith\ttabs",
    "  \t \n\t  mixed   whitespace \u{a0}\u{3000}here\u{2009}",
    "trailing spaces   ",
    "   leading spaces",
    "It's a dog's life; they're sure we've done what I'll do, and you'd see I'm right.",
    "IT'S LOUD, THEY'RE HERE, WE'VE GOT IT, I'LL GO",
    "don't won't can't shouldn't 'quoted' ''double''",
    "3.14159265358979323846264338327950288419716939937510",
    "1234567890 12 123 1234 12345 123456 0000 007",
    "Prices: $1,234.56, €99.99, ¥10000 and 50% off!",
    "2024-11-26T04:52:11Z and 10:30pm, phone +1 (555) 123-4567",
    "١٢٣٤٥ ٦٧٨٩٠ and ①②③ and ½ ¾",
    "你好，世界！这是一个测试。",
    "東京は日本の首都です。カタカナとひらがな。",
    "안녕하세요, 세계! 한국어 문장입니다.",
    "Привет, мир! Как дела? Ёжик в тумане.",
    "مرحبا بالعالم! هذا اختبار للغة العربية.",
    "שלום עולם",
    "नमस्ते दुनिया, यह एक परीक्षण है।",
    "สวัสดีชาวโลก ภาษาไทย",
    "Ελληνικά: Γειά σου Κόσμε",
    "Zürich, Ærøskøbing, façade, jalapeño, smörgåsbord, Łódź",
    "e\u{301}le\u{300}ve (combining accents) vs élève",
    "Emoji: 😀😃😄 👍🏽 ❤️ 🇫🇷 🇯🇵",
    "Family: 👨‍👩‍👧‍👦 and 👩🏾‍💻 and 🏳️‍🌈",
    "🫨 🪿 new emoji and \u{1FAE9} unassigned",
    "fn main() {\n    let x: Vec<u32> = vec![1, 2, 3];\n    println!(\"{:?}\", x);\n}\n",
    "def f(x):\n    if x > 0:\n        return x ** 2\n    else:\n        return -x  # comment\n",
    "impl<'a> Foo<'a> for &'a str where T: Clone + 'static {}",
    "<html><body class=\"main\"><p>Hi &amp; bye</p></body></html>",
    "SELECT * FROM users WHERE id = 42 AND name LIKE '%bob%';",
    "{\"key\": [1, 2.5, true, null], \"nested\": {\"a\": \"b\"}}",
    "a+b=c; x^2 ~ y|z <=> w $$ @@ ## `code` ~~strike~~",
    "!!!???...,,,;;;:::---___***",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are helpful.<|im_end|>",
    "text<|endoftext|>more text",
    "<|im_start|><|im_start|><|im_end|>",
    "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n",
    "<bos><eos><pad><unk><mask>",
    "<s> </s> <unk>",
    "broken <|im_start tag and <|im_end|",
    "<unused0><unused99>",
    "\u{2581}already\u{2581}escaped\u{2581}",
    "ĠĠ Ċ byte-level lookalikes Ġhello",
    "zero\u{200b}width\u{200d}joiner\u{feff}bom",
    "control \u{1}\u{2}\u{7f} chars",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "                                                                        x",
    "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX. the_quick_brown_fox",
    "camelCaseIdentifier snake_case_identifier SCREAMING_CASE kebab-case",
    "https://example.com/path?query=1&b=2#frag user@example.com",
    "Mixed: English, Русский, 中文, العربية, 日本語, 한국어 in one line 123 😀",
];

/// A deterministic stream of random strings over a pool that mixes all of the above.
fn fuzz_corpus(n: usize) -> Vec<String> {
    const POOL: &[&str] = &[
        "a",
        "Z",
        "é",
        "ß",
        "Ж",
        "ж",
        "中",
        "語",
        "あ",
        "ア",
        "한",
        "ع",
        "ש",
        "न",
        "ि",
        "ก",
        "1",
        "9",
        "٣",
        "½",
        " ",
        "  ",
        "\t",
        "\n",
        "\r\n",
        "\u{a0}",
        "\u{3000}",
        "'s",
        "'T",
        "'re",
        "'",
        "\"",
        ".",
        ",",
        "!",
        "?",
        "-",
        "_",
        "(",
        ")",
        "{",
        "}",
        "<",
        ">",
        "|",
        "$",
        "+",
        "=",
        "^",
        "~",
        "`",
        "#",
        "@",
        "/",
        "\\",
        "😀",
        "👍🏽",
        "👨‍👩‍👧",
        "🇫🇷",
        "\u{301}",
        "\u{200d}",
        "<|im_start|>",
        "<|im_end|>",
        "<end_of_turn>",
        "<start_of_turn>",
        "<unk>",
        "<eos>",
        "the",
        " the",
        "ing",
        "tion",
        "Hello",
        " world",
        "fn ",
        "    ",
        "0x",
        "123",
        "4567",
        "::",
        "->",
        "=>",
        "&&",
        "||",
        "\u{2581}",
        "Ġ",
    ];
    let mut s: u64 = 0x2545_F491_4F6C_DD1D;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    (0..n)
        .map(|_| {
            let len = (rnd() % 40) as usize;
            (0..len)
                .map(|_| POOL[(rnd() % POOL.len() as u64) as usize])
                .collect()
        })
        .collect()
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// CPU time of this thread in ms (wall time misleads on a shared machine).
fn thread_cpu_ms() -> f64 {
    // SAFETY: rusage is plain integers, for which all zeros is valid.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we pass.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    tv(u.ru_utime) + tv(u.ru_stime)
}

struct Report {
    model: &'static str,
    checked: usize,
    matched: usize,
    failures: Vec<String>,
}

impl Report {
    fn check<T: PartialEq + std::fmt::Debug>(
        &mut self,
        what: impl FnOnce() -> String,
        ours: T,
        theirs: T,
    ) {
        self.checked += 1;
        if ours == theirs {
            self.matched += 1;
        } else if self.failures.len() < 40 {
            self.failures.push(format!(
                "{}\n    ours:      {ours:?}\n    llama.cpp: {theirs:?}",
                what()
            ));
        }
    }
}

fn parity(model: &'static str, path: &std::path::Path) -> Report {
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: the model file is not modified while the test runs.
    let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
    let t0 = Instant::now();
    let g = gguf::parse(&map).unwrap();
    let t1 = Instant::now();
    let ours = Tokenizer::from_gguf(&g).unwrap();
    // Best of three builds, wall and CPU time.
    let mut build = t1.elapsed();
    let mut build_cpu = f64::MAX;
    for _ in 0..2 {
        let (t, c) = (Instant::now(), thread_cpu_ms());
        drop(Tokenizer::from_gguf(&g).unwrap());
        build = build.min(t.elapsed());
        build_cpu = build_cpu.min(thread_cpu_ms() - c);
    }
    let (t2, c2) = (Instant::now(), thread_cpu_ms());
    let theirs = LlamaModel::load(
        path,
        &ModelOptions {
            vocab_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let (load, load_cpu) = (t2.elapsed(), thread_cpu_ms() - c2);
    // Timings only mean something in an optimized build; both sides are measured here, in
    // one run (llama.cpp's figure includes its own GGUF parse).
    eprintln!(
        "{model}: {} tokens; ours: gguf parse {:.1} ms + tokenizer {:.1} ms wall ({build_cpu:.1} ms cpu); \
         llama.cpp vocab-only load {:.1} ms wall ({load_cpu:.1} ms cpu)",
        ours.vocab_size(),
        ms(t1 - t0),
        ms(build),
        ms(load),
    );
    let mut r = Report {
        model,
        checked: 0,
        matched: 0,
        failures: Vec::new(),
    };

    // Vocabulary-wide facts.
    r.check(|| "vocab size".into(), ours.vocab_size(), theirs.n_vocab());
    r.check(
        || "bos".into(),
        ours.bos().map(|x| x as i32).unwrap_or(-1),
        theirs.bos(),
    );
    r.check(
        || "eos".into(),
        ours.eos().map(|x| x as i32).unwrap_or(-1),
        theirs.eos(),
    );
    r.check(
        || "add_bos/add_eos".into(),
        (ours.add_bos(), ours.add_eos()),
        (theirs.add_bos(), theirs.add_eos()),
    );
    let n = ours.vocab_size() as u32;
    let eog_ours: Vec<u32> = (0..n).filter(|&i| ours.is_eog(i)).collect();
    let eog_theirs: Vec<u32> = (0..n).filter(|&i| theirs.is_eog(i as i32)).collect();
    r.check(|| "end-of-generation tokens".into(), eog_ours, eog_theirs);
    let mut piece_mismatch = Vec::new();
    for id in 0..n {
        for special in [false, true] {
            if ours.token_to_piece(id, special)
                != theirs
                    .token_to_piece(id as i32, special)
                    .unwrap()
                    .as_slice()
            {
                piece_mismatch.push((id, special));
            }
        }
        if ours.is_control(id) != theirs.is_control(id as i32).unwrap()
            || ours.token_attr(id) != theirs.token_attr(id as i32).unwrap()
        {
            piece_mismatch.push((id, true));
        }
    }
    r.check(
        || "token pieces and attributes, whole vocabulary (first 10 ids that differ)".into(),
        &piece_mismatch[..piece_mismatch.len().min(10)],
        &[][..],
    );

    // Throughput on ~100 KB of mixed text (one string), against llama.cpp in the same run.
    let big: String = CORPUS
        .iter()
        .cycle()
        .take(1500)
        .copied()
        .collect::<Vec<_>>()
        .join("\n");
    let (t, c) = (Instant::now(), thread_cpu_ms());
    let a = ours.encode(&big, true, false);
    let (ours_t, ours_c) = (t.elapsed(), thread_cpu_ms() - c);
    let (t, c) = (Instant::now(), thread_cpu_ms());
    let b: Vec<u32> = theirs
        .tokenize(&big, true, false)
        .unwrap()
        .into_iter()
        .map(|x| x as u32)
        .collect();
    let (their_t, their_c) = (t.elapsed(), thread_cpu_ms() - c);
    eprintln!(
        "{model}: encode {} KB -> {} tokens: ours {:.1} ms wall ({ours_c:.1} ms cpu), llama.cpp {:.1} ms wall ({their_c:.1} ms cpu)",
        big.len() / 1024,
        b.len(),
        ms(ours_t),
        ms(their_t),
    );
    r.check(
        || format!("encode of the {} KB text", big.len() / 1024),
        a.len(),
        b.len(),
    );
    r.check(
        || "encode of the big text (first differing index)".into(),
        a.iter().zip(&b).position(|(x, y)| x != y),
        None,
    );

    // Encoding and decoding.
    // LLPIPE_TOKENIZER_FUZZ=N runs N random strings instead of 400.
    let n_fuzz = std::env::var("LLPIPE_TOKENIZER_FUZZ")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let fuzz = fuzz_corpus(n_fuzz);
    let corpus = CORPUS
        .iter()
        .copied()
        .chain(fuzz.iter().map(String::as_str));
    for text in corpus {
        for (add, parse) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = ours.encode(text, add, parse);
            let b: Vec<u32> = theirs
                .tokenize(text, add, parse)
                .unwrap()
                .into_iter()
                .map(|x| x as u32)
                .collect();
            let same = a == b;
            r.check(
                || format!("encode {text:?} add_special={add} parse_special={parse}"),
                &a,
                &b,
            );
            if !same {
                continue;
            }
            let ids: Vec<i32> = b.iter().map(|&x| x as i32).collect();
            for (rm, unparse) in [(false, false), (true, true)] {
                r.check(
                    || format!("decode of {text:?} remove_special={rm} unparse_special={unparse}"),
                    String::from_utf8_lossy(&ours.decode(&a, rm, unparse)).into_owned(),
                    String::from_utf8_lossy(&theirs.detokenize(&ids, rm, unparse).unwrap())
                        .into_owned(),
                );
            }
            // Streaming the pieces one token at a time gives what llama.cpp's own generation
            // loop prints (its pieces, concatenated; no detokenizer clean-up).
            if !add && !parse {
                let mut s = StreamDecoder::new();
                let mut got = String::new();
                let mut want = Vec::new();
                for &id in &a {
                    got += &s.push(ours.token_to_piece(id, false));
                    want.extend(theirs.token_to_piece(id as i32, false).unwrap());
                }
                got += &s.finish();
                r.check(
                    || format!("streamed decode of {text:?}"),
                    got,
                    String::from_utf8_lossy(&want).into_owned(),
                );
            }
        }
    }
    r
}

fn summarize(r: &Report) -> bool {
    eprintln!(
        "{}: {} of {} checks match llama.cpp",
        r.model, r.matched, r.checked
    );
    for f in &r.failures {
        eprintln!("  MISMATCH {f}");
    }
    r.failures.is_empty()
}

#[test]
fn smollm2_bpe_matches_llama_cpp() {
    let r = parity(
        "SmolLM2 (BPE smollm)",
        &model_path("SmolLM2-135M-Instruct.Q4_1.gguf"),
    );
    assert!(summarize(&r), "{} mismatches", r.checked - r.matched);
}

#[test]
fn gemma3_spm_matches_llama_cpp() {
    let r = parity("Gemma3 (SPM)", &model_path("gemma-3-270m-q4_k_m.gguf"));
    assert!(summarize(&r), "{} mismatches", r.checked - r.matched);
}

/// The reference figures of MODELS.md, independently of llama.cpp.
#[test]
fn published_tokenizations() {
    for (file, text, want) in [
        (
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "The capital of France is",
            &[504u32, 3575, 282, 4649, 314][..],
        ),
        (
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "Hello world! How are you today? 12345 naïve café",
            &[
                19556, 905, 17, 1073, 359, 346, 1834, 47, 216, 33, 34, 35, 36, 37, 15486, 46494,
                37366,
            ],
        ),
        (
            "gemma-3-270m-q4_k_m.gguf",
            "The capital of France is",
            &[2, 818, 5279, 529, 7001, 563],
        ),
        (
            "gemma-3-270m-q4_k_m.gguf",
            "Hello world! How are you today? 12345 naïve café",
            &[
                2, 9259, 1902, 236888, 2088, 659, 611, 3124, 236881, 236743, 236770, 236778,
                236800, 236812, 236810, 120362, 33443,
            ],
        ),
    ] {
        let f = std::fs::File::open(model_path(file)).unwrap();
        // SAFETY: the model file is not modified while the test runs.
        let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
        let tok = Tokenizer::from_gguf(&gguf::parse(&map).unwrap()).unwrap();
        assert_eq!(tok.encode(text, true, false), want, "{file}: {text:?}");
    }
}

// ---- other pre-tokenizers on SmolLM2's vocabulary ----
//
// No real model here uses the gpt2, llama3, qwen2 or default pre-tokenizers, so these tests
// write a weightless GGUF: SmolLM2's metadata with `tokenizer.ggml.pre` replaced, which
// llama.cpp loads vocab-only. Same corpus, same comparison.

fn type_id(t: gguf::ValueType) -> u32 {
    (0..=12)
        .find(|&i| gguf::ValueType::from_id(i) == Some(t))
        .expect("known type")
}

fn write_value(out: &mut Vec<u8>, v: &gguf::Value<'_>) {
    use gguf::Value::*;
    match v {
        U8(x) => out.push(*x),
        I8(x) => out.push(*x as u8),
        U16(x) => out.extend(x.to_le_bytes()),
        I16(x) => out.extend(x.to_le_bytes()),
        U32(x) => out.extend(x.to_le_bytes()),
        I32(x) => out.extend(x.to_le_bytes()),
        F32(x) => out.extend(x.to_le_bytes()),
        Bool(x) => out.push(*x as u8),
        U64(x) => out.extend(x.to_le_bytes()),
        I64(x) => out.extend(x.to_le_bytes()),
        F64(x) => out.extend(x.to_le_bytes()),
        Str(s) => {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        }
        Array(a) => {
            out.extend(type_id(a.elem_type()).to_le_bytes());
            out.extend((a.len() as u64).to_le_bytes());
            // Fixed-size and string elements are stored as they are in the file.
            assert!(a.arrays().is_empty(), "nested arrays are not copied");
            out.extend(a.raw_bytes());
        }
    }
}

/// SmolLM2's metadata and no tensors, with `tokenizer.ggml.pre` set to `pre`.
fn smollm_vocab_with_pre(pre: &str) -> tempfile::NamedTempFile {
    let f = std::fs::File::open(model_path("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    // SAFETY: the model file is not modified while the test runs.
    let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
    let g = gguf::parse(&map).unwrap();
    let mut out = Vec::new();
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend(0u64.to_le_bytes());
    out.extend((g.metadata().len() as u64).to_le_bytes());
    for (k, v) in g.metadata() {
        out.extend((k.len() as u64).to_le_bytes());
        out.extend(k.as_bytes());
        let v = if *k == "tokenizer.ggml.pre" {
            gguf::Value::Str(pre)
        } else {
            v.clone()
        };
        out.extend(type_id(v.value_type()).to_le_bytes());
        write_value(&mut out, &v);
    }
    out.resize(out.len().div_ceil(32) * 32, 0);
    let mut tmp = tempfile::Builder::new().suffix(".gguf").tempfile().unwrap();
    std::io::Write::write_all(&mut tmp, &out).unwrap();
    tmp
}

fn pre_parity(pre: &'static str) {
    let tmp = smollm_vocab_with_pre(pre);
    let r = parity(pre, tmp.path());
    assert!(summarize(&r), "{} mismatches", r.checked - r.matched);
}

#[test]
fn gpt2_pre_tokenizer_matches_llama_cpp() {
    pre_parity("gpt-2");
}

#[test]
fn llama3_pre_tokenizer_matches_llama_cpp() {
    pre_parity("llama-bpe");
}

#[test]
fn qwen2_pre_tokenizer_matches_llama_cpp() {
    pre_parity("qwen2");
}

#[test]
fn default_pre_tokenizer_matches_llama_cpp() {
    pre_parity("default");
}
