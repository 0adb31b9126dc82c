//! The building blocks every decoder family composes: hyperparameters read
//! once ([`Hparams`]), linear layers, RMSNorm, embeddings, rotary
//! embeddings, grouped-query attention with its options, gated MLPs and the
//! decoder block. A family file keeps its `Config` (what is specific) and a
//! forward pass that strings these together. Reference: ollama `ml/nn` and
//! `model/models/*/model.go`; candle `quantized_llama.rs`.
//!
//! Every weight handle lives in a struct of this module; family code calls
//! their methods (`self.output_norm.forward(ctx, x)`) and never touches a
//! weight tensor itself.
//!
//! The ops and their order match llama.cpp's graphs (`src/models/*.cpp`):
//! the parity tests compare logits with its engine, so a reordering that
//! changes rounding shows there.

use engine::kv_cache::{KvCache, KvShape};
use engine::session::Inputs;
use ggml::{Context, Graph, Rope, RopeMode, Tensor, Weight};

use crate::{Error, Meta, Result, Weights};

// ---- hyperparameters ----

/// How the head size relates to the model width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    /// Heads of `attention.key_length` whatever the width (Qwen3, Gemma 3,
    /// Mistral 3).
    Free,
    /// The width splits into whole heads (`n_embd % n_head == 0`, which
    /// gives the default head size), though `attention.key_length` may
    /// differ (Llama).
    Divisible,
    /// Exactly `n_head` heads of `head_dim` make the width (Qwen2, Phi-3).
    Exact,
}

/// What differs between families in reading [`Hparams`].
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    /// How head size and width relate.
    pub width: Width,
    /// Head size when `attention.key_length` is absent; `None`: `n_embd / n_head`.
    pub head_dim: Option<usize>,
    /// RoPE must rotate whole heads (`rope.dimension_count == head_dim`),
    /// as llama.cpp asserts for these families.
    pub whole_heads_rotate: bool,
    /// RMSNorm ε when `attention.layer_norm_rms_epsilon` is absent.
    pub rms_eps: f32,
}

/// Hyperparameters every decoder has, read and range-checked from the GGUF
/// metadata (`<arch>.*`).
#[derive(Clone, Debug, PartialEq)]
pub struct Hparams {
    /// Model width.
    pub n_embd: usize,
    /// Decoder blocks.
    pub n_layer: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (GQA groups; equal to `n_head` for plain MHA).
    pub n_head_kv: usize,
    /// Dimensions per head (keys and values alike).
    pub head_dim: usize,
    /// Rotated dimensions of each head (`rope.dimension_count`), even, ≤ `head_dim`.
    pub n_rot: usize,
    /// MLP hidden width.
    pub n_ff: usize,
    /// Vocabulary size.
    pub n_vocab: usize,
    /// Training context (`context_length`).
    pub n_ctx_train: usize,
    /// RMSNorm ε (also of q/k norms).
    pub rms_eps: f32,
}

impl Hparams {
    /// Reads the shared hyperparameters; `spec` says what the family allows.
    pub fn read(m: &Meta, spec: Spec) -> Result<Hparams> {
        let n_embd = m.usize_in("embedding_length", 1..=65536)?;
        let n_head = m.usize_in("attention.head_count", 1..=1024)?;
        let n_head_kv = m.usize_or_in("attention.head_count_kv", n_head, 1..=n_head)?;
        if n_head % n_head_kv != 0 {
            return Err(Error::hparam(format!(
                "{} = {n_head} is not a multiple of {} = {n_head_kv}",
                m.key("attention.head_count"),
                m.key("attention.head_count_kv")
            )));
        }
        if spec.width != Width::Free && n_embd % n_head != 0 {
            return Err(Error::hparam(format!(
                "{} = {n_embd} is not a multiple of {} = {n_head}",
                m.key("embedding_length"),
                m.key("attention.head_count")
            )));
        }
        let default = spec.head_dim.unwrap_or(n_embd / n_head);
        let head_dim = m.usize_or_in("attention.key_length", default, 2..=1024)?;
        if spec.width == Width::Exact && head_dim * n_head != n_embd {
            return Err(Error::hparam(format!(
                "{} = {n_embd} is not {n_head} heads of {head_dim}",
                m.key("embedding_length")
            )));
        }
        if m.usize_or_in("attention.value_length", head_dim, 1..=1024)? != head_dim {
            return Err(Error::hparam(format!(
                "{} differs from {}",
                m.key("attention.value_length"),
                m.key("attention.key_length")
            )));
        }
        let n_rot = m.usize_or_in("rope.dimension_count", head_dim, 2..=head_dim)?;
        // RoPE turns pairs of dimensions: ggml asserts an even count
        // (GGML_ASSERT(n_dims % 2 == 0)) and aborts the process otherwise.
        let key = m.key("rope.dimension_count");
        if n_rot % 2 != 0 {
            return Err(Error::hparam(format!(
                "{key} = {n_rot} is odd (RoPE rotates pairs of dimensions)"
            )));
        }
        if spec.whole_heads_rotate && n_rot != head_dim {
            return Err(Error::hparam(format!(
                "{key} = {n_rot} differs from the head size {head_dim}"
            )));
        }
        Ok(Hparams {
            n_embd,
            n_layer: m.usize_in("block_count", 1..=512)?,
            n_head,
            n_head_kv,
            head_dim,
            n_rot,
            n_ff: m.usize_in("feed_forward_length", 1..=1 << 20)?,
            n_vocab: m.n_vocab()?,
            n_ctx_train: m.usize_in("context_length", 1..=(1 << 24))?,
            rms_eps: m.f32_at_least("attention.layer_norm_rms_epsilon", spec.rms_eps, 0.0)?,
        })
    }

    /// RoPE over [`Hparams::n_rot`] dimensions with `rope.freq_base`
    /// (default `base`), the training context as the original one, and
    /// `rope.scaling.type` `none` or `linear` (others are refused).
    pub fn rope(&self, m: &Meta, mode: RopeMode, base: f32) -> Result<Rope> {
        let base = m.f32_above("rope.freq_base", base, 0.0)?;
        let mut rope = Rope::new(self.n_rot as i32, mode, base);
        rope.n_ctx_orig = self.n_ctx_train as i32;
        match m.str_or("rope.scaling.type", "none")? {
            "none" => {}
            "linear" => rope.freq_scale = 1.0 / m.f32_or("rope.scaling.factor", 1.0)?.max(1e-6),
            other => return Err(unsupported_scaling(other)),
        }
        Ok(rope)
    }

    /// The cache these heads need; `n_swa`: sliding window (0: none).
    pub fn kv_shape(&self, n_swa: usize) -> KvShape {
        KvShape {
            n_layer: self.n_layer,
            n_head_kv: self.n_head_kv,
            head_dim_k: self.head_dim,
            head_dim_v: self.head_dim,
            n_swa,
        }
    }
}

/// The error for a `rope.scaling.type` the engine does not implement.
pub fn unsupported_scaling(kind: &str) -> Error {
    Error::hparam(format!(
        "rope scaling {kind:?} is not supported by the native engine"
    ))
}

// ---- one forward pass ----

/// What a forward pass builds with: the context, the graph, the batch and
/// the cache; the graph's tensors borrow the context for `'c`.
pub struct Pass<'a, 'c> {
    /// Where the graph's tensors are made.
    pub ctx: &'c Context,
    /// The graph being built (cache writes are expanded into it).
    pub g: &'a Graph<'c>,
    /// The batch.
    pub inp: &'a Inputs<'c>,
    /// The cache, read and extended by every layer.
    pub kv: &'a KvCache<'c>,
    /// Decoder blocks in the model (the last one keeps only output rows).
    pub n_layer: usize,
}

// ---- layers ----

/// `y = W x (+ b)`.
pub struct Linear {
    w: Weight,         // "<name>.weight" [n_in, n_out]
    b: Option<Weight>, // "<name>.bias"   [n_out]
}

impl Linear {
    /// The matrix `<name>.weight` of shape `[n_in, n_out]`, no bias.
    pub fn load(w: &Weights, name: &str, n_in: usize, n_out: usize) -> Result<Linear> {
        Ok(Linear {
            w: w.mat(&format!("{name}.weight"), &[n_in, n_out])?,
            b: None,
        })
    }

    /// Like [`Linear::load`], with `<name>.bias [n_out]` when the file has it.
    pub fn load_biased(w: &Weights, name: &str, n_in: usize, n_out: usize) -> Result<Linear> {
        Ok(Linear {
            w: w.mat(&format!("{name}.weight"), &[n_in, n_out])?,
            b: w.opt(&format!("{name}.bias"), &[n_out])?,
        })
    }

    /// Like [`Linear::load`], but `None` when the file has no such matrix.
    pub fn opt(w: &Weights, name: &str, n_in: usize, n_out: usize) -> Result<Option<Linear>> {
        let t = w.opt_mat(&format!("{name}.weight"), &[n_in, n_out])?;
        Ok(t.map(|w| Linear { w, b: None }))
    }

    /// The output head `"output" [n_embd, n_vocab]`, with `output.bias
    /// [n_vocab]` when `biased` and present.
    ///
    /// Tied embeddings (SmolLM2, Gemma, small Qwens: no `output.weight`):
    /// a second handle on `token_embd`'s bytes, which may be repacked for
    /// `mul_mat` while the embeddings stay as they are for `get_rows`.
    pub fn output(w: &Weights, hp: &Hparams, biased: bool) -> Result<Linear> {
        let (e, nv) = (hp.n_embd, hp.n_vocab);
        let out = match w.opt_mat("output.weight", &[e, nv])? {
            Some(t) => t,
            None => w.mat("token_embd.weight", &[e, nv])?,
        };
        let b = match biased {
            true => w.opt("output.bias", &[nv])?,
            false => None,
        };
        Ok(Linear { w: out, b })
    }

    /// `x [n_in, n]` → `[n_out, n]`.
    pub fn forward<'c>(&'c self, ctx: &'c Context, x: Tensor<'c>) -> Tensor<'c> {
        let y = ctx.mul_mat(&self.w, x);
        self.b.as_ref().map_or(y, |b| ctx.add(y, b))
    }
}

/// RMSNorm: `x / rms(x) · w`.
///
/// Gemma's variant, `x / rms(x) · (1 + w)`, is this same op: its GGUF
/// converter stores `1 + w` (llama.cpp and ollama rely on that too).
pub struct RmsNorm {
    w: Weight, // "<name>.weight" [dim]
    eps: f32,
}

impl RmsNorm {
    /// The weight `<name>.weight [dim]`, with ε `eps`.
    pub fn load(w: &Weights, name: &str, dim: usize, eps: f32) -> Result<RmsNorm> {
        Ok(RmsNorm {
            w: w.get(&format!("{name}.weight"), &[dim])?,
            eps,
        })
    }

    /// `x [dim, ...]` → same shape, normalised along `dim`.
    pub fn forward<'c>(&'c self, ctx: &'c Context, x: Tensor<'c>) -> Tensor<'c> {
        ctx.mul(ctx.rms_norm(x, self.eps), &self.w)
    }
}

/// Token embeddings.
pub struct Embedding {
    w: Weight, // "token_embd" [n_embd, n_vocab]
}

impl Embedding {
    /// `token_embd.weight [n_embd, n_vocab]`.
    pub fn load(w: &Weights, hp: &Hparams) -> Result<Embedding> {
        Ok(Embedding {
            w: w.get("token_embd.weight", &[hp.n_embd, hp.n_vocab])?,
        })
    }

    /// `ids [n] i32` → `[n_embd, n]`.
    pub fn forward<'c>(&'c self, ctx: &'c Context, ids: Tensor<'c>) -> Tensor<'c> {
        ctx.get_rows(&self.w, ids)
    }
}

/// Rotary position embedding, optionally with per-frequency factors
/// (llama3's `rope_freqs`, Phi-3's LongRoPE) that divide the frequencies.
///
/// The pair layout ([`RopeMode`]) must match how the converter stored Q/K:
/// the wrong one runs and silently garbles output.
pub struct Rotary {
    rope: Rope,
    factors: Option<Weight>, // [n_rot / 2]
}

impl Rotary {
    /// RoPE without factors.
    pub fn new(rope: Rope) -> Rotary {
        Rotary {
            rope,
            factors: None,
        }
    }

    /// RoPE with the factors `<name>.weight [n_rot / 2]` when the file has them.
    pub fn with_factors(w: &Weights, name: &str, rope: Rope) -> Result<Rotary> {
        let n = rope.n_dims as usize / 2;
        Ok(Rotary {
            rope,
            factors: w.opt(&format!("{name}.weight"), &[n])?,
        })
    }

    /// `x [head_dim, n_heads, n]` rotated by `pos [n] i32`.
    pub fn forward<'c>(&'c self, ctx: &'c Context, x: Tensor<'c>, pos: Tensor<'c>) -> Tensor<'c> {
        ctx.rope(x, pos, self.factors.as_ref().map(Weight::t), &self.rope)
    }
}

// ---- attention ----

/// Options of [`Attention`]; the default is Llama's.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttnOptions {
    /// Optional biases on the q/k/v projections (Qwen2).
    pub qkv_bias: bool,
    /// Optional bias on the output projection (Mistral 3).
    pub out_bias: bool,
    /// RMSNorm on each query and key head before RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Q, K and V from one matrix `attn_qkv` when the file has it (Phi-3),
    /// else from three.
    pub fused_qkv: bool,
    /// Scale queries by this after RoPE, and not inside the kernel (Gemma 3,
    /// Phi-3, as llama.cpp does: the same rounding). `None`: the kernel
    /// scales by `head_dim^-½`.
    pub q_scale: Option<f32>,
}

/// Query, key and value projections.
enum Qkv {
    Split(Linear, Linear, Linear), // "attn_q", "attn_k", "attn_v"
    Fused(Linear),                 // "attn_qkv" [n_embd, (n_head + 2 * n_head_kv) * head_dim]
}

/// Grouped-query self-attention over the cache.
pub struct Attention {
    qkv: Qkv,
    q_norm: Option<RmsNorm>, // "attn_q_norm" [head_dim]
    k_norm: Option<RmsNorm>, // "attn_k_norm" [head_dim]
    o: Linear,               // "attn_output" [n_head * head_dim, n_embd]
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    q_scale: Option<f32>,
}

impl Attention {
    /// Loads the projections of block `p` (`blk.{i}`).
    pub fn load(w: &Weights, p: &str, hp: &Hparams, o: AttnOptions) -> Result<Attention> {
        let (e, q, kv) = (
            hp.n_embd,
            hp.n_head * hp.head_dim,
            hp.n_head_kv * hp.head_dim,
        );
        let lin = |name: &str, n_out| match o.qkv_bias {
            true => Linear::load_biased(w, &format!("{p}.{name}"), e, n_out),
            false => Linear::load(w, &format!("{p}.{name}"), e, n_out),
        };
        let fused = match o.fused_qkv {
            true => Linear::opt(w, &format!("{p}.attn_qkv"), e, q + 2 * kv)?,
            false => None,
        };
        let qkv = match fused {
            Some(l) => Qkv::Fused(l),
            None if o.fused_qkv && w.gg.tensor(&format!("{p}.attn_q.weight")).is_none() => {
                return Err(Error::tensor(format!(
                    "cannot find tensor {p}.attn_qkv.weight (nor {p}.attn_q.weight) in gguf"
                )))
            }
            None => Qkv::Split(lin("attn_q", q)?, lin("attn_k", kv)?, lin("attn_v", kv)?),
        };
        let norm = |name: &str| match o.qk_norm {
            true => RmsNorm::load(w, &format!("{p}.{name}"), hp.head_dim, hp.rms_eps).map(Some),
            false => Ok(None),
        };
        let out = match o.out_bias {
            true => Linear::load_biased(w, &format!("{p}.attn_output"), q, e)?,
            false => Linear::load(w, &format!("{p}.attn_output"), q, e)?,
        };
        Ok(Attention {
            qkv,
            q_norm: norm("attn_q_norm")?,
            k_norm: norm("attn_k_norm")?,
            o: out,
            n_head: hp.n_head,
            n_head_kv: hp.n_head_kv,
            head_dim: hp.head_dim,
            q_scale: o.q_scale,
        })
    }

    /// `x [n_embd, n_tokens]` → `[n_embd, n_tokens]`: writes this batch's
    /// keys and values into the cache at `layer` and attends over the cache
    /// under `mask` (the causal one, or the sliding-window one).
    pub fn forward<'c>(
        &'c self,
        p: &Pass<'_, 'c>,
        x: Tensor<'c>,
        layer: usize,
        rope: &'c Rotary,
        mask: Tensor<'c>,
    ) -> Tensor<'c> {
        let (ctx, inp, kv) = (p.ctx, p.inp, p.kv);
        let (d, t) = (self.head_dim as i64, inp.n_tokens as i64);
        let (nh, nkv) = (self.n_head as i64, self.n_head_kv as i64);
        let (q, k, v) = match &self.qkv {
            Qkv::Split(wq, wk, wv) => (
                ctx.reshape_3d(wq.forward(ctx, x), d, nh, t),
                ctx.reshape_3d(wk.forward(ctx, x), d, nkv, t),
                ctx.reshape_3d(wv.forward(ctx, x), d, nkv, t),
            ),
            Qkv::Fused(wqkv) => {
                // Q, K and V are views into each token's column [q | k | v];
                // the cache write needs V contiguous (RoPE copies Q and K)
                let qkv = wqkv.forward(ctx, x); // [(n_head + 2 * n_head_kv) * head_dim, n_tokens]
                let (es, row) = (qkv.nb()[0], qkv.nb()[1]);
                let view = |n: i64, at: i64| {
                    ctx.view_3d(qkv, [d, n, t], es * d as usize, row, es * (at * d) as usize)
                };
                (view(nh, 0), view(nkv, nh), ctx.cont(view(nkv, nh + nkv)))
            }
        }; // [head_dim, n_head(_kv), n_tokens] each
        let q = self.q_norm.as_ref().map_or(q, |n| n.forward(ctx, q));
        let k = self.k_norm.as_ref().map_or(k, |n| n.forward(ctx, k));
        let q = rope.forward(ctx, q, inp.pos);
        let q = self.q_scale.map_or(q, |s| ctx.scale(q, s));
        let q = kv.rotate_q(ctx, q);
        let k = rope.forward(ctx, k, inp.pos);
        kv.put(ctx, p.g, layer, k, v);
        let scale = match self.q_scale {
            Some(_) => 1.0, // the queries are already scaled
            None => 1.0 / (self.head_dim as f32).sqrt(),
        };
        let out = kv.attend(ctx, layer, q, mask, scale); // [n_head * head_dim, n_tokens]
        self.o.forward(ctx, kv.unrotate_out(ctx, out))
    }
}

// ---- mlp ----

/// The gated MLP's gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// SwiGLU, gate and up separate (`ffn_gate`, `ffn_up`).
    Silu,
    /// SwiGLU, optional biases on the three projections (Mistral 3).
    SiluBiased,
    /// SwiGLU, gate and up stacked in `ffn_up [n_embd, 2 * n_ff]`, gate
    /// rows first (Phi-3).
    SiluStacked,
    /// GeGLU with the tanh approximation of GELU (Gemma 3).
    GeluTanh,
}

/// Gated feed-forward: `down(act(gate(x)) * up(x))`.
pub struct Mlp {
    gate: Option<Linear>, // "ffn_gate" [n_embd, n_ff]; None when stacked in up
    up: Linear,           // "ffn_up"   [n_embd, n_ff] (or [n_embd, 2 * n_ff] stacked)
    down: Linear,         // "ffn_down" [n_ff, n_embd]
    kind: Gate,
}

impl Mlp {
    /// Loads the projections of block `p` (`blk.{i}`).
    pub fn load(w: &Weights, p: &str, hp: &Hparams, kind: Gate) -> Result<Mlp> {
        let (e, f) = (hp.n_embd, hp.n_ff);
        let lin = |name: &str, n_in, n_out| match kind {
            Gate::SiluBiased => Linear::load_biased(w, &format!("{p}.{name}"), n_in, n_out),
            _ => Linear::load(w, &format!("{p}.{name}"), n_in, n_out),
        };
        let (gate, up) = match kind {
            Gate::SiluStacked => (None, lin("ffn_up", e, 2 * f)?),
            _ => (Some(lin("ffn_gate", e, f)?), lin("ffn_up", e, f)?),
        };
        Ok(Mlp {
            gate,
            up,
            down: lin("ffn_down", f, e)?,
            kind,
        })
    }

    /// `x [n_embd, n]` → `[n_embd, n]`.
    pub fn forward<'c>(&'c self, ctx: &'c Context, x: Tensor<'c>) -> Tensor<'c> {
        let h = match (&self.gate, self.kind) {
            (None, _) => ctx.swiglu_stacked(self.up.forward(ctx, x)), // [2 * n_ff, n] → [n_ff, n]
            (Some(g), Gate::GeluTanh) => ctx.geglu(g.forward(ctx, x), self.up.forward(ctx, x)),
            (Some(g), _) => ctx.swiglu(g.forward(ctx, x), self.up.forward(ctx, x)),
        }; // [n_ff, n]
        self.down.forward(ctx, h)
    }
}

// ---- block ----

/// One decoder block: `x + attn(norm(x))`, then `x + mlp(norm(x))`; with
/// post-norms (Gemma's sandwich), `x + post(attn(norm(x)))` and
/// `x + post(mlp(norm(x)))`.
pub struct Block {
    attn_norm: RmsNorm,              // "attn_norm"           [n_embd]
    attn: Attention,                 //
    attn_post_norm: Option<RmsNorm>, // "post_attention_norm" [n_embd]
    ffn_norm: RmsNorm,               // "ffn_norm"            [n_embd]
    mlp: Mlp,                        //
    ffn_post_norm: Option<RmsNorm>,  // "post_ffw_norm"       [n_embd]
}

impl Block {
    /// Loads block `p` (`blk.{i}`); `post_norms`: Gemma's sandwich norms.
    pub fn load(
        w: &Weights,
        p: &str,
        hp: &Hparams,
        attn: AttnOptions,
        gate: Gate,
        post_norms: bool,
    ) -> Result<Block> {
        let norm = |name: &str| RmsNorm::load(w, &format!("{p}.{name}"), hp.n_embd, hp.rms_eps);
        let post = |name: &str| match post_norms {
            true => norm(name).map(Some),
            false => Ok(None),
        };
        Ok(Block {
            attn_norm: norm("attn_norm")?,
            attn: Attention::load(w, p, hp, attn)?,
            attn_post_norm: post("post_attention_norm")?,
            ffn_norm: norm("ffn_norm")?,
            mlp: Mlp::load(w, p, hp, gate)?,
            ffn_post_norm: post("post_ffw_norm")?,
        })
    }

    /// `x [n_embd, n_tokens]` → `[n_embd, n_tokens]`, or `[n_embd, n_out]`
    /// in the last layer: only the rows we need logits for go through its
    /// MLP (as llama.cpp does).
    pub fn forward<'c>(
        &'c self,
        p: &Pass<'_, 'c>,
        x: Tensor<'c>,
        layer: usize,
        rope: &'c Rotary,
        mask: Tensor<'c>,
    ) -> Tensor<'c> {
        let ctx = p.ctx;
        let mut h = self
            .attn
            .forward(p, self.attn_norm.forward(ctx, x), layer, rope, mask);
        let mut x = x;
        if layer + 1 == p.n_layer {
            h = ctx.get_rows(h, p.inp.out_ids); // [n_embd, n_out]
            x = ctx.get_rows(x, p.inp.out_ids);
        }
        let h = self
            .attn_post_norm
            .as_ref()
            .map_or(h, |n| n.forward(ctx, h));
        let x1 = ctx.add(h, x);
        let h = self.mlp.forward(ctx, self.ffn_norm.forward(ctx, x1));
        let h = self.ffn_post_norm.as_ref().map_or(h, |n| n.forward(ctx, h));
        ctx.add(h, x1)
    }
}
