//! A model's capabilities (`/api/show`'s `capabilities`) and the checks a
//! request makes against them before it runs, with Ollama's texts.
//!
//! Generate, chat and OpenAI's two routes admit a request the same way:
//! they parse what it [`Asks`], find the model, [`Granted::check`] the asks
//! against its capabilities, build the run's options, then
//! [`Granted::apply`] what was granted to them (thinking, tools, suffix,
//! log-probs and the reply's shaper).

use runner::InferOptions;
use serde_json::Value;
use template::TemplateCaps;

use crate::api::{go_quote, Found, RunSpec};
use crate::http::ApiError;
use crate::reply::Shaper;
use crate::sched::KeepAlive;

/// What a model can do.
pub(crate) struct Caps {
    /// Ollama's names, in its order: `completion` or `embedding`,
    /// `vision`, `tools`, `insert`, `thinking`.
    pub(crate) names: Vec<&'static str>,
    /// What its template does: the tags around its reasoning, the text
    /// its tool calls start with.
    pub(crate) template: TemplateCaps,
}

impl Caps {
    fn has(&self, c: &str) -> bool {
        self.names.contains(&c)
    }
}

/// Runs `f` on the parsed GGUF header of `f`'s weights (mapped, not read).
pub(crate) fn with_gguf<R>(found: &Found, f: impl FnOnce(&gguf::Gguf) -> R) -> Result<R, ApiError> {
    let path = &found.gguf;
    let err = |e: &dyn std::fmt::Display| ApiError::internal(format!("{}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| err(&e))?;
    // SAFETY: a read-only private map of a blob the store never rewrites in
    // place (blobs are written to a temp file and renamed).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| err(&e))?;
    let g = gguf::parse(&map).map_err(|e| err(&e))?;
    Ok(f(&g))
}

/// The capabilities of `found`: its GGUF's (completion or embedding,
/// vision) and its template's (template layer, else the GGUF's).
pub(crate) fn capabilities(found: &Found) -> Result<Caps, ApiError> {
    with_gguf(found, |g| of_gguf(found, g))
}

/// [`capabilities`] from an already parsed header.
pub(crate) fn of_gguf(found: &Found, g: &gguf::Gguf) -> Caps {
    let t = template::model_capabilities(
        found.template.as_deref(),
        g.get_str("tokenizer.chat_template"),
    );
    Caps {
        names: gguf::show::capabilities(g, &t.names(), found.projector),
        template: t,
    }
}

/// A request's `think`: absent or null (`None`), `false`, or `true` and
/// the levels `"low"`, `"medium"`, `"high"`, `"max"` (`Some(true)`); else
/// 400 with Ollama's decoder text.
pub(crate) fn parse_think(v: Option<&Value>) -> Result<Option<bool>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if ["high", "medium", "low", "max"].contains(&s.as_str()) => {
            Ok(Some(true))
        }
        Some(Value::String(s)) => Err(ApiError::bad(format!(
            "invalid think value: {} (must be \"high\", \"medium\", \"low\", \"max\", true, or false)",
            go_quote(s)
        ))),
        Some(_) => Err(ApiError::bad(
            "think must be a boolean or string (\"high\", \"medium\", \"low\", \"max\", true, or false)",
        )),
    }
}

/// The level of a request's `think` when it is one (`"low"` …), for the
/// template's `.ThinkLevel`; call after [`parse_think`] accepted it.
pub(crate) fn think_level(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_string)
}

/// What a request asks of a model beyond plain text.
pub(crate) struct Asks<'a> {
    /// The model as the request named it (Ollama quotes it in some errors).
    pub(crate) model: &'a str,
    /// `generate` or `chat`: the verb of the missing-completion error.
    pub(crate) verb: &'static str,
    /// The request's `think`.
    pub(crate) think: Option<bool>,
    /// The level it names, if any (`"high"` …).
    pub(crate) think_level: Option<String>,
    /// A non-empty `tools`.
    pub(crate) tools: Option<&'a Value>,
    /// A non-empty `suffix`.
    pub(crate) suffix: Option<String>,
    /// Log-probs: how many alternatives per token ([`parse_logprobs`]).
    pub(crate) logprobs: Option<usize>,
}

/// A request admitted on its model: what [`check`] granted, kept until
/// the run's options are built.
pub(crate) struct Granted {
    /// The model.
    pub(crate) found: Found,
    caps: Caps,
    think: Option<bool>,
    think_level: Option<String>,
    tools: Option<Value>,
    suffix: Option<String>,
    logprobs: Option<usize>,
}

impl Granted {
    /// [`capabilities`] of `found`, then [`check`] of `asks` against them.
    pub(crate) fn check(found: Found, asks: Asks) -> Result<Granted, ApiError> {
        let caps = capabilities(&found)?;
        let think = check(&found, &caps, &asks)?;
        Ok(Granted {
            found,
            caps,
            think,
            think_level: asks.think_level,
            tools: asks.tools.cloned(),
            suffix: asks.suffix,
            logprobs: asks.logprobs,
        })
    }

    /// The run: `opts` with what was granted, and a shaper that splits the
    /// reasoning off when it thinks and parses tool calls when it has tools.
    pub(crate) fn apply(
        self,
        mut opts: InferOptions,
        chat: bool,
        context: Vec<i32>,
        keep_alive: KeepAlive,
    ) -> RunSpec {
        let shaper = Shaper {
            think: (self.caps.template.think)
                .filter(|_| self.think == Some(true))
                .map(runner::ThinkSplitter::new),
            tools: (self.tools.as_ref())
                .map(|t| runner::tools::ToolParser::new(&self.caps.template.tool_tag, t)),
        };
        opts.think = self.think;
        opts.think_level = self.think_level.filter(|_| self.think == Some(true));
        opts.tools = self.tools;
        opts.suffix = self.suffix;
        opts.logprobs = self.logprobs;
        RunSpec {
            found: self.found,
            opts,
            chat,
            context,
            keep_alive,
            shaper,
        }
    }
}

/// Checks `asks` against `caps` in Ollama's order and words; the run's
/// `think`: a thinking model thinks unless told not to, any other never.
///
/// - `think` on a model that does not think: 400 `"m" does not support thinking`;
/// - an embedding model: 400 `"m" does not support generate` (or `chat`);
/// - tools or a suffix the template lacks: 400
///   `registry.ollama.ai/library/m:latest does not support tools` (`insert`).
pub(crate) fn check(found: &Found, caps: &Caps, asks: &Asks) -> Result<Option<bool>, ApiError> {
    let think = if caps.has("thinking") {
        Some(asks.think.unwrap_or(true))
    } else if asks.think == Some(true) {
        return Err(ApiError::bad(format!(
            "{} does not support thinking",
            go_quote(asks.model)
        )));
    } else {
        asks.think
    };
    if !caps.has("completion") {
        return Err(ApiError::bad(format!(
            "{} does not support {}",
            go_quote(asks.model),
            asks.verb
        )));
    }
    let missing: Vec<&str> = [
        (asks.tools.is_some(), "tools"),
        (asks.suffix.is_some(), "insert"),
    ]
    .into_iter()
    .filter(|&(want, c)| want && !caps.has(c))
    .map(|(_, c)| c)
    .collect();
    if !missing.is_empty() {
        return Err(ApiError::bad(format!(
            "{} does not support {}",
            found.full_name,
            missing.join("\n")
        )));
    }
    Ok(think)
}

/// A request's `logprobs` and `top_logprobs`: `None` without log-probs,
/// else how many alternatives per token; `top_logprobs` outside 0..=20 is
/// 400. `logprobs` may also be a count (OpenAI's completions).
pub(crate) fn parse_logprobs(req: &Value) -> Result<Option<usize>, ApiError> {
    let top = match req.get("top_logprobs") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_i64()
            .ok_or_else(|| ApiError::bad("top_logprobs must be an integer"))?,
    };
    if !(0..=20).contains(&top) {
        return Err(ApiError::bad("top_logprobs must be between 0 and 20"));
    }
    Ok(match req.get("logprobs") {
        Some(Value::Bool(true)) => Some(top as usize),
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n > 0) => {
            Some(n.as_u64().unwrap_or(0).min(20) as usize)
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn found() -> Found {
        Found::for_test("m:latest", "registry.ollama.ai/library/m:latest")
    }

    fn caps(names: &[&'static str]) -> Caps {
        Caps {
            names: names.to_vec(),
            template: TemplateCaps::default(),
        }
    }

    fn asks(think: Option<bool>, tools: bool, suffix: bool) -> Asks<'static> {
        static TOOLS: Value = Value::Null;
        Asks {
            model: "m",
            verb: "chat",
            think,
            think_level: None,
            tools: tools.then_some(&TOOLS),
            suffix: suffix.then(|| "s".to_string()),
            logprobs: None,
        }
    }

    fn err(r: Result<Option<bool>, ApiError>) -> String {
        r.expect_err("an error").msg
    }

    #[test]
    fn think_values() {
        assert_eq!(parse_think(None).unwrap(), None);
        assert_eq!(parse_think(Some(&json!(false))).unwrap(), Some(false));
        for v in [json!(true), json!("low"), json!("max")] {
            assert_eq!(parse_think(Some(&v)).unwrap(), Some(true));
        }
        let e = parse_think(Some(&json!("lots"))).err().unwrap();
        assert_eq!(
            e.msg,
            r#"invalid think value: "lots" (must be "high", "medium", "low", "max", true, or false)"#
        );
        assert!(parse_think(Some(&json!(1))).is_err());
    }

    #[test]
    fn logprobs_values() {
        let lp = |v: Value| parse_logprobs(&v);
        assert_eq!(lp(json!({})).unwrap(), None);
        assert_eq!(lp(json!({"logprobs": true})).unwrap(), Some(0));
        assert_eq!(
            lp(json!({"logprobs": true, "top_logprobs": 20})).unwrap(),
            Some(20)
        );
        assert_eq!(lp(json!({"top_logprobs": 3})).unwrap(), None);
        assert_eq!(lp(json!({"logprobs": 2})).unwrap(), Some(2));
        for bad in [21, -1] {
            let e = lp(json!({"logprobs": true, "top_logprobs": bad}))
                .err()
                .unwrap();
            assert_eq!(e.msg, "top_logprobs must be between 0 and 20");
        }
    }

    #[test]
    fn checks_in_ollamas_words() {
        let f = found();
        let plain = caps(&["completion"]);
        assert_eq!(check(&f, &plain, &asks(None, false, false)).unwrap(), None);
        assert_eq!(
            check(&f, &plain, &asks(Some(false), false, false)).unwrap(),
            Some(false)
        );
        assert_eq!(
            err(check(&f, &plain, &asks(Some(true), false, false))),
            r#""m" does not support thinking"#
        );
        assert_eq!(
            err(check(&f, &plain, &asks(None, true, false))),
            "registry.ollama.ai/library/m:latest does not support tools"
        );
        assert_eq!(
            err(check(&f, &plain, &asks(None, false, true))),
            "registry.ollama.ai/library/m:latest does not support insert"
        );
        assert_eq!(
            err(check(&f, &caps(&["embedding"]), &asks(None, false, false))),
            r#""m" does not support chat"#
        );
        let thinker = caps(&["completion", "tools", "thinking"]);
        assert_eq!(
            check(&f, &thinker, &asks(None, true, false)).unwrap(),
            Some(true),
            "a thinking model thinks when think is absent"
        );
        assert_eq!(
            check(&f, &thinker, &asks(Some(false), false, false)).unwrap(),
            Some(false)
        );
    }
}
