//! The model store, laid out byte for byte as Ollama lays it out.
//!
//! ```text
//! $OLLAMA_MODELS (default ~/.ollama/models)
//! ├── manifests/<host>/<namespace>/<model>/<tag>   manifest JSON, bytes as received
//! └── blobs/sha256-<64 hex>                        content-addressed, deduplicated
//! ```
//!
//! * Every blob path comes from a validated [`Digest`]; every manifest path
//!   from a validated [`Name`]. Nothing user-typed is joined into a path.
//! * Writes are atomic: a temp file in the same directory, fsync, rename,
//!   fsync of the directory. A crash never leaves a partial file under a
//!   final name; leftovers have names that are not `sha256-<hex>` and
//!   `verify --all` reports them.
//! * Symlinks and non-regular files inside the store are refused, not followed.
//!
//! One entry point per verb: [`resolve()`], [`verify()`], [`verify_all()`],
//! [`quarantine()`], [`export()`], [`import()`],
//! [`create()`], [`list()`], [`remove()`], [`copy()`].
//!
//! ```no_run
//! use store::{Store, ResolveOptions};
//! let store = Store::from_env()?;
//! let doc = store::resolve(&store, &"smollm2:135m".parse()?, &ResolveOptions::default())?;
//! println!("{}", doc.manifest_digest);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod archive;
mod create;
mod fsutil;
mod manage;
mod manifest;
mod modelfile;
mod resolve;
mod verify;

use std::io;
use std::path::{Path, PathBuf};

pub use archive::{
    export, export_file, import, ExportReport, ImportOptions, ImportReport, REF_NAME,
};
pub use create::{create, CreateOptions, Quantize};
pub use fsutil::atomic_write;
pub use manage::{copy, list, remove, ListEntry, RemoveReport};
pub use manifest::{ConfigV2, Descriptor, Manifest, RootFs};
pub use modelfile::{Command as ModelfileCommand, Modelfile};
pub use protocol::{Digest, Name};
pub use resolve::{resolve, ResolveOptions};
pub use verify::{
    quarantine, quarantine_finding, verify, verify_all, verify_docs, BlobCheck, DocsVerdict,
    Finding, FindingKind, VerifyOptions, VerifyReport,
};

/// The store's one error type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A model that has no manifest in the store.
    #[error("model {name} not found in {root}")]
    NotFound {
        /// The model, short form.
        name: String,
        /// The store root.
        root: PathBuf,
    },
    /// A manifest that cannot be parsed or breaks the format.
    #[error("invalid manifest {path}: {why}")]
    BadManifest {
        /// Where it is (or the model name).
        path: String,
        /// What is wrong.
        why: String,
    },
    /// A path inside the store that is a symlink or not a regular file/directory.
    #[error("refusing {path}: {why} inside the store")]
    Unsafe {
        /// The offending path.
        path: PathBuf,
        /// What it is.
        why: String,
    },
    /// A Modelfile that cannot be parsed.
    #[error("Modelfile line {line}: {why}")]
    Modelfile {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// A GGUF file create could not read.
    #[error("reading gguf {path}: {why}")]
    Gguf {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A bad digest or name.
    #[error(transparent)]
    Protocol(#[from] protocol::Error),
    /// An I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// An export archive that is malformed, truncated or does not check out.
    #[error("refusing archive: {0}")]
    Archive(String),
    /// A request this input cannot satisfy (quantizing a quantized model).
    #[error("{0}")]
    Unsupported(String),
    /// Anything else worth one line.
    #[error("{0}")]
    Other(String),
}

/// Shorthand.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A store root.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// A store at `root` (created lazily on first write).
    pub fn open(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    /// `$OLLAMA_MODELS`, else `~/.ollama/models`, as Ollama chooses.
    pub fn from_env() -> Result<Store> {
        if let Some(p) = std::env::var_os("OLLAMA_MODELS").filter(|p| !p.is_empty()) {
            return Ok(Store::open(p));
        }
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .ok_or_else(|| Error::Other("neither OLLAMA_MODELS nor HOME is set".into()))?;
        Ok(Store::open(Path::new(&home).join(".ollama").join("models")))
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/blobs`.
    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs")
    }

    /// `<root>/quarantine`: corrupt blobs moved aside by [`quarantine()`].
    pub fn quarantine_dir(&self) -> PathBuf {
        self.root.join("quarantine")
    }

    /// `<root>/manifests`.
    pub fn manifests_dir(&self) -> PathBuf {
        self.root.join("manifests")
    }

    /// `<root>/blobs/sha256-<hex>`.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.blob_file_name())
    }

    /// `<root>/manifests/<host>/<namespace>/<model>/<tag>` exactly as named.
    pub fn manifest_path(&self, name: &Name) -> PathBuf {
        self.manifests_dir().join(name.manifest_rel_path())
    }

    /// Whether the blob is present as a regular file. A symlink or other
    /// non-regular file under the blob's name is an error, not "present".
    pub fn has_blob(&self, digest: &Digest) -> Result<bool> {
        fsutil::regular_file_exists(&self.blob_path(digest))
    }

    /// Writes a manifest atomically under `name` and returns its digest.
    pub fn write_manifest(&self, name: &Name, bytes: &[u8]) -> Result<Digest> {
        Manifest::parse(bytes, &name.short())?;
        let path = self.manifest_path(name);
        fsutil::create_dirs_safely(
            &self.root,
            path.parent().expect("manifest path has a parent"),
        )?;
        atomic_write(&path, bytes)?;
        Ok(Digest::of_bytes(bytes))
    }

    /// Stores bytes as a blob (no-op when already present) and returns its digest.
    pub fn write_blob(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::of_bytes(bytes);
        if !self.has_blob(&digest)? {
            fsutil::create_dirs_safely(&self.root, &self.blobs_dir())?;
            atomic_write(&self.blob_path(&digest), bytes)?;
        }
        Ok(digest)
    }

    /// Finds the manifest of `name`: the exact path first, then a
    /// case-insensitive match part by part, as Ollama matches names.
    /// Returns the name as stored and the manifest path.
    pub fn find_manifest(&self, name: &Name) -> Result<Option<(Name, PathBuf)>> {
        let exact = self.manifest_path(name);
        if fsutil::regular_file_exists(&exact)? {
            return Ok(Some((name.clone(), exact)));
        }
        let mut dir = self.manifests_dir();
        let mut found = Vec::new();
        for part in [&name.host, &name.namespace, &name.model, &name.tag] {
            let Some(entry) = fsutil::find_entry_fold(&dir, part)? else {
                return Ok(None);
            };
            dir = dir.join(&entry);
            found.push(entry);
        }
        if !fsutil::regular_file_exists(&dir)? {
            return Ok(None);
        }
        let stored = Name {
            host: found[0].clone(),
            namespace: found[1].clone(),
            model: found[2].clone(),
            tag: found[3].clone(),
        };
        Ok(Some((stored, dir)))
    }

    /// Reads a model's manifest bytes (refusing symlinks), with the name as stored.
    pub fn read_manifest(&self, name: &Name) -> Result<(Name, PathBuf, Vec<u8>)> {
        let (stored, path) = self.find_manifest(name)?.ok_or_else(|| Error::NotFound {
            name: name.short(),
            root: self.root.clone(),
        })?;
        let bytes = fsutil::read_small_file(&path, manifest::MAX_MANIFEST)?;
        Ok((stored, path, bytes))
    }

    /// Every manifest in the store: (name, path). Entries that do not form a
    /// valid name are skipped here (`verify --all` reports them).
    pub fn manifests(&self) -> Result<Vec<(Name, PathBuf)>> {
        let mut out = Vec::new();
        let root = self.manifests_dir();
        for (parts, path, kind) in fsutil::walk_depth(&root, 4)? {
            if kind != fsutil::EntryKind::File {
                continue;
            }
            let text = format!("{}/{}/{}:{}", parts[0], parts[1], parts[2], parts[3]);
            if let Ok(name) = Name::parse(&text) {
                out.push((name, path));
            }
        }
        out.sort();
        Ok(out)
    }
}
