//! Render a conversation into the prompt text a model expects.
//!
//! Two template languages are supported, chosen as Ollama chooses them
//! ([`ChatTemplate::choose`]):
//!
//! - **Go `text/template`**, from an Ollama manifest's template layer. A small
//!   interpreter of our own covers what Ollama's templates use (`range $i, $m
//!   := .Messages`, `$.System`, `if`/`else if`/`with`, `and`/`or`/`not`,
//!   multi-argument `eq`, variable reassignment, `break`/`continue`, `slice`,
//!   `len`, `index`, `json`, `printf`, trim markers, comments, missing keys as
//!   zero values) and Ollama's legacy mode for templates without `.Messages`.
//! - **Jinja**, the GGUF's `tokenizer.chat_template`, rendered with minijinja
//!   the way Hugging Face's `apply_chat_template` does (`trim_blocks`,
//!   `lstrip_blocks`, Python string methods, `raise_exception`,
//!   `strftime_now`, `tojson` with Python's separators).
//!
//! Templates are data from a downloaded model, so rendering is sandboxed: no
//! file, environment or network access exists in either engine, and template
//! size, nesting depth, steps and output size are capped by [`Limits`]; each
//! cap fails with an [`Error`], never a panic or a hang.
//!
//! **Special tokens.** The result is a list of [`Segment`]s. Text written by
//! the template itself is `trusted` and may hold control tokens such as
//! `<|im_start|>`; text that came from the [`Request`] (message content,
//! system prompt, tool definitions) is not. Tokenize untrusted segments with
//! special-token parsing off, so that a user typing `<|im_end|>` gets the
//! characters, not the control token (HOSTILE.md row 35).
//!
//! ```
//! use template::{render_chat, ChatTemplate, Message, Request};
//!
//! let chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n\
//!               {% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
//! let tmpl = ChatTemplate::choose(None, Some(chatml));
//! let req = Request {
//!     messages: vec![Message::user("hi <|im_end|>")],
//!     ..Request::default()
//! };
//! let out = render_chat(&tmpl, &req).unwrap();
//! assert_eq!(
//!     out.text(),
//!     "<|im_start|>user\nhi <|im_end|><|im_end|>\n<|im_start|>assistant\n"
//! );
//! // The user's "<|im_end|>" sits in an untrusted segment; the template's
//! // own control tokens are trusted.
//! let user: Vec<_> = out.segments.iter().filter(|s| !s.trusted).collect();
//! assert_eq!(user.len(), 1);
//! assert_eq!(user[0].text, "hi <|im_end|>");
//! assert_eq!(out.segments[0].text, "<|im_start|>user\n");
//! assert!(out.segments[0].trusted);
//!
//! // An Ollama template layer wins over the GGUF's template.
//! let go = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n\
//!           {{ end }}<|im_start|>assistant\n";
//! let tmpl = ChatTemplate::choose(Some(go), Some(chatml));
//! assert!(matches!(tmpl, ChatTemplate::Go(_)));
//! assert_eq!(render_chat(&tmpl, &req).unwrap(), out);
//! ```
#![deny(missing_docs)]

mod caps;
mod error;
mod gotmpl;
mod jinja;
mod taint;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use caps::{model_capabilities, template_capabilities, TemplateCaps, ThinkTags};
pub use error::{Error, ErrorKind};

/// A result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Ollama's template for models that have none: the prompt as it is.
pub const DEFAULT_TEMPLATE: &str = "{{ .Prompt }}";

/// One turn of a conversation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`: 1 to 64 characters of
    /// `[A-Za-z0-9_-]`.
    pub role: String,
    /// The text of the turn.
    pub content: String,
    /// The model's reasoning for an assistant turn, when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<String>,
    /// Tools the assistant called in this turn.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a `tool` turn: the tool whose result this is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<String>,
}

impl Message {
    /// A message with a role and content.
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.to_string(),
            content: content.to_string(),
            ..Message::default()
        }
    }
    /// A `system` message.
    pub fn system(content: &str) -> Message {
        Message::new("system", content)
    }
    /// A `user` message.
    pub fn user(content: &str) -> Message {
        Message::new("user", content)
    }
    /// An `assistant` message.
    pub fn assistant(content: &str) -> Message {
        Message::new("assistant", content)
    }
}

/// A call of a tool by the assistant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call's id, when the API gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The function's name.
    pub name: String,
    /// The arguments, a JSON object.
    pub arguments: serde_json::Value,
}

/// What to render.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The conversation so far. A last `assistant` message is a response
    /// prefix the model continues (Ollama's behaviour; for Jinja see
    /// [`Request::continue_final_message`]).
    pub messages: Vec<Message>,
    /// A system prompt (`--system` or the manifest's system layer). It is put
    /// first as a `system` message unless the conversation starts with one,
    /// as Ollama does.
    pub system: Option<String>,
    /// Tool definitions, a JSON array in the OpenAI/Ollama shape
    /// (`[{"type":"function","function":{"name":…,"parameters":…}}]`).
    pub tools: Option<serde_json::Value>,
    /// Jinja: end with the assistant's header (`add_generation_prompt`).
    /// Default true. Go templates always do, as in Ollama.
    pub add_generation_prompt: bool,
    /// Jinja: render the last (assistant) message open-ended, cut right after
    /// its content, like Hugging Face's `continue_final_message`.
    pub continue_final_message: bool,
    /// Go: text after the cursor for fill-in-the-middle (`.Suffix`); the last
    /// user message is `.Prompt`.
    pub suffix: Option<String>,
    /// Whether thinking was asked for: `.Think`/`.IsThinkSet` in Go,
    /// `enable_thinking` in Jinja. `None` leaves it unset.
    pub think: Option<bool>,
    /// The thinking level asked for (`"low"`, `"medium"`, `"high"`, `"max"`):
    /// `.ThinkLevel` in Go, `reasoning_effort` in Jinja. `None` renders
    /// `.ThinkLevel` as `"medium"` when `think` is `Some(true)` and `""`
    /// otherwise, as Ollama does.
    pub think_level: Option<String>,
    /// The BOS token text from the GGUF (`tokenizer.ggml.bos_token_id` looked
    /// up in `tokenizer.ggml.tokens`), e.g. `<bos>`; Jinja's `bos_token`.
    pub bos_token: String,
    /// The EOS token text from the GGUF; Jinja's `eos_token`.
    pub eos_token: String,
    /// Seconds since the Unix epoch (UTC) used by `strftime_now` and
    /// `currentDate`; `None` reads the clock.
    pub now: Option<i64>,
    /// Caps on template size, depth, steps and output.
    pub limits: Limits,
}

impl Default for Request {
    fn default() -> Request {
        Request {
            messages: Vec::new(),
            system: None,
            tools: None,
            add_generation_prompt: true,
            continue_final_message: false,
            suffix: None,
            think: None,
            think_level: None,
            bos_token: String::new(),
            eos_token: String::new(),
            now: None,
            limits: Limits::default(),
        }
    }
}

impl Request {
    /// The messages with [`Request::system`] put first when the conversation
    /// does not start with a system message, roles checked.
    fn conversation(&self) -> Result<Vec<Message>> {
        let mut msgs = Vec::with_capacity(self.messages.len() + 1);
        if let Some(sys) = self.system.as_deref().filter(|s| !s.is_empty()) {
            if self.messages.first().map(|m| m.role.as_str()) != Some("system") {
                msgs.push(Message::system(sys));
            }
        }
        msgs.extend(self.messages.iter().cloned());
        for m in &msgs {
            let ok = !m.role.is_empty()
                && m.role.len() <= 64
                && m.role
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(Error::new(
                    ErrorKind::Request,
                    format!("invalid message role {:?}", truncate(&m.role, 40)),
                ));
            }
        }
        Ok(msgs)
    }

    fn now(&self) -> time::OffsetDateTime {
        match self.now {
            Some(t) => time::OffsetDateTime::from_unix_timestamp(t)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
            None => time::OffsetDateTime::now_utc(),
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Caps that keep a hostile template from crashing or stalling the caller
/// (HOSTILE.md row 37). Each one exceeded is an [`Error`] of its own kind.
///
/// Known gap: minijinja has no cap on the size of intermediate strings, and
/// one concatenation is one step, so a Jinja template that doubles a
/// namespace string in a loop (`{% set ns.s = ns.s ~ ns.s %}`, 40 times) can
/// exhaust memory before any cap trips. Go templates cap every string they
/// build at `max_output_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest template source accepted, in bytes. Default 256 KiB.
    pub max_template_bytes: usize,
    /// Deepest nesting of blocks, parentheses and calls. Default 100.
    pub max_depth: usize,
    /// Most render steps (Jinja: minijinja fuel; Go: nodes run plus loop
    /// iterations). Default 5,000,000.
    pub max_steps: u64,
    /// Largest output in bytes, also the largest string a Go template may
    /// build. Default 4 MiB.
    pub max_output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_template_bytes: 256 << 10,
            max_depth: 100,
            max_steps: 5_000_000,
            max_output_bytes: 4 << 20,
        }
    }
}

/// A chat template and its language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplate {
    /// A Jinja template, as in a GGUF's `tokenizer.chat_template`.
    Jinja(String),
    /// A Go `text/template`, as in an Ollama manifest's template layer.
    Go(String),
}

impl ChatTemplate {
    /// The template Ollama would use: the manifest's template layer if there
    /// is one, else the GGUF's `tokenizer.chat_template`, else
    /// [`DEFAULT_TEMPLATE`] (the prompt as it is). Blank templates count as
    /// absent.
    ///
    /// Ollama itself never runs the GGUF's Jinja: at `ollama create` it maps
    /// it to the nearest of its stock Go templates. Rendering the Jinja is
    /// what llama.cpp does and is exact for the model's own format.
    pub fn choose(ollama_template_layer: Option<&str>, gguf_chat_template: Option<&str>) -> Self {
        let present = |s: &Option<&str>| s.is_some_and(|s| !s.trim().is_empty());
        if present(&ollama_template_layer) {
            ChatTemplate::Go(ollama_template_layer.unwrap_or_default().to_string())
        } else if present(&gguf_chat_template) {
            ChatTemplate::Jinja(gguf_chat_template.unwrap_or_default().to_string())
        } else {
            ChatTemplate::Go(DEFAULT_TEMPLATE.to_string())
        }
    }

    /// The template's source.
    pub fn source(&self) -> &str {
        match self {
            ChatTemplate::Jinja(s) | ChatTemplate::Go(s) => s,
        }
    }
}

/// A piece of rendered prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The text.
    pub text: String,
    /// True when the template wrote it (control tokens allowed); false when
    /// it came from the request (tokenize with special-token parsing off).
    pub trusted: bool,
}

/// A rendered prompt: segments in order, neighbours of equal trust merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    /// The pieces, in order.
    pub segments: Vec<Segment>,
}

impl Rendered {
    /// The whole prompt as one string.
    pub fn text(&self) -> String {
        self.segments.iter().map(|s| s.text.as_str()).collect()
    }
}

impl fmt::Display for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.segments {
            f.write_str(&s.text)?;
        }
        Ok(())
    }
}

/// Renders `req` with `tmpl`.
///
/// Errors name the failure in one line: a template that does not parse, a
/// cap that was hit, `raise_exception` in a Jinja template, a bad role.
pub fn render_chat(tmpl: &ChatTemplate, req: &Request) -> Result<Rendered> {
    let src = tmpl.source();
    if src.len() > req.limits.max_template_bytes {
        return Err(Error::new(
            ErrorKind::TemplateTooLarge,
            format!(
                "chat template is {} bytes, more than the limit of {}",
                src.len(),
                req.limits.max_template_bytes
            ),
        ));
    }
    match tmpl {
        ChatTemplate::Jinja(s) => jinja::render(s, req),
        ChatTemplate::Go(s) => gotmpl::render(s, req),
    }
}

/// Renders `req` with `tmpl` into one string, dropping the trust marks.
/// Only for display and for tokenizers that never parse special tokens.
pub fn render_chat_string(tmpl: &ChatTemplate, req: &Request) -> Result<String> {
    render_chat(tmpl, req).map(|r| r.text())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choose_follows_ollama_precedence() {
        let go = |s: &str| ChatTemplate::Go(s.into());
        assert_eq!(
            ChatTemplate::choose(Some("{{ .Prompt }}x"), Some("{{ j }}")),
            go("{{ .Prompt }}x")
        );
        assert_eq!(
            ChatTemplate::choose(Some(" \n"), Some("{{ j }}")),
            ChatTemplate::Jinja("{{ j }}".into())
        );
        assert_eq!(ChatTemplate::choose(None, Some("")), go(DEFAULT_TEMPLATE));
        assert_eq!(ChatTemplate::choose(None, None).source(), "{{ .Prompt }}");
    }

    #[test]
    fn think_level_reaches_go_and_jinja() {
        let go = ChatTemplate::Go(
            "{{ if .Think }}<think>{{ end }}[{{ .ThinkLevel }}]{{ range .Messages }}{{ .Content }}{{ end }}".into(),
        );
        let render = |t: &ChatTemplate, think: Option<bool>, level: Option<&str>| {
            let r = Request {
                messages: vec![Message::user("u")],
                think,
                think_level: level.map(str::to_string),
                ..Request::default()
            };
            render_chat_string(t, &r).unwrap()
        };
        assert_eq!(render(&go, Some(true), Some("high")), "<think>[high]u");
        assert_eq!(render(&go, Some(true), Some("low")), "<think>[low]u");
        // plain `true` is Ollama's "medium"; off or unset, no level
        assert_eq!(render(&go, Some(true), None), "<think>[medium]u");
        assert_eq!(render(&go, Some(false), None), "[]u");
        assert_eq!(render(&go, None, None), "[]u");
        let jinja = ChatTemplate::Jinja(
            "{{ reasoning_effort | default('none') }}{{ messages[0].content }}".into(),
        );
        assert_eq!(render(&jinja, Some(true), Some("high")), "highu");
        assert_eq!(render(&jinja, Some(true), None), "noneu");
    }

    #[test]
    fn system_prompt_and_roles() {
        let r = Request {
            system: Some("S".into()),
            messages: vec![Message::user("u")],
            ..Request::default()
        };
        assert_eq!(
            r.conversation().unwrap(),
            vec![Message::system("S"), Message::user("u")]
        );
        for bad in ["", "a b", "x\n", &"r".repeat(65)] {
            let r = Request {
                messages: vec![Message::new(bad, "u")],
                ..Request::default()
            };
            let e = r.conversation().unwrap_err();
            assert_eq!(e.kind(), &ErrorKind::Request);
            assert!(e.to_string().starts_with("invalid message role"), "{e}");
        }
    }
}
