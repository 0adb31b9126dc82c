//! Pre-tokenizers: how BPE text is cut into words before merging, per `tokenizer.ggml.pre`.
//!
//! llama.cpp describes each pre-tokenizer as a list of regexes applied one after the other:
//! each regex cuts every current piece into its matches and the text between them (both
//! kept). The patterns need lookahead (`\s+(?!\S)`), which the `regex` crate lacks, so
//! every step here is a hand-written matcher with llama.cpp's exact behaviour, including
//! the corners where its fast paths differ from a real regex engine (e.g. a lone space
//! before an unassigned code point).

use super::unicode::{flags, Flags};

/// A pre-tokenizer family (several `tokenizer.ggml.pre` names share one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizer {
    /// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`.
    Gpt2,
    /// StarCoder/SmolLM: each digit alone (`\p{N}`), then GPT-2.
    Starcoder,
    /// Llama 3: case-insensitive contractions, `[^\r\n\p{L}\p{N}]?\p{L}+`, `\p{N}{1,3}`,
    /// ` ?[^\s\p{L}\p{N}]+[\r\n]*`, `\s*[\r\n]+`, `\s+(?!\S)`, `\s+`.
    Llama3,
    /// Qwen 2: as Llama 3 but one digit per word (`\p{N}`).
    Qwen2,
    /// llama.cpp's default: punctuation runs, GPT-2, number runs, then `[0-9]{3}`.
    Default,
}

/// One step of a pre-tokenizer.
#[derive(Clone, Copy)]
enum Step {
    /// The GPT-2 pattern.
    Gpt2,
    /// The Llama 3 pattern with at most this many digits per number word.
    Llama3(usize),
    /// `\p{N}`: every number character alone.
    EachNumber,
    /// `\p{N}+`.
    NumberRuns,
    /// `[\p{P}\$\+<=>\^~\|]+`.
    PunctRuns,
    /// `[0-9][0-9][0-9]`.
    ThreeDigits,
}

impl PreTokenizer {
    /// The family of a `tokenizer.ggml.pre` value (empty means `default`), with whether
    /// llama.cpp cleans spaces on detokenize (`clean_spaces`), and `None` for names this
    /// tokenizer does not implement.
    pub fn from_name(name: &str) -> Option<(PreTokenizer, bool)> {
        use PreTokenizer::*;
        Some(match name {
            "" | "default" => (Default, true),
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
            | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" | "jina-v1-en"
            | "jina-v2-code" | "roberta-bpe" | "exaone4" | "mpt" | "olmo" | "jais" => (Gpt2, true),
            "trillion" | "granite-docling" => (Gpt2, false),
            "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
                (Starcoder, true)
            }
            "smollm" | "command-r" => (Starcoder, false),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" | "chatglm-bpe"
            | "glm4" | "glm5" => (Llama3, true),
            "stablelm2" | "megrez" => (Qwen2, true),
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "hunyuan" | "solar-open"
            | "grok-2" => (Qwen2, false),
            _ => return None,
        })
    }

    fn steps(self) -> &'static [Step] {
        match self {
            PreTokenizer::Gpt2 => &[Step::Gpt2],
            PreTokenizer::Starcoder => &[Step::EachNumber, Step::Gpt2],
            PreTokenizer::Llama3 => &[Step::Llama3(3)],
            PreTokenizer::Qwen2 => &[Step::Llama3(1)],
            PreTokenizer::Default => &[
                Step::PunctRuns,
                Step::Gpt2,
                Step::NumberRuns,
                Step::ThreeDigits,
            ],
        }
    }

    /// Cuts `text` into words, appended to `out` in order; their concatenation is `text`.
    pub fn split<'t>(self, text: &'t str, out: &mut Vec<&'t str>) {
        let chars = Chars::new(text);
        let mut pieces = vec![(0, chars.len())];
        let mut next = Vec::new();
        for &step in self.steps() {
            next.clear();
            for &(a, b) in &pieces {
                let mut cut = Cutter {
                    start: a,
                    out: &mut next,
                };
                let view = View { c: &chars, end: b };
                match step {
                    Step::Gpt2 => gpt2(&view, a, &mut cut),
                    Step::Llama3(max_digits) => llama3(&view, a, max_digits, &mut cut),
                    Step::EachNumber => {
                        matches(&view, a, &mut cut, |v, p| v.f(p).number().then_some(1))
                    }
                    Step::NumberRuns => {
                        matches(&view, a, &mut cut, |v, p| run(v, p, |f, _| f.number()))
                    }
                    Step::PunctRuns => matches(&view, a, &mut cut, |v, p| {
                        run(v, p, |f, c| {
                            f.punct() || matches!(c, '$' | '+' | '<' | '=' | '>' | '^' | '~' | '|')
                        })
                    }),
                    Step::ThreeDigits => matches(&view, a, &mut cut, |v, p| {
                        (0..3)
                            .all(|k| v.c(p + k).is_some_and(|c| c.is_ascii_digit()))
                            .then_some(3)
                    }),
                }
                cut.finish(b);
            }
            std::mem::swap(&mut pieces, &mut next);
        }
        out.extend(
            pieces
                .iter()
                .map(|&(a, b)| &text[chars.offs[a]..chars.offs[b]]),
        );
    }
}

// ---- text as code points ----

struct Chars {
    chars: Vec<char>,
    flags: Vec<Flags>,
    /// Byte offset of each char, plus the text length at the end.
    offs: Vec<usize>,
}

impl Chars {
    fn new(text: &str) -> Chars {
        let mut chars = Vec::with_capacity(text.len());
        let mut offs = Vec::with_capacity(text.len() + 1);
        for (i, c) in text.char_indices() {
            chars.push(c);
            offs.push(i);
        }
        offs.push(text.len());
        let flags = chars.iter().map(|&c| flags(c)).collect();
        Chars { chars, flags, offs }
    }
    fn len(&self) -> usize {
        self.chars.len()
    }
}

/// The chars of one piece: positions past `end` read as nothing (no char, empty flags).
struct View<'a> {
    c: &'a Chars,
    end: usize,
}

impl View<'_> {
    fn c(&self, p: usize) -> Option<char> {
        (p < self.end).then(|| self.c.chars[p])
    }
    fn is(&self, p: usize, want: char) -> bool {
        self.c(p) == Some(want)
    }
    fn f(&self, p: usize) -> Flags {
        if p < self.end {
            self.c.flags[p]
        } else {
            Flags::default()
        }
    }
}

/// Collects the words of one piece as char ranges.
struct Cutter<'a> {
    start: usize,
    out: &'a mut Vec<(usize, usize)>,
}

impl Cutter<'_> {
    /// Ends the current word at `end` (nothing if empty).
    fn cut(&mut self, end: usize) {
        if end > self.start {
            self.out.push((self.start, end));
        }
        self.start = end;
    }
    fn finish(&mut self, end: usize) {
        self.cut(end);
    }
}

/// Length of the run of chars from `p` that satisfy `ok` (`None` if empty).
fn run(v: &View, p: usize, ok: impl Fn(Flags, char) -> bool) -> Option<usize> {
    let mut q = p;
    while let Some(c) = v.c(q) {
        if !ok(v.f(q), c) {
            break;
        }
        q += 1;
    }
    (q > p).then_some(q - p)
}

/// Regex-iterator semantics: scan left to right; where `at` finds a match, the text before
/// it and the match become words.
fn matches(v: &View, a: usize, cut: &mut Cutter, at: impl Fn(&View, usize) -> Option<usize>) {
    let mut p = a;
    while p < v.end {
        match at(v, p) {
            Some(n) => {
                cut.cut(p);
                cut.cut(p + n);
                p += n;
            }
            None => p += 1,
        }
    }
}

fn is_contraction(v: &View, p: usize, fold: bool) -> Option<usize> {
    if !v.is(p, '\'') || p + 1 >= v.end {
        return None;
    }
    let low = |q: usize| {
        v.c(q)
            .map(|c| if fold { c.to_ascii_lowercase() } else { c })
    };
    if matches!(low(p + 1), Some('s' | 't' | 'm' | 'd')) {
        return Some(2);
    }
    if p + 2 < v.end {
        if let (Some(x), Some(y)) = (low(p + 1), low(p + 2)) {
            if matches!((x, y), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                return Some(3);
            }
        }
    }
    None
}

/// Counts whitespace from `p`.
fn count_ws(v: &View, p: usize) -> usize {
    let mut n = 0;
    while v.f(p + n).whitespace() {
        n += 1;
    }
    n
}

fn not_ws_l_n(f: Flags) -> bool {
    !(f.whitespace() || f.letter() || f.number())
}

// ---- GPT-2 ----

fn gpt2(v: &View, a: usize, cut: &mut Cutter) {
    let mut p = a;
    while p < v.end {
        if let Some(n) = is_contraction(v, p, false) {
            p += n;
            cut.cut(p);
            continue;
        }
        let space = v.is(p, ' ');
        // ` ?X+` classes look at the char after an optional space.
        let f2 = if space { v.f(p + 1) } else { v.f(p) };
        if f2.letter() || f2.number() {
            let letter = f2.letter();
            p += space as usize;
            while if letter {
                v.f(p).letter()
            } else {
                v.f(p).number()
            } {
                p += 1;
            }
            cut.cut(p);
            continue;
        }
        if not_ws_l_n(f2) && f2.any() {
            p += space as usize;
            while not_ws_l_n(v.f(p)) && v.f(p).any() {
                p += 1;
            }
            cut.cut(p);
            continue;
        }
        let n = count_ws(v, p);
        if n > 1 && p + n < v.end {
            // `\s+(?!\S)`: leave the last space to start the next word.
            p += n - 1;
        } else if n > 0 {
            p += n;
        } else {
            p += 1;
        }
        cut.cut(p);
    }
}

// ---- Llama 3 / Qwen 2 ----

fn llama3(v: &View, a: usize, max_digits: usize, cut: &mut Cutter) {
    let mut p = a;
    while p < v.end {
        if let Some(n) = is_contraction(v, p, true) {
            p += n;
            cut.cut(p);
            continue;
        }
        let c = v.c(p).expect("p < end");
        let f = v.f(p);
        // `[^\r\n\p{L}\p{N}]?\p{L}+`
        if !(c == '\r' || c == '\n' || f.number()) && (f.letter() || v.f(p + 1).letter()) {
            p += 1;
            while v.f(p).letter() {
                p += 1;
            }
            cut.cut(p);
            continue;
        }
        // `\p{N}{1,max}`
        if f.number() {
            let mut ini = p;
            while v.f(p).number() {
                p += 1;
                if p - ini >= max_digits {
                    cut.cut(p);
                    ini = p;
                }
            }
            cut.cut(p);
            continue;
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*` (llama.cpp tests the first char's own flags here)
        let f2 = if c == ' ' { v.f(p + 1) } else { f };
        if not_ws_l_n(f2) && f.any() {
            p += (c == ' ') as usize;
            while not_ws_l_n(v.f(p)) && v.f(p).any() {
                p += 1;
            }
            while v.is(p, '\r') || v.is(p, '\n') {
                p += 1;
            }
            cut.cut(p);
            continue;
        }
        let mut n = 0;
        let mut last_nl = None;
        while v.f(p + n).whitespace() {
            if v.is(p + n, '\r') || v.is(p + n, '\n') {
                last_nl = Some(p + n + 1);
            }
            n += 1;
        }
        if let Some(e) = last_nl {
            // `\s*[\r\n]+`
            p = e;
        } else if n > 1 && p + n < v.end {
            p += n - 1;
        } else if n > 0 {
            p += n;
        } else {
            p += 1;
        }
        cut.cut(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(pre: PreTokenizer, s: &str) -> Vec<&str> {
        let mut out = Vec::new();
        pre.split(s, &mut out);
        assert_eq!(out.concat(), s);
        out
    }

    #[test]
    fn gpt2_words() {
        let g = PreTokenizer::Gpt2;
        assert_eq!(
            split(g, "Hello world! It's 2024"),
            ["Hello", " world", "!", " It", "'s", " 2024"]
        );
        assert_eq!(split(g, "a   b"), ["a", "  ", " b"]);
        assert_eq!(split(g, "a  \n"), ["a", "  \n"]);
        assert_eq!(split(g, "x ...y"), ["x", " ...", "y"]);
        assert_eq!(
            split(g, "I'LL"),
            ["I", "'", "LL"],
            "gpt2 contractions are case-sensitive"
        );
        assert_eq!(split(g, ""), Vec::<&str>::new());
    }

    #[test]
    fn starcoder_splits_digits_first() {
        let s = PreTokenizer::Starcoder;
        assert_eq!(
            split(s, "ab 12345 c"),
            ["ab", " ", "1", "2", "3", "4", "5", " c"]
        );
    }

    #[test]
    fn llama3_words() {
        let l = PreTokenizer::Llama3;
        assert_eq!(
            split(l, "I'LL pay 1234567!!\n\n  x"),
            ["I", "'LL", " pay", " ", "123", "456", "7", "!!\n\n", " ", " x"]
        );
        assert_eq!(split(l, "\tfoo"), ["\tfoo"]);
        assert_eq!(split(l, "a \n \n b"), ["a", " \n \n", " b"]);
        assert_eq!(
            split(PreTokenizer::Qwen2, "x 123"),
            ["x", " ", "1", "2", "3"]
        );
    }

    #[test]
    fn default_cuts_punctuation_numbers_and_triples() {
        let d = PreTokenizer::Default;
        assert_eq!(split(d, "a+b 12345"), ["a", "+", "b", " ", "123", "45"]);
    }

    #[test]
    fn names_map_to_families() {
        assert_eq!(
            PreTokenizer::from_name("smollm"),
            Some((PreTokenizer::Starcoder, false))
        );
        assert_eq!(
            PreTokenizer::from_name("llama-bpe"),
            Some((PreTokenizer::Llama3, true))
        );
        assert_eq!(
            PreTokenizer::from_name("qwen2"),
            Some((PreTokenizer::Qwen2, false))
        );
        assert_eq!(PreTokenizer::from_name("deepseek-llm"), None);
    }
}
