//! Pull and push over the OCI distribution protocol.
//!
//! Three verbs, one entry point each:
//!
//! * [`resolve_remote`]: a model name → its pipeline document, with the
//!   manifest fetched from the registry (exact bytes in `manifest_text`).
//! * [`fetch_blob`]: makes every blob of a document present in the store
//!   (parallel ranged parts, resume after kill -9, digest checked before the
//!   blob gets its name), then writes the manifest into the store.
//! * [`push`]: uploads a model's blobs, then its manifest.
//!
//! Sources: Ollama's registry (blobs answer 307 to a CDN), any OCI registry
//! serving blobs with 200, Docker Hub (`docker.io/ai/<model>`, anonymous
//! Bearer tokens from `auth.docker.io`) and `hf.co/<user>/<repo>:<quant>`.
//! A model name may start with `http://` or `https://` ([`parse_name`]);
//! `http` is only used with `--insecure` or such a prefix.
//!
//! ## Document fields added here (in `extra`)
//!
//! `resolve_remote` adds to the `model` document:
//!
//! ```text
//! "registry": {"url": "http://127.0.0.1:5000", "insecure": true}
//! ```
//!
//! the base URL the manifest came from. `fetch-blob` fetches blobs from it
//! (else from `https://<parts.host>`). Credentials are looked up for the host
//! of that URL and are never sent anywhere else.
//!
//! ## Security rules (see shared/HOSTILE.md rows 1–18)
//!
//! * every digest is validated before any file or network operation; blob
//!   paths come only from [`protocol::Digest`];
//! * response bodies are capped (manifest 4 MiB, token 64 KiB, error 8 KiB)
//!   and never decompressed;
//! * `Authorization` goes only to the registry's own origin (scheme, host,
//!   port); a redirect to another origin drops it for the rest of the chain;
//!   a token realm on another origin is asked for an anonymous token only;
//!   credentials and Ollama key signatures go to a realm on the registry's
//!   origin, an allowlisted pair, or one the user trusts
//!   (`$LLPIPE_TRUSTED_REALMS`); every realm must be https unless insecure;
//! * the descriptor size is authoritative: one byte more is an error;
//! * a blob is hashed while it downloads into `blobs/sha256-<hex>-partial`
//!   and renamed to `blobs/sha256-<hex>` only when the digest matches.
//!
//! ## Ollama key auth
//!
//! Token requests to Ollama registries (registry.ollama.ai, ollama.com and
//! those in `$LLPIPE_OLLAMA_REGISTRIES`) are signed with `~/.ollama/id_ed25519`
//! as Ollama signs them ([`OllamaKey`]); the key pair is created on first use.
//! Credentials for the host, when there are any, are used instead (as Ollama
//! prefers basic auth when it has a user name and password).
//!
//! ## Transports
//!
//! https, and every request with a body, goes through ureq (rustls).
//! Bodiless `GET`/`HEAD` over plain http (local registries) go through a
//! small HTTP/1.1 client of our own that reads bodies straight into the
//! caller's buffer (ureq reads 8 KiB per syscall); redirects, auth and the
//! credential rules above are the same for both.
//!
//! ```no_run
//! use registry::{fetch_blob, resolve_remote, FetchOptions, RemoteOptions};
//! let (name, base) = registry::parse_name("http://127.0.0.1:5000/library/smollm2:135m")?;
//! let opts = RemoteOptions { base_url: base, ..RemoteOptions::default() };
//! let mut doc = resolve_remote(&name, &opts)?;
//! let store = store::Store::from_env()?;
//! fetch_blob(&mut doc, &store, &FetchOptions::default())?;
//! assert!(doc.blobs().all(|b| b.present));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod auth;
mod client;
mod download;
mod fetch;
mod http1;
mod ollama_key;
mod push;
mod realm;
mod resolve;

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use auth::{from_docker_config, parse_www_authenticate, Challenge, Credentials};
pub use client::OLLAMA_REGISTRIES_ENV;
pub use download::PARTIAL_SUFFIX;
pub use fetch::{fetch_blob, FetchOptions, FetchReport};
pub use ollama_key::{default_key_dir, signed_data, token_url, OllamaKey};
pub use push::{push, PushOptions, PushReport};
pub use realm::TRUSTED_REALMS_ENV;
pub use resolve::{parse_name, resolve_remote, MAX_MANIFEST};

/// Errors of registry operations. Messages name the model and registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// 401: no or wrong credentials.
    #[error("{what}: registry {registry} answered 401 unauthorized (set LLPIPE_REGISTRY_USERNAME/LLPIPE_REGISTRY_PASSWORD or log in with docker login)")]
    Unauthorized {
        /// Registry base URL.
        registry: String,
        /// What was asked for (model, blob).
        what: String,
    },
    /// 403: credentials accepted but not allowed.
    #[error("{what}: registry {registry} answered 403 forbidden")]
    Forbidden {
        /// Registry base URL.
        registry: String,
        /// What was asked for.
        what: String,
    },
    /// 404: no such model, tag or blob.
    #[error("{what}: not found on registry {registry}")]
    NotFound {
        /// Registry base URL.
        registry: String,
        /// What was asked for.
        what: String,
    },
    /// 412: the registry says this model needs a newer client.
    #[error("{what}: registry {registry} says this model needs a newer client (412 precondition failed)")]
    NeedsNewerClient {
        /// Registry base URL.
        registry: String,
        /// What was asked for.
        what: String,
    },
    /// Any other unexpected HTTP status.
    #[error("{what}: registry {registry} answered {status}{detail}")]
    Status {
        /// Registry base URL.
        registry: String,
        /// What was asked for.
        what: String,
        /// The HTTP status.
        status: u16,
        /// Error codes from the body, `: CODE message`, or empty.
        detail: String,
    },
    /// The registry host name did not resolve.
    #[error("{what}: cannot resolve registry host {registry}: {detail}")]
    Dns {
        /// Registry base URL.
        registry: String,
        /// What was asked for.
        what: String,
        /// The resolver's message.
        detail: String,
    },
    /// TLS handshake or certificate failure.
    #[error("{what}: TLS failure talking to registry {registry}: {detail}")]
    Tls {
        /// Registry base URL.
        registry: String,
        /// What was asked for.
        what: String,
        /// The TLS library's message.
        detail: String,
    },
    /// Connection refused, reset, timed out or stalled (retryable).
    #[error("{what}: network error talking to {registry}: {detail}")]
    Net {
        /// Registry base URL (or the redirect target).
        registry: String,
        /// What was asked for.
        what: String,
        /// What happened.
        detail: String,
    },
    /// Authentication could not be carried out (bad challenge, refused realm, token failure).
    #[error("{0}")]
    Auth(String),
    /// A response that breaks the protocol (bad Content-Range, too many bytes, 416…).
    #[error("{what}: {why}")]
    Protocol {
        /// What was asked for.
        what: String,
        /// What is wrong.
        why: String,
    },
    /// The registry answered a ranged request with the whole blob (200);
    /// the download is retried once as a single whole GET.
    #[error("{what}: registry ignored a Range request (answered 200 instead of 206)")]
    RangesUnsupported {
        /// What was asked for.
        what: String,
    },
    /// A manifest refused before anything was written.
    #[error("invalid manifest for {what}: {why}")]
    BadManifest {
        /// The model.
        what: String,
        /// What is wrong.
        why: String,
    },
    /// Downloaded bytes whose digest is not the expected one; nothing was stored.
    #[error("blob {expected}: digest mismatch, got {got} (nothing stored)")]
    DigestMismatch {
        /// The digest the manifest names.
        expected: protocol::Digest,
        /// The digest of the bytes received.
        got: protocol::Digest,
    },
    /// A local file-system error.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A bad, unreadable or unsafe Ollama key file.
    #[error("ollama key {}: {why}", path.display())]
    Key {
        /// The key file (or its directory).
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// An error from the store.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// A bad name or digest.
    #[error(transparent)]
    Name(#[from] protocol::Error),
    /// The caller's [`Cancel`] was set; the download's partial file is removed.
    #[error("{what}: canceled")]
    Canceled {
        /// What was being fetched.
        what: String,
    },
}

impl Error {
    /// Whether trying again may help (network trouble, 5xx, 429, 408).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Net { .. } => true,
            Error::Status { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            _ => false,
        }
    }
}

/// The environment the registry tools read, for their `--help` and man pages.
pub const ENV_HELP: &str = "Environment:\n  \
LLPIPE_REGISTRY_USERNAME, LLPIPE_REGISTRY_PASSWORD  credentials for the registry (else docker's config.json)\n  \
LLPIPE_TRUSTED_REALMS  HOST[:PORT]=URL entries: token services on another origin that may receive \
credentials and Ollama key signatures (others get anonymous token requests only)\n  \
LLPIPE_OLLAMA_REGISTRIES  more HOST[:PORT]s whose token requests are signed with the Ollama key \
(besides registry.ollama.ai and ollama.com)\n  \
HOME  the Ollama key is $HOME/.ollama/id_ed25519 (created when missing, its public key printed once)";

/// A progress callback: `(blob, bytes completed, bytes in all)`. Called
/// from the thread doing the work (or one beside it), so it must be cheap
/// and must not block.
#[derive(Clone)]
pub struct Progress(pub Arc<ProgressFn>);

/// The function inside a [`Progress`].
pub type ProgressFn = dyn Fn(&protocol::Digest, u64, u64) + Send + Sync;

impl Progress {
    /// Wraps `f`.
    pub fn new(f: impl Fn(&protocol::Digest, u64, u64) + Send + Sync + 'static) -> Progress {
        Progress(Arc::new(f))
    }
    pub(crate) fn report(&self, d: &protocol::Digest, completed: u64, total: u64) {
        (self.0)(d, completed, total)
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress(..)")
    }
}

/// A flag the caller sets to stop a [`fetch_blob`] (a client that went
/// away). Workers look at it between reads, so a download stops within one
/// read of the socket; its partial file is removed and no manifest is written.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A flag not yet set.
    pub fn new() -> Cancel {
        Cancel::default()
    }
    /// Sets the flag.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst)
    }
    /// Whether the flag is set.
    pub fn is_canceled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Shorthand.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}

/// How to reach a registry; shared by the three verbs.
#[derive(Clone, Debug)]
pub struct RemoteOptions {
    /// Base URL (`http://127.0.0.1:5000`) overriding `https://<host>` from the
    /// name. [`parse_name`] returns one when the name had a scheme.
    pub base_url: Option<String>,
    /// Allow plain http (and http token realms) for this registry.
    pub insecure: bool,
    /// Credentials; `None` looks them up ([`Credentials::lookup`]).
    pub credentials: Option<Credentials>,
    /// A docker `config.json` to read credentials from instead of the default.
    pub docker_config: Option<PathBuf>,
    /// Token realms on another origin trusted with credentials and Ollama
    /// signatures, as `HOST[:PORT]=URL` entries (space- or comma-separated
    /// within one string); `None` reads `$LLPIPE_TRUSTED_REALMS`.
    pub trusted_realms: Option<Vec<String>>,
    /// More registries (`HOST[:PORT]`) whose token requests are signed with
    /// the Ollama key, besides registry.ollama.ai and ollama.com; `None`
    /// reads `$LLPIPE_OLLAMA_REGISTRIES`.
    pub ollama_registries: Option<Vec<String>>,
    /// Directory of the Ollama key (`id_ed25519`); `None` is `$HOME/.ollama`.
    pub ollama_key_dir: Option<PathBuf>,
    /// The store whose blobs decide the `present` flags; `None` is
    /// [`store::Store::from_env`].
    pub store: Option<store::Store>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// A read that gets no byte for this long is a stall (then retried).
    pub stall_timeout: Duration,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            base_url: None,
            insecure: false,
            credentials: None,
            docker_config: None,
            trusted_realms: None,
            ollama_registries: None,
            ollama_key_dir: None,
            store: None,
            connect_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(30),
        }
    }
}
