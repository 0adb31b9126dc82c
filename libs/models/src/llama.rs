//! Llama (and SmolLM2, Mistral-style) decoder: RMSNorm, RoPE, grouped-query
//! attention with a causal mask, SwiGLU MLP. Reference: Touvron et al. 2023;
//! llama.cpp `src/models/llama.cpp`; ollama `model/models/llama/model.go`.

use engine::kv_cache::{KvCache, KvShape};
use engine::session::Inputs;
use ggml::{Context, Graph, RopeMode, Tensor};

use crate::nn::{
    AttnOptions, Block, Embedding, Gate, Hparams, Linear, Pass, RmsNorm, Rotary, Spec, Width,
};
use crate::{Meta, Result, Weights};

// ---- config ----

/// Hyperparameters from the GGUF metadata (`llama.*`).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Widths, heads, layers, ε.
    pub hp: Hparams,
    /// RoPE parameters.
    pub rope: ggml::Rope,
}

impl Config {
    /// Reads and range-checks the hyperparameters.
    pub fn from_meta(m: &Meta) -> Result<Config> {
        let hp = Hparams::read(
            m,
            Spec {
                width: Width::Divisible,
                head_dim: None,
                whole_heads_rotate: false,
                rms_eps: 1e-5,
            },
        )?;
        // A wrong layout silently garbles output: llama GGUFs have Q/K rows
        // permuted at conversion for the NORMAL (adjacent pairs) layout.
        let rope = hp.rope(m, RopeMode::Normal, 10_000.0)?;
        Ok(Config { hp, rope })
    }
}

// ---- model ----

/// The whole model: embeddings, blocks, final norm, output head.
pub struct Model {
    cfg: Config,
    tok_embd: Embedding,  // "token_embd"  [n_embd, n_vocab]
    rope: Rotary,         // "rope_freqs"  [n_rot / 2] (llama3-style factors)
    blocks: Vec<Block>,   // "blk.{i}"
    output_norm: RmsNorm, // "output_norm" [n_embd]
    output: Linear,       // "output"      [n_embd, n_vocab], or token_embd when tied
}

impl Model {
    /// Loads every weight, checking names and shapes.
    pub fn load(m: &Meta, w: &Weights) -> Result<Model> {
        let cfg = Config::from_meta(m)?;
        let hp = &cfg.hp;
        let block = |i| {
            Block::load(
                w,
                &format!("blk.{i}"),
                hp,
                AttnOptions::default(),
                Gate::Silu,
                false,
            )
        };
        Ok(Model {
            tok_embd: Embedding::load(w, hp)?,
            rope: Rotary::with_factors(w, "rope_freqs", cfg.rope)?,
            blocks: (0..hp.n_layer).map(block).collect::<Result<_>>()?,
            output_norm: RmsNorm::load(w, "output_norm", hp.n_embd, hp.rms_eps)?,
            output: Linear::output(w, hp, false)?,
            cfg,
        })
    }

    /// Hyperparameters.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
}

impl engine::session::Model for Model {
    fn n_vocab(&self) -> usize {
        self.cfg.hp.n_vocab
    }
    fn kv_shape(&self) -> KvShape {
        self.cfg.hp.kv_shape(0)
    }
    fn n_ctx_train(&self) -> usize {
        self.cfg.hp.n_ctx_train
    }
    fn shift_keys<'c>(
        &'c self,
        ctx: &'c Context,
        k: Tensor<'c>,
        delta: Tensor<'c>,
        _layer: usize,
    ) -> Option<Tensor<'c>> {
        Some(self.rope.forward(ctx, k, delta))
    }

    // ---- forward ----

    fn forward<'c>(
        &'c self,
        ctx: &'c Context,
        g: &Graph<'c>,
        inp: &Inputs<'c>,
        kv: &KvCache<'c>,
    ) -> Tensor<'c> {
        let p = Pass {
            ctx,
            g,
            inp,
            kv,
            n_layer: self.blocks.len(),
        };
        let mut x = self.tok_embd.forward(ctx, inp.tokens); // [n_embd, n_tokens]
        for (i, b) in self.blocks.iter().enumerate() {
            x = b.forward(&p, x, i, &self.rope, kv.mask()); // [n_embd, n_out] after the last
        }
        let h = self.output_norm.forward(ctx, x); // [n_embd, n_out]
        if inp.hidden {
            return h;
        }
        self.output.forward(ctx, h) // [n_vocab, n_out]
    }
}
