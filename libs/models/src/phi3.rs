//! Phi-3 (and Phi-4-mini) decoder: Llama's block with the query, key and
//! value projections fused in one matrix and the MLP's gate and up fused in
//! another; NEOX RoPE, possibly on only part of each head (Phi-4-mini
//! rotates 3/4), with LongRoPE per-frequency factors on the 128k-context
//! models (long ones when the context exceeds the original one). Reference:
//! Abdin et al. 2024 ("Phi-3 Technical Report"); llama.cpp
//! `src/models/phi3.cpp`; ollama `model/models/phi3` (llama.cpp runner).

use engine::kv_cache::{KvCache, KvShape};
use engine::session::Inputs;
use ggml::{Context, Graph, Rope, RopeMode, Tensor};

use crate::nn::{
    unsupported_scaling, AttnOptions, Block, Embedding, Gate, Hparams, Linear, Pass, RmsNorm,
    Rotary, Spec, Width,
};
use crate::{Meta, Result, Weights};

// ---- config ----

/// Hyperparameters from the GGUF metadata (`phi3.*`).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Widths (`head_dim = n_embd / n_head`; `ffn_up` is `2 * n_ff` wide:
    /// gate and up stacked), heads, layers, ε.
    pub hp: Hparams,
    /// Context the model was pre-trained with before LongRoPE
    /// (`rope.scaling.original_context_length`): longer sessions use the
    /// long factors.
    pub n_ctx_orig: usize,
    /// RoPE parameters (`n_dims` may be less than `head_dim`).
    pub rope: Rope,
}

impl Config {
    /// Reads and range-checks the hyperparameters.
    ///
    /// `attention.sliding_window` is ignored, as llama.cpp does since its PR
    /// 13676 (the converters write a window that the models do not use
    /// consistently); honouring it would break parity with llama.cpp.
    pub fn from_meta(m: &Meta) -> Result<Config> {
        let hp = Hparams::read(
            m,
            Spec {
                width: Width::Exact,
                head_dim: None,
                whole_heads_rotate: false,
                rms_eps: 1e-5,
            },
        )?;
        let n_ctx_orig = m.usize_or_in(
            "rope.scaling.original_context_length",
            hp.n_ctx_train,
            1..=(1 << 24),
        )?;
        // NEOX layout (pairs i, i + n_rot/2), dimensions past n_rot unrotated.
        let mut rope = Rope::new(
            hp.n_rot as i32,
            RopeMode::Neox,
            m.f32_above("rope.freq_base", 10_000.0, 0.0)?,
        );
        rope.n_ctx_orig = n_ctx_orig as i32;
        // LongRoPE's magnitude correction, √(1 + ln(s) / ln(n_ctx_orig)).
        rope.attn_factor = m.f32_or("rope.scaling.attn_factor", 1.0)?;
        match m.str_or("rope.scaling.type", "linear")? {
            "none" => {}
            "linear" | "longrope" => {
                let factor = m.f32_or("rope.scaling.factor", 0.0)?;
                if factor != 0.0 {
                    rope.freq_scale = 1.0 / factor.max(1e-6);
                }
            }
            other => return Err(unsupported_scaling(other)),
        }
        Ok(Config {
            hp,
            n_ctx_orig,
            rope,
        })
    }
}

// ---- model ----

/// The whole model: embeddings, blocks, final norm, output head.
pub struct Model {
    cfg: Config,
    tok_embd: Embedding,  // "token_embd"         [n_embd, n_vocab]
    rope_long: Rotary,    // "rope_factors_long"  [n_rot / 2]
    rope_short: Rotary,   // "rope_factors_short" [n_rot / 2]
    blocks: Vec<Block>,   // "blk.{i}", with "attn_qkv" and stacked "ffn_up"
    output_norm: RmsNorm, // "output_norm"        [n_embd]
    output: Linear,       // "output"             [n_embd, n_vocab], or token_embd when tied
}

impl Model {
    /// Loads every weight, checking names and shapes.
    pub fn load(m: &Meta, w: &Weights) -> Result<Model> {
        let cfg = Config::from_meta(m)?;
        let hp = &cfg.hp;
        // Q, K, V in one matrix on every Phi-3 GGUF (three also load);
        // queries scaled before attention, as llama.cpp does (same rounding)
        let attn = AttnOptions {
            fused_qkv: true,
            q_scale: Some(1.0 / (hp.head_dim as f32).sqrt()),
            ..Default::default()
        };
        let block = |i| Block::load(w, &format!("blk.{i}"), hp, attn, Gate::SiluStacked, false);
        Ok(Model {
            tok_embd: Embedding::load(w, hp)?,
            blocks: (0..hp.n_layer).map(block).collect::<Result<_>>()?,
            output_norm: RmsNorm::load(w, "output_norm", hp.n_embd, hp.rms_eps)?,
            output: Linear::output(w, hp, false)?,
            rope_long: Rotary::with_factors(w, "rope_factors_long", cfg.rope)?,
            rope_short: Rotary::with_factors(w, "rope_factors_short", cfg.rope)?,
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
        // LongRoPE: the long factors once the session outgrows the original
        // context (llama.cpp decides by its context size the same way).
        let rope = match kv.n_ctx() > self.cfg.n_ctx_orig {
            true => &self.rope_long,
            false => &self.rope_short,
        };
        let mut x = self.tok_embd.forward(ctx, inp.tokens); // [n_embd, n_tokens]
        for (i, b) in self.blocks.iter().enumerate() {
            x = b.forward(&p, x, i, rope, kv.mask()); // [n_embd, n_out] after the last
        }
        let h = self.output_norm.forward(ctx, x); // [n_embd, n_out]
        if inp.hidden {
            return h;
        }
        self.output.forward(ctx, h) // [n_vocab, n_out]
    }
}
