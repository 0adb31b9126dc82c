//! What a reply's chunks carry, from a run's raw text: the reasoning of a
//! thinking run split off ([`runner::ThinkSplitter`]), the tool calls of a
//! request with tools parsed out ([`runner::tools::ToolParser`]), and each
//! token's log-probability in Ollama's shape.

use runner::tools::ToolParser;
use runner::{ThinkSplitter, TokenLogprobs};
use serde_json::{json, Map, Value};

/// One chunk's worth of a reply.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    /// Answer text.
    pub(crate) content: String,
    /// Reasoning text.
    pub(crate) thinking: String,
    /// Tool calls, as Ollama's `message.tool_calls` items.
    pub(crate) tool_calls: Vec<Value>,
    /// Log-probabilities, as Ollama's `logprobs` items.
    pub(crate) logprobs: Vec<Value>,
}

impl Delta {
    /// Nothing to send.
    pub(crate) fn is_empty(&self) -> bool {
        self.content.is_empty()
            && self.thinking.is_empty()
            && self.tool_calls.is_empty()
            && self.logprobs.is_empty()
    }

    /// Appends `other` (a whole reply built from its chunks).
    pub(crate) fn extend(&mut self, other: Delta) {
        self.content.push_str(&other.content);
        self.thinking.push_str(&other.thinking);
        self.tool_calls.extend(other.tool_calls);
        self.logprobs.extend(other.logprobs);
    }

    /// Ollama's native fields: `thinking` (`key` being `response` or
    /// `content` for the text) and `tool_calls` when there are some, into
    /// `out`.
    pub(crate) fn put_text(&self, key: &str, out: &mut Map<String, Value>) {
        out.insert(key.into(), json!(self.content));
        if !self.thinking.is_empty() {
            out.insert("thinking".into(), json!(self.thinking));
        }
        if !self.tool_calls.is_empty() {
            out.insert("tool_calls".into(), json!(self.tool_calls));
        }
    }

    /// `logprobs` into `out` when there are some.
    pub(crate) fn put_logprobs(&self, out: &mut Map<String, Value>) {
        if !self.logprobs.is_empty() {
            out.insert("logprobs".into(), json!(self.logprobs));
        }
    }
}

/// Turns a run's text pieces into [`Delta`]s.
#[derive(Default)]
pub(crate) struct Shaper {
    /// Splits reasoning from the answer (a thinking run).
    pub(crate) think: Option<ThinkSplitter>,
    /// Finds tool calls in the answer (a request with tools).
    pub(crate) tools: Option<ToolParser>,
}

impl Shaper {
    /// Told the end of the prompt: a thinking run whose prompt opened the
    /// reasoning starts inside it.
    pub(crate) fn prompt_end(&mut self, end: &str) {
        if let Some(t) = &mut self.think {
            t.prompt_end(end);
        }
    }

    /// The delta of one piece of output.
    pub(crate) fn piece(&mut self, text: &str, lp: Option<&TokenLogprobs>) -> Delta {
        let (thinking, content) = match &mut self.think {
            Some(t) => t.add(text),
            None => (String::new(), text.to_string()),
        };
        let mut d = self.answer(&content);
        d.thinking = thinking;
        d.logprobs.extend(lp.map(logprob_json));
        d
    }

    /// What the parsers held back, at the end of the output.
    pub(crate) fn finish(&mut self) -> Delta {
        let (thinking, content) = match &mut self.think {
            Some(t) => t.finish(),
            None => Default::default(),
        };
        let mut d = self.answer(&content);
        if let Some(p) = &mut self.tools {
            let rest = p.finish();
            d.content.push_str(&rest);
        }
        d.thinking = thinking;
        d
    }

    /// Answer text through the tool parser, if any.
    fn answer(&mut self, content: &str) -> Delta {
        let Some(p) = &mut self.tools else {
            return Delta {
                content: content.to_string(),
                ..Delta::default()
            };
        };
        let (calls, content) = p.add(content);
        Delta {
            content,
            tool_calls: calls.iter().map(tool_call_json).collect(),
            ..Delta::default()
        }
    }
}

/// Ollama's tool call: `{"id":"call_…","function":{"index","name","arguments"}}`.
fn tool_call_json(c: &runner::tools::ToolCall) -> Value {
    json!({
        "id": format!("call_{}", random_id()),
        "function": {"index": c.index, "name": c.name, "arguments": c.arguments},
    })
}

/// Eight lowercase letters and digits, as Ollama's `toolCallId`.
fn random_id() -> String {
    const ABC: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut n = crate::options::random_seed();
    (0..8)
        .map(|_| {
            let c = ABC[(n % ABC.len() as u64) as usize] as char;
            n /= ABC.len() as u64;
            c
        })
        .collect()
}

/// Ollama's `{"token","logprob","bytes","top_logprobs"}` (empty `bytes`
/// and `top_logprobs` left out).
fn logprob_json(lp: &TokenLogprobs) -> Value {
    let mut v = token_json(&lp.token);
    if !lp.top.is_empty() {
        v["top_logprobs"] = lp.top.iter().map(token_json).collect();
    }
    v
}

fn token_json(t: &runner::Logprob) -> Value {
    let mut v = json!({
        "token": String::from_utf8_lossy(&t.bytes),
        "logprob": t.logprob,
    });
    if !t.bytes.is_empty() {
        v["bytes"] = json!(t.bytes);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner::Logprob;

    #[test]
    fn logprobs_in_ollamas_shape() {
        let lp = TokenLogprobs {
            token: Logprob {
                bytes: b"Hi".to_vec(),
                logprob: -0.5,
            },
            top: vec![
                Logprob {
                    bytes: b"Hi".to_vec(),
                    logprob: -0.5,
                },
                Logprob {
                    bytes: vec![0xe2],
                    logprob: -1.5,
                },
            ],
        };
        assert_eq!(
            logprob_json(&lp),
            json!({"token": "Hi", "logprob": -0.5, "bytes": [72, 105],
                   "top_logprobs": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105]},
                                    {"token": "\u{fffd}", "logprob": -1.5, "bytes": [226]}]})
        );
        let mut s = Shaper::default();
        let d = s.piece("Hi", Some(&lp));
        assert_eq!((d.content.as_str(), d.logprobs.len()), ("Hi", 1));
        assert!(s.finish().is_empty());
    }

    #[test]
    fn a_thinking_run_is_split() {
        let mut s = Shaper {
            think: Some(ThinkSplitter::new(template::ThinkTags {
                open: "<think>".into(),
                close: "</think>".into(),
            })),
            tools: None,
        };
        let mut all = Delta::default();
        for p in ["<think>", "2+2", "</think>", "4"] {
            all.extend(s.piece(p, None));
        }
        all.extend(s.finish());
        assert_eq!((all.thinking.as_str(), all.content.as_str()), ("2+2", "4"));
    }

    #[test]
    fn call_ids_look_like_ollamas() {
        let id = random_id();
        assert_eq!(id.len(), 8);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    }
}
