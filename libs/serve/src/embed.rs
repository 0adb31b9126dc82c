//! Embeddings: `/api/embed`, the legacy `/api/embeddings`, and OpenAI's
//! `/v1/embeddings`. The vectors come from the loaded model's thread
//! ([`crate::sched::Lease::embed`]: the mean of the final hidden states of
//! the text's tokens, unit length), between the steps of the generations
//! running on it.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use runner::Embedded;
use serde_json::{json, Value};

use crate::api::{acquire, find, keep_alive, required_model, run_options, str_field};
use crate::http::{json, json_route, read_json, ApiError};
use crate::log::Log;
use crate::App;

/// What an embedding request asks for, once parsed.
struct Request {
    name: String,
    inputs: Vec<String>,
    truncate: bool,
    dimensions: Option<usize>,
}

/// `input`: a string or a list of strings (`None`: absent or null).
fn inputs(v: Option<&Value>) -> Result<Option<Vec<String>>, ()> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_owned).ok_or(()))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(()),
    }
}

/// `dimensions`: a positive integer, or absent.
fn dimensions(req: &Value) -> Result<Option<usize>, ApiError> {
    match req.get("dimensions") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => Ok(Some(n as usize)),
            _ => Err(ApiError::bad("dimensions must be a positive integer")),
        },
    }
}

/// Loads the model (as a generation would, with the request's options)
/// and embeds `r.inputs`; an empty list only loads it. Each vector is cut
/// to `r.dimensions` and made unit length again.
async fn embed(
    app: &Arc<App>,
    req: &Value,
    r: &Request,
    log: &Log,
) -> Result<(Embedded, std::time::Duration), ApiError> {
    let f = find(
        app,
        &r.name,
        format!("model \"{}\" not found, try pulling it first", r.name),
    )?;
    let opts = run_options(app, &f, req.get("options").unwrap_or(&Value::Null))?;
    let ka = keep_alive(app, req)?;
    let lease = acquire(app, &f, &opts, ka).await?;
    let load = lease.load_duration;
    if r.inputs.is_empty() {
        return Ok((Embedded::default(), load));
    }
    let mut e = lease
        .embed(r.inputs.clone(), r.truncate)
        .await
        .map_err(|e| {
            if e.contains("exceeds the context length") || e.contains("empty input") {
                ApiError::bad(e)
            } else {
                ApiError::internal(e)
            }
        })?;
    log.tokens(e.prompt_eval_count, 0);
    if let Some(d) = r.dimensions {
        for v in &mut e.embeddings {
            v.truncate(d);
            let norm = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            if norm > 0.0 {
                v.iter_mut()
                    .for_each(|x| *x = (f64::from(*x) / norm) as f32);
            }
        }
    }
    Ok((e, load))
}

// ---- /api/embed ----

json_route!(api_embed => api_embed_inner, ApiError::native);

async fn api_embed_inner(
    app: Arc<App>,
    log: Log,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let t0 = Instant::now();
    let req = read_json(&headers, body).await?;
    let name = required_model(&req, &log)?;
    let inputs = inputs(req.get("input"))
        .map_err(|()| ApiError::bad("invalid input type"))?
        .unwrap_or_default();
    let r = Request {
        name,
        inputs,
        truncate: req.get("truncate").and_then(Value::as_bool).unwrap_or(true),
        dimensions: dimensions(&req)?,
    };
    let (e, load) = embed(&app, &req, &r, &log).await?;
    let model = str_field(&req, "model").unwrap_or_default();
    let mut v = json!({"model": model, "embeddings": e.embeddings});
    if e.prompt_eval_count > 0 {
        v["total_duration"] = json!(t0.elapsed().as_nanos() as u64);
        v["load_duration"] = json!(load.as_nanos() as u64);
        v["prompt_eval_count"] = json!(e.prompt_eval_count);
    }
    Ok(json(StatusCode::OK, &v))
}

// ---- /api/embeddings (legacy) ----

json_route!(api_embeddings => api_embeddings_inner, ApiError::native);

async fn api_embeddings_inner(
    app: Arc<App>,
    log: Log,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req = read_json(&headers, body).await?;
    let name = required_model(&req, &log)?;
    let prompt = str_field(&req, "prompt").unwrap_or_default();
    let r = Request {
        name,
        inputs: if prompt.is_empty() {
            vec![]
        } else {
            vec![prompt]
        },
        truncate: true,
        dimensions: None,
    };
    let (e, _) = embed(&app, &req, &r, &log).await?;
    let v: Vec<f64> = e
        .embeddings
        .first()
        .map(|v| v.iter().map(|&x| f64::from(x)).collect())
        .unwrap_or_default();
    Ok(json(StatusCode::OK, &json!({ "embedding": v })))
}

// ---- /v1/embeddings ----

json_route!(openai_embeddings => openai_embeddings_inner, ApiError::openai);

async fn openai_embeddings_inner(
    app: Arc<App>,
    log: Log,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req = read_json(&headers, body).await?;
    let name = required_model(&req, &log)?;
    let inputs = match inputs(req.get("input")) {
        Ok(Some(v)) if !v.is_empty() => v,
        _ => return Err(ApiError::bad("invalid input")),
    };
    let base64 = match req.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad(format!(
                "invalid encoding format: {other:?} (expected \"float\" or \"base64\")"
            )))
        }
    };
    let r = Request {
        name,
        inputs,
        truncate: true,
        dimensions: dimensions(&req)?,
    };
    let (e, _) = embed(&app, &req, &r, &log).await?;
    let data: Vec<Value> = e
        .embeddings
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "embedding": embedding, "index": i})
        })
        .collect();
    let model = str_field(&req, "model").unwrap_or_default();
    let n = e.prompt_eval_count;
    Ok(json(
        StatusCode::OK,
        &json!({"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": n, "total_tokens": n}}),
    ))
}
