//! Graphs that run: a [`Plan`] owns the context, the compute buffer and
//! the backend of a graph it builds once and runs many times; a
//! [`Persistent`] set owns tensors that live as long as it (a KV cache).

use std::cell::Cell;
use std::marker::PhantomData;
use std::ptr::NonNull;

use crate::{err, sys, Backend, Buffer, Context, Error, ErrorKind, Graph, Tensor, TensorMut, Type};

// ---- graph allocator ----

/// Places a graph's intermediate tensors in one compute buffer that is
/// reserved once for the largest graph and reused for every later graph.
/// Private: allocating another graph may move the buffer, so only [`Plan`],
/// which forgets the old graph first, uses it.
struct Allocator {
    raw: NonNull<sys::ggml_gallocr>,
}

impl Drop for Allocator {
    fn drop(&mut self) {
        // SAFETY: we own it.
        unsafe { sys::ggml_gallocr_free(self.raw.as_ptr()) }
    }
}

impl Allocator {
    fn new(backend: &Backend) -> Allocator {
        // SAFETY: live backend.
        let raw = unsafe {
            sys::ggml_gallocr_new(sys::ggml_backend_get_default_buffer_type(backend.raw))
        };
        Allocator {
            raw: NonNull::new(raw).expect("ggml_gallocr_new returned null"),
        }
    }
}

// ---- plan ----

/// What a [`Plan::build`] closure gets besides the context and graph. Its
/// type carries `'w: 'c` (an implied bound), so tensors that live for the
/// plan's `'w` (a model's weights) can be used in a graph of lifetime `'c`.
pub struct Scope<'c, 'w>(PhantomData<(&'c &'w (), Cell<&'c ()>)>);

/// The tensors a [`Plan::build`] closure hands back: inputs written before
/// each computation (by index, `None` for an absent optional one) and
/// outputs read after.
pub struct Built<'c> {
    /// Inputs, in the order [`Plan::input`] indexes them.
    pub inputs: Vec<Option<TensorMut<'c>>>,
    /// Outputs (added to the graph), in the order [`Plan::output`] indexes them.
    pub outputs: Vec<Tensor<'c>>,
}

/// The last graph built, as raw pointers into the plan's context.
struct Graphed {
    graph: NonNull<sys::ggml_cgraph>,
    inputs: Vec<Option<NonNull<sys::ggml_tensor>>>,
    outputs: Vec<NonNull<sys::ggml_tensor>>,
    allocated: bool,
}

/// A graph built once and computed many times (a generation step reuses one
/// for 256 tokens), with everything it needs: its metadata context, its
/// compute buffer, some state `S` it reads (a KV cache) and the backend.
///
/// Invariant behind the raw pointers it keeps: the graph and its inputs and
/// outputs live in `ctx`, which is reset only by [`Plan::build`] (which
/// forgets them first); tensors from elsewhere are either in `state` (only
/// ever shared, dropped with the plan) or live for `'w` (the [`Scope`]
/// bound), and `Plan` is invariant in `'w`, so they outlive every use of the
/// plan; their memory is allocated before the graph is (checked), so the
/// compute buffer holds only this graph's tensors, and it moves only in
/// [`Plan::reserve`] and [`Plan::alloc`], after the backend synchronized.
///
/// ```
/// use ggml::{Backend, Built, Plan, Type};
/// let mut plan = Plan::new(Backend::cpu(1).unwrap(), 16, ());
/// plan.build(|ctx, _g, _, _| {
///     let a = ctx.input(Type::F32, &[2, 2]); // [2, 2]
///     let x = ctx.input(Type::F32, &[2, 1]); // [2, 1]
///     let y = ctx.mul_mat(a, x); // [2, 1]: a · x
///     Built { inputs: vec![Some(a), Some(x)], outputs: vec![y] }
/// });
/// plan.alloc().unwrap();
/// plan.input(0).unwrap().set_f32(&[1.0, 2.0, 3.0, 4.0]); // rows (1,2) and (3,4)
/// plan.input(1).unwrap().set_f32(&[1.0, 1.0]);
/// plan.compute().unwrap();
/// assert_eq!(plan.output(0).to_f32(), vec![3.0, 7.0]);
/// ```
///
/// A tensor of the closure cannot escape it, and the plan cannot outlive
/// the weights its graph reads:
///
/// ```compile_fail
/// use ggml::{Backend, Built, Plan, Weight};
/// fn run(w: Weight) {
///     let mut plan = Plan::new(Backend::cpu(1).unwrap(), 16, ());
///     plan.build(|ctx, _, _, _| Built { inputs: vec![], outputs: vec![ctx.add(&w, &w)] });
///     drop(w); // error: `w` is borrowed by the plan
///     plan.compute().unwrap();
/// }
/// ```
pub struct Plan<'w, S> {
    // drop order: the graph's memory before the context, the backend last
    built: Option<Graphed>,
    alloc: Allocator,
    ctx: Context,
    state: S,
    backend: Backend,
    max_nodes: usize,
    _w: PhantomData<Cell<&'w ()>>,
}

impl<S> Drop for Plan<'_, S> {
    fn drop(&mut self) {
        // queued writes land before the memory they target is freed
        self.backend.synchronize();
    }
}

impl<'w, S> Plan<'w, S> {
    /// A plan computing on `backend`, for graphs of at most `max_nodes`
    /// nodes, reading `state`.
    pub fn new(backend: Backend, max_nodes: usize, state: S) -> Plan<'w, S> {
        Plan {
            built: None,
            alloc: Allocator::new(&backend),
            ctx: Context::new(max_nodes),
            state,
            backend,
            max_nodes,
            _w: PhantomData,
        }
    }
    /// The backend.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }
    /// The state graphs read.
    pub fn state(&self) -> &S {
        &self.state
    }
    /// See [`Context::use_own_kernels`].
    pub fn use_own_kernels(&self, on: bool) {
        self.ctx.use_own_kernels(on);
    }
    /// Builds a new graph (forgetting the last one): `f` adds to the empty
    /// graph what it needs, reading the state, and returns the inputs and
    /// outputs. Nothing is allocated yet (see [`Plan::alloc`]). Panics when
    /// the graph reads a tensor from outside the plan that has no memory.
    pub fn build<F>(&mut self, f: F)
    where
        F: for<'c> FnOnce(&'c Context, &Graph<'c>, &'c S, Scope<'c, 'w>) -> Built<'c>,
    {
        self.forget();
        self.ctx.reset();
        let g = self.ctx.graph(self.max_nodes);
        let built = f(&self.ctx, &g, &self.state, Scope(PhantomData));
        for &o in &built.outputs {
            g.expand(o);
        }
        let (ctx, backend) = (&self.ctx, &self.backend);
        g.for_each_tensor(|t| {
            // SAFETY: live tensors of the graph (a view's source too) and a
            // live backend; a tensor with data has the buffer holding it.
            let (root, has_memory, usable) = unsafe {
                let v = (*t).view_src;
                let root = if v.is_null() { t } else { v };
                let buf = (*root).buffer;
                let usable = !buf.is_null()
                    && sys::ggml_backend_supports_buft(
                        backend.raw,
                        sys::ggml_backend_buffer_get_type(buf),
                    );
                (root, !(*root).data.is_null(), usable)
            };
            assert!(
                ctx.owns(root) || has_memory,
                "graph reads a tensor from outside its plan that has no memory"
            );
            assert!(
                !has_memory || usable,
                "graph reads memory its backend {} cannot use",
                backend.name()
            );
        });
        self.built = Some(Graphed {
            graph: g.raw,
            inputs: built.inputs.iter().map(|t| t.map(|t| t.0.raw)).collect(),
            outputs: built.outputs.iter().map(|t| t.raw).collect(),
            allocated: false,
        });
    }
    /// Forgets the built graph, after queued writes into it have landed.
    fn forget(&mut self) {
        if self.built.take().is_some() {
            self.backend.synchronize();
        }
    }
    fn graphed(&self) -> &Graphed {
        self.built.as_ref().expect("no graph built")
    }
    fn graph(&self) -> Graph<'_> {
        Graph {
            raw: self.graphed().graph,
            _owner: PhantomData,
        }
    }
    /// Fails, naming the first operation of the graph the backend cannot compute.
    pub fn check_supports(&self) -> Result<(), Error> {
        self.backend.check_supports(&self.graph())
    }
    /// Number of compute nodes of the graph.
    pub fn n_nodes(&self) -> usize {
        self.graph().n_nodes()
    }
    /// Sizes the compute buffer for the built graph (build the worst case
    /// first); the graph stays unallocated.
    pub fn reserve(&mut self) -> Result<(), Error> {
        self.backend.synchronize();
        let g = self.graphed().graph;
        if let Some(b) = &mut self.built {
            b.allocated = false;
        }
        // SAFETY: live allocator and graph; no allocated graph uses the
        // buffer any more (the flag above), and the backend is idle.
        if unsafe { sys::ggml_gallocr_reserve(self.alloc.raw.as_ptr(), g.as_ptr()) } {
            Ok(())
        } else {
            err(ErrorKind::Alloc(0))
        }
    }
    /// Gives the built graph's tensors memory in the compute buffer.
    pub fn alloc(&mut self) -> Result<(), Error> {
        self.backend.synchronize();
        let g = self.graphed().graph;
        // SAFETY: live allocator and graph; tensors from outside the plan
        // have memory (checked by build), so only this context's tensors
        // get memory here, and the backend is idle.
        if unsafe { sys::ggml_gallocr_alloc_graph(self.alloc.raw.as_ptr(), g.as_ptr()) } {
            if let Some(b) = &mut self.built {
                b.allocated = true;
            }
            Ok(())
        } else {
            err(ErrorKind::Alloc(0))
        }
    }
    /// Bytes of the compute buffer.
    pub fn buffer_size(&self) -> usize {
        // SAFETY: live allocator.
        unsafe { sys::ggml_gallocr_get_buffer_size(self.alloc.raw.as_ptr(), 0) }
    }
    /// Input `i` of the built graph (`None` where the closure gave none),
    /// to write before [`Plan::compute`].
    pub fn input(&self, i: usize) -> Option<TensorMut<'_>> {
        // SAFETY: a tensor of our context (plan invariant), borrowed from the plan.
        self.graphed().inputs[i].map(|t| TensorMut(unsafe { Tensor::from_raw(t) }))
    }
    /// Writes `v` into the I32 tensor `t`, a tensor of this plan's graph (an
    /// input), in the backend's order of work: a GPU queues the copy before
    /// its next computation instead of waiting for it (one round trip per
    /// step, not one per input; the bytes are copied and kept until the
    /// backend synchronizes); the CPU writes at once. Panics when `t` is not
    /// a tensor of the graph's context: only those are known to keep their
    /// memory until the plan next synchronizes (it does before it frees or
    /// moves memory, and before it goes).
    pub fn set_i32(&self, t: TensorMut, v: &[i32]) {
        self.queue(t, Type::I32, "set_i32", v)
    }
    /// Like [`Plan::set_i32`], for an I64 tensor.
    pub fn set_i64(&self, t: TensorMut, v: &[i64]) {
        self.queue(t, Type::I64, "set_i64", v)
    }
    /// Like [`Plan::set_i32`], for an F32 tensor.
    pub fn set_f32(&self, t: TensorMut, v: &[f32]) {
        self.queue(t, Type::F32, "set_f32", v)
    }
    /// Like [`Plan::set_i32`]: f32 values converted into an F16 tensor.
    pub fn set_f32_as_f16(&self, t: TensorMut, v: &[f32]) {
        let h = crate::to_f16(v);
        self.queue(t, Type::F16, "set_f32_as_f16", &h)
    }
    fn queue<T: crate::Scalar>(&self, t: TensorMut, ty: Type, what: &str, v: &[T]) {
        assert!(
            self.built.is_some() && self.ctx.owns(t.0.raw()),
            "{what} queued on a plan for a tensor not of its graph"
        );
        self.backend.queue(t, ty, what, v)
    }
    /// Output `i` of the built graph.
    pub fn output(&self, i: usize) -> Tensor<'_> {
        // SAFETY: as in `input`.
        unsafe { Tensor::from_raw(self.graphed().outputs[i]) }
    }
    /// Computes the built, allocated graph.
    pub fn compute(&self) -> Result<(), Error> {
        assert!(
            self.graphed().allocated,
            "compute of a graph never allocated"
        );
        // SAFETY: every tensor of the graph has memory: ours in the compute
        // buffer (allocated above), the others checked by build and kept
        // alive by the plan invariant.
        unsafe { self.backend.compute(&self.graph()) }
    }
}

// ---- persistent tensors ----

/// Tensors that keep their data as long as this set lives (a KV cache): a
/// context and one zeroed backend buffer, with the tensors handed out by
/// borrow. Graphs may write them ([`TensorMut`]).
pub struct Persistent {
    // drop order: the buffer, then the metadata
    _buf: Buffer,
    ctx: Context,
    tensors: Vec<NonNull<sys::ggml_tensor>>,
}

impl Persistent {
    /// Allocates tensors of these types and shapes in one zeroed buffer of
    /// `backend`.
    pub fn new(backend: &Backend, specs: &[(Type, Vec<i64>)]) -> Result<Persistent, Error> {
        let ctx = Context::new(specs.len() + 1);
        let tensors = specs
            .iter()
            .map(|(ty, ne)| ctx.tensor(*ty, ne).0.raw)
            .collect();
        // SAFETY: live context and backend.
        let b = unsafe { sys::ggml_backend_alloc_ctx_tensors(ctx.ptr(), backend.raw) };
        let raw = NonNull::new(b).ok_or(Error {
            kind: ErrorKind::Alloc(0),
        })?;
        // SAFETY: fresh buffer, no computation uses it.
        unsafe { sys::ggml_backend_buffer_clear(raw.as_ptr(), 0) };
        Ok(Persistent {
            _buf: Buffer::wrap(raw),
            ctx,
            tensors,
        })
    }
    /// Tensor `i` (in the order given to [`Persistent::new`]).
    pub fn get(&self, i: usize) -> TensorMut<'_> {
        let _ = &self.ctx;
        // SAFETY: a tensor of our context, allocated in our buffer by ggml
        // (writable), both alive while the borrow lasts.
        TensorMut(unsafe { Tensor::from_raw(self.tensors[i]) })
    }
}
