//! One line per request on stderr: method, path, model, status, duration,
//! tokens. The line is written when the request's last part is done: for
//! a stream, when its body ends or the client goes away.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

/// What the line says; handlers fill in the model and tokens.
pub(crate) struct ReqLog {
    method: String,
    path: String,
    start: Instant,
    pub(crate) fields: Mutex<Fields>,
}

/// Filled in as the request goes.
#[derive(Default)]
pub(crate) struct Fields {
    pub(crate) model: Option<String>,
    pub(crate) status: u16,
    pub(crate) prompt_tokens: usize,
    pub(crate) tokens: usize,
}

/// A handle on the line (shared by the middleware, a handler and a stream).
pub(crate) type Log = Arc<ReqLog>;

impl ReqLog {
    pub(crate) fn model(&self, m: &str) {
        self.fields.lock().unwrap().model = Some(m.to_string());
    }
    pub(crate) fn tokens(&self, prompt: usize, eval: usize) {
        let mut f = self.fields.lock().unwrap();
        (f.prompt_tokens, f.tokens) = (prompt, eval);
    }
}

impl Drop for ReqLog {
    fn drop(&mut self) {
        let f = self.fields.get_mut().unwrap();
        eprintln!(
            "serve: {} {} model={} status={} duration={:.3}s prompt_tokens={} tokens={}",
            self.method,
            self.path,
            f.model.as_deref().unwrap_or("-"),
            f.status,
            self.start.elapsed().as_secs_f64(),
            f.prompt_tokens,
            f.tokens
        );
    }
}

/// The middleware: puts a [`Log`] into the request's extensions.
pub(crate) async fn log(mut req: Request, next: Next) -> Response {
    let l: Log = Arc::new(ReqLog {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        start: Instant::now(),
        fields: Mutex::new(Fields::default()),
    });
    req.extensions_mut().insert(l.clone());
    let r = next.run(req).await;
    l.fields.lock().unwrap().status = r.status().as_u16();
    r
}
