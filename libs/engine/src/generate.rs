//! The generation loop: prompt in batches, then one token per step — or,
//! when sampling is greedy, one token plus drafted ones per step.
//!
//! Drafts come from the text itself (prompt lookup): when the last few tokens
//! occurred before, the tokens that followed them then are proposed, and one
//! forward pass computes the logits after the new token and after each
//! drafted one. A drafted token is kept only if the sampler picks it from
//! those logits, so the output is the one token-by-token greedy decoding
//! gives; a pass reads the weights once for several tokens (generation on a
//! CPU is bound by reading the weights). Rejected drafts leave the cache.

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
    /// Whether [`Decode::decode_all`] and [`Decode::truncate`] work.
    fn can_verify(&self) -> bool {
        false
    }
    /// Runs `tokens` (at most a batch) and returns the logits after each,
    /// row after row.
    fn decode_all(&mut self, _tokens: &[i32]) -> Result<&[f32]> {
        Err(Error::invalid("this engine cannot verify drafts".into()))
    }
    /// Forgets the cached tokens after the first `n`.
    fn truncate(&mut self, _n: usize) {}
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
    fn can_verify(&self) -> bool {
        self.exact_rows()
    }
    fn decode_all(&mut self, tokens: &[i32]) -> Result<&[f32]> {
        Session::decode_all(self, tokens)
    }
    fn truncate(&mut self, n: usize) {
        Session::truncate(self, n)
    }
}

/// When to stop and how to make room.
#[derive(Clone, Debug, Default)]
pub struct GenerateOptions {
    /// Most tokens to generate (`None`: until an end-of-generation token).
    pub num_predict: Option<usize>,
    /// Tokens at the start kept when the context fills and is shifted.
    pub num_keep: usize,
    /// Tokens never sampled (their logits set to −∞), e.g. the end tokens
    /// for llama.cpp's `--ignore-eos`.
    pub suppress: Vec<i32>,
    /// Most tokens drafted per step when sampling is greedy (0: none; more
    /// than 2 are cut to 2, see `exact_batch_len`).
    pub draft_max: usize,
}

/// The default of [`GenerateOptions::draft_max`] for `infer`.
pub const DRAFT_MAX: usize = 2;

/// Shortest and longest n-gram looked up for a draft.
const NGRAM: std::ops::RangeInclusive<usize> = 3..=4;

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
    /// Tokens drafted and verified.
    pub draft_count: usize,
    /// Drafted tokens that were kept.
    pub draft_accepted: usize,
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
/// except an end-of-generation one goes to `on_token`, with the logits it
/// was sampled from. When the context fills,
/// it is shifted ([`Session::shift`]) instead of failing.
pub fn generate(
    sess: &mut dyn Decode,
    prompt: &[i32],
    sampler: &mut Sampler,
    opts: &GenerateOptions,
    is_eog: &dyn Fn(i32) -> bool,
    on_token: &mut dyn FnMut(i32, &[f32]) -> Result<bool>,
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
    let speculate = opts.draft_max > 0 && sampler.is_greedy() && sess.can_verify();
    let n_vocab = logits.len();
    // Tokens in the cache ahead of the output, with the logits after each.
    let mut drafted: std::collections::VecDeque<i32> = Default::default();
    let mut ahead: Vec<f32> = vec![];
    let mut gate = DraftGate::default();
    let result = loop {
        if opts.num_predict.is_some_and(|n| stats.eval_count >= n) {
            stats.done_reason = DoneReason::Length;
            break Ok(());
        }
        for &t in &opts.suppress {
            if let Some(l) = usize::try_from(t).ok().and_then(|t| logits.get_mut(t)) {
                *l = f32::NEG_INFINITY;
            }
        }
        let tok = sampler.sample(&logits, &recent);
        let accepted = drafted.front() == Some(&tok);
        if accepted {
            // The cache holds `tok` already; the logits after it are next.
            drafted.pop_front();
            stats.draft_accepted += 1;
            gate.keep_one(drafted.is_empty(), stats.eval_count);
        } else if !drafted.is_empty() {
            sess.truncate(sess.n_past() - drafted.len());
            drafted.clear();
            ahead.clear();
            gate.verified(stats.eval_count);
        }
        if is_eog(tok) {
            if accepted {
                // as without drafts, the end token does not stay in the cache
                sess.truncate(sess.n_past() - drafted.len() - 1);
                drafted.clear();
            }
            break Ok(());
        }
        stats.eval_count += 1;
        recent.push(tok);
        match on_token(tok, &logits) {
            Ok(true) => {}
            Ok(false) => break Ok(()),
            Err(e) => break Err(e),
        }
        if accepted {
            // the logits after `tok`, computed with the draft
            logits.copy_from_slice(&ahead[..n_vocab]);
            ahead.drain(..n_vocab);
        }
        if opts.num_predict.is_some_and(|n| stats.eval_count >= n) {
            stats.done_reason = DoneReason::Length;
            break Ok(());
        }
        if accepted {
            continue;
        }
        if sess.n_past() + 1 > sess.n_ctx() {
            if let Err(e) = sess.shift(opts.num_keep) {
                break Err(e);
            }
        }
        let budget = opts
            .num_predict
            .map_or(usize::MAX, |n| n - stats.eval_count)
            .min(opts.draft_max)
            .min(sess.n_ctx() - sess.n_past() - 1);
        let draft = if speculate && gate.open(stats.eval_count) {
            let d = lookup_draft(&recent, budget);
            &d[..exact_batch_len(d.len())]
        } else {
            &[]
        };
        if draft.is_empty() {
            match sess.decode(&[tok]) {
                Ok(l) => logits.copy_from_slice(l),
                Err(e) => break Err(e),
            }
            continue;
        }
        let mut batch = Vec::with_capacity(1 + draft.len());
        batch.push(tok);
        batch.extend_from_slice(draft);
        drafted.extend(draft.iter().copied());
        stats.draft_count += draft.len();
        gate.drafting(draft.len());
        match sess.decode_all(&batch) {
            Ok(rows) => {
                logits.copy_from_slice(&rows[..n_vocab]);
                ahead.extend_from_slice(&rows[n_vocab..]);
            }
            Err(e) => break Err(e),
        }
    };
    // Drafts never output do not stay in the cache (a chat continues from it).
    if !drafted.is_empty() {
        sess.truncate(sess.n_past() - drafted.len());
    }
    result?;
    stats.eval_duration = t1.elapsed();
    Ok(stats)
}

/// Whether drafting pays: a verifying pass costs more than a one-token step
/// (a wider batch, and a graph of another shape built), so drafts must be
/// kept often enough. Tracks the share kept per pass (moving average); below
/// [`DraftGate::MIN_KEPT`] drafting pauses for [`DraftGate::PAUSE`] tokens,
/// then is tried again (text turns repetitive or stops being so).
#[derive(Debug)]
struct DraftGate {
    /// Moving average of the share of drafts kept per pass.
    rate: f32,
    /// No drafts before this many tokens are out.
    paused_until: usize,
    /// Drafts of the pass being verified, and how many were kept so far.
    drafted: usize,
    kept: usize,
}

impl Default for DraftGate {
    fn default() -> Self {
        DraftGate {
            rate: 1.0,
            paused_until: 0,
            drafted: 0,
            kept: 0,
        }
    }
}

impl DraftGate {
    /// Measured here (SmolLM2, Gemma 3; 2 threads): passes keeping under
    /// about 60% of their drafts are slower than one-token steps.
    const MIN_KEPT: f32 = 0.6;
    const PAUSE: usize = 32;

    fn open(&self, n_out: usize) -> bool {
        n_out >= self.paused_until
    }

    /// A pass verifies `k` drafts.
    fn drafting(&mut self, k: usize) {
        (self.drafted, self.kept) = (k, 0);
    }

    /// One draft was kept; `last` when it was the pass's last one.
    fn keep_one(&mut self, last: bool, n_out: usize) {
        self.kept += 1;
        if last {
            self.verified(n_out);
        }
    }

    /// A pass's drafts are settled, `n_out` tokens being out.
    fn verified(&mut self, n_out: usize) {
        if self.drafted == 0 {
            return;
        }
        let share = self.kept as f32 / self.drafted as f32;
        self.rate = 0.5 * self.rate + 0.5 * share;
        if self.rate < Self::MIN_KEPT {
            self.paused_until = n_out + Self::PAUSE;
            self.rate = (Self::MIN_KEPT + 1.0) / 2.0;
        }
        self.drafted = 0;
    }
}

/// The most of `k` drafted tokens that can be verified with results equal
/// to one-token steps: ggml's CPU kernels for a batch of `1 + k` rows must be
/// the one-row kernels. With the session's reference kernels (see
/// `Session::decode_all`) and our own Q4_1/Q8_0 kernels that holds for any
/// small batch, except for weights the CPU backend repacked (Q4_0, Q4_K…):
/// those take a 4-row kernel from 4 rows on, which adds in another order.
/// So at most 2 drafts (batches of 3 rows).
fn exact_batch_len(k: usize) -> usize {
    k.min(2)
}

/// Prompt lookup: the tokens that followed the last earlier occurrence of
/// the longest n-gram (in [`NGRAM`]) ending `recent`, at most `max` of them.
fn lookup_draft(recent: &[i32], max: usize) -> &[i32] {
    if max == 0 {
        return &[];
    }
    let len = recent.len();
    for n in NGRAM.rev() {
        if len <= n {
            continue;
        }
        let tail = &recent[len - n..];
        // Latest earlier start i with recent[i..i + n] == tail, i + n < len.
        if let Some(i) = (0..len - n).rev().find(|&i| &recent[i..i + n] == tail) {
            let from = i + n;
            return &recent[from..(from + max).min(len)];
        }
    }
    &[]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_takes_what_followed_the_longest_match() {
        // "a b c d x a b c" -> the 3-gram "a b c" was followed by "d x a b c"
        let r = [1, 2, 3, 4, 9, 1, 2, 3];
        assert_eq!(lookup_draft(&r, 8), &[4, 9, 1, 2, 3]);
        assert_eq!(lookup_draft(&r, 2), &[4, 9]);
        assert_eq!(lookup_draft(&r, 0), &[] as &[i32]);
        // no repeated trigram at the end: nothing (bigrams are too weak a cue)
        assert_eq!(lookup_draft(&[1, 2, 3, 4, 2, 3], 8), &[] as &[i32]);
        // the latest occurrence wins
        let r = [5, 6, 7, 1, 5, 6, 7, 2, 5, 6, 7];
        assert_eq!(lookup_draft(&r, 1), &[2]);
    }
}
