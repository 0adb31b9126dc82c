//! Ollama's HTTP API, and OpenAI's, over the store and the runner: what
//! `ollama serve` does, for the clients people already use.
//!
//! [`serve`] listens on [`Options::addr`] and answers:
//!
//! * native routes (`api`): `GET|HEAD /`, `/api/version`, `/api/tags`,
//!   `/api/show`, `/api/generate`, `/api/chat`, `/api/ps`, `/api/copy`,
//!   `/api/delete`, `HEAD|POST /api/blobs/:digest`;
//! * model management (`manage`): `/api/pull`, `/api/push` (over
//!   `registry`), `/api/create` (over `store::create`), with Ollama's
//!   progress lines;
//! * OpenAI's (`openai`): `/v1/chat/completions`, `/v1/completions`,
//!   `/v1/models`, `/v1/models/{model}`.
//!
//! Models load on first use and stay loaded `keep_alive` ([`sched`]); the
//! engines run on one thread per loaded model, never on the async
//! executor. Bodies are bounded ([`MAX_BODY`]), the `Host` header is
//! checked when bound to loopback (DNS rebinding), and CORS follows
//! `OLLAMA_ORIGINS` ([`guard`]). Each request logs one line on stderr.
//!
//! ```no_run
//! let o = serve::Options {
//!     addr: serve::parse_host("127.0.0.1:11434").unwrap(),
//!     store: store::Store::open("/tmp/models"),
//!     ..Default::default()
//! };
//! serve::serve(o)?;
//! # Ok::<(), String>(())
//! ```
#![deny(missing_docs)]

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, head, post};
use axum::Router;

mod api;
mod caps;
mod embed;
pub mod guard;
mod http;
mod log;
mod manage;
mod openai;
mod options;
mod reply;
pub mod sched;

pub use options::parse_keep_alive;

/// The version `/api/version` reports: an Ollama version the clients
/// accept.
pub const VERSION: &str = "0.13.0";

/// Largest JSON request body; a larger one gets 413 unread.
pub const MAX_BODY: usize = 32 << 20;

/// How to serve.
#[derive(Clone)]
pub struct Options {
    /// Where to listen.
    pub addr: SocketAddr,
    /// The model store.
    pub store: store::Store,
    /// Load-time options for every model: context, threads, engine, GPU
    /// layers (its `model` is set per model).
    pub load: runner::InferOptions,
    /// Default `keep_alive` (`OLLAMA_KEEP_ALIVE`; 5 minutes).
    pub keep_alive: sched::KeepAlive,
    /// Scheduler limits.
    pub sched: sched::SchedOptions,
    /// Extra allowed CORS origins (`OLLAMA_ORIGINS`).
    pub origins: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            addr: SocketAddr::from(([127, 0, 0, 1], 11434)),
            store: store::Store::open("."),
            load: runner::InferOptions::default(),
            keep_alive: sched::KeepAlive::For(Duration::from_secs(300)),
            sched: sched::SchedOptions::default(),
            origins: vec![],
        }
    }
}

/// What every handler shares.
pub(crate) struct App {
    pub(crate) opts: Options,
    pub(crate) sched: sched::Scheduler,
}

/// Parses `OLLAMA_HOST` as Ollama does: `host`, `host:port`, `:port`,
/// `http://host:port` (or `https://`, whose default port is 443; `http://`
/// without a port is 80), with defaults 127.0.0.1 and 11434; an empty value
/// is the default.
pub fn parse_host(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim().trim_matches(['"', '\'']);
    let (rest, default_port) = match s.split_once("://") {
        Some(("http", r)) => (r, 80),
        Some(("https", r)) => (r, 443),
        Some((scheme, _)) => return Err(format!("unknown scheme {scheme:?} in OLLAMA_HOST")),
        None => (s, 11434),
    };
    let rest = rest.split('/').next().unwrap_or("");
    let (host, port) = match rest.rsplit_once(':') {
        // a bare IPv6 address without brackets has several colons
        Some((h, p)) if !h.contains(':') || h.ends_with(']') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| format!("invalid port {p:?} in OLLAMA_HOST"))?;
            (h, port)
        }
        _ => (rest, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = if host.is_empty() { "127.0.0.1" } else { host };
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?} of OLLAMA_HOST: {e}"))?
        .next()
        .ok_or_else(|| format!("cannot resolve {host:?} of OLLAMA_HOST"))
}

/// Serves until the process ends. Errors: the address cannot be bound, or
/// the runtime cannot start.
pub fn serve(opts: Options) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(opts.addr)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", opts.addr))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        eprintln!("serve: listening on {addr}");
        axum::serve(listener, router(opts))
            .await
            .map_err(|e| format!("serving on {addr}: {e}"))
    })
}

/// The routes and the layers around them.
pub(crate) fn router(opts: Options) -> Router {
    let app = Arc::new(App {
        sched: sched::Scheduler::new(opts.sched.clone()),
        opts: opts.clone(),
    });
    Router::new()
        .route("/", get(api::root).head(api::root))
        .route("/api/version", get(api::version).head(api::version))
        .route("/api/tags", get(api::tags).head(api::tags))
        .route("/api/show", post(api::show))
        .route("/api/generate", post(api::generate))
        .route("/api/chat", post(api::chat))
        .route("/api/embed", post(embed::api_embed))
        .route("/api/embeddings", post(embed::api_embeddings))
        .route("/api/ps", get(api::ps))
        .route("/api/copy", post(api::copy))
        .route("/api/delete", axum::routing::delete(api::delete))
        .route("/api/pull", post(manage::pull))
        .route("/api/push", post(manage::push))
        .route("/api/create", post(manage::create))
        .route(
            "/api/blobs/{digest}",
            head(api::blob_head).post(api::blob_post),
        )
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(embed::openai_embeddings))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{*model}", get(openai::model))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .with_state(app)
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(guard::Guard::new(opts.addr, &opts.origins)),
            guard::check,
        ))
        .layer(axum::middleware::from_fn(log::log))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_host_as_ollama() {
        let p = |s: &str| parse_host(s).unwrap().to_string();
        assert_eq!(p(""), "127.0.0.1:11434");
        assert_eq!(p(":5000"), "127.0.0.1:5000");
        assert_eq!(p("0.0.0.0"), "0.0.0.0:11434");
        assert_eq!(p("127.0.0.1:8080"), "127.0.0.1:8080");
        assert_eq!(p("http://127.0.0.1:8080"), "127.0.0.1:8080");
        assert_eq!(p("http://127.0.0.1"), "127.0.0.1:80");
        assert_eq!(p("https://127.0.0.1"), "127.0.0.1:443");
        assert_eq!(p("[::1]:9000"), "[::1]:9000");
        assert_eq!(p("::1"), "[::1]:11434");
        assert!(parse_host("127.0.0.1:x").is_err());
        assert!(parse_host("ftp://x").is_err());
    }
}
