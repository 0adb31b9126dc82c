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

use crate::{Error, Meta, Result, Weights};

// ---- config ----

/// Hyperparameters from the GGUF metadata (`phi3.*`).
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
    /// Dimensions per head (`n_embd / n_head`).
    pub head_dim: usize,
    /// MLP hidden width (`ffn_up` is twice this: gate and up stacked).
    pub n_ff: usize,
    /// Vocabulary size.
    pub n_vocab: usize,
    /// Training context.
    pub n_ctx_train: usize,
    /// Context the model was pre-trained with before LongRoPE
    /// (`rope.scaling.original_context_length`): longer sessions use the
    /// long factors.
    pub n_ctx_orig: usize,
    /// RMSNorm ε.
    pub rms_eps: f32,
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
        let n_embd = m.usize_in("embedding_length", 1..=65536)?;
        let n_head = m.usize_in("attention.head_count", 1..=1024)?;
        let n_head_kv = m.usize_or_in("attention.head_count_kv", n_head, 1..=n_head)?;
        if n_head % n_head_kv != 0 || n_embd % n_head != 0 {
            return Err(Error::hparam(format!(
                "head counts {n_head}/{n_head_kv} do not divide width {n_embd}"
            )));
        }
        let head_dim = n_embd / n_head;
        let n_rot = m.usize_or_in("rope.dimension_count", head_dim, 2..=head_dim)?;
        if n_rot % 2 != 0 {
            return Err(Error::hparam(format!(
                "rope.dimension_count {n_rot} is odd"
            )));
        }
        let n_ctx_train = m.usize_in("context_length", 1..=(1 << 24))?;
        let n_ctx_orig = m.usize_or_in(
            "rope.scaling.original_context_length",
            n_ctx_train,
            1..=(1 << 24),
        )?;
        // NEOX layout (pairs i, i + n_rot/2), dimensions past n_rot unrotated.
        let mut rope = Rope::new(
            n_rot as i32,
            RopeMode::Neox,
            m.f32_or("rope.freq_base", 10_000.0)?,
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
            other => {
                return Err(Error::hparam(format!(
                    "rope scaling {other:?} is not supported by the native engine"
                )))
            }
        }
        Ok(Config {
            n_embd,
            n_layer: m.usize_in("block_count", 1..=512)?,
            n_head,
            n_head_kv,
            head_dim,
            n_ff: m.usize_in("feed_forward_length", 1..=1 << 20)?,
            n_vocab: m.n_vocab()?,
            n_ctx_train,
            n_ctx_orig,
            rms_eps: m.f32_or("attention.layer_norm_rms_epsilon", 1e-5)?,
            rope,
        })
    }
}

// ---- attention ----

/// Query, key and value projections: one fused matrix (every Phi-3 GGUF),
/// or three.
enum Qkv {
    Fused(Tensor), // "attn_qkv" [n_embd, (n_head + 2 * n_head_kv) * head_dim]
    Split(Tensor, Tensor, Tensor), // "attn_q", "attn_k", "attn_v"
}

/// Grouped-query self-attention with (partial) rotary embeddings.
pub struct Attention {
    qkv: Qkv,
    wo: Tensor, // "attn_output" [n_head * head_dim, n_embd]
}

impl Attention {
    fn load(w: &Weights, p: &str, c: &Config) -> Result<Attention> {
        let (e, q, kv) = (c.n_embd, c.n_head * c.head_dim, c.n_head_kv * c.head_dim);
        let qkv = match w.opt_mat(&format!("{p}.attn_qkv.weight"), &[e, q + 2 * kv])? {
            Some(t) => Qkv::Fused(t),
            None => {
                let Some(wq) = w.opt_mat(&format!("{p}.attn_q.weight"), &[e, q])? else {
                    return Err(Error::tensor(format!(
                        "cannot find tensor {p}.attn_qkv.weight (nor {p}.attn_q.weight) in gguf"
                    )));
                };
                let wk = w.mat(&format!("{p}.attn_k.weight"), &[e, kv])?;
                Qkv::Split(wq, wk, w.mat(&format!("{p}.attn_v.weight"), &[e, kv])?)
            }
        };
        Ok(Attention {
            qkv,
            wo: w.mat(&format!("{p}.attn_output.weight"), &[q, e])?,
        })
    }

    /// `x [n_embd, n_tokens]` → `[n_embd, n_tokens]`, reading and extending
    /// the cache; `factors [n_rot / 2]` scale the RoPE wavelengths.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        ctx: &Context,
        g: &Graph,
        c: &Config,
        x: Tensor,
        factors: Option<Tensor>,
        inp: &Inputs,
        kv: &KvCache,
        layer: usize,
    ) -> Tensor {
        let (d, t) = (c.head_dim as i64, inp.n_tokens as i64);
        let (nh, nkv) = (c.n_head as i64, c.n_head_kv as i64);
        let (q, k, v) = match self.qkv {
            Qkv::Fused(wqkv) => {
                // Q, K and V are views into each token's column [q | k | v];
                // the cache write needs V contiguous (RoPE copies Q and K)
                let qkv = ctx.mul_mat(wqkv, x); // [(n_head + 2 * n_head_kv) * head_dim, n_tokens]
                let (es, row) = (qkv.nb()[0], qkv.nb()[1]);
                let view = |n: i64, at: i64| {
                    ctx.view_3d(qkv, [d, n, t], es * d as usize, row, es * (at * d) as usize)
                };
                (view(nh, 0), view(nkv, nh), ctx.cont(view(nkv, nh + nkv)))
            }
            Qkv::Split(wq, wk, wv) => (
                ctx.reshape_3d(ctx.mul_mat(wq, x), d, nh, t),
                ctx.reshape_3d(ctx.mul_mat(wk, x), d, nkv, t),
                ctx.reshape_3d(ctx.mul_mat(wv, x), d, nkv, t),
            ),
        }; // [head_dim, n_head(_kv), n_tokens] each
        let q = ctx.rope(q, inp.pos, factors, &c.rope);
        // queries scaled before attention, as llama.cpp does (same rounding)
        let q = kv.rotate_q(ctx, ctx.scale(q, 1.0 / (c.head_dim as f32).sqrt()));
        let k = ctx.rope(k, inp.pos, factors, &c.rope);
        kv.put(ctx, g, layer, k, v);
        let (k, v) = kv.get(ctx, layer); // [head_dim, n_kv, n_head_kv] each
        let q = ctx.permute(q, [0, 2, 1, 3]); // [head_dim, n_tokens, n_head]
        let out = ctx.scaled_dot_product_attention(q, k, v, kv.mask(), 1.0, kv.flash()); // [n_head * head_dim, n_tokens]
        ctx.mul_mat(self.wo, kv.unrotate_out(ctx, out))
    }
}

// ---- mlp ----

/// SwiGLU feed-forward with gate and up in one matrix:
/// `down(silu(gate(x)) * up(x))`, where `[gate; up] = ffn_up(x)`.
pub struct Mlp {
    up: Tensor,   // "ffn_up"   [n_embd, 2 * n_ff] (gate rows first, then up)
    down: Tensor, // "ffn_down" [n_ff, n_embd]
}

impl Mlp {
    fn load(w: &Weights, p: &str, c: &Config) -> Result<Mlp> {
        Ok(Mlp {
            up: w.mat(&format!("{p}.ffn_up.weight"), &[c.n_embd, 2 * c.n_ff])?,
            down: w.mat(&format!("{p}.ffn_down.weight"), &[c.n_ff, c.n_embd])?,
        })
    }

    /// `x [n_embd, n] → [n_embd, n]`.
    fn forward(&self, ctx: &Context, x: Tensor) -> Tensor {
        let h = ctx.swiglu_stacked(ctx.mul_mat(self.up, x)); // [2 * n_ff, n] → [n_ff, n]
        ctx.mul_mat(self.down, h)
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
    tok_embd: Tensor,           // "token_embd"         [n_embd, n_vocab]
    rope_long: Option<Tensor>,  // "rope_factors_long"  [n_rot / 2]
    rope_short: Option<Tensor>, // "rope_factors_short" [n_rot / 2]
    blocks: Vec<Block>,         // "blk.{i}"
    output_norm: Tensor,        // "output_norm"        [n_embd]
    output: Tensor,             // "output"             [n_embd, n_vocab], or token_embd when tied
}

impl Model {
    /// Loads every weight, checking names and shapes.
    pub fn load(m: &Meta, w: &Weights) -> Result<Model> {
        let cfg = Config::from_meta(m)?;
        let (e, nv) = (cfg.n_embd, cfg.n_vocab);
        let n_factors = cfg.rope.n_dims as usize / 2;
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
            tok_embd,
            rope_long: w.opt("rope_factors_long.weight", &[n_factors])?,
            rope_short: w.opt("rope_factors_short.weight", &[n_factors])?,
            blocks,
            output_norm,
            output,
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
        // LongRoPE: the long factors once the session outgrows the original
        // context (llama.cpp decides by its context size the same way).
        let factors = if kv.n_ctx() > c.n_ctx_orig {
            self.rope_long
        } else {
            self.rope_short
        };
        let mut x = ctx.get_rows(self.tok_embd, inp.tokens); // [n_embd, n_tokens]
        for (i, b) in self.blocks.iter().enumerate() {
            let h = norm(x, b.attn_norm);
            let mut h = b.attn.forward(ctx, g, c, h, factors, inp, kv, i);
            if i + 1 == self.blocks.len() {
                // only the rows we need logits for go through the last MLP
                h = ctx.get_rows(h, inp.out_ids); // [n_embd, n_out]
                x = ctx.get_rows(x, inp.out_ids);
            }
            let x1 = ctx.add(h, x);
            x = ctx.add(x1, b.mlp.forward(ctx, norm(x1, b.ffn_norm)));
        }
        ctx.mul_mat(self.output, norm(x, self.output_norm)) // [n_vocab, n_out]
    }
}
