//! Continuous batching: several runs on one held model at once.
//!
//! [`Held::run_batched`] takes jobs from a queue while fewer than the
//! cache's sequences are running or joining. A job joining gets the slot
//! whose cached tokens share the longest prefix with it (a chat's next
//! turn reuses its cells) and decodes the rest of its prompt one pass at a
//! time, `n_batch` tokens counted from that prefix: the very passes a lone
//! run makes, so its logits are a lone run's. Between two such passes
//! every running job advances: one step runs one token of each in a single
//! forward pass ([`engine::session::Session::step`], or one
//! `llama_decode`: [`engine::llama_cpp::LlamaContext::step`]), samples
//! each job's next token with its own sampler, and streams it. So a long
//! prompt joining holds the running streams up for one pass at a time,
//! not for the whole prompt. (llama-server puts a prompt chunk and the
//! steps into the same pass; the native engine's prompt kernels add in
//! other orders for other batch sizes, so a chunk cut to fit beside the
//! steps would no longer give a lone run's bits.) Joining jobs go in one
//! after another, first come first fed.
//!
//! A job that ends (end token, `num_predict`, a stop string, its client
//! gone; while joining, between two passes of its prompt) frees its slot
//! for the next one at once. Each job's tokens are the
//! ones it would get alone: a step's logits equal a one-sequence run's bit
//! for bit (tested in `models/tests/batched.rs`). llama.cpp's context keeps
//! a cache per sequence, and its rows equal lone runs' too, except where
//! llama.cpp repacked the weights for the CPU (Q4_K, …): its kernel for
//! four rows or more rounds apart from the one-row kernel, so a near-tie
//! may go the other way (`engine`'s `llama_cpp` tests).
//!
//! A cache of one sequence runs the jobs one after another with
//! [`Held::run`].

use std::time::Instant;

use engine::generate::{DoneReason, Stats};
use engine::sampler::Sampler;
use engine::stop::StopBuffer;
use engine::tokenizer::{StreamDecoder, Tokenizer};

use crate::hold::{common_prefix, MultiDecode};
use crate::infer::{Event, Output, Summary};
use crate::{Held, InferOptions, Job, RunResult};

/// A job for [`Held::run_batched`]: what [`Job`] borrows, owned, with
/// where its events and its end go.
pub struct BatchJob {
    /// Prompt (or messages), sampling, limits and stop strings.
    pub opts: InferOptions,
    /// Render `opts.messages` as the conversation.
    pub chat: bool,
    /// Tokens before the prompt.
    pub context: Vec<i32>,
    /// Checked between tokens: `true` ends the run.
    pub cancel: Box<dyn Fn() -> bool>,
    /// Text as it is generated; an error cancels the run.
    pub on_event: Box<dyn FnMut(Event) -> std::io::Result<()>>,
    /// Called once, when the run ends.
    pub on_done: Box<dyn FnOnce(Result<RunResult, String>)>,
}

/// Texts to embed ([`Held::embed`]), and where the vectors go.
pub struct EmbedJob {
    /// The texts.
    pub inputs: Vec<String>,
    /// Cut a text longer than the context to its start (else an error).
    pub truncate: bool,
    /// Called once with the vectors, or the error.
    pub on_done: Box<dyn FnOnce(Result<Embedded, String>)>,
}

/// What [`Held::embed`] gives.
#[derive(Clone, Debug, Default)]
pub struct Embedded {
    /// One unit-length vector per text.
    pub embeddings: Vec<Vec<f32>>,
    /// Tokens read, all texts together.
    pub prompt_eval_count: usize,
}

/// Work for [`Held::run_batched`].
pub enum Task {
    /// Generate text.
    Generate(Box<BatchJob>),
    /// Embed texts (between two steps of the running jobs).
    Embed(EmbedJob),
}

/// A running job.
struct Seq {
    job: BatchJob,
    slot: usize,
    sampler: Sampler,
    utf8: StreamDecoder,
    stop: StopBuffer,
    /// Prompt tokens, then the generated ones.
    tokens: Vec<i32>,
    cached: usize,
    logits: Vec<f32>,
    stats: Stats,
    t0: Instant,
    t_gen: Instant,
    canceled: bool,
}

impl Seq {
    /// Runs `f` on this job's text output (UTF-8 assembly, stop strings,
    /// its event sink); also whether an event failed to go out.
    fn output<R>(&mut self, tok: &Tokenizer, f: impl FnOnce(&mut Output) -> R) -> (R, bool) {
        let mut out = Output {
            tok,
            utf8: std::mem::take(&mut self.utf8),
            stop: std::mem::take(&mut self.stop),
            on_event: &mut *self.job.on_event,
            io: None,
            logprobs: self.job.opts.logprobs,
        };
        let r = f(&mut out);
        let failed = out.io.is_some();
        (self.utf8, self.stop) = (out.utf8, out.stop);
        (r, failed)
    }
}

impl Held<'_> {
    /// Sequences this model runs together (1: one job at a time).
    pub fn n_seq(&mut self) -> usize {
        self.dec.multi().map_or(1, |m| m.n_seq())
    }

    /// The embedding of each of `inputs`: the mean of its tokens' final
    /// hidden states (the model's output norm applied), scaled to unit
    /// length, as Ollama returns them. Runs in the cells of sequence `seq`,
    /// which it leaves empty. On llama.cpp's engine the hidden states come
    /// from its embeddings mode (per token, unpooled) and are pooled here
    /// the same way.
    pub fn embed(
        &mut self,
        inputs: &[String],
        truncate: bool,
        seq: usize,
    ) -> Result<Embedded, String> {
        let tok = self.tok;
        let Some(m) = self.dec.multi() else {
            return Err("this engine gives no embeddings".into());
        };
        let n_ctx = m.n_ctx();
        let mut out = Embedded::default();
        for text in inputs {
            let mut ids: Vec<i32> = tok
                .encode(text, true, false)
                .into_iter()
                .map(|i| i32::try_from(i).map_err(|_| format!("token id {i} out of range")))
                .collect::<Result<_, _>>()?;
            if ids.is_empty() {
                return Err("cannot embed an empty input".into());
            }
            if ids.len() > n_ctx {
                if !truncate {
                    return Err("the input length exceeds the context length".into());
                }
                ids.truncate(n_ctx);
            }
            m.truncate_seq(seq, 0);
            let h = m.hidden_seq(seq, &ids);
            m.truncate_seq(seq, 0);
            let h = h.map_err(|e| e.to_string())?;
            let n_embd = h.len() / ids.len();
            let mut v = vec![0f64; n_embd];
            for row in h.chunks_exact(n_embd) {
                for (a, &x) in v.iter_mut().zip(row) {
                    *a += f64::from(x);
                }
            }
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
            out.embeddings
                .push(v.iter().map(|x| (x * scale) as f32).collect());
            out.prompt_eval_count += ids.len();
        }
        Ok(out)
    }

    /// Runs the tasks `next` gives until it gives none while no job is
    /// running: several jobs at once when the engine can (see the module
    /// docs), one after another otherwise. `next(true)` may wait for a
    /// task; `next(false)` must not (a step is waiting).
    pub fn run_batched(&mut self, next: &mut dyn FnMut(bool) -> Option<Task>) {
        if self.n_seq() <= 1 {
            while let Some(task) = next(true) {
                match task {
                    Task::Generate(mut j) => {
                        let job = Job {
                            opts: &j.opts,
                            chat: j.chat,
                            context: &j.context,
                            cancel: &*j.cancel,
                        };
                        let r = self.run(&job, &mut *j.on_event);
                        (j.on_done)(r);
                    }
                    Task::Embed(e) => (e.on_done)(self.embed(&e.inputs, e.truncate, 0)),
                }
            }
            return;
        }
        let mut running: Vec<Seq> = vec![];
        // jobs whose prompts are going in, first come first fed
        let mut joining: Vec<Seq> = vec![];
        loop {
            let n_seq = self.n_seq();
            while running.len() + joining.len() < n_seq {
                let idle = running.is_empty() && joining.is_empty();
                let Some(task) = next(idle) else {
                    break;
                };
                let busy: Vec<usize> = running.iter().chain(&joining).map(|s| s.slot).collect();
                match task {
                    Task::Generate(job) => joining.extend(self.start(*job, &busy)),
                    Task::Embed(e) => {
                        let free = (0..n_seq).find(|s| !busy.contains(s)).expect("a free slot");
                        (e.on_done)(self.embed(&e.inputs, e.truncate, free));
                    }
                }
            }
            if running.is_empty() && joining.is_empty() {
                return;
            }
            // one pass of the first joining prompt, between two steps
            if !joining.is_empty() {
                match self.feed(&mut joining[0]) {
                    Ok(false) => {}
                    Ok(true) => {
                        let seq = joining.remove(0);
                        if seq.canceled {
                            self.finish(seq, Ok(()));
                        } else {
                            running.push(seq);
                        }
                    }
                    Err(e) => {
                        let seq = joining.remove(0);
                        self.multi().truncate_seq(seq.slot, 0);
                        self.finish(seq, Err(e));
                    }
                }
            }
            // sample and stream each one's next token; end those done
            let mut i = 0;
            while i < running.len() {
                match self.advance(&mut running[i]) {
                    Some(_) => i += 1,
                    None => {
                        let seq = running.swap_remove(i);
                        self.finish(seq, Ok(()));
                    }
                }
            }
            if running.is_empty() {
                continue;
            }
            if let Err(e) = self.step(&mut running) {
                for seq in running.drain(..) {
                    self.finish(seq, Err(e.clone()));
                }
            }
        }
    }

    fn multi(&mut self) -> &mut dyn MultiDecode {
        self.dec.multi().expect("a decoder of several sequences")
    }

    /// Tokenizes `job`'s prompt and picks a slot not in `busy` (the
    /// longest cached prefix); `None` when that failed (reported to the
    /// job). The prompt goes in later, pass by pass ([`Held::feed`]).
    fn start(&mut self, job: BatchJob, busy: &[usize]) -> Option<Seq> {
        let t0 = Instant::now();
        let fail = |job: BatchJob, e: String| {
            (job.on_done)(Err(e));
            None
        };
        let mut job = job;
        let ids = match self.encode(&job.opts, job.chat, &job.context) {
            Ok((ids, end)) => {
                // a client gone shows at the first token
                let _ = (job.on_event)(Event::PromptEnd(&end));
                ids
            }
            Err(e) => return fail(job, e),
        };
        let sampler = match self.sampler(&job.opts) {
            Ok(s) => s,
            Err(e) => return fail(job, e),
        };
        let m = self.multi();
        let (slot, cached) = (0..m.n_seq())
            .filter(|s| !busy.contains(s))
            .map(|s| (s, common_prefix(m.history_of(s), &ids).min(ids.len() - 1)))
            .max_by_key(|&(s, n)| (n, std::cmp::Reverse(s)))
            .expect("a free slot");
        m.truncate_seq(slot, cached);
        let stats = Stats {
            prompt_eval_count: ids.len() - cached,
            prompt_eval_duration: t0.elapsed(),
            ..Default::default()
        };
        Some(Seq {
            stop: StopBuffer::new(&job.opts.stop),
            job,
            slot,
            sampler,
            utf8: StreamDecoder::new(),
            tokens: ids,
            cached,
            logits: vec![],
            stats,
            t0,
            t_gen: Instant::now(),
            canceled: false,
        })
    }

    /// Decodes the next pass of `seq`'s prompt: the engine's `n_batch`
    /// tokens counted from its cached prefix, the very passes a lone run
    /// makes ([`MultiDecode::decode_seq`] of the whole prompt splits it
    /// there), so its logits are a lone run's. Whether the prompt is all
    /// in (its logits then in `seq.logits`), or the job canceled.
    fn feed(&mut self, seq: &mut Seq) -> Result<bool, String> {
        if (seq.job.cancel)() {
            seq.canceled = true;
            return Ok(true);
        }
        let t = Instant::now();
        let m = self.multi();
        let have = m.history_of(seq.slot).len();
        let end = (have + m.n_batch().max(1)).min(seq.tokens.len());
        let logits = m
            .decode_seq(seq.slot, &seq.tokens[have..end])
            .map_err(|e| e.to_string())?;
        let done = end == seq.tokens.len();
        if done {
            seq.logits = logits.to_vec();
            seq.t_gen = Instant::now();
        }
        seq.stats.prompt_eval_duration += t.elapsed();
        Ok(done)
    }

    /// Samples `seq`'s next token, streams it and appends it to its
    /// tokens; `None` when the run ends instead (its last token is then not
    /// decoded, as with [`engine::generate::generate`]).
    fn advance(&mut self, seq: &mut Seq) -> Option<i32> {
        let num_predict = seq.job.opts.num_predict;
        if num_predict.is_some_and(|n| seq.stats.eval_count >= n) {
            seq.stats.done_reason = DoneReason::Length;
            return None;
        }
        if (seq.job.cancel)() {
            seq.canceled = true;
            return None;
        }
        // the penalties see what `generate` would: the tokens decoded by
        // this run
        let tok = seq.sampler.sample(&seq.logits, &seq.tokens[seq.cached..]);
        if u32::try_from(tok).is_ok_and(|t| self.tok.is_eog(t)) {
            return None;
        }
        seq.stats.eval_count += 1;
        seq.tokens.push(tok);
        let logits = std::mem::take(&mut seq.logits);
        let (go_on, gone) = seq.output(self.tok, |out| out.token(tok, &logits));
        seq.logits = logits;
        if gone {
            seq.canceled = true;
            return None;
        }
        if !go_on {
            return None;
        }
        if num_predict.is_some_and(|n| seq.stats.eval_count >= n) {
            seq.stats.done_reason = DoneReason::Length;
            return None;
        }
        Some(tok)
    }

    /// One forward pass over the last token of each running job.
    fn step(&mut self, running: &mut [Seq]) -> Result<(), String> {
        let m = self.multi();
        for seq in running.iter() {
            if m.history_of(seq.slot).len() + 1 > m.n_ctx() {
                m.shift_seq(seq.slot, seq.job.opts.num_keep)
                    .map_err(|e| e.to_string())?;
            }
        }
        let steps: Vec<(usize, i32)> = running
            .iter()
            .map(|s| (s.slot, *s.tokens.last().expect("a sampled token")))
            .collect();
        let rows = m.step(&steps).map_err(|e| e.to_string())?;
        let n_vocab = rows.len() / steps.len();
        for (seq, row) in running.iter_mut().zip(rows.chunks_exact(n_vocab)) {
            seq.logits.copy_from_slice(row);
        }
        Ok(())
    }

    /// Ends `seq`'s run: flushes held-back text, reports.
    fn finish(&mut self, mut seq: Seq, r: Result<(), String>) {
        seq.stats.eval_duration = seq.t_gen.elapsed();
        if r.is_ok() && !seq.canceled && seq.output(self.tok, |out| out.finish()).0.is_err() {
            seq.canceled = true;
        }
        let on_done = seq.job.on_done;
        let r = r.map(|()| RunResult {
            summary: Summary {
                stats: seq.stats,
                load_duration: Default::default(),
                total_duration: seq.t0.elapsed(),
                engine: self.engine,
            },
            cached: seq.cached,
            tokens: seq.tokens,
            canceled: seq.canceled,
        });
        on_done(r);
    }
}
