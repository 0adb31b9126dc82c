//! A model held loaded for many runs: what a server's worker needs.
//!
//! [`hold`] loads the model of an [`InferOptions`] once (engine and device
//! chosen as for [`crate::infer`]) and hands a [`Held`] to a closure, which
//! may [`Held::run`] any number of [`Job`]s on it, one after another, until
//! it returns; then the model is freed. The closure runs on the caller's
//! thread, so a server keeps one thread per loaded model and feeds it jobs
//! from a queue. Each run reuses the longest prefix its prompt shares with
//! the cache (a chat's next turn decodes only the new messages).
//!
//! ```no_run
//! let mut o = runner::InferOptions::default();
//! o.model = "SmolLM2-135M-Instruct.Q4_1.gguf".into();
//! runner::hold(&o, &mut |h| {
//!     let mut job = o.clone();
//!     job.prompt = "Hi".into();
//!     let never = || false;
//!     let r = h.run(&runner::Job::new(&job, &never), &mut |_| Ok(()))?;
//!     eprintln!("{} tokens", r.summary.stats.eval_count);
//!     Ok(())
//! })?;
//! # Ok::<(), String>(())
//! ```

use std::time::Instant;

use engine::generate::{generate, Decode, GenerateOptions};
use engine::grammar::Grammars;
use engine::sampler::Sampler;
use engine::session::Session;
use engine::stop::StopBuffer;
use engine::tokenizer::{StreamDecoder, Tokenizer};
use template::{render_chat, ChatTemplate};

use crate::infer::{Event, Output, Summary};
use crate::plan::{self, session_options, Header, LlamaDecode, Loaded};
use crate::prompt::{prompt_end, prompt_ids, render_prompt, request};
use crate::InferOptions;

/// One run on a held model.
pub struct Job<'a> {
    /// Prompt (or messages), system, template, raw, sampling, limits and
    /// stop strings of this run; load-time fields (model, context, threads,
    /// engine) are ignored: they are the held model's.
    pub opts: &'a InferOptions,
    /// Render `opts.messages` as the whole conversation (a chat request:
    /// its last message is the user's turn, or an assistant prefix to
    /// continue); `opts.prompt` is then ignored.
    pub chat: bool,
    /// Tokens put before the rendered prompt (Ollama's deprecated
    /// `context` of `/api/generate`: an earlier exchange).
    pub context: &'a [i32],
    /// Checked between tokens: `true` ends the run (a client went away).
    pub cancel: &'a dyn Fn() -> bool,
}

impl<'a> Job<'a> {
    /// A plain prompt run of `opts` that `cancel` can stop.
    pub fn new(opts: &'a InferOptions, cancel: &'a dyn Fn() -> bool) -> Job<'a> {
        Job {
            opts,
            chat: false,
            context: &[],
            cancel,
        }
    }
}

/// What [`Held::run`] did.
#[derive(Clone, Debug, Default)]
pub struct RunResult {
    /// Counts and times (`load_duration` is zero: the model was loaded).
    pub summary: Summary,
    /// Prompt tokens the cache already held (not decoded again).
    pub cached: usize,
    /// The prompt's tokens followed by the generated ones (Ollama's
    /// `context`).
    pub tokens: Vec<i32>,
    /// Whether `cancel` ended the run.
    pub canceled: bool,
}

/// A loaded model and its cache, lent to the closure of [`hold`].
pub struct Held<'a> {
    pub(crate) tok: &'a Tokenizer,
    gguf_template: Option<&'a str>,
    pub(crate) dec: &'a mut dyn CacheDecode,
    pub(crate) engine: &'static str,
    /// The tokenizer's trie for structured output, built on first use.
    grammars: Option<Grammars>,
}

/// A decoder that tells which tokens its cache holds.
pub(crate) trait CacheDecode: Decode {
    fn tokens(&self) -> &[i32];
    /// The same decoder's several sequences, when it has more than one.
    fn multi(&mut self) -> Option<&mut dyn MultiDecode> {
        None
    }
}

impl CacheDecode for Session<'_> {
    fn tokens(&self) -> &[i32] {
        self.history()
    }
    fn multi(&mut self) -> Option<&mut dyn MultiDecode> {
        Some(self)
    }
}

/// A decoder of several sequences at once: the native [`Session`] (see
/// its methods of the same names) and llama.cpp's context ([`LlamaDecode`]).
pub(crate) trait MultiDecode {
    fn n_seq(&self) -> usize;
    fn n_ctx(&self) -> usize;
    /// Tokens per pass while reading a prompt: `decode_seq` splits a
    /// longer one at these boundaries.
    fn n_batch(&self) -> usize;
    fn history_of(&self, seq: usize) -> &[i32];
    fn truncate_seq(&mut self, seq: usize, n: usize);
    fn decode_seq(&mut self, seq: usize, tokens: &[i32]) -> engine::Result<&[f32]>;
    fn step(&mut self, steps: &[(usize, i32)]) -> engine::Result<&[f32]>;
    fn shift_seq(&mut self, seq: usize, num_keep: usize) -> engine::Result<()>;
    fn hidden_seq(&mut self, seq: usize, tokens: &[i32]) -> engine::Result<Vec<f32>>;
}

impl MultiDecode for Session<'_> {
    fn n_seq(&self) -> usize {
        Session::n_seq(self)
    }
    fn n_ctx(&self) -> usize {
        Session::n_ctx(self)
    }
    fn n_batch(&self) -> usize {
        Session::n_batch(self)
    }
    fn history_of(&self, seq: usize) -> &[i32] {
        Session::history_of(self, seq)
    }
    fn truncate_seq(&mut self, seq: usize, n: usize) {
        Session::truncate_seq(self, seq, n)
    }
    fn decode_seq(&mut self, seq: usize, tokens: &[i32]) -> engine::Result<&[f32]> {
        Session::decode_seq(self, seq, tokens)
    }
    fn step(&mut self, steps: &[(usize, i32)]) -> engine::Result<&[f32]> {
        Session::step(self, steps)
    }
    fn shift_seq(&mut self, seq: usize, num_keep: usize) -> engine::Result<()> {
        Session::shift_seq(self, seq, num_keep)
    }
    fn hidden_seq(&mut self, seq: usize, tokens: &[i32]) -> engine::Result<Vec<f32>> {
        Session::hidden_seq(self, seq, tokens)
    }
}

impl CacheDecode for LlamaDecode<'_> {
    fn tokens(&self) -> &[i32] {
        self.history_of(0)
    }
    fn multi(&mut self) -> Option<&mut dyn MultiDecode> {
        Some(self)
    }
}

/// llama.cpp's context of several sequences (`n_seq_max`, a cache per
/// sequence), driven the same way.
impl MultiDecode for LlamaDecode<'_> {
    fn n_seq(&self) -> usize {
        self.seqs.len()
    }
    fn n_ctx(&self) -> usize {
        Decode::n_ctx(self)
    }
    fn n_batch(&self) -> usize {
        self.ctx.n_batch()
    }
    fn history_of(&self, seq: usize) -> &[i32] {
        LlamaDecode::history_of(self, seq)
    }
    fn truncate_seq(&mut self, seq: usize, n: usize) {
        LlamaDecode::truncate_seq(self, seq, n)
    }
    fn decode_seq(&mut self, seq: usize, tokens: &[i32]) -> engine::Result<&[f32]> {
        LlamaDecode::decode_seq(self, seq, tokens)
    }
    fn step(&mut self, steps: &[(usize, i32)]) -> engine::Result<&[f32]> {
        LlamaDecode::step(self, steps)
    }
    fn shift_seq(&mut self, seq: usize, num_keep: usize) -> engine::Result<()> {
        LlamaDecode::shift_seq(self, seq, num_keep)
    }
    fn hidden_seq(&mut self, seq: usize, tokens: &[i32]) -> engine::Result<Vec<f32>> {
        LlamaDecode::hidden_seq(self, seq, tokens)
    }
}

/// Loads the model of `opts` (its path and load-time fields: context,
/// batch, threads, cache type, engine, GPU layers) and calls `f` with it;
/// the model is freed when `f` returns. Notices go to stderr. Errors do not
/// name the model file (the caller does).
pub fn hold(
    opts: &InferOptions,
    f: &mut dyn FnMut(&mut Held) -> Result<(), String>,
) -> Result<(), String> {
    let map = plan::map(opts)?;
    let gg = gguf::parse(map.bytes()).map_err(|e| e.to_string())?;
    let Header {
        arch,
        tok,
        template,
        n_layer,
    } = Header::read(&gg)?;
    let plan = plan::plan(opts, &arch, n_layer)?;
    for notice in &plan.notices {
        eprintln!("{notice}");
    }
    let loaded = plan::load(opts, &plan, &gg, &map)?;
    drop(gg);
    drop(map);
    match &loaded {
        Loaded::Native(l) => {
            let mut sess = Session::new(l.model.as_ref(), &session_options(opts))
                .map_err(|e| e.to_string())?;
            f(&mut Held {
                tok: &tok,
                gguf_template: template.as_deref(),
                dec: &mut sess,
                engine: "native",
                grammars: None,
            })
        }
        Loaded::LlamaCpp(m) => {
            let mut dec = LlamaDecode::new(m, opts)?;
            f(&mut Held {
                tok: &tok,
                gguf_template: template.as_deref(),
                dec: &mut dec,
                engine: "llama.cpp",
                grammars: None,
            })
        }
    }
}

impl Held<'_> {
    /// The context length of the cache.
    pub fn n_ctx(&self) -> usize {
        self.dec.n_ctx()
    }

    /// Runs `job`: renders and tokenizes its prompt, decodes what the cache
    /// lacks, generates and streams text to `on_event` until an end token,
    /// `num_predict`, a stop string, `cancel`, or an error from `on_event`
    /// (which ends the run as canceled).
    pub fn run(
        &mut self,
        job: &Job,
        on_event: &mut dyn FnMut(Event) -> std::io::Result<()>,
    ) -> Result<RunResult, String> {
        let t0 = Instant::now();
        let o = job.opts;
        let (mut ids, end) = self.encode(o, job.chat, job.context)?;
        // a client gone shows at the first token
        let _ = on_event(Event::PromptEnd(&end));
        let cached = common_prefix(self.dec.tokens(), &ids).min(ids.len() - 1);
        self.dec.truncate(cached);
        let mut sampler = self.sampler(o)?;
        let gen = GenerateOptions {
            num_predict: o.num_predict,
            num_keep: o.num_keep,
            draft_max: o.draft_max,
            suppress: vec![],
        };
        let tok = self.tok;
        let is_eog = |t: i32| u32::try_from(t).is_ok_and(|t| tok.is_eog(t));
        let mut out = Output {
            tok,
            utf8: StreamDecoder::new(),
            stop: StopBuffer::new(&o.stop),
            on_event,
            io: None,
            logprobs: o.logprobs,
        };
        let mut generated = vec![];
        let mut canceled = false;
        let stats = generate(
            self.dec,
            &ids[cached..],
            &mut sampler,
            &gen,
            &is_eog,
            &mut |t, logits| {
                if (job.cancel)() {
                    canceled = true;
                    return Ok(false);
                }
                generated.push(t);
                Ok(out.token(t, logits))
            },
        )
        .map_err(|e| e.to_string())?;
        if out.io.take().is_some() {
            canceled = true;
        } else if !canceled {
            out.finish().map_err(|e| e.to_string())?;
        }
        ids.extend(generated);
        Ok(RunResult {
            summary: Summary {
                stats,
                load_duration: Default::default(),
                total_duration: t0.elapsed(),
                engine: self.engine,
            },
            cached,
            tokens: ids,
            canceled,
        })
    }

    /// A sampler for `o`, constrained to `o.format` if it has one.
    pub(crate) fn sampler(&mut self, o: &InferOptions) -> Result<Sampler, String> {
        let mut sampler = Sampler::new(o.sampler.clone()).map_err(|e| e.to_string())?;
        if let Some(f) = &o.format {
            if self.grammars.is_none() {
                self.grammars = Some(Grammars::new(self.tok).map_err(|e| e.to_string())?);
            }
            let g = self.grammars.as_ref().expect("built above");
            sampler.constrain(g.constraint(f).map_err(|e| e.to_string())?);
        }
        Ok(sampler)
    }

    /// The tokens of a run's prompt: `o`'s messages (`chat`) or prompt,
    /// after `context`; an error when they do not fit the context. Also the
    /// end of the rendered text ([`prompt_end`]).
    pub(crate) fn encode(
        &self,
        o: &InferOptions,
        chat: bool,
        context: &[i32],
    ) -> Result<(Vec<i32>, String), String> {
        let r = if chat {
            let tmpl = ChatTemplate::choose(o.template.as_deref(), self.gguf_template);
            render_chat(&tmpl, &request(self.tok, o, o.messages.clone()))
                .map_err(|e| format!("cannot render the chat template: {e}"))?
        } else {
            render_prompt(self.tok, self.gguf_template, o)?
        };
        let mut ids = prompt_ids(self.tok, &r)?;
        if !context.is_empty() {
            if ids
                .first()
                .is_some_and(|&b| Some(b as u32) == self.tok.bos())
            {
                ids.remove(0);
            }
            ids.splice(0..0, context.iter().copied());
        }
        let n_ctx = self.dec.n_ctx();
        if ids.len() >= n_ctx {
            return Err(format!(
                "the prompt is too long: {} tokens do not fit a context of {n_ctx}",
                ids.len()
            ));
        }
        Ok((ids, prompt_end(&r)))
    }

    /// The text of `tokens` (special tokens dropped).
    pub fn detokenize(&self, tokens: &[i32]) -> String {
        let ids: Vec<u32> = tokens
            .iter()
            .filter_map(|&t| u32::try_from(t).ok())
            .collect();
        String::from_utf8_lossy(&self.tok.decode(&ids, true, false)).into_owned()
    }
}

/// How many tokens `a` and `b` share at the start.
pub(crate) fn common_prefix(a: &[i32], b: &[i32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
