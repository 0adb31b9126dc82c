//! Graph-building ops: one small method per ggml op.

use crate::{sys, Context, Rope, RopeMode, Tensor, Type};

/// Graph-building ops. Each returns a new tensor node; shape mismatches are
/// bugs and abort inside ggml with both shapes printed, so callers assert
/// shapes they derive from files before building.
impl Context {
    /// Rows `idx` of `a`: `a [n, rows]`, `idx [k] i32` → `[n, k]` f32.
    pub fn get_rows(&self, a: Tensor, idx: Tensor) -> Tensor {
        // SAFETY (all ops): live handles in live contexts; ggml validates shapes.
        self.wrap(unsafe { sys::ggml_get_rows(self.ptr(), a.raw(), idx.raw()) })
    }
    /// `a · bᵀ` in ggml's convention: `a [k, m]`, `b [k, n]` → `[m, n]`.
    /// With [`Context::use_own_kernels`], a Q4_1 or Q8_0 matrix times a few columns
    /// (generation) goes to our kernel, which gives ggml's result bit for bit.
    pub fn mul_mat(&self, a: Tensor, b: Tensor) -> Tensor {
        if self.own_kernels.get() && crate::kernels::takes(a, b) {
            return self.mul_mat_own(a, b);
        }
        self.wrap(unsafe { sys::ggml_mul_mat(self.ptr(), a.raw(), b.raw()) })
    }
    /// Element-wise `a + b` (`b` broadcast over `a`).
    pub fn add(&self, a: Tensor, b: Tensor) -> Tensor {
        self.wrap(unsafe { sys::ggml_add(self.ptr(), a.raw(), b.raw()) })
    }
    /// Element-wise `a * b` (`b` broadcast over `a`).
    pub fn mul(&self, a: Tensor, b: Tensor) -> Tensor {
        self.wrap(unsafe { sys::ggml_mul(self.ptr(), a.raw(), b.raw()) })
    }
    /// `a * s`.
    pub fn scale(&self, a: Tensor, s: f32) -> Tensor {
        self.wrap(unsafe { sys::ggml_scale(self.ptr(), a.raw(), s) })
    }
    /// RMS normalisation over `ne[0]`: `x / sqrt(mean(x²) + eps)` (no weight).
    pub fn rms_norm(&self, a: Tensor, eps: f32) -> Tensor {
        self.wrap(unsafe { sys::ggml_rms_norm(self.ptr(), a.raw(), eps) })
    }
    /// `silu(x) = x · σ(x)`.
    pub fn silu(&self, a: Tensor) -> Tensor {
        self.wrap(unsafe { sys::ggml_silu(self.ptr(), a.raw()) })
    }
    /// SwiGLU, fused: `silu(gate) * up` (same shapes).
    pub fn swiglu(&self, gate: Tensor, up: Tensor) -> Tensor {
        self.wrap(unsafe { sys::ggml_swiglu_split(self.ptr(), gate.raw(), up.raw()) })
    }
    /// SwiGLU of gate and up stacked in one tensor: `a [2n, m]` → `[n, m]`,
    /// `silu(a[..n]) * a[n..]` row by row (Phi-3's fused `ffn_up`).
    pub fn swiglu_stacked(&self, a: Tensor) -> Tensor {
        self.wrap(unsafe { sys::ggml_swiglu(self.ptr(), a.raw()) })
    }
    /// GeGLU, fused: `gelu(gate) * up` (same shapes; GELU's tanh approximation).
    pub fn geglu(&self, gate: Tensor, up: Tensor) -> Tensor {
        self.wrap(unsafe { sys::ggml_geglu_split(self.ptr(), gate.raw(), up.raw()) })
    }
    /// Element-wise `tanh(x)`.
    pub fn tanh(&self, a: Tensor) -> Tensor {
        self.wrap(unsafe { sys::ggml_tanh(self.ptr(), a.raw()) })
    }
    /// Softmax over `ne[0]` of `a * scale + mask` (mask `[ne0, ≥ne1]`, f16 or f32).
    pub fn soft_max_ext(&self, a: Tensor, mask: Option<Tensor>, scale: f32) -> Tensor {
        let m = mask.map_or(std::ptr::null_mut(), |m| m.raw());
        self.wrap(unsafe { sys::ggml_soft_max_ext(self.ptr(), a.raw(), m, scale, 0.0) })
    }
    /// Rotary position embedding of `a [head_dim, n_heads, n_tokens]` at `pos [n_tokens] i32`,
    /// with optional per-frequency factors `[n_dims/2]`.
    pub fn rope(&self, a: Tensor, pos: Tensor, factors: Option<Tensor>, r: &Rope) -> Tensor {
        let f = factors.map_or(std::ptr::null_mut(), |f| f.raw());
        let mode = match r.mode {
            RopeMode::Normal => 0,
            RopeMode::Neox => 2,
        };
        let (c, p) = (self.ptr(), pos.raw());
        self.wrap(unsafe {
            sys::ggml_rope_ext(
                c,
                a.raw(),
                p,
                f,
                r.n_dims,
                mode,
                r.n_ctx_orig,
                r.freq_base,
                r.freq_scale,
                r.ext_factor,
                r.attn_factor,
                r.beta_fast,
                r.beta_slow,
            )
        })
    }
    /// Writes rows of `src [n, k]` into `dst [n, rows]` at row indices `idx [k] i64`,
    /// converting to `dst`'s type; returns the updated `dst` view.
    pub fn set_rows(&self, dst: Tensor, src: Tensor, idx: Tensor) -> Tensor {
        self.wrap(unsafe { sys::ggml_set_rows(self.ptr(), dst.raw(), src.raw(), idx.raw()) })
    }
    /// Converts `a` to type `ty`.
    pub fn cast(&self, a: Tensor, ty: Type) -> Tensor {
        self.wrap(unsafe { sys::ggml_cast(self.ptr(), a.raw(), ty.0) })
    }
    /// Copies `a` into `b` (same element count; `b` may be a strided view and
    /// of another type, e.g. f32 into an f16 cache); returns the `b` view.
    pub fn cpy(&self, a: Tensor, b: Tensor) -> Tensor {
        self.wrap(unsafe { sys::ggml_cpy(self.ptr(), a.raw(), b.raw()) })
    }
    /// A contiguous copy of `a` (after a permute or transpose).
    pub fn cont(&self, a: Tensor) -> Tensor {
        self.wrap(unsafe { sys::ggml_cont(self.ptr(), a.raw()) })
    }
    /// Same data seen as `[ne0, ne1]` (`a` contiguous).
    pub fn reshape_2d(&self, a: Tensor, ne0: i64, ne1: i64) -> Tensor {
        self.wrap(unsafe { sys::ggml_reshape_2d(self.ptr(), a.raw(), ne0, ne1) })
    }
    /// Same data seen as `[ne0, ne1, ne2]` (`a` contiguous).
    pub fn reshape_3d(&self, a: Tensor, ne0: i64, ne1: i64, ne2: i64) -> Tensor {
        self.wrap(unsafe { sys::ggml_reshape_3d(self.ptr(), a.raw(), ne0, ne1, ne2) })
    }
    /// A 3-d view of `a` with strides `nb1`, `nb2` (bytes), starting `offset` bytes in.
    pub fn view_3d(
        &self,
        a: Tensor,
        ne: [i64; 3],
        nb1: usize,
        nb2: usize,
        offset: usize,
    ) -> Tensor {
        self.wrap(unsafe {
            sys::ggml_view_3d(self.ptr(), a.raw(), ne[0], ne[1], ne[2], nb1, nb2, offset)
        })
    }
    /// A 2-d view of `a` with row stride `nb1` (bytes), starting `offset` bytes in.
    pub fn view_2d(&self, a: Tensor, ne: [i64; 2], nb1: usize, offset: usize) -> Tensor {
        self.wrap(unsafe { sys::ggml_view_2d(self.ptr(), a.raw(), ne[0], ne[1], nb1, offset) })
    }
    /// Axis `i` of `a` goes to position `axes[i]`.
    pub fn permute(&self, a: Tensor, axes: [i32; 4]) -> Tensor {
        self.wrap(unsafe {
            sys::ggml_permute(self.ptr(), a.raw(), axes[0], axes[1], axes[2], axes[3])
        })
    }
    /// Swaps `ne[0]` and `ne[1]` (a view).
    pub fn transpose(&self, a: Tensor) -> Tensor {
        self.wrap(unsafe { sys::ggml_transpose(self.ptr(), a.raw()) })
    }

    /// Rotates every `n`-vector of `x` (contiguous rows, `n = h.ne[0]`
    /// dividing `ne[0]`) by the orthonormal Walsh-Hadamard matrix `h [n, n]`
    /// (see [`hadamard`]); same shape out. Unfused equivalent:
    /// `reshape(mul_mat(h, reshape_2d(x, n, len / n)), shape of x)`; ggml
    /// runs it as a fast transform.
    pub fn hadamard_rotate(&self, x: Tensor, h: Tensor) -> Tensor {
        let n = h.ne()[0];
        let ne = x.ne();
        let x2 = if x.nb()[1] == x.ty().type_size() * ne[0] as usize {
            x
        } else {
            self.cont(x)
        };
        let r = self.mul_mat(h, self.reshape_2d(x2, n, x.n_elements() as i64 / n));
        // SAFETY: r is a mul_mat node; the hint selects ggml's fast transform.
        unsafe { sys::ggml_mul_mat_set_hint(r.raw(), sys::GGML_HINT_SRC0_IS_HADAMARD) };
        self.wrap(unsafe { sys::ggml_reshape_4d(self.ptr(), r.raw(), ne[0], ne[1], ne[2], ne[3]) })
    }

    /// Multi-head attention with a mask, for one sequence.
    ///
    /// Shapes: `q [head_dim, n_tokens, n_head]`, `k [head_dim, n_kv, n_head_kv]`,
    /// `v [head_dim, n_kv, n_head_kv]`, `mask [n_kv, n_tokens] f16` (0 or -inf),
    /// `n_head % n_head_kv == 0` (grouped-query attention: head h reads kv head
    /// h / (n_head / n_head_kv)). Returns `[head_dim * n_head, n_tokens]`.
    ///
    /// With `flash` this is one fused `ggml_flash_attn_ext` node (f32
    /// accumulation; K/V may be f16, q8_0 or q4_0). Without, the unfused
    /// equivalent (K/V must be f16/f32):
    ///
    /// ```text
    /// kq  = mul_mat(k, q)                       // [n_kv, n_tokens, n_head]
    /// kq  = soft_max_ext(kq, mask, scale)       // softmax(kq·scale + mask)
    /// vt  = cont(permute(v, [1,0,2,3]))         // [n_kv, head_dim, n_head_kv]
    ///                                           // (no cont when V is stored transposed)
    /// out = mul_mat(vt, kq)                     // [head_dim, n_tokens, n_head]
    /// out = cont(permute(out, [0,2,1,3]))       // [head_dim, n_head, n_tokens]
    /// ```
    pub fn scaled_dot_product_attention(
        &self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor,
        scale: f32,
        flash: bool,
    ) -> Tensor {
        let (d, t, h) = (q.ne()[0], q.ne()[1], q.ne()[2]);
        assert!(
            k.ne()[0] == d && h % k.ne()[2] == 0 && v.ne()[1] == k.ne()[1],
            "attention q {:?} k {:?} v {:?}",
            q.ne(),
            k.ne(),
            v.ne()
        );
        if flash {
            let out = self.wrap(unsafe {
                sys::ggml_flash_attn_ext(
                    self.ptr(),
                    q.raw(),
                    k.raw(),
                    v.raw(),
                    mask.raw(),
                    scale,
                    0.0,
                    0.0,
                )
            });
            // SAFETY: out is a flash-attention node.
            unsafe { sys::ggml_prec_set_acc(out.raw(), sys::GGML_PREC_F32) };
            return self.reshape_2d(out, v.ne()[0] * h, t);
        }
        let kq = self.mul_mat(k, q);
        // SAFETY: kq is a mul_mat node.
        unsafe { sys::ggml_prec_set_acc(kq.raw(), sys::GGML_PREC_F32) };
        let kq = self.soft_max_ext(kq, Some(mask), scale);
        // a transposed V cache already has rows over n_kv: no copy then
        let vt = self.permute(v, [1, 0, 2, 3]);
        let vt = if vt.nb()[0] == vt.ty().type_size() {
            vt
        } else {
            self.cont(vt)
        };
        let out = self.cont(self.permute(self.mul_mat(vt, kq), [0, 2, 1, 3]));
        self.reshape_2d(out, v.ne()[0] * h, t)
    }
}
