//! The generation loop: prompt in batches, then one token per step.

use std::time::{Duration, Instant};

use crate::sampler::Sampler;
use crate::session::Session;
use crate::{Error, Result};

/// Something that turns tokens into next-token logits: our [`Session`], or
/// llama.cpp's engine behind the same interface.
pub trait Decode {
    /// Context length.
    fn n_ctx(&self) -> usize;
    /// Tokens in the cache.
    fn n_past(&self) -> usize;
    /// Runs `tokens` after the cached ones; logits of the last one.
    fn decode(&mut self, tokens: &[i32]) -> Result<&[f32]>;
    /// Makes room: keeps `num_keep` tokens, drops half of the rest.
    fn shift(&mut self, num_keep: usize) -> Result<()>;
}

impl Decode for Session<'_> {
    fn n_ctx(&self) -> usize {
        Session::n_ctx(self)
    }
    fn n_past(&self) -> usize {
        self.history().len()
    }
    fn decode(&mut self, tokens: &[i32]) -> Result<&[f32]> {
        Session::decode(self, tokens)
    }
    fn shift(&mut self, num_keep: usize) -> Result<()> {
        Session::shift(self, num_keep).map(|_| ())
    }
}

/// When to stop and how to make room.
#[derive(Clone, Debug, Default)]
pub struct GenerateOptions {
    /// Most tokens to generate (`None`: until an end-of-generation token).
    pub num_predict: Option<usize>,
    /// Tokens at the start kept when the context fills and is shifted.
    pub num_keep: usize,
}

/// Counts and times, as Ollama reports them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Prompt tokens evaluated.
    pub prompt_eval_count: usize,
    /// Time spent on them.
    pub prompt_eval_duration: Duration,
    /// Tokens generated.
    pub eval_count: usize,
    /// Time spent generating them (after the prompt).
    pub eval_duration: Duration,
    /// Why generation ended.
    pub done_reason: DoneReason,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DoneReason {
    /// An end-of-generation token, or the callback asked to stop.
    #[default]
    Stop,
    /// `num_predict` tokens were generated.
    Length,
}

impl DoneReason {
    /// Ollama's name: `"stop"` or `"length"`.
    pub fn as_str(self) -> &'static str {
        match self {
            DoneReason::Stop => "stop",
            DoneReason::Length => "length",
        }
    }
}

/// Runs `prompt`, then samples tokens until `is_eog`, `num_predict`, or
/// `on_token` returns `false` (e.g. a stop string). Each generated token
/// except an end-of-generation one goes to `on_token`. When the context fills,
/// it is shifted ([`Session::shift`]) instead of failing.
pub fn generate(
    sess: &mut dyn Decode,
    prompt: &[i32],
    sampler: &mut Sampler,
    opts: &GenerateOptions,
    is_eog: &dyn Fn(i32) -> bool,
    on_token: &mut dyn FnMut(i32) -> Result<bool>,
) -> Result<Stats> {
    if prompt.is_empty() {
        return Err(Error::invalid("the prompt is empty".into()));
    }
    if sess.n_past() + prompt.len() >= sess.n_ctx() {
        return Err(Error::invalid(format!(
            "prompt of {} tokens does not fit a context of {}",
            prompt.len(),
            sess.n_ctx()
        )));
    }
    let mut stats = Stats {
        prompt_eval_count: prompt.len(),
        ..Default::default()
    };
    let t0 = Instant::now();
    let mut logits = sess.decode(prompt)?.to_vec();
    stats.prompt_eval_duration = t0.elapsed();
    let t1 = Instant::now();
    let mut recent: Vec<i32> = prompt.to_vec();
    loop {
        if opts.num_predict.is_some_and(|n| stats.eval_count >= n) {
            stats.done_reason = DoneReason::Length;
            break;
        }
        let tok = sampler.sample(&logits, &recent);
        if is_eog(tok) {
            break;
        }
        stats.eval_count += 1;
        recent.push(tok);
        if !on_token(tok)? {
            break;
        }
        if opts.num_predict.is_some_and(|n| stats.eval_count >= n) {
            stats.done_reason = DoneReason::Length;
            break;
        }
        if sess.n_past() + 1 > sess.n_ctx() {
            sess.shift(opts.num_keep)?;
        }
        logits.copy_from_slice(sess.decode(&[tok])?);
    }
    stats.eval_duration = t1.elapsed();
    Ok(stats)
}
