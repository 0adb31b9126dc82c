//! Qwen2 (and Qwen2.5) decoder: Llama's block (RMSNorm, grouped-query
//! attention, SwiGLU MLP) with biases on the query, key and value
//! projections, NEOX RoPE, output tied on the small sizes, and an optional
//! output bias. Reference: Yang et al. 2024 ("Qwen2 Technical Report");
//! llama.cpp `src/models/qwen2.cpp`; ollama `model/models/qwen2/model.go`.

use engine::kv_cache::{KvCache, KvShape};
use engine::session::Inputs;
use ggml::{Context, Graph, Rope, RopeMode, Tensor};

use crate::{Error, Meta, Result, Weights};

// ---- config ----

/// Hyperparameters from the GGUF metadata (`qwen2.*`).
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
        if n_head % n_head_kv != 0 {
            return Err(Error::hparam(format!(
                "head count {n_head} is not a multiple of kv head count {n_head_kv}"
            )));
        }
        let head_dim = m.usize_or_in("attention.key_length", n_embd / n_head, 2..=1024)?;
        if head_dim * n_head != n_embd {
            return Err(Error::hparam(format!(
                "{n_head} heads of {head_dim} do not make width {n_embd}"
            )));
        }
        if m.usize_or_in("attention.value_length", head_dim, 1..=1024)? != head_dim {
            return Err(Error::hparam(
                "attention.value_length differs from key_length".into(),
            ));
        }
        // whole heads rotate (llama.cpp asserts this and aborts otherwise)
        let n_rot = m.usize_or_in("rope.dimension_count", head_dim, head_dim..=head_dim)?;
        // NEOX layout (pairs i, i + n_rot/2): the converter does not permute
        // Qwen's Q/K rows, so the adjacent-pairs layout would garble output.
        let mut rope = Rope::new(
            n_rot as i32,
            RopeMode::Neox,
            m.f32_or("rope.freq_base", 10_000.0)?,
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
            rms_eps: m.f32_or("attention.layer_norm_rms_epsilon", 1e-6)?,
            rope,
        })
    }
}

// ---- attention ----

/// Grouped-query self-attention, biased query/key/value projections.
pub struct Attention {
    wq: Tensor,         // "attn_q.weight" [n_embd, n_head * head_dim]
    bq: Option<Tensor>, // "attn_q.bias"   [n_head * head_dim]
    wk: Tensor,         // "attn_k.weight" [n_embd, n_head_kv * head_dim]
    bk: Option<Tensor>, // "attn_k.bias"   [n_head_kv * head_dim]
    wv: Tensor,         // "attn_v.weight" [n_embd, n_head_kv * head_dim]
    bv: Option<Tensor>, // "attn_v.bias"   [n_head_kv * head_dim]
    wo: Tensor,         // "attn_output"   [n_head * head_dim, n_embd]
}

impl Attention {
    fn load(w: &Weights, p: &str, c: &Config) -> Result<Attention> {
        let (e, q, kv) = (c.n_embd, c.n_head * c.head_dim, c.n_head_kv * c.head_dim);
        Ok(Attention {
            wq: w.mat(&format!("{p}.attn_q.weight"), &[e, q])?,
            // every Qwen2 has the biases; llama.cpp loads files without them too
            bq: w.opt(&format!("{p}.attn_q.bias"), &[q])?,
            wk: w.mat(&format!("{p}.attn_k.weight"), &[e, kv])?,
            bk: w.opt(&format!("{p}.attn_k.bias"), &[kv])?,
            wv: w.mat(&format!("{p}.attn_v.weight"), &[e, kv])?,
            bv: w.opt(&format!("{p}.attn_v.bias"), &[kv])?,
            wo: w.mat(&format!("{p}.attn_output.weight"), &[q, e])?,
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
        let proj = |w: Tensor, b: Option<Tensor>| {
            let y = ctx.mul_mat(w, x);
            b.map_or(y, |b| ctx.add(y, b))
        };
        let q = ctx.reshape_3d(proj(self.wq, self.bq), d, c.n_head as i64, t); // [head_dim, n_head, n_tokens]
        let k = ctx.reshape_3d(proj(self.wk, self.bk), d, c.n_head_kv as i64, t); // [head_dim, n_head_kv, n_tokens]
        let v = ctx.reshape_3d(proj(self.wv, self.bv), d, c.n_head_kv as i64, t); // [head_dim, n_head_kv, n_tokens]
        let q = kv.rotate_q(ctx, ctx.rope(q, inp.pos, None, &c.rope));
        let k = ctx.rope(k, inp.pos, None, &c.rope);
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
    tok_embd: Tensor,         // "token_embd"  [n_embd, n_vocab]
    blocks: Vec<Block>,       // "blk.{i}"
    output_norm: Tensor,      // "output_norm" [n_embd]
    output: Tensor,           // "output"      [n_embd, n_vocab], or token_embd when tied
    output_b: Option<Tensor>, // "output.bias" [n_vocab]
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
        // Tied embeddings on the small sizes (0.5B–3B): no output.weight; a
        // second handle on the embeddings then, which mul_mat may repack.
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
            output_b: w.opt("output.bias", &[nv])?,
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
        let logits = ctx.mul_mat(self.output, norm(x, self.output_norm)); // [n_vocab, n_out]
        self.output_b.map_or(logits, |b| ctx.add(logits, b))
    }
}
