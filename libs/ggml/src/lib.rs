//! Safe wrapper over the vendored ggml of `llama-cpp-sys-2`.
//!
//! What the engine needs and nothing more: a [`Context`] that holds tensor
//! metadata and builds graphs (ops are its methods, each a few lines over the
//! C function), a CPU [`Backend`] with a persistent thread pool (or one on a
//! GPU [`Device`] in a GPU build), [`Buffer`]s
//! (one can wrap caller-owned bytes, e.g. a memory-mapped GGUF, so weights are
//! read in place), and an [`Allocator`] that places a graph's intermediate
//! tensors in one reusable compute buffer.
//!
//! Tensor shapes follow ggml: `ne[0]` is the innermost (contiguous) dimension,
//! so a matrix of `rows` rows of `cols` numbers is `[cols, rows]`.
//!
//! ```
//! use ggml::{Allocator, Backend, Context, Type};
//! let backend = Backend::cpu(1).unwrap();
//! let ctx = Context::new(16);
//! let a = ctx.tensor(Type::F32, &[2, 2]); // [2, 2]
//! let x = ctx.tensor(Type::F32, &[2, 1]); // [2, 1]
//! let y = ctx.mul_mat(a, x); // [2, 1]: a · x
//! let g = ctx.graph(16);
//! g.expand(y);
//! let mut alloc = Allocator::new(&backend);
//! alloc.alloc(&g).unwrap();
//! a.set_f32(&[1.0, 2.0, 3.0, 4.0]); // rows (1,2) and (3,4)
//! x.set_f32(&[1.0, 1.0]);
//! backend.compute(&g).unwrap();
//! assert_eq!(y.to_f32(), vec![3.0, 7.0]);
//! ```
//!
//! Handles ([`Tensor`], [`Graph`]) are plain pointers into the [`Context`]
//! that made them; they stay valid while that context lives, and the engine
//! keeps every context alive longer than the handles it hands out.
#![deny(missing_docs)]

use std::ffi::{c_int, c_void, CStr};
use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use llama_cpp_sys_2 as sys;

// ---- errors ----

/// An error from ggml: allocation or computation failed.
#[derive(Debug)]
pub struct Error {
    /// What went wrong.
    pub kind: ErrorKind,
}

/// The kinds of [`Error`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A backend could not be started (name of the backend).
    Backend(String),
    /// A buffer of this many bytes could not be allocated.
    Alloc(usize),
    /// Graph computation returned a non-zero ggml status.
    Compute(i32),
    /// Bytes given for a buffer are not aligned to 32 bytes.
    Misaligned,
    /// The backend cannot compute an operation (backend, op, tensor name).
    Unsupported(String, String, String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Backend(n) => write!(f, "cannot start ggml backend {n}"),
            ErrorKind::Alloc(n) => write!(f, "cannot allocate a ggml buffer of {n} bytes"),
            ErrorKind::Compute(s) => write!(f, "ggml graph computation failed with status {s}"),
            ErrorKind::Misaligned => write!(f, "buffer bytes are not 32-byte aligned"),
            ErrorKind::Unsupported(b, op, t) => {
                write!(f, "ggml backend {b} cannot compute {op} (tensor {t:?})")
            }
        }
    }
}

impl std::error::Error for Error {}

fn err<T>(kind: ErrorKind) -> Result<T, Error> {
    Err(Error { kind })
}

// ---- types ----

/// A ggml element type (`ggml_type`), e.g. [`Type::F16`] or [`Type::Q4_1`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Type(pub u32);

impl Type {
    /// 32-bit float.
    pub const F32: Type = Type(sys::GGML_TYPE_F32);
    /// 16-bit float.
    pub const F16: Type = Type(sys::GGML_TYPE_F16);
    /// 4-bit blocks of 32 with a scale.
    pub const Q4_0: Type = Type(sys::GGML_TYPE_Q4_0);
    /// 4-bit blocks of 32 with a scale and a minimum.
    pub const Q4_1: Type = Type(sys::GGML_TYPE_Q4_1);
    /// 8-bit blocks of 32 with a scale.
    pub const Q8_0: Type = Type(sys::GGML_TYPE_Q8_0);
    /// 32-bit signed integer.
    pub const I32: Type = Type(sys::GGML_TYPE_I32);
    /// 64-bit signed integer.
    pub const I64: Type = Type(sys::GGML_TYPE_I64);

    /// Whether ggml knows this type (ids from a file may be anything).
    pub fn is_known(self) -> bool {
        self.0 < sys::GGML_TYPE_COUNT && self.block_size() > 0 && self.type_size() > 0
    }
    /// Elements per block (1 for plain types, 0 for ids ggml does not know).
    pub fn block_size(self) -> usize {
        if self.0 >= sys::GGML_TYPE_COUNT {
            return 0;
        }
        // SAFETY: the id is below GGML_TYPE_COUNT; ggml returns 0 for removed types.
        (unsafe { sys::ggml_blck_size(self.0) }) as usize
    }
    /// Bytes per block (0 for ids ggml does not know).
    pub fn type_size(self) -> usize {
        if self.0 >= sys::GGML_TYPE_COUNT {
            return 0;
        }
        // SAFETY: as above.
        unsafe { sys::ggml_type_size(self.0) }
    }
    /// Bytes of a row of `n` elements (`n` a multiple of the block size).
    pub fn row_size(self, n: usize) -> usize {
        let b = self.block_size().max(1);
        assert!(
            n % b == 0,
            "row of {n} {self:?} elements is not whole blocks"
        );
        n / b * self.type_size()
    }
    /// ggml's name for the type (`"q4_1"`), or `type=NN` when unknown.
    pub fn name(self) -> String {
        if !self.is_known() {
            return format!("type={}", self.0);
        }
        // SAFETY: known type; ggml returns a static C string.
        unsafe { CStr::from_ptr(sys::ggml_type_name(self.0)) }
            .to_string_lossy()
            .into_owned()
    }
}

impl fmt::Debug for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// RoPE layout: which elements of a head rotate together.
///
/// Getting this wrong does not fail: it silently produces fluent-looking
/// garbage. Llama GGUFs store Q/K permuted for [`RopeMode::Normal`] (adjacent
/// pairs); Qwen/Gemma/Phi use [`RopeMode::Neox`] (element i with i + n/2).
/// Upstream: llama.cpp `llama_model_rope_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeMode {
    /// Rotate pairs (2i, 2i+1) — GGML_ROPE_TYPE_NORMAL (0).
    Normal,
    /// Rotate pairs (i, i + n_dims/2) — GGML_ROPE_TYPE_NEOX (2).
    Neox,
}

/// RoPE frequency parameters (see ggml `ggml_rope_ext`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    /// Number of rotated dimensions of each head (≤ head_dim).
    pub n_dims: i32,
    /// Pair layout.
    pub mode: RopeMode,
    /// Training context length (YaRN), `n_ctx_orig`.
    pub n_ctx_orig: i32,
    /// θ base, e.g. 10000 or 100000.
    pub freq_base: f32,
    /// 1 / linear scaling factor.
    pub freq_scale: f32,
    /// YaRN extrapolation mix (0 when not YaRN).
    pub ext_factor: f32,
    /// Magnitude scale.
    pub attn_factor: f32,
    /// YaRN β fast.
    pub beta_fast: f32,
    /// YaRN β slow.
    pub beta_slow: f32,
}

impl Rope {
    /// Plain RoPE with the given dims, layout and base, no scaling.
    pub fn new(n_dims: i32, mode: RopeMode, freq_base: f32) -> Rope {
        Rope {
            n_dims,
            mode,
            n_ctx_orig: 0,
            freq_base,
            freq_scale: 1.0,
            ext_factor: 0.0,
            attn_factor: 1.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
        }
    }
}

// ---- tensors ----

/// A handle to a tensor of a [`Context`] (see the crate doc on validity).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Tensor(NonNull<sys::ggml_tensor>);

// SAFETY: a tensor handle is a pointer to metadata; ggml has no thread-local
// state tied to it, and the engine never builds one graph from two threads.
unsafe impl Send for Tensor {}

impl Tensor {
    fn raw(self) -> *mut sys::ggml_tensor {
        self.0.as_ptr()
    }
    fn meta(&self) -> &sys::ggml_tensor {
        // SAFETY: handle validity (crate doc).
        unsafe { self.0.as_ref() }
    }
    /// Whether its elements lie one after the other, without gaps.
    pub fn is_contiguous(&self) -> bool {
        // SAFETY: reads the live tensor's shape and strides.
        unsafe { sys::ggml_is_contiguous(self.raw()) }
    }
    /// Shape, `ne[0]` first.
    pub fn ne(&self) -> [i64; 4] {
        self.meta().ne
    }
    /// Strides in bytes, `nb[0]` first.
    pub fn nb(&self) -> [usize; 4] {
        self.meta().nb
    }
    /// Element type.
    pub fn ty(&self) -> Type {
        Type(self.meta().type_)
    }
    /// Number of elements.
    pub fn n_elements(&self) -> usize {
        self.ne().iter().product::<i64>() as usize
    }
    /// Bytes the tensor's data occupies.
    pub fn n_bytes(&self) -> usize {
        // SAFETY: handle validity.
        unsafe { sys::ggml_nbytes(self.raw()) }
    }
    /// Names the tensor (shown in ggml debug output); names over 63 bytes are cut.
    pub fn set_name(self, name: &str) -> Tensor {
        let c = std::ffi::CString::new(name.replace('\0', "")).unwrap_or_default();
        // SAFETY: ggml copies at most 63 bytes plus NUL.
        unsafe { sys::ggml_set_name(self.raw(), c.as_ptr()) };
        self
    }
    /// Marks the tensor as a graph input (its memory is not reused before it is read).
    pub fn set_input(self) -> Tensor {
        // SAFETY: handle validity.
        unsafe { sys::ggml_set_input(self.raw()) };
        self
    }
    /// Marks the tensor as a graph output (its memory is kept after compute).
    pub fn set_output(self) -> Tensor {
        // SAFETY: handle validity.
        unsafe { sys::ggml_set_output(self.raw()) };
        self
    }
    /// Whether the tensor has memory (a buffer) yet.
    pub fn is_allocated(&self) -> bool {
        !self.meta().buffer.is_null() || !self.meta().data.is_null()
    }
    /// Writes `bytes` (exactly [`Tensor::n_bytes`]): at once, or queued on
    /// `backend`'s stream when it has one (see [`Backend::set_i32`]).
    fn write_via(&self, backend: Option<sys::ggml_backend_t>, bytes: &[u8]) {
        assert!(
            self.is_allocated(),
            "tensor written before it was allocated"
        );
        assert_eq!(
            bytes.len(),
            self.n_bytes(),
            "tensor of {:?} {:?} written with {} bytes",
            self.ty(),
            self.ne(),
            bytes.len()
        );
        let (data, n) = (bytes.as_ptr().cast(), bytes.len());
        // SAFETY: sizes checked; the backend copies (or stages) the bytes
        // before it returns.
        unsafe {
            match backend {
                None => sys::ggml_backend_tensor_set(self.raw(), data, 0, n),
                Some(b) => sys::ggml_backend_tensor_set_async(b, self.raw(), data, 0, n),
            }
        }
    }
    /// `v` as bytes for this tensor, which must have type `ty` (`what`
    /// names the setter in the panic message).
    fn typed<'v, T: Scalar>(&self, ty: Type, what: &str, v: &'v [T]) -> &'v [u8] {
        assert_eq!(self.ty(), ty, "{what} on a {:?} tensor", self.ty());
        // SAFETY: Scalar types have no padding; reinterpreting as bytes is sound.
        unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
    }
    /// Writes raw bytes (length must equal [`Tensor::n_bytes`]).
    pub fn set_bytes(&self, bytes: &[u8]) {
        self.write_via(None, bytes)
    }
    /// Writes f32 values (an F32 tensor, exactly its element count).
    pub fn set_f32(&self, v: &[f32]) {
        self.write_via(None, self.typed(Type::F32, "set_f32", v))
    }
    /// Writes i32 values (an I32 tensor).
    pub fn set_i32(&self, v: &[i32]) {
        self.write_via(None, self.typed(Type::I32, "set_i32", v))
    }
    /// Writes f32 values converted to f16 (an F16 tensor).
    pub fn set_f32_as_f16(&self, v: &[f32]) {
        let h = to_f16(v);
        self.write_via(None, self.typed(Type::F16, "set_f32_as_f16", &h))
    }
    /// Reads `dst.len()` f32 values starting at element `offset` (an F32 tensor).
    pub fn read_f32_at(&self, offset: usize, dst: &mut [f32]) {
        assert_eq!(
            self.ty(),
            Type::F32,
            "read_f32_at on a {:?} tensor",
            self.ty()
        );
        assert!(
            offset + dst.len() <= self.n_elements(),
            "read of {}+{} from {:?}",
            offset,
            dst.len(),
            self.ne()
        );
        // SAFETY: range checked against the tensor's size.
        unsafe {
            sys::ggml_backend_tensor_get(
                self.raw(),
                dst.as_mut_ptr().cast(),
                offset * 4,
                dst.len() * 4,
            )
        };
    }
    /// Reads the whole F32 tensor.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut v = vec![0.0; self.n_elements()];
        self.read_f32_at(0, &mut v);
        v
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({:?} {:?})", self.ty(), self.ne())
    }
}

// ---- context ----

/// Tensor metadata and graph storage (no tensor data: buffers hold that).
pub struct Context {
    raw: NonNull<sys::ggml_context>,
    /// Whether [`Context::mul_mat`] may use our own CPU kernels
    /// ([`Context::use_own_kernels`]).
    own_kernels: std::cell::Cell<bool>,
}

// SAFETY: owned exclusively; ggml contexts have no thread affinity.
unsafe impl Send for Context {}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: we own it.
        unsafe { sys::ggml_free(self.raw.as_ptr()) }
    }
}

impl Context {
    /// A context with room for `max_tensors` tensors and one graph of as many nodes.
    pub fn new(max_tensors: usize) -> Context {
        // SAFETY: pure size computations.
        let mem = unsafe {
            max_tensors * sys::ggml_tensor_overhead()
                + sys::ggml_graph_overhead_custom(max_tensors, false)
        };
        let params = sys::ggml_init_params {
            mem_size: mem + 1024,
            mem_buffer: std::ptr::null_mut(),
            no_alloc: true,
        };
        // SAFETY: valid params; ggml allocates the metadata arena.
        let raw = unsafe { sys::ggml_init(params) };
        Context {
            raw: NonNull::new(raw).expect("ggml_init returned null (out of memory)"),
            own_kernels: std::cell::Cell::new(false),
        }
    }
    /// Lets [`Context::mul_mat`] build our own CPU kernels (custom ops) where
    /// they are faster and equal to ggml's bit for bit (see `kernels`). Only
    /// for graphs computed on a CPU backend: other backends lack custom ops.
    pub fn use_own_kernels(&self, on: bool) {
        self.own_kernels.set(on);
    }
    /// Forgets every tensor and graph (their handles must not be used again),
    /// keeping the memory for the next graph.
    pub fn reset(&mut self) {
        // SAFETY: we own the context; `&mut` means no op is being built.
        unsafe { sys::ggml_reset(self.ptr()) }
    }
    fn ptr(&self) -> *mut sys::ggml_context {
        self.raw.as_ptr()
    }
    fn wrap(&self, t: *mut sys::ggml_tensor) -> Tensor {
        Tensor(NonNull::new(t).expect("ggml op returned null (context full)"))
    }
    /// A new tensor of `ty` and shape `ne` (1 to 4 dims), without data.
    pub fn tensor(&self, ty: Type, ne: &[i64]) -> Tensor {
        assert!(
            (1..=4).contains(&ne.len()) && ne.iter().all(|&n| n >= 0),
            "bad shape {ne:?}"
        );
        // SAFETY: shape checked; ggml copies ne.
        self.wrap(unsafe { sys::ggml_new_tensor(self.ptr(), ty.0, ne.len() as c_int, ne.as_ptr()) })
    }
    /// A new empty graph with room for `size` nodes.
    pub fn graph(&self, size: usize) -> Graph {
        // SAFETY: the context was sized for it by `new`.
        let g = unsafe { sys::ggml_new_graph_custom(self.ptr(), size, false) };
        Graph {
            raw: NonNull::new(g).expect("ggml_new_graph_custom returned null"),
        }
    }
    /// Allocates every tensor of this context in one new buffer of `backend`, zeroed.
    pub fn alloc_tensors(&self, backend: &Backend) -> Result<Buffer, Error> {
        // SAFETY: live context and backend.
        let b = unsafe { sys::ggml_backend_alloc_ctx_tensors(self.ptr(), backend.raw) };
        let raw = NonNull::new(b).ok_or(Error {
            kind: ErrorKind::Alloc(0),
        })?;
        // SAFETY: fresh buffer.
        unsafe { sys::ggml_backend_buffer_clear(raw.as_ptr(), 0) };
        Ok(Buffer {
            raw,
            _owner: None,
            writable: false,
        })
    }
    /// Allocates every tensor of this context that has no memory yet in one
    /// new buffer in `dev`'s memory (not cleared: the caller writes them all).
    pub fn alloc_tensors_on(&self, dev: Device) -> Result<Buffer, Error> {
        // SAFETY: live context; the device's buffer type lives as long as ggml.
        let b = unsafe {
            sys::ggml_backend_alloc_ctx_tensors_from_buft(
                self.ptr(),
                sys::ggml_backend_dev_buffer_type(dev.raw),
            )
        };
        let raw = NonNull::new(b).ok_or(Error {
            kind: ErrorKind::Alloc(0),
        })?;
        Ok(Buffer {
            raw,
            _owner: None,
            writable: false,
        })
    }
}

// ---- ops: see ops.rs ----

mod kernels;
mod ops;

// ---- graphs ----

/// A computation graph in a [`Context`] (a handle, valid while the context
/// lives and is not reset, like [`Tensor`]).
#[derive(Clone, Copy)]
pub struct Graph {
    raw: NonNull<sys::ggml_cgraph>,
}

impl Graph {
    /// Adds `t` and everything it depends on.
    pub fn expand(&self, t: Tensor) {
        // SAFETY: live graph and tensor.
        unsafe { sys::ggml_build_forward_expand(self.raw.as_ptr(), t.raw()) }
    }
    /// Number of compute nodes.
    pub fn n_nodes(&self) -> usize {
        // SAFETY: live graph.
        unsafe { sys::ggml_graph_n_nodes(self.raw.as_ptr()) as usize }
    }
}

// ---- backend ----

/// A compute backend: the CPU, with a thread pool kept for its lifetime, or
/// a GPU [`Device`].
pub struct Backend {
    raw: sys::ggml_backend_t,
    pool: *mut sys::ggml_threadpool,
}

// SAFETY: owned exclusively; used from one thread at a time (&mut not needed by ggml).
unsafe impl Send for Backend {}

impl Drop for Backend {
    fn drop(&mut self) {
        // SAFETY: we own both; the backend goes first, it references the pool.
        unsafe {
            sys::ggml_backend_free(self.raw);
            if !self.pool.is_null() {
                sys::ggml_threadpool_free(self.pool);
            }
        }
    }
}

impl Backend {
    /// The CPU backend with `n_threads` worker threads in a persistent pool
    /// (no threads are created per graph).
    pub fn cpu(n_threads: usize) -> Result<Backend, Error> {
        errors_only_logs();
        let n = n_threads.clamp(1, 512) as c_int;
        // SAFETY: plain constructors; null checked.
        unsafe {
            let raw = sys::ggml_backend_cpu_init();
            if raw.is_null() {
                return err(ErrorKind::Backend("CPU".into()));
            }
            sys::ggml_backend_cpu_set_n_threads(raw, n);
            let mut params = sys::ggml_threadpool_params_default(n);
            let pool = sys::ggml_threadpool_new(&mut params);
            if !pool.is_null() {
                sys::ggml_backend_cpu_set_threadpool(raw, pool);
            }
            Ok(Backend { raw, pool })
        }
    }
    /// A backend computing on `dev` (a GPU: tensors of its graphs must live
    /// in that device's memory).
    pub fn on(dev: Device) -> Result<Backend, Error> {
        // SAFETY: the device handle comes from ggml's registry; null checked.
        let raw = unsafe { sys::ggml_backend_dev_init(dev.raw, std::ptr::null()) };
        if raw.is_null() {
            return err(ErrorKind::Backend(dev.name()));
        }
        Ok(Backend {
            raw,
            pool: std::ptr::null_mut(),
        })
    }
    /// The backend's name (`CPU`, `CUDA0`, ...).
    pub fn name(&self) -> String {
        // SAFETY: live backend; ggml returns a static string.
        unsafe { cstr(sys::ggml_backend_name(self.raw)) }
    }
    /// Fails, naming the first operation of `g` this backend cannot compute
    /// (a GPU backend lacks some op/type pairs the CPU has).
    pub fn check_supports(&self, g: &Graph) -> Result<(), Error> {
        for i in 0..g.n_nodes() {
            // SAFETY: i < n_nodes; live backend and graph.
            unsafe {
                let t = sys::ggml_graph_node(g.raw.as_ptr(), i as c_int);
                if !sys::ggml_backend_supports_op(self.raw, t) {
                    let op = cstr(sys::ggml_op_desc(t));
                    let name = cstr((*t).name.as_ptr());
                    return err(ErrorKind::Unsupported(self.name(), op, name));
                }
            }
        }
        Ok(())
    }
    /// Writes `v` into the I32 tensor `t` in this backend's order of work: a
    /// GPU queues the copy before its next computation instead of waiting
    /// for it (one round trip per step, not one per input); the CPU writes
    /// at once. `v` may be dropped on return.
    pub fn set_i32(&self, t: Tensor, v: &[i32]) {
        t.write_via(Some(self.raw), t.typed(Type::I32, "set_i32", v))
    }
    /// Like [`Backend::set_i32`], for an I64 tensor.
    pub fn set_i64(&self, t: Tensor, v: &[i64]) {
        t.write_via(Some(self.raw), t.typed(Type::I64, "set_i64", v))
    }
    /// Like [`Backend::set_i32`], for an F32 tensor.
    pub fn set_f32(&self, t: Tensor, v: &[f32]) {
        t.write_via(Some(self.raw), t.typed(Type::F32, "set_f32", v))
    }
    /// Like [`Backend::set_i32`]: f32 values converted into an F16 tensor.
    pub fn set_f32_as_f16(&self, t: Tensor, v: &[f32]) {
        let h = to_f16(v);
        t.write_via(Some(self.raw), t.typed(Type::F16, "set_f32_as_f16", &h))
    }
    /// On a CPU backend, whether matrix products take ggml's one-row
    /// ("reference") kernels for any number of rows: no tinyBLAS, tiled or
    /// fused kernels, which add in another order. A product row then equals
    /// the one a one-row batch gives, bit for bit (used to verify drafted
    /// tokens). No effect on other backends.
    pub fn set_reference_kernels(&self, on: bool) {
        // SAFETY: `raw` is a live backend; the setter is only called on a CPU
        // backend, which is what it requires.
        unsafe {
            if sys::ggml_backend_is_cpu(self.raw) {
                sys::ggml_backend_cpu_set_use_ref(self.raw, on);
            }
        }
    }
    /// Computes every node of `g` (all its tensors must be allocated).
    pub fn compute(&self, g: &Graph) -> Result<(), Error> {
        // SAFETY: live backend and graph.
        let s = unsafe { sys::ggml_backend_graph_compute(self.raw, g.raw.as_ptr()) };
        if s != 0 {
            return err(ErrorKind::Compute(s));
        }
        Ok(())
    }
}

/// Element types a tensor is written from: plain numbers without padding.
trait Scalar: Copy {}
impl Scalar for f32 {}
impl Scalar for i32 {}
impl Scalar for i64 {}
impl Scalar for u16 {}

/// `v` as IEEE half floats (ggml's rounding).
fn to_f16(v: &[f32]) -> Vec<u16> {
    let mut h = vec![0u16; v.len()];
    // SAFETY: both slices have v.len() elements; ggml_fp16_t is u16.
    unsafe { sys::ggml_fp32_to_fp16_row(v.as_ptr(), h.as_mut_ptr().cast(), v.len() as i64) };
    h
}

/// A NUL-terminated C string owned by ggml, as a Rust string ("" for null).
///
/// # Safety
/// `p` is null or points to a NUL-terminated string.
unsafe fn cstr(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    CStr::from_ptr(p).to_string_lossy().into_owned()
}

// ---- devices ----

/// An accelerator ggml was built with (CUDA, Metal or Vulkan builds), as
/// ggml's backend registry lists it. A plain handle: devices live as long
/// as the process.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Device {
    raw: sys::ggml_backend_dev_t,
}

// SAFETY: a device handle is an immutable registry entry.
unsafe impl Send for Device {}
// SAFETY: as above.
unsafe impl Sync for Device {}

impl Device {
    /// The first GPU device; `None` in a CPU-only build or when the GPU
    /// backend finds no device (no driver, no card).
    pub fn gpu() -> Option<Device> {
        errors_only_logs();
        // SAFETY: registry lookup; null when there is none.
        let raw = unsafe { sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_GPU) };
        (!raw.is_null()).then_some(Device { raw })
    }
    /// ggml's name for the device (`CUDA0`, `Metal`, `Vulkan0`).
    pub fn name(&self) -> String {
        // SAFETY: live device; ggml returns a string it owns.
        unsafe { cstr(sys::ggml_backend_dev_name(self.raw)) }
    }
    /// The driver's description (e.g. `NVIDIA H100 80GB HBM3`).
    pub fn description(&self) -> String {
        // SAFETY: as above.
        unsafe { cstr(sys::ggml_backend_dev_description(self.raw)) }
    }
    /// Free and total memory in bytes.
    pub fn memory(&self) -> (usize, usize) {
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: live device; two out-parameters.
        unsafe { sys::ggml_backend_dev_memory(self.raw, &mut free, &mut total) };
        (free, total)
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Device({} {})", self.name(), self.description())
    }
}

// ---- buffers ----

/// Backend memory holding tensor data. It may borrow caller-owned bytes
/// (kept alive by an `Arc` inside the buffer).
pub struct Buffer {
    raw: NonNull<sys::ggml_backend_buffer>,
    _owner: Option<Arc<dyn AsRef<[u8]> + Send + Sync>>,
    /// Host memory we may write into ([`Buffer::huge_pages`]).
    writable: bool,
}

// SAFETY: owned exclusively.
unsafe impl Send for Buffer {}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: we own the buffer; ggml does not free borrowed host memory.
        unsafe { sys::ggml_backend_buffer_free(self.raw.as_ptr()) }
    }
}

impl Buffer {
    /// A CPU buffer over `bytes` without copying (e.g. a memory-mapped file);
    /// ggml only reads tensors placed in it. The bytes must be 32-byte aligned.
    pub fn from_host_bytes(bytes: Arc<dyn AsRef<[u8]> + Send + Sync>) -> Result<Buffer, Error> {
        let s: &[u8] = (*bytes).as_ref();
        if (s.as_ptr() as usize) % 32 != 0 {
            return err(ErrorKind::Misaligned);
        }
        // SAFETY: the Arc keeps the bytes alive as long as the buffer; ggml
        // never writes to weight tensors.
        let b =
            unsafe { sys::ggml_backend_cpu_buffer_from_ptr(s.as_ptr() as *mut c_void, s.len()) };
        let raw = NonNull::new(b).ok_or(Error {
            kind: ErrorKind::Alloc(s.len()),
        })?;
        Ok(Buffer {
            raw,
            _owner: Some(bytes),
            writable: false,
        })
    }
    /// A new zeroed CPU buffer of `len` bytes in 2 MiB huge pages (see
    /// [`AlignedBytes::zeroed`]), to fill with [`Buffer::write`].
    pub fn huge_pages(len: usize) -> Result<Buffer, Error> {
        let bytes = AlignedBytes::zeroed(len).map_err(|_| Error {
            kind: ErrorKind::Alloc(len),
        })?;
        let mut b = Buffer::from_host_bytes(Arc::new(bytes))?;
        b.writable = true;
        Ok(b)
    }
    /// Copies `bytes` to byte `offset` of a [`Buffer::huge_pages`] buffer.
    /// Tensors placed over that range must not be in a running computation.
    pub fn write(&self, offset: usize, bytes: &[u8]) {
        assert!(self.writable, "write into a buffer not made by huge_pages");
        let end = offset.checked_add(bytes.len());
        assert!(
            end.is_some_and(|e| e <= self.size()),
            "write of {} bytes at {offset} outside buffer of {}",
            bytes.len(),
            self.size()
        );
        // SAFETY: range checked; the memory is our writable anonymous
        // mapping, and Rust holds no reference into it (ggml has pointers,
        // not used while no graph runs).
        unsafe {
            let base = sys::ggml_backend_buffer_get_base(self.raw.as_ptr()) as *mut u8;
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(offset), bytes.len());
        }
    }
    /// Size in bytes.
    pub fn size(&self) -> usize {
        // SAFETY: live buffer.
        unsafe { sys::ggml_backend_buffer_get_size(self.raw.as_ptr()) }
    }
    /// The address of byte `offset` for `t`; panics when `t` does not fit
    /// there (callers check ranges when they read the file).
    fn addr_for(&self, t: Tensor, offset: usize) -> *mut c_void {
        let end = offset.checked_add(t.n_bytes());
        assert!(
            end.is_some_and(|e| e <= self.size()),
            "tensor {:?} at {offset} outside buffer of {}",
            t,
            self.size()
        );
        // SAFETY: range checked; base is valid for `size` bytes.
        unsafe {
            let base = sys::ggml_backend_buffer_get_base(self.raw.as_ptr()) as *mut u8;
            base.add(offset).cast()
        }
    }
    /// Places `t` at byte `offset` of this buffer (no copy). Panics when it
    /// does not fit: callers check ranges when they read the file.
    pub fn place(&self, t: Tensor, offset: usize) {
        let addr = self.addr_for(t, offset);
        // SAFETY: `addr` lies in this buffer with room for `t`.
        unsafe { sys::ggml_backend_tensor_alloc(self.raw.as_ptr(), t.raw(), addr) };
    }
    /// Moves `t`, already placed in another host buffer, to byte `offset` of
    /// this one (no copy: write the bytes there first). Graphs built over
    /// `t` read the new place from their next computation; none may be
    /// running.
    pub fn replace(&self, t: Tensor, offset: usize) {
        assert!(t.is_allocated(), "replace of a tensor never placed");
        let addr = self.addr_for(t, offset);
        // SAFETY: `addr` lies in this buffer with room for `t`; both buffers
        // are CPU host buffers, which keep no per-tensor state (no
        // init_tensor), so pointing the tensor at the new memory is all
        // ggml_backend_tensor_alloc would do.
        unsafe {
            let raw = t.raw();
            (*raw).buffer = self.raw.as_ptr();
            (*raw).data = addr;
        }
    }
}

/// The CPU backend's extra weight buffer types (`CPU_REPACK` on x86 and
/// ARM): a weight uploaded into one is rearranged into interleaved blocks
/// that its matrix kernels read faster (Q4_0 and Q4_K on AVX2, more on ARM).
/// llama.cpp uses them by default; the data is a copy, not the mapped file.
pub struct Repack {
    dev: sys::ggml_backend_dev_t,
    bufts: Vec<sys::ggml_backend_buffer_type_t>,
}

impl Repack {
    /// The extra buffer types of the CPU device (empty when the build or the
    /// CPU has none).
    pub fn cpu() -> Repack {
        errors_only_logs();
        // SAFETY: registry lookups; the proc address has the documented type.
        unsafe {
            let dev = sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU);
            let mut bufts = vec![];
            if !dev.is_null() {
                let reg = sys::ggml_backend_dev_backend_reg(dev);
                let f = sys::ggml_backend_reg_get_proc_address(
                    reg,
                    c"ggml_backend_dev_get_extra_bufts".as_ptr(),
                );
                if !f.is_null() {
                    let f: unsafe extern "C" fn(
                        sys::ggml_backend_dev_t,
                    )
                        -> *mut sys::ggml_backend_buffer_type_t = std::mem::transmute(f);
                    let mut p = f(dev);
                    while !p.is_null() && !(*p).is_null() {
                        bufts.push(*p);
                        p = p.add(1);
                    }
                }
            }
            Repack { dev, bufts }
        }
    }

    /// The first extra buffer type whose kernels take `mul_mat(w, x)` for
    /// this weight (`w` not yet allocated), as llama.cpp picks it.
    pub fn choose(&self, w: Tensor) -> Option<RepackType> {
        if self.bufts.is_empty() || w.is_allocated() {
            return None;
        }
        let ne = w.ne();
        let scratch = Context::new(4);
        let x = scratch.tensor(Type::F32, &[ne[0], 512, ne[2], ne[3]]);
        let op = scratch.mul_mat(w, x);
        self.bufts.iter().copied().find_map(|buft| {
            // SAFETY: as llama.cpp does, give the weight a dummy buffer of
            // the type for the check and take it away again; nothing reads it.
            let ok = unsafe {
                let dummy = sys::ggml_backend_buft_alloc_buffer(buft, 0);
                if dummy.is_null() {
                    return None;
                }
                (*w.raw()).buffer = dummy;
                let ok = sys::ggml_backend_dev_supports_op(self.dev, op.raw());
                (*w.raw()).buffer = std::ptr::null_mut();
                sys::ggml_backend_buffer_free(dummy);
                ok
            };
            ok.then_some(RepackType(buft))
        })
    }
}

/// One extra weight buffer type (see [`Repack`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RepackType(sys::ggml_backend_buffer_type_t);

impl RepackType {
    /// Allocates one buffer of this type for `items` (unallocated tensors)
    /// and uploads each from its bytes in ggml's plain layout (exactly the
    /// tensor's size); the upload repacks.
    pub fn upload(self, items: &[(Tensor, &[u8])]) -> Result<Buffer, Error> {
        // SAFETY: sizes come from ggml for these tensors; every tensor is
        // placed inside the buffer at an aligned offset, then written with
        // exactly its own byte count.
        unsafe {
            let align = sys::ggml_backend_buft_get_alignment(self.0).max(1);
            let sizes: Vec<usize> = items
                .iter()
                .map(|(t, _)| {
                    sys::ggml_backend_buft_get_alloc_size(self.0, t.raw()).next_multiple_of(align)
                })
                .collect();
            let total: usize = sizes.iter().sum();
            let raw = sys::ggml_backend_buft_alloc_buffer(self.0, total.max(1));
            let raw = NonNull::new(raw).ok_or(Error {
                kind: ErrorKind::Alloc(total),
            })?;
            let buf = Buffer {
                raw,
                _owner: None,
                writable: false,
            };
            let base = sys::ggml_backend_buffer_get_base(raw.as_ptr()) as *mut u8;
            let mut off = 0;
            for ((t, bytes), size) in items.iter().zip(&sizes) {
                assert_eq!(bytes.len(), t.n_bytes(), "upload of {t:?}");
                let s = sys::ggml_backend_tensor_alloc(raw.as_ptr(), t.raw(), base.add(off).cast());
                if s != 0 {
                    return err(ErrorKind::Alloc(*size));
                }
                sys::ggml_backend_tensor_set(t.raw(), bytes.as_ptr().cast(), 0, bytes.len());
                off += size;
            }
            Ok(buf)
        }
    }
}

/// Alignment of [`AlignedBytes`]: a transparent huge page.
const HUGE_PAGE: usize = 2 << 20;

/// Owned bytes aligned to 2 MiB, in anonymous memory the kernel is asked to
/// back with huge pages (for reading a file into memory with `--no-mmap`).
pub struct AlignedBytes {
    map: NonNull<u8>, // start of the mapping, `map_len` bytes
    map_len: usize,
    ptr: NonNull<u8>, // aligned start of the data, `len` bytes
    len: usize,
}

// SAFETY: plain owned memory.
unsafe impl Send for AlignedBytes {}
// SAFETY: immutable after construction.
unsafe impl Sync for AlignedBytes {}

impl AlignedBytes {
    /// Reads all of `r` (exactly `len` bytes) into a new aligned allocation.
    pub fn read_exact(mut r: impl std::io::Read, len: usize) -> std::io::Result<AlignedBytes> {
        let me = AlignedBytes::zeroed(len)?;
        // SAFETY: we own `len` initialised (zeroed) bytes, and nothing else
        // refers to them yet.
        r.read_exact(unsafe { std::slice::from_raw_parts_mut(me.ptr.as_ptr(), len) })?;
        Ok(me)
    }

    /// `len` zero bytes, 2 MiB aligned, in memory the kernel is asked to back
    /// with huge pages (allocated when first written).
    pub fn zeroed(len: usize) -> std::io::Result<AlignedBytes> {
        let too_big = || std::io::Error::other(format!("cannot allocate {len} bytes"));
        let map_len = len.max(1).checked_add(HUGE_PAGE).ok_or_else(too_big)?;
        // SAFETY: a fresh private anonymous mapping (zero-filled by the
        // kernel, so every byte is initialised); checked for failure.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(too_big());
        }
        let map = NonNull::new(map.cast::<u8>()).ok_or_else(too_big)?;
        let ptr = map.as_ptr() as usize;
        let aligned = ptr.next_multiple_of(HUGE_PAGE);
        // SAFETY: `aligned..aligned + len` lies inside the mapping.
        let ptr = unsafe { NonNull::new_unchecked(map.as_ptr().add(aligned - ptr)) };
        // Weights are streamed through on every token: 2 MiB pages cut the
        // TLB misses of that walk (a hint; the kernel may ignore it).
        // SAFETY: the range is inside our mapping.
        unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_HUGEPAGE) };
        Ok(AlignedBytes {
            map,
            map_len,
            ptr,
            len,
        })
    }
}

/// Gives back the pages of `bytes` that lie wholly inside it (the pages at
/// its ends may hold other data and are kept), lowering the resident size.
///
/// # Safety
/// `bytes` must be part of a read-only mapping of a file that is not
/// modified: a later read faults the same content back in. (On anonymous
/// memory the pages would read back as zeros.)
pub unsafe fn release_file_pages(bytes: &[u8]) {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let start = (bytes.as_ptr() as usize).next_multiple_of(page);
    let end = (bytes.as_ptr() as usize + bytes.len()) / page * page;
    if end > start {
        // SAFETY: a page-aligned range inside `bytes`; per the contract it
        // is file-backed, so dropping its pages loses nothing.
        unsafe { libc::madvise(start as *mut c_void, end - start, libc::MADV_DONTNEED) };
    }
}

impl AsRef<[u8]> for AlignedBytes {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `len` initialised bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBytes {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.map.as_ptr().cast(), self.map_len) };
    }
}

// ---- graph allocator ----

/// Places a graph's intermediate tensors in one compute buffer that is
/// reserved once for the largest graph and reused for every later graph.
/// The buffer is freed with the allocator: keep it alive while a graph it
/// allocated is used.
pub struct Allocator {
    raw: NonNull<sys::ggml_gallocr>,
}

// SAFETY: owned exclusively.
unsafe impl Send for Allocator {}

impl Drop for Allocator {
    fn drop(&mut self) {
        // SAFETY: we own it.
        unsafe { sys::ggml_gallocr_free(self.raw.as_ptr()) }
    }
}

impl Allocator {
    /// An allocator for `backend`'s default buffer type.
    pub fn new(backend: &Backend) -> Allocator {
        // SAFETY: live backend.
        let raw = unsafe {
            sys::ggml_gallocr_new(sys::ggml_backend_get_default_buffer_type(backend.raw))
        };
        Allocator {
            raw: NonNull::new(raw).expect("ggml_gallocr_new returned null"),
        }
    }
    /// Sizes the compute buffer for `g` (call with the worst-case graph).
    pub fn reserve(&mut self, g: &Graph) -> Result<(), Error> {
        // SAFETY: live allocator and graph.
        if unsafe { sys::ggml_gallocr_reserve(self.raw.as_ptr(), g.raw.as_ptr()) } {
            Ok(())
        } else {
            err(ErrorKind::Alloc(0))
        }
    }
    /// Allocates `g`'s tensors that have no memory yet.
    pub fn alloc(&mut self, g: &Graph) -> Result<(), Error> {
        // SAFETY: live allocator and graph.
        if unsafe { sys::ggml_gallocr_alloc_graph(self.raw.as_ptr(), g.raw.as_ptr()) } {
            Ok(())
        } else {
            err(ErrorKind::Alloc(0))
        }
    }
    /// Bytes of the compute buffer.
    pub fn buffer_size(&self) -> usize {
        // SAFETY: live allocator.
        unsafe { sys::ggml_gallocr_get_buffer_size(self.raw.as_ptr(), 0) }
    }
}

/// The orthonormal `n × n` Walsh-Hadamard matrix (Sylvester construction,
/// scaled by 1/√n; `n` a power of two), row-major. It is its own inverse.
pub fn hadamard(n: usize) -> Vec<f32> {
    assert!(
        n.is_power_of_two(),
        "hadamard size {n} is not a power of two"
    );
    let mut h = vec![0f32; n * n];
    h[0] = 1.0 / (n as f32).sqrt();
    let mut s = 1;
    while s < n {
        for i in 0..s {
            for j in 0..s {
                let v = h[i * n + j];
                h[(i + s) * n + j] = v;
                h[i * n + j + s] = v;
                h[(i + s) * n + j + s] = -v;
            }
        }
        s *= 2;
    }
    h
}

/// Silences ggml's log output (it logs to stderr by default).
pub fn quiet_logs() {
    unsafe extern "C" fn drop_log(
        _level: sys::ggml_log_level,
        _text: *const std::ffi::c_char,
        _user: *mut c_void,
    ) {
    }
    // SAFETY: a valid callback that ignores everything.
    unsafe { sys::ggml_log_set(Some(drop_log), std::ptr::null_mut()) }
}

/// Keeps ggml's errors on stderr and drops its debug and info chatter (one
/// line per repacked tensor, buffer sizes); installed once by [`Backend::cpu`]
/// and [`Repack::cpu`] (a logger set later, such as llama.cpp's, replaces it).
fn errors_only_logs() {
    unsafe extern "C" fn log(
        level: sys::ggml_log_level,
        text: *const std::ffi::c_char,
        _user: *mut c_void,
    ) {
        if level == sys::GGML_LOG_LEVEL_ERROR && !text.is_null() {
            // SAFETY: ggml passes a NUL-terminated string.
            let t = unsafe { std::ffi::CStr::from_ptr(text) };
            eprint!("{}", t.to_string_lossy());
        }
    }
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: a valid callback; ggml copies the pointer.
    ONCE.call_once(|| unsafe { sys::ggml_log_set(Some(log), std::ptr::null_mut()) });
}

#[cfg(test)]
mod tests;
