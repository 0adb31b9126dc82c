//! `infer`: run a model on a prompt and stream the answer.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Parser;
use cli::placement::Engine;
use protocol::{media, Line};
use runner::{chat, ChatOptions};
use runner::{infer, EngineChoice, Event, InferOptions};

mod term;

/// Generate text with a GGUF model, streaming it to stdout.
///
/// The model comes from pipeline documents on stdin (`resolve … | fetch-blob
/// | verify | infer`), whose params layer sets defaults that flags override,
/// or from --model. Without --raw the prompt is rendered with the model's chat
/// template (the template layer, else the GGUF's), after the system prompt
/// (--system, else the system layer) and the messages layer.
///
/// With --chat, or with no prompt when a terminal is attached, it chats like
/// `ollama run`: turns are read from the terminal (even while stdin carries
/// the pipeline documents), the conversation and its cache are kept between
/// turns, and /? lists the commands. With --model and stdin not a terminal,
/// --chat reads the turns from stdin, one line each (for scripts and tests).
/// Lines typed at the terminal are kept in ~/.ollama/history, as Ollama's
/// REPL keeps them, and come back with up-arrow in later runs
/// (OLLAMA_NOHISTORY=1: not kept).
#[derive(Parser, Debug)]
#[command(
    name = "infer",
    version,
    after_help = "Example: resolve smollm2:135m | fetch-blob | verify | infer -p 'Why is the sky blue?'"
)]
struct Args {
    /// Prompt words (joined by spaces), if neither -p nor --prompt-file.
    words: Vec<String>,
    /// The GGUF file to run (instead of documents on stdin).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The prompt.
    #[arg(short = 'p', long)]
    prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(long, conflicts_with = "prompt")]
    prompt_file: Option<PathBuf>,
    /// Send the prompt as is, without a chat template.
    #[arg(long)]
    raw: bool,
    /// System message (chat template only; overrides the system layer).
    #[arg(long)]
    system: Option<String>,
    /// Most tokens to generate (-1: until the model stops).
    #[arg(short = 'n', long, allow_negative_numbers = true)]
    num_predict: Option<i64>,
    /// Sampling temperature (0: greedy) [default: 0.8].
    #[arg(long)]
    temperature: Option<f32>,
    /// Keep the k most likely tokens (0: all) [default: 40].
    #[arg(long)]
    top_k: Option<usize>,
    /// Nucleus sampling threshold [default: 0.9].
    #[arg(long)]
    top_p: Option<f32>,
    /// Minimum probability relative to the top token [default: 0].
    #[arg(long)]
    min_p: Option<f32>,
    /// Penalty for recently seen tokens [default: 1.0].
    #[arg(long)]
    repeat_penalty: Option<f32>,
    /// How many recent tokens the penalty considers [default: 64].
    #[arg(long)]
    repeat_last_n: Option<usize>,
    /// Random seed (same seed, same output) [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Stop at this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Most tokens drafted and verified per step when sampling is greedy
    /// (--temperature 0): the text's own earlier n-grams propose what comes
    /// next, one pass checks them all, the output is unchanged; 0: off.
    #[arg(long, default_value_t = engine::generate::DRAFT_MAX)]
    draft_max: usize,
    /// Structured output: `json` (any JSON object), or a JSON schema the
    /// output must match (its text, e.g. '{"type":"object",…}').
    #[arg(long, value_name = "json|SCHEMA")]
    format: Option<String>,
    /// Never sample end-of-generation tokens, as llama.cpp's --ignore-eos
    /// (for benchmarks with a fixed token count).
    #[arg(long)]
    ignore_eos: bool,
    /// Context length, capped at the model's [default: 4096].
    #[arg(long)]
    ctx: Option<usize>,
    /// CPU threads [default: physical cores].
    #[arg(long)]
    threads: Option<usize>,
    /// KV cache type: f16, q8_0 or q4_0 (quantized ones use flash attention).
    #[arg(long, default_value = "f16")]
    kv_type: engine::kv_cache::KvType,
    /// Flash attention (fused attention kernel): on (the default, as in
    /// llama.cpp) or off; quantized caches need it on.
    #[arg(long, value_parser = ["on", "off"], default_value = "on", num_args = 0..=1, default_missing_value = "on")]
    flash_attn: String,
    /// Read the model into memory instead of mapping it.
    #[arg(long)]
    no_mmap: bool,
    /// Keep weights in the file's layout (no CPU repacking into interleaved
    /// blocks, as llama.cpp's --no-repack): slower on Q4_0/Q4_K, but the
    /// sums of an --rpc run, whose workers never repack.
    #[arg(long)]
    no_repack: bool,
    #[command(flatten)]
    place: cli::placement::Placement,
    /// Print JSON Lines events and a final record instead of plain text.
    #[arg(long)]
    json: bool,
    /// Print timing statistics on stderr, like `ollama run --verbose` (in a
    /// chat after each answer, with it).
    #[arg(long)]
    verbose: bool,
    /// Chat interactively (the prompt, if any, is the first turn).
    #[arg(long, conflicts_with_all = ["json", "raw"])]
    chat: bool,
}

fn main() -> std::process::ExitCode {
    cli::main(|| {
        let a: Args = cli::parse_args();
        let mut o = InferOptions::default();
        let mut params = None;
        if let Some(m) = &a.model {
            o.model = m.clone();
        } else {
            params = model_from_stdin(&mut o)?;
        }
        let prompt = match (&a.prompt, &a.prompt_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("reading prompt file {}", f.display()))?,
            ),
            (None, None) if !a.words.is_empty() => Some(a.words.join(" ")),
            _ => None,
        };
        let chatting = a.chat || (prompt.is_none() && !a.json && !a.raw && term::attached());
        if !chatting && prompt.is_none() {
            bail!("no prompt: give -p, --prompt-file, words or --chat");
        }
        o.prompt = prompt.unwrap_or_default();
        let s = &mut o.sampler;
        set(&mut s.temperature, a.temperature);
        set(&mut s.top_k, a.top_k);
        set(&mut s.top_p, a.top_p);
        set(&mut s.min_p, a.min_p);
        set(&mut s.repeat_penalty, a.repeat_penalty);
        set(&mut s.repeat_last_n, a.repeat_last_n);
        set(&mut s.seed, a.seed);
        if let Some(n) = a.num_predict {
            o.num_predict = usize::try_from(n).ok();
        }
        set(&mut o.n_ctx, a.ctx);
        o.ignore_eos = a.ignore_eos;
        o.draft_max = a.draft_max;
        o.format = match a.format.as_deref() {
            None | Some("") => None,
            Some("json") => Some(engine::grammar::Format::Json),
            Some(s) => match serde_json::from_str::<serde_json::Value>(s) {
                Ok(v @ serde_json::Value::Object(_)) => Some(engine::grammar::Format::Schema(v)),
                _ => bail!("--format must be json or a JSON schema object, not {s:?}"),
            },
        };
        set(&mut o.n_threads, a.threads);
        if a.system.is_some() {
            o.system = a.system.clone();
        }
        if !a.stop.is_empty() {
            o.stop = a.stop.clone();
        }
        (o.raw, o.kv_type, o.flash_attn, o.no_mmap) =
            (a.raw, a.kv_type, a.flash_attn == "on", a.no_mmap);
        o.gpu_layers = a.place.gpu_layers;
        (o.rpc, o.tensor_split) = (a.place.rpc.clone(), a.place.tensor_split.clone());
        o.engine = match a.place.engine {
            Some(Engine::Native) => EngineChoice::Native,
            Some(Engine::LlamaCpp) => EngineChoice::LlamaCpp,
            None => EngineChoice::Auto,
        };
        o.no_repack = a.no_repack;
        if o.n_ctx == 0 || o.n_threads == 0 {
            bail!("--ctx and --threads must be at least 1");
        }
        if chatting {
            return run_chat(o, params, &a);
        }
        let mut out = PipeWatch::new(std::io::stdout().lock());
        let json = a.json;
        let summary = infer(&o, &mut |ev| match ev {
            Event::Notice(n) => writeln!(std::io::stderr(), "{n}"),
            Event::PromptEnd(_) => Ok(()),
            Event::Token { id, text, .. } if json => writeln!(
                out,
                "{}",
                serde_json::json!({"type": "token", "data": {"id": id, "text": text}})
            ),
            Event::Text(text) if json => writeln!(
                out,
                "{}",
                serde_json::json!({"type": "token", "data": {"text": text}})
            ),
            Event::Token { text, .. } | Event::Text(text) => {
                out.write_all(text.as_bytes()).and_then(|_| out.flush())
            }
        })
        .map_err(anyhow::Error::msg);
        if out.closed {
            return Ok(cli::Outcome::Ok); // stdout closed (`| head`): quietly done
        }
        let summary = summary.with_context(|| format!("running {}", o.model.display()))?;
        if json {
            writeln!(
                out,
                "{}",
                serde_json::json!({"type": "done", "data": summary.to_json()})
            )?;
        } else {
            writeln!(out)?;
        }
        if a.verbose {
            eprint!("{}", summary.verbose_text());
        }
        Ok(cli::Outcome::Ok)
    })
}

/// Chats on the terminal, or over stdin lines when --model frees stdin
/// and it is not a terminal.
fn run_chat(o: InferOptions, params: Option<String>, a: &Args) -> anyhow::Result<cli::Outcome> {
    let co = ChatOptions {
        infer: o,
        params_layer: params,
        verbose: a.verbose,
    };
    let mut out = PipeWatch::new(std::io::stdout().lock());
    let r = if a.model.is_some() && !std::io::stdin().is_terminal() {
        let mut lines = std::io::stdin().lock().lines().map_while(Result::ok);
        chat(&co, &mut lines, &mut out, &term::INTERRUPT)
    } else {
        let mut t = term::Term::open()?;
        term::catch_ctrl_c()?;
        chat(&co, &mut t, &mut out, &term::INTERRUPT)
    };
    if out.closed {
        return Ok(cli::Outcome::Ok); // stdout closed: quietly done
    }
    r.map_err(anyhow::Error::msg)
        .with_context(|| format!("chatting with {}", co.infer.model.display()))?;
    Ok(cli::Outcome::Ok)
}

/// A writer that remembers whether its reader went away (EPIPE): the engine
/// reports write errors as text, and a closed stdout (`infer … | head`) must
/// end quietly with 0, not as an error.
struct PipeWatch<W> {
    inner: W,
    closed: bool,
}

impl<W: Write> PipeWatch<W> {
    fn new(inner: W) -> Self {
        PipeWatch {
            inner,
            closed: false,
        }
    }
    fn note<T>(&mut self, r: std::io::Result<T>) -> std::io::Result<T> {
        if matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe) {
            self.closed = true;
        }
        r
    }
}

impl<W: Write> Write for PipeWatch<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let r = self.inner.write(buf);
        self.note(r)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let r = self.inner.flush();
        self.note(r)
    }
}

/// Overrides `dst` when the flag was given.
fn set<T>(dst: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *dst = v;
    }
}

/// Takes the model path, params, template, system and messages from the
/// first model document on stdin; returns the params layer.
fn model_from_stdin(o: &mut InferOptions) -> anyhow::Result<Option<String>> {
    if !cli::stdin_has_data() {
        bail!("no model: give --model FILE.gguf or pipe documents from resolve");
    }
    for line in cli::stdin_lines() {
        let Line::Model(doc) = line.context("reading pipeline documents on stdin")? else {
            continue;
        };
        let layer = doc
            .model_layer()
            .with_context(|| format!("model {} has no weights layer", doc.name))?;
        o.model = layer.path.clone().with_context(|| {
            format!(
                "model {} has no local path for its weights (run fetch-blob)",
                doc.name
            )
        })?;
        let params = doc.layer(media::PARAMS).and_then(|l| l.text.clone());
        if let Some(p) = params.as_deref() {
            o.apply_params(p)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("params of {}", doc.name))?;
        }
        o.system = doc.layer(media::SYSTEM).and_then(|l| l.text.clone());
        o.template = doc.layer(media::TEMPLATE).and_then(|l| l.text.clone());
        if let Some(m) = doc.layer(media::MESSAGES).and_then(|l| l.text.as_deref()) {
            o.apply_messages(m)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("messages of {}", doc.name))?;
        }
        return Ok(params);
    }
    bail!("no model document on stdin")
}
