//! The key/value cache of one or more sequences.
//!
//! The cells are divided into `n_seq` slots of `stride` cells, one per
//! sequence: cell `s * stride + i` holds the keys and values of sequence
//! `s`'s token at position `i` (positions are contiguous from 0; a context
//! shift moves cells, see [`crate::session::Session::shift`]). A batch holds
//! `m` tokens of each of several sequences ([`Layout`]); each attends only
//! to its own slot, through 4-d views whose last dimension walks the slots,
//! so one pass computes every sequence's next token (continuous batching).
//! The stride is a multiple of [`N_KV_PAD`], so a sequence's cells fall on
//! the same SIMD lanes in every slot and its results do not depend on which
//! slot it is in or what else is in the batch.
//!
//! Two halves:
//! * **runner side**, used by the session: [`KvStore::init`] allocates the
//!   cells (a [`Persistent`] set, which a [`ggml::Plan`] keeps as its
//!   state), [`KvStore::batch`] declares the positions of the next batch and
//!   creates its inputs in the graph's context, [`KvStore::write_inputs`]
//!   fills them after graph allocation.
//! * **model side**, the [`KvCache`] of one graph, borrowed from its context
//!   and the store: [`KvCache::put`] writes this batch's K/V for a layer,
//!   [`KvCache::get`] views the cells the batch attends to,
//!   [`KvCache::mask`] is the causal mask.
//!
//! Layouts: K is `[head_dim * n_head_kv, n_ctx]` (one row per cell). V is the
//! same with flash attention; without it V is stored transposed,
//! `[n_ctx, head_dim * n_head_kv]`, so `softmax(KQ) · V` reads rows over cells
//! without a copy (as llama.cpp does).
//!
//! Quantized caches store K and V rotated by a Walsh-Hadamard matrix (as
//! llama.cpp does since its PR 21038): outliers spread over the head, so 8-
//! and 4-bit blocks lose less. Q gets the same rotation (QKᵀ is unchanged)
//! and the attention output the inverse (the matrix is its own inverse);
//! models call [`KvCache::rotate_q`] and [`KvCache::unrotate_out`], which are
//! identities for f16.

use ggml::{Backend, Context, Graph, Persistent, Plan, Tensor, TensorMut, Type};

use crate::{Error, Result};

/// The element type of the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvType {
    /// 16-bit floats (default).
    #[default]
    F16,
    /// 8-bit blocks (needs flash attention).
    Q8_0,
    /// 4-bit blocks (needs flash attention).
    Q4_0,
}

impl KvType {
    /// The ggml type.
    pub fn ggml(self) -> Type {
        match self {
            KvType::F16 => Type::F16,
            KvType::Q8_0 => Type::Q8_0,
            KvType::Q4_0 => Type::Q4_0,
        }
    }
}

impl std::str::FromStr for KvType {
    type Err = Error;
    fn from_str(s: &str) -> Result<KvType> {
        match s {
            "f16" => Ok(KvType::F16),
            "q8_0" => Ok(KvType::Q8_0),
            "q4_0" => Ok(KvType::Q4_0),
            _ => Err(Error::invalid(format!(
                "unknown kv cache type {s:?} (expected f16, q8_0 or q4_0)"
            ))),
        }
    }
}

/// The cache's shape, from the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvShape {
    /// Layers.
    pub n_layer: usize,
    /// Key/value heads (GQA groups).
    pub n_head_kv: usize,
    /// Dimensions of one key head.
    pub head_dim_k: usize,
    /// Dimensions of one value head.
    pub head_dim_v: usize,
    /// Sliding-window size of the model's local-attention layers (0: none);
    /// a token at position `p` sees cells `p - n_swa + 1 ..= p` there.
    pub n_swa: usize,
}

/// llama.cpp pads the number of attended cells to a multiple of this, so
/// graphs keep their shape across steps; we do the same, which also keeps
/// our reductions the same length as the reference's.
pub const N_KV_PAD: usize = 256;

/// Per-layer K and V storage for `n_seq` sequences of `n_ctx` cells.
pub struct KvStore {
    shape: KvShape,
    n_ctx: usize,
    n_seq: usize,
    /// Cells per slot: `n_ctx`, rounded up to [`N_KV_PAD`] when there are
    /// several.
    stride: usize,
    /// All cells, `stride * n_seq`.
    n_cells: usize,
    ty: Type,
    flash: bool,
    /// K of layer `l` at `2 l`: `[head_dim_k * n_head_kv, n_cells]`; V at
    /// `2 l + 1`: flash `[head_dim_v * n_head_kv, n_cells]`, else
    /// `[n_cells, head_dim_v * n_head_kv]`.
    cells: Persistent,
    n_rot_k: usize, // Hadamard size for Q/K (0: no rotation)
    n_rot_v: usize, // Hadamard size for V (0: no rotation)
}

/// Number of graph inputs a [`KvCache`] creates ([`KvCache::inputs`]).
pub const N_INPUTS: usize = 6;

impl KvStore {
    /// Allocates a zeroed cache of `n_seq` slots of `n_ctx` cells on `backend`.
    pub fn init(
        backend: &Backend,
        shape: KvShape,
        (n_ctx, n_seq): (usize, usize),
        ty: KvType,
        flash: bool,
    ) -> Result<KvStore> {
        if n_seq == 0 || n_ctx == 0 {
            return Err(Error::invalid(format!(
                "a cache of {n_seq} sequences of {n_ctx} cells holds nothing"
            )));
        }
        let stride = if n_seq > 1 {
            n_ctx.div_ceil(N_KV_PAD) * N_KV_PAD
        } else {
            n_ctx
        };
        let n_cells = stride
            .checked_mul(n_seq)
            .ok_or_else(|| Error::invalid(format!("{n_seq} sequences of {n_ctx} cells")))?;
        if ty != KvType::F16 && !flash {
            return Err(Error::invalid(format!(
                "kv cache type {ty:?} needs flash attention"
            )));
        }
        let ty = ty.ggml();
        let (ek, ev) = (
            shape.head_dim_k * shape.n_head_kv,
            shape.head_dim_v * shape.n_head_kv,
        );
        if shape.head_dim_k % ty.block_size() != 0 || shape.head_dim_v % ty.block_size() != 0 {
            return Err(Error::invalid(format!(
                "head size {} is not a multiple of {ty:?} blocks",
                shape.head_dim_k
            )));
        }
        let n = n_cells as i64;
        let mut specs = vec![];
        for _ in 0..shape.n_layer {
            specs.push((ty, vec![ek as i64, n]));
            specs.push((
                ty,
                if flash {
                    vec![ev as i64, n]
                } else {
                    vec![n, ev as i64]
                },
            ));
        }
        Ok(KvStore {
            shape,
            n_ctx,
            n_seq,
            stride,
            n_cells,
            ty,
            flash,
            cells: Persistent::new(backend, &specs)?,
            n_rot_k: rot_size(ty, shape.head_dim_k, true),
            n_rot_v: rot_size(ty, shape.head_dim_v, false),
        })
    }

    /// Cells of one sequence.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Sequences (slots).
    pub fn n_seq(&self) -> usize {
        self.n_seq
    }

    /// The first cell of slot `seq`.
    pub fn slot_start(&self, seq: usize) -> usize {
        assert!(seq < self.n_seq, "sequence {seq} of {}", self.n_seq);
        seq * self.stride
    }

    /// Whether attention uses the fused flash path.
    pub fn flash(&self) -> bool {
        self.flash
    }

    fn k(&self, layer: usize) -> TensorMut<'_> {
        self.cells.get(2 * layer)
    }

    fn v(&self, layer: usize) -> TensorMut<'_> {
        self.cells.get(2 * layer + 1)
    }

    /// Cells each sequence of a batch attends to, when the longest ends
    /// before position `end` (the graph's shape depends on it, on the
    /// batch's sequences and on tokens per sequence only).
    pub fn n_kv_for_end(&self, end: usize) -> usize {
        n_kv_for(end, self.n_ctx)
    }

    /// The cache as the graph of a batch of layout `lay` sees it, with its
    /// inputs created in `ctx` (handed to the plan by [`KvCache::inputs`],
    /// written by [`KvStore::write_inputs`]). The graph can run again for
    /// any batch of the same sequences, tokens per sequence and `n_kv`.
    pub fn batch<'c>(&'c self, ctx: &'c Context, lay: &Layout) -> KvCache<'c> {
        lay.check(self);
        let (m, n_seq, n_kv) = (lay.m as i64, lay.seqs.len() as i64, lay.n_kv as i64);
        let n_tokens = m * n_seq;
        let ev = (self.shape.head_dim_v * self.shape.n_head_kv) as i64;
        let mask = || ctx.input(Type::F16, &[n_kv, m, 1, n_seq]);
        let rot = |n: usize| (n > 0).then(|| ctx.input(Type::F32, &[n as i64, n as i64]));
        KvCache {
            store: self,
            lay: lay.clone(),
            k_idx: ctx.input(Type::I64, &[n_tokens]),
            v_idx: (!self.flash).then(|| ctx.input(Type::I64, &[n_tokens * ev])),
            mask: mask(),
            mask_swa: (self.shape.n_swa > 0).then(mask),
            k_rot: rot(self.n_rot_k),
            v_rot: rot(self.n_rot_v),
        }
    }

    /// Fills the inputs of a graph built over [`KvStore::batch`] (after
    /// allocation; `inputs` as [`KvCache::inputs`] listed them) for a batch
    /// whose sequence `lay.seqs[i]` has its tokens at `pos0[i]..pos0[i] + m`,
    /// queued on `plan` (the one computing the graph). Panics when the
    /// batch does not have the graph's shape.
    pub fn write_inputs<S>(
        &self,
        plan: &Plan<'_, S>,
        inputs: [Option<TensorMut>; N_INPUTS],
        lay: &Layout,
        pos0: &[usize],
    ) {
        let [k_idx, v_idx, mask, mask_swa, k_rot, v_rot] = inputs;
        let (k_idx, mask) = (k_idx.expect("k_idx input"), mask.expect("mask input"));
        let (m, n_kv) = (lay.m, lay.n_kv);
        assert!(
            pos0.len() == lay.seqs.len()
                && k_idx.ne()[0] as usize == m * lay.seqs.len()
                && mask.ne()[0] as usize == n_kv
                && pos0.iter().all(|&p| self.n_kv_for_end(p + m) <= n_kv),
            "batch at {pos0:?} does not have the shape of the graph"
        );
        let mut cells = Vec::with_capacity(m * pos0.len());
        let (mut causal, mut swa) = (vec![], vec![]);
        for (&seq, &p) in lay.seqs.iter().zip(pos0) {
            let first = self.slot_start(seq) + p;
            cells.extend((first..first + m).map(|c| c as i64));
            causal.extend(causal_mask(p, m, n_kv));
            if mask_swa.is_some() {
                swa.extend(sliding_window_mask(p, m, n_kv, self.shape.n_swa));
            }
        }
        plan.set_i64(k_idx, &cells);
        if let Some(v_idx) = v_idx {
            let ev = self.shape.head_dim_v * self.shape.n_head_kv;
            plan.set_i64(v_idx, &transposed_v_rows(&cells, ev, self.n_cells));
        }
        plan.set_f32_as_f16(mask, &causal);
        if let Some(mask_swa) = mask_swa {
            plan.set_f32_as_f16(mask_swa, &swa);
        }
        for (t, n) in [(k_rot, self.n_rot_k), (v_rot, self.n_rot_v)] {
            if let Some(t) = t {
                plan.set_f32(t, &ggml::hadamard(n));
            }
        }
    }

    /// Whether [`KvStore::shift_cells`] can move cells (an f16 cache; a
    /// quantized one stores keys Hadamard-rotated, which RoPE does not
    /// commute with).
    pub fn can_shift_cells(&self) -> bool {
        self.ty == Type::F16
    }

    /// Moves the `n` cells from `from` to `to` (`to < from`) in every layer,
    /// keys passed through `rerotate(k [head_dim, n_head_kv, n] f32, layer)`
    /// (RoPE by the position change); the copies are added to `g`. A source
    /// is copied out before its destination is written, so the ranges may
    /// overlap. Returns `false` (nothing added) when `rerotate` declines.
    pub fn shift_cells<'c>(
        &'c self,
        ctx: &'c Context,
        g: &Graph<'c>,
        (from, to, n): (usize, usize, usize),
        mut rerotate: impl FnMut(Tensor<'c>, usize) -> Option<Tensor<'c>>,
    ) -> bool {
        assert!(self.can_shift_cells() && to < from && from + n <= self.n_cells);
        let s = self.shape;
        let (hk, hv, nh) = (s.head_dim_k, s.head_dim_v, s.n_head_kv);
        let es = self.ty.type_size();
        let mut copies = vec![];
        for layer in 0..s.n_layer {
            let k = self.k(layer);
            let kb = k.t().nb()[1];
            let rows = |cell: usize| {
                ctx.view_3d_mut(
                    k,
                    [hk as i64, nh as i64, n as i64],
                    self.ty.row_size(hk),
                    kb,
                    cell * kb,
                )
            };
            let Some(kr) = rerotate(ctx.cast(rows(from), Type::F32), layer) else {
                return false;
            };
            copies.push(ctx.cpy(kr, rows(to)));
            let v = self.v(layer);
            let vb = v.t().nb()[1];
            let (src, dst) = if self.flash {
                let rows =
                    |cell: usize| ctx.view_2d_mut(v, [(hv * nh) as i64, n as i64], vb, cell * vb);
                (rows(from), rows(to))
            } else {
                // transposed: cells are columns of [n_ctx, hv * nh]
                let cols =
                    |cell: usize| ctx.view_2d_mut(v, [n as i64, (hv * nh) as i64], vb, cell * es);
                (cols(from), cols(to))
            };
            copies.push(ctx.cpy(ctx.cont(src), dst));
        }
        for c in copies {
            g.expand(c);
        }
        true
    }
}

/// The cache as the graph of one batch sees it (see [`KvStore::batch`]):
/// the store's cells and this batch's inputs, borrowed from the graph's
/// context.
pub struct KvCache<'c> {
    store: &'c KvStore,
    lay: Layout,
    k_idx: TensorMut<'c>,            // [n_tokens] i64: cell of each token
    v_idx: Option<TensorMut<'c>>,    // [n_tokens * n_embd_v] i64 (transposed V only)
    mask: TensorMut<'c>,             // [n_kv, n_tokens] f16
    mask_swa: Option<TensorMut<'c>>, // [n_kv, n_tokens] f16 (sliding-window layers)
    k_rot: Option<TensorMut<'c>>,    // [n_rot_k, n_rot_k] f32
    v_rot: Option<TensorMut<'c>>,    // [n_rot_v, n_rot_v] f32
}

impl<'c> KvCache<'c> {
    /// The inputs to write before each computation, in the order
    /// [`KvStore::write_inputs`] takes them.
    pub fn inputs(&self) -> [Option<TensorMut<'c>>; N_INPUTS] {
        [
            Some(self.k_idx),
            self.v_idx,
            Some(self.mask),
            self.mask_swa,
            self.k_rot,
            self.v_rot,
        ]
    }

    /// Whether attention uses the fused flash path.
    pub fn flash(&self) -> bool {
        self.store.flash
    }

    /// Cells of one sequence.
    pub fn n_ctx(&self) -> usize {
        self.store.n_ctx
    }

    /// Writes this batch's keys `k [head_dim_k, n_head_kv, n_tokens]` and
    /// values `v [head_dim_v, n_head_kv, n_tokens]` of `layer` into the cache;
    /// the writes are added to `g` so later reads see them.
    pub fn put(&self, ctx: &'c Context, g: &Graph<'c>, layer: usize, k: Tensor<'c>, v: Tensor<'c>) {
        let s = self.store.shape;
        let (ek, ev) = (s.head_dim_k * s.n_head_kv, s.head_dim_v * s.n_head_kv);
        let t = (self.lay.m * self.lay.seqs.len()) as i64;
        assert!(
            k.ne()[..3] == [s.head_dim_k as i64, s.n_head_kv as i64, t],
            "kv put k {:?}",
            k.ne()
        );
        let k = self.k_rot.map_or(k, |h| ctx.hadamard_rotate(k, h));
        let v = self.v_rot.map_or(v, |h| ctx.hadamard_rotate(v, h));
        let k2 = ctx.reshape_2d(k, ek as i64, t);
        g.expand(ctx.set_rows(self.store.k(layer), k2, self.k_idx));
        if let Some(v_idx) = self.v_idx {
            // every element is its own row of the flattened transposed cache
            let n = (ev * self.store.n_cells) as i64;
            let dst = ctx.reshape_2d_mut(self.store.v(layer), 1, n);
            g.expand(ctx.set_rows(dst, ctx.reshape_2d(v, 1, ev as i64 * t), v_idx));
        } else {
            let v2 = ctx.reshape_2d(v, ev as i64, t);
            g.expand(ctx.set_rows(self.store.v(layer), v2, self.k_idx));
        }
    }

    /// Attention of this batch's queries `q [head_dim, n_head, n_tokens]`
    /// (rotated by [`KvCache::rotate_q`]) over the cells of `layer` under
    /// `mask` ([`KvCache::mask`] or [`KvCache::mask_swa`]): each sequence
    /// attends to its own slot. Returns `[head_dim_v * n_head, n_tokens]`.
    ///
    /// Sequences in consecutive slots share one 4-d attention (its last
    /// dimension walks the slots); a gap in the slots starts another, and
    /// their outputs are joined.
    pub fn attend(
        &self,
        ctx: &'c Context,
        layer: usize,
        q: Tensor<'c>,
        mask: Tensor<'c>,
        scale: f32,
    ) -> Tensor<'c> {
        let st = self.store;
        let s = st.shape;
        let (hk, hv, nkv) = (s.head_dim_k as i64, s.head_dim_v as i64, s.n_head_kv as i64);
        let (m, n_kv) = (self.lay.m as i64, self.lay.n_kv as i64);
        let nh = q.ne()[1];
        let k = st.k(layer).t();
        let v = st.v(layer).t();
        let (kb, vb, es) = (k.nb()[1], v.nb()[1], st.ty.type_size());
        let mut out: Option<Tensor<'c>> = None;
        for (first, slot, n) in self.lay.runs() {
            let n = n as i64;
            // q: tokens of these sequences → [head_dim, m, n_head, n]
            let (qb1, qb2) = (q.nb()[1], q.nb()[2]);
            let qr = ctx.view_4d(
                q,
                [q.ne()[0], nh, m, n],
                [qb1, qb2, qb2 * m as usize],
                first * m as usize * qb2,
            );
            let qr = ctx.permute(qr, [0, 2, 1, 3]);
            // k: [head_dim, n_kv, n_head_kv, n], slot after slot
            let at = st.slot_start(slot);
            let kr = ctx.view_4d(
                k,
                [hk, nkv, n_kv, n],
                [st.ty.row_size(hk as usize), kb, st.stride * kb],
                at * kb,
            );
            let kr = ctx.permute(kr, [0, 2, 1, 3]);
            let vr = if st.flash {
                let vr = ctx.view_4d(
                    v,
                    [hv, nkv, n_kv, n],
                    [st.ty.row_size(hv as usize), vb, st.stride * vb],
                    at * vb,
                );
                ctx.permute(vr, [0, 2, 1, 3])
            } else {
                // transposed: [n_cells, hv * nkv]; a cell is a column
                let vt = ctx.view_4d(
                    v,
                    [n_kv, hv, nkv, n],
                    [vb, vb * hv as usize, st.stride * es],
                    at * es,
                );
                ctx.permute(vt, [1, 0, 2, 3]) // [n_kv, hv, h, n] → [hv, n_kv, h, n]
            };
            let mb = mask.nb();
            let mr = ctx.view_4d(mask, [n_kv, m, 1, n], [mb[1], mb[2], mb[3]], first * mb[3]);
            let o = ctx.scaled_dot_product_attention(qr, kr, vr, mr, scale, st.flash); // [hv * n_head, m * n]
            out = Some(match out {
                None => o,
                Some(prev) => ctx.concat(prev, o, 1),
            });
        }
        out.expect("a batch has a sequence")
    }

    /// Rotates queries `[head_dim, n_head, n_tokens]` like the cached keys.
    pub fn rotate_q(&self, ctx: &'c Context, q: Tensor<'c>) -> Tensor<'c> {
        self.k_rot.map_or(q, |h| ctx.hadamard_rotate(q, h))
    }

    /// Undoes the value rotation on the attention output `[head_dim * n_head, n_tokens]`.
    pub fn unrotate_out(&self, ctx: &'c Context, out: Tensor<'c>) -> Tensor<'c> {
        self.v_rot.map_or(out, |h| ctx.hadamard_rotate(out, h))
    }

    /// The causal mask of this batch, `[n_kv, m, 1, n_seq]` f16: 0 where a
    /// token may attend, -inf elsewhere.
    pub fn mask(&self) -> Tensor<'c> {
        self.mask.t()
    }

    /// The mask of sliding-window layers, `[n_kv, m, 1, n_seq]` f16: causal and
    /// at most `n_swa` cells back (see [`KvShape::n_swa`]). Panics when the
    /// shape has no window.
    pub fn mask_swa(&self) -> Tensor<'c> {
        self.mask_swa.expect("a shape with n_swa > 0").t()
    }
}

/// Which sequences a batch holds and how: `m` tokens of each of `seqs`
/// (in that order in the batch, ascending slots), attending to `n_kv`
/// cells of their slots. A graph fits every batch of the same layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Tokens per sequence.
    pub m: usize,
    /// Slots, ascending.
    pub seqs: Vec<usize>,
    /// Cells each attends to ([`KvStore::n_kv_for_end`] of the longest).
    pub n_kv: usize,
}

impl Layout {
    /// Runs of consecutive slots: `(index in seqs, first slot, count)`.
    fn runs(&self) -> Vec<(usize, usize, usize)> {
        let mut runs: Vec<(usize, usize, usize)> = vec![];
        for (i, &s) in self.seqs.iter().enumerate() {
            match runs.last_mut() {
                Some((_, first, n)) if *first + *n == s => *n += 1,
                _ => runs.push((i, s, 1)),
            }
        }
        runs
    }

    fn check(&self, st: &KvStore) {
        assert!(
            self.m > 0
                && !self.seqs.is_empty()
                && self.seqs.windows(2).all(|w| w[0] < w[1])
                && self.seqs.iter().all(|&s| s < st.n_seq)
                && self.n_kv <= st.n_ctx,
            "batch layout {self:?} outside a cache of {} x {}",
            st.n_seq,
            st.n_ctx
        );
    }
}

/// Hadamard size for a quantized cache's heads of `head_dim` (0: none):
/// 64, doubled for keys while it divides the head (llama.cpp's choice).
fn rot_size(ty: Type, head_dim: usize, grow: bool) -> usize {
    let mut n = if ty != Type::F16 && head_dim % 64 == 0 {
        64
    } else {
        0
    };
    while grow && n > 0 && head_dim % (2 * n) == 0 {
        n *= 2;
    }
    n
}

/// Cells a batch ending before position `end` attends to: `end` rounded up
/// to [`N_KV_PAD`], at most `n_ctx`.
pub fn n_kv_for(end: usize, n_ctx: usize) -> usize {
    end.div_ceil(N_KV_PAD)
        .max(1)
        .saturating_mul(N_KV_PAD)
        .min(n_ctx)
}

/// Causal mask, row-major `[n_tokens][n_kv]`: token `t` (at position
/// `pos0 + t`) sees cells `0..=pos0 + t`.
pub fn causal_mask(pos0: usize, n_tokens: usize, n_kv: usize) -> Vec<f32> {
    let mut m = vec![f32::NEG_INFINITY; n_tokens * n_kv];
    for t in 0..n_tokens {
        let visible = (pos0 + t + 1).min(n_kv);
        m[t * n_kv..t * n_kv + visible].fill(0.0);
    }
    m
}

/// Sliding-window causal mask, row-major `[n_tokens][n_kv]`: token `t` (at
/// position `p = pos0 + t`) sees cells `c` with `c ≤ p` and `p - c < n_swa`
/// (llama.cpp's `LLAMA_SWA_TYPE_STANDARD`).
pub fn sliding_window_mask(pos0: usize, n_tokens: usize, n_kv: usize, n_swa: usize) -> Vec<f32> {
    let mut m = causal_mask(pos0, n_tokens, n_kv);
    for t in 0..n_tokens {
        let first = (pos0 + t + 1).saturating_sub(n_swa).min(n_kv);
        m[t * n_kv..t * n_kv + first].fill(f32::NEG_INFINITY);
    }
    m
}

/// Row indices into a transposed V cache flattened to `[1, n_ctx * n_embd_v]`
/// for a batch whose value elements are in `[n_embd_v, n_tokens]` order.
fn transposed_v_rows(cells: &[i64], n_embd_v: usize, n_ctx: usize) -> Vec<i64> {
    let mut idx = Vec::with_capacity(cells.len() * n_embd_v);
    for &c in cells {
        idx.extend((0..n_embd_v).map(|e| (e * n_ctx) as i64 + c));
    }
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_is_causal_from_pos0() {
        let m = causal_mask(2, 2, 4);
        let inf = f32::NEG_INFINITY;
        assert_eq!(m, vec![0.0, 0.0, 0.0, inf, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn mask_first_token_sees_only_itself() {
        let m = causal_mask(0, 3, 256);
        assert_eq!(m.iter().filter(|x| **x == 0.0).count(), 1 + 2 + 3);
        assert_eq!(m[0], 0.0);
        assert_eq!(m[1], f32::NEG_INFINITY);
        assert_eq!(m[256 + 1], 0.0);
        assert_eq!(m[256 + 2], f32::NEG_INFINITY);
    }

    #[test]
    fn sliding_window_sees_the_last_n_swa_cells() {
        let inf = f32::NEG_INFINITY;
        // tokens at positions 3 and 4, window 2, 6 cells
        let m = sliding_window_mask(3, 2, 6, 2);
        assert_eq!(&m[..6], &[inf, inf, 0.0, 0.0, inf, inf]);
        assert_eq!(&m[6..], &[inf, inf, inf, 0.0, 0.0, inf]);
        // a window wider than the history is the causal mask
        assert_eq!(sliding_window_mask(2, 2, 4, 512), causal_mask(2, 2, 4));
    }

    #[test]
    fn n_kv_is_padded_and_capped() {
        assert_eq!(n_kv_for(1, 4096), 256);
        assert_eq!(n_kv_for(256, 4096), 256);
        assert_eq!(n_kv_for(257, 4096), 512);
        assert_eq!(n_kv_for(300, 300), 300);
    }

    #[test]
    fn transposed_rows_walk_cells_then_dims() {
        assert_eq!(transposed_v_rows(&[5, 6], 2, 10), vec![5, 15, 6, 16]);
    }

    #[test]
    fn quantized_cache_needs_flash() {
        let b = Backend::cpu(1).unwrap();
        let shape = KvShape {
            n_layer: 1,
            n_head_kv: 1,
            head_dim_k: 64,
            head_dim_v: 64,
            n_swa: 0,
        };
        assert!(KvStore::init(&b, shape, (16, 1), KvType::Q8_0, false).is_err());
        assert!(KvStore::init(&b, shape, (16, 1), KvType::Q8_0, true).is_ok());
    }
}
