//! One-shot runs: [`infer`] renders the prompt, loads the model on the
//! engine the plan chose, generates and streams [`Event`]s.

use std::time::{Duration, Instant};

use engine::generate::{generate, Decode, GenerateOptions, Stats};
use engine::sampler::Sampler;
use engine::session::Session;
use engine::stop::StopBuffer;
use engine::tokenizer::{StreamDecoder, Tokenizer};

use crate::plan::{self, session_options, Header, LlamaDecode, Loaded};
use crate::prompt::encode_prompt;
use crate::InferOptions;

/// What [`infer`] reports while it runs.
#[derive(Debug)]
pub enum Event<'a> {
    /// A generated token and the text it completes (may be empty while a
    /// multi-byte character or a possible stop string is pending).
    Token {
        /// Token id.
        id: i32,
        /// Text ready to print.
        text: &'a str,
        /// Its log-probability, when the run asked for them
        /// ([`InferOptions::logprobs`]).
        logprobs: Option<&'a TokenLogprobs>,
    },
    /// Text released at the end (held back earlier).
    Text(&'a str),
    /// A one-line notice for stderr.
    Notice(&'a str),
    /// The end of the rendered prompt (its last 64 characters), once before
    /// any token of a held model's run: whether the template opened what
    /// the output continues (a thinking model's `<think>`).
    PromptEnd(&'a str),
}

/// A generated token's log-probability and the most likely tokens at its
/// place: the log-softmax of the logits it was sampled from, before any
/// sampling transform (penalties, temperature, top-k/p, a grammar).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenLogprobs {
    /// The token.
    pub token: Logprob,
    /// The most likely tokens, most likely first
    /// ([`InferOptions::logprobs`] of them).
    pub top: Vec<Logprob>,
}

/// One token and its log-probability.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Logprob {
    /// The token's bytes (part of a character for some tokens).
    pub bytes: Vec<u8>,
    /// Natural log of its probability (≤ 0).
    pub logprob: f32,
}

impl TokenLogprobs {
    /// `tok`'s log-probability under `logits` and the `top` most likely
    /// tokens, named by their bytes in `vocab`.
    pub fn of(vocab: &Tokenizer, logits: &[f32], tok: i32, top: usize) -> TokenLogprobs {
        let (lp, best) = engine::sampler::logprobs(logits, tok, top);
        let named = |id: i32, logprob: f32| Logprob {
            bytes: u32::try_from(id)
                .map(|i| vocab.token_to_piece(i, false).to_vec())
                .unwrap_or_default(),
            logprob,
        };
        TokenLogprobs {
            token: named(tok, lp),
            top: best.into_iter().map(|(i, l)| named(i, l)).collect(),
        }
    }
}

/// Counts and durations of a run, as Ollama reports them.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Engine counts and times.
    pub stats: Stats,
    /// Loading the model and preparing the cache.
    pub load_duration: Duration,
    /// The whole call.
    pub total_duration: Duration,
    /// `"native"` or `"llama.cpp"`.
    pub engine: &'static str,
}

impl Summary {
    /// The final record's fields (durations in ns), as in Ollama's API.
    pub fn to_json(&self) -> serde_json::Value {
        let ns = |d: Duration| d.as_nanos() as u64;
        serde_json::json!({
            "done": true,
            "done_reason": self.stats.done_reason.as_str(),
            "engine": self.engine,
            "total_duration": ns(self.total_duration),
            "load_duration": ns(self.load_duration),
            "prompt_eval_count": self.stats.prompt_eval_count,
            "prompt_eval_duration": ns(self.stats.prompt_eval_duration),
            "eval_count": self.stats.eval_count,
            "eval_duration": ns(self.stats.eval_duration),
            "draft_count": self.stats.draft_count,
            "draft_accepted": self.stats.draft_accepted,
        })
    }

    /// The statistics block `ollama run --verbose` prints.
    pub fn verbose_text(&self) -> String {
        let s = &self.stats;
        let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
        format!(
            "total duration:       {:?}\nload duration:        {:?}\nprompt eval count:    {} token(s)\nprompt eval duration: {:?}\nprompt eval rate:     {:.2} tokens/s\neval count:           {} token(s)\neval duration:        {:?}\neval rate:            {:.2} tokens/s\n",
            self.total_duration,
            self.load_duration,
            s.prompt_eval_count,
            s.prompt_eval_duration,
            rate(s.prompt_eval_count, s.prompt_eval_duration),
            s.eval_count,
            s.eval_duration,
            rate(s.eval_count, s.eval_duration),
        ) + &if s.draft_count > 0 {
            format!(
                "drafted:              {} token(s), {} kept\n",
                s.draft_count, s.draft_accepted
            )
        } else {
            String::new()
        }
    }
}

/// Loads the model, runs the prompt and streams generated text to
/// `on_event`. Errors do not name the model file (the caller does).
pub fn infer(
    opts: &InferOptions,
    on_event: &mut dyn FnMut(Event) -> std::io::Result<()>,
) -> Result<Summary, String> {
    let t0 = Instant::now();
    let map = plan::map(opts)?;
    let gg = gguf::parse(map.bytes()).map_err(|e| e.to_string())?;
    let Header {
        arch,
        tok,
        template,
        n_layer,
    } = Header::read(&gg)?;
    let prompt = encode_prompt(&tok, template.as_deref(), opts)?;
    let mut sampler = Sampler::new(opts.sampler.clone()).map_err(|e| e.to_string())?;
    if let Some(f) = &opts.format {
        let g = engine::grammar::Grammars::new(&tok).map_err(|e| e.to_string())?;
        sampler.constrain(g.constraint(f).map_err(|e| e.to_string())?);
    }
    let gen = GenerateOptions {
        num_predict: opts.num_predict,
        num_keep: opts.num_keep,
        draft_max: opts.draft_max,
        // as llama.cpp's --ignore-eos: end tokens are never sampled
        suppress: if opts.ignore_eos {
            tok.eog_tokens().iter().map(|&t| t as i32).collect()
        } else {
            vec![]
        },
    };
    let plan = plan::plan(opts, &arch, n_layer)?;
    for notice in &plan.notices {
        on_event(Event::Notice(notice)).map_err(|e| e.to_string())?;
    }
    let loaded = plan::load(opts, &plan, &gg, &map)?;
    drop(gg);
    drop(map);
    let mut out = Output {
        tok: &tok,
        utf8: StreamDecoder::new(),
        stop: StopBuffer::new(&opts.stop),
        on_event,
        io: None,
        logprobs: opts.logprobs,
    };
    let is_eog = |t: i32| u32::try_from(t).is_ok_and(|t| tok.is_eog(t));
    let mut summary = Summary::default();
    let mut run = |dec: &mut dyn Decode, summary: &mut Summary| {
        summary.load_duration = t0.elapsed();
        let r = generate(dec, &prompt, &mut sampler, &gen, &is_eog, &mut |t, l| {
            Ok(out.token(t, l))
        });
        summary.stats = r.map_err(|e| e.to_string())?;
        if let Some(e) = out.io.take() {
            return Err(e.to_string());
        }
        out.finish().map_err(|e| e.to_string())
    };
    match &loaded {
        Loaded::Native(l) => {
            summary.engine = "native";
            let mut sess = Session::new(l.model.as_ref(), &session_options(opts))
                .map_err(|e| e.to_string())?;
            run(&mut sess, &mut summary)?;
        }
        Loaded::LlamaCpp(m) => {
            summary.engine = "llama.cpp";
            let mut dec = LlamaDecode::new(m, opts)?;
            run(&mut dec, &mut summary)?;
        }
    }
    summary.total_duration = t0.elapsed();
    Ok(summary)
}

/// Streams token text: complete UTF-8 characters only, stop strings cut.
pub(crate) struct Output<'a> {
    pub(crate) tok: &'a Tokenizer,
    pub(crate) utf8: StreamDecoder,
    pub(crate) stop: StopBuffer,
    pub(crate) on_event: &'a mut dyn FnMut(Event) -> std::io::Result<()>,
    pub(crate) io: Option<std::io::Error>,
    /// Report each token's log-probability with this many alternatives.
    pub(crate) logprobs: Option<usize>,
}

impl Output<'_> {
    /// Emits a token's text (and log-probability, from the `logits` it was
    /// sampled from); `false` ends generation (stop string or I/O error).
    pub(crate) fn token(&mut self, id: i32, logits: &[f32]) -> bool {
        let piece = self.tok.token_to_piece(id as u32, false).to_vec();
        let text = self.utf8.push(&piece);
        let (text, stopped) = self.stop.push(&text);
        let lp = self
            .logprobs
            .map(|top| TokenLogprobs::of(self.tok, logits, id, top));
        let ev = Event::Token {
            id,
            text: &text,
            logprobs: lp.as_ref(),
        };
        if let Err(e) = (self.on_event)(ev) {
            self.io = Some(e);
            return false;
        }
        !stopped
    }
    pub(crate) fn finish(&mut self) -> std::io::Result<()> {
        let rest = self.utf8.finish();
        let (mut text, stopped) = self.stop.push(&rest);
        if !stopped {
            text.push_str(&self.stop.finish());
        }
        if !text.is_empty() {
            (self.on_event)(Event::Text(&text))?;
        }
        Ok(())
    }
}
