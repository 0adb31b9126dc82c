//! Request bodies and replies shared by the native and OpenAI routes.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde_json::Value;

use crate::MAX_BODY;

/// An error reply: a status and one line.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) msg: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, msg: impl Into<String>) -> ApiError {
        ApiError {
            status,
            msg: msg.into(),
        }
    }
    pub(crate) fn bad(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, msg)
    }
    pub(crate) fn internal(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, msg)
    }
    pub(crate) fn not_found(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, msg)
    }
    /// The native shape: `{"error":"…"}`.
    pub(crate) fn native(self) -> Response {
        json(self.status, &serde_json::json!({ "error": self.msg }))
    }
    /// OpenAI's shape: `{"error":{"message","type","param","code"}}`.
    pub(crate) fn openai(self) -> Response {
        let kind = match self.status {
            StatusCode::BAD_REQUEST => "invalid_request_error",
            StatusCode::NOT_FOUND => "not_found_error",
            _ => "api_error",
        };
        json(
            self.status,
            &serde_json::json!({"error": {"message": self.msg, "type": kind, "param": null, "code": null}}),
        )
    }
}

/// A JSON reply with Ollama's content type.
pub(crate) fn json(status: StatusCode, v: &Value) -> Response {
    let mut r = (status, v.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

/// A 200 reply with an empty body.
pub(crate) fn empty_ok() -> Response {
    StatusCode::OK.into_response()
}

/// Reads a JSON object body: 413 past [`MAX_BODY`] (refused by its
/// `Content-Length` before reading, else when reading reaches the limit),
/// 400 `missing request body` when empty, 400 with the decoder's text when
/// it is not a JSON object.
pub(crate) async fn read_json(headers: &HeaderMap, body: Body) -> Result<Value, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body too large (at most {MAX_BODY} bytes)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let bytes: Bytes = http_body_util::Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                ApiError::bad(format!("cannot read the request body: {e}"))
            }
        })?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad("missing request body"));
    }
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| ApiError::bad(e.to_string()))?;
    if !v.is_object() {
        return Err(ApiError::bad("the request body is not a JSON object"));
    }
    Ok(v)
}

/// A streaming reply of `content_type`.
pub(crate) fn stream_response(
    content_type: &'static str,
    s: impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static,
) -> Response {
    let mut r = Response::new(Body::from_stream(s));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// RFC 3339 UTC with nanoseconds, as Go writes `time.Time`.
pub(crate) fn rfc3339(t: std::time::SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Now, as [`rfc3339`].
pub(crate) fn now() -> String {
    rfc3339(std::time::SystemTime::now())
}

/// A route taking a JSON body: `$name` calls `$inner(app, log, headers,
/// body)` and answers its error in the route's dialect (`ApiError::native`
/// or `ApiError::openai`).
macro_rules! json_route {
    ($name:ident => $inner:ident, $err:path) => {
        pub(crate) async fn $name(
            axum::extract::State(app): axum::extract::State<std::sync::Arc<crate::App>>,
            axum::Extension(log): axum::Extension<crate::log::Log>,
            headers: axum::http::HeaderMap,
            body: axum::body::Body,
        ) -> axum::response::Response {
            $inner(app, log, headers, body).await.unwrap_or_else($err)
        }
    };
}
pub(crate) use json_route;
