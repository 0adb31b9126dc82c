//! Mistral 3 (Ministral 3) decoder, GGUF architecture `mistral3`: Llama's
//! block (RMSNorm, adjacent-pairs RoPE, grouped-query attention, SwiGLU
//! MLP) with YaRN RoPE scaling, Llama-4-style attention temperature,
//! optional output and MLP biases. Older Mistral/Mixtral GGUFs say `llama`
//! and run on [`crate::llama`]. Reference: llama.cpp
//! `src/models/mistral3.cpp`; Peng et al. 2023 ("YaRN").

use engine::kv_cache::{KvCache, KvShape};
use engine::session::Inputs;
use ggml::{Context, Graph, Rope, RopeMode, Tensor};

use crate::{Error, Meta, Result, Weights};

// ---- config ----

/// Hyperparameters from the GGUF metadata (`mistral3.*`).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Model width.
    pub n_embd: usize,
    /// Decoder blocks.
    pub n_layer: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_head_kv: usize,
    /// Dimensions per head.
    pub head_dim: usize,
    /// MLP hidden width.
    pub n_ff: usize,
    /// Vocabulary size.
    pub n_vocab: usize,
    /// Longest usable context: the training context, or less (see
    /// [`Config::from_meta`] on the attention temperature).
    pub n_ctx_train: usize,
    /// RMSNorm ε.
    pub rms_eps: f32,
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
        let n_embd = m.usize_in("embedding_length", 1..=65536)?;
        let n_head = m.usize_in("attention.head_count", 1..=1024)?;
        let n_head_kv = m.usize_or_in("attention.head_count_kv", n_head, 1..=n_head)?;
        if n_head % n_head_kv != 0 {
            return Err(Error::hparam(format!(
                "head count {n_head} is not a multiple of kv head count {n_head_kv}"
            )));
        }
        let head_dim = m.usize_or_in("attention.key_length", n_embd / n_head, 2..=1024)?;
        if m.usize_or_in("attention.value_length", head_dim, 1..=1024)? != head_dim {
            return Err(Error::hparam(
                "attention.value_length differs from key_length".into(),
            ));
        }
        if m.usize_or_in("expert_count", 0, 0..=1 << 16)? > 1 {
            return Err(Error::hparam(
                "mistral3 mixture of experts is not supported by the native engine".into(),
            ));
        }
        let n_rot = m.usize_or_in("rope.dimension_count", head_dim, head_dim..=head_dim)?;
        let n_ctx_train = m.usize_in("context_length", 1..=(1 << 24))?;
        let n_orig = m.usize_or_in(
            "rope.scaling.original_context_length",
            n_ctx_train,
            1..=(1 << 24),
        )?;
        // Adjacent pairs (NORMAL layout), like llama: Q/K rows are permuted
        // at conversion; NEOX here would garble output.
        let mut rope = Rope::new(
            n_rot as i32,
            RopeMode::Normal,
            m.f32_or("rope.freq_base", 10_000.0)?,
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
            other => {
                return Err(Error::hparam(format!(
                    "rope scaling {other:?} is not supported by the native engine"
                )))
            }
        }
        rope.attn_factor *= m.f32_or("rope.scaling.attn_factor", 1.0)?;
        let temperature = m.f32_or("attention.temperature_scale", 0.0)? != 0.0
            || m.f32_or("rope.scaling_beta", 0.0)? != 0.0;
        Ok(Config {
            n_embd,
            n_layer: m.usize_in("block_count", 1..=512)?,
            n_head,
            n_head_kv,
            head_dim,
            n_ff: m.usize_in("feed_forward_length", 1..=1 << 20)?,
            n_vocab: m.n_vocab()?,
            n_ctx_train: if temperature {
                n_ctx_train.min(n_orig)
            } else {
                n_ctx_train
            },
            rms_eps: m.f32_or("attention.layer_norm_rms_epsilon", 1e-5)?,
            rope,
        })
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

// ---- attention ----

/// Grouped-query self-attention.
pub struct Attention {
    wq: Tensor,                 // "attn_q"           [n_embd, n_head * head_dim]
    wk: Tensor,                 // "attn_k"           [n_embd, n_head_kv * head_dim]
    wv: Tensor,                 // "attn_v"           [n_embd, n_head_kv * head_dim]
    wo: Tensor,                 // "attn_output"      [n_head * head_dim, n_embd]
    bo: Option<Tensor>,         // "attn_output.bias" [n_embd]
    rope_freqs: Option<Tensor>, // "rope_freqs"       [n_rot / 2]
}

impl Attention {
    fn load(w: &Weights, p: &str, c: &Config) -> Result<Attention> {
        let (e, q, kv) = (c.n_embd, c.n_head * c.head_dim, c.n_head_kv * c.head_dim);
        Ok(Attention {
            wq: w.mat(&format!("{p}.attn_q.weight"), &[e, q])?,
            wk: w.mat(&format!("{p}.attn_k.weight"), &[e, kv])?,
            wv: w.mat(&format!("{p}.attn_v.weight"), &[e, kv])?,
            wo: w.mat(&format!("{p}.attn_output.weight"), &[q, e])?,
            bo: w.opt(&format!("{p}.attn_output.bias"), &[e])?,
            rope_freqs: w.opt("rope_freqs.weight", &[c.rope.n_dims as usize / 2])?,
        })
    }

    /// `x [n_embd, n_tokens]` → `[n_embd, n_tokens]`, reading and extending the cache.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        ctx: &Context,
        g: &Graph,
        c: &Config,
        x: Tensor,
        inp: &Inputs,
        kv: &KvCache,
        layer: usize,
    ) -> Tensor {
        let (d, t) = (c.head_dim as i64, inp.n_tokens as i64);
        let q = ctx.reshape_3d(ctx.mul_mat(self.wq, x), d, c.n_head as i64, t); // [head_dim, n_head, n_tokens]
        let k = ctx.reshape_3d(ctx.mul_mat(self.wk, x), d, c.n_head_kv as i64, t); // [head_dim, n_head_kv, n_tokens]
        let v = ctx.reshape_3d(ctx.mul_mat(self.wv, x), d, c.n_head_kv as i64, t); // [head_dim, n_head_kv, n_tokens]
        let q = kv.rotate_q(ctx, ctx.rope(q, inp.pos, self.rope_freqs, &c.rope));
        let k = ctx.rope(k, inp.pos, self.rope_freqs, &c.rope);
        kv.put(ctx, g, layer, k, v);
        let (k, v) = kv.get(ctx, layer); // [head_dim, n_kv, n_head_kv] each
        let q = ctx.permute(q, [0, 2, 1, 3]); // [head_dim, n_tokens, n_head]
        let scale = 1.0 / (c.head_dim as f32).sqrt();
        let out = ctx.scaled_dot_product_attention(q, k, v, kv.mask(), scale, kv.flash()); // [n_head * head_dim, n_tokens]
        let out = ctx.mul_mat(self.wo, kv.unrotate_out(ctx, out));
        self.bo.map_or(out, |b| ctx.add(out, b))
    }
}

// ---- mlp ----

/// SwiGLU feed-forward, optionally biased: `down(silu(gate(x)) * up(x))`.
pub struct Mlp {
    gate: Tensor,           // "ffn_gate"      [n_embd, n_ff]
    gate_b: Option<Tensor>, // "ffn_gate.bias" [n_ff]
    up: Tensor,             // "ffn_up"        [n_embd, n_ff]
    up_b: Option<Tensor>,   // "ffn_up.bias"   [n_ff]
    down: Tensor,           // "ffn_down"      [n_ff, n_embd]
    down_b: Option<Tensor>, // "ffn_down.bias" [n_embd]
}

impl Mlp {
    fn load(w: &Weights, p: &str, c: &Config) -> Result<Mlp> {
        let (e, f) = (c.n_embd, c.n_ff);
        Ok(Mlp {
            gate: w.mat(&format!("{p}.ffn_gate.weight"), &[e, f])?,
            gate_b: w.opt(&format!("{p}.ffn_gate.bias"), &[f])?,
            up: w.mat(&format!("{p}.ffn_up.weight"), &[e, f])?,
            up_b: w.opt(&format!("{p}.ffn_up.bias"), &[f])?,
            down: w.mat(&format!("{p}.ffn_down.weight"), &[f, e])?,
            down_b: w.opt(&format!("{p}.ffn_down.bias"), &[e])?,
        })
    }

    /// `x [n_embd, n] → [n_embd, n]`.
    fn forward(&self, ctx: &Context, x: Tensor) -> Tensor {
        let lin = |w: Tensor, b: Option<Tensor>, x: Tensor| {
            let y = ctx.mul_mat(w, x);
            b.map_or(y, |b| ctx.add(y, b))
        };
        let h = ctx.swiglu(lin(self.gate, self.gate_b, x), lin(self.up, self.up_b, x)); // [n_ff, n]
        lin(self.down, self.down_b, h)
    }
}

// ---- block ----

/// One decoder block: pre-norm attention and pre-norm MLP, each residual.
pub struct Block {
    attn_norm: Tensor, // "attn_norm" [n_embd]
    attn: Attention,
    ffn_norm: Tensor, // "ffn_norm" [n_embd]
    mlp: Mlp,
}

impl Block {
    fn load(w: &Weights, p: &str, c: &Config) -> Result<Block> {
        Ok(Block {
            attn_norm: w.get(&format!("{p}.attn_norm.weight"), &[c.n_embd])?,
            attn: Attention::load(w, p, c)?,
            ffn_norm: w.get(&format!("{p}.ffn_norm.weight"), &[c.n_embd])?,
            mlp: Mlp::load(w, p, c)?,
        })
    }
}

// ---- model ----

/// The whole model: embeddings, blocks, final norm, output head.
pub struct Model {
    cfg: Config,
    tok_embd: Tensor,    // "token_embd"  [n_embd, n_vocab]
    blocks: Vec<Block>,  // "blk.{i}"
    output_norm: Tensor, // "output_norm" [n_embd]
    output: Tensor,      // "output"      [n_embd, n_vocab], or token_embd when tied
}

impl Model {
    /// Loads every weight, checking names and shapes.
    pub fn load(m: &Meta, w: &Weights) -> Result<Model> {
        let cfg = Config::from_meta(m)?;
        let (e, nv) = (cfg.n_embd, cfg.n_vocab);
        let tok_embd = w.get("token_embd.weight", &[e, nv])?;
        let blocks = (0..cfg.n_layer)
            .map(|i| Block::load(w, &format!("blk.{i}"), &cfg))
            .collect::<Result<_>>()?;
        let output_norm = w.get("output_norm.weight", &[e])?;
        // tied: a second handle on the embeddings, which mul_mat may repack
        let output = match w.opt_mat("output.weight", &[e, nv])? {
            Some(t) => t,
            None => w.mat("token_embd.weight", &[e, nv])?,
        };
        Ok(Model {
            cfg,
            tok_embd,
            blocks,
            output_norm,
            output,
        })
    }

    /// Hyperparameters.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
}

impl engine::session::Model for Model {
    fn n_vocab(&self) -> usize {
        self.cfg.n_vocab
    }
    fn kv_shape(&self) -> KvShape {
        let c = &self.cfg;
        KvShape {
            n_layer: c.n_layer,
            n_head_kv: c.n_head_kv,
            head_dim_k: c.head_dim,
            head_dim_v: c.head_dim,
            n_swa: 0,
        }
    }
    fn n_ctx_train(&self) -> usize {
        self.cfg.n_ctx_train
    }

    // ---- forward ----

    fn forward(&self, ctx: &Context, g: &Graph, inp: &Inputs, kv: &KvCache) -> Tensor {
        let c = &self.cfg;
        let norm = |x: Tensor, w: Tensor| ctx.mul(ctx.rms_norm(x, c.rms_eps), w);
        let mut x = ctx.get_rows(self.tok_embd, inp.tokens); // [n_embd, n_tokens]
        for (i, b) in self.blocks.iter().enumerate() {
            let mut h = b.attn.forward(ctx, g, c, norm(x, b.attn_norm), inp, kv, i);
            if i + 1 == self.blocks.len() {
                // only the rows we need logits for go through the last MLP
                h = ctx.get_rows(h, inp.out_ids); // [n_embd, n_out]
                x = ctx.get_rows(x, inp.out_ids);
            }
            let x1 = ctx.add(h, x);
            x = ctx.add(b.mlp.forward(ctx, norm(x1, b.ffn_norm)), x1);
        }
        ctx.mul_mat(self.output, norm(x, self.output_norm)) // [n_vocab, n_out]
    }
}
