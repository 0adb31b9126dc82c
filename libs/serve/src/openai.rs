//! OpenAI's routes: `/v1/chat/completions`, `/v1/completions`,
//! `/v1/models`, `/v1/models/{model}`, mapped onto the same runs as the
//! native ones, with OpenAI's reply and error shapes.

use engine::grammar::Format;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use runner::{InferOptions, RunResult};
use serde_json::{json, Value};

use crate::api::{
    collect, done_reason, find, go_quote, keep_alive, parse_messages, required_model, run_options,
    str_field, tools, Found, Piece, Run,
};
use crate::caps::{parse_logprobs, Asks, Granted};
use crate::http::{json, json_route, read_json, stream_response, ApiError};
use crate::log::Log;
use crate::reply::Delta;
use crate::App;

type AppState = State<Arc<App>>;

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn model_object(name: &str, modified: u64) -> Value {
    json!({"id": name, "object": "model", "created": modified, "owned_by": owner(name)})
}

/// `library` for `llama3:latest`, the namespace for `ns/model:tag`.
fn owner(name: &str) -> String {
    let parts: Vec<&str> = name.split('/').collect();
    match parts.len() {
        1 => "library".into(),
        n => parts[n - 2].into(),
    }
}

pub(crate) async fn models(State(app): AppState) -> Response {
    match crate::api::tag_list(&app) {
        Ok(list) => {
            let data: Vec<Value> = list
                .iter()
                .map(|m| {
                    let name = m["name"].as_str().unwrap_or_default();
                    let t = m["modified_at"]
                        .as_str()
                        .and_then(|s| {
                            time::OffsetDateTime::parse(
                                s,
                                &time::format_description::well_known::Rfc3339,
                            )
                            .ok()
                        })
                        .map(|t| t.unix_timestamp().max(0) as u64)
                        .unwrap_or(0);
                    model_object(name, t)
                })
                .collect();
            json(StatusCode::OK, &json!({"object": "list", "data": data}))
        }
        Err(e) => e.openai(),
    }
}

pub(crate) async fn model(State(app): AppState, Path(name): Path<String>) -> Response {
    match find(&app, &name, format!("model \"{name}\" not found")) {
        Ok(f) => json(StatusCode::OK, &model_object(&f.name, unix(f.modified))),
        Err(e) => e.openai(),
    }
}

/// Sampling fields shared by both routes, as Ollama maps them:
/// temperature and top_p default to 1.
fn sampling(app: &App, f: &Found, req: &Value) -> Result<InferOptions, ApiError> {
    let mut options = serde_json::Map::new();
    options.insert(
        "temperature".into(),
        req.get("temperature")
            .cloned()
            .filter(|v| !v.is_null())
            .unwrap_or(json!(1.0)),
    );
    options.insert(
        "top_p".into(),
        req.get("top_p")
            .cloned()
            .filter(|v| !v.is_null())
            .unwrap_or(json!(1.0)),
    );
    if let Some(n) = req.get("max_tokens").filter(|v| !v.is_null()) {
        options.insert("num_predict".into(), n.clone());
    }
    if let Some(s) = req.get("seed").filter(|v| !v.is_null()) {
        options.insert("seed".into(), s.clone());
    }
    match req.get("stop") {
        Some(Value::String(s)) => {
            options.insert("stop".into(), json!([s]));
        }
        Some(v @ Value::Array(_)) => {
            options.insert("stop".into(), v.clone());
        }
        _ => {}
    }
    let mut o = run_options(app, f, &Value::Object(options))?;
    o.format = response_format(req.get("response_format"))?;
    Ok(o)
}

/// OpenAI's `response_format`: `{"type": "text" | "json_object" |
/// "json_schema", "json_schema": {"schema": …}}`.
fn response_format(v: Option<&Value>) -> Result<Option<Format>, ApiError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    match v.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Format::Json)),
        Some("json_schema") => match v.pointer("/json_schema/schema") {
            Some(s @ Value::Object(_)) => Ok(Some(Format::Schema(s.clone()))),
            _ => Err(ApiError::bad(
                "response_format json_schema needs json_schema.schema",
            )),
        },
        _ => Err(ApiError::bad(format!(
            "invalid response_format {v}: expected type text, json_object or json_schema"
        ))),
    }
}

fn include_usage(req: &Value) -> bool {
    req.pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn usage(r: &RunResult) -> Value {
    let p = r.summary.stats.prompt_eval_count + r.cached;
    let c = r.summary.stats.eval_count;
    json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
}

fn event(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// `chatcmpl-N` / `cmpl-N`, N in 0..999 as Ollama.
fn id(prefix: &str) -> String {
    format!("{prefix}-{}", crate::options::random_seed() % 999)
}

json_route!(chat => chat_inner, ApiError::openai);

/// OpenAI's `reasoning.effort` or `reasoning_effort` as Ollama's `think`
/// and its level: `none` is off, the others on, clamped to Ollama's levels
/// (`minimal` is `low`, `xhigh` and `ultra` are `max`); absent leaves the
/// model's default; anything else is 400.
fn think_from_effort(req: &Value) -> Result<(Option<bool>, Option<String>), ApiError> {
    let effort = req
        .pointer("/reasoning/effort")
        .or_else(|| req.get("reasoning_effort"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let on = |level: &str| Ok((Some(true), Some(level.to_string())));
    match effort {
        "" => Ok((None, None)),
        "none" => Ok((Some(false), None)),
        "minimal" => on("low"),
        "xhigh" | "ultra" => on("max"),
        "low" | "medium" | "high" | "max" => on(effort),
        e => Err(ApiError::bad(format!(
            "invalid reasoning value: {} (must be \"minimal\", \"low\", \"medium\", \"high\", \"xhigh\", \"ultra\", \"max\", or \"none\")",
            go_quote(e)
        ))),
    }
}

/// An Ollama tool call (`{"id","function":{"index","name","arguments"}}`)
/// as OpenAI's, arguments a JSON string.
fn tool_call(c: &Value) -> Value {
    let f = &c["function"];
    json!({"id": c["id"], "index": f["index"], "type": "function",
           "function": {"name": f["name"], "arguments": f["arguments"].to_string()}})
}

/// `choices[].logprobs`: `{"content": […]}`, or null without any.
fn choice_logprobs(d: &Delta) -> Value {
    if d.logprobs.is_empty() {
        Value::Null
    } else {
        json!({"content": d.logprobs})
    }
}

/// `finish_reason`: Ollama's, `tool_calls` when a stop came after calls.
fn finish_reason(r: &RunResult, called: bool) -> &'static str {
    match done_reason(r) {
        "stop" if called => "tool_calls",
        reason => reason,
    }
}

async fn chat_inner(
    app: Arc<App>,
    log: Log,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let t0 = Instant::now();
    let req = read_json(&headers, body).await?;
    let name = required_model(&req, &log)?;
    let messages = parse_messages(req.get("messages"))?;
    if messages.is_empty() {
        return Err(ApiError::bad("[] is too short - 'messages'"));
    }
    let (think, think_level) = think_from_effort(&req)?;
    let logprobs = parse_logprobs(&req)?;
    let f = find(
        &app,
        &name,
        format!("model \"{name}\" not found, try pulling it first"),
    )?;
    let asks = Asks {
        model: &name,
        verb: "chat",
        think,
        think_level,
        tools: tools(&req),
        suffix: None,
        logprobs,
    };
    let g = Granted::check(f, asks)?;
    let mut opts = sampling(&app, &g.found, &req)?;
    opts.messages = g.found.messages.iter().cloned().chain(messages).collect();
    let ka = keep_alive(&app, &req)?;
    let model = g.found.name.clone();
    let mut run = Run::start(&app, g.apply(opts, true, vec![], ka), log, t0).await?;
    let created = unix(SystemTime::now());
    let cid = id("chatcmpl");
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let chunk = {
        let (cid, model) = (cid.clone(), model.clone());
        move |delta: Value, finish: Value, logprobs: Value| {
            json!({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                   "system_fingerprint": "fp_ollama",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}]})
        }
    };
    if !stream {
        let (d, r) = collect(&mut run).await?;
        let mut message = json!({"role": "assistant", "content": d.content});
        if !d.thinking.is_empty() {
            message["reasoning"] = json!(d.thinking);
        }
        if !d.tool_calls.is_empty() {
            message["tool_calls"] = d.tool_calls.iter().map(tool_call).collect();
        }
        return Ok(json(
            StatusCode::OK,
            &json!({"id": cid, "object": "chat.completion", "created": created, "model": model,
                    "system_fingerprint": "fp_ollama",
                    "choices": [{"index": 0, "message": message,
                                 "finish_reason": finish_reason(&r, !d.tool_calls.is_empty()),
                                 "logprobs": choice_logprobs(&d)}],
                    "usage": usage(&r)}),
        ));
    }
    let with_usage = include_usage(&req);
    let usage_chunk = {
        let (cid, model) = (cid.clone(), model.clone());
        move |r: &RunResult| {
            json!({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                   "system_fingerprint": "fp_ollama", "choices": [], "usage": usage(r)})
        }
    };
    let first = event(&chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
        Value::Null,
    ));
    let called = AtomicBool::new(false);
    sse(run, first, move |p| match p {
        Piece::Delta(d) => {
            let mut out = vec![];
            let calls: Vec<Value> = d.tool_calls.iter().map(tool_call).collect();
            let mixed = !d.thinking.is_empty() && (!d.content.is_empty() || !calls.is_empty());
            if !d.thinking.is_empty() {
                let mut delta = json!({"reasoning": d.thinking});
                if !mixed {
                    delta["content"] = json!("");
                }
                out.push(event(&chunk(delta, Value::Null, choice_logprobs(&d))));
            }
            if d.thinking.is_empty() || mixed {
                let mut delta = json!({"content": d.content});
                if !calls.is_empty() {
                    called.store(true, Ordering::SeqCst);
                    delta["tool_calls"] = json!(calls);
                }
                let lp = if mixed {
                    Value::Null
                } else {
                    choice_logprobs(&d)
                };
                out.push(event(&chunk(delta, Value::Null, lp)));
            }
            out
        }
        Piece::Done(r) => {
            let reason = finish_reason(&r, called.load(Ordering::SeqCst));
            let mut v = vec![event(&chunk(json!({}), json!(reason), Value::Null))];
            if with_usage {
                v.push(event(&usage_chunk(&r)));
            }
            v
        }
        Piece::Error(e) => vec![event(
            &json!({"error": {"message": e, "type": "api_error"}}),
        )],
    })
}

/// An SSE stream: `first`, the events of each piece, then `data: [DONE]`.
fn sse(
    run: Run,
    first: Bytes,
    events: impl Fn(Piece) -> Vec<Bytes> + Send + Sync + 'static,
) -> Result<Response, ApiError> {
    use futures_util::StreamExt;
    let head = futures_util::stream::iter([Ok(first)]);
    let events = Arc::new(events);
    let body = futures_util::stream::unfold(Some(run), move |run| {
        let events = events.clone();
        async move {
            let mut run = run?;
            let p = run.next().await?;
            let last = !matches!(p, Piece::Delta(_));
            let mut out: Vec<Bytes> = events(p);
            if last {
                out.push(Bytes::from_static(b"data: [DONE]\n\n"));
                return Some((out, None));
            }
            Some((out, Some(run)))
        }
    })
    .flat_map(|v| futures_util::stream::iter(v.into_iter().map(Ok)));
    Ok(stream_response("text/event-stream", head.chain(body)))
}

json_route!(completions => completions_inner, ApiError::openai);

async fn completions_inner(
    app: Arc<App>,
    log: Log,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let t0 = Instant::now();
    let req = read_json(&headers, body).await?;
    let name = required_model(&req, &log)?;
    let prompt = match req.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(ApiError::bad("prompt must be a string")),
    };
    let logprobs = parse_logprobs(&req)?;
    let f = find(
        &app,
        &name,
        format!("model \"{name}\" not found, try pulling it first"),
    )?;
    let asks = Asks {
        model: &name,
        verb: "generate",
        think: None,
        think_level: None,
        tools: None,
        suffix: str_field(&req, "suffix").filter(|s| !s.is_empty()),
        logprobs,
    };
    let g = Granted::check(f, asks)?;
    let mut opts = sampling(&app, &g.found, &req)?;
    opts.prompt = prompt;
    let ka = keep_alive(&app, &req)?;
    let model = g.found.name.clone();
    let mut run = Run::start(&app, g.apply(opts, false, vec![], ka), log, t0).await?;
    let created = unix(SystemTime::now());
    let cid = id("cmpl");
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if !stream {
        let (d, r) = collect(&mut run).await?;
        return Ok(json(
            StatusCode::OK,
            &json!({"id": cid, "object": "text_completion", "created": created, "model": model,
                    "system_fingerprint": "fp_ollama",
                    "choices": [{"text": d.content, "index": 0, "finish_reason": done_reason(&r),
                                 "logprobs": choice_logprobs(&d)}],
                    "usage": usage(&r)}),
        ));
    }
    let with_usage = include_usage(&req);
    let chunk = move |d: &Delta, finish: Value, usage: Option<Value>| {
        let mut v = json!({"id": cid, "object": "text_completion", "created": created, "model": model,
               "system_fingerprint": "fp_ollama",
               "choices": [{"text": d.content, "index": 0, "finish_reason": finish,
                            "logprobs": choice_logprobs(d)}]});
        if let Some(u) = usage {
            v["usage"] = u;
        }
        v
    };
    let zero = move || {
        with_usage.then(|| json!({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}))
    };
    let first = Bytes::new();
    sse(run, first, move |p| match p {
        Piece::Delta(d) => vec![event(&chunk(&d, Value::Null, zero()))],
        Piece::Done(r) => {
            let none = Delta::default();
            let mut v = vec![event(&chunk(&none, json!(done_reason(&r)), zero()))];
            if with_usage {
                let mut u = chunk(&none, Value::Null, Some(usage(&r)));
                u["choices"] = json!([]);
                v.push(event(&u));
            }
            v
        }
        Piece::Error(e) => vec![event(
            &json!({"error": {"message": e, "type": "api_error"}}),
        )],
    })
}
