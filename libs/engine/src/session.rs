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

use ggml::{Backend, Built, Context, Device, Graph, Plan, Tensor, Type};

use crate::kv_cache::{KvCache, KvShape, KvStore, KvType};
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
    fn shift_keys<'c>(
        &'c self,
        _ctx: &'c Context,
        _k: Tensor<'c>,
        _delta: Tensor<'c>,
        _layer: usize,
    ) -> Option<Tensor<'c>> {
        None
    }
    /// Builds the forward pass of one batch into `g`, returning the logits
    /// `[n_vocab, n_out]` of the tokens listed in `inp.out_ids`. Everything
    /// it builds borrows `ctx` (and the model's weights) for `'c`.
    fn forward<'c>(
        &'c self,
        ctx: &'c Context,
        g: &Graph<'c>,
        inp: &Inputs<'c>,
        kv: &KvCache<'c>,
    ) -> Tensor<'c>;
}

/// The per-batch inputs a model reads.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'c> {
    /// Token ids, `[n_tokens] i32`.
    pub tokens: Tensor<'c>,
    /// Positions, `[n_tokens] i32`.
    pub pos: Tensor<'c>,
    /// Which batch rows to produce logits for, `[n_out] i32`.
    pub out_ids: Tensor<'c>,
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

/// Graph inputs of a forward pass: the batch's tokens, positions and rows
/// to produce logits for, then the cache's ([`KvCache::inputs`]).
const TOKENS: usize = 0;
const POS: usize = 1;
const OUT_IDS: usize = 2;
const KV_INPUTS: usize = 3;

/// A model plus its cache and compute resources, for one sequence.
pub struct Session<'m> {
    model: &'m dyn Model,
    /// The graph of the last batch, with the cache (its state), the compute
    /// buffer and the backend; its graphs read the model's weights for `'m`.
    plan: Plan<'m, KvStore>,
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
    /// The shape of the batches the plan's graph fits, when it is a
    /// forward pass, built and allocated.
    last: Option<Shape>,
    graphs_built: usize,
}

/// The shape of a forward pass's graph.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Shape {
    n_tokens: usize,
    n_kv: usize,
    n_out: usize,
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
        let kv = KvStore::init(
            &backend,
            model.kv_shape(),
            n_ctx,
            opts.kv_type,
            opts.flash_attn || opts.kv_type != KvType::F16,
        )?;
        let plan = Plan::new(backend, model.max_nodes(), kv);
        // our CPU kernels (ggml custom ops) where the graph runs on the CPU
        plan.use_own_kernels(model.device().is_none());
        let n_batch = opts.n_batch.min(n_ctx);
        let exact_steps = opts.kv_type == KvType::F16 && model.device().is_none();
        let mut s = Session {
            exact_steps,
            batch_invariant: opts.batch_invariant,
            model,
            plan,
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
        let pos0 = self.n_ctx() - n;
        self.build(pos0, n, n);
        self.plan.check_supports()?;
        self.plan.reserve()?;
        Ok(())
    }

    /// Builds the forward pass of a batch of `n` tokens at `pos0` with
    /// logits for `n_out` of them (not allocated).
    fn build(&mut self, pos0: usize, n: usize, n_out: usize) {
        self.last = None;
        let model = self.model;
        self.plan.build(|ctx, g, kv, _| {
            let tokens = ctx.input(Type::I32, &[n as i64]);
            let pos = ctx.input(Type::I32, &[n as i64]);
            let out_ids = ctx.input(Type::I32, &[n_out as i64]);
            let inp = Inputs {
                tokens: tokens.t(),
                pos: pos.t(),
                out_ids: out_ids.t(),
                n_tokens: n,
            };
            let kv = kv.batch(ctx, pos0, n);
            let logits = model.forward(ctx, g, &inp, &kv).set_output();
            let mut inputs = vec![Some(tokens), Some(pos), Some(out_ids)];
            inputs.extend(kv.inputs());
            Built {
                inputs,
                outputs: vec![logits],
            }
        });
    }

    /// Context length.
    pub fn n_ctx(&self) -> usize {
        self.plan.state().n_ctx()
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
        let shape = Shape {
            n_tokens: n,
            n_kv: self.plan.state().n_kv_for_batch(pos0, n),
            n_out,
        };
        if self.last != Some(shape) {
            self.build(pos0, n, n_out);
            self.plan.alloc()?;
            self.graphs_built += 1;
            self.last = Some(shape);
        }
        let plan = &self.plan;
        let be = plan.backend();
        let input = |i: usize| plan.input(i).expect("forward pass input");
        plan.set_i32(input(TOKENS), chunk);
        let pos: Vec<i32> = (pos0..pos0 + n).map(|p| p as i32).collect();
        plan.set_i32(input(POS), &pos);
        if all {
            plan.set_i32(input(OUT_IDS), &(0..n as i32).collect::<Vec<_>>());
        } else {
            plan.set_i32(input(OUT_IDS), &[n as i32 - 1]);
        }
        let kv_inputs = std::array::from_fn(|i| plan.input(KV_INPUTS + i));
        plan.state().write_inputs(plan, kv_inputs, pos0, n);
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
        let r = plan.compute();
        if reference {
            be.set_reference_kernels(false);
        }
        r?;
        self.history.extend_from_slice(chunk);
        self.logits.resize(n_vocab * n_out, 0.0);
        self.plan.output(0).read_f32_at(0, &mut self.logits);
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
        if !self.plan.state().can_shift_cells() {
            return Ok(false);
        }
        let moved = self.history.len() - keep - discard;
        self.last = None;
        let model = self.model;
        let mut ok = false;
        self.plan.build(|ctx, g, kv, _| {
            let delta = ctx.input(Type::I32, &[moved as i64]);
            ok = kv.shift_cells(ctx, g, (keep + discard, keep, moved), |k, layer| {
                model.shift_keys(ctx, k, delta.t(), layer)
            });
            Built {
                inputs: vec![Some(delta)],
                outputs: vec![],
            }
        });
        if !ok || self.plan.check_supports().is_err() {
            return Ok(false);
        }
        self.plan.alloc()?;
        let delta = self.plan.input(0).expect("shift input");
        self.plan.set_i32(delta, &vec![-(discard as i32); moved]);
        self.plan.compute()?;
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
    }
}
