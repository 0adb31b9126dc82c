//! Gemma 3 decoder: embeddings scaled by √n_embd; blocks with RMSNorm before
//! *and* after attention and MLP; RMSNorm on each query and key head; local
//! sliding-window layers interleaved with global ones (five local, one
//! global, with their own RoPE bases); GeGLU (tanh) MLP; output tied to the
//! embeddings; optional final logit soft-capping. Reference: Gemma Team 2025
//! ("Gemma 3 Technical Report"); llama.cpp `src/models/gemma3.cpp`; ollama
//! `model/models/gemma3/model_text.go`.

use engine::kv_cache::{KvCache, KvShape};
use engine::session::Inputs;
use ggml::{Context, Graph, Rope, RopeMode, Tensor};

use crate::nn::{
    AttnOptions, Block, Embedding, Gate, Hparams, Linear, Pass, RmsNorm, Rotary, Spec, Width,
};
use crate::{Error, Meta, Result, Weights};

// ---- config ----

/// Hyperparameters from the GGUF metadata (`gemma3.*`).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Widths, heads (256 dimensions each on every size; not
    /// `n_embd / n_head`), layers, ε.
    pub hp: Hparams,
    /// Sliding window of the local layers (0: every layer global).
    pub n_swa: usize,
    /// Per layer: local (sliding-window) attention?
    pub is_local: Vec<bool>,
    /// RoPE of the global layers (`rope.freq_base`, 1e6; linear scaling on larger sizes).
    pub rope_global: Rope,
    /// RoPE of the local layers (`rope.freq_base_swa`, default 1e4, unscaled).
    pub rope_local: Rope,
    /// Queries are multiplied by this before attention (`query_pre_attn_scalar^-½`).
    pub attn_scale: f32,
    /// `cap · tanh(logits / cap)` on the output when set.
    pub final_softcap: Option<f32>,
}

impl Config {
    /// Reads and range-checks the hyperparameters.
    pub fn from_meta(m: &Meta) -> Result<Config> {
        let hp = Hparams::read(
            m,
            Spec {
                width: Width::Free,
                head_dim: Some(256),
                whole_heads_rotate: false,
                rms_eps: 1e-6,
            },
        )?;
        let rope_global = hp.rope(m, RopeMode::Neox, 1_000_000.0)?;
        let mut rope_local = rope_global;
        rope_local.freq_base = m.f32_above("rope.freq_base_swa", 10_000.0, 0.0)?;
        rope_local.freq_scale = 1.0;

        let n_swa = m.usize_or_in("attention.sliding_window", 0, 0..=(1 << 24))?;
        let is_local = match n_swa {
            0 => vec![false; hp.n_layer],
            _ => local_layers(m, hp.n_layer)?,
        };
        // Gemma 3 27B scales queries by (n_embd / n_head)^-½, the others by
        // head_dim^-½ (query_pre_attn_scalar in Google's configs).
        let attn_scale = match hp.n_layer {
            62 => 1.0 / ((hp.n_embd / hp.n_head) as f32).sqrt(),
            _ => 1.0 / (hp.head_dim as f32).sqrt(),
        };
        let cap = m.f32_or("final_logit_softcapping", 0.0)?;
        Ok(Config {
            hp,
            n_swa,
            is_local,
            rope_global,
            rope_local,
            attn_scale,
            final_softcap: (cap > 0.0).then_some(cap),
        })
    }
}

/// Which layers are local: `attention.sliding_window_pattern` as one bool per
/// layer, or as a period `n` (layers `i % n < n - 1` local, every `n`-th
/// global); Gemma 3's period, 6, when absent.
fn local_layers(m: &Meta, n_layer: usize) -> Result<Vec<bool>> {
    let key = m.key("attention.sliding_window_pattern");
    if let Some(a) = m.gg.get(&key).and_then(gguf::Value::as_array) {
        if a.elem_type() != gguf::ValueType::Bool || a.len() != n_layer {
            return Err(Error::hparam(format!(
                "{key} must be {n_layer} bools, one per layer"
            )));
        }
        return Ok(a.raw_bytes().iter().map(|&b| b != 0).collect());
    }
    let period = m.usize_or_in("attention.sliding_window_pattern", 6, 0..=n_layer.max(1))?;
    Ok((0..n_layer)
        .map(|i| period == 0 || i % period < period - 1)
        .collect())
}

// ---- model ----

/// The whole model: scaled embeddings, blocks, final norm, tied output head.
pub struct Model {
    cfg: Config,
    tok_embd: Embedding,  // "token_embd"  [n_embd, n_vocab]
    rope_global: Rotary,  //
    rope_local: Rotary,   //
    blocks: Vec<Block>,   // "blk.{i}", with q/k norms and post norms
    output_norm: RmsNorm, // "output_norm" [n_embd]
    output: Linear,       // "output"      [n_embd, n_vocab], or token_embd when tied
}

impl Model {
    /// Loads every weight, checking names and shapes.
    pub fn load(m: &Meta, w: &Weights) -> Result<Model> {
        let cfg = Config::from_meta(m)?;
        let hp = &cfg.hp;
        let attn = AttnOptions {
            qk_norm: true,
            q_scale: Some(cfg.attn_scale),
            ..Default::default()
        };
        let block = |i| Block::load(w, &format!("blk.{i}"), hp, attn, Gate::GeluTanh, true);
        Ok(Model {
            tok_embd: Embedding::load(w, hp)?,
            rope_global: Rotary::new(cfg.rope_global),
            rope_local: Rotary::new(cfg.rope_local),
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

    /// The RoPE of `layer`: local layers have their own base.
    fn rope(&self, layer: usize) -> &Rotary {
        match self.cfg.is_local[layer] {
            true => &self.rope_local,
            false => &self.rope_global,
        }
    }
}

impl engine::session::Model for Model {
    fn n_vocab(&self) -> usize {
        self.cfg.hp.n_vocab
    }
    fn kv_shape(&self) -> KvShape {
        self.cfg.hp.kv_shape(self.cfg.n_swa)
    }
    fn n_ctx_train(&self) -> usize {
        self.cfg.hp.n_ctx_train
    }
    fn shift_keys<'c>(
        &'c self,
        ctx: &'c Context,
        k: Tensor<'c>,
        delta: Tensor<'c>,
        layer: usize,
    ) -> Option<Tensor<'c>> {
        Some(self.rope(layer).forward(ctx, k, delta))
    }

    // ---- forward ----

    fn forward<'c>(
        &'c self,
        ctx: &'c Context,
        g: &Graph<'c>,
        inp: &Inputs<'c>,
        kv: &KvCache<'c>,
    ) -> Tensor<'c> {
        let c = &self.cfg;
        let p = Pass {
            ctx,
            g,
            inp,
            kv,
            n_layer: self.blocks.len(),
        };
        let x = self.tok_embd.forward(ctx, inp.tokens); // [n_embd, n_tokens]
        let mut x = ctx.scale(x, (c.hp.n_embd as f32).sqrt());
        for (i, b) in self.blocks.iter().enumerate() {
            let mask = if c.is_local[i] {
                kv.mask_swa()
            } else {
                kv.mask()
            };
            x = b.forward(&p, x, i, self.rope(i), mask); // [n_embd, n_out] after the last
        }
        let h = self.output_norm.forward(ctx, x); // [n_embd, n_out]
        if inp.hidden {
            return h;
        }
        let logits = self.output.forward(ctx, h); // [n_vocab, n_out]
        match c.final_softcap {
            Some(cap) => ctx.scale(ctx.tanh(ctx.scale(logits, 1.0 / cap)), cap),
            None => logits,
        }
    }
}
