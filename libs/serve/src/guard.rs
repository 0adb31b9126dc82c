//! Who may talk to the server: the `Host` check against DNS rebinding and
//! CORS, as Ollama does them.
//!
//! Bound to a loopback address, a request whose `Host` is not local gets
//! 403 with an empty body: local means no header, `localhost`, the
//! machine's hostname, a name under `.localhost`, `.local` or `.internal`,
//! or a loopback, private or unspecified IP address. Bound elsewhere
//! (`OLLAMA_HOST=0.0.0.0`) every host is accepted.
//!
//! A request with an `Origin` is answered with CORS headers when the
//! origin is allowed (Ollama's defaults, [`DEFAULT_ORIGINS`], plus
//! `OLLAMA_ORIGINS`, where `*` matches anything), and refused with 403
//! otherwise; a preflight `OPTIONS` gets 204.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Ollama's allowed origins when `OLLAMA_ORIGINS` adds none.
pub const DEFAULT_ORIGINS: &[&str] = &[
    "http://localhost",
    "https://localhost",
    "http://localhost:*",
    "https://localhost:*",
    "http://127.0.0.1",
    "https://127.0.0.1",
    "http://127.0.0.1:*",
    "https://127.0.0.1:*",
    "http://0.0.0.0",
    "https://0.0.0.0",
    "http://0.0.0.0:*",
    "https://0.0.0.0:*",
    "app://*",
    "file://*",
    "tauri://*",
    "vscode-webview://*",
    "vscode-file://*",
];

/// The checks for one listening address.
pub struct Guard {
    loopback: bool,
    hostname: Option<String>,
    origins: Vec<String>,
}

impl Guard {
    /// The checks for a server bound to `addr` that also allows `origins`.
    pub fn new(addr: SocketAddr, origins: &[String]) -> Guard {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_ascii_lowercase());
        Guard {
            loopback: addr.ip().is_loopback(),
            hostname,
            origins: DEFAULT_ORIGINS
                .iter()
                .map(|s| s.to_string())
                .chain(origins.iter().map(|s| s.trim().to_string()))
                .filter(|s| !s.is_empty())
                .collect(),
        }
    }

    /// Whether a `Host` header value is acceptable.
    pub fn host_allowed(&self, host: &str) -> bool {
        if !self.loopback {
            return true;
        }
        let host = host.trim().to_ascii_lowercase();
        let name = match host.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or(""),
            None => match host.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') && p.parse::<u16>().is_ok() => h,
                _ => &host,
            },
        };
        if let Ok(ip) = name.parse::<IpAddr>() {
            return ip.is_loopback() || ip.is_unspecified() || is_private(ip);
        }
        name.is_empty()
            || name == "localhost"
            || self.hostname.as_deref() == Some(name)
            || [".localhost", ".local", ".internal"]
                .iter()
                .any(|tld| name.ends_with(tld))
    }

    /// Whether an `Origin` is allowed.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        self.origins.iter().any(|p| glob(p, origin))
    }
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => v.is_private() || v.is_link_local(),
        IpAddr::V6(v) => {
            (v.segments()[0] & 0xfe00) == 0xfc00 || (v.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// `*` matches any run of characters; the rest matches exactly.
fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((head, tail)) => {
            let Some(rest) = s.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len())
                .filter(|&i| rest.is_char_boundary(i))
                .any(|i| glob(tail, &rest[i..]))
        }
    }
}

/// The middleware.
pub(crate) async fn check(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !g.host_allowed(host) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let origin = req.headers().get(header::ORIGIN).cloned();
    let Some(origin) = origin else {
        return next.run(req).await;
    };
    if !origin.to_str().is_ok_and(|o| g.origin_allowed(o)) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let preflight = req.method() == Method::OPTIONS;
    let mut r = if preflight {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(req).await
    };
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    if preflight {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(
                "Authorization, Content-Type, User-Agent, Accept, X-Requested-With, \
                 X-Stainless-Lang, X-Stainless-Package-Version, X-Stainless-OS, X-Stainless-Arch, \
                 X-Stainless-Retry-Count, X-Stainless-Runtime, X-Stainless-Runtime-Version, \
                 X-Stainless-Async, X-Stainless-Helper-Method, X-Stainless-Poll-Helper, \
                 X-Stainless-Custom-Poll-Interval, X-Stainless-Timeout, X-Stainless-Read-Timeout",
            ),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("43200"),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_check_on_loopback() {
        let g = Guard::new("127.0.0.1:11434".parse().unwrap(), &[]);
        for ok in [
            "",
            "localhost",
            "localhost:11434",
            "127.0.0.1:11434",
            "[::1]:11434",
            "app.localhost",
            "box.local:80",
            "10.0.0.2",
            "0.0.0.0:1",
        ] {
            assert!(g.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.com",
            "evil.com:11434",
            "8.8.8.8",
            "localhost.evil.com",
        ] {
            assert!(!g.host_allowed(bad), "{bad}");
        }
        let open = Guard::new("0.0.0.0:11434".parse().unwrap(), &[]);
        assert!(open.host_allowed("evil.com"));
    }

    #[test]
    fn origins() {
        let g = Guard::new(
            "127.0.0.1:1".parse().unwrap(),
            &["https://example.com".into(), "chrome-extension://*".into()],
        );
        for ok in [
            "http://localhost",
            "http://localhost:3000",
            "https://127.0.0.1:8080",
            "app://x",
            "vscode-webview://abc",
            "https://example.com",
            "chrome-extension://id",
        ] {
            assert!(g.origin_allowed(ok), "{ok}");
        }
        for bad in [
            "https://evil.com",
            "http://localhost.evil.com",
            "https://example.com.evil",
        ] {
            assert!(!g.origin_allowed(bad), "{bad}");
        }
    }
}
