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

use crate::kv_cache::{KvCache, KvShape, KvStore, KvType, Layout};
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
    /// `[n_vocab, n_out]` of the tokens listed in `inp.out_ids` (or, with
    /// `inp.hidden`, their final normalized hidden states). Everything
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
    /// Return the final (normalized) hidden states `[n_embd, n_out]`
    /// instead of the logits: for embeddings.
    pub hidden: bool,
}

/// How to run a session.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Context length (cells in the cache per sequence).
    pub n_ctx: usize,
    /// Sequences the cache holds, each with its own context of `n_ctx`
    /// ([`Session::step`] runs one token of several in one pass).
    pub n_seq: usize,
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
            n_seq: 1,
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

/// A model plus its cache and compute resources, for one sequence or a
/// few (`SessionOptions::n_seq`): the methods without a sequence number
/// work on sequence 0.
pub struct Session<'m> {
    model: &'m dyn Model,
    /// The graph of the last batch, with the cache (its state), the compute
    /// buffer and the backend; its graphs read the model's weights for `'m`.
    plan: Plan<'m, KvStore>,
    n_batch: usize,
    /// The tokens in each sequence's cells.
    seqs: Vec<Vec<i32>>,
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
#[derive(Clone, PartialEq, Eq)]
struct Shape {
    lay: Layout,
    out: Out,
}

/// What a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Out {
    /// The logits of each sequence's last token.
    Last,
    /// The logits of every token.
    All,
    /// The hidden states of every token (embeddings).
    Hidden,
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
            (n_ctx, opts.n_seq),
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
            seqs: vec![vec![]; opts.n_seq],
            logits: vec![],
            last: None,
            graphs_built: 0,
        };
        s.reserve()?;
        Ok(s)
    }

    /// Sizes the compute buffer with the largest graph: a full batch at the
    /// end of the context (or one token of every sequence there, if more).
    fn reserve(&mut self) -> Result<()> {
        let n_ctx = self.n_ctx();
        let n_seq = self.seqs.len();
        let lay = if n_seq > self.n_batch {
            Layout {
                m: 1,
                seqs: (0..n_seq).collect(),
                n_kv: n_ctx,
            }
        } else {
            Layout {
                m: self.n_batch,
                seqs: vec![0],
                n_kv: n_ctx,
            }
        };
        self.build(&Shape { lay, out: Out::All });
        self.plan.check_supports()?;
        self.plan.reserve()?;
        Ok(())
    }

    /// Builds the forward pass of a batch of `shape` (not allocated).
    fn build(&mut self, shape: &Shape) {
        self.last = None;
        let model = self.model;
        let lay = &shape.lay;
        let n = lay.m * lay.seqs.len();
        let n_out = match shape.out {
            Out::Last => lay.seqs.len(),
            Out::All | Out::Hidden => n,
        };
        let hidden = shape.out == Out::Hidden;
        self.plan.build(|ctx, g, kv, _| {
            let tokens = ctx.input(Type::I32, &[n as i64]);
            let pos = ctx.input(Type::I32, &[n as i64]);
            let out_ids = ctx.input(Type::I32, &[n_out as i64]);
            let inp = Inputs {
                tokens: tokens.t(),
                pos: pos.t(),
                out_ids: out_ids.t(),
                n_tokens: n,
                hidden,
            };
            let kv = kv.batch(ctx, lay);
            let logits = model.forward(ctx, g, &inp, &kv).set_output();
            let mut inputs = vec![Some(tokens), Some(pos), Some(out_ids)];
            inputs.extend(kv.inputs());
            Built {
                inputs,
                outputs: vec![logits],
            }
        });
    }

    /// Context length (of each sequence).
    pub fn n_ctx(&self) -> usize {
        self.plan.state().n_ctx()
    }

    /// Sequences the cache holds.
    pub fn n_seq(&self) -> usize {
        self.seqs.len()
    }

    /// Tokens per forward pass while reading a prompt
    /// ([`Session::decode_seq`] splits longer ones at these boundaries).
    pub fn n_batch(&self) -> usize {
        self.n_batch
    }

    /// How many graphs [`Session::decode`] has built so far (the others ran
    /// again a graph built before).
    pub fn graphs_built(&self) -> usize {
        self.graphs_built
    }

    /// Tokens in the cache (sequence 0).
    pub fn history(&self) -> &[i32] {
        &self.seqs[0]
    }

    /// Tokens in the cells of sequence `seq`.
    pub fn history_of(&self, seq: usize) -> &[i32] {
        &self.seqs[seq]
    }

    /// Runs `tokens` after those already in the cache and returns the logits
    /// of the last one. Fails when they do not fit (see [`Session::shift`]).
    pub fn decode(&mut self, tokens: &[i32]) -> Result<&[f32]> {
        self.decode_seq(0, tokens)
    }

    /// [`Session::decode`] for sequence `seq`.
    pub fn decode_seq(&mut self, seq: usize, tokens: &[i32]) -> Result<&[f32]> {
        self.check_seq(seq)?;
        self.check_fits(seq, tokens.len())?;
        for chunk in tokens.chunks(self.n_batch) {
            self.pass(&[(seq, chunk)], Out::Last)?;
        }
        Ok(&self.logits)
    }

    /// One token after each of several sequences, in one forward pass:
    /// `steps` lists `(sequence, token)`, each sequence at most once.
    /// Returns the logits after each, `[n_vocab] × steps.len()` in the
    /// order of `steps`. Each row equals what [`Session::decode_seq`] of
    /// that token alone gives, bit for bit, on the CPU with an f16 cache.
    pub fn step(&mut self, steps: &[(usize, i32)]) -> Result<&[f32]> {
        if steps.is_empty() {
            return Err(Error::invalid("nothing to decode".into()));
        }
        let mut order: Vec<usize> = (0..steps.len()).collect();
        order.sort_by_key(|&i| steps[i].0);
        for w in order.windows(2) {
            if steps[w[0]].0 == steps[w[1]].0 {
                return Err(Error::invalid(format!(
                    "sequence {} appears twice in one step",
                    steps[w[0]].0
                )));
            }
        }
        for &(seq, _) in steps {
            self.check_seq(seq)?;
            self.check_fits(seq, 1)?;
        }
        let toks: Vec<[i32; 1]> = order.iter().map(|&i| [steps[i].1]).collect();
        let items: Vec<(usize, &[i32])> = order
            .iter()
            .zip(&toks)
            .map(|(&i, t)| (steps[i].0, &t[..]))
            .collect();
        self.pass(&items, Out::All)?;
        // rows come in slot order; put them back in the caller's
        let n_vocab = self.model.n_vocab();
        let sorted = std::mem::take(&mut self.logits);
        self.logits = vec![0.0; sorted.len()];
        for (row, &i) in order.iter().enumerate() {
            self.logits[i * n_vocab..(i + 1) * n_vocab]
                .copy_from_slice(&sorted[row * n_vocab..(row + 1) * n_vocab]);
        }
        Ok(&self.logits)
    }

    /// The final hidden states of `tokens` decoded after those in the cells
    /// of `seq`, `[n_embd] × tokens.len()` row after row (for embeddings:
    /// what the output layer would read). The tokens stay in the cache.
    pub fn hidden_seq(&mut self, seq: usize, tokens: &[i32]) -> Result<Vec<f32>> {
        self.check_seq(seq)?;
        self.check_fits(seq, tokens.len())?;
        let mut out = vec![];
        for chunk in tokens.chunks(self.n_batch) {
            self.pass(&[(seq, chunk)], Out::Hidden)?;
            out.extend_from_slice(&self.logits);
        }
        Ok(out)
    }

    fn check_seq(&self, seq: usize) -> Result<()> {
        if seq >= self.seqs.len() {
            return Err(Error::invalid(format!(
                "sequence {seq} outside a cache of {} sequences",
                self.seqs.len()
            )));
        }
        Ok(())
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
        self.check_fits(0, tokens.len())?;
        if tokens.len() > self.n_batch {
            return Err(Error::invalid(format!(
                "{} tokens with logits each exceed the batch of {}",
                tokens.len(),
                self.n_batch
            )));
        }
        self.pass(&[(0, tokens)], Out::All)?;
        Ok(&self.logits)
    }

    fn check_fits(&self, seq: usize, n: usize) -> Result<()> {
        if n == 0 {
            return Err(Error::invalid("nothing to decode".into()));
        }
        let have = self.seqs[seq].len();
        if have + n > self.n_ctx() {
            return Err(Error::invalid(format!(
                "{n} tokens do not fit after {have} in a context of {}",
                self.n_ctx()
            )));
        }
        Ok(())
    }

    /// One forward pass over `items`: `(sequence, tokens)` in ascending
    /// sequence order, the same number of tokens each (at most `n_batch`
    /// in all, fitting each context); leaves in `self.logits` the last
    /// token's logits of each sequence, or what `out` asks for.
    fn pass(&mut self, items: &[(usize, &[i32])], out: Out) -> Result<()> {
        let all = out != Out::Last;
        let m = items[0].1.len();
        debug_assert!(items.iter().all(|(_, t)| t.len() == m));
        let pos0: Vec<usize> = items.iter().map(|&(s, _)| self.seqs[s].len()).collect();
        let end = pos0.iter().max().expect("a sequence") + m;
        let shape = Shape {
            lay: Layout {
                m,
                seqs: items.iter().map(|&(s, _)| s).collect(),
                n_kv: self.plan.state().n_kv_for_end(end),
            },
            out,
        };
        let n = m * items.len();
        if self.last.as_ref() != Some(&shape) {
            self.build(&shape);
            self.plan.alloc()?;
            self.graphs_built += 1;
            self.last = Some(shape.clone());
        }
        let plan = &self.plan;
        let be = plan.backend();
        let input = |i: usize| plan.input(i).expect("forward pass input");
        let tokens: Vec<i32> = items.iter().flat_map(|(_, t)| t.iter().copied()).collect();
        plan.set_i32(input(TOKENS), &tokens);
        let pos: Vec<i32> = pos0
            .iter()
            .flat_map(|&p| (p..p + m).map(|p| p as i32))
            .collect();
        plan.set_i32(input(POS), &pos);
        let out_ids: Vec<i32> = if all {
            (0..n as i32).collect()
        } else {
            (1..=items.len()).map(|i| (i * m) as i32 - 1).collect()
        };
        plan.set_i32(input(OUT_IDS), &out_ids);
        let kv_inputs = std::array::from_fn(|i| plan.input(KV_INPUTS + i));
        plan.state()
            .write_inputs(plan, kv_inputs, &shape.lay, &pos0);
        self.model.before_pass();
        // A generation step (one token, or drafts with logits each, or one
        // token of each of several sequences) takes the one-row kernels:
        // ggml's batched ones (tinyBLAS for f16 and Q8_0 from 2 rows, tiled
        // K-quants from 8, split-KV flash attention for one row) add in
        // other orders. Numerically, for one row this only turns off the
        // split-KV flash attention (contexts ≥ 512) and the fused
        // rms_norm·mul (same arithmetic). Prompt batches keep the fast
        // kernels.
        let reference = self.batch_invariant || (self.exact_steps && (out == Out::All || m == 1));
        be.set_reference_kernels(reference);
        let r = plan.compute();
        if reference {
            be.set_reference_kernels(false);
        }
        r?;
        for &(seq, toks) in items {
            self.seqs[seq].extend_from_slice(toks);
        }
        let rows = self.plan.output(0);
        self.logits.resize(rows.n_elements(), 0.0);
        rows.read_f32_at(0, &mut self.logits);
        Ok(())
    }

    /// Makes room when the context is full, like Ollama: keeps the first
    /// `num_keep` tokens and drops half of the rest (the oldest). The cells
    /// of the tokens kept after the gap move down and their keys are rotated
    /// back by the gap (as llama.cpp's K-shift does), so nothing is computed
    /// again; for models or caches that cannot (a quantized cache), the cache
    /// is rebuilt from the tokens kept. Returns the logits of the last token.
    pub fn shift(&mut self, num_keep: usize) -> Result<&[f32]> {
        self.shift_seq(0, num_keep)?;
        let n_vocab = self.model.n_vocab();
        Ok(&self.logits[self.logits.len().saturating_sub(n_vocab)..])
    }

    /// [`Session::shift`] of sequence `seq`. Afterwards the last pass's
    /// logits are those of the tokens kept when the cells moved, or those
    /// of the sequence decoded again.
    pub fn shift_seq(&mut self, seq: usize, num_keep: usize) -> Result<()> {
        self.check_seq(seq)?;
        let n = self.seqs[seq].len();
        let keep = num_keep.min(n.saturating_sub(1));
        let discard = (n - keep) / 2;
        if discard == 0 {
            return Err(Error::invalid("context shift would drop nothing".into()));
        }
        if self.shift_cells(seq, keep, discard)? {
            self.seqs[seq].drain(keep..keep + discard);
            return Ok(());
        }
        let h = &self.seqs[seq];
        let mut kept = h[..keep].to_vec();
        kept.extend_from_slice(&h[keep + discard..]);
        self.seqs[seq].clear();
        self.decode_seq(seq, &kept).map(|_| ())
    }

    /// Moves cells `keep + discard..` of `seq` to `keep..`, re-rotating
    /// their keys; `false` when the model or cache cannot.
    fn shift_cells(&mut self, seq: usize, keep: usize, discard: usize) -> Result<bool> {
        if !self.plan.state().can_shift_cells() {
            return Ok(false);
        }
        let moved = self.seqs[seq].len() - keep - discard;
        let at = self.plan.state().slot_start(seq);
        self.last = None;
        let model = self.model;
        let mut ok = false;
        self.plan.build(|ctx, g, kv, _| {
            let delta = ctx.input(Type::I32, &[moved as i64]);
            let cells = (at + keep + discard, at + keep, moved);
            ok = kv.shift_cells(ctx, g, cells, |k, layer| {
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
        self.seqs[0].truncate(n);
    }

    /// [`Session::truncate`] of sequence `seq` (no-op outside the cache).
    pub fn truncate_seq(&mut self, seq: usize, n: usize) {
        if let Some(h) = self.seqs.get_mut(seq) {
            h.truncate(n);
        }
    }

    /// Forgets the whole sequence.
    pub fn clear(&mut self) {
        self.seqs[0].clear();
    }
}
