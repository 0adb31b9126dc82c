//! Running a model over a token sequence: batches, graph memory, the cache.
//!
//! A [`Session`] owns the backend (thread pool), the KV cache and the compute
//! buffer. [`Session::decode`] feeds tokens in batches of `n_batch` and
//! returns the logits of the last one. A graph is built in a reused metadata
//! arena and placed in a compute buffer reserved once for the worst case, so
//! a step allocates no tensor memory. Every per-step value (tokens,
//! positions, cache cells, mask) is a graph input, so the graph depends only
//! on the batch length and the number of cells attended (a multiple of 256):
//! generation reuses one graph for 256 steps at a time, building and
//! allocating nothing, and only writes the inputs.

use ggml::{Allocator, Backend, Context, Device, Graph, Tensor, Type};

use crate::kv_cache::{KvCache, KvShape, KvType};
use crate::{Error, Result};

/// What a model gives the session. Implemented per architecture in `models`.
pub trait Model {
    /// Vocabulary size (rows of the logits).
    fn n_vocab(&self) -> usize;
    /// The shape of the cache this model needs.
    fn kv_shape(&self) -> KvShape;
    /// Context length the model was trained with.
    fn n_ctx_train(&self) -> usize;
    /// The GPU holding the weights, if they were loaded into one: the
    /// session then keeps its cache there and computes there. `None` (the
    /// default): the CPU.
    fn device(&self) -> Option<Device> {
        None
    }
    /// Called before each forward pass, when no graph is running: a model
    /// may move its weights then (see `models`' huge-page migration).
    fn before_pass(&self) {}
    /// Upper bound on graph nodes for one forward pass.
    fn max_nodes(&self) -> usize {
        4096 + 64 * self.kv_shape().n_layer
    }
    /// Re-rotates cached keys `k [head_dim, n_head_kv, n] f32` of `layer` by
    /// `delta [n] i32` positions (RoPE with this layer's parameters), so a
    /// context shift can move cells instead of computing them again; `None`
    /// (the default) when the model cannot, and the session re-decodes.
    fn shift_keys(
        &self,
        _ctx: &Context,
        _k: Tensor,
        _delta: Tensor,
        _layer: usize,
    ) -> Option<Tensor> {
        None
    }
    /// Builds the forward pass of one batch into `g`, returning the logits
    /// `[n_vocab, n_out]` of the tokens listed in `inp.out_ids`.
    fn forward(&self, ctx: &Context, g: &Graph, inp: &Inputs, kv: &KvCache) -> Tensor;
}

/// The per-batch inputs a model reads.
#[derive(Clone, Copy, Debug)]
pub struct Inputs {
    /// Token ids, `[n_tokens] i32`.
    pub tokens: Tensor,
    /// Positions, `[n_tokens] i32`.
    pub pos: Tensor,
    /// Which batch rows to produce logits for, `[n_out] i32`.
    pub out_ids: Tensor,
    /// Number of tokens in the batch.
    pub n_tokens: usize,
}

/// How to run a session.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Context length (cells in the cache).
    pub n_ctx: usize,
    /// Tokens per forward pass while reading a prompt.
    pub n_batch: usize,
    /// CPU threads (unused when the model lives on a GPU).
    pub n_threads: usize,
    /// Cache element type.
    pub kv_type: KvType,
    /// Use fused flash attention (required by quantized caches).
    pub flash_attn: bool,
    /// One-row kernels for every pass, prompts too: results then do not
    /// depend on how a sequence was split into batches (a chat's turns
    /// against a one-shot run of the conversation), at the cost of slower
    /// prompts. On the CPU only.
    pub batch_invariant: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            n_ctx: 4096,
            n_batch: 512,
            n_threads: crate::default_threads(),
            kv_type: KvType::F16,
            flash_attn: false,
            batch_invariant: false,
        }
    }
}

/// A model plus its cache and compute resources, for one sequence.
pub struct Session<'m> {
    model: &'m dyn Model,
    // drop order matters: the cache and allocator buffers before the backend
    kv: KvCache,
    alloc: Allocator,
    ctx: Context,
    backend: Backend,
    n_batch: usize,
    history: Vec<i32>,
    logits: Vec<f32>,
    /// Whether generation steps (one token, or a batch with logits for each
    /// row) run ggml's one-row kernels, so that a verified draft equals a
    /// one-token step bit for bit: on the CPU with an f16 cache (a quantized
    /// cache's Hadamard rotation and a GPU's kernels differ by batch size).
    exact_steps: bool,
    /// [`SessionOptions::batch_invariant`].
    batch_invariant: bool,
    /// The last graph built and allocated, for a batch of this shape.
    last: Option<Built>,
    graphs_built: usize,
}

/// A built and allocated graph and the shape of the batches it fits.
#[derive(Clone, Copy)]
struct Built {
    n_tokens: usize,
    n_kv: usize,
    n_out: usize,
    graph: Graph,
    inp: Inputs,
    logits: Tensor,
}

impl<'m> Session<'m> {
    /// A session over `model`. `opts.n_ctx` is capped at the model's training
    /// context.
    pub fn new(model: &'m dyn Model, opts: &SessionOptions) -> Result<Session<'m>> {
        let n_ctx = opts.n_ctx.min(model.n_ctx_train()).max(1);
        if opts.n_batch == 0 {
            return Err(Error::invalid("batch size must be at least 1".into()));
        }
        let backend = match model.device() {
            Some(dev) => Backend::on(dev)?,
            None => Backend::cpu(opts.n_threads)?,
        };
        let kv = KvCache::init(
            &backend,
            model.kv_shape(),
            n_ctx,
            opts.kv_type,
            opts.flash_attn || opts.kv_type != KvType::F16,
        )?;
        let ctx = Context::new(model.max_nodes());
        // our CPU kernels (ggml custom ops) where the graph runs on the CPU
        ctx.use_own_kernels(model.device().is_none());
        let alloc = Allocator::new(&backend);
        let n_batch = opts.n_batch.min(n_ctx);
        let exact_steps = opts.kv_type == KvType::F16 && model.device().is_none();
        let mut s = Session {
            exact_steps,
            batch_invariant: opts.batch_invariant,
            model,
            kv,
            alloc,
            ctx,
            backend,
            n_batch,
            history: vec![],
            logits: vec![],
            last: None,
            graphs_built: 0,
        };
        s.reserve()?;
        Ok(s)
    }

    /// Sizes the compute buffer with the largest graph: a full batch at the
    /// end of the context.
    fn reserve(&mut self) -> Result<()> {
        let n = self.n_batch;
        let pos0 = self.kv.n_ctx() - n;
        let (g, _, _) = self.build(pos0, n, n);
        self.backend.check_supports(&g)?;
        self.alloc.reserve(&g)?;
        Ok(())
    }

    fn build(&mut self, pos0: usize, n: usize, n_out: usize) -> (Graph, Inputs, Tensor) {
        self.last = None; // its tensors live in the arena reset here
        self.ctx.reset();
        let ctx = &self.ctx;
        let g = ctx.graph(self.model.max_nodes());
        let inp = Inputs {
            tokens: ctx.tensor(Type::I32, &[n as i64]).set_input(),
            pos: ctx.tensor(Type::I32, &[n as i64]).set_input(),
            out_ids: ctx.tensor(Type::I32, &[n_out as i64]).set_input(),
            n_tokens: n,
        };
        self.kv.start_forward(ctx, pos0, n);
        let logits = self.model.forward(ctx, &g, &inp, &self.kv).set_output();
        g.expand(logits);
        (g, inp, logits)
    }

    /// Context length.
    pub fn n_ctx(&self) -> usize {
        self.kv.n_ctx()
    }

    /// How many graphs [`Session::decode`] has built so far (the others ran
    /// again a graph built before).
    pub fn graphs_built(&self) -> usize {
        self.graphs_built
    }

    /// Tokens in the cache.
    pub fn history(&self) -> &[i32] {
        &self.history
    }

    /// Runs `tokens` after those already in the cache and returns the logits
    /// of the last one. Fails when they do not fit (see [`Session::shift`]).
    pub fn decode(&mut self, tokens: &[i32]) -> Result<&[f32]> {
        self.check_fits(tokens)?;
        for chunk in tokens.chunks(self.n_batch) {
            self.pass(chunk, false)?;
        }
        Ok(&self.logits)
    }

    /// Whether [`Session::decode_all`] gives each row the logits a one-token
    /// step would (bit for bit): on the CPU with an f16 cache.
    pub fn exact_rows(&self) -> bool {
        self.exact_steps
    }

    /// Runs `tokens` (at most one batch) after those in the cache and returns
    /// the logits of every one of them, `[n_vocab] × tokens.len()` row after
    /// row: row `i` predicts the token after `tokens[i]`. For verifying drafted
    /// tokens in one pass (see `generate`); [`Session::truncate`] takes back
    /// those rejected.
    pub fn decode_all(&mut self, tokens: &[i32]) -> Result<&[f32]> {
        self.check_fits(tokens)?;
        if tokens.len() > self.n_batch {
            return Err(Error::invalid(format!(
                "{} tokens with logits each exceed the batch of {}",
                tokens.len(),
                self.n_batch
            )));
        }
        self.pass(tokens, true)?;
        Ok(&self.logits)
    }

    fn check_fits(&self, tokens: &[i32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::invalid("nothing to decode".into()));
        }
        if self.history.len() + tokens.len() > self.n_ctx() {
            return Err(Error::invalid(format!(
                "{} tokens do not fit after {} in a context of {}",
                tokens.len(),
                self.history.len(),
                self.n_ctx()
            )));
        }
        Ok(())
    }

    /// One forward pass over `chunk` (at most `n_batch` tokens, fitting the
    /// context); leaves in `self.logits` the last token's logits, or every
    /// token's with `all`.
    fn pass(&mut self, chunk: &[i32], all: bool) -> Result<()> {
        let n_vocab = self.model.n_vocab();
        let pos0 = self.history.len();
        let n = chunk.len();
        let n_out = if all { n } else { 1 };
        let n_kv = self.kv.n_kv_for_batch(pos0, n);
        let b = match self.last {
            Some(b) if b.n_tokens == n && b.n_kv == n_kv && b.n_out == n_out => {
                self.kv.reuse_forward(pos0, n);
                b
            }
            _ => {
                let (graph, inp, logits) = self.build(pos0, n, n_out);
                self.alloc.alloc(&graph)?;
                self.graphs_built += 1;
                let b = Built {
                    n_tokens: n,
                    n_kv,
                    n_out,
                    graph,
                    inp,
                    logits,
                };
                self.last = Some(b);
                b
            }
        };
        let (g, inp, logits) = (b.graph, b.inp, b.logits);
        let be = &self.backend;
        be.set_i32(inp.tokens, chunk);
        let pos: Vec<i32> = (pos0..pos0 + n).map(|p| p as i32).collect();
        be.set_i32(inp.pos, &pos);
        if all {
            be.set_i32(inp.out_ids, &(0..n as i32).collect::<Vec<_>>());
        } else {
            be.set_i32(inp.out_ids, &[n as i32 - 1]);
        }
        self.kv.write_inputs(be);
        self.model.before_pass();
        // A generation step (one token, or drafts with logits each) takes
        // the one-row kernels: ggml's batched ones (tinyBLAS for f16 and
        // Q8_0 from 2 rows, tiled K-quants from 8, split-KV flash attention
        // for one row) add in other orders. Numerically, for one row this
        // only turns off the split-KV flash attention (contexts ≥ 512) and
        // the fused rms_norm·mul (same arithmetic). Prompt batches keep the
        // fast kernels.
        let reference = self.batch_invariant || (self.exact_steps && (all || n == 1));
        be.set_reference_kernels(reference);
        let r = self.backend.compute(&g);
        if reference {
            be.set_reference_kernels(false);
        }
        r?;
        self.history.extend_from_slice(chunk);
        self.logits.resize(n_vocab * n_out, 0.0);
        logits.read_f32_at(0, &mut self.logits);
        Ok(())
    }

    /// Makes room when the context is full, like Ollama: keeps the first
    /// `num_keep` tokens and drops half of the rest (the oldest). The cells
    /// of the tokens kept after the gap move down and their keys are rotated
    /// back by the gap (as llama.cpp's K-shift does), so nothing is computed
    /// again; for models or caches that cannot (a quantized cache), the cache
    /// is rebuilt from the tokens kept. Returns the logits of the last token.
    pub fn shift(&mut self, num_keep: usize) -> Result<&[f32]> {
        let n = self.history.len();
        let keep = num_keep.min(n.saturating_sub(1));
        let discard = (n - keep) / 2;
        if discard == 0 {
            return Err(Error::invalid("context shift would drop nothing".into()));
        }
        if self.shift_cells(keep, discard)? {
            self.history.drain(keep..keep + discard);
            let n_vocab = self.model.n_vocab();
            return Ok(&self.logits[self.logits.len().saturating_sub(n_vocab)..]);
        }
        let mut kept = self.history[..keep].to_vec();
        kept.extend_from_slice(&self.history[keep + discard..]);
        self.clear();
        self.decode(&kept)
    }

    /// Moves cells `keep + discard..` to `keep..`, re-rotating their keys;
    /// `false` when the model or cache cannot.
    fn shift_cells(&mut self, keep: usize, discard: usize) -> Result<bool> {
        if !self.kv.can_shift_cells() {
            return Ok(false);
        }
        let moved = self.history.len() - keep - discard;
        self.last = None;
        self.ctx.reset();
        let ctx = &self.ctx;
        let g = ctx.graph(self.model.max_nodes());
        let delta = ctx.tensor(Type::I32, &[moved as i64]).set_input();
        let model = self.model;
        let ok = self
            .kv
            .shift_cells(ctx, &g, (keep + discard, keep, moved), |k, layer| {
                model.shift_keys(ctx, k, delta, layer)
            });
        if !ok || self.backend.check_supports(&g).is_err() {
            return Ok(false);
        }
        self.alloc.alloc(&g)?;
        self.backend.set_i32(delta, &vec![-(discard as i32); moved]);
        self.backend.compute(&g)?;
        Ok(true)
    }

    /// Keeps the first `n` tokens and forgets the rest, so that the next
    /// [`Session::decode`] continues after them (a chat reusing the cache of
    /// a shared prefix). Cell `i` holds position `i`, and a batch only
    /// attends to cells up to its own positions, so shortening the history
    /// is enough: the cells past it are overwritten before they are read.
    pub fn truncate(&mut self, n: usize) {
        self.history.truncate(n);
    }

    /// Forgets the whole sequence.
    pub fn clear(&mut self) {
        self.history.clear();
        self.kv.clear();
    }
}
