//! Model architectures on the ggml wrapper, one file each, and the registry
//! that picks one by `general.architecture`.
//!
//! ```no_run
//! use models::{load, LoadOptions};
//! let loaded = load("SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), &LoadOptions::default())?;
//! let mut sess = engine::session::Session::new(loaded.model.as_ref(), &Default::default())?;
//! let logits = sess.decode(&[504, 3575, 282, 4649, 314])?; // "The capital of France is"
//! assert_eq!(engine::reference::argmax(logits), 7042); // " Paris"
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

use std::path::Path;
use std::sync::Arc;

use ggml::{Buffer, Context, Tensor, Type};

pub mod gemma3;
pub mod infer;
pub mod llama;

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
    fn key(&self, k: &str) -> String {
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

/// Creates weight tensors that read their data in place from the file bytes.
pub struct Weights<'g, 'a> {
    gg: &'g gguf::Gguf<'a>,
    ctx: &'g Context,
    buf: &'g Buffer,
}

impl Weights<'_, '_> {
    /// The tensor `name`, which must have shape `dims` (ne0 first).
    pub fn get(&self, name: &str, dims: &[usize]) -> Result<Tensor> {
        self.opt(name, dims)?
            .ok_or_else(|| Error::tensor(format!("cannot find tensor {name} in gguf")))
    }
    /// Like [`Weights::get`], but `None` when the file has no such tensor.
    pub fn opt(&self, name: &str, dims: &[usize]) -> Result<Option<Tensor>> {
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
                .is_some_and(|e| e <= self.buf.size())
        });
        let start =
            start.ok_or_else(|| Error::tensor(format!("tensor {name} lies outside the file")))?;
        self.buf.place(t, start);
        Ok(Some(t))
    }
}

// ---- registry ----

/// How to load a model.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Read the file into memory instead of mapping it.
    pub no_mmap: bool,
}

/// A loaded model with the file bytes its weights point into.
pub struct Loaded {
    /// The model, ready for [`engine::session::Session::new`].
    pub model: Box<dyn engine::session::Model>,
    /// `general.architecture`.
    pub arch: String,
    /// The whole file (mapped or read); the tokenizer is built from it.
    pub bytes: Arc<dyn AsRef<[u8]> + Send + Sync>,
}

/// Whether the native engine implements this architecture.
pub fn supports(arch: &str) -> bool {
    matches!(arch, "llama" | "gemma3")
}

/// Maps (or reads) a GGUF file and builds its model.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Loaded> {
    let io = |source| Error {
        kind: ErrorKind::Io {
            path: path.display().to_string(),
            source,
        },
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let bytes: Arc<dyn AsRef<[u8]> + Send + Sync> = if opts.no_mmap {
        let len = file.metadata().map_err(io)?.len();
        let len = usize::try_from(len).map_err(|_| io(std::io::Error::other("file too large")))?;
        Arc::new(ggml::AlignedBytes::read_exact(std::io::BufReader::new(file), len).map_err(io)?)
    } else {
        // SAFETY: the file is mapped read-only; like every mmap reader we
        // assume it is not truncated while in use.
        Arc::new(unsafe { memmap2::Mmap::map(&file) }.map_err(io)?)
    };
    let gg = gguf::parse((*bytes).as_ref())?;
    let model = build(&gg, bytes.clone())?;
    Ok(Loaded {
        model,
        arch: gg.architecture().unwrap_or_default().to_string(),
        bytes,
    })
}

/// Builds the model of a parsed GGUF whose bytes are `bytes`.
pub fn build(
    gg: &gguf::Gguf<'_>,
    bytes: Arc<dyn AsRef<[u8]> + Send + Sync>,
) -> Result<Box<dyn engine::session::Model>> {
    let meta = Meta::new(gg)?;
    let ctx = Context::new(gg.tensors().len() + 8);
    let buf = Buffer::from_host_bytes(bytes)?;
    let w = Weights {
        gg,
        ctx: &ctx,
        buf: &buf,
    };
    let model: Box<dyn engine::session::Model> = match meta.arch.as_str() {
        "llama" => Box::new(Owned {
            model: llama::Model::load(&meta, &w)?,
            _ctx: ctx,
            _buf: buf,
        }),
        "gemma3" => Box::new(Owned {
            model: gemma3::Model::load(&meta, &w)?,
            _ctx: ctx,
            _buf: buf,
        }),
        other => {
            return Err(Error {
                kind: ErrorKind::Unsupported(other.to_string()),
            })
        }
    };
    Ok(model)
}

/// A model together with the context and buffer its weight handles point into.
struct Owned<M> {
    model: M,
    _ctx: Context,
    _buf: Buffer,
}

impl<M: engine::session::Model> engine::session::Model for Owned<M> {
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
