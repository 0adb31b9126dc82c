//! The key/value cache of one sequence.
//!
//! Cell `i` holds the keys and values of the token at position `i`
//! (positions are contiguous from 0; a context shift rebuilds the cache, see
//! [`crate::session::Session::shift`]).
//!
//! Two halves:
//! * **model side**, used while a model builds its graph: [`KvCache::put`]
//!   writes this batch's K/V for a layer, [`KvCache::get`] views the cells the
//!   batch attends to, [`KvCache::mask`] is the causal mask.
//! * **runner side**, used by the session: [`KvCache::init`] allocates,
//!   [`KvCache::start_forward`] declares the positions of the next batch and
//!   creates its inputs, [`KvCache::write_inputs`] fills them after graph
//!   allocation, [`KvCache::clear`] forgets everything.
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

use ggml::{Backend, Buffer, Context, Graph, Tensor, Type};

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

/// Per-layer K and V storage for `n_ctx` cells.
pub struct KvCache {
    shape: KvShape,
    n_ctx: usize,
    ty: Type,
    flash: bool,
    _ctx: Context,
    _buf: Buffer,
    k: Vec<Tensor>, // [head_dim_k * n_head_kv, n_ctx] per layer
    v: Vec<Tensor>, // flash: [head_dim_v * n_head_kv, n_ctx]; else [n_ctx, head_dim_v * n_head_kv]
    // the batch being built
    pos0: usize,
    n_tokens: usize,
    n_kv: usize,
    k_idx: Option<Tensor>,    // [n_tokens] i64: cell of each token
    v_idx: Option<Tensor>,    // [n_tokens * n_embd_v] i64 (transposed V only)
    mask: Option<Tensor>,     // [n_kv, n_tokens] f16
    mask_swa: Option<Tensor>, // [n_kv, n_tokens] f16 (sliding-window layers)
    n_rot_k: usize,           // Hadamard size for Q/K (0: no rotation)
    n_rot_v: usize,           // Hadamard size for V (0: no rotation)
    k_rot: Option<Tensor>,    // [n_rot_k, n_rot_k] f32
    v_rot: Option<Tensor>,    // [n_rot_v, n_rot_v] f32
}

impl KvCache {
    // ---- runner side ----

    /// Allocates a zeroed cache of `n_ctx` cells on `backend`.
    pub fn init(
        backend: &Backend,
        shape: KvShape,
        n_ctx: usize,
        ty: KvType,
        flash: bool,
    ) -> Result<KvCache> {
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
        let ctx = Context::new(2 * shape.n_layer + 2);
        let (n, mut k, mut v) = (n_ctx as i64, vec![], vec![]);
        for _ in 0..shape.n_layer {
            k.push(ctx.tensor(ty, &[ek as i64, n]));
            v.push(if flash {
                ctx.tensor(ty, &[ev as i64, n])
            } else {
                ctx.tensor(ty, &[n, ev as i64])
            });
        }
        let buf = ctx.alloc_tensors(backend)?;
        Ok(KvCache {
            shape,
            n_ctx,
            ty,
            flash,
            _ctx: ctx,
            _buf: buf,
            k,
            v,
            pos0: 0,
            n_tokens: 0,
            n_kv: 0,
            k_idx: None,
            v_idx: None,
            mask: None,
            mask_swa: None,
            n_rot_k: rot_size(ty, shape.head_dim_k, true),
            n_rot_v: rot_size(ty, shape.head_dim_v, false),
            k_rot: None,
            v_rot: None,
        })
    }

    /// Cells in the cache.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Whether attention uses the fused flash path.
    pub fn flash(&self) -> bool {
        self.flash
    }

    /// Declares that the next batch holds `n_tokens` tokens at positions
    /// `pos0..pos0 + n_tokens`, and creates its inputs in `ctx`.
    pub fn start_forward(&mut self, ctx: &Context, pos0: usize, n_tokens: usize) {
        assert!(
            n_tokens > 0 && pos0 + n_tokens <= self.n_ctx,
            "batch {pos0}+{n_tokens} outside cache of {}",
            self.n_ctx
        );
        self.pos0 = pos0;
        self.n_tokens = n_tokens;
        self.n_kv = n_kv_for(pos0 + n_tokens, self.n_ctx);
        self.k_idx = Some(ctx.tensor(Type::I64, &[n_tokens as i64]).set_input());
        let ev = (self.shape.head_dim_v * self.shape.n_head_kv) as i64;
        self.v_idx =
            (!self.flash).then(|| ctx.tensor(Type::I64, &[n_tokens as i64 * ev]).set_input());
        let mask = || {
            ctx.tensor(Type::F16, &[self.n_kv as i64, n_tokens as i64])
                .set_input()
        };
        self.mask = Some(mask());
        self.mask_swa = (self.shape.n_swa > 0).then(mask);
        let rot =
            |n: usize| (n > 0).then(|| ctx.tensor(Type::F32, &[n as i64, n as i64]).set_input());
        (self.k_rot, self.v_rot) = (rot(self.n_rot_k), rot(self.n_rot_v));
    }

    /// Cells a batch of `n_tokens` at `pos0` attends to (the graph's shape
    /// depends on it and on `n_tokens` only).
    pub fn n_kv_for_batch(&self, pos0: usize, n_tokens: usize) -> usize {
        n_kv_for(pos0 + n_tokens, self.n_ctx)
    }

    /// Like [`KvCache::start_forward`] for a batch whose graph has the same
    /// shape as the last one (same `n_tokens` and [`KvCache::n_kv_for_batch`]):
    /// keeps the input tensors, so a graph built for that batch can run again
    /// after [`KvCache::write_inputs`].
    pub fn reuse_forward(&mut self, pos0: usize, n_tokens: usize) {
        let built = self.k_idx.map(|t| t.ne()[0] as usize);
        assert!(
            built == Some(n_tokens) && self.n_kv_for_batch(pos0, n_tokens) == self.n_kv,
            "batch {pos0}+{n_tokens} does not have the shape of the last one"
        );
        self.pos0 = pos0;
        self.n_tokens = n_tokens;
    }

    /// Fills the inputs created by [`KvCache::start_forward`] (after
    /// allocation), queued on `backend` (the one computing the graph).
    pub fn write_inputs(&self, backend: &Backend) {
        let cells: Vec<i64> = (self.pos0..self.pos0 + self.n_tokens)
            .map(|p| p as i64)
            .collect();
        backend.set_i64(self.k_idx.expect("start_forward first"), &cells);
        if let Some(v_idx) = self.v_idx {
            let ev = self.shape.head_dim_v * self.shape.n_head_kv;
            backend.set_i64(v_idx, &transposed_v_rows(&cells, ev, self.n_ctx));
        }
        let mask = causal_mask(self.pos0, self.n_tokens, self.n_kv);
        backend.set_f32_as_f16(self.mask.expect("start_forward first"), &mask);
        if let Some(m) = self.mask_swa {
            let swa = sliding_window_mask(self.pos0, self.n_tokens, self.n_kv, self.shape.n_swa);
            backend.set_f32_as_f16(m, &swa);
        }
        for (t, n) in [(self.k_rot, self.n_rot_k), (self.v_rot, self.n_rot_v)] {
            if let Some(t) = t {
                backend.set_f32(t, &ggml::hadamard(n));
            }
        }
    }

    /// Forgets every cell.
    pub fn clear(&mut self) {
        self.pos0 = 0;
        self.n_tokens = 0;
    }

    // ---- model side ----

    /// Writes this batch's keys `k [head_dim_k, n_head_kv, n_tokens]` and
    /// values `v [head_dim_v, n_head_kv, n_tokens]` of `layer` into the cache;
    /// the writes are added to `g` so later reads see them.
    pub fn put(&self, ctx: &Context, g: &Graph, layer: usize, k: Tensor, v: Tensor) {
        let (ek, ev) = (
            self.shape.head_dim_k * self.shape.n_head_kv,
            self.shape.head_dim_v * self.shape.n_head_kv,
        );
        let t = self.n_tokens as i64;
        assert!(
            k.ne()[..3] == [self.shape.head_dim_k as i64, self.shape.n_head_kv as i64, t],
            "kv put k {:?}",
            k.ne()
        );
        let k = self.k_rot.map_or(k, |h| ctx.hadamard_rotate(k, h));
        let v = self.v_rot.map_or(v, |h| ctx.hadamard_rotate(v, h));
        let k2 = ctx.reshape_2d(k, ek as i64, t);
        g.expand(ctx.set_rows(self.k[layer], k2, self.k_idx.expect("start_forward first")));
        if self.flash {
            g.expand(ctx.set_rows(
                self.v[layer],
                ctx.reshape_2d(v, ev as i64, t),
                self.k_idx.expect("start_forward first"),
            ));
        } else {
            // every element is its own row of the flattened transposed cache
            let dst = ctx.reshape_2d(self.v[layer], 1, (ev * self.n_ctx) as i64);
            g.expand(ctx.set_rows(
                dst,
                ctx.reshape_2d(v, 1, ev as i64 * t),
                self.v_idx.expect("start_forward first"),
            ));
        }
    }

    /// Keys and values of the cells this batch attends to, each
    /// `[head_dim, n_kv, n_head_kv]` (a view; V may be a transposed view).
    pub fn get(&self, ctx: &Context, layer: usize) -> (Tensor, Tensor) {
        let s = self.shape;
        let (hk, hv, n_kv) = (s.head_dim_k, s.head_dim_v, self.n_kv as i64);
        let k = self.k[layer];
        let kview = ctx.view_3d(
            k,
            [hk as i64, s.n_head_kv as i64, n_kv],
            self.ty.row_size(hk),
            k.nb()[1],
            0,
        );
        let k = ctx.permute(kview, [0, 2, 1, 3]);
        let v = self.v[layer];
        let v = if self.flash {
            let vview = ctx.view_3d(
                v,
                [hv as i64, s.n_head_kv as i64, n_kv],
                self.ty.row_size(hv),
                v.nb()[1],
                0,
            );
            ctx.permute(vview, [0, 2, 1, 3])
        } else {
            let es = self.ty.type_size();
            let vt = ctx.view_3d(
                v,
                [n_kv, hv as i64, s.n_head_kv as i64],
                self.n_ctx * es,
                self.n_ctx * es * hv,
                0,
            );
            ctx.permute(vt, [1, 0, 2, 3]) // [n_kv, hv, h] → [hv, n_kv, h]
        };
        (k, v)
    }

    /// Whether [`KvCache::shift_cells`] can move cells (an f16 cache; a
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
    pub fn shift_cells(
        &self,
        ctx: &Context,
        g: &Graph,
        (from, to, n): (usize, usize, usize),
        mut rerotate: impl FnMut(Tensor, usize) -> Option<Tensor>,
    ) -> bool {
        assert!(self.can_shift_cells() && to < from && from + n <= self.n_ctx);
        let s = self.shape;
        let (hk, hv, nh) = (s.head_dim_k, s.head_dim_v, s.n_head_kv);
        let es = self.ty.type_size();
        let mut copies = vec![];
        for layer in 0..s.n_layer {
            let k = self.k[layer];
            let rows = |cell: usize| {
                ctx.view_3d(
                    k,
                    [hk as i64, nh as i64, n as i64],
                    self.ty.row_size(hk),
                    k.nb()[1],
                    cell * k.nb()[1],
                )
            };
            let Some(kr) = rerotate(ctx.cast(rows(from), Type::F32), layer) else {
                return false;
            };
            copies.push(ctx.cpy(kr, rows(to)));
            let v = self.v[layer];
            let (src, dst) = if self.flash {
                let rows = |cell: usize| {
                    ctx.view_2d(v, [(hv * nh) as i64, n as i64], v.nb()[1], cell * v.nb()[1])
                };
                (rows(from), rows(to))
            } else {
                // transposed: cells are columns of [n_ctx, hv * nh]
                let cols = |cell: usize| {
                    ctx.view_2d(v, [n as i64, (hv * nh) as i64], v.nb()[1], cell * es)
                };
                (cols(from), cols(to))
            };
            copies.push(ctx.cpy(ctx.cont(src), dst));
        }
        for c in copies {
            g.expand(c);
        }
        true
    }

    /// Rotates queries `[head_dim, n_head, n_tokens]` like the cached keys.
    pub fn rotate_q(&self, ctx: &Context, q: Tensor) -> Tensor {
        self.k_rot.map_or(q, |h| ctx.hadamard_rotate(q, h))
    }

    /// Undoes the value rotation on the attention output `[head_dim * n_head, n_tokens]`.
    pub fn unrotate_out(&self, ctx: &Context, out: Tensor) -> Tensor {
        self.v_rot.map_or(out, |h| ctx.hadamard_rotate(out, h))
    }

    /// The causal mask of this batch, `[n_kv, n_tokens]` f16: 0 where a token
    /// may attend, -inf elsewhere.
    pub fn mask(&self) -> Tensor {
        self.mask.expect("start_forward first")
    }

    /// The mask of sliding-window layers, `[n_kv, n_tokens]` f16: causal and
    /// at most `n_swa` cells back (see [`KvShape::n_swa`]). Panics when the
    /// shape has no window.
    pub fn mask_swa(&self) -> Tensor {
        self.mask_swa.expect("start_forward first, with n_swa > 0")
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
        assert!(KvCache::init(&b, shape, 16, KvType::Q8_0, false).is_err());
        assert!(KvCache::init(&b, shape, 16, KvType::Q8_0, true).is_ok());
    }
}
