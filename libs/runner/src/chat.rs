//! Interactive chat, as `ollama run` has it: `infer --chat`.
//!
//! [`chat`] loads the model once, then reads turns from a [`LineSource`] (a
//! terminal in `infer`, scripted lines in tests) and streams each answer to
//! a writer. Every turn the whole conversation is rendered with the chat
//! template and tokenized, and only the tokens after the longest prefix it
//! shares with the cache are decoded, so the history is not processed again
//! (if a template renders an earlier turn differently, the cache is cut back
//! to where they diverge). When the conversation no longer fits the context,
//! its oldest turns are dropped (the system prompt stays); a context that
//! fills while answering is shifted as in a one-shot run.
//!
//! Lines starting with `/` are commands: `/bye`, `/clear`,
//! `/set parameter NAME VALUE…`, `/set system TEXT`, `/set verbose|quiet`,
//! `/show info|parameters|system|template` and `/?`. A line starting with
//! `"""` starts a message of several lines, ended by a line ending in `"""`.
//!
//! ```no_run
//! use std::sync::atomic::AtomicBool;
//! use runner::{chat, ChatOptions};
//! let mut o = ChatOptions::default();
//! o.infer.model = "SmolLM2-135M-Instruct.Q4_1.gguf".into();
//! o.infer.sampler.temperature = 0.0;
//! let mut lines = ["Hi".to_string(), "/bye".to_string()].into_iter();
//! let turns = chat(&o, &mut lines, &mut std::io::stdout(), &AtomicBool::new(false))?;
//! assert_eq!(turns.len(), 1);
//! # Ok::<(), String>(())
//! ```

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use engine::generate::{generate, Decode, GenerateOptions, Stats};
use engine::sampler::Sampler;
use engine::session::Session;
use engine::stop::StopBuffer;
use engine::tokenizer::{StreamDecoder, Tokenizer};
use serde_json::{Map, Value};

use crate::infer::{Event, Output, Summary};
use crate::plan::{self, session_options, Header, LlamaDecode, Loaded};
use crate::prompt::encode_prompt;
use crate::{InferOptions, Message};

/// What a [`LineSource`] read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A line, without its newline.
    Line(String),
    /// Ctrl-C at the prompt.
    Interrupted,
    /// End of input (Ctrl-D): the chat ends.
    Eof,
}

/// Where turns come from: a line editor on a terminal, or, for scripts and
/// tests, any iterator of lines.
pub trait LineSource {
    /// Reads one line, showing `prompt` (`>>> `, or `... ` inside a
    /// message of several lines) where that makes sense.
    fn read_line(&mut self, prompt: &str) -> std::io::Result<Input>;
}

impl<I: Iterator<Item = String>> LineSource for I {
    fn read_line(&mut self, _prompt: &str) -> std::io::Result<Input> {
        Ok(self.next().map_or(Input::Eof, Input::Line))
    }
}

/// How to chat.
#[derive(Clone, Debug, Default)]
pub struct ChatOptions {
    /// Model, sampling, system prompt, template layer, earlier messages (the
    /// messages layer) and engine. A non-empty `prompt` is the first turn;
    /// `raw` is refused (a chat needs its template).
    pub infer: InferOptions,
    /// The params layer's JSON, shown by `/show info` and `/show parameters`.
    pub params_layer: Option<String>,
    /// Print timing statistics after each answer (`/set verbose`).
    pub verbose: bool,
}

/// One exchange of a chat.
#[derive(Clone, Debug)]
pub struct Turn {
    /// The user's message.
    pub user: String,
    /// The answer as printed (stop strings cut).
    pub answer: String,
    /// Tokens of the rendered conversation this turn (its prompt).
    pub prompt_tokens: usize,
    /// How many of them the cache already held; `stats.prompt_eval_count`
    /// (`prompt_tokens - cached`) were decoded this turn.
    pub cached: usize,
    /// Engine counts and times of this turn.
    pub stats: Stats,
    /// Whether Ctrl-C ended the answer.
    pub interrupted: bool,
}

/// Loads the model of `opts` and chats: reads lines from `input` until
/// `/bye` or end of input, writes answers and command replies to `out`.
/// Setting `interrupt` (from a Ctrl-C handler) ends the answer being
/// generated, not the chat; it is cleared when a turn starts. Returns the
/// turns. Errors: the model cannot be loaded, the engine fails, or `out`
/// fails (they do not name the model file: the caller does); a turn whose
/// template cannot be rendered is reported on `out` and skipped.
pub fn chat(
    opts: &ChatOptions,
    input: &mut dyn LineSource,
    out: &mut dyn Write,
    interrupt: &AtomicBool,
) -> Result<Vec<Turn>, String> {
    let o = &opts.infer;
    if o.raw {
        return Err("a chat needs the chat template (--raw is for one-shot prompts)".into());
    }
    let map = plan::map(o)?;
    let gg = gguf::parse(map.bytes()).map_err(|e| e.to_string())?;
    let Header {
        arch,
        tok,
        template: gguf_template,
        n_layer,
    } = Header::read(&gg)?;
    let layers = gguf::show::Layers {
        template: o.template.clone(),
        template_caps: template::model_capabilities(
            o.template.as_deref(),
            gguf_template.as_deref(),
        )
        .names(),
        ..Default::default()
    };
    let info = gguf::show::inspect(&gg, &layers, &Default::default()).map_err(|e| e.to_string())?;
    Sampler::new(o.sampler.clone()).map_err(|e| e.to_string())?;
    let params_layer = match opts.params_layer.as_deref().map(serde_json::from_str) {
        Some(Ok(Value::Object(m))) => m,
        _ => Map::new(),
    };
    let mut state = State {
        opts: InferOptions {
            messages: vec![],
            prompt: String::new(),
            ..o.clone()
        },
        messages: o.messages.clone(),
        tok: &tok,
        gguf_template,
        info,
        params_layer,
        user_params: Map::new(),
        verbose: opts.verbose,
        turns: vec![],
        engine: "native",
    };
    let first = (!o.prompt.is_empty()).then_some(o.prompt.as_str());
    let io = |e: std::io::Error| e.to_string();
    let plan = plan::plan(o, &arch, n_layer)?;
    for notice in &plan.notices {
        writeln!(out, "{notice}").map_err(io)?;
    }
    let loaded = plan::load(o, &plan, &gg, &map)?;
    drop(gg);
    drop(map);
    match &loaded {
        Loaded::Native(l) => {
            let mut sess =
                Session::new(l.model.as_ref(), &session_options(o)).map_err(|e| e.to_string())?;
            state.run(&mut sess, first, input, out, interrupt)?;
        }
        Loaded::LlamaCpp(m) => {
            state.engine = "llama.cpp";
            let mut dec = LlamaDecode::new(m, o)?;
            state.run(&mut dec, first, input, out, interrupt)?;
        }
    }
    Ok(state.turns)
}

// ---- the cache ----

/// A decoder that tells what its cache holds (it can be cut back to a
/// prefix of that: [`Decode::truncate`]).
trait Cache: Decode {
    /// The tokens in the cache, in order.
    fn tokens(&self) -> &[i32];
}

impl Cache for Session<'_> {
    fn tokens(&self) -> &[i32] {
        self.history()
    }
}

impl Cache for LlamaDecode<'_> {
    fn tokens(&self) -> &[i32] {
        self.history_of(0)
    }
}

/// How many tokens `a` and `b` share at the start.
fn common_prefix(a: &[i32], b: &[i32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

// ---- the loop ----

/// What a line asks for.
enum Step {
    /// Send this message.
    Send(String),
    /// Nothing more (a command ran, or the line was empty).
    Done,
    /// End the chat.
    Exit,
}

/// The conversation and the options it runs with.
struct State<'a> {
    /// Current options (system prompt, sampling, stop strings, limits).
    opts: InferOptions,
    /// The conversation so far, system prompt excluded.
    messages: Vec<Message>,
    tok: &'a Tokenizer,
    gguf_template: Option<String>,
    /// `gguf::show::inspect` of the model.
    info: Map<String, Value>,
    params_layer: Map<String, Value>,
    /// Parameters set with `/set parameter`.
    user_params: Map<String, Value>,
    verbose: bool,
    turns: Vec<Turn>,
    engine: &'static str,
}

impl State<'_> {
    fn run<D: Cache>(
        &mut self,
        dec: &mut D,
        first: Option<&str>,
        input: &mut dyn LineSource,
        out: &mut dyn Write,
        interrupt: &AtomicBool,
    ) -> Result<(), String> {
        let io = |e: std::io::Error| e.to_string();
        if let Some(p) = first {
            self.turn(dec, p, out, interrupt)?;
        }
        loop {
            let line = match input.read_line(">>> ").map_err(io)? {
                Input::Eof => return Ok(()),
                Input::Interrupted => {
                    writeln!(out, "Use Ctrl + d or /bye to exit.").map_err(io)?;
                    continue;
                }
                Input::Line(l) => l,
            };
            match self.line(dec, &line, input, out).map_err(io)? {
                Step::Exit => return Ok(()),
                Step::Done => {}
                Step::Send(text) => self.turn(dec, &text, out, interrupt)?,
            }
        }
    }

    /// Handles one line: a command, the start of a message of several
    /// lines, or a message.
    fn line<D: Cache>(
        &mut self,
        dec: &mut D,
        line: &str,
        input: &mut dyn LineSource,
        out: &mut dyn Write,
    ) -> std::io::Result<Step> {
        if let Some(rest) = line.strip_prefix(r#"""""#) {
            return Ok(match multiline(rest, input)? {
                Some(text) if !text.is_empty() => Step::Send(text),
                _ => Step::Done,
            });
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(&cmd) = words.first() else {
            return Ok(Step::Done);
        };
        if !cmd.starts_with('/') {
            return Ok(Step::Send(line.to_string()));
        }
        match (cmd, words.get(1).copied()) {
            ("/bye" | "/exit", _) => return Ok(Step::Exit),
            ("/clear", _) => {
                self.messages.clear();
                dec.truncate(0);
                writeln!(out, "Cleared session context")?;
            }
            ("/set", Some("parameter")) if words.len() >= 4 => {
                match self.set_parameter(words[2], &words[3..]) {
                    Ok(()) => writeln!(
                        out,
                        "Set parameter '{}' to '{}'",
                        words[2],
                        words[3..].join(", ")
                    )?,
                    Err(e) => writeln!(out, "Couldn't set parameter: {e}")?,
                }
            }
            ("/set", Some("parameter")) => write!(out, "{USAGE_PARAMETERS}")?,
            ("/set", Some("system")) if words.len() >= 3 => {
                let text = after_words(line, 2);
                let text = match text.strip_prefix(r#"""""#) {
                    Some(rest) => match multiline(rest, input)? {
                        Some(t) => t,
                        None => return Ok(Step::Done),
                    },
                    None => text.to_string(),
                };
                self.opts.system = Some(text);
                writeln!(out, "Set system message.")?;
            }
            ("/set", Some("verbose")) => {
                self.verbose = true;
                writeln!(out, "Set 'verbose' mode.")?;
            }
            ("/set", Some("quiet")) => {
                self.verbose = false;
                writeln!(out, "Set 'quiet' mode.")?;
            }
            ("/set", None | Some("system")) => write!(out, "{USAGE_SET}")?,
            ("/show", Some(what)) => self.show(what, out)?,
            ("/show", None) => write!(out, "{USAGE_SHOW}")?,
            ("/?" | "/help", Some("set" | "/set")) => write!(out, "{USAGE_SET}")?,
            ("/?" | "/help", Some("show" | "/show")) => write!(out, "{USAGE_SHOW}")?,
            ("/?" | "/help", _) => write!(out, "{USAGE}")?,
            ("/set", Some(other)) => {
                writeln!(out, "Unknown command '/set {other}'. Type /? for help")?
            }
            _ => writeln!(out, "Unknown command '{cmd}'. Type /? for help")?,
        }
        Ok(Step::Done)
    }

    /// Answers `user`: renders the conversation with it, decodes what the
    /// cache lacks, streams the answer and keeps both in the conversation.
    fn turn<D: Cache>(
        &mut self,
        dec: &mut D,
        user: &str,
        out: &mut dyn Write,
        interrupt: &AtomicBool,
    ) -> Result<(), String> {
        let io = |e: std::io::Error| e.to_string();
        interrupt.store(false, Ordering::SeqCst);
        let t0 = Instant::now();
        let n_ctx = dec.n_ctx();
        let ids = loop {
            let o = InferOptions {
                messages: self.messages.clone(),
                prompt: user.to_string(),
                ..self.opts.clone()
            };
            match encode_prompt(self.tok, self.gguf_template.as_deref(), &o) {
                Err(e) => {
                    writeln!(out, "error: {e}").map_err(io)?;
                    return Ok(());
                }
                Ok(ids) if ids.len() < n_ctx => break ids,
                Ok(ids) if self.messages.is_empty() => {
                    let n = ids.len();
                    writeln!(
                        out,
                        "error: the message is too long: {n} tokens do not fit a context of {n_ctx}"
                    )
                    .map_err(io)?;
                    return Ok(());
                }
                Ok(_) => self.drop_oldest(),
            }
        };
        let cached = common_prefix(dec.tokens(), &ids).min(ids.len() - 1);
        dec.truncate(cached);
        let mut sampler = Sampler::new(self.opts.sampler.clone()).map_err(|e| e.to_string())?;
        if let Some(f) = &self.opts.format {
            let g = engine::grammar::Grammars::new(self.tok).map_err(|e| e.to_string())?;
            sampler.constrain(g.constraint(f).map_err(|e| e.to_string())?);
        }
        let gen = GenerateOptions {
            num_predict: self.opts.num_predict,
            num_keep: self.opts.num_keep,
            draft_max: self.opts.draft_max,
            suppress: vec![],
        };
        let tok = self.tok;
        let is_eog = |t: i32| u32::try_from(t).is_ok_and(|t| tok.is_eog(t));
        let mut answer = String::new();
        let mut interrupted = false;
        let stats = {
            let mut on_event = |ev: Event| match ev {
                Event::Token { text, .. } | Event::Text(text) => {
                    answer.push_str(text);
                    out.write_all(text.as_bytes()).and_then(|_| out.flush())
                }
                Event::Notice(_) | Event::PromptEnd(_) => Ok(()),
            };
            let mut output = Output {
                tok,
                utf8: StreamDecoder::new(),
                stop: StopBuffer::new(&self.opts.stop),
                on_event: &mut on_event,
                io: None,
                logprobs: None,
            };
            let stats = generate(
                dec,
                &ids[cached..],
                &mut sampler,
                &gen,
                &is_eog,
                &mut |t, l| {
                    if interrupt.load(Ordering::SeqCst) {
                        interrupted = true;
                        return Ok(false);
                    }
                    Ok(output.token(t, l))
                },
            )
            .map_err(|e| e.to_string())?;
            if let Some(e) = output.io.take() {
                return Err(e.to_string());
            }
            output.finish().map_err(io)?;
            stats
        };
        writeln!(out, "\n").map_err(io)?;
        if self.verbose {
            let s = Summary {
                stats: stats.clone(),
                total_duration: t0.elapsed(),
                engine: self.engine,
                ..Default::default()
            };
            write!(out, "{}", s.verbose_text()).map_err(io)?;
        }
        self.messages.push(Message::user(user));
        self.messages.push(Message::assistant(&answer));
        self.turns.push(Turn {
            user: user.to_string(),
            answer,
            prompt_tokens: ids.len(),
            cached,
            stats,
            interrupted,
        });
        Ok(())
    }

    /// Drops the oldest message, and the ones after it up to the next user
    /// message, so the conversation still starts with the user.
    fn drop_oldest(&mut self) {
        self.messages.remove(0);
        while self.messages.first().is_some_and(|m| m.role != "user") {
            self.messages.remove(0);
        }
    }

    /// `/set parameter NAME VALUE…`: checks the value(s) and applies them to
    /// the next turns; on error nothing changes.
    fn set_parameter(&mut self, name: &str, vals: &[&str]) -> Result<(), String> {
        let one = || match vals {
            [v] => Ok(*v),
            _ => Err(format!("{name} takes one value, not {}", vals.len())),
        };
        let float = || {
            let v = one()?;
            v.parse::<f32>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| format!("invalid value {v:?} for {name}: expected a number"))
        };
        let int = || {
            let v = one()?;
            v.parse::<i64>()
                .map_err(|_| format!("invalid value {v:?} for {name}: expected an integer"))
        };
        let count = || {
            let v = int()?;
            usize::try_from(v).map_err(|_| format!("invalid value {v} for {name}: it is negative"))
        };
        let mut o = self.opts.clone();
        let s = &mut o.sampler;
        let shown = match name {
            "temperature" => Value::from(f64::from({
                s.temperature = float()?;
                s.temperature
            })),
            "top_p" => Value::from(f64::from({
                s.top_p = float()?;
                s.top_p
            })),
            "min_p" => Value::from(f64::from({
                s.min_p = float()?;
                s.min_p
            })),
            "repeat_penalty" => Value::from(f64::from({
                s.repeat_penalty = float()?;
                s.repeat_penalty
            })),
            "top_k" => Value::from({
                s.top_k = count()?;
                s.top_k
            }),
            "repeat_last_n" => Value::from({
                s.repeat_last_n = count()?;
                s.repeat_last_n
            }),
            "seed" => Value::from({
                s.seed = int()? as u64;
                int()?
            }),
            "num_keep" => Value::from({
                o.num_keep = count()?;
                o.num_keep
            }),
            "num_predict" => {
                let n = int()?;
                o.num_predict = usize::try_from(n).ok();
                Value::from(n)
            }
            "stop" => {
                o.stop = vals.iter().map(|v| v.to_string()).collect();
                Value::from(o.stop.clone())
            }
            "num_ctx" | "num_batch" | "num_thread" | "num_gpu" => {
                return Err(format!(
                    "{name} cannot change during a chat (give it as a flag when starting infer)"
                ))
            }
            _ => {
                return Err(format!(
                    "unknown parameter {name:?} (known: {})",
                    PARAMETERS.join(", ")
                ))
            }
        };
        o.sampler.validate().map_err(|e| e.to_string())?;
        self.opts = o;
        self.user_params.insert(name.to_string(), shown);
        Ok(())
    }

    /// `/show WHAT`.
    fn show(&self, what: &str, out: &mut dyn Write) -> std::io::Result<()> {
        let template = self
            .opts
            .template
            .as_deref()
            .or(self.gguf_template.as_deref());
        match what {
            "info" => {
                let mut info = self.info.clone();
                let mut options = self.params_layer.clone();
                options.extend(self.user_params.clone());
                let options = (!options.is_empty()).then_some(Value::Object(options));
                info.insert("options".into(), options.unwrap_or(Value::Null));
                info.insert("system".into(), self.opts.system.clone().into());
                write!(out, "{}", gguf::show::table(&info, &Default::default()))
            }
            "parameters" => {
                writeln!(out, "Model defined parameters:")?;
                if self.params_layer.is_empty() {
                    writeln!(
                        out,
                        "  No additional parameters were specified for this model."
                    )?;
                }
                for (k, v) in &self.params_layer {
                    writeln!(out, "  {k:<30} {v}")?;
                }
                writeln!(out)?;
                if !self.user_params.is_empty() {
                    writeln!(out, "User defined parameters:")?;
                    for (k, v) in &self.user_params {
                        writeln!(out, "  {k:<30} {v}")?;
                    }
                    writeln!(out)?;
                }
                Ok(())
            }
            "system" => match &self.opts.system {
                Some(s) => writeln!(out, "{s}\n"),
                None => writeln!(out, "No system message was specified for this model."),
            },
            "template" => match template {
                Some(t) => writeln!(out, "{t}"),
                None => writeln!(out, "No prompt template was specified for this model."),
            },
            other => writeln!(out, "Unknown command '/show {other}'. Type /? for help"),
        }
    }
}

/// The rest of a message of several lines begun with `"""` and `first`:
/// lines up to one ending in `"""`. `None` when Ctrl-C or the end of input
/// cancels it.
fn multiline(first: &str, input: &mut dyn LineSource) -> std::io::Result<Option<String>> {
    const END: &str = r#"""""#;
    if let Some(text) = first.strip_suffix(END) {
        return Ok(Some(text.to_string()));
    }
    let mut text = format!("{first}\n");
    loop {
        match input.read_line("... ")? {
            Input::Line(l) => match l.strip_suffix(END) {
                Some(last) => {
                    text.push_str(last);
                    return Ok(Some(text));
                }
                None => {
                    text.push_str(&l);
                    text.push('\n');
                }
            },
            Input::Interrupted | Input::Eof => return Ok(None),
        }
    }
}

/// `line` after its first `n` words, without the space before it.
fn after_words(line: &str, n: usize) -> &str {
    let mut rest = line.trim_start();
    for _ in 0..n {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        rest = rest[end..].trim_start();
    }
    rest
}

/// Parameters `/set parameter` knows.
const PARAMETERS: &[&str] = &[
    "seed",
    "num_predict",
    "top_k",
    "top_p",
    "min_p",
    "temperature",
    "repeat_penalty",
    "repeat_last_n",
    "num_keep",
    "stop",
];

const USAGE: &str = "Available Commands:
  /set            Set session variables
  /show           Show model information
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command

Use \"\"\" to begin a multi-line message.

";

const USAGE_SET: &str = "Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats

";

const USAGE_SHOW: &str = "Available Commands:
  /show info         Show details for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template

";

const USAGE_PARAMETERS: &str = "Available Parameters:
  /set parameter seed <int>             Random number seed
  /set parameter num_predict <int>      Max number of tokens to predict
  /set parameter top_k <int>            Pick from top k num of tokens
  /set parameter top_p <float>          Pick token based on sum of probabilities
  /set parameter min_p <float>          Pick token based on top token probability * min_p
  /set parameter temperature <float>    Set creativity level
  /set parameter repeat_penalty <float> How strongly to penalize repetitions
  /set parameter repeat_last_n <int>    Set how far back to look for repetitions
  /set parameter num_keep <int>         Tokens kept when the context shifts
  /set parameter stop <string> <string> ...   Set the stop parameters

";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_prefix_stops_at_first_difference() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4, 5]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
        assert_eq!(common_prefix(&[1, 2], &[1, 2, 3]), 2);
    }

    #[test]
    fn after_words_keeps_inner_spacing() {
        assert_eq!(after_words("/set system  Be  brief. ", 2), "Be  brief. ");
        assert_eq!(after_words("  /set system", 2), "");
    }

    #[test]
    fn multiline_reads_to_the_closing_quotes() {
        let mut more = ["second".to_string(), "third\"\"\"".to_string()].into_iter();
        let got = multiline("first", &mut more).unwrap();
        assert_eq!(got.as_deref(), Some("first\nsecond\nthird"));
        let got = multiline("one line\"\"\"", &mut std::iter::empty()).unwrap();
        assert_eq!(got.as_deref(), Some("one line"));
        assert_eq!(multiline("open", &mut std::iter::empty()).unwrap(), None);
    }
}
