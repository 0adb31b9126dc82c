//! Our own CPU kernels, as ggml custom ops: the matrix products of
//! generation (a few activation columns) for Q4_1, Q8_0 and Q5_0 weights, and
//! of prompts (many columns) for Q4_1, Q8_0 and Q5_0 (tiles of two rows per
//! 512-bit register where AVX-512 VNNI is compiled in; else Q4_1 four columns
//! at a time and ggml's tinyBLAS for the others); equal to ggml's bit for bit
//! but doing less per weight block (src/kernels.c).

use std::cell::RefCell;
use std::ffi::{c_int, c_void};

use crate::{sys, Context, Tensor, Type};

extern "C" {
    fn llpipe_kernels_available() -> c_int;
    fn llpipe_gemm_available() -> c_int;
    /// Bytes of scratch `llpipe_rows` needs.
    fn llpipe_scratch_bytes(kind: c_int, nb: c_int, n_cols: c_int) -> usize;
    /// `dst[c * dst_stride + r]` = row `r` of `w` (`kind`: 0 Q4_1, 1 Q8_0,
    /// 2 Q5_0) · column `c` of `y` (quantized to the matching type), rows
    /// `r0..r1`, columns `0..n_cols`, `nb` blocks of 32 a row; strides in
    /// bytes except `dst_stride`, in floats; `scratch` is room for
    /// `llpipe_scratch_bytes` bytes.
    fn llpipe_rows(
        kind: c_int,
        w: *const c_void,
        w_stride: usize,
        r0: i64,
        r1: i64,
        nb: c_int,
        y: *const c_void,
        y_stride: usize,
        n_cols: c_int,
        dst: *mut f32,
        dst_stride: usize,
        scratch: *mut c_void,
    );
}

/// Most activation columns (tokens) the Q8_0 and Q5_0 kernels take where
/// the prompt kernel is not compiled in (then ggml's tinyBLAS does prompts).
const MAX_COLS_Q8_0: i64 = 8;

thread_local! {
    /// Activations quantized for the dot products, per ggml worker thread.
    static QUANTIZED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Room for the activations' block scales as floats, and the prompt
    /// kernel's packed blocks, per thread (u64s: aligned for the floats).
    static SCRATCH: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// Whether the kernels were compiled in (x86-64 with AVX2, FMA and F16C).
pub(crate) fn available() -> bool {
    // SAFETY: no arguments; returns a constant.
    unsafe { llpipe_kernels_available() != 0 }
}

/// Whether Q8_0 and Q5_0 matrices times more than [`MAX_COLS_Q8_0`]
/// columns go to our prompt kernel (AVX-512 VNNI, VL and BW compiled in).
pub(crate) fn gemm_available() -> bool {
    // SAFETY: no arguments; returns a constant.
    unsafe { llpipe_gemm_available() != 0 }
}

/// Whether `a · bᵀ` goes to our kernels: a plain (not repacked, 2-D) Q4_1
/// matrix, or a Q8_0 or Q5_0 one (times at most [`MAX_COLS_Q8_0`] columns
/// without the prompt kernel), times contiguous f32 columns.
pub(crate) fn takes(a: Tensor, b: Tensor) -> bool {
    let (an, bn) = (a.ne(), b.ne());
    let max_cols = if a.ty() == Type::Q4_1 || gemm_available() {
        i64::MAX
    } else {
        MAX_COLS_Q8_0
    };
    (a.ty() == Type::Q4_1 || a.ty() == Type::Q8_0 || a.ty() == Type::Q5_0)
        && b.ty() == Type::F32
        && an[2] == 1
        && an[3] == 1
        && bn[2] == 1
        && bn[3] == 1
        && (1..=max_cols).contains(&bn[1])
        && an[0] == bn[0]
        && an[0] % 32 == 0
        && b.is_contiguous()
        // SAFETY: reading a live tensor's field.
        && unsafe { (*a.raw()).extra.is_null() }
        && available()
}

impl Context {
    /// `a [k, m] · b [k, n] f32` → `[m, n]` by our kernels (see [`takes`]).
    pub(crate) fn mul_mat_own<'c>(&'c self, a: Tensor<'c>, b: Tensor<'c>) -> Tensor<'c> {
        let mut args = [a.raw(), b.raw()];
        // SAFETY: live handles; ggml copies the argument list; the op
        // function has ggml's custom-op signature and only reads `args` and
        // writes `dst` within their shapes (checked by `takes`).
        self.wrap(unsafe {
            sys::ggml_custom_4d(
                self.ptr(),
                sys::GGML_TYPE_F32,
                a.ne()[1],
                b.ne()[1],
                1,
                1,
                args.as_mut_ptr(),
                2,
                Some(mul_mat_op),
                -1, // GGML_N_TASKS_MAX: every thread
                std::ptr::null_mut(),
            )
        })
    }
}

/// The custom op: each of `nth` threads quantizes the activations (with
/// ggml's own quantizer for the weight type's dot product, as ggml's mul_mat
/// does) and computes its share of the rows.
unsafe extern "C" fn mul_mat_op(
    dst: *mut sys::ggml_tensor,
    ith: c_int,
    nth: c_int,
    _: *mut c_void,
) {
    // SAFETY: ggml calls this with `dst` built by `mul_mat_own`, whose
    // sources are the Q4_1/Q8_0/Q5_0 matrix and the contiguous f32 activations
    // `takes` checked, all allocated; rows r0..r1 of dst are this thread's.
    unsafe {
        let (w, x) = ((*dst).src[0], (*dst).src[1]);
        let (k, m, n) = ((*w).ne[0], (*w).ne[1], (*x).ne[1]);
        let (kind, vec_type) = match (*w).type_ {
            sys::GGML_TYPE_Q8_0 => (1, sys::GGML_TYPE_Q8_0),
            sys::GGML_TYPE_Q5_0 => (2, sys::GGML_TYPE_Q8_0),
            _ => (0, sys::GGML_TYPE_Q8_1),
        };
        let row = sys::ggml_row_size(vec_type, k);
        let Some(quantize) = (*sys::ggml_get_type_traits_cpu(vec_type)).from_float else {
            return;
        };
        // rows split evenly over the threads (in pairs)
        let pairs = (m + 1) / 2;
        let per = (pairs + nth as i64 - 1) / nth as i64;
        let r0 = (ith as i64 * per * 2).min(m);
        let r1 = ((ith as i64 + 1) * per * 2).min(m);
        if r0 >= r1 {
            return;
        }
        QUANTIZED.with_borrow_mut(|q| {
            SCRATCH.with_borrow_mut(|scratch| {
                let bytes = llpipe_scratch_bytes(kind, (k / 32) as c_int, n as c_int);
                scratch.resize(bytes.div_ceil(8), 0);
                q.resize(row * n as usize, 0);
                let xd = (*x).data as *const u8;
                for c in 0..n as usize {
                    let src = xd.add(c * (*x).nb[1]) as *const f32;
                    quantize(src, q.as_mut_ptr().add(c * row) as *mut c_void, k);
                }
                llpipe_rows(
                    kind,
                    (*w).data,
                    (*w).nb[1],
                    r0,
                    r1,
                    (k / 32) as c_int,
                    q.as_ptr() as *const c_void,
                    row,
                    n as c_int,
                    (*dst).data as *mut f32,
                    (*dst).nb[1] / 4,
                    scratch.as_mut_ptr() as *mut c_void,
                );
            })
        });
    }
}
