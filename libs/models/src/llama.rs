//! Llama (and SmolLM2, Mistral-style) decoder: RMSNorm, RoPE, grouped-query
//! attention with a causal mask, SwiGLU MLP. Reference: Touvron et al. 2023;
//! llama.cpp `src/models/llama.cpp`; ollama `model/models/llama/model.go`.

use engine::kv_cache::{KvCache, KvShape};
use engine::session::Inputs;
use ggml::{Context, Graph, Rope, RopeMode, Tensor};

use crate::{Error, Meta, Result, Weights};

// ---- config ----

/// Hyperparameters from the GGUF metadata (`llama.*`).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Model width.
    pub n_embd: usize,
    /// Decoder blocks.
    pub n_layer: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (GQA groups; equal to `n_head` for plain MHA).
    pub n_head_kv: usize,
    /// Dimensions per head.
    pub head_dim: usize,
    /// MLP hidden width.
    pub n_ff: usize,
    /// Vocabulary size.
    pub n_vocab: usize,
    /// Training context.
    pub n_ctx_train: usize,
    /// RMSNorm ε.
    pub rms_eps: f32,
    /// RoPE parameters.
    pub rope: Rope,
}

impl Config {
    /// Reads and range-checks the hyperparameters.
    pub fn from_meta(m: &Meta) -> Result<Config> {
        let n_embd = m.usize_in("embedding_length", 1..=65536)?;
        let n_head = m.usize_in("attention.head_count", 1..=1024)?;
        let n_head_kv = m.usize_or_in("attention.head_count_kv", n_head, 1..=n_head)?;
        if n_head % n_head_kv != 0 || n_embd % n_head != 0 {
            return Err(Error::hparam(format!(
                "head counts {n_head}/{n_head_kv} do not divide width {n_embd}"
            )));
        }
        let head_dim = m.usize_or_in("attention.key_length", n_embd / n_head, 1..=1024)?;
        if m.usize_or_in("attention.value_length", head_dim, 1..=1024)? != head_dim {
            return Err(Error::hparam(
                "attention.value_length differs from key_length".into(),
            ));
        }
        let n_rot = m.usize_or_in("rope.dimension_count", head_dim, 2..=head_dim)?;
        // A wrong layout silently garbles output: llama GGUFs have Q/K rows
        // permuted at conversion for the NORMAL (adjacent pairs) layout.
        let mut rope = Rope::new(
            n_rot as i32,
            RopeMode::Normal,
            m.f32_or("rope.freq_base", 10000.0)?,
        );
        rope.n_ctx_orig = m.usize_in("context_length", 1..=(1 << 24))? as i32;
        match m.str_or("rope.scaling.type", "none")? {
            "none" => {}
            "linear" => rope.freq_scale = 1.0 / m.f32_or("rope.scaling.factor", 1.0)?.max(1e-6),
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
            n_ctx_train: rope.n_ctx_orig as usize,
            rms_eps: m.f32_or("attention.layer_norm_rms_epsilon", 1e-5)?,
            rope,
        })
    }
}

// ---- attention ----

/// Grouped-query self-attention.
pub struct Attention {
    wq: Tensor,                 // "attn_q"      [n_embd, n_head * head_dim]
    wk: Tensor,                 // "attn_k"      [n_embd, n_head_kv * head_dim]
    wv: Tensor,                 // "attn_v"      [n_embd, n_head_kv * head_dim]
    wo: Tensor,                 // "attn_output" [n_head * head_dim, n_embd]
    rope_freqs: Option<Tensor>, // "rope_freqs"  [n_rot / 2] (llama3-style factors)
    cfg: Config,
}

impl Attention {
    fn load(w: &Weights, p: &str, c: &Config) -> Result<Attention> {
        let (e, q, kv) = (c.n_embd, c.n_head * c.head_dim, c.n_head_kv * c.head_dim);
        Ok(Attention {
            wq: w.mat(&format!("{p}.attn_q.weight"), &[e, q])?,
            wk: w.mat(&format!("{p}.attn_k.weight"), &[e, kv])?,
            wv: w.mat(&format!("{p}.attn_v.weight"), &[e, kv])?,
            wo: w.mat(&format!("{p}.attn_output.weight"), &[q, e])?,
            rope_freqs: w.opt("rope_freqs.weight", &[c.rope.n_dims as usize / 2])?,
            cfg: c.clone(),
        })
    }

    /// `x [n_embd, n_tokens]` → `[n_embd, n_tokens]`, reading and extending the cache.
    fn forward(
        &self,
        ctx: &Context,
        g: &Graph,
        x: Tensor,
        inp: &Inputs,
        kv: &KvCache,
        layer: usize,
    ) -> Tensor {
        let c = &self.cfg;
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
        ctx.mul_mat(self.wo, kv.unrotate_out(ctx, out))
    }
}

// ---- mlp ----

/// SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.
pub struct Mlp {
    gate: Tensor, // "ffn_gate" [n_embd, n_ff]
    up: Tensor,   // "ffn_up"   [n_embd, n_ff]
    down: Tensor, // "ffn_down" [n_ff, n_embd]
}

impl Mlp {
    fn load(w: &Weights, p: &str, c: &Config) -> Result<Mlp> {
        Ok(Mlp {
            gate: w.mat(&format!("{p}.ffn_gate.weight"), &[c.n_embd, c.n_ff])?,
            up: w.mat(&format!("{p}.ffn_up.weight"), &[c.n_embd, c.n_ff])?,
            down: w.mat(&format!("{p}.ffn_down.weight"), &[c.n_ff, c.n_embd])?,
        })
    }

    /// `x [n_embd, n] → [n_embd, n]`.
    fn forward(&self, ctx: &Context, x: Tensor) -> Tensor {
        let h = ctx.swiglu(ctx.mul_mat(self.gate, x), ctx.mul_mat(self.up, x)); // [n_ff, n]
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
        // Tied embeddings (SmolLM2, Gemma, many small models have no
        // output.weight): a second handle on the same bytes, which may be
        // repacked for mul_mat while the embeddings stay for get_rows.
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

    fn shift_keys(&self, ctx: &Context, k: Tensor, delta: Tensor, layer: usize) -> Option<Tensor> {
        let a = &self.blocks[layer].attn;
        Some(ctx.rope(k, delta, a.rope_freqs, &self.cfg.rope))
    }

    // ---- forward ----

    fn forward(&self, ctx: &Context, g: &Graph, inp: &Inputs, kv: &KvCache) -> Tensor {
        let c = &self.cfg;
        let mut x = ctx.get_rows(self.tok_embd, inp.tokens); // [n_embd, n_tokens]
        for (i, b) in self.blocks.iter().enumerate() {
            let h = ctx.mul(ctx.rms_norm(x, c.rms_eps), b.attn_norm);
            let mut h = b.attn.forward(ctx, g, h, inp, kv, i);
            if i + 1 == self.blocks.len() {
                // only the rows we need logits for go through the last MLP
                h = ctx.get_rows(h, inp.out_ids); // [n_embd, n_out]
                x = ctx.get_rows(x, inp.out_ids);
            }
            let x1 = ctx.add(h, x);
            let h = ctx.mul(ctx.rms_norm(x1, c.rms_eps), b.ffn_norm);
            x = ctx.add(b.mlp.forward(ctx, h), x1);
        }
        let x = ctx.mul(ctx.rms_norm(x, c.rms_eps), self.output_norm);
        ctx.mul_mat(self.output, x) // [n_vocab, n_out]
    }
}
