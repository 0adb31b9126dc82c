//! The native routes (`/`, `/api/*`), and the run machinery the OpenAI
//! routes share ([`Found`], [`Run`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use engine::grammar::Format;
use futures_util::StreamExt;
use runner::{InferOptions, Message, RunResult};
use serde_json::{json, Map, Value};

use crate::caps::{self, parse_logprobs, parse_think, think_level, Asks, Granted};
use crate::http::{empty_ok, json, json_route, now, read_json, rfc3339, stream_response, ApiError};
use crate::log::Log;
use crate::options::{apply_load_options, apply_options, parse_keep_alive, random_seed};
use crate::reply::{Delta, Shaper};
use crate::sched::{KeepAlive, Lease, LoadRequest, ModelInfo, Report, SchedError, Work};
use crate::App;

type AppState = State<Arc<App>>;

// ---- small routes ----

pub(crate) async fn root() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "Ollama is running",
    )
        .into_response()
}

pub(crate) async fn version() -> Response {
    json(StatusCode::OK, &json!({ "version": crate::VERSION }))
}

pub(crate) async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain")],
        "404 page not found",
    )
        .into_response()
}

pub(crate) async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::CONTENT_TYPE, "text/plain")],
        "405 method not allowed",
    )
        .into_response()
}

// ---- models in the store ----

/// A model found in the store, with what a run needs from its layers.
pub(crate) struct Found {
    /// Short name (`smollm2:latest`).
    pub(crate) name: String,
    /// Whole name (`registry.ollama.ai/library/smollm2:latest`).
    pub(crate) full_name: String,
    /// It has a projector layer (vision).
    pub(crate) projector: bool,
    pub(crate) gguf: std::path::PathBuf,
    pub(crate) template: Option<String>,
    pub(crate) system: Option<String>,
    pub(crate) params: Option<String>,
    pub(crate) messages: Vec<Message>,
    pub(crate) license: Option<String>,
    pub(crate) info: ModelInfo,
    pub(crate) modified: SystemTime,
}

/// Finds `name` in the store; `not_found` is the route's 404 text.
pub(crate) fn find(app: &App, name: &str, not_found: String) -> Result<Found, ApiError> {
    let n = store::Name::parse(name).map_err(|_| ApiError::not_found(not_found.clone()))?;
    let doc = match store::resolve(&app.opts.store, &n, &Default::default()) {
        Ok(d) => d,
        Err(store::Error::NotFound { .. }) => return Err(ApiError::not_found(not_found)),
        Err(e) => return Err(ApiError::internal(e.to_string())),
    };
    let layer = |mt: &str| doc.layer(mt).and_then(|l| l.text.clone());
    let weights = doc
        .model_layer()
        .ok_or_else(|| ApiError::internal(format!("model {} has no weights layer", doc.name)))?;
    if !weights.present {
        return Err(ApiError::internal(format!(
            "model {}: weights blob {} is missing from the store",
            doc.name, weights.digest
        )));
    }
    let gguf = weights.path.clone().unwrap_or_default();
    let messages = match layer(protocol::media::MESSAGES) {
        Some(m) => serde_json::from_str(&m).unwrap_or_default(),
        None => vec![],
    };
    let details = doc
        .config
        .as_ref()
        .and_then(|c| c.path.as_ref())
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice::<store::ConfigV2>(&b).ok())
        .map(|c| details(&c))
        .unwrap_or_else(|| details(&store::ConfigV2::default()));
    let modified = doc
        .manifest_path
        .as_ref()
        .and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    Ok(Found {
        info: ModelInfo {
            name: doc.name.clone(),
            digest: doc.manifest_digest.hex().to_string(),
            size: doc.blobs().map(|b| b.size).sum(),
            details,
        },
        name: doc.name.clone(),
        full_name: n.to_string(),
        projector: doc.layer(protocol::media::PROJECTOR).is_some(),
        gguf,
        template: layer(protocol::media::TEMPLATE),
        system: layer(protocol::media::SYSTEM),
        params: layer(protocol::media::PARAMS),
        // several LICENSE layers read as one text, as Ollama joins them
        license: Some(
            doc.layers
                .iter()
                .filter(|l| l.media_type == protocol::media::LICENSE)
                .filter_map(|l| l.text.clone())
                .collect::<Vec<_>>()
                .join("\n"),
        )
        .filter(|l| !l.is_empty()),
        messages,
        modified,
    })
}

#[cfg(test)]
impl Found {
    /// A model of this name whose files are nowhere.
    pub(crate) fn for_test(name: &str, full_name: &str) -> Found {
        Found {
            name: name.into(),
            full_name: full_name.into(),
            projector: false,
            gguf: Default::default(),
            template: None,
            system: None,
            params: None,
            messages: vec![],
            license: None,
            info: ModelInfo {
                name: name.into(),
                digest: String::new(),
                size: 0,
                details: Value::Null,
            },
            modified: SystemTime::UNIX_EPOCH,
        }
    }
}

/// Ollama's `details` object from a model's config.
fn details(c: &store::ConfigV2) -> Value {
    let families = c
        .model_families
        .clone()
        .unwrap_or_else(|| vec![c.model_family.clone()]);
    json!({
        "parent_model": "",
        "format": if c.model_format.is_empty() { "gguf" } else { &c.model_format },
        "family": c.model_family,
        "families": families,
        "parameter_size": c.model_type,
        "quantization_level": c.file_type,
    })
}

pub(crate) async fn tags(State(app): AppState) -> Response {
    match tag_list(&app) {
        Ok(models) => json(StatusCode::OK, &json!({ "models": models })),
        Err(e) => e.native(),
    }
}

/// Every model in the store as `/api/tags` lists it.
pub(crate) fn tag_list(app: &App) -> Result<Vec<Value>, ApiError> {
    let list = store::list(&app.opts.store).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut out = vec![];
    for e in list {
        let name = e.name.short();
        let details = find(app, &name, String::new())
            .map(|f| f.info.details)
            .unwrap_or_else(|_| details(&store::ConfigV2::default()));
        out.push(json!({
            "name": name,
            "model": name,
            "modified_at": rfc3339(e.modified),
            "size": e.size,
            "digest": e.digest.hex(),
            "details": details,
        }));
    }
    Ok(out)
}

pub(crate) async fn show(
    State(app): AppState,
    Extension(log): Extension<Log>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    show_inner(&app, &log, &headers, body)
        .await
        .unwrap_or_else(ApiError::native)
}

async fn show_inner(
    app: &App,
    log: &Log,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req = read_json(headers, body).await?;
    let name = str_field(&req, "model")
        .filter(|s| !s.is_empty())
        .or_else(|| str_field(&req, "name"))
        .unwrap_or_default();
    if name.is_empty() {
        return Err(ApiError::bad("model is required"));
    }
    log.model(&name);
    let f = find(app, &name, format!("model '{name}' not found"))?;
    let verbose = req.get("verbose").and_then(Value::as_bool) == Some(true);
    let layers = gguf::show::Layers {
        name: Some(f.name.clone()),
        license: f.license.clone(),
        template: f.template.clone(),
        system: f.system.clone(),
        params: f.params.clone(),
        projector: f.projector,
        template_caps: vec![],
    };
    let opts = gguf::show::ShowOptions {
        verbose,
        tensors: false,
    };
    let (info, caps) = caps::with_gguf(&f, |g| {
        (gguf::show::inspect(g, &layers, &opts), caps::of_gguf(&f, g))
    })?;
    let info = info.map_err(|e| ApiError::internal(e.to_string()))?;
    let template = info.get("template").cloned().unwrap_or(Value::Null);
    let mut out = Map::new();
    if let Some(l) = &f.license {
        out.insert("license".into(), json!(l));
    }
    out.insert("modelfile".into(), json!(modelfile(&f)));
    if let Some(p) = parameters_text(f.params.as_deref()) {
        out.insert("parameters".into(), json!(p));
    }
    out.insert("template".into(), template);
    if let Some(s) = &f.system {
        out.insert("system".into(), json!(s));
    }
    out.insert("details".into(), f.info.details.clone());
    out.insert(
        "model_info".into(),
        info.get("metadata").cloned().unwrap_or(json!({})),
    );
    out.insert("capabilities".into(), json!(caps.names));
    out.insert("modified_at".into(), json!(rfc3339(f.modified)));
    Ok(json(StatusCode::OK, &Value::Object(out)))
}

/// The params layer as `ollama show --parameters` prints it.
fn parameters_text(params: Option<&str>) -> Option<String> {
    let v: Value = serde_json::from_str(params?).ok()?;
    let mut lines = vec![];
    for (k, v) in v.as_object()? {
        match v {
            Value::Array(a) => lines.extend(a.iter().map(|x| format!("{k:<30} {}", plain(x)))),
            _ => lines.push(format!("{k:<30} {}", plain(v))),
        }
    }
    Some(lines.join("\n"))
}

/// A parameter's value as Go's `%#v` prints it: a string as [`go_quote`]
/// (a `stop` of `"\n"` stays on its line), anything else as JSON.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => go_quote(s),
        _ => v.to_string(),
    }
}

/// `s` quoted as Go's `%q` (and `%#v`) quote a string: its quotes,
/// backslashes and control characters escaped, so it stays on one line.
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A Modelfile that rebuilds the model, as `ollama show --modelfile`.
fn modelfile(f: &Found) -> String {
    let mut s = format!(
        "# Modelfile generated by \"ollama show\"\n# To build a new Modelfile based on this, replace FROM with:\n# FROM {}\n\nFROM {}\n",
        f.name,
        f.gguf.display()
    );
    if let Some(t) = &f.template {
        s += &format!("TEMPLATE \"\"\"{t}\"\"\"\n");
    }
    if let Some(sys) = &f.system {
        s += &format!("SYSTEM \"\"\"{sys}\"\"\"\n");
    }
    if let Some(p) = parameters_text(f.params.as_deref()) {
        for l in p.lines() {
            s += &format!("PARAMETER {l}\n");
        }
    }
    s
}

pub(crate) async fn ps(State(app): AppState) -> Response {
    let mut loaded = app.sched.loaded();
    // never expiring shows as a century from now, and sorts first
    let forever = SystemTime::now() + Duration::from_secs(100 * 365 * 86400);
    loaded.sort_by_key(|r| std::cmp::Reverse(r.expires_at().unwrap_or(forever)));
    let models: Vec<Value> = loaded
        .iter()
        .map(|r| {
            json!({
                "name": r.info.name,
                "model": r.info.name,
                "size": r.info.size,
                "digest": r.info.digest,
                "details": r.info.details,
                "expires_at": rfc3339(r.expires_at().unwrap_or(forever)),
                "size_vram": 0,
                "context_length": r.n_ctx(),
            })
        })
        .collect();
    json(StatusCode::OK, &json!({ "models": models }))
}

pub(crate) async fn copy(
    State(app): AppState,
    Extension(log): Extension<Log>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        let req = read_json(&headers, body).await?;
        let src = str_field(&req, "source").unwrap_or_default();
        let dst = str_field(&req, "destination").unwrap_or_default();
        log.model(&src);
        let s = store::Name::parse(&src)
            .map_err(|_| ApiError::bad(format!("source \"{src}\" is invalid")))?;
        let d = store::Name::parse(&dst)
            .map_err(|_| ApiError::bad(format!("destination \"{dst}\" is invalid")))?;
        match store::copy(&app.opts.store, &s, &d) {
            Ok(_) => Ok(empty_ok()),
            Err(store::Error::NotFound { .. }) => {
                Err(ApiError::not_found(format!("model \"{src}\" not found")))
            }
            Err(e) => Err(ApiError::internal(e.to_string())),
        }
    };
    r.await.unwrap_or_else(ApiError::native)
}

pub(crate) async fn delete(
    State(app): AppState,
    Extension(log): Extension<Log>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        let req = read_json(&headers, body).await?;
        let name = str_field(&req, "model")
            .filter(|s| !s.is_empty())
            .or_else(|| str_field(&req, "name"))
            .unwrap_or_default();
        log.model(&name);
        let n = store::Name::parse(&name)
            .map_err(|_| ApiError::bad(format!("name \"{name}\" is invalid")))?;
        if let Ok(f) = find(&app, &name, String::new()) {
            app.sched.unload(&f.gguf);
        }
        match store::remove(&app.opts.store, &n) {
            Ok(_) => Ok(empty_ok()),
            Err(store::Error::NotFound { .. }) => {
                Err(ApiError::not_found(format!("model '{name}' not found")))
            }
            Err(e) => Err(ApiError::internal(e.to_string())),
        }
    };
    r.await.unwrap_or_else(ApiError::native)
}

// ---- blobs ----

fn parse_digest(s: &str) -> Result<store::Digest, ApiError> {
    s.replacen('-', ":", 1)
        .parse::<store::Digest>()
        .map_err(|_| ApiError::bad(format!("invalid digest \"{s}\"")))
}

pub(crate) async fn blob_head(State(app): AppState, Path(digest): Path<String>) -> Response {
    let d = match parse_digest(&digest) {
        Ok(d) => d,
        Err(e) => return e.native(),
    };
    match app.opts.store.has_blob(&d) {
        Ok(true) => empty_ok(),
        Ok(false) => ApiError::not_found(format!("blob \"{digest}\" not found")).native(),
        Err(e) => ApiError::internal(e.to_string()).native(),
    }
}

/// Streams the body to a temp file in the blobs folder while hashing it,
/// then renames it into place if the digest matches (201), or leaves the
/// existing blob (200).
pub(crate) async fn blob_post(
    State(app): AppState,
    Path(digest): Path<String>,
    body: Body,
) -> Response {
    let r = async {
        let d = parse_digest(&digest)?;
        if app.opts.store.has_blob(&d).unwrap_or(false) {
            return Ok(empty_ok());
        }
        let dir = app.opts.store.blobs_dir();
        std::fs::create_dir_all(&dir).map_err(|e| ApiError::internal(e.to_string()))?;
        let tmp = tempfile_in(&dir).map_err(|e| ApiError::internal(e.to_string()))?;
        let mut file = tokio::fs::File::from_std(
            tmp.reopen()
                .map_err(|e| ApiError::internal(e.to_string()))?,
        );
        let mut hasher = protocol::Hasher::new();
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ApiError::bad(format!("reading the blob: {e}")))?;
            hasher.update(&chunk);
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
        }
        tokio::io::AsyncWriteExt::flush(&mut file)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let got = hasher.finish();
        if got != d {
            return Err(ApiError::bad(format!(
                "digest mismatch, expected \"{d}\", got \"{got}\""
            )));
        }
        tmp.persist(app.opts.store.blob_path(&d))
            .map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(StatusCode::CREATED.into_response())
    };
    r.await.unwrap_or_else(ApiError::native)
}

/// A temp file that removes itself unless persisted.
struct TempBlob(Option<std::path::PathBuf>);

impl TempBlob {
    fn reopen(&self) -> std::io::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .write(true)
            .open(self.0.as_ref().expect("temp blob"))
    }
    fn persist(mut self, to: std::path::PathBuf) -> std::io::Result<()> {
        let from = self.0.take().expect("temp blob");
        std::fs::rename(from, to)
    }
}

impl Drop for TempBlob {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn tempfile_in(dir: &std::path::Path) -> std::io::Result<TempBlob> {
    let n = random_seed();
    let p = dir.join(format!(".partial-{n:016x}"));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)?;
    Ok(TempBlob(Some(p)))
}

// ---- runs ----

/// What a generate or chat request asks to run.
pub(crate) struct RunSpec {
    pub(crate) found: Found,
    pub(crate) opts: InferOptions,
    pub(crate) chat: bool,
    pub(crate) context: Vec<i32>,
    pub(crate) keep_alive: KeepAlive,
    /// How its output becomes the reply's text, thinking and tool calls.
    pub(crate) shaper: Shaper,
}

/// The options of a run on `f`: the server's load options, Ollama's
/// per-request defaults (a random seed), the model's params layer, then
/// the request's `options`.
pub(crate) fn run_options(app: &App, f: &Found, options: &Value) -> Result<InferOptions, ApiError> {
    let mut o = InferOptions {
        model: f.gguf.clone(),
        template: f.template.clone(),
        system: f.system.clone(),
        ..app.opts.load.clone()
    };
    o.sampler.seed = random_seed();
    if let Some(p) = &f.params {
        o.apply_params(p).map_err(ApiError::internal)?;
        if let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(p) {
            apply_load_options(&mut o, &obj)?;
        }
    }
    apply_options(&mut o, options)?;
    Ok(o)
}

/// The request's `keep_alive`, else the server's default.
pub(crate) fn keep_alive(app: &App, req: &Value) -> Result<KeepAlive, ApiError> {
    match req.get("keep_alive") {
        None | Some(Value::Null) => Ok(app.opts.keep_alive),
        Some(v) => parse_keep_alive(v).map_err(ApiError::bad),
    }
}

/// A run in progress: its reports, and the lease it holds until the end.
/// Dropping it (the client went away) cancels the run.
pub(crate) struct Run {
    rx: tokio::sync::mpsc::Receiver<Report>,
    lease: Option<Lease>,
    cancel: Arc<AtomicBool>,
    shaper: Shaper,
    /// The end, held while the shaper's last delta goes out.
    pending: Option<Piece>,
    pub(crate) t0: Instant,
    pub(crate) load_duration: Duration,
    pub(crate) log: Log,
}

/// A piece of a run.
pub(crate) enum Piece {
    /// What a chunk carries (never empty).
    Delta(Delta),
    Done(Box<RunResult>),
    Error(String),
}

impl Run {
    /// Acquires the model (loading it) and queues the run.
    pub(crate) async fn start(
        app: &App,
        spec: RunSpec,
        log: Log,
        t0: Instant,
    ) -> Result<Run, ApiError> {
        let lease = acquire(app, &spec.found, &spec.opts, spec.keep_alive).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let cancel = Arc::new(AtomicBool::new(false));
        lease
            .submit(Work {
                opts: spec.opts,
                chat: spec.chat,
                context: spec.context,
                reports: tx,
                cancel: cancel.clone(),
            })
            .map_err(ApiError::internal)?;
        Ok(Run {
            rx,
            load_duration: lease.load_duration,
            lease: Some(lease),
            cancel,
            shaper: spec.shaper,
            pending: None,
            t0,
            log,
        })
    }

    /// The next piece; after `Done` or `Error` the lease is released.
    pub(crate) async fn next(&mut self) -> Option<Piece> {
        if let Some(p) = self.pending.take() {
            self.lease = None;
            return Some(p);
        }
        self.lease.as_ref()?;
        let p = loop {
            match self.rx.recv().await {
                Some(Report::PromptEnd(end)) => self.shaper.prompt_end(&end),
                Some(Report::Text(t, lp)) => {
                    let d = self.shaper.piece(&t, lp.as_deref());
                    if !d.is_empty() {
                        return Some(Piece::Delta(d));
                    }
                }
                Some(Report::Done(Ok(r))) => {
                    let s = &r.summary.stats;
                    self.log
                        .tokens(s.prompt_eval_count + r.cached, s.eval_count);
                    let d = self.shaper.finish();
                    if !d.is_empty() {
                        self.pending = Some(Piece::Done(Box::new(r)));
                        return Some(Piece::Delta(d));
                    }
                    break Piece::Done(Box::new(r));
                }
                Some(Report::Done(Err(e))) => break Piece::Error(e),
                None => break Piece::Error("the model runner stopped".into()),
            }
        };
        self.lease = None;
        Some(p)
    }

    /// Ollama's final metrics, each omitted when zero.
    pub(crate) fn metrics(&self, r: &RunResult, out: &mut Map<String, Value>) {
        let s = &r.summary.stats;
        let ns = |d: Duration| d.as_nanos() as u64;
        let mut put = |k: &str, v: u64| {
            if v > 0 {
                out.insert(k.into(), json!(v));
            }
        };
        put("total_duration", ns(self.t0.elapsed()));
        put("load_duration", ns(self.load_duration));
        put("prompt_eval_count", (s.prompt_eval_count + r.cached) as u64);
        put("prompt_eval_duration", ns(s.prompt_eval_duration));
        put("eval_count", s.eval_count as u64);
        put("eval_duration", ns(s.eval_duration));
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
}

/// A lease on the model of `f` loaded with `opts`' load-time fields.
pub(crate) async fn acquire(
    app: &App,
    f: &Found,
    opts: &InferOptions,
    ka: KeepAlive,
) -> Result<Lease, ApiError> {
    let req = LoadRequest {
        load: opts.clone(),
        info: f.info.clone(),
        keep_alive: ka,
    };
    app.sched.acquire(req).await.map_err(|e| match e {
        SchedError::Busy => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server busy, please try again.  maximum pending requests exceeded",
        ),
        SchedError::Load(e) => ApiError::internal(format!("cannot load model {}: {e}", f.name)),
    })
}

/// An empty prompt: load the model (or, with `keep_alive` 0, unload it).
async fn load_only(
    app: &App,
    f: &Found,
    opts: &InferOptions,
    ka: KeepAlive,
) -> Result<&'static str, ApiError> {
    if ka == KeepAlive::For(Duration::ZERO) {
        app.sched.unload(&f.gguf);
        return Ok("unload");
    }
    drop(acquire(app, f, opts, ka).await?);
    Ok("load")
}

/// Ollama's `format`: `"json"`, a JSON schema (an object), or nothing
/// (absent, null or `""`).
pub(crate) fn format(v: Option<&Value>) -> Result<Option<Format>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s == "json" => Ok(Some(Format::Json)),
        Some(o @ Value::Object(_)) => Ok(Some(Format::Schema(o.clone()))),
        Some(other) => Err(ApiError::bad(format!(
            "invalid format: {other}: expected \"json\" or a JSON schema"
        ))),
    }
}

pub(crate) fn str_field(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_owned)
}

/// The request's `model`, logged; 400 "model is required" when it is
/// missing or empty.
pub(crate) fn required_model(req: &Value, log: &Log) -> Result<String, ApiError> {
    let name = str_field(req, "model").unwrap_or_default();
    if name.is_empty() {
        return Err(ApiError::bad("model is required"));
    }
    log.model(&name);
    Ok(name)
}

pub(crate) fn stream_flag(req: &Value) -> bool {
    req.get("stream").and_then(Value::as_bool).unwrap_or(true)
}

/// One NDJSON line.
pub(crate) fn line(v: &Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

// ---- /api/generate ----

json_route!(generate => generate_inner, ApiError::native);

async fn generate_inner(
    app: Arc<App>,
    log: Log,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let t0 = Instant::now();
    let req = read_json(&headers, body).await?;
    let name = str_field(&req, "model").unwrap_or_default();
    log.model(&name);
    let logprobs = parse_logprobs(&req)?;
    let f = find(&app, &name, format!("model '{name}' not found"))?;
    let raw = req.get("raw").and_then(Value::as_bool).unwrap_or(false);
    let system = str_field(&req, "system");
    let template = str_field(&req, "template").filter(|t| !t.is_empty());
    let context: Vec<i32> = match req.get("context") {
        None | Some(Value::Null) => vec![],
        Some(v) => {
            serde_json::from_value(v.clone()).map_err(|e| ApiError::bad(format!("context: {e}")))?
        }
    };
    if raw && (template.is_some() || system.is_some() || !context.is_empty()) {
        return Err(ApiError::bad(
            "raw mode does not support template, system, or context",
        ));
    }
    let asks = Asks {
        model: &name,
        verb: "generate",
        think: parse_think(req.get("think"))?,
        think_level: think_level(req.get("think")),
        tools: None,
        suffix: str_field(&req, "suffix").filter(|s| !s.is_empty()),
        logprobs,
    };
    let g = Granted::check(f, asks)?;
    let mut opts = run_options(&app, &g.found, req.get("options").unwrap_or(&Value::Null))?;
    opts.format = format(req.get("format"))?;
    let ka = keep_alive(&app, &req)?;
    let prompt = str_field(&req, "prompt").unwrap_or_default();
    let model = g.found.name.clone();
    if prompt.is_empty() && context.is_empty() {
        let reason = load_only(&app, &g.found, &opts, ka).await?;
        return Ok(json(
            StatusCode::OK,
            &json!({"model": model, "created_at": now(), "response": "", "done": true, "done_reason": reason}),
        ));
    }
    opts.prompt = prompt;
    opts.raw = raw;
    if system.is_some() {
        opts.system = system;
    }
    if template.is_some() {
        opts.template = template;
    }
    let run = Run::start(&app, g.apply(opts, false, context, ka), log, t0).await?;
    let m2 = model.clone();
    let finish = move |run: &Run, r: &RunResult, d: &Delta| {
        let mut m = Map::new();
        m.insert("model".into(), json!(model));
        m.insert("created_at".into(), json!(now()));
        d.put_text("response", &mut m);
        m.insert("done".into(), json!(true));
        m.insert("done_reason".into(), json!(done_reason(r)));
        if !raw {
            m.insert("context".into(), json!(r.tokens));
        }
        run.metrics(r, &mut m);
        d.put_logprobs(&mut m);
        Value::Object(m)
    };
    let chunk = move |d: &Delta| {
        let mut m = Map::new();
        m.insert("model".into(), json!(m2));
        m.insert("created_at".into(), json!(now()));
        d.put_text("response", &mut m);
        m.insert("done".into(), json!(false));
        d.put_logprobs(&mut m);
        Value::Object(m)
    };
    respond(run, stream_flag(&req), chunk, finish).await
}

/// `stop` or `length` (a canceled run never reports).
pub(crate) fn done_reason(r: &RunResult) -> &'static str {
    r.summary.stats.done_reason.as_str()
}

/// Streams NDJSON (`chunk` per delta, `finish` at the end with an empty
/// one; an error becomes an `{"error"}` line), or with `stream:false` one
/// object: `finish` with the whole reply.
async fn respond(
    mut run: Run,
    stream: bool,
    chunk: impl Fn(&Delta) -> Value + Send + Sync + 'static,
    finish: impl Fn(&Run, &RunResult, &Delta) -> Value + Send + Sync + 'static,
) -> Result<Response, ApiError> {
    if !stream {
        let (all, r) = collect(&mut run).await?;
        return Ok(json(StatusCode::OK, &finish(&run, &r, &all)));
    }
    let (chunk, finish) = (Arc::new(chunk), Arc::new(finish));
    let s = futures_util::stream::unfold(Some(run), move |run| {
        let (chunk, finish) = (chunk.clone(), finish.clone());
        async move {
            let mut run = run?;
            let v = match run.next().await? {
                Piece::Delta(d) => return Some((Ok(line(&chunk(&d))), Some(run))),
                Piece::Done(r) => finish(&run, &r, &Delta::default()),
                Piece::Error(e) => json!({ "error": e }),
            };
            Some((Ok(line(&v)), None))
        }
    });
    Ok(stream_response("application/x-ndjson", s))
}

/// Runs to the end: the whole reply and the result.
pub(crate) async fn collect(run: &mut Run) -> Result<(Delta, RunResult), ApiError> {
    let mut all = Delta::default();
    loop {
        match run.next().await {
            Some(Piece::Delta(d)) => all.extend(d),
            Some(Piece::Done(r)) => return Ok((all, *r)),
            Some(Piece::Error(e)) => return Err(ApiError::internal(e)),
            None => return Err(ApiError::internal("the run ended without a result")),
        }
    }
}

// ---- /api/chat ----

/// Parses `messages`: roles lower-cased, missing content empty; an
/// assistant's `thinking` and `tool_calls` (arguments an object, or a
/// string holding one as OpenAI sends them); a tool result's `tool_name`
/// (or `name`, or the name of the call its `tool_call_id` answers).
pub(crate) fn parse_messages(v: Option<&Value>) -> Result<Vec<Message>, ApiError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(vec![]);
    };
    let arr = v
        .as_array()
        .ok_or_else(|| ApiError::bad("messages must be a list"))?;
    let mut out: Vec<Message> = Vec::with_capacity(arr.len());
    for m in arr {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad("a message has no role"))?
            .to_ascii_lowercase();
        let content = match m.get("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(""),
            Some(_) => return Err(ApiError::bad("message content must be a string")),
        };
        let mut msg = Message::new(&role, &content);
        msg.thinking = str_field(m, "thinking")
            .or_else(|| str_field(m, "reasoning"))
            .filter(|t| !t.is_empty());
        msg.tool_calls = parse_tool_calls(m.get("tool_calls"))?;
        msg.tool_name = str_field(m, "tool_name")
            .or_else(|| str_field(m, "name"))
            .or_else(|| {
                let id = str_field(m, "tool_call_id")?;
                out.iter()
                    .rev()
                    .flat_map(|m| &m.tool_calls)
                    .find(|c| c.id.as_deref() == Some(id.as_str()))
                    .map(|c| c.name.clone())
            });
        out.push(msg);
    }
    Ok(out)
}

/// A message's `tool_calls`: `[{"id"?, "function": {"name", "arguments"}}]`.
fn parse_tool_calls(v: Option<&Value>) -> Result<Vec<template::ToolCall>, ApiError> {
    let Some(list) = v.and_then(Value::as_array) else {
        return Ok(vec![]);
    };
    list.iter()
        .map(|c| {
            let f = c.get("function").unwrap_or(&Value::Null);
            let arguments = match f.get("arguments") {
                None | Some(Value::Null) => json!({}),
                Some(Value::String(s)) => serde_json::from_str(s)
                    .map_err(|_| ApiError::bad("invalid tool call arguments"))?,
                Some(a) => a.clone(),
            };
            Ok(template::ToolCall {
                id: str_field(c, "id"),
                name: str_field(f, "name").unwrap_or_default(),
                arguments,
            })
        })
        .collect()
}

/// The request's `tools` when it has some.
pub(crate) fn tools(req: &Value) -> Option<&Value> {
    req.get("tools")
        .filter(|t| t.as_array().is_some_and(|a| !a.is_empty()))
}

json_route!(chat => chat_inner, ApiError::native);

async fn chat_inner(
    app: Arc<App>,
    log: Log,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let t0 = Instant::now();
    let req = read_json(&headers, body).await?;
    let name = required_model(&req, &log)?;
    let logprobs = parse_logprobs(&req)?;
    let f = find(&app, &name, format!("model '{name}' not found"))?;
    let asks = Asks {
        model: &name,
        verb: "chat",
        think: parse_think(req.get("think"))?,
        think_level: think_level(req.get("think")),
        tools: tools(&req),
        suffix: None,
        logprobs,
    };
    let g = Granted::check(f, asks)?;
    let mut opts = run_options(&app, &g.found, req.get("options").unwrap_or(&Value::Null))?;
    opts.format = format(req.get("format"))?;
    let ka = keep_alive(&app, &req)?;
    let messages = parse_messages(req.get("messages"))?;
    let model = g.found.name.clone();
    if messages.is_empty() {
        let reason = load_only(&app, &g.found, &opts, ka).await?;
        return Ok(json(
            StatusCode::OK,
            &json!({"model": model, "created_at": now(),
                    "message": {"role": "assistant", "content": ""}, "done": true, "done_reason": reason}),
        ));
    }
    opts.messages = g.found.messages.iter().cloned().chain(messages).collect();
    let run = Run::start(&app, g.apply(opts, true, vec![], ka), log, t0).await?;
    let m2 = model.clone();
    let message = |d: &Delta| {
        let mut msg = Map::new();
        msg.insert("role".into(), json!("assistant"));
        d.put_text("content", &mut msg);
        Value::Object(msg)
    };
    let chunk = move |d: &Delta| {
        let mut m = Map::new();
        m.insert("model".into(), json!(m2));
        m.insert("created_at".into(), json!(now()));
        m.insert("message".into(), message(d));
        m.insert("done".into(), json!(false));
        d.put_logprobs(&mut m);
        Value::Object(m)
    };
    let finish = move |run: &Run, r: &RunResult, d: &Delta| {
        let mut m = Map::new();
        m.insert("model".into(), json!(model));
        m.insert("created_at".into(), json!(now()));
        m.insert("message".into(), message(d));
        m.insert("done".into(), json!(true));
        m.insert("done_reason".into(), json!(done_reason(r)));
        run.metrics(r, &mut m);
        d.put_logprobs(&mut m);
        Value::Object(m)
    };
    respond(run, stream_flag(&req), chunk, finish).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_keep_one_per_line() {
        let p = r#"{"stop":["\n\n","say \"hi\"","a\\b"],"temperature":0.2}"#;
        let want = [
            format!("{:<30} \"\\n\\n\"", "stop"),
            format!("{:<30} \"say \\\"hi\\\"\"", "stop"),
            format!("{:<30} \"a\\\\b\"", "stop"),
            format!("{:<30} 0.2", "temperature"),
        ];
        assert_eq!(parameters_text(Some(p)).unwrap(), want.join("\n"));
    }
}
