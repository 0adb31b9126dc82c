//! Qwen2 (and Qwen2.5) decoder: Llama's block (RMSNorm, grouped-query
//! attention, SwiGLU MLP) with biases on the query, key and value
//! projections, NEOX RoPE, output tied on the small sizes, and an optional
//! output bias. Reference: Yang et al. 2024 ("Qwen2 Technical Report");
//! llama.cpp `src/models/qwen2.cpp`; ollama `model/models/qwen2/model.go`.

use engine::kv_cache::{KvCache, KvShape};
use engine::session::Inputs;
use ggml::{Context, Graph, RopeMode, Tensor};

use crate::nn::{
    AttnOptions, Block, Embedding, Gate, Hparams, Linear, Pass, RmsNorm, Rotary, Spec, Width,
};
use crate::{Meta, Result, Weights};

// ---- config ----

/// Hyperparameters from the GGUF metadata (`qwen2.*`).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Widths, heads (`head_dim = n_embd / n_head`), layers, ε.
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
                width: Width::Exact,
                head_dim: None,
                // whole heads rotate (llama.cpp asserts this and aborts otherwise)
                whole_heads_rotate: true,
                rms_eps: 1e-6,
            },
        )?;
        // NEOX layout (pairs i, i + n_rot/2): the converter does not permute
        // Qwen's Q/K rows, so the adjacent-pairs layout would garble output.
        let rope = hp.rope(m, RopeMode::Neox, 10_000.0)?;
        Ok(Config { hp, rope })
    }
}

// ---- model ----

/// The whole model: embeddings, blocks, final norm, output head.
pub struct Model {
    cfg: Config,
    tok_embd: Embedding,  // "token_embd"  [n_embd, n_vocab]
    rope: Rotary,         //
    blocks: Vec<Block>,   // "blk.{i}", with "attn_{q,k,v}.bias"
    output_norm: RmsNorm, // "output_norm" [n_embd]
    output: Linear, // "output" [n_embd, n_vocab] (or token_embd when tied: 0.5B–3B) + "output.bias" [n_vocab]
}

impl Model {
    /// Loads every weight, checking names and shapes.
    pub fn load(m: &Meta, w: &Weights) -> Result<Model> {
        let cfg = Config::from_meta(m)?;
        let hp = &cfg.hp;
        // every Qwen2 has the q/k/v biases; llama.cpp loads files without them too
        let attn = AttnOptions {
            qkv_bias: true,
            ..Default::default()
        };
        let block = |i| Block::load(w, &format!("blk.{i}"), hp, attn, Gate::Silu, false);
        Ok(Model {
            tok_embd: Embedding::load(w, hp)?,
            rope: Rotary::new(cfg.rope),
            blocks: (0..hp.n_layer).map(block).collect::<Result<_>>()?,
            output_norm: RmsNorm::load(w, "output_norm", hp.n_embd, hp.rms_eps)?,
            output: Linear::output(w, hp, true)?,
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
