//! Structured output: generation constrained to JSON, or to a JSON schema
//! (Ollama's `format`), by the `llguidance` crate's constraint engine (a
//! maintained Earley parser over the tokenizer's byte trie, as llama.cpp and
//! vLLM use it).
//!
//! [`Grammars`] holds the tokenizer's trie, built once per model; each run
//! gets a [`Constraint`], which the [`crate::sampler::Sampler`] consults:
//! tokens the grammar does not allow next get −∞ before sampling, the token
//! sampled advances the parser, and once the grammar is complete only an
//! end token remains, so the run ends there.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, InferenceCapabilities, TokRxInfo, TokTrie};
use llguidance::ParserFactory;

use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// What the output must be.
#[derive(Clone, Debug, PartialEq)]
pub enum Format {
    /// Any JSON object (Ollama's `"format": "json"`).
    Json,
    /// JSON valid under this schema.
    Schema(serde_json::Value),
}

/// A model's tokenizer, as the constraint engine sees it.
pub struct Grammars {
    factory: ParserFactory,
    eos: i32,
}

impl Grammars {
    /// The trie of `tok`'s tokens (its bytes; control tokens marked special,
    /// so no grammar produces them). Fails for a tokenizer without an end
    /// token.
    pub fn new(tok: &Tokenizer) -> Result<Grammars> {
        let eos = tok
            .eos()
            .or_else(|| tok.eog_tokens().first().copied())
            .ok_or_else(|| Error::invalid("structured output needs an end token".into()))?;
        let n = tok.vocab_size();
        let words: Vec<Vec<u8>> = (0..n as u32)
            .map(|id| {
                if tok.is_control(id) || tok.is_eog(id) {
                    // toktrie's mark for special tokens
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend_from_slice(tok.token_text(id).unwrap_or("").as_bytes());
                    w
                } else {
                    tok.token_to_piece(id, false).to_vec()
                }
            })
            .collect();
        let mut info = TokRxInfo::new(n as u32, eos);
        info.tok_bos = tok.bos();
        let trie = TokTrie::from(&info, &words);
        let env = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new(
            &(env as llguidance::toktrie::TokEnv),
            InferenceCapabilities::default(),
            &llguidance::earley::SlicedBiasComputer::general_slices(),
        )
        .map_err(|e| Error::invalid(format!("structured output: {e}")))?;
        factory.quiet();
        Ok(Grammars {
            factory,
            eos: eos as i32,
        })
    }

    /// A fresh constraint for one run.
    pub fn constraint(&self, format: &Format) -> Result<Constraint> {
        let schema = match format {
            Format::Json => serde_json::json!({"type": "object"}),
            Format::Schema(s) => s.clone(),
        };
        // compact separators: a small model left free to add whitespace can
        // emit it forever
        let mut schema = schema;
        if let Some(o) = schema.as_object_mut() {
            o.entry("x-guidance")
                .or_insert_with(|| serde_json::json!({"whitespace_flexible": false}));
        }
        let grammar = TopLevelGrammar::from_json_schema(schema);
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| Error::invalid(format!("invalid format: {e}")))?;
        Ok(Constraint {
            inner: llguidance::Constraint::new(parser),
            eos: self.eos,
            done: false,
        })
    }
}

/// One run's grammar state (see the module docs).
pub struct Constraint {
    inner: llguidance::Constraint,
    eos: i32,
    done: bool,
}

impl Constraint {
    /// Sets the logits of tokens the grammar does not allow next to −∞.
    /// `false` when the grammar is complete (or failed): the run must end
    /// (the caller samples the end token).
    pub fn mask(&mut self, logits: &mut [(i32, f32)]) -> bool {
        if self.done {
            return false;
        }
        let mask = match self.inner.compute_mask() {
            Ok(r) if !r.is_stop() => r.sample_mask.clone(),
            _ => None,
        };
        let Some(mask) = mask else {
            self.done = true;
            return false;
        };
        for c in logits.iter_mut() {
            if !u32::try_from(c.0).is_ok_and(|t| mask.is_allowed(t)) {
                c.1 = f32::NEG_INFINITY;
            }
        }
        true
    }

    /// Advances the parser past `tok` (the token sampled under the mask).
    pub fn commit(&mut self, tok: i32) {
        let ok = u32::try_from(tok)
            .ok()
            .is_some_and(|t| self.inner.commit_token(Some(t)).is_ok_and(|r| !r.stop));
        if !ok {
            self.done = true;
        }
    }

    /// The end token the run ends with when the grammar is complete.
    pub fn eos(&self) -> i32 {
        self.eos
    }
}
