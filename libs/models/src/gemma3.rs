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

use crate::{Error, Meta, Result, Weights};

// ---- config ----

/// Hyperparameters from the GGUF metadata (`gemma3.*`).
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
    /// Dimensions per head (256 on every Gemma 3 size; not `n_embd / n_head`).
    pub head_dim: usize,
    /// MLP hidden width.
    pub n_ff: usize,
    /// Vocabulary size.
    pub n_vocab: usize,
    /// Training context.
    pub n_ctx_train: usize,
    /// RMSNorm ε.
    pub rms_eps: f32,
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
        let n_embd = m.usize_in("embedding_length", 1..=65536)?;
        let n_layer = m.usize_in("block_count", 1..=512)?;
        let n_head = m.usize_in("attention.head_count", 1..=1024)?;
        let n_head_kv = m.usize_or_in("attention.head_count_kv", n_head, 1..=n_head)?;
        if n_head % n_head_kv != 0 {
            return Err(Error::hparam(format!(
                "head count {n_head} is not a multiple of kv head count {n_head_kv}"
            )));
        }
        let head_dim = m.usize_or_in("attention.key_length", 256, 2..=1024)?;
        if m.usize_or_in("attention.value_length", head_dim, 1..=1024)? != head_dim {
            return Err(Error::hparam(
                "attention.value_length differs from key_length".into(),
            ));
        }
        let n_ctx_train = m.usize_in("context_length", 1..=(1 << 24))?;
        let n_rot = m.usize_or_in("rope.dimension_count", head_dim, 2..=head_dim)?;
        let mut rope_global = Rope::new(
            n_rot as i32,
            RopeMode::Neox,
            m.f32_or("rope.freq_base", 1_000_000.0)?,
        );
        rope_global.n_ctx_orig = n_ctx_train as i32;
        match m.str_or("rope.scaling.type", "none")? {
            "none" => {}
            "linear" => {
                rope_global.freq_scale = 1.0 / m.f32_or("rope.scaling.factor", 1.0)?.max(1e-6)
            }
            other => {
                return Err(Error::hparam(format!(
                    "rope scaling {other:?} is not supported by the native engine"
                )))
            }
        }
        let mut rope_local = rope_global;
        rope_local.freq_base = m.f32_or("rope.freq_base_swa", 10_000.0)?;
        rope_local.freq_scale = 1.0;

        let n_swa = m.usize_or_in("attention.sliding_window", 0, 0..=(1 << 24))?;
        let is_local = if n_swa == 0 {
            vec![false; n_layer]
        } else {
            local_layers(m, n_layer)?
        };
        // Gemma 3 27B scales queries by (n_embd / n_head)^-½, the others by
        // head_dim^-½ (query_pre_attn_scalar in Google's configs).
        let attn_scale = if n_layer == 62 {
            1.0 / ((n_embd / n_head) as f32).sqrt()
        } else {
            1.0 / (head_dim as f32).sqrt()
        };
        let cap = m.f32_or("final_logit_softcapping", 0.0)?;
        Ok(Config {
            n_embd,
            n_layer,
            n_head,
            n_head_kv,
            head_dim,
            n_ff: m.usize_in("feed_forward_length", 1..=1 << 20)?,
            n_vocab: m.n_vocab()?,
            n_ctx_train,
            rms_eps: m.f32_or("attention.layer_norm_rms_epsilon", 1e-6)?,
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

// ---- attention ----

/// Grouped-query self-attention with per-head RMSNorm on queries and keys.
pub struct Attention {
    wq: Tensor,     // "attn_q"      [n_embd, n_head * head_dim]
    wk: Tensor,     // "attn_k"      [n_embd, n_head_kv * head_dim]
    wv: Tensor,     // "attn_v"      [n_embd, n_head_kv * head_dim]
    q_norm: Tensor, // "attn_q_norm" [head_dim]
    k_norm: Tensor, // "attn_k_norm" [head_dim]
    wo: Tensor,     // "attn_output" [n_head * head_dim, n_embd]
}

impl Attention {
    fn load(w: &Weights, p: &str, c: &Config) -> Result<Attention> {
        let (e, q, kv) = (c.n_embd, c.n_head * c.head_dim, c.n_head_kv * c.head_dim);
        Ok(Attention {
            wq: w.mat(&format!("{p}.attn_q.weight"), &[e, q])?,
            wk: w.mat(&format!("{p}.attn_k.weight"), &[e, kv])?,
            wv: w.mat(&format!("{p}.attn_v.weight"), &[e, kv])?,
            q_norm: w.get(&format!("{p}.attn_q_norm.weight"), &[c.head_dim])?,
            k_norm: w.get(&format!("{p}.attn_k_norm.weight"), &[c.head_dim])?,
            wo: w.mat(&format!("{p}.attn_output.weight"), &[q, e])?,
        })
    }

    /// `x [n_embd, n_tokens]` → `[n_embd, n_tokens]`; `local` picks the
    /// sliding-window mask and the local RoPE.
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
        let local = c.is_local[layer];
        let rope = if local { &c.rope_local } else { &c.rope_global };
        let (d, t) = (c.head_dim as i64, inp.n_tokens as i64);
        let q = ctx.reshape_3d(ctx.mul_mat(self.wq, x), d, c.n_head as i64, t); // [head_dim, n_head, n_tokens]
        let k = ctx.reshape_3d(ctx.mul_mat(self.wk, x), d, c.n_head_kv as i64, t); // [head_dim, n_head_kv, n_tokens]
        let v = ctx.reshape_3d(ctx.mul_mat(self.wv, x), d, c.n_head_kv as i64, t); // [head_dim, n_head_kv, n_tokens]
        let q = ctx.mul(ctx.rms_norm(q, c.rms_eps), self.q_norm);
        let k = ctx.mul(ctx.rms_norm(k, c.rms_eps), self.k_norm);
        let q = ctx.scale(ctx.rope(q, inp.pos, None, rope), c.attn_scale);
        let q = kv.rotate_q(ctx, q);
        let k = ctx.rope(k, inp.pos, None, rope);
        kv.put(ctx, g, layer, k, v);
        let (k, v) = kv.get(ctx, layer); // [head_dim, n_kv, n_head_kv] each
        let q = ctx.permute(q, [0, 2, 1, 3]); // [head_dim, n_tokens, n_head]
        let mask = if local { kv.mask_swa() } else { kv.mask() };
        // the queries are already scaled
        let out = ctx.scaled_dot_product_attention(q, k, v, mask, 1.0, kv.flash()); // [n_head * head_dim, n_tokens]
        ctx.mul_mat(self.wo, kv.unrotate_out(ctx, out))
    }
}

// ---- mlp ----

/// GeGLU feed-forward: `down(gelu_tanh(gate(x)) * up(x))`.
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
        let h = ctx.geglu(ctx.mul_mat(self.gate, x), ctx.mul_mat(self.up, x)); // [n_ff, n]
        ctx.mul_mat(self.down, h)
    }
}

// ---- block ----

/// One decoder block: `x + post(attn(pre(x)))`, then `x + post(mlp(pre(x)))`.
pub struct Block {
    attn_norm: Tensor,      // "attn_norm"      [n_embd]
    attn: Attention,        //
    attn_post_norm: Tensor, // "post_attention_norm" [n_embd]
    ffn_norm: Tensor,       // "ffn_norm"       [n_embd]
    mlp: Mlp,               //
    ffn_post_norm: Tensor,  // "post_ffw_norm"  [n_embd]
}

impl Block {
    fn load(w: &Weights, p: &str, c: &Config) -> Result<Block> {
        let norm = |name: &str| w.get(&format!("{p}.{name}.weight"), &[c.n_embd]);
        Ok(Block {
            attn_norm: norm("attn_norm")?,
            attn: Attention::load(w, p, c)?,
            attn_post_norm: norm("post_attention_norm")?,
            ffn_norm: norm("ffn_norm")?,
            mlp: Mlp::load(w, p, c)?,
            ffn_post_norm: norm("post_ffw_norm")?,
        })
    }
}

// ---- model ----

/// The whole model: scaled embeddings, blocks, final norm, tied output head.
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
            n_swa: c.n_swa,
        }
    }
    fn n_ctx_train(&self) -> usize {
        self.cfg.n_ctx_train
    }

    fn shift_keys(&self, ctx: &Context, k: Tensor, delta: Tensor, layer: usize) -> Option<Tensor> {
        let c = &self.cfg;
        let rope = if c.is_local[layer] {
            &c.rope_local
        } else {
            &c.rope_global
        };
        Some(ctx.rope(k, delta, None, rope))
    }

    // ---- forward ----

    fn forward(&self, ctx: &Context, g: &Graph, inp: &Inputs, kv: &KvCache) -> Tensor {
        let c = &self.cfg;
        let norm = |x: Tensor, w: Tensor| ctx.mul(ctx.rms_norm(x, c.rms_eps), w);
        let x = ctx.get_rows(self.tok_embd, inp.tokens); // [n_embd, n_tokens]
        let mut x = ctx.scale(x, (c.n_embd as f32).sqrt());
        for (i, b) in self.blocks.iter().enumerate() {
            let mut h = b.attn.forward(ctx, g, c, norm(x, b.attn_norm), inp, kv, i);
            if i + 1 == self.blocks.len() {
                // only the rows we need logits for go on
                h = ctx.get_rows(h, inp.out_ids); // [n_embd, n_out]
                x = ctx.get_rows(x, inp.out_ids);
            }
            let x1 = ctx.add(norm(h, b.attn_post_norm), x);
            let h = b.mlp.forward(ctx, norm(x1, b.ffn_norm));
            x = ctx.add(norm(h, b.ffn_post_norm), x1);
        }
        let logits = ctx.mul_mat(self.output, norm(x, self.output_norm)); // [n_vocab, n_out]
        match c.final_softcap {
            Some(cap) => ctx.scale(ctx.tanh(ctx.scale(logits, 1.0 / cap)), cap),
            None => logits,
        }
    }
}
