//! Mistral 3 (Ministral 3) decoder, GGUF architecture `mistral3`: Llama's
//! block (RMSNorm, adjacent-pairs RoPE, grouped-query attention, SwiGLU
//! MLP) with YaRN RoPE scaling, Llama-4-style attention temperature,
//! optional output and MLP biases. Older Mistral/Mixtral GGUFs say `llama`
//! and run on [`crate::llama`]. Reference: llama.cpp
//! `src/models/mistral3.cpp`; Peng et al. 2023 ("YaRN").

use engine::kv_cache::{KvCache, KvShape};
use engine::session::Inputs;
use ggml::{Context, Graph, Rope, RopeMode, Tensor};

use crate::nn::{
    unsupported_scaling, AttnOptions, Block, Embedding, Gate, Hparams, Linear, Pass, RmsNorm,
    Rotary, Spec, Width,
};
use crate::{Error, Meta, Result, Weights};

// ---- config ----

/// Hyperparameters from the GGUF metadata (`mistral3.*`).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Widths, heads, layers, ε; `n_ctx_train` is the longest usable
    /// context: the training context, or less (see [`Config::from_meta`] on
    /// the attention temperature).
    pub hp: Hparams,
    /// RoPE parameters, YaRN included.
    pub rope: Rope,
}

impl Config {
    /// Reads and range-checks the hyperparameters.
    ///
    /// The attention temperature β (`attention.temperature_scale` from
    /// llama.cpp's converter, `rope.scaling_beta` from Ollama's) scales
    /// queries at position `p` by `1 + β·ln(⌊p / n_orig⌋ + 1)`, exactly 1
    /// below `n_orig` (the YaRN original context): we cap the context there
    /// instead of building that input.
    pub fn from_meta(m: &Meta) -> Result<Config> {
        let mut hp = Hparams::read(
            m,
            Spec {
                width: Width::Free,
                head_dim: None,
                whole_heads_rotate: true,
                rms_eps: 1e-5,
            },
        )?;
        if m.usize_or_in("expert_count", 0, 0..=1 << 16)? > 1 {
            return Err(Error::hparam(
                "mistral3 mixture of experts is not supported by the native engine".into(),
            ));
        }
        let n_orig = m.usize_or_in(
            "rope.scaling.original_context_length",
            hp.n_ctx_train,
            1..=(1 << 24),
        )?;
        // Adjacent pairs (NORMAL layout), like llama: Q/K rows are permuted
        // at conversion; NEOX here would garble output.
        let mut rope = Rope::new(
            hp.n_rot as i32,
            RopeMode::Normal,
            m.f32_above("rope.freq_base", 10_000.0, 0.0)?,
        );
        rope.n_ctx_orig = n_orig as i32;
        let factor = m.f32_or("rope.scaling.factor", 0.0)?;
        if factor < 0.0 {
            return Err(Error::hparam(format!(
                "rope.scaling.factor {factor} is negative"
            )));
        }
        let scaling = m.str_or("rope.scaling.type", "linear")?;
        if scaling != "none" && factor != 0.0 {
            rope.freq_scale = 1.0 / factor;
        }
        match scaling {
            "none" | "linear" => {}
            "yarn" => yarn(m, &mut rope)?,
            other => return Err(unsupported_scaling(other)),
        }
        rope.attn_factor *= m.f32_or("rope.scaling.attn_factor", 1.0)?;
        let temperature = m.f32_or("attention.temperature_scale", 0.0)? != 0.0
            || m.f32_or("rope.scaling_beta", 0.0)? != 0.0;
        if temperature {
            hp.n_ctx_train = hp.n_ctx_train.min(n_orig);
        }
        Ok(Config { hp, rope })
    }
}

/// YaRN: frequencies interpolated by `1 / factor` below the `β_slow..β_fast`
/// band, extrapolated above; magnitude corrected by `mscale`, computed as
/// llama.cpp does (its `llama_context` constructor), in f32 and in its order.
/// Ollama's converter names the keys differently; both are read.
fn yarn(m: &Meta, rope: &mut Rope) -> Result<()> {
    let either = |ours: &str, ollama: &str, default: f32| {
        let k = if m.gg.get(&m.key(ours)).is_some() {
            ours
        } else {
            ollama
        };
        m.f32_or(k, default)
    };
    let mscale = |scale: f32, k: f32| {
        if scale <= 1.0 {
            1.0
        } else {
            0.1 * k * scale.ln() + 1.0
        }
    };
    let factor = 1.0 / rope.freq_scale;
    let log_mul = either(
        "rope.scaling.yarn_log_multiplier",
        "rope.scaling.mscale_all_dim",
        0.0,
    )?;
    let attn = if log_mul != 0.0 {
        mscale(factor, 1.0) / mscale(factor, log_mul)
    } else {
        mscale(factor, 1.0)
    };
    // ggml's YaRN multiplies by 1 + 0.1·ln(factor) itself: cancel it
    rope.attn_factor = attn * (1.0 / (1.0 + 0.1 * factor.ln()));
    rope.ext_factor = m.f32_or("rope.scaling.extrapolation_factor", 1.0)?;
    rope.beta_fast = either(
        "rope.scaling.yarn_beta_fast",
        "rope.scaling.beta_fast",
        32.0,
    )?;
    rope.beta_slow = either("rope.scaling.yarn_beta_slow", "rope.scaling.beta_slow", 1.0)?;
    Ok(())
}

// ---- model ----

/// The whole model: embeddings, blocks, final norm, output head.
pub struct Model {
    cfg: Config,
    tok_embd: Embedding,  // "token_embd"  [n_embd, n_vocab]
    rope: Rotary,         // "rope_freqs"  [n_rot / 2]
    blocks: Vec<Block>,   // "blk.{i}", with "attn_output.bias", "ffn_*.bias"
    output_norm: RmsNorm, // "output_norm" [n_embd]
    output: Linear,       // "output"      [n_embd, n_vocab], or token_embd when tied
}

impl Model {
    /// Loads every weight, checking names and shapes.
    pub fn load(m: &Meta, w: &Weights) -> Result<Model> {
        let cfg = Config::from_meta(m)?;
        let hp = &cfg.hp;
        let attn = AttnOptions {
            out_bias: true,
            ..Default::default()
        };
        let block = |i| Block::load(w, &format!("blk.{i}"), hp, attn, Gate::SiluBiased, false);
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
