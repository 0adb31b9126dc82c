//! Graph-building ops: one small method per ggml op.

use crate::{sys, Context, Rope, RopeMode, Tensor, TensorMut, Type};

/// Tensor arguments: a [`Tensor`], a [`TensorMut`] or a `&Weight`.
type T<'c> = Tensor<'c>;

/// Graph-building ops. Each returns a new tensor node borrowed from the
/// context (and from every tensor it reads: `'c` is the shortest of their
/// lives). Tensor arguments take a [`Tensor`], a [`TensorMut`] or a
/// `&Weight`. Shape mismatches are bugs and abort inside ggml with both
/// shapes printed, so callers assert shapes they derive from files before
/// building; views are checked here against the tensor they view.
impl Context {
    /// Rows `idx` of `a`: `a [n, rows]`, `idx [k] i32` → `[n, k]` f32.
    pub fn get_rows<'c>(&'c self, a: impl Into<T<'c>>, idx: impl Into<T<'c>>) -> Tensor<'c> {
        let (a, idx) = (a.into(), idx.into());
        // SAFETY: (all ops) handles live for 'c in live contexts (the
        // borrows in their types); ggml validates shapes and aborts on a
        // mismatch; the result is a new node of this context.
        self.wrap(unsafe { sys::ggml_get_rows(self.ptr(), a.raw(), idx.raw()) })
    }
    /// `a · bᵀ` in ggml's convention: `a [k, m]`, `b [k, n]` → `[m, n]`.
    /// With [`Context::use_own_kernels`], a Q4_1, Q8_0 or Q5_0 matrix goes to
    /// our kernels (for Q8_0 and Q5_0 times many columns only where the
    /// prompt kernel is compiled in), which give ggml's result bit for bit.
    pub fn mul_mat<'c>(&'c self, a: impl Into<T<'c>>, b: impl Into<T<'c>>) -> Tensor<'c> {
        let (a, b) = (a.into(), b.into());
        if self.own_kernels.get() && crate::kernels::takes(a, b) {
            return self.mul_mat_own(a, b);
        }
        // SAFETY: live handles (borrowed for 'c); ggml checks shapes.
        self.wrap(unsafe { sys::ggml_mul_mat(self.ptr(), a.raw(), b.raw()) })
    }
    /// Element-wise `a + b` (`b` broadcast over `a`).
    pub fn add<'c>(&'c self, a: impl Into<T<'c>>, b: impl Into<T<'c>>) -> Tensor<'c> {
        let (a, b) = (a.into(), b.into());
        // SAFETY: live handles (borrowed for 'c); ggml checks shapes.
        self.wrap(unsafe { sys::ggml_add(self.ptr(), a.raw(), b.raw()) })
    }
    /// Element-wise `a * b` (`b` broadcast over `a`).
    pub fn mul<'c>(&'c self, a: impl Into<T<'c>>, b: impl Into<T<'c>>) -> Tensor<'c> {
        let (a, b) = (a.into(), b.into());
        // SAFETY: live handles (borrowed for 'c); ggml checks shapes.
        self.wrap(unsafe { sys::ggml_mul(self.ptr(), a.raw(), b.raw()) })
    }
    /// `a * s`.
    pub fn scale<'c>(&'c self, a: impl Into<T<'c>>, s: f32) -> Tensor<'c> {
        // SAFETY: live handles (borrowed for 'c); ggml checks shapes.
        self.wrap(unsafe { sys::ggml_scale(self.ptr(), a.into().raw(), s) })
    }
    /// RMS normalisation over `ne[0]`: `x / sqrt(mean(x²) + eps)` (no weight).
    pub fn rms_norm<'c>(&'c self, a: impl Into<T<'c>>, eps: f32) -> Tensor<'c> {
        // SAFETY: live handles (borrowed for 'c); ggml checks shapes.
        self.wrap(unsafe { sys::ggml_rms_norm(self.ptr(), a.into().raw(), eps) })
    }
    /// `silu(x) = x · σ(x)`.
    pub fn silu<'c>(&'c self, a: impl Into<T<'c>>) -> Tensor<'c> {
        // SAFETY: live handles (borrowed for 'c); ggml checks shapes.
        self.wrap(unsafe { sys::ggml_silu(self.ptr(), a.into().raw()) })
    }
    /// SwiGLU, fused: `silu(gate) * up` (same shapes).
    pub fn swiglu<'c>(&'c self, gate: impl Into<T<'c>>, up: impl Into<T<'c>>) -> Tensor<'c> {
        let (gate, up) = (gate.into(), up.into());
        // SAFETY: live handles (borrowed for 'c); ggml checks shapes.
        self.wrap(unsafe { sys::ggml_swiglu_split(self.ptr(), gate.raw(), up.raw()) })
    }
    /// SwiGLU of gate and up stacked in one tensor: `a [2n, m]` → `[n, m]`,
    /// `silu(a[..n]) * a[n..]` row by row (Phi-3's fused `ffn_up`).
    pub fn swiglu_stacked<'c>(&'c self, a: impl Into<T<'c>>) -> Tensor<'c> {
        // SAFETY: live handles (borrowed for 'c); ggml checks shapes.
        self.wrap(unsafe { sys::ggml_swiglu(self.ptr(), a.into().raw()) })
    }
    /// GeGLU, fused: `gelu(gate) * up` (same shapes; GELU's tanh approximation).
    pub fn geglu<'c>(&'c self, gate: impl Into<T<'c>>, up: impl Into<T<'c>>) -> Tensor<'c> {
        let (gate, up) = (gate.into(), up.into());
        // SAFETY: live handles (borrowed for 'c); ggml checks shapes.
        self.wrap(unsafe { sys::ggml_geglu_split(self.ptr(), gate.raw(), up.raw()) })
    }
    /// Element-wise `tanh(x)`.
    pub fn tanh<'c>(&'c self, a: impl Into<T<'c>>) -> Tensor<'c> {
        // SAFETY: live handles (borrowed for 'c); ggml checks shapes.
        self.wrap(unsafe { sys::ggml_tanh(self.ptr(), a.into().raw()) })
    }
    /// Softmax over `ne[0]` of `a * scale + mask` (mask `[ne0, ≥ne1]`, f16 or f32).
    pub fn soft_max_ext<'c>(
        &'c self,
        a: impl Into<T<'c>>,
        mask: Option<Tensor<'c>>,
        scale: f32,
    ) -> Tensor<'c> {
        let m = mask.map_or(std::ptr::null_mut(), |m| m.raw());
        // SAFETY: live handles (borrowed for 'c); ggml checks shapes.
        self.wrap(unsafe { sys::ggml_soft_max_ext(self.ptr(), a.into().raw(), m, scale, 0.0) })
    }
    /// Rotary position embedding of `a [head_dim, n_heads, n_tokens]` at `pos [n_tokens] i32`,
    /// with optional per-frequency factors `[n_dims/2]`.
    pub fn rope<'c>(
        &'c self,
        a: impl Into<T<'c>>,
        pos: impl Into<T<'c>>,
        factors: Option<Tensor<'c>>,
        r: &Rope,
    ) -> Tensor<'c> {
        let f = factors.map_or(std::ptr::null_mut(), |f| f.raw());
        let mode = match r.mode {
            RopeMode::Normal => 0,
            RopeMode::Neox => 2,
        };
        let (c, a, p) = (self.ptr(), a.into().raw(), pos.into().raw());
        // SAFETY: live handles (borrowed for 'c); ggml checks shapes.
        self.wrap(unsafe {
            sys::ggml_rope_ext(
                c,
                a,
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
    /// converting to `dst`'s type; returns the updated `dst` view. `dst` is
    /// writable memory (a [`TensorMut`]); ggml checks the indices.
    pub fn set_rows<'c>(
        &'c self,
        dst: TensorMut<'c>,
        src: impl Into<T<'c>>,
        idx: impl Into<T<'c>>,
    ) -> Tensor<'c> {
        let (d, s, i) = (dst.t().raw(), src.into().raw(), idx.into().raw());
        // SAFETY: live handles (borrowed for 'c); ggml checks shapes.
        self.wrap(unsafe { sys::ggml_set_rows(self.ptr(), d, s, i) })
    }
    /// Converts `a` to type `ty`.
    pub fn cast<'c>(&'c self, a: impl Into<T<'c>>, ty: Type) -> Tensor<'c> {
        // SAFETY: live handles (borrowed for 'c); ggml checks shapes.
        self.wrap(unsafe { sys::ggml_cast(self.ptr(), a.into().raw(), ty.0) })
    }
    /// Copies `a` into `b` (same element count; `b` may be a strided view and
    /// of another type, e.g. f32 into an f16 cache); returns the `b` view.
    pub fn cpy<'c>(&'c self, a: impl Into<T<'c>>, b: TensorMut<'c>) -> Tensor<'c> {
        // SAFETY: live handles (borrowed for 'c); ggml checks shapes.
        self.wrap(unsafe { sys::ggml_cpy(self.ptr(), a.into().raw(), b.t().raw()) })
    }
    /// A contiguous copy of `a` (after a permute or transpose).
    pub fn cont<'c>(&'c self, a: impl Into<T<'c>>) -> Tensor<'c> {
        // SAFETY: live handles (borrowed for 'c); ggml checks shapes.
        self.wrap(unsafe { sys::ggml_cont(self.ptr(), a.into().raw()) })
    }
    /// Same data seen as `[ne0, ne1]` (`a` contiguous; ggml checks the count).
    pub fn reshape_2d<'c>(&'c self, a: impl Into<T<'c>>, ne0: i64, ne1: i64) -> Tensor<'c> {
        // SAFETY: live handles (borrowed for 'c); ggml checks shapes.
        self.wrap(unsafe { sys::ggml_reshape_2d(self.ptr(), a.into().raw(), ne0, ne1) })
    }
    /// [`Context::reshape_2d`] of writable memory, writable.
    pub fn reshape_2d_mut<'c>(&'c self, a: TensorMut<'c>, ne0: i64, ne1: i64) -> TensorMut<'c> {
        TensorMut(self.reshape_2d(a, ne0, ne1))
    }
    /// Same data seen as `[ne0, ne1, ne2]` (`a` contiguous).
    pub fn reshape_3d<'c>(
        &'c self,
        a: impl Into<T<'c>>,
        ne0: i64,
        ne1: i64,
        ne2: i64,
    ) -> Tensor<'c> {
        // SAFETY: live handles (borrowed for 'c); ggml checks shapes.
        self.wrap(unsafe { sys::ggml_reshape_3d(self.ptr(), a.into().raw(), ne0, ne1, ne2) })
    }
    /// A 3-d view of `a` with strides `nb1`, `nb2` (bytes), starting `offset`
    /// bytes in. Panics unless every element it reaches lies in `a`'s data.
    pub fn view_3d<'c>(
        &'c self,
        a: impl Into<T<'c>>,
        ne: [i64; 3],
        nb1: usize,
        nb2: usize,
        offset: usize,
    ) -> Tensor<'c> {
        let a = a.into();
        check_view(a, &ne, &[nb1, nb2], offset);
        // SAFETY: the view's extent lies inside `a`'s data (checked).
        self.wrap(unsafe {
            sys::ggml_view_3d(self.ptr(), a.raw(), ne[0], ne[1], ne[2], nb1, nb2, offset)
        })
    }
    /// A 4-d view of `a` with strides `nb1`, `nb2`, `nb3` (bytes), starting
    /// `offset` bytes in. Panics unless every element it reaches lies in
    /// `a`'s data.
    pub fn view_4d<'c>(
        &'c self,
        a: impl Into<T<'c>>,
        ne: [i64; 4],
        [nb1, nb2, nb3]: [usize; 3],
        offset: usize,
    ) -> Tensor<'c> {
        let a = a.into();
        check_view(a, &ne, &[nb1, nb2, nb3], offset);
        // SAFETY: the view's extent lies inside `a`'s data (checked).
        self.wrap(unsafe {
            sys::ggml_view_4d(
                self.ptr(),
                a.raw(),
                ne[0],
                ne[1],
                ne[2],
                ne[3],
                nb1,
                nb2,
                nb3,
                offset,
            )
        })
    }
    /// `a` and `b` joined along `dim` (the other dims equal; a copy).
    pub fn concat<'c>(
        &'c self,
        a: impl Into<T<'c>>,
        b: impl Into<T<'c>>,
        dim: usize,
    ) -> Tensor<'c> {
        let (a, b) = (a.into(), b.into());
        assert!(
            dim < 4 && (0..4).all(|i| i == dim || a.ne()[i] == b.ne()[i]) && a.ty() == b.ty(),
            "concat {:?} and {:?} along {dim}",
            a.ne(),
            b.ne()
        );
        // SAFETY: live handles (borrowed for 'c); shapes and types checked.
        self.wrap(unsafe { sys::ggml_concat(self.ptr(), a.raw(), b.raw(), dim as i32) })
    }
    /// [`Context::view_3d`] of writable memory, writable.
    pub fn view_3d_mut<'c>(
        &'c self,
        a: TensorMut<'c>,
        ne: [i64; 3],
        nb1: usize,
        nb2: usize,
        offset: usize,
    ) -> TensorMut<'c> {
        TensorMut(self.view_3d(a, ne, nb1, nb2, offset))
    }
    /// A 2-d view of `a` with row stride `nb1` (bytes), starting `offset`
    /// bytes in. Panics unless every element it reaches lies in `a`'s data.
    pub fn view_2d<'c>(
        &'c self,
        a: impl Into<T<'c>>,
        ne: [i64; 2],
        nb1: usize,
        offset: usize,
    ) -> Tensor<'c> {
        let a = a.into();
        check_view(a, &ne, &[nb1], offset);
        // SAFETY: the view's extent lies inside `a`'s data (checked).
        self.wrap(unsafe { sys::ggml_view_2d(self.ptr(), a.raw(), ne[0], ne[1], nb1, offset) })
    }
    /// [`Context::view_2d`] of writable memory, writable.
    pub fn view_2d_mut<'c>(
        &'c self,
        a: TensorMut<'c>,
        ne: [i64; 2],
        nb1: usize,
        offset: usize,
    ) -> TensorMut<'c> {
        TensorMut(self.view_2d(a, ne, nb1, offset))
    }
    /// Axis `i` of `a` goes to position `axes[i]`.
    pub fn permute<'c>(&'c self, a: impl Into<T<'c>>, axes: [i32; 4]) -> Tensor<'c> {
        // SAFETY: live handles (borrowed for 'c); ggml checks shapes.
        self.wrap(unsafe {
            sys::ggml_permute(
                self.ptr(),
                a.into().raw(),
                axes[0],
                axes[1],
                axes[2],
                axes[3],
            )
        })
    }
    /// Swaps `ne[0]` and `ne[1]` (a view).
    pub fn transpose<'c>(&'c self, a: impl Into<T<'c>>) -> Tensor<'c> {
        // SAFETY: live handles (borrowed for 'c); ggml checks shapes.
        self.wrap(unsafe { sys::ggml_transpose(self.ptr(), a.into().raw()) })
    }

    /// Rotates every `n`-vector of `x` (contiguous rows, `n = h.ne[0]`
    /// dividing `ne[0]`) by the orthonormal Walsh-Hadamard matrix `h [n, n]`
    /// (see [`crate::hadamard`]); same shape out. Unfused equivalent:
    /// `reshape(mul_mat(h, reshape_2d(x, n, len / n)), shape of x)`; ggml
    /// runs it as a fast transform.
    pub fn hadamard_rotate<'c>(&'c self, x: impl Into<T<'c>>, h: impl Into<T<'c>>) -> Tensor<'c> {
        let (x, h) = (x.into(), h.into());
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
        // SAFETY: live handles (borrowed for 'c); ggml checks shapes.
        self.wrap(unsafe { sys::ggml_reshape_4d(self.ptr(), r.raw(), ne[0], ne[1], ne[2], ne[3]) })
    }

    /// Multi-head attention with a mask, for `n_seq` sequences of `n_tokens`
    /// each (attending to their own cells).
    ///
    /// Shapes: `q [head_dim, n_tokens, n_head, n_seq]`,
    /// `k [head_dim, n_kv, n_head_kv, n_seq]`, `v [head_dim, n_kv, n_head_kv, n_seq]`,
    /// `mask [n_kv, n_tokens, 1, n_seq] f16` (0 or -inf),
    /// `n_head % n_head_kv == 0` (grouped-query attention: head h reads kv head
    /// h / (n_head / n_head_kv)). Returns `[head_dim * n_head, n_tokens * n_seq]`
    /// (sequence after sequence).
    ///
    /// With `flash` this is one fused `ggml_flash_attn_ext` node (f32
    /// accumulation; K/V may be f16, q8_0 or q4_0). Without, the unfused
    /// equivalent (K/V must be f16/f32):
    ///
    /// ```text
    /// kq  = mul_mat(k, q)                       // [n_kv, n_tokens, n_head, n_seq]
    /// kq  = soft_max_ext(kq, mask, scale)       // softmax(kq·scale + mask)
    /// vt  = cont(permute(v, [1,0,2,3]))         // [n_kv, head_dim, n_head_kv, n_seq]
    ///                                           // (no cont when V is stored transposed)
    /// out = mul_mat(vt, kq)                     // [head_dim, n_tokens, n_head, n_seq]
    /// out = cont(permute(out, [0,2,1,3]))       // [head_dim, n_head, n_tokens, n_seq]
    /// ```
    pub fn scaled_dot_product_attention<'c>(
        &'c self,
        q: Tensor<'c>,
        k: Tensor<'c>,
        v: Tensor<'c>,
        mask: Tensor<'c>,
        scale: f32,
        flash: bool,
    ) -> Tensor<'c> {
        let (d, t, h, s) = (q.ne()[0], q.ne()[1], q.ne()[2], q.ne()[3]);
        assert!(
            k.ne()[0] == d
                && h % k.ne()[2] == 0
                && v.ne()[1] == k.ne()[1]
                && k.ne()[3] == s
                && v.ne()[3] == s,
            "attention q {:?} k {:?} v {:?}",
            q.ne(),
            k.ne(),
            v.ne()
        );
        if flash {
            // SAFETY: live handles (borrowed for 'c); ggml checks shapes.
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
            return self.reshape_2d(out, v.ne()[0] * h, t * s);
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
        self.reshape_2d(out, v.ne()[0] * h, t * s)
    }
}

/// Panics unless a view of `a` with shape `ne`, row strides `nb` (bytes,
/// for dims 1..) and byte `offset` stays inside `a`'s data: its last byte,
/// `offset + row bytes + Σ (ne[i] - 1) · nb[i]`, at most `a.n_bytes()`.
/// (ggml checks only that a contiguous view of the same count would fit.)
fn check_view(a: Tensor, ne: &[i64], nb: &[usize], offset: usize) {
    let extent = || -> Option<usize> {
        if ne.iter().any(|&n| n < 0) {
            return None;
        }
        if ne.contains(&0) {
            return Some(0);
        }
        let ty = a.ty();
        let b = ty.block_size();
        let n0 = usize::try_from(ne[0]).ok()?;
        if b == 0 || n0 % b != 0 {
            return None;
        }
        let mut end = (n0 / b).checked_mul(ty.type_size())?;
        for (&n, &s) in ne[1..].iter().zip(nb) {
            end = end.checked_add(usize::try_from(n - 1).ok()?.checked_mul(s)?)?;
        }
        offset.checked_add(end)
    };
    let end = extent();
    assert!(
        end.is_some_and(|e| e <= a.n_bytes()),
        "view {ne:?} strides {nb:?} at {offset} outside {a:?} of {} bytes",
        a.n_bytes()
    );
}
