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

use ggml::{Context, FileMap, Graph, Tensor, Type, Weight};

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

/// Creates the model's [`Weight`]s: read in place from the file bytes (or,
/// for matrices the CPU backend repacks, from a repacked copy; or, for a
/// model loaded into a GPU, from a copy in the GPU's memory), see
/// [`ggml::WeightLoader`].
pub struct Weights<'g, 'a> {
    gg: &'g gguf::Gguf<'a>,
    loader: ggml::WeightLoader,
}

impl Weights<'_, '_> {
    /// The tensor `name`, which must have shape `dims` (ne0 first).
    pub fn get(&self, name: &str, dims: &[usize]) -> Result<Weight> {
        self.opt(name, dims)?
            .ok_or_else(|| Error::tensor(format!("cannot find tensor {name} in gguf")))
    }
    /// Like [`Weights::get`], but `None` when the file has no such tensor.
    pub fn opt(&self, name: &str, dims: &[usize]) -> Result<Option<Weight>> {
        self.load(name, dims, false)
    }
    /// A matrix used only as the first operand of `mul_mat` (a projection),
    /// which the CPU backend may repack for its faster kernels.
    pub fn mat(&self, name: &str, dims: &[usize]) -> Result<Weight> {
        self.opt_mat(name, dims)?
            .ok_or_else(|| Error::tensor(format!("cannot find tensor {name} in gguf")))
    }
    /// Like [`Weights::mat`], but `None` when the file has no such tensor.
    pub fn opt_mat(&self, name: &str, dims: &[usize]) -> Result<Option<Weight>> {
        self.load(name, dims, true)
    }

    fn load(&self, name: &str, dims: &[usize], matrix: bool) -> Result<Option<Weight>> {
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
        // the loader checks the size against the shape, then the file bounds
        let range = self
            .gg
            .data_offset()
            .checked_add(info.offset)
            .and_then(|s| usize::try_from(s).ok())
            .and_then(|s| Some(s..s.checked_add(usize::try_from(info.n_bytes).ok()?)?))
            .ok_or_else(|| Error::tensor(format!("tensor {name} lies outside the file")))?;
        let w = self.loader.weight(name, ty, &ne, range, matrix);
        w.map(Some).map_err(weight_error)
    }
}

/// A [`ggml::WeightLoader`] error as this crate's: a weight that does not
/// fit the file or its description is a tensor error.
fn weight_error(e: ggml::Error) -> Error {
    match e.kind {
        ggml::ErrorKind::Weight(m) => Error::tensor(m),
        _ => e.into(),
    }
}

// ---- registry ----

/// How to load a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Read the file into memory instead of mapping it.
    pub no_mmap: bool,
    /// Let the CPU backend repack the matrices it has faster kernels for (a
    /// copy of those weights; llama.cpp's default, see [`ggml::WeightLoader`]).
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
    /// The same bytes as a read-only file mapping, when mapped: the one
    /// memory whose pages the huge-page migration may give back.
    map: Option<Arc<FileMap>>,
}

impl File {
    /// Maps the file read-only (errors are the OS's: the caller names the file).
    pub fn map(path: &Path) -> std::io::Result<File> {
        let file = std::fs::File::open(path)?;
        // SAFETY: the file is mapped read-only; like every mmap reader we
        // assume it is not truncated or modified while in use.
        let map = Arc::new(unsafe { FileMap::open(&file) }?);
        Ok(File {
            bytes: map.clone(),
            map: Some(map),
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
            map: None,
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
        self.map.is_some()
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
    let (model, in_huge_pages) = build_inner(gg, file, opts)?;
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

/// Builds the model of `gg` on `file`'s bytes; when they are a file
/// mapping, the weights placed on it move into huge pages during the run as
/// [`LoadOptions::huge_pages`] asks.
fn build_inner(gg: &gguf::Gguf<'_>, file: &File, opts: &LoadOptions) -> Result<Built> {
    let meta = Meta::new(gg)?;
    // two tensors may share a name (an output tied to the embeddings)
    let n = 2 * gg.tensors().len() + 8;
    let loader = ggml::WeightLoader::new(file.bytes.clone(), n, opts.gpu, opts.repack)?;
    let w = Weights { gg, loader };
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
    // the copies (repacked, on the GPU); the weights left on the file bytes
    let placed = w.loader.finish().map_err(weight_error)?;
    // The first pass reads every weight: map their pages now, in one call,
    // rather than fault them in one by one during it (2-3% of a 512-token
    // prompt on Gemma 3; the first token needs them all anyway, so the time
    // to it does not change).
    if let (Some(map), None) = (&file.map, opts.gpu) {
        map.prefault();
    }
    let migration = match (&file.map, opts.huge_pages && opts.gpu.is_none()) {
        (Some(map), true) => Some(migrate::Migration::new(map.clone(), placed)?),
        _ => None,
    };
    let done = migration.as_ref().map(|m| m.done_flag());
    let owned = Owned {
        model,
        device: opts.gpu,
        migration: migration.map(std::cell::RefCell::new),
    };
    Ok((Box::new(owned), done))
}

/// A model with where it runs and the migration of its weights (each
/// weight keeps its own memory alive).
struct Owned<M> {
    model: M,
    device: Option<ggml::Device>,
    migration: Option<std::cell::RefCell<migrate::Migration>>,
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
    fn shift_keys<'c>(
        &'c self,
        ctx: &'c Context,
        k: Tensor<'c>,
        delta: Tensor<'c>,
        layer: usize,
    ) -> Option<Tensor<'c>> {
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
    fn forward<'c>(
        &'c self,
        ctx: &'c Context,
        g: &Graph<'c>,
        inp: &engine::session::Inputs<'c>,
        kv: &engine::kv_cache::KvCache<'c>,
    ) -> Tensor<'c> {
        self.model.forward(ctx, g, inp, kv)
    }
}
