//! The routes that move or build models: `/api/pull`, `/api/push` (over
//! `registry`) and `/api/create` (over `store::create`).
//!
//! Each checks its request on the executor, then does the work on tokio's
//! blocking pool and reports as Ollama does: NDJSON status lines ending in
//! `{"status":"success"}` or an `{"error":"…"}` line (HTTP 200 either way),
//! or with `"stream": false` one object, the error with its status code.
//!
//! Pull and push lines per blob:
//! `{"status":"pulling <12 hex>","digest":"sha256:…","total":N,"completed":M}`
//! (about every 250 ms while bytes arrive; a blob already present once, with
//! completed = total). A client that goes away cancels a pull (also one
//! that `/api/create` starts for its `from`): the download stops within a
//! read, its partial file is removed and no manifest is written; blobs
//! already complete stay. Push and create run to their end.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use serde_json::{json, Value};
use store::{Modelfile, ModelfileCommand as Command, Name, Store};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use crate::api::{line, str_field, stream_flag};
use crate::http::{json, read_json, stream_response, ApiError};
use crate::log::Log;
use crate::App;

type AppState = State<Arc<App>>;

/// Where a job's status lines go (a client that has gone is ignored), and
/// the flag its going sets ([`CancelOnDrop`]).
#[derive(Clone)]
struct Status {
    tx: UnboundedSender<Value>,
    cancel: registry::Cancel,
}

/// Sets the flag when dropped: the response holds it (in its body stream,
/// or in the future awaiting the job), so hyper dropping the response for
/// a client that went away cancels the job.
struct CancelOnDrop(registry::Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel()
    }
}

impl Status {
    fn send(&self, v: Value) {
        let _ = self.tx.send(v);
    }
    fn say(&self, s: impl Into<String>) {
        self.send(json!({ "status": s.into() }));
    }
    /// A registry progress callback that sends `<verb> <12 hex>` lines.
    fn blobs(&self, verb: &'static str) -> registry::Progress {
        let st = self.clone();
        registry::Progress::new(move |d, completed, total| {
            st.send(json!({
                "status": format!("{verb} {}", d.short()),
                "digest": d.to_string(),
                "total": total,
                "completed": completed,
            }))
        })
    }
}

/// Runs `job` on the blocking pool; its status lines and then `success`
/// or the error, as a stream or (`stream` false) one object.
async fn progress(
    stream: bool,
    job: impl FnOnce(&Status) -> Result<(), ApiError> + Send + 'static,
) -> Response {
    let (tx, rx) = unbounded_channel();
    let cancel = registry::Cancel::new();
    let guard = CancelOnDrop(cancel.clone());
    let st = Status { tx, cancel };
    let last = st.clone();
    let handle = tokio::task::spawn_blocking(move || job(&st));
    let finish = |r: Result<Result<(), ApiError>, tokio::task::JoinError>| match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(ApiError::internal(format!("the job failed: {e}"))),
    };
    if !stream {
        drop((rx, last));
        // `guard` lives in this future until the job is done
        let r = finish(handle.await);
        drop(guard);
        return match r {
            Ok(()) => json(StatusCode::OK, &json!({"status": "success"})),
            Err(e) => e.native(),
        };
    }
    tokio::spawn(async move {
        match finish(handle.await) {
            Ok(()) => last.say("success"),
            Err(e) => last.send(json!({ "error": e.msg })),
        }
    });
    let s = futures_util::stream::unfold((rx, guard), |(mut rx, guard)| async move {
        let v = rx.recv().await?;
        Some((Ok(line(&v)), (rx, guard)))
    });
    stream_response("application/x-ndjson", s)
}

/// `model`, else the legacy `name`; 400 `model is required` when empty.
fn model_field(req: &Value) -> Result<String, ApiError> {
    let m = str_field(req, "model")
        .filter(|m| !m.is_empty())
        .or_else(|| str_field(req, "name"))
        .unwrap_or_default();
    if m.is_empty() {
        return Err(ApiError::bad("model is required"));
    }
    Ok(m)
}

/// What a pull or push names: the model as given (logged), as
/// [`registry_name`] reads it, and the `insecure` flag.
struct Target {
    model: String,
    name: Name,
    base: Option<String>,
    insecure: bool,
}

fn target(req: &Value, log: &Log) -> Result<Target, ApiError> {
    let model = model_field(req)?;
    log.model(&model);
    let insecure = req
        .get("insecure")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let (name, base) = registry_name(&model)?;
    Ok(Target {
        model,
        name,
        base,
        insecure,
    })
}

/// A name as `fetch-blob NAME` takes it (`http://host/ns/m:tag` too), and
/// the registry base URL such a prefix gives.
fn registry_name(model: &str) -> Result<(Name, Option<String>), ApiError> {
    registry::parse_name(model).map_err(|_| ApiError::bad("invalid model name"))
}

fn registry_error(e: registry::Error) -> ApiError {
    match e {
        registry::Error::NotFound { .. } => {
            ApiError::internal("pull model manifest: file does not exist")
        }
        e => ApiError::internal(e.to_string()),
    }
}

// ---- /api/pull ----

pub(crate) async fn pull(
    State(app): AppState,
    Extension(log): Extension<Log>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        let req = read_json(&headers, body).await?;
        let t = target(&req, &log)?;
        let (name, insecure) = ((t.name, t.base), t.insecure);
        let store = app.opts.store.clone();
        Ok(progress(stream_flag(&req), move |st| {
            pull_job(&store, name, insecure, st)
        })
        .await)
    };
    r.await.unwrap_or_else(ApiError::native)
}

/// Pulls `name` into `store`: the manifest, every missing blob, then the
/// manifest into the store.
fn pull_job(
    store: &Store,
    (name, base): (Name, Option<String>),
    insecure: bool,
    st: &Status,
) -> Result<(), ApiError> {
    st.say("pulling manifest");
    let mut o = registry::FetchOptions::default();
    o.remote.base_url = base;
    o.remote.insecure = insecure;
    o.remote.store = Some(store.clone());
    let mut doc = registry::resolve_remote(&name, &o.remote).map_err(registry_error)?;
    o.on_progress = Some(st.blobs("pulling"));
    o.cancel = Some(st.cancel.clone());
    // digests are checked as each blob lands and the manifest is written
    // last, inside fetch_blob; the two lines below name those steps
    registry::fetch_blob(&mut doc, store, &o).map_err(|e| {
        if let registry::Error::Canceled { .. } = e {
            eprintln!("serve: pull of {name} canceled: the client went away");
        }
        registry_error(e)
    })?;
    st.say("verifying sha256 digest");
    st.say("writing manifest");
    Ok(())
}

// ---- /api/push ----

pub(crate) async fn push(
    State(app): AppState,
    Extension(log): Extension<Log>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        let req = read_json(&headers, body).await?;
        let Target {
            model,
            name,
            base,
            insecure,
        } = target(&req, &log)?;
        let store = app.opts.store.clone();
        match store.find_manifest(&name) {
            Ok(Some(_)) => {}
            Ok(None) => return Err(ApiError::not_found(format!("model '{model}' not found"))),
            Err(e) => return Err(ApiError::internal(e.to_string())),
        }
        let job = move |st: &Status| {
            st.say("retrieving manifest");
            let mut o = registry::PushOptions {
                on_progress: Some(st.blobs("pushing")),
                ..registry::PushOptions::default()
            };
            o.remote.base_url = base;
            o.remote.insecure = insecure;
            registry::push(&name, &store, &o).map_err(|e| ApiError::internal(e.to_string()))?;
            st.say("pushing manifest");
            Ok(())
        };
        Ok(progress(stream_flag(&req), job).await)
    };
    r.await.unwrap_or_else(ApiError::native)
}

// ---- /api/create ----

/// A create request, checked: the Modelfile it amounts to, and what the
/// job needs besides.
struct CreateReq {
    name: Name,
    modelfile: Modelfile,
    /// `from`, when it names a model (pulled first when missing).
    from: Option<(Name, Option<String>)>,
    /// Whether the source is an uploaded GGUF (`files`).
    gguf: bool,
    /// `quantize`: the type to quantize the weights to.
    quantize: Option<engine::quantize::QuantType>,
}

pub(crate) async fn create(
    State(app): AppState,
    Extension(log): Extension<Log>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        let req = read_json(&headers, body).await?;
        let store = app.opts.store.clone();
        if let Ok(m) = model_field(&req) {
            log.model(&m);
        }
        let c = create_request(&req, &store)?;
        let threads = app.opts.load.n_threads;
        Ok(progress(stream_flag(&req), move |st| {
            create_job(&store, c, threads, st)
        })
        .await)
    };
    r.await.unwrap_or_else(ApiError::native)
}

/// Checks a create request and turns it into Modelfile commands. Blobs
/// are named by digest only: no request names a path on the server.
fn create_request(req: &Value, store: &Store) -> Result<CreateReq, ApiError> {
    let model = model_field(req)?;
    let name = Name::parse(&model).map_err(|_| ApiError::bad("invalid model name"))?;
    let quantize = match req.get("quantize") {
        None | Some(Value::Null) => None,
        Some(Value::String(q)) if q.is_empty() => None,
        Some(Value::String(q)) => {
            Some(engine::quantize::QuantType::parse(q).map_err(ApiError::bad)?)
        }
        Some(_) => return Err(ApiError::bad("quantize must be a string")),
    };
    if req
        .get("adapters")
        .and_then(Value::as_object)
        .is_some_and(|a| !a.is_empty())
    {
        return Err(ApiError::bad("adapters are not supported"));
    }
    let text = |k: &str| -> Result<Option<String>, ApiError> {
        match req.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::bad(format!("{k} must be a string"))),
        }
    };
    let from_name = text("from")?.filter(|f| !f.is_empty());
    let files = match req.get("files") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) if !m.is_empty() => Some(m),
        Some(Value::Object(_)) => None,
        Some(_) => return Err(ApiError::bad("files must be an object of name: digest")),
    };
    let mut commands = vec![];
    let (from, gguf) = if let Some(f) = &from_name {
        let (n, base) = registry_name(f)?;
        // the name goes to store::create as FROM; one that could read as a
        // path never does
        if n.host.starts_with('.') {
            return Err(ApiError::bad("invalid model name"));
        }
        commands.push(Command::From(n.to_string()));
        (Some((n, base)), false)
    } else if let Some(files) = files {
        if files.len() > 1 {
            return Err(ApiError::bad("only one GGUF file is supported"));
        }
        let (file, digest) = files.iter().next().expect("one file");
        let p = std::path::Path::new(file);
        if file.is_empty()
            || p.is_absolute()
            || p.components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(ApiError::bad("file path must be relative"));
        }
        let digest = digest
            .as_str()
            .and_then(|d| d.parse::<store::Digest>().ok())
            .ok_or_else(|| ApiError::bad(format!("invalid digest for {file:?}")))?;
        match store.has_blob(&digest) {
            Ok(true) => {}
            Ok(false) => return Err(ApiError::bad(format!("blob \"{digest}\" not found"))),
            Err(e) => return Err(ApiError::internal(e.to_string())),
        }
        // the path comes from the digest alone
        let path = store.blob_path(&digest);
        commands.push(Command::From(path.to_string_lossy().into_owned()));
        (None, true)
    } else {
        return Err(ApiError::bad("neither 'from' or 'files' was specified"));
    };
    if let Some(t) = text("template")? {
        commands.push(Command::Template(t));
    }
    if let Some(s) = text("system")? {
        commands.push(Command::System(s));
    }
    match req.get("license") {
        None | Some(Value::Null) => {}
        Some(Value::String(l)) => commands.push(Command::License(l.clone())),
        Some(Value::Array(ls)) => {
            for l in ls {
                let l = l.as_str().ok_or_else(|| {
                    ApiError::bad("license must be a string or a list of strings")
                })?;
                commands.push(Command::License(l.to_string()));
            }
        }
        Some(_) => {
            return Err(ApiError::bad(
                "license must be a string or a list of strings",
            ))
        }
    }
    match req.get("parameters") {
        None | Some(Value::Null) => {}
        Some(Value::Object(ps)) => {
            for (k, v) in ps {
                let mut add = |v: &Value| -> Result<(), ApiError> {
                    let s = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        _ => {
                            return Err(ApiError::bad(format!("parameter {k}: invalid value {v}")))
                        }
                    };
                    commands.push(Command::Parameter(k.clone(), s));
                    Ok(())
                };
                match v {
                    Value::Array(vs) => vs.iter().try_for_each(&mut add)?,
                    v => add(v)?,
                }
            }
        }
        Some(_) => return Err(ApiError::bad("parameters must be an object")),
    }
    match req.get("messages") {
        None | Some(Value::Null) => {}
        Some(Value::Array(ms)) => {
            for m in ms {
                let role = m.get("role").and_then(Value::as_str);
                let content = m.get("content").and_then(Value::as_str).unwrap_or("");
                let role = role.ok_or_else(|| ApiError::bad("each message needs a string role"))?;
                commands.push(Command::Message(role.to_string(), content.to_string()));
            }
        }
        Some(_) => return Err(ApiError::bad("messages must be a list")),
    }
    let modelfile = Modelfile { commands };
    // an unknown parameter or a bad value is the client's mistake
    modelfile
        .params_json()
        .map_err(|e| ApiError::bad(e.to_string()))?;
    Ok(CreateReq {
        name,
        modelfile,
        from,
        gguf,
        quantize,
    })
}

/// The blobs in the store now (for "using existing layer").
fn blob_set(store: &Store) -> BTreeSet<String> {
    std::fs::read_dir(store.blobs_dir())
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn create_job(store: &Store, c: CreateReq, threads: usize, st: &Status) -> Result<(), ApiError> {
    if let Some((from, base)) = c.from {
        match store.find_manifest(&from) {
            Ok(Some(_)) => {}
            // Ollama pulls a missing base model first
            Ok(None) => pull_job(store, (from, base), false, st)?,
            Err(e) => return Err(ApiError::internal(e.to_string())),
        }
    }
    if c.gguf {
        st.say("parsing GGUF");
    }
    let before = blob_set(store);
    // relative paths are taken from blobs/, where only sha256-* files live:
    // a model name never reads as a file
    let quantize = c.quantize.map(|to| {
        let st = st.clone();
        store::Quantize {
            to: to.name().into(),
            run: Arc::new(move |src: &Path, dst: &Path, from: &str| {
                st.say(format!("quantizing {from} model to {}", to.name()));
                let opts = engine::quantize::QuantizeOptions {
                    to,
                    threads,
                    allow_requantize: false,
                };
                engine::quantize::quantize(src, dst, &opts)
            }),
        }
    });
    let opts = store::CreateOptions {
        base_dir: Some(store.blobs_dir()),
        quantize,
    };
    let doc = store::create(store, &c.name, &c.modelfile, &opts).map_err(|e| match e {
        store::Error::NotFound { .. } => ApiError::not_found(e.to_string()),
        store::Error::Gguf { .. }
        | store::Error::Modelfile { .. }
        | store::Error::Protocol(_)
        | store::Error::Unsupported(_) => ApiError::bad(e.to_string()),
        e => ApiError::internal(e.to_string()),
    })?;
    for b in doc.layers.iter() {
        if before.contains(&b.digest.blob_file_name()) {
            st.say(format!("using existing layer {}", b.digest));
        } else {
            st.say(format!("creating new layer {}", b.digest));
        }
    }
    st.say("writing manifest");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(req: Value) -> String {
        let dir = std::env::temp_dir().join(format!("serve-manage-{}", std::process::id()));
        let store = Store::open(&dir);
        match create_request(&req, &store) {
            Ok(_) => panic!("{req} accepted"),
            Err(e) => e.msg,
        }
    }

    #[test]
    fn create_requests_never_name_a_path() {
        let d = format!("sha256:{}", "a".repeat(64));
        for f in ["../x.gguf", "/etc/passwd", "a/../../x", ""] {
            assert_eq!(
                err(json!({"model": "m", "files": {f: d}})),
                "file path must be relative",
                "{f:?}"
            );
        }
        for from in ["/etc/passwd", "../ns/m", "./m.gguf", "~/m"] {
            assert_eq!(
                err(json!({"model": "m", "from": from})),
                "invalid model name",
                "{from:?}"
            );
        }
        assert_eq!(
            err(json!({"model": "m", "files": {"x.gguf": "/etc/passwd"}})),
            "invalid digest for \"x.gguf\""
        );
        assert_eq!(
            err(json!({"model": "m", "files": {"x.gguf": d}})),
            format!("blob \"{d}\" not found")
        );
    }

    #[test]
    fn create_request_fields_become_modelfile_commands() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path());
        let c = create_request(
            &json!({"name": "m:v1", "from": "base", "template": "T", "system": "S",
                    "license": ["A", "B"], "parameters": {"top_k": 5, "stop": ["x", "y"]},
                    "messages": [{"role": "user", "content": "hi"}]}),
            &store,
        )
        .unwrap();
        assert_eq!(c.name.to_string(), "registry.ollama.ai/library/m:v1");
        assert!(!c.gguf);
        let p = |k: &str, v: &str| Command::Parameter(k.into(), v.into());
        assert_eq!(
            c.modelfile.commands,
            [
                Command::From("registry.ollama.ai/library/base:latest".into()),
                Command::Template("T".into()),
                Command::System("S".into()),
                Command::License("A".into()),
                Command::License("B".into()),
                p("top_k", "5"),
                p("stop", "x"),
                p("stop", "y"),
                Command::Message("user".into(), "hi".into()),
            ]
        );
        let bad = |req: Value| create_request(&req, &store).err().unwrap().msg;
        assert_eq!(
            bad(json!({"model": "m", "from": "b", "quantize": "q9_9"})),
            "unsupported quantization type q9_9"
        );
        assert_eq!(
            bad(json!({"model": "m"})),
            "neither 'from' or 'files' was specified"
        );
        assert_eq!(bad(json!({"from": "b"})), "model is required");
        assert!(bad(json!({"model": "m", "from": "b", "license": 3})).contains("license"));
    }
}
