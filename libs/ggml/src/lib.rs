//! Safe wrapper over the vendored ggml of `llama-cpp-sys-2`.
//!
//! What the engine needs and nothing more: a [`Context`] that holds tensor
//! metadata and builds graphs (ops are its methods, each a few lines over the
//! C function), a CPU [`Backend`] with a persistent thread pool (or one on a
//! GPU [`Device`] in a GPU build), a [`Plan`] that owns a graph with its
//! compute buffer and runs it many times, [`Persistent`] tensors (a KV
//! cache), and a model's [`Weight`]s, read in place from a memory-mapped
//! GGUF ([`WeightLoader`]).
//!
//! Tensor shapes follow ggml: `ne[0]` is the innermost (contiguous) dimension,
//! so a matrix of `rows` rows of `cols` numbers is `[cols, rows]`.
//!
//! ```
//! use ggml::{Backend, Built, Plan, Type};
//! let mut plan = Plan::new(Backend::cpu(1).unwrap(), 16, ());
//! plan.build(|ctx, _g, _state, _| {
//!     let a = ctx.input(Type::F32, &[2, 2]); // [2, 2]
//!     let x = ctx.input(Type::F32, &[2, 1]); // [2, 1]
//!     let y = ctx.mul_mat(a, x); // [2, 1]: a · x
//!     Built { inputs: vec![Some(a), Some(x)], outputs: vec![y] }
//! });
//! plan.alloc().unwrap();
//! plan.input(0).unwrap().set_f32(&[1.0, 2.0, 3.0, 4.0]); // rows (1,2) and (3,4)
//! plan.input(1).unwrap().set_f32(&[1.0, 1.0]);
//! plan.compute().unwrap();
//! assert_eq!(plan.output(0).to_f32(), vec![3.0, 7.0]);
//! ```
//!
//! Soundness rests on the handle types, so that misuse does not compile:
//! a [`Tensor`] borrows what owns it (a context, a weight, a persistent
//! set), a [`Graph`] is invariant in the lifetime of the tensors it holds,
//! only a [`TensorMut`] (memory ggml allocated) can be written, and memory
//! is allocated only by owners that outlive their handles ([`Plan`],
//! [`Persistent`], [`WeightLoader`]). Views are checked against the tensor
//! they view. Each `unsafe` block states the invariant it relies on.
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::ffi::{c_int, c_void, CStr};
use std::fmt;
use std::marker::PhantomData;
use std::ptr::NonNull;

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
    /// A weight does not fit the file or its description (the message says how).
    Weight(String),
    /// An RPC worker (its `HOST:PORT`) cannot serve us (the message says why).
    Rpc(String, String),
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
            ErrorKind::Weight(m) => f.write_str(m),
            ErrorKind::Rpc(e, m) => write!(f, "RPC worker {e}: {m}"),
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
    /// 5-bit blocks of 32 with a scale.
    pub const Q5_0: Type = Type(sys::GGML_TYPE_Q5_0);
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

/// A read-only handle to a tensor, borrowed from what owns it: a
/// [`Context`] (graph nodes), a [`Weight`] or a [`Persistent`] set. It is
/// `Copy` and cannot outlive its owner, so it cannot be used after the
/// context is reset or dropped:
///
/// ```compile_fail
/// let mut ctx = ggml::Context::new(4);
/// let t = ctx.tensor(ggml::Type::F32, &[4]);
/// ctx.reset(); // error: `ctx` is borrowed by `t`
/// let _ = t.ne();
/// ```
///
/// Graphs read it; nothing writes its data through it (see [`TensorMut`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Tensor<'c> {
    raw: NonNull<sys::ggml_tensor>,
    /// Covariant in `'c`; not `Send` or `Sync` (weights move between
    /// buffers on the thread that runs the graphs, see [`Weight::move_to`]).
    _owner: PhantomData<&'c Context>,
}

/// A tensor whose data may be written: by the host ([`TensorMut::set_f32`],
/// [`Plan::set_i32`]) and by graphs ([`Context::cpy`],
/// [`Context::set_rows`]). Only tensors whose memory ggml allocated itself
/// get one (graph inputs, a [`Persistent`] set such as a KV cache); never a
/// [`Weight`], which may lie over a read-only file mapping.
///
/// ```compile_fail
/// fn write(w: &ggml::Weight) {
///     w.t().set_f32(&[0.0]); // error: no method `set_f32` on `Tensor`
/// }
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TensorMut<'c>(Tensor<'c>);

impl<'c> From<TensorMut<'c>> for Tensor<'c> {
    fn from(t: TensorMut<'c>) -> Tensor<'c> {
        t.0
    }
}

impl<'c> Tensor<'c> {
    /// # Safety
    /// `raw` is a live tensor that stays valid (metadata and, once
    /// allocated, data) for `'c`, and that graphs may only read unless it is
    /// wrapped in a [`TensorMut`] (see there).
    unsafe fn from_raw(raw: NonNull<sys::ggml_tensor>) -> Tensor<'c> {
        Tensor {
            raw,
            _owner: PhantomData,
        }
    }
    fn raw(self) -> *mut sys::ggml_tensor {
        self.raw.as_ptr()
    }
    fn meta(&self) -> &sys::ggml_tensor {
        // SAFETY: live for 'c (the borrow in the type). Metadata changes only
        // through ggml calls made on this thread (the handle is not Send),
        // none of which runs while this short borrow lives.
        unsafe { self.raw.as_ref() }
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
    /// Bytes the tensor's data spans.
    pub fn n_bytes(&self) -> usize {
        // SAFETY: live tensor.
        unsafe { sys::ggml_nbytes(self.raw()) }
    }
    /// Names the tensor (shown in ggml debug output); names over 63 bytes are cut.
    pub fn set_name(self, name: &str) -> Self {
        let c = std::ffi::CString::new(name.replace('\0', "")).unwrap_or_default();
        // SAFETY: ggml copies at most 63 bytes plus NUL into the metadata.
        unsafe { sys::ggml_set_name(self.raw(), c.as_ptr()) };
        self
    }
    /// Marks the tensor as a graph output (its memory is kept after compute).
    pub fn set_output(self) -> Self {
        // SAFETY: sets a flag in the live metadata.
        unsafe { sys::ggml_set_output(self.raw()) };
        self
    }
    /// Whether the tensor has memory (a buffer) yet.
    pub fn is_allocated(&self) -> bool {
        !self.meta().buffer.is_null() && !self.meta().data.is_null()
    }
    /// Reads `dst.len()` f32 values starting at element `offset` (an
    /// allocated F32 tensor).
    pub fn read_f32_at(&self, offset: usize, dst: &mut [f32]) {
        assert_eq!(
            self.ty(),
            Type::F32,
            "read_f32_at on a {:?} tensor",
            self.ty()
        );
        assert!(self.is_allocated(), "read of a tensor never allocated");
        assert!(
            self.is_contiguous()
                && offset
                    .checked_add(dst.len())
                    .is_some_and(|e| e <= self.n_elements()),
            "read of {}+{} from {:?}",
            offset,
            dst.len(),
            self.ne()
        );
        // SAFETY: the range lies in the tensor's contiguous data (checked),
        // which its buffer holds for 'c; `dst` has room for it.
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

impl<'c> TensorMut<'c> {
    /// The read-only handle (what ops take).
    pub fn t(self) -> Tensor<'c> {
        self.0
    }
    /// Names the tensor (see [`Tensor::set_name`]).
    pub fn set_name(self, name: &str) -> Self {
        self.0.set_name(name);
        self
    }
    /// Writes `bytes` (exactly [`Tensor::n_bytes`] of a contiguous,
    /// allocated tensor) at once, or on `backend`'s queue (see
    /// [`Plan::set_i32`]).
    fn write_via(self, backend: Option<&Backend>, bytes: &[u8]) {
        let t = self.0;
        assert!(t.is_allocated(), "tensor written before it was allocated");
        assert!(
            bytes.len() == t.n_bytes() && t.is_contiguous(),
            "tensor of {:?} {:?} written with {} bytes",
            t.ty(),
            t.ne(),
            bytes.len()
        );
        match backend {
            // SAFETY: the tensor's memory was allocated by ggml (the
            // TensorMut invariant) and lives for 'c; sizes checked; ggml
            // copies before it returns.
            None => unsafe {
                sys::ggml_backend_tensor_set(t.raw(), bytes.as_ptr().cast(), 0, bytes.len())
            },
            Some(b) => b.queue_write(t, bytes),
        }
    }
    /// `v` as bytes for this tensor, which must have type `ty` (`what`
    /// names the setter in the panic message).
    fn typed<'v, T: Scalar>(self, ty: Type, what: &str, v: &'v [T]) -> &'v [u8] {
        assert_eq!(self.0.ty(), ty, "{what} on a {:?} tensor", self.0.ty());
        // SAFETY: Scalar types have no padding; reinterpreting as bytes is sound.
        unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
    }
    /// Writes raw bytes (length must equal [`Tensor::n_bytes`]).
    pub fn set_bytes(self, bytes: &[u8]) {
        self.write_via(None, bytes)
    }
    /// Writes f32 values (an F32 tensor, exactly its element count).
    pub fn set_f32(self, v: &[f32]) {
        self.write_via(None, self.typed(Type::F32, "set_f32", v))
    }
    /// Writes i32 values (an I32 tensor).
    pub fn set_i32(self, v: &[i32]) {
        self.write_via(None, self.typed(Type::I32, "set_i32", v))
    }
    /// Writes f32 values converted to f16 (an F16 tensor).
    pub fn set_f32_as_f16(self, v: &[f32]) {
        let h = to_f16(v);
        self.write_via(None, self.typed(Type::F16, "set_f32_as_f16", &h))
    }
    /// Shape, `ne[0]` first.
    pub fn ne(&self) -> [i64; 4] {
        self.0.ne()
    }
    /// Reads the whole F32 tensor.
    pub fn to_f32(&self) -> Vec<f32> {
        self.0.to_f32()
    }
}

impl fmt::Debug for Tensor<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({:?} {:?})", self.ty(), self.ne())
    }
}

impl fmt::Debug for TensorMut<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TensorMut({:?} {:?})", self.0.ty(), self.0.ne())
    }
}

// ---- context ----

/// Tensor metadata and graph storage (no tensor data: a [`Plan`], a
/// [`Persistent`] set or a [`WeightLoader`] allocates that). Tensors and
/// graphs borrow it; [`Context::reset`] takes it mutably, so none survives.
pub struct Context {
    raw: NonNull<sys::ggml_context>,
    /// Whether [`Context::mul_mat`] may use our own CPU kernels
    /// ([`Context::use_own_kernels`]).
    own_kernels: std::cell::Cell<bool>,
}

// SAFETY: owned exclusively; ggml contexts have no thread affinity, and no
// handle into it (all borrow it) can exist when it moves.
unsafe impl Send for Context {}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: we own it; no handle borrows it any more.
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
    /// Forgets every tensor and graph, keeping the memory for the next
    /// graph (`&mut`: no handle into the context survives this).
    pub fn reset(&mut self) {
        // SAFETY: we own the context, and `&mut` means nothing borrows it.
        unsafe { sys::ggml_reset(self.ptr()) }
    }
    fn ptr(&self) -> *mut sys::ggml_context {
        self.raw.as_ptr()
    }
    /// Whether `t` is metadata in this context's arena.
    fn owns(&self, t: *const sys::ggml_tensor) -> bool {
        // SAFETY: live context.
        let (base, size) = unsafe {
            (
                sys::ggml_get_mem_buffer(self.ptr()) as usize,
                sys::ggml_get_mem_size(self.ptr()),
            )
        };
        (base..base + size).contains(&(t as usize))
    }
    fn wrap(&self, t: *mut sys::ggml_tensor) -> Tensor<'_> {
        let t = NonNull::new(t).expect("ggml op returned null (context full)");
        // SAFETY: a tensor of this context, borrowed from it; op results get
        // their memory from a graph allocator (they are read-only handles).
        unsafe { Tensor::from_raw(t) }
    }
    /// A new tensor of `ty` and shape `ne` (1 to 4 dims), without data; it
    /// gets memory when its graph is allocated (see [`Plan`]).
    pub fn tensor(&self, ty: Type, ne: &[i64]) -> TensorMut<'_> {
        assert!(
            (1..=4).contains(&ne.len()) && ne.iter().all(|&n| n >= 0),
            "bad shape {ne:?}"
        );
        assert!(ty.is_known(), "tensor of unknown type {ty:?}");
        // SAFETY: shape and type checked; ggml copies ne.
        let t = unsafe { sys::ggml_new_tensor(self.ptr(), ty.0, ne.len() as c_int, ne.as_ptr()) };
        TensorMut(self.wrap(t))
    }
    /// A new graph input: [`Context::tensor`] marked so its memory is not
    /// reused before it is read; write it after allocation.
    pub fn input(&self, ty: Type, ne: &[i64]) -> TensorMut<'_> {
        let t = self.tensor(ty, ne);
        // SAFETY: sets a flag in the live metadata.
        unsafe { sys::ggml_set_input(t.0.raw()) };
        t
    }
    /// A new empty graph with room for `size` nodes.
    pub fn graph(&self, size: usize) -> Graph<'_> {
        // SAFETY: the context was sized for it by `new`.
        let g = unsafe { sys::ggml_new_graph_custom(self.ptr(), size, false) };
        Graph {
            raw: NonNull::new(g).expect("ggml_new_graph_custom returned null"),
            _owner: PhantomData,
        }
    }
}

// ---- ops: see ops.rs ----

mod kernels;
mod memory;
mod ops;
mod plan;
pub mod rpc;

pub use memory::{
    release_file_pages, AlignedBytes, Buffer, FileMap, HostBytes, Weight, WeightLoader,
};
pub use plan::{Built, Persistent, Plan, Scope};

// ---- graphs ----

/// A computation graph in a [`Context`]. Invariant in `'g`: every tensor
/// added must live at least as long as every use of the graph, so a graph
/// cannot outlive a weight it reads:
///
/// ```compile_fail
/// fn keep<'g>(ctx: &'g ggml::Context, g: &ggml::Graph<'g>, w: ggml::Weight) {
///     g.expand(ctx.add(w.t(), w.t()));
///     drop(w); // error: `w` is borrowed by the graph
///     let _ = g.n_nodes();
/// }
/// ```
pub struct Graph<'g> {
    raw: NonNull<sys::ggml_cgraph>,
    _owner: PhantomData<std::cell::Cell<&'g Context>>,
}

impl<'g> Graph<'g> {
    /// Adds `t` and everything it depends on.
    pub fn expand(&self, t: impl Into<Tensor<'g>>) {
        // SAFETY: live graph and tensor (both borrow for 'g).
        unsafe { sys::ggml_build_forward_expand(self.raw.as_ptr(), t.into().raw()) }
    }
    /// Number of compute nodes.
    pub fn n_nodes(&self) -> usize {
        // SAFETY: live graph.
        unsafe { sys::ggml_graph_n_nodes(self.raw.as_ptr()) as usize }
    }
    /// The nodes and their sources.
    fn for_each_tensor(&self, mut f: impl FnMut(*mut sys::ggml_tensor)) {
        for i in 0..self.n_nodes() {
            // SAFETY: i < n_nodes; nodes and their sources are live tensors.
            unsafe {
                let t = sys::ggml_graph_node(self.raw.as_ptr(), i as c_int);
                f(t);
                for &s in (*t).src.iter().filter(|s| !s.is_null()) {
                    f(s);
                }
            }
        }
    }
}

// ---- backend ----

/// A compute backend: the CPU, with a thread pool kept for its lifetime, or
/// a GPU [`Device`]. Graphs run through a [`Plan`] that owns it.
pub struct Backend {
    raw: sys::ggml_backend_t,
    pool: *mut sys::ggml_threadpool,
    /// Bytes of writes queued on a GPU backend's stream ([`Plan::set_i32`]),
    /// kept until the backend is synchronized: ggml does not promise that
    /// an asynchronous copy has read its source when it returns.
    staged: std::cell::RefCell<Vec<Vec<u8>>>,
}

// SAFETY: owned exclusively; the staged bytes are owned. Not Sync: ggml
// backends are used from one thread at a time.
unsafe impl Send for Backend {}

impl Drop for Backend {
    fn drop(&mut self) {
        // SAFETY: we own both; queued writes finish before their bytes and
        // the backend go; the backend goes first, it references the pool.
        unsafe {
            sys::ggml_backend_synchronize(self.raw);
            sys::ggml_backend_free(self.raw);
            if !self.pool.is_null() {
                sys::ggml_threadpool_free(self.pool);
            }
        }
    }
}

impl Backend {
    fn new(raw: sys::ggml_backend_t, pool: *mut sys::ggml_threadpool) -> Backend {
        Backend {
            raw,
            pool,
            staged: Default::default(),
        }
    }
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
            Ok(Backend::new(raw, pool))
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
        Ok(Backend::new(raw, std::ptr::null_mut()))
    }
    /// The backend's name (`CPU`, `CUDA0`, ...).
    pub fn name(&self) -> String {
        // SAFETY: live backend; ggml returns a static string.
        unsafe { cstr(sys::ggml_backend_name(self.raw)) }
    }
    fn is_cpu(&self) -> bool {
        // SAFETY: live backend.
        unsafe { sys::ggml_backend_is_cpu(self.raw) }
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
    /// Queues a write of `bytes` (checked by the caller to be exactly `t`'s
    /// allocated, contiguous data) on this backend's stream.
    fn queue_write(&self, t: Tensor, bytes: &[u8]) {
        if self.is_cpu() {
            // The CPU backend has no queue: ggml writes at once.
            // SAFETY: as in TensorMut::write_via.
            unsafe { sys::ggml_backend_tensor_set(t.raw(), bytes.as_ptr().cast(), 0, bytes.len()) };
            return;
        }
        let copy = bytes.to_vec();
        // SAFETY: the destination as in TensorMut::write_via, and it stays
        // allocated until the backend is synchronized (a Plan synchronizes
        // before it frees or moves memory); the source is `copy`, kept in
        // `staged` (its heap bytes do not move) until then.
        unsafe {
            sys::ggml_backend_tensor_set_async(
                self.raw,
                t.raw(),
                copy.as_ptr().cast(),
                0,
                copy.len(),
            )
        };
        self.staged.borrow_mut().push(copy);
    }
    /// Waits for queued work, then drops the staged bytes.
    fn synchronize(&self) {
        // SAFETY: live backend.
        unsafe { sys::ggml_backend_synchronize(self.raw) };
        self.staged.borrow_mut().clear();
    }
    /// Writes `v` (elements of type `ty`; `what` names the setter in a
    /// panic) into `t` in this backend's order of work: a GPU queues the
    /// copy before its next computation instead of waiting for it (the
    /// bytes are copied and kept until the backend synchronizes); the CPU
    /// writes at once. Private: only a [`Plan`] queues writes, into tensors
    /// of its own graph, whose memory outlives its next synchronization.
    fn queue<T: Scalar>(&self, t: TensorMut, ty: Type, what: &str, v: &[T]) {
        t.write_via(Some(self), t.typed(ty, what, v))
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
    /// Computes every node of `g`, then drops the staged input bytes (ggml
    /// synchronizes before it returns).
    ///
    /// # Safety
    /// Every tensor of `g` is allocated, in memory that lives until this returns.
    unsafe fn compute(&self, g: &Graph) -> Result<(), Error> {
        // SAFETY: per the contract.
        let s = unsafe { sys::ggml_backend_graph_compute(self.raw, g.raw.as_ptr()) };
        self.synchronize();
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
