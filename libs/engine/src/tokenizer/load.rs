//! Building a [`Tokenizer`] from metadata: llama.cpp's defaults per tokenizer model, its
//! special-token detection by text, and its per-model attribute fix-ups.

use super::table::{Arena, Dup, Index, Trie};
use super::{unicode, Attr, Error, ErrorKind, Kind, PreTokenizer, Tokenizer};

// ---- input ----

/// Tokenizer metadata, as read from GGUF (or written by hand in tests).
#[derive(Clone, Debug, Default)]
pub struct Vocab<'a> {
    /// `tokenizer.ggml.model`: `"gpt2"` (BPE) or `"llama"` (SPM).
    pub model: &'a str,
    /// `tokenizer.ggml.pre` (empty when absent).
    pub pre: &'a str,
    /// `tokenizer.ggml.tokens`, indexed by id.
    pub tokens: Vec<&'a str>,
    /// `tokenizer.ggml.scores` (SPM merge priorities).
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.token_type` (1 normal, 2 unknown, 3 control, 4 user-defined,
    /// 5 unused, 6 byte); all normal when absent.
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges`, `"left right"` in rank order (BPE).
    pub merges: Vec<&'a str>,
    /// Special token ids from metadata.
    pub ids: SpecialIds,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix`.
    pub add_space_prefix: Option<bool>,
    /// `general.name` (llama.cpp sets a few token attributes by model name).
    pub name: &'a str,
}

/// Special token ids (`tokenizer.ggml.*_token_id`); `None` when absent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecialIds {
    /// Beginning of sequence.
    pub bos: Option<u32>,
    /// End of sequence.
    pub eos: Option<u32>,
    /// End of turn.
    pub eot: Option<u32>,
    /// End of message.
    pub eom: Option<u32>,
    /// Unknown.
    pub unk: Option<u32>,
    /// Separator.
    pub sep: Option<u32>,
    /// Padding.
    pub pad: Option<u32>,
    /// Mask.
    pub mask: Option<u32>,
    /// Fill-in-the-middle prefix.
    pub fim_pre: Option<u32>,
    /// Fill-in-the-middle suffix.
    pub fim_suf: Option<u32>,
    /// Fill-in-the-middle middle.
    pub fim_mid: Option<u32>,
    /// Fill-in-the-middle padding.
    pub fim_pad: Option<u32>,
    /// Fill-in-the-middle repository.
    pub fim_rep: Option<u32>,
    /// Fill-in-the-middle file separator.
    pub fim_sep: Option<u32>,
}

impl<'a> Vocab<'a> {
    /// Reads the `tokenizer.*` keys of a GGUF file (borrowing its strings).
    pub fn from_gguf(g: &gguf::Gguf<'a>) -> Result<Vocab<'a>, Error> {
        const TOKENS: &str = "tokenizer.ggml.tokens";
        let model = g
            .get_str("tokenizer.ggml.model")
            .ok_or(ErrorKind::Missing("tokenizer.ggml.model"))?;
        let tokens = g.get_str_array(TOKENS).ok_or(ErrorKind::Missing(TOKENS))?;
        let scores = g.get_f32_array("tokenizer.ggml.scores").or_else(|| {
            g.get_i32_array("tokenizer.ggml.scores")
                .map(|v| v.into_iter().map(|x| x as f32).collect())
        });
        let id = |k: &str| g.get_u64(k).and_then(|v| u32::try_from(v).ok());
        let ids = SpecialIds {
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            eot: id("tokenizer.ggml.eot_token_id"),
            eom: id("tokenizer.ggml.eom_token_id"),
            unk: id("tokenizer.ggml.unknown_token_id"),
            sep: id("tokenizer.ggml.seperator_token_id"),
            pad: id("tokenizer.ggml.padding_token_id"),
            mask: id("tokenizer.ggml.mask_token_id"),
            fim_pre: id("tokenizer.ggml.fim_pre_token_id").or(id("tokenizer.ggml.prefix_token_id")),
            fim_suf: id("tokenizer.ggml.fim_suf_token_id").or(id("tokenizer.ggml.suffix_token_id")),
            fim_mid: id("tokenizer.ggml.fim_mid_token_id").or(id("tokenizer.ggml.middle_token_id")),
            fim_pad: id("tokenizer.ggml.fim_pad_token_id"),
            fim_rep: id("tokenizer.ggml.fim_rep_token_id"),
            fim_sep: id("tokenizer.ggml.fim_sep_token_id"),
        };
        Ok(Vocab {
            model,
            pre: g.get_str("tokenizer.ggml.pre").unwrap_or(""),
            tokens,
            scores,
            token_types: g.get_i32_array("tokenizer.ggml.token_type"),
            merges: g.get_str_array("tokenizer.ggml.merges").unwrap_or_default(),
            ids,
            add_bos: g.get_bool("tokenizer.ggml.add_bos_token"),
            add_eos: g.get_bool("tokenizer.ggml.add_eos_token"),
            add_space_prefix: g.get_bool("tokenizer.ggml.add_space_prefix"),
            name: g.get_str("general.name").unwrap_or(""),
        })
    }
}

/// Texts llama.cpp takes for an end-of-turn token when the metadata names none.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
/// Texts llama.cpp always treats as end of generation.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

impl Tokenizer {
    /// Builds the tokenizer of a GGUF file.
    pub fn from_gguf(g: &gguf::Gguf<'_>) -> Result<Tokenizer, Error> {
        Tokenizer::new(&Vocab::from_gguf(g)?)
    }

    /// Builds a tokenizer from metadata, applying llama.cpp's defaults and fix-ups.
    pub fn new(v: &Vocab<'_>) -> Result<Tokenizer, Error> {
        let n = v.tokens.len();
        if n == 0 || n > i32::MAX as usize {
            return Err(ErrorKind::Invalid {
                key: "tokenizer.ggml.tokens",
                why: format!("{n} tokens"),
            }
            .into());
        }
        let (kind, clean_spaces) = match v.model {
            "llama" => (Kind::Spm, false),
            "gpt2" => {
                let (pre, clean) = PreTokenizer::from_name(v.pre)
                    .ok_or_else(|| ErrorKind::UnsupportedPre(v.pre.into()))?;
                (Kind::Bpe(pre), clean)
            }
            m => return Err(ErrorKind::UnsupportedModel(m.into()).into()),
        };
        // Llama 3 style vocabularies take whole words that are tokens without merging, and
        // add BOS unless the metadata says otherwise.
        let llama3_names = matches!(
            v.pre,
            "llama3"
                | "llama-v3"
                | "llama-bpe"
                | "falcon3"
                | "falcon-h1"
                | "pixtral"
                | "midm-2.0"
                | "lfm2"
                | "jina-v5-nano"
        );
        let ignore_merges = llama3_names || matches!(v.pre, "glm4" | "glm5");

        // Token texts (an empty text becomes "[EMPTY_i]" as in llama.cpp), scores, attributes.
        let total: usize = v.tokens.iter().map(|t| t.len()).sum();
        let merge_bytes: usize = v.merges.iter().map(|m| m.len()).sum();
        // Arena offsets are u32 (and "[EMPTY_i]" texts may add a little).
        for (key, bytes) in [
            ("tokenizer.ggml.tokens", total + 16 * n),
            ("tokenizer.ggml.merges", merge_bytes),
        ] {
            if bytes > u32::MAX as usize / 2 {
                return Err(ErrorKind::Invalid {
                    key,
                    why: format!("{bytes} bytes of text"),
                }
                .into());
            }
        }
        let mut texts = Arena::with_capacity(n, total);
        for (i, t) in v.tokens.iter().enumerate() {
            if t.is_empty() {
                texts.push(format!("[EMPTY_{i}]").as_bytes());
            } else {
                texts.push(t.as_bytes());
            }
        }
        let index = Index::build(&texts, Dup::Last);
        let scores = match &v.scores {
            Some(s) if s.len() < n => {
                return Err(ErrorKind::Invalid {
                    key: "tokenizer.ggml.scores",
                    why: format!("{} scores for {n} tokens", s.len()),
                }
                .into())
            }
            Some(s) => s[..n].to_vec(),
            None => vec![0.0; n],
        };
        let mut attrs = match &v.token_types {
            Some(t) if t.len() < n => {
                return Err(ErrorKind::Invalid {
                    key: "tokenizer.ggml.token_type",
                    why: format!("{} types for {n} tokens", t.len()),
                }
                .into())
            }
            Some(t) => t[..n].iter().map(|&x| Attr::from_token_type(x)).collect(),
            None => vec![Attr::NORMAL; n],
        };

        let mut merges =
            Arena::with_capacity(v.merges.len(), v.merges.iter().map(|m| m.len()).sum());
        for m in &v.merges {
            merges.push(m.as_bytes());
        }
        let merge_index = Index::build(&merges, Dup::First);

        // Special ids: defaults per model, then metadata when in range.
        let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
        let mut ids = match kind {
            Kind::Spm => SpecialIds {
                bos: Some(1),
                eos: Some(2),
                unk: Some(0),
                ..SpecialIds::default()
            },
            Kind::Bpe(_) => SpecialIds {
                bos: Some(11),
                eos: Some(11),
                ..SpecialIds::default()
            },
        };
        for (slot, meta) in [
            (&mut ids.bos, v.ids.bos),
            (&mut ids.eos, v.ids.eos),
            (&mut ids.eot, v.ids.eot),
            (&mut ids.eom, v.ids.eom),
            (&mut ids.unk, v.ids.unk),
            (&mut ids.sep, v.ids.sep),
            (&mut ids.pad, v.ids.pad),
            (&mut ids.mask, v.ids.mask),
            (&mut ids.fim_pre, v.ids.fim_pre),
            (&mut ids.fim_suf, v.ids.fim_suf),
            (&mut ids.fim_mid, v.ids.fim_mid),
            (&mut ids.fim_pad, v.ids.fim_pad),
            (&mut ids.fim_rep, v.ids.fim_rep),
            (&mut ids.fim_sep, v.ids.fim_sep),
        ] {
            *slot = in_range(*slot);
            if let Some(m) = in_range(meta) {
                *slot = Some(m);
            }
        }
        if v.model == "gpt2" && v.pre == "chatglm-bpe" && v.ids.bos.is_none() {
            ids.bos = None;
        }
        let add_bos = v
            .add_bos
            .unwrap_or(matches!(kind, Kind::Spm) || llama3_names);
        let add_eos = v.add_eos.unwrap_or(false);
        let add_space_prefix = v.add_space_prefix.unwrap_or(matches!(kind, Kind::Spm));

        let lookup = |s: &str| index.get(&texts, s.as_bytes());
        let set_control = |attrs: &mut Vec<u32>, id: u32| attrs[id as usize] |= Attr::CONTROL;
        // Special tokens found by text when the metadata names none. llama.cpp walks a hash
        // map, so which of several candidates wins is unspecified there; we take the lowest id.
        let detect = |slot: &mut Option<u32>, cands: &[&str], attrs: &mut Vec<u32>| {
            if slot.is_none() {
                if let Some(id) = cands.iter().filter_map(|c| lookup(c)).min() {
                    *slot = Some(id);
                    set_control(attrs, id);
                }
            }
        };
        detect(&mut ids.eot, EOT_TEXTS, &mut attrs);
        detect(&mut ids.eom, &["<|eom_id|>"], &mut attrs);
        detect(&mut ids.fim_pre, FIM_PRE_TEXTS, &mut attrs);
        detect(&mut ids.fim_suf, FIM_SUF_TEXTS, &mut attrs);
        detect(&mut ids.fim_mid, FIM_MID_TEXTS, &mut attrs);
        detect(&mut ids.fim_pad, FIM_PAD_TEXTS, &mut attrs);
        detect(&mut ids.fim_rep, FIM_REP_TEXTS, &mut attrs);
        detect(&mut ids.fim_sep, FIM_SEP_TEXTS, &mut attrs);
        // Control tokens named "unused" are unused.
        for (i, a) in attrs.iter_mut().enumerate() {
            if *a & Attr::CONTROL != 0 && texts.get(i).windows(6).any(|w| w == b"unused") {
                *a |= Attr::UNUSED;
            }
        }
        // End of generation: FIM pad/repo/sep, well-known texts, EOS, EOT, EOM.
        let mut eog: Vec<u32> = [ids.fim_pad, ids.fim_rep, ids.fim_sep]
            .into_iter()
            .flatten()
            .collect();
        for t in EOG_TEXTS {
            if let Some(id) = lookup(t) {
                eog.push(id);
                set_control(&mut attrs, id);
            }
        }
        for t in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(id) = lookup(t) {
                attrs[id as usize] = Attr::USER_DEFINED;
            }
        }
        eog.extend([ids.eos, ids.eot, ids.eom].into_iter().flatten());
        eog.sort_unstable();
        eog.dedup();
        let has = |eog: &[u32], t: &str| eog.iter().any(|&i| texts.get(i as usize) == t.as_bytes());
        // gpt-oss / solar-open: "<|end|>" is not the end when "<|return|>"/"<|call|>" exist.
        if (has(&eog, "<|return|>") && has(&eog, "<|call|>")
            || has(&eog, "<|calls|>") && has(&eog, "<|flush|>"))
            && has(&eog, "<|end|>")
        {
            if let Some(end) = eog
                .iter()
                .position(|&i| texts.get(i as usize) == b"<|end|>")
            {
                attrs[eog[end] as usize] = Attr::USER_DEFINED;
                eog.remove(end);
            }
        }
        if (has(&eog, "<|tool_response>") || has(&eog, "<|plamo:eos|>")) && has(&eog, "</s>") {
            if let Some(s) = eog.iter().position(|&i| texts.get(i as usize) == b"</s>") {
                attrs[eog[s] as usize] = Attr::NORMAL;
                eog.remove(s);
            }
        }

        // Special tokens in matching order: longest first (ties: lowest id; llama.cpp's
        // std::sort leaves ties in an unspecified order).
        let mut special: Vec<u32> = (0..n as u32)
            .filter(|&i| {
                attrs[i as usize] & (Attr::CONTROL | Attr::USER_DEFINED | Attr::UNKNOWN) != 0
            })
            .collect();
        special.sort_by_key(|&i| std::cmp::Reverse(texts.get(i as usize).len()));

        // Per-model attributes llama.cpp sets by name.
        let name = v.name.to_lowercase();
        if ["jina-v2-de", "jina-v2-es", "jina-v2-code", "mmbert"]
            .iter()
            .any(|p| v.pre.contains(p))
        {
            if let Some(id) = lookup("<mask>") {
                attrs[id as usize] |= Attr::LSTRIP;
            }
        } else if name.contains("phi-3") || name.contains("phi3") {
            for &id in &special {
                attrs[id as usize] |= Attr::RSTRIP;
            }
            if let Some(id) = lookup("</s>") {
                attrs[id as usize] |= Attr::RSTRIP;
            }
            for t in ["<unk>", "<s>", "<|endoftext|>"] {
                if let Some(id) = lookup(t) {
                    attrs[id as usize] &= !Attr::RSTRIP;
                }
            }
        } else if name.contains("modern-bert") {
            if let Some(id) = lookup("[MASK]") {
                attrs[id as usize] |= Attr::LSTRIP;
            }
        }

        let mut special_trie = Trie::new();
        for &id in &special {
            special_trie.insert(texts.get(id as usize), id);
        }

        let byte_chars = unicode::byte_to_char_table();
        let mut byte_tokens = [None; 256];
        for (b, slot) in byte_tokens.iter_mut().enumerate() {
            *slot = match kind {
                Kind::Spm => {
                    lookup(&format!("<0x{b:02X}>")).or_else(|| index.get(&texts, &[b as u8]))
                }
                Kind::Bpe(_) => lookup(byte_chars[b].encode_utf8(&mut [0; 4])),
            };
        }

        let mut tok = Tokenizer {
            kind,
            texts,
            index,
            scores,
            attrs,
            merges,
            merge_index,
            pieces: Arena::default(),
            special,
            special_trie,
            byte_tokens,
            byte_chars,
            ids,
            eog,
            add_bos,
            add_eos,
            add_space_prefix,
            ignore_merges,
            clean_spaces,
        };
        let inv = unicode::char_to_byte_table(&tok.byte_chars);
        let mut pieces = Arena::with_capacity(n, total);
        for id in 0..n {
            pieces.push_with(|out| tok.render_piece(id, &inv, out));
        }
        tok.pieces = pieces;
        Ok(tok)
    }
}
