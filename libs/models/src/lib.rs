//! Model architectures on the ggml wrapper, one file each, and the registry
//! that picks one by `general.architecture`. This crate only builds models;
//! running them (engine choice, prompts, chat) is the `runner` crate's.
//!
//! ```no_run
//! use models::{load, LoadOptions};
//! let loaded = load("SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), &LoadOptions::default())?;
//! let mut sess = engine::session::Session::new(loaded.model.as_ref(), &Default::default())?;
//! let logits = sess.decode(&[504, 3575, 282, 4649, 314])?; // "The capital of France is"
//! assert_eq!(engine::llama_cpp::argmax(logits), 7042); // " Paris"
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

use std::path::Path;
use std::sync::Arc;

use ggml::{Buffer, Context, Tensor, Type};

pub mod gemma3;
pub mod llama;
mod migrate;
pub mod mistral3;
pub mod nn;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;

// ---- errors ----

/// An error loading a model.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct Error {
    /// What went wrong.
    pub kind: ErrorKind,
}

/// The kinds of [`Error`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Reading the file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The GGUF is malformed or a metadata key is missing or mistyped.
    #[error(transparent)]
    Gguf(#[from] gguf::Error),
    /// The architecture has no native implementation.
    #[error("architecture {0:?} is not supported by the native engine")]
    Unsupported(String),
    /// A hyperparameter is missing or out of range.
    #[error("{0}")]
    Hparam(String),
    /// A tensor is missing or has the wrong shape or type.
    #[error("{0}")]
    Tensor(String),
    /// ggml failed.
    #[error(transparent)]
    Ggml(#[from] ggml::Error),
}

impl Error {
    fn hparam(msg: String) -> Error {
        Error {
            kind: ErrorKind::Hparam(msg),
        }
    }
    fn tensor(msg: String) -> Error {
        Error {
            kind: ErrorKind::Tensor(msg),
        }
    }
}

impl From<gguf::Error> for Error {
    fn from(e: gguf::Error) -> Error {
        Error { kind: e.into() }
    }
}

impl From<ggml::Error> for Error {
    fn from(e: ggml::Error) -> Error {
        Error { kind: e.into() }
    }
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

// ---- metadata ----

/// Metadata accessor that adds the architecture prefix (`llama.`) to keys.
pub struct Meta<'g, 'a> {
    gg: &'g gguf::Gguf<'a>,
    arch: String,
}

impl<'g, 'a> Meta<'g, 'a> {
    /// Wraps a parsed GGUF; fails without `general.architecture`.
    pub fn new(gg: &'g gguf::Gguf<'a>) -> Result<Self> {
        Ok(Meta {
            arch: gg.require_str("general.architecture")?.to_string(),
            gg,
        })
    }
    /// `<arch>.<k>`.
    pub fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }
    /// `<arch>.<k>` as an integer within `range` (missing, mistyped or out of range → error).
    pub fn usize_in(&self, k: &str, range: std::ops::RangeInclusive<usize>) -> Result<usize> {
        let key = self.key(k);
        let v = self.gg.require_u64(&key)?;
        usize::try_from(v)
            .ok()
            .filter(|v| range.contains(v))
            .ok_or_else(|| Error::hparam(format!("{key} = {v} is out of range {range:?}")))
    }
    /// Like [`Meta::usize_in`], with a default when the key is absent.
    pub fn usize_or_in(
        &self,
        k: &str,
        default: usize,
        range: std::ops::RangeInclusive<usize>,
    ) -> Result<usize> {
        if self.gg.get(&self.key(k)).is_none() {
            return Ok(default);
        }
        self.usize_in(k, range)
    }
    /// `<arch>.<k>` as a finite float, with a default when absent.
    pub fn f32_or(&self, k: &str, default: f32) -> Result<f32> {
        let key = self.key(k);
        if self.gg.get(&key).is_none() {
            return Ok(default);
        }
        let v = self.gg.require_f32(&key)?;
        if !v.is_finite() {
            return Err(Error::hparam(format!("{key} = {v} is not finite")));
        }
        Ok(v)
    }
    /// Like [`Meta::f32_or`], and at least `min` (ggml asserts a
    /// non-negative RMSNorm ε, for one).
    pub fn f32_at_least(&self, k: &str, default: f32, min: f32) -> Result<f32> {
        let v = self.f32_or(k, default)?;
        match v >= min {
            true => Ok(v),
            false => Err(Error::hparam(format!(
                "{} = {v} is below {min}",
                self.key(k)
            ))),
        }
    }
    /// Like [`Meta::f32_or`], and above `min` (a RoPE base, for one).
    pub fn f32_above(&self, k: &str, default: f32, min: f32) -> Result<f32> {
        let v = self.f32_or(k, default)?;
        match v > min {
            true => Ok(v),
            false => Err(Error::hparam(format!(
                "{} = {v} must be above {min}",
                self.key(k)
            ))),
        }
    }
    /// `<arch>.<k>` as a string, with a default when absent.
    pub fn str_or(&self, k: &str, default: &'a str) -> Result<&'a str> {
        let key = self.key(k);
        if self.gg.get(&key).is_none() {
            return Ok(default);
        }
        Ok(self.gg.require_str(&key)?)
    }
    /// Vocabulary size: `<arch>.vocab_size`, else the length of `tokenizer.ggml.tokens`.
    pub fn n_vocab(&self) -> Result<usize> {
        if self.gg.get(&self.key("vocab_size")).is_some() {
            return self.usize_in("vocab_size", 1..=(1 << 24));
        }
        let n = self
            .gg
            .get("tokenizer.ggml.tokens")
            .and_then(gguf::Value::as_array)
            .map(|a| a.len());
        n.filter(|&n| n > 0).ok_or_else(|| {
            Error::hparam("cannot find tokenizer.ggml.tokens in gguf metadata".into())
        })
    }
}

// ---- weights ----

/// Creates weight tensors that read their data in place from the file bytes
/// (or, for matrices the CPU backend repacks, from a repacked copy; or, for a
/// model loaded into a GPU, from a copy in the GPU's memory).
pub struct Weights<'g, 'a> {
    gg: &'g gguf::Gguf<'a>,
    ctx: &'g Context,
    /// The file bytes as a CPU buffer; `None` when the weights go to a GPU.
    buf: Option<&'g Buffer>,
    bytes: &'g [u8],
    /// Tensors placed on the file bytes, and where.
    placed: std::cell::RefCell<Vec<(Tensor, usize)>>,
    /// Tensors to copy into the GPU by [`Weights::upload_to`]: where their bytes are.
    uploads: std::cell::RefCell<Vec<(Tensor, std::ops::Range<usize>)>>,
    repack: Option<ggml::Repack>,
    /// Matrices waiting for [`Weights::upload_repacked`]: where their bytes are.
    pending: std::cell::RefCell<Vec<(ggml::RepackType, Tensor, std::ops::Range<usize>)>>,
}

impl Weights<'_, '_> {
    /// The tensor `name`, which must have shape `dims` (ne0 first).
    pub fn get(&self, name: &str, dims: &[usize]) -> Result<Tensor> {
        self.opt(name, dims)?
            .ok_or_else(|| Error::tensor(format!("cannot find tensor {name} in gguf")))
    }
    /// Like [`Weights::get`], but `None` when the file has no such tensor.
    pub fn opt(&self, name: &str, dims: &[usize]) -> Result<Option<Tensor>> {
        self.load(name, dims, false)
    }
    /// A matrix used only as the first operand of `mul_mat` (a projection),
    /// which the CPU backend may repack for its faster kernels.
    pub fn mat(&self, name: &str, dims: &[usize]) -> Result<Tensor> {
        self.opt_mat(name, dims)?
            .ok_or_else(|| Error::tensor(format!("cannot find tensor {name} in gguf")))
    }
    /// Like [`Weights::mat`], but `None` when the file has no such tensor.
    pub fn opt_mat(&self, name: &str, dims: &[usize]) -> Result<Option<Tensor>> {
        self.load(name, dims, true)
    }

    fn load(&self, name: &str, dims: &[usize], matrix: bool) -> Result<Option<Tensor>> {
        let Some(info) = self.gg.tensor(name) else {
            return Ok(None);
        };
        if info.dims.len() != dims.len() || info.dims.iter().zip(dims).any(|(&a, &b)| a != b as u64)
        {
            return Err(Error::tensor(format!(
                "tensor {name} has shape {:?}, expected {dims:?}",
                info.dims
            )));
        }
        let ty = Type(info.ggml_type.id());
        if !ty.is_known() || !info.ggml_type.is_known() {
            return Err(Error::tensor(format!(
                "tensor {name} has unsupported type {}",
                ty.name()
            )));
        }
        // ggml's CPU kernels abort (GGML_ABORT) on operand types they lack:
        // norms, biases and RoPE factors are f32 in every converter's
        // output; matrices need a float or quantized type (a dot product).
        let fits = match dims.len() {
            1 => ty == Type::F32,
            _ => !matches!(ty.name().as_str(), "i8" | "i16" | "i32" | "i64" | "f64"),
        };
        if !fits {
            let want = if dims.len() == 1 {
                "f32"
            } else {
                "a float or quantized type"
            };
            return Err(Error::tensor(format!(
                "tensor {name} has type {}, expected {want}",
                ty.name()
            )));
        }
        let ne: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
        let t = self.ctx.tensor(ty, &ne).set_name(name);
        if t.n_bytes() as u64 != info.n_bytes {
            return Err(Error::tensor(format!(
                "tensor {name}: {} bytes in file, {} expected",
                info.n_bytes,
                t.n_bytes()
            )));
        }
        let start = self
            .gg
            .data_offset()
            .checked_add(info.offset)
            .and_then(|s| usize::try_from(s).ok());
        let start = start.filter(|s| {
            s.checked_add(t.n_bytes())
                .is_some_and(|e| e <= self.bytes.len())
        });
        let start =
            start.ok_or_else(|| Error::tensor(format!("tensor {name} lies outside the file")))?;
        let range = start..start + t.n_bytes();
        match (
            self.buf,
            self.repack
                .as_ref()
                .filter(|_| matrix)
                .and_then(|r| r.choose(t)),
        ) {
            (None, _) => self.uploads.borrow_mut().push((t, range)),
            (Some(_), Some(rt)) => self.pending.borrow_mut().push((rt, t, range)),
            (Some(buf), None) => {
                buf.place(t, start);
                self.placed.borrow_mut().push((t, start));
            }
        }
        Ok(Some(t))
    }

    /// Allocates every weight in `dev`'s memory and copies it there from
    /// the file bytes; the buffer must outlive the model.
    fn upload_to(&self, dev: ggml::Device) -> Result<Buffer> {
        let uploads = self.uploads.take();
        let total: usize = uploads.iter().map(|(_, r)| r.len()).sum();
        let buf = self.ctx.alloc_tensors_on(dev).map_err(|_| {
            Error::tensor(format!(
                "cannot allocate {} MiB for the weights on {} ({}, {} MiB free)",
                total >> 20,
                dev.name(),
                dev.description(),
                dev.memory().0 >> 20
            ))
        })?;
        for (t, r) in uploads {
            t.set_bytes(&self.bytes[r]);
        }
        Ok(buf)
    }

    /// Copies the matrices chosen for repacking into buffers of their types
    /// (the copy repacks them); the buffers must outlive the model.
    fn upload_repacked(&self) -> Result<Vec<Buffer>> {
        let pending = self.pending.take();
        // each type once, in first-seen order (a model may mix several)
        let mut types: Vec<ggml::RepackType> = vec![];
        for (rt, _, _) in &pending {
            if !types.contains(rt) {
                types.push(*rt);
            }
        }
        types
            .into_iter()
            .map(|rt| {
                let items: Vec<(Tensor, &[u8])> = pending
                    .iter()
                    .filter(|p| p.0 == rt)
                    .map(|(_, t, r)| (*t, &self.bytes[r.clone()]))
                    .collect();
                Ok(rt.upload(&items)?)
            })
            .collect()
    }
}

// ---- registry ----

/// How to load a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Read the file into memory instead of mapping it.
    pub no_mmap: bool,
    /// Let the CPU backend repack the matrices it has faster kernels for (a
    /// copy of those weights; llama.cpp's default, see [`ggml::Repack`]).
    pub repack: bool,
    /// Copy every weight into this GPU's memory (the session then computes
    /// there); `None`: the CPU.
    pub gpu: Option<ggml::Device>,
    /// With the mapping: move the weights into 2 MiB huge pages a slice per
    /// forward pass, from the second pass on (see `migrate.rs`).
    pub huge_pages: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            no_mmap: false,
            repack: true,
            gpu: None,
            huge_pages: true,
        }
    }
}

/// A loaded model with the file bytes its weights point into.
pub struct Loaded {
    /// The model, ready for [`engine::session::Session::new`].
    pub model: Box<dyn engine::session::Model>,
    /// `general.architecture`.
    pub arch: String,
    /// The whole file (mapped or read); the tokenizer is built from it.
    pub bytes: Arc<dyn AsRef<[u8]> + Send + Sync>,
    /// Set once the weights have moved into huge pages (see
    /// [`LoadOptions::huge_pages`]); `None` when they do not move.
    pub in_huge_pages: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// Whether the native engine implements this architecture.
pub fn supports(arch: &str) -> bool {
    matches!(
        arch,
        "llama" | "gemma3" | "mistral3" | "phi3" | "qwen2" | "qwen3"
    )
}

/// The bytes of a GGUF file: mapped, or read into aligned memory.
#[derive(Clone)]
pub struct File {
    bytes: Arc<dyn AsRef<[u8]> + Send + Sync>,
    mapped: bool,
}

impl File {
    /// Maps the file read-only (errors are the OS's: the caller names the file).
    pub fn map(path: &Path) -> std::io::Result<File> {
        let file = std::fs::File::open(path)?;
        // SAFETY: the file is mapped read-only; like every mmap reader we
        // assume it is not truncated while in use.
        let map = unsafe { memmap2::Mmap::map(&file) }?;
        Ok(File {
            bytes: Arc::new(map),
            mapped: true,
        })
    }

    /// Reads the whole file into memory aligned for the weights.
    pub fn read(path: &Path) -> std::io::Result<File> {
        let file = std::fs::File::open(path)?;
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| std::io::Error::other("file too large"))?;
        let bytes = ggml::AlignedBytes::read_exact(std::io::BufReader::new(file), len)?;
        Ok(File {
            bytes: Arc::new(bytes),
            mapped: false,
        })
    }

    /// [`File::read`] when `no_mmap`, else [`File::map`].
    pub fn open(path: &Path, no_mmap: bool) -> std::io::Result<File> {
        match no_mmap {
            true => File::read(path),
            false => File::map(path),
        }
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        (*self.bytes).as_ref()
    }

    /// Whether the bytes are a mapping of the file.
    pub fn is_mapped(&self) -> bool {
        self.mapped
    }
}

/// Maps (or reads) a GGUF file and builds its model.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Loaded> {
    let file = File::open(path, opts.no_mmap).map_err(|source| Error {
        kind: ErrorKind::Io {
            path: path.display().to_string(),
            source,
        },
    })?;
    let gg = gguf::parse(file.bytes())?;
    load_parsed(&gg, &file, opts)
}

/// Builds the model of a GGUF already parsed, so that a caller which read
/// its metadata first (tokenizer, template, engine choice) does not parse it
/// again. `gg` is the parse of `file`, or of another copy of the same file's
/// bytes (a mapping parsed before the file was read into memory): tensors
/// are found through `gg` and read from `file`, bounds checked against it.
/// [`LoadOptions::no_mmap`] is `file`'s to say, so it is ignored here.
pub fn load_parsed(gg: &gguf::Gguf<'_>, file: &File, opts: &LoadOptions) -> Result<Loaded> {
    let (model, in_huge_pages) = build_inner(gg, file.bytes.clone(), opts, file.mapped)?;
    Ok(Loaded {
        model,
        arch: gg.architecture().unwrap_or_default().to_string(),
        bytes: file.bytes.clone(),
        in_huge_pages,
    })
}

type Built = (
    Box<dyn engine::session::Model>,
    Option<Arc<std::sync::atomic::AtomicBool>>,
);

/// Builds the model of `gg` on `bytes`; when `bytes` is a file mapping (`mapped`), the weights
/// placed on it move into huge pages during the run as
/// [`LoadOptions::huge_pages`] asks.
fn build_inner(
    gg: &gguf::Gguf<'_>,
    bytes: Arc<dyn AsRef<[u8]> + Send + Sync>,
    opts: &LoadOptions,
    mapped: bool,
) -> Result<Built> {
    let meta = Meta::new(gg)?;
    // two tensors may share a name (an output tied to the embeddings)
    let ctx = Context::new(2 * gg.tensors().len() + 8);
    let buf = match opts.gpu {
        None => Some(Buffer::from_host_bytes(bytes.clone())?),
        Some(_) => None,
    };
    let w = Weights {
        gg,
        ctx: &ctx,
        buf: buf.as_ref(),
        bytes: (*bytes).as_ref(),
        placed: Default::default(),
        uploads: Default::default(),
        repack: (opts.repack && opts.gpu.is_none()).then(ggml::Repack::cpu),
        pending: Default::default(),
    };
    let model: Box<dyn engine::session::Model> = match meta.arch.as_str() {
        "llama" => Box::new(llama::Model::load(&meta, &w)?),
        "gemma3" => Box::new(gemma3::Model::load(&meta, &w)?),
        "mistral3" => Box::new(mistral3::Model::load(&meta, &w)?),
        "phi3" => Box::new(phi3::Model::load(&meta, &w)?),
        "qwen2" => Box::new(qwen2::Model::load(&meta, &w)?),
        "qwen3" => Box::new(qwen3::Model::load(&meta, &w)?),
        other => {
            return Err(Error {
                kind: ErrorKind::Unsupported(other.to_string()),
            })
        }
    };
    let repacked = w.upload_repacked()?;
    let on_gpu = opts.gpu.map(|dev| w.upload_to(dev)).transpose()?;
    // weights placed on the host bytes (none went to a GPU)
    let migration = match mapped && opts.huge_pages && buf.is_some() {
        true => Some(migrate::Migration::new(bytes.clone(), w.placed.take())?),
        false => None,
    };
    let done = migration.as_ref().map(|m| m.done_flag());
    let owned = Owned {
        model,
        device: opts.gpu,
        migration: migration.map(std::cell::RefCell::new),
        _ctx: ctx,
        _buf: buf,
        _repacked: repacked,
        _gpu: on_gpu,
    };
    Ok((Box::new(owned), done))
}

/// A model together with the context and buffers its weight handles point into.
struct Owned<M> {
    model: M,
    device: Option<ggml::Device>,
    migration: Option<std::cell::RefCell<migrate::Migration>>,
    _ctx: Context,
    _buf: Option<Buffer>,
    _repacked: Vec<Buffer>,
    _gpu: Option<Buffer>,
}

impl<M: std::ops::Deref<Target = dyn engine::session::Model>> engine::session::Model for Owned<M> {
    fn max_nodes(&self) -> usize {
        self.model.max_nodes()
    }
    fn device(&self) -> Option<ggml::Device> {
        self.device
    }
    fn before_pass(&self) {
        if let Some(m) = &self.migration {
            m.borrow_mut().before_pass();
        }
    }
    fn shift_keys(&self, ctx: &Context, k: Tensor, delta: Tensor, layer: usize) -> Option<Tensor> {
        self.model.shift_keys(ctx, k, delta, layer)
    }
    fn n_vocab(&self) -> usize {
        self.model.n_vocab()
    }
    fn kv_shape(&self) -> engine::kv_cache::KvShape {
        self.model.kv_shape()
    }
    fn n_ctx_train(&self) -> usize {
        self.model.n_ctx_train()
    }
    fn forward(
        &self,
        ctx: &Context,
        g: &ggml::Graph,
        inp: &engine::session::Inputs,
        kv: &engine::kv_cache::KvCache,
    ) -> Tensor {
        self.model.forward(ctx, g, inp, kv)
    }
}
