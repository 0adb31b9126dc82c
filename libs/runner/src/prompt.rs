//! The prompt a run feeds the model: the conversation rendered with the
//! model's chat template (`template` crate), then tokenized so that only the
//! template's own text may hold control tokens.
//!
//! Tokenizing is llama.cpp's `common_tokenize(prompt, add_special = true,
//! parse_special = true)` on the rendered text, with one difference: a
//! control token's text inside user content (a prompt holding `<|im_end|>`)
//! stays characters. Plain text is joined across trusted/untrusted seams
//! before it is encoded, so a seam inside a word or after a template's space
//! (`[INST] ` + `Hi`) tokenizes as the whole text would.

use engine::tokenizer::{Attr, Tokenizer};
use template::{render_chat, ChatTemplate, Message, Rendered, Request, Segment};

use crate::InferOptions;

/// Renders the prompt of `opts`: with `--raw`, the prompt as it is
/// (untrusted); else a [`Request`] of the system prompt, the earlier
/// messages and the prompt as the last user message, rendered with the
/// template layer if any, else `gguf_template` (the GGUF's
/// `tokenizer.chat_template`), else the prompt as it is.
pub fn render_prompt(
    tok: &Tokenizer,
    gguf_template: Option<&str>,
    opts: &InferOptions,
) -> Result<Rendered, String> {
    if opts.raw {
        return Ok(Rendered {
            segments: vec![Segment {
                text: opts.prompt.clone(),
                trusted: false,
            }],
        });
    }
    let mut messages = opts.messages.clone();
    messages.push(Message::user(&opts.prompt));
    let req = request(tok, opts, messages);
    let tmpl = ChatTemplate::choose(opts.template.as_deref(), gguf_template);
    render_chat(&tmpl, &req).map_err(|e| {
        format!("cannot render the chat template: {e} (--raw sends the prompt as it is)")
    })
}

/// What the template renders for `opts`: `messages` after its system
/// prompt, its tools, suffix and `think`, and the tokenizer's BOS and EOS
/// texts.
pub(crate) fn request(tok: &Tokenizer, opts: &InferOptions, messages: Vec<Message>) -> Request {
    let text = |id: Option<u32>| {
        id.and_then(|i| tok.token_text(i))
            .unwrap_or_default()
            .to_string()
    };
    Request {
        messages,
        system: opts.system.clone(),
        tools: opts.tools.clone(),
        suffix: opts.suffix.clone(),
        think: opts.think,
        think_level: opts.think_level.clone(),
        bos_token: text(tok.bos()),
        eos_token: text(tok.eos()),
        ..Request::default()
    }
}

/// Tokenizes a rendered prompt. BOS (EOS) is added when the tokenizer asks
/// for it, unless the template already wrote it at the start (end), as
/// llama.cpp's chat code does; control tokens are parsed in trusted
/// segments only.
pub fn encode_rendered(tok: &Tokenizer, r: &Rendered) -> Vec<u32> {
    let mut ids = Vec::new();
    let starts = r.segments.first().filter(|s| s.trusted).map(|s| &s.text);
    let ends = r.segments.last().filter(|s| s.trusted).map(|s| &s.text);
    let written = |seg: Option<&String>, id: Option<u32>, at_start: bool| {
        let t = id.and_then(|i| tok.token_text(i)).filter(|t| !t.is_empty());
        match (seg, t) {
            (Some(s), Some(t)) if at_start => s.starts_with(t),
            (Some(s), Some(t)) => s.ends_with(t),
            _ => false,
        }
    };
    if tok.add_bos() && !written(starts, tok.bos(), true) {
        ids.extend(tok.bos());
    }
    let mut run = Run::default();
    for seg in &r.segments {
        if !seg.trusted {
            run.push(&seg.text);
            continue;
        }
        // The control tokens llama.cpp would parse here, in text order.
        let mut at = 0;
        for id in tok.encode(&seg.text, false, true) {
            let attr = tok.token_attr(id);
            if attr & (Attr::CONTROL | Attr::UNKNOWN) == 0 {
                continue;
            }
            let Some(needle) = tok.token_text(id).filter(|t| !t.is_empty()) else {
                continue;
            };
            let Some(m) = seg.text[at..].find(needle).map(|m| at + m) else {
                continue;
            };
            run.push(&seg.text[at..m]);
            if attr & Attr::LSTRIP != 0 {
                run.text.truncate(run.text.trim_end_matches(is_space).len());
            }
            run.flush(tok, &mut ids);
            ids.push(id);
            run.skip_space = attr & Attr::RSTRIP != 0;
            at = m + needle.len();
        }
        run.push(&seg.text[at..]);
    }
    run.flush(tok, &mut ids);
    if tok.add_eos() && !written(ends, tok.eos(), false) {
        ids.extend(tok.eos());
    }
    ids
}

/// Renders and tokenizes the prompt of `opts` (see [`render_prompt`] and
/// [`encode_rendered`]).
pub fn encode_prompt(
    tok: &Tokenizer,
    gguf_template: Option<&str>,
    opts: &InferOptions,
) -> Result<Vec<i32>, String> {
    prompt_ids(tok, &render_prompt(tok, gguf_template, opts)?)
}

/// The tokens of a rendered prompt ([`encode_rendered`]); an error when
/// there are none.
pub(crate) fn prompt_ids(tok: &Tokenizer, r: &Rendered) -> Result<Vec<i32>, String> {
    let ids = encode_rendered(tok, r);
    if ids.is_empty() {
        return Err("the prompt is empty".into());
    }
    ids.into_iter()
        .map(|i| i32::try_from(i).map_err(|_| format!("token id {i} out of range")))
        .collect()
}

/// The last characters of a rendered prompt that [`crate::Event::PromptEnd`]
/// reports.
pub(crate) fn prompt_end(r: &Rendered) -> String {
    let text = r.text();
    let n = text.chars().count().saturating_sub(PROMPT_END_CHARS);
    text.chars().skip(n).collect()
}

/// How much of the prompt's end a run reports: enough for any tag.
const PROMPT_END_CHARS: usize = 64;

/// llama.cpp's whitespace for a token's lstrip/rstrip.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0B' | '\x0C' | '\r')
}

/// Plain text between control tokens, encoded as one piece.
#[derive(Default)]
struct Run {
    text: String,
    /// The last control token strips the whitespace after it.
    skip_space: bool,
}

impl Run {
    fn push(&mut self, s: &str) {
        let s = if self.skip_space {
            let t = s.trim_start_matches(is_space);
            self.skip_space = t.is_empty();
            t
        } else {
            s
        };
        self.text.push_str(s);
    }
    fn flush(&mut self, tok: &Tokenizer, ids: &mut Vec<u32>) {
        if !self.text.is_empty() {
            ids.extend(tok.encode(&self.text, false, false));
            self.text.clear();
        }
    }
}
