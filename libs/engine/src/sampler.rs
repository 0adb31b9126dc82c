//! Choosing the next token from logits.
//!
//! Order (as Ollama's sampler): repeat penalty over the last
//! `repeat_last_n` tokens; then, at temperature 0, the argmax; otherwise
//! top-k, temperature, softmax, top-p, min-p, and a draw from a seeded
//! generator (same seed and inputs → same tokens).

use crate::grammar::Constraint;
use crate::{Error, Result};

/// Sampling parameters; defaults are Ollama's.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerOptions {
    /// Temperature; 0 means greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1: all).
    pub top_p: f32,
    /// Drop tokens below min_p × the top probability (0: none).
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recent tokens by this (1: off).
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at (0: none).
    pub repeat_last_n: usize,
    /// Random seed.
    pub seed: u64,
}

impl Default for SamplerOptions {
    fn default() -> Self {
        SamplerOptions {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.9,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplerOptions {
    /// Rejects values that make no sense (negative or non-finite).
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: f32| Error::invalid(format!("{what} {v} is out of range"));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(bad("temperature", self.temperature));
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return Err(bad("top_p", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(bad("min_p", self.min_p));
        }
        if !self.repeat_penalty.is_finite() || self.repeat_penalty <= 0.0 {
            return Err(bad("repeat_penalty", self.repeat_penalty));
        }
        Ok(())
    }
}

/// A sampler with its random state.
pub struct Sampler {
    opts: SamplerOptions,
    rng: SplitMix64,
    cand: Vec<(i32, f32)>,
    constraint: Option<Constraint>,
}

impl Sampler {
    /// A sampler seeded with `opts.seed`.
    pub fn new(opts: SamplerOptions) -> Result<Sampler> {
        opts.validate()?;
        Ok(Sampler {
            rng: SplitMix64(opts.seed),
            opts,
            cand: vec![],
            constraint: None,
        })
    }

    /// Samples only what `c` allows (structured output); every token
    /// [`Sampler::sample`] returns advances it, and once its grammar is
    /// complete the sampler returns its end token.
    pub fn constrain(&mut self, c: Constraint) {
        self.constraint = Some(c);
    }

    /// Whether [`Sampler::sample`] is a function of its arguments alone
    /// (temperature 0: the argmax after penalties), so that a token can be
    /// checked against logits computed ahead (drafted tokens).
    pub fn is_greedy(&self) -> bool {
        self.opts.temperature == 0.0
    }

    /// Picks a token from `logits`, given the `history` of tokens so far.
    pub fn sample(&mut self, logits: &[f32], history: &[i32]) -> i32 {
        let tok = self.pick(logits, history);
        if let Some(c) = &mut self.constraint {
            c.commit(tok);
        }
        tok
    }

    fn pick(&mut self, logits: &[f32], history: &[i32]) -> i32 {
        let o = &self.opts;
        self.cand.clear();
        self.cand
            .extend(logits.iter().enumerate().map(|(i, &l)| (i as i32, l)));
        if o.repeat_penalty != 1.0 && o.repeat_last_n > 0 {
            let recent = &history[history.len().saturating_sub(o.repeat_last_n)..];
            let mut seen = std::collections::HashSet::new();
            for &t in recent {
                if let Some(c) = usize::try_from(t)
                    .ok()
                    .and_then(|i| self.cand.get_mut(i))
                    .filter(|_| seen.insert(t))
                {
                    c.1 = if c.1 > 0.0 {
                        c.1 / o.repeat_penalty
                    } else {
                        c.1 * o.repeat_penalty
                    };
                }
            }
        }
        if let Some(c) = &mut self.constraint {
            if !c.mask(&mut self.cand) {
                return c.eos();
            }
        }
        if o.temperature == 0.0 {
            return argmax(&self.cand);
        }
        self.cand
            .sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if o.top_k > 0 {
            self.cand.truncate(o.top_k);
        }
        let t = o.temperature;
        let max = self.cand[0].1 / t;
        let mut sum = 0.0f64;
        for c in &mut self.cand {
            c.1 = (c.1 / t - max).exp();
            sum += c.1 as f64;
        }
        for c in &mut self.cand {
            c.1 = (c.1 as f64 / sum) as f32;
        }
        if o.top_p < 1.0 {
            let mut acc = 0.0;
            let mut n = self.cand.len();
            for (i, c) in self.cand.iter().enumerate() {
                acc += c.1;
                if acc >= o.top_p {
                    n = i + 1;
                    break;
                }
            }
            self.cand.truncate(n);
        }
        if o.min_p > 0.0 {
            let floor = self.cand[0].1 * o.min_p;
            self.cand.retain(|c| c.1 >= floor);
        }
        let total: f32 = self.cand.iter().map(|c| c.1).sum();
        let mut r = self.rng.next_f32() * total;
        for c in &self.cand {
            r -= c.1;
            if r <= 0.0 {
                return c.0;
            }
        }
        self.cand.last().map_or(0, |c| c.0)
    }
}

/// The log-probability of token `tok` under `logits` (their log-softmax,
/// before any sampling transform), and the `top` most likely tokens with
/// theirs, most likely first (lower id first on ties). Reads the logits
/// twice and keeps only `top` candidates: nothing of the vocabulary's size
/// is copied.
pub fn logprobs(logits: &[f32], tok: i32, top: usize) -> (f32, Vec<(i32, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let lse = f64::from(max) + sum.ln();
    let lp = |l: f32| (f64::from(l) - lse) as f32;
    let mut best: Vec<(i32, f32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if best.len() == top && best[top - 1].1 >= l {
                continue;
            }
            let at = best.partition_point(|&(_, b)| b >= l);
            best.insert(at, (i as i32, l));
            best.truncate(top);
        }
    }
    let chosen = usize::try_from(tok)
        .ok()
        .and_then(|t| logits.get(t))
        .map_or(f32::NEG_INFINITY, |&l| lp(l));
    (chosen, best.into_iter().map(|(i, l)| (i, lp(l))).collect())
}

/// The index of the largest value (the first on ties).
fn argmax(c: &[(i32, f32)]) -> i32 {
    let mut best = (0, f32::NEG_INFINITY);
    for &(i, l) in c {
        if l > best.1 {
            best = (i, l);
        }
    }
    best.0
}

/// A small, fast, seedable generator (Steele et al., SplitMix64).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(temperature: f32) -> SamplerOptions {
        SamplerOptions {
            temperature,
            ..Default::default()
        }
    }

    #[test]
    fn logprobs_are_the_log_softmax_of_the_raw_logits() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, -5.0];
        let (lp, top) = logprobs(&logits, 2, 3);
        let z: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
        let want = |l: f32| (f64::from(l) - z.ln()) as f32;
        assert!((lp - want(2.0)).abs() < 1e-6, "{lp}");
        let ids: Vec<i32> = top.iter().map(|t| t.0).collect();
        assert_eq!(ids, [1, 3, 2], "most likely first, lower id on ties");
        for (i, l) in &top {
            assert!((l - want(logits[*i as usize])).abs() < 1e-6);
        }
        let p: f64 = logits.iter().map(|&l| f64::from(want(l)).exp()).sum();
        assert!((p - 1.0).abs() < 1e-6);
        assert!(logprobs(&logits, 0, 0).1.is_empty());
        assert_eq!(logprobs(&logits, 0, 9).1.len(), 5);
        assert_eq!(logprobs(&logits, 7, 0).0, f32::NEG_INFINITY);
    }

    #[test]
    fn greedy_at_temperature_zero() {
        let mut s = Sampler::new(opts(0.0)).unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, 2.9, -1.0], &[]), 1);
    }

    #[test]
    fn repeat_penalty_changes_the_greedy_choice() {
        let o = SamplerOptions {
            temperature: 0.0,
            repeat_penalty: 2.0,
            ..Default::default()
        };
        let mut s = Sampler::new(o).unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, 2.9], &[1]), 2);
        // outside the window the penalty does not apply
        let o = SamplerOptions {
            temperature: 0.0,
            repeat_penalty: 2.0,
            repeat_last_n: 1,
            ..Default::default()
        };
        assert_eq!(
            Sampler::new(o).unwrap().sample(&[0.1, 3.0, 2.9], &[1, 0]),
            1
        );
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37 % 11) as f32) / 3.0).collect();
        let draw = |seed| {
            let mut s = Sampler::new(SamplerOptions {
                seed,
                top_k: 0,
                top_p: 1.0,
                ..opts(1.0)
            })
            .unwrap();
            (0..50).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(SamplerOptions {
            top_k: 1,
            ..opts(1.5)
        })
        .unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&[1.0, 0.5, 1.2, 0.0], &[]), 2);
        }
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        // probabilities ~ [0.64, 0.24, 0.09, 0.03]: top_p 0.5 keeps only the first
        let logits = [3.0, 2.0, 1.0, 0.0];
        let mut s = Sampler::new(SamplerOptions {
            top_k: 0,
            top_p: 0.5,
            ..opts(1.0)
        })
        .unwrap();
        assert!((0..50).all(|_| s.sample(&logits, &[]) == 0));
        let mut s = Sampler::new(SamplerOptions {
            top_k: 0,
            top_p: 1.0,
            min_p: 0.3,
            ..opts(1.0)
        })
        .unwrap();
        assert!((0..200).all(|_| s.sample(&logits, &[]) <= 1));
    }

    #[test]
    fn draws_follow_the_distribution() {
        let mut s = Sampler::new(SamplerOptions {
            top_k: 0,
            top_p: 1.0,
            seed: 3,
            ..opts(1.0)
        })
        .unwrap();
        let logits = [0.0, (3.0f32).ln()]; // p = 0.25, 0.75
        let ones = (0..4000).filter(|_| s.sample(&logits, &[]) == 1).count();
        assert!((2800..3200).contains(&ones), "{ones}");
    }

    #[test]
    fn bad_options_are_rejected() {
        assert!(Sampler::new(opts(-1.0)).is_err());
        assert!(Sampler::new(opts(f32::NAN)).is_err());
        assert!(Sampler::new(SamplerOptions {
            top_p: 1.5,
            ..Default::default()
        })
        .is_err());
    }
}
