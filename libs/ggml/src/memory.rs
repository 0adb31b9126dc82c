//! Memory for tensor data: host [`Buffer`]s (over a file mapping, or owned
//! huge pages), a model's [`Weight`]s and the [`WeightLoader`] that places
//! them, and the file mapping type whose pages may be given back.

use std::cell::RefCell;
use std::ffi::c_void;
use std::ops::Range;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::Arc;

use crate::{err, errors_only_logs, sys, Context, Device, Error, ErrorKind, Tensor, Type};

/// Bytes a model's weights may be read from in place.
pub type HostBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

// ---- buffers ----

/// What a buffer's memory is.
enum Owner {
    /// ggml allocated it (a backend buffer).
    Ggml,
    /// Caller bytes (a file mapping, or bytes read from the file), only read.
    Shared(#[allow(dead_code)] HostBytes),
    /// Our own huge pages, written by [`Buffer::write`]; never lent out as a
    /// slice, so no Rust reference into them exists.
    Own(#[allow(dead_code)] AlignedBytes),
}

/// Backend memory holding tensor data.
pub struct Buffer {
    raw: NonNull<sys::ggml_backend_buffer>,
    owner: Owner,
    /// Byte ranges tensors were moved into ([`Weight::move_to`]): read by
    /// graphs from then on, so [`Buffer::write`] keeps out of them.
    taken: RefCell<Vec<Range<usize>>>,
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: we own the buffer; ggml does not free borrowed host memory
        // (the owner field goes after this).
        unsafe { sys::ggml_backend_buffer_free(self.raw.as_ptr()) }
    }
}

impl Buffer {
    /// Owns a buffer ggml allocated.
    pub(crate) fn wrap(raw: NonNull<sys::ggml_backend_buffer>) -> Buffer {
        Buffer {
            raw,
            owner: Owner::Ggml,
            taken: Default::default(),
        }
    }
    /// A CPU buffer over `bytes` without copying. Private: only the
    /// [`WeightLoader`] places tensors in it, as read-only [`Weight`]s.
    fn from_host_bytes(bytes: HostBytes) -> Result<Buffer, Error> {
        let s: &[u8] = (*bytes).as_ref();
        if (s.as_ptr() as usize) % 32 != 0 {
            return err(ErrorKind::Misaligned);
        }
        // SAFETY: the owner field keeps the bytes alive as long as the
        // buffer; only weights (read-only) are placed in it.
        let b =
            unsafe { sys::ggml_backend_cpu_buffer_from_ptr(s.as_ptr() as *mut c_void, s.len()) };
        let raw = NonNull::new(b).ok_or(Error {
            kind: ErrorKind::Alloc(s.len()),
        })?;
        Ok(Buffer {
            raw,
            owner: Owner::Shared(bytes),
            taken: Default::default(),
        })
    }
    /// A new zeroed CPU buffer of `len` bytes in 2 MiB huge pages (see
    /// [`AlignedBytes::zeroed`]), to fill with [`Buffer::write`] and move
    /// weights into ([`Weight::move_to`]).
    pub fn huge_pages(len: usize) -> Result<Buffer, Error> {
        let bytes = AlignedBytes::zeroed(len).map_err(|_| Error {
            kind: ErrorKind::Alloc(len),
        })?;
        // SAFETY: 2 MiB aligned memory of `len` bytes that the buffer owns.
        let b = unsafe {
            sys::ggml_backend_cpu_buffer_from_ptr(bytes.ptr.as_ptr().cast(), bytes.len.max(1))
        };
        let raw = NonNull::new(b).ok_or(Error {
            kind: ErrorKind::Alloc(len),
        })?;
        Ok(Buffer {
            raw,
            owner: Owner::Own(bytes),
            taken: Default::default(),
        })
    }
    /// Copies `bytes` to byte `offset` of a [`Buffer::huge_pages`] buffer.
    /// Panics outside the buffer, or over a range a weight was moved into.
    pub fn write(&self, offset: usize, bytes: &[u8]) {
        assert!(
            matches!(self.owner, Owner::Own(_)),
            "write into a buffer not made by huge_pages"
        );
        let r = self.range(offset, bytes.len(), "write");
        let taken = self.taken.borrow();
        let hit = taken.iter().find(|t| t.start < r.end && r.start < t.end);
        assert!(hit.is_none(), "write of {r:?} over a weight at {hit:?}");
        // SAFETY: range checked; the memory is our own writable anonymous
        // mapping, of which no Rust reference exists (Owner::Own), and no
        // tensor reads this range (not taken; a tensor moves in only after).
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
    /// `offset..offset + len`, panicking when it is not inside the buffer.
    fn range(&self, offset: usize, len: usize, what: &str) -> Range<usize> {
        let end = offset.checked_add(len);
        assert!(
            end.is_some_and(|e| e <= self.size()),
            "{what} of {len} bytes at {offset} outside buffer of {}",
            self.size()
        );
        offset..offset + len
    }
    /// The address of byte `offset` (in range, checked by the caller).
    fn addr(&self, offset: usize) -> *mut c_void {
        // SAFETY: the caller checked offset ≤ size; base is valid for size bytes.
        unsafe {
            let base = sys::ggml_backend_buffer_get_base(self.raw.as_ptr()) as *mut u8;
            base.add(offset).cast()
        }
    }
}

// ---- weights ----

/// The metadata and memory of a model's weights, shared by its [`Weight`]s.
struct Store {
    ctx: Context,
    bufs: RefCell<Vec<Rc<Buffer>>>,
}

impl Store {
    fn keep(&self, b: &Rc<Buffer>) {
        let mut bufs = self.bufs.borrow_mut();
        if !bufs.iter().any(|k| Rc::ptr_eq(k, b)) {
            bufs.push(b.clone());
        }
    }
}

/// A model weight: a tensor whose data lives as long as the handle (it
/// keeps its metadata and memory alive) and that nothing writes. Graphs
/// read it through [`Weight::t`], which borrows the handle. Not `Send`:
/// [`Weight::move_to`] changes where it points, on the thread running the
/// graphs that read it.
#[derive(Clone)]
pub struct Weight {
    raw: NonNull<sys::ggml_tensor>,
    store: Rc<Store>,
}

impl<'w> From<&'w Weight> for Tensor<'w> {
    fn from(w: &'w Weight) -> Tensor<'w> {
        w.t()
    }
}

impl Weight {
    /// The tensor, for building graphs (read-only, borrowed from the weight).
    pub fn t(&self) -> Tensor<'_> {
        let _ = &self.store;
        // SAFETY: the store keeps the metadata and every buffer the weight
        // was placed in alive while `self` is; nothing writes weights (the
        // loader never hands out a TensorMut for one).
        let t = unsafe { Tensor::from_raw(self.raw) };
        assert!(t.is_allocated(), "weight used before its loader finished");
        t
    }
    /// Shape, `ne[0]` first.
    pub fn ne(&self) -> [i64; 4] {
        self.t().ne()
    }
    /// Bytes of data.
    pub fn n_bytes(&self) -> usize {
        self.t().n_bytes()
    }
    /// Points the weight at byte `offset` of `dst`, a [`Buffer::huge_pages`]
    /// buffer into which its bytes were written ([`Buffer::write`]), which
    /// the weight then keeps alive and which no longer takes writes there.
    /// Graphs built over the weight read the new place from their next
    /// computation (graphs run on this thread: none is running now).
    ///
    /// Panics unless the weight lies plainly in a CPU host buffer (not a
    /// view, not repacked, not on a GPU) and fits in `dst` at `offset`.
    pub fn move_to(&self, dst: &Rc<Buffer>, offset: usize) {
        assert!(
            matches!(dst.owner, Owner::Own(_)),
            "weight moved into a buffer not made by huge_pages"
        );
        let t = self.t();
        let r = dst.range(offset, t.n_bytes(), "move");
        // SAFETY: reads of the live tensor's fields and its buffer's type.
        let plain = unsafe {
            let m = &*self.raw.as_ptr();
            m.view_src.is_null()
                && m.extra.is_null()
                && !m.buffer.is_null()
                && sys::ggml_backend_buffer_get_type(m.buffer)
                    == sys::ggml_backend_buffer_get_type(dst.raw.as_ptr())
        };
        assert!(
            plain,
            "weight {t:?} is not plain host memory and cannot move"
        );
        dst.taken.borrow_mut().push(r);
        self.store.keep(dst);
        // SAFETY: the weight is a plain tensor of a CPU host buffer, so its
        // buffer keeps no per-tensor state (no init_tensor, no extra) and
        // pointing it at the new memory is all ggml_backend_tensor_alloc
        // would do; the new range lies in `dst`, which the store now keeps
        // alive, and takes no more writes; no graph runs (not Send, and
        // computation is synchronous on this thread).
        unsafe {
            let raw = self.raw.as_ptr();
            (*raw).buffer = dst.raw.as_ptr();
            (*raw).data = dst.addr(offset);
        }
    }
}

impl std::fmt::Debug for Weight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // SAFETY: as in `t`, without the allocation check.
        let t = unsafe { Tensor::from_raw(self.raw) };
        write!(f, "Weight({:?} {:?})", t.ty(), t.ne())
    }
}

/// Creates a model's [`Weight`]s over the file bytes: read in place, or
/// (for matrices the CPU backend repacks) from a repacked copy, or (for a
/// model loaded into a GPU) from a copy in the GPU's memory. The copies are
/// made by [`WeightLoader::finish`]; weights cannot be used before.
pub struct WeightLoader {
    store: Rc<Store>,
    bytes: HostBytes,
    /// The file bytes as a CPU buffer; `None` when the weights go to a GPU.
    host: Option<Rc<Buffer>>,
    gpu: Option<Device>,
    repack: Option<Repack>,
    /// Weights to copy into the GPU: where their bytes are.
    uploads: RefCell<Vec<(Weight, Range<usize>)>>,
    /// Matrices to repack: where their bytes are.
    pending: RefCell<Vec<(RepackType, Weight, Range<usize>)>>,
    /// Weights placed on the file bytes, and where.
    placed: RefCell<Vec<(Weight, usize)>>,
}

impl WeightLoader {
    /// A loader for up to `max_tensors` weights over `bytes` (32-byte
    /// aligned), copied into `gpu` when given, and repacked for the CPU's
    /// kernels with `repack` (ignored with a GPU).
    pub fn new(
        bytes: HostBytes,
        max_tensors: usize,
        gpu: Option<Device>,
        repack: bool,
    ) -> Result<WeightLoader, Error> {
        let host = match gpu {
            None => Some(Rc::new(Buffer::from_host_bytes(bytes.clone())?)),
            Some(_) => None,
        };
        let store = Rc::new(Store {
            ctx: Context::new(max_tensors),
            bufs: RefCell::new(host.iter().cloned().collect()),
        });
        Ok(WeightLoader {
            store,
            bytes,
            host,
            gpu,
            repack: (repack && gpu.is_none()).then(Repack::cpu),
            uploads: Default::default(),
            pending: Default::default(),
            placed: Default::default(),
        })
    }

    /// A weight `name` of type `ty` and shape `ne` whose bytes are `range`
    /// of the file; `matrix` when it is only the first operand of `mul_mat`
    /// (a projection), which the CPU backend may repack. Fails when the
    /// range does not lie in the file or is not the tensor's size.
    pub fn weight(
        &self,
        name: &str,
        ty: Type,
        ne: &[i64],
        range: Range<usize>,
        matrix: bool,
    ) -> Result<Weight, Error> {
        let bad = |msg: String| err(ErrorKind::Weight(msg));
        if !ty.is_known() {
            return bad(format!("tensor {name} has unsupported type {}", ty.name()));
        }
        let t = self.store.ctx.tensor(ty, ne).set_name(name).t();
        if t.n_bytes() != range.len() {
            return bad(format!(
                "tensor {name}: {} bytes in file, {} expected",
                range.len(),
                t.n_bytes()
            ));
        }
        if range.end > (*self.bytes).as_ref().len() || range.start > range.end {
            return bad(format!("tensor {name} lies outside the file"));
        }
        let w = Weight {
            raw: t.raw,
            store: self.store.clone(),
        };
        let chosen = self
            .repack
            .as_ref()
            .filter(|_| matrix)
            .and_then(|r| r.choose(t));
        match (&self.host, chosen) {
            (None, _) => self.uploads.borrow_mut().push((w.clone(), range)),
            (Some(_), Some(rt)) => self.pending.borrow_mut().push((rt, w.clone(), range)),
            (Some(buf), None) => {
                // SAFETY: a fresh tensor of our context, and the range lies
                // in the buffer (it is the file bytes, checked above) with
                // room for exactly the tensor.
                let s = unsafe {
                    sys::ggml_backend_tensor_alloc(buf.raw.as_ptr(), t.raw(), buf.addr(range.start))
                };
                if s != 0 {
                    return err(ErrorKind::Alloc(range.len()));
                }
                self.placed.borrow_mut().push((w.clone(), range.start));
            }
        }
        Ok(w)
    }

    /// Makes the copies (repacked matrices, the GPU's weights); returns the
    /// weights read in place from the file bytes, with their offsets.
    pub fn finish(self) -> Result<Vec<(Weight, usize)>, Error> {
        let bytes = (*self.bytes).as_ref();
        let pending = self.pending.take();
        // each type once, in first-seen order (a model may mix several)
        let mut types: Vec<RepackType> = vec![];
        for (rt, _, _) in &pending {
            if !types.contains(rt) {
                types.push(*rt);
            }
        }
        for rt in types {
            let items: Vec<(Tensor, &[u8])> = pending
                .iter()
                .filter(|p| p.0 == rt)
                // SAFETY: our context's tensor, alive with the store.
                .map(|(_, w, r)| (unsafe { Tensor::from_raw(w.raw) }, &bytes[r.clone()]))
                .collect();
            let buf = Rc::new(rt.upload(&items)?);
            self.store.keep(&buf);
        }
        if let Some(dev) = self.gpu {
            let uploads = self.uploads.take();
            let total: usize = uploads.iter().map(|(_, r)| r.len()).sum();
            // SAFETY: live context; the device's buffer type lives as long as ggml.
            let b = unsafe {
                sys::ggml_backend_alloc_ctx_tensors_from_buft(
                    self.store.ctx.ptr(),
                    sys::ggml_backend_dev_buffer_type(dev.raw),
                )
            };
            let Some(raw) = NonNull::new(b) else {
                return err(ErrorKind::Weight(format!(
                    "cannot allocate {} MiB for the weights on {} ({}, {} MiB free)",
                    total >> 20,
                    dev.name(),
                    dev.description(),
                    dev.memory().0 >> 20
                )));
            };
            self.store.keep(&Rc::new(Buffer::wrap(raw)));
            for (w, r) in uploads {
                // SAFETY: the weight was just allocated in the GPU buffer;
                // the range is its exact size (checked by `weight`).
                unsafe {
                    sys::ggml_backend_tensor_set(
                        w.raw.as_ptr(),
                        bytes[r].as_ptr().cast(),
                        0,
                        w.n_bytes(),
                    )
                };
            }
        }
        Ok(self.placed.take())
    }
}

// ---- repacking ----

/// The CPU backend's extra weight buffer types (`CPU_REPACK` on x86 and
/// ARM): a weight uploaded into one is rearranged into interleaved blocks
/// that its matrix kernels read faster (Q4_0 and Q4_K on AVX2, more on ARM).
/// llama.cpp uses them by default; the data is a copy, not the mapped file.
pub(crate) struct Repack {
    dev: sys::ggml_backend_dev_t,
    bufts: Vec<sys::ggml_backend_buffer_type_t>,
}

impl Repack {
    /// The extra buffer types of the CPU device (empty when the build or the
    /// CPU has none).
    pub(crate) fn cpu() -> Repack {
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
    pub(crate) fn choose(&self, w: Tensor) -> Option<RepackType> {
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
pub(crate) struct RepackType(sys::ggml_backend_buffer_type_t);

impl RepackType {
    /// Allocates one buffer of this type for `items` (unallocated tensors)
    /// and uploads each from its bytes in ggml's plain layout (exactly the
    /// tensor's size); the upload repacks.
    pub(crate) fn upload(self, items: &[(Tensor, &[u8])]) -> Result<Buffer, Error> {
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
            let buf = Buffer::wrap(raw);
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

// ---- host memory ----

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
// SAFETY: nothing writes the bytes through `&AlignedBytes` (only `AsRef`);
// they are written while exclusively owned (`read_exact`), or by a
// `Buffer::huge_pages` that owns them and never lends them out.
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

/// A read-only, shared mapping of a whole file: the one kind of memory
/// whose pages may be given back to the kernel ([`release_file_pages`]) and
/// read again unchanged.
pub struct FileMap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: read-only memory, unmapped only on drop.
unsafe impl Send for FileMap {}
// SAFETY: as above.
unsafe impl Sync for FileMap {}

impl FileMap {
    /// Maps `file` read-only (as `memmap2::Mmap::map` does).
    ///
    /// # Safety
    /// The file must not be truncated or modified while the map lives (the
    /// contract of every mmap reader).
    pub unsafe fn open(file: &std::fs::File) -> std::io::Result<FileMap> {
        use std::os::fd::AsRawFd;
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| std::io::Error::other("file too large to map"))?;
        if len == 0 {
            return Ok(FileMap {
                ptr: NonNull::dangling(),
                len: 0,
            });
        }
        // SAFETY: a fresh read-only mapping of an open file; checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(std::io::Error::last_os_error)?;
        Ok(FileMap { ptr, len })
    }
}

impl FileMap {
    /// Maps every page of the file into this process now, reading what the
    /// page cache lacks, so that the first pass over the weights takes no
    /// page faults (llama.cpp's loader maps with MAP_POPULATE for the same
    /// reason). A hint: on a kernel without MADV_POPULATE_READ (before
    /// 5.14) nothing happens and the pages fault in on first use.
    pub fn prefault(&self) {
        /// Linux's MADV_POPULATE_READ (not in the libc crate for every target).
        const MADV_POPULATE_READ: libc::c_int = 22;
        if self.len > 0 {
            // SAFETY: the whole of our own read-only mapping; populating
            // page tables changes no byte of it.
            unsafe { libc::madvise(self.ptr.as_ptr().cast(), self.len, MADV_POPULATE_READ) };
        }
    }
}

impl AsRef<[u8]> for FileMap {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `len` mapped, readable bytes (unchanged, per `open`).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: our own mapping, unmapped once.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}

/// Gives back the pages of `map[range]` that lie wholly inside the range
/// (the pages at its ends may hold other data and are kept), lowering the
/// resident size; a later read faults the same content back in. Only a
/// file mapping qualifies (anonymous memory would read back as zeros):
///
/// ```compile_fail
/// let bytes = ggml::AlignedBytes::zeroed(1 << 20).unwrap();
/// ggml::release_file_pages(&bytes, 0..1 << 20); // error: expected `&FileMap`
/// ```
pub fn release_file_pages(map: &FileMap, range: Range<usize>) {
    let bytes = &map.as_ref()[range];
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let start = (bytes.as_ptr() as usize).next_multiple_of(page);
    let end = (bytes.as_ptr() as usize + bytes.len()) / page * page;
    if end > start {
        // SAFETY: a page-aligned range inside a read-only shared mapping of
        // a file that is not modified (FileMap::open's contract): dropping
        // its pages loses nothing, and readers see the same bytes again.
        unsafe { libc::madvise(start as *mut c_void, end - start, libc::MADV_DONTNEED) };
    }
}
