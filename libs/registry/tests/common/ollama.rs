//! An emulated Ollama-style registry: every request needs `Bearer T`, and
//! its token service hands `T` only to requests signed as Ollama signs them
//! (server/auth.go) by an authorized key. The signature is checked here with
//! ed25519-dalek against the authorized_keys line, independently of the
//! signing code under test. Include beside `common` with
//! `#[path = ".../tests/common/ollama.rs"] mod ollama;`.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ed25519_dalek::Verifier as _;

use super::common::{serve, Conn, FaultServer, Req};

/// hex(sha256("")): what Ollama hashes for a bodiless GET.
const EMPTY_SHA256_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The query parameters of a request path, decoded.
pub fn query(req: &Req) -> Vec<(String, String)> {
    let q = req.path.split_once('?').map(|(_, q)| q).unwrap_or("");
    url::form_urlencoded::parse(q.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Checks a token request against an authorized_keys line
/// (`ssh-ed25519 AAAA… [comment]`): the Authorization header is
/// `<that blob>:<base64(signature)>` over
/// `GET,http://<Host><path>,<base64(hex(sha256("")))>`, and the query has a
/// recent `ts` and a 16-byte base64url `nonce`.
pub fn verify_signed(req: &Req, authorized: &str) -> Result<(), String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let auth = req.header("authorization").ok_or("no Authorization")?;
    let (blob, sig) = auth.split_once(':').ok_or("Authorization is not pub:sig")?;
    let want = authorized
        .split_whitespace()
        .nth(1)
        .ok_or("bad authorized key")?;
    if blob != want {
        return Err(format!("unknown key {blob}"));
    }
    let raw = b64.decode(blob).map_err(|e| e.to_string())?;
    if raw.len() < 32 {
        return Err("short key blob".into());
    }
    let key: [u8; 32] = raw[raw.len() - 32..].try_into().unwrap();
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&key).map_err(|e| e.to_string())?;
    let sig = b64.decode(sig).map_err(|e| e.to_string())?;
    let sig = ed25519_dalek::Signature::from_slice(&sig).map_err(|e| e.to_string())?;
    let host = req.header("host").ok_or("no Host")?;
    let data = format!(
        "GET,http://{host}{},{}",
        req.path,
        b64.encode(EMPTY_SHA256_HEX)
    );
    vk.verify(data.as_bytes(), &sig)
        .map_err(|e| format!("bad signature over {data}: {e}"))?;
    let q = query(req);
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let ts: u64 = get("ts").and_then(|t| t.parse().ok()).ok_or("no ts")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if ts.abs_diff(now) > 300 {
        return Err(format!("stale ts {ts}"));
    }
    let nonce = get("nonce").ok_or("no nonce")?;
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(nonce)
        .map_err(|e| format!("nonce: {e}"))?;
    if n.len() != 16 {
        return Err(format!("nonce of {} bytes", n.len()));
    }
    Ok(())
}

/// What the token service decided, per request.
pub type Verdicts = Arc<Mutex<Vec<Result<(), String>>>>;

/// An Ollama-style registry serving `manifest` for any name. Its challenge
/// names `realm` (default: its own `/token`) with service `ollama.com`;
/// `/token` answers `{"token":"T"}` to requests signed by `authorized`
/// (an authorized_keys line, changeable while it runs), else 401.
pub fn ollama_registry(
    manifest: String,
    authorized: Arc<Mutex<String>>,
    realm: Option<String>,
) -> (FaultServer, Verdicts) {
    ollama_front(manifest, authorized, realm, None)
}

/// Forwards one request to 127.0.0.1:`port` (without its Authorization)
/// and copies the answer back.
fn forward(req: &Req, c: &mut Conn, port: u16) {
    use std::io::{Read, Write};
    let Ok(mut up) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.path);
    for (k, v) in &req.headers {
        if !k.eq_ignore_ascii_case("connection") && !k.eq_ignore_ascii_case("authorization") {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str("Connection: close\r\n\r\n");
    let _ = up.write_all(head.as_bytes());
    let _ = up.write_all(&req.body);
    let mut buf = vec![0u8; 64 << 10];
    while let Ok(n) = up.read(&mut buf) {
        if n == 0 || c.stream.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

/// As [`ollama_registry`]; with `upstream`, authorized requests are
/// forwarded to a registry on that port (for pushes) instead.
pub fn ollama_front(
    manifest: String,
    authorized: Arc<Mutex<String>>,
    realm: Option<String>,
    upstream: Option<u16>,
) -> (FaultServer, Verdicts) {
    let me: Arc<Mutex<String>> = Arc::new(Mutex::new(String::new()));
    let me2 = me.clone();
    let verdicts: Verdicts = Arc::new(Mutex::new(Vec::new()));
    let v2 = verdicts.clone();
    let srv = serve(move |req, mut c| {
        if req.path.starts_with("/token") {
            let r = verify_signed(req, &authorized.lock().unwrap());
            let ok = r.is_ok();
            v2.lock().unwrap().push(r);
            return if ok {
                c.respond(200, &[], br#"{"token":"T"}"#)
            } else {
                c.respond(401, &[], br#"{"errors":[{"code":"UNAUTHORIZED"}]}"#)
            };
        }
        if req.header("authorization") != Some("Bearer T") {
            let realm = realm
                .clone()
                .unwrap_or(format!("{}/token", me2.lock().unwrap()));
            let ch = format!(
                r#"Bearer realm="{realm}",service="ollama.com",scope="repository:library/m:pull""#
            );
            return c.respond(401, &[("WWW-Authenticate", ch)], b"");
        }
        if let Some(port) = upstream {
            return forward(req, &mut c, port);
        }
        if req.path.contains("/manifests/") {
            return c.respond(
                200,
                &[("Content-Type", protocol::media::DOCKER_MANIFEST.into())],
                manifest.as_bytes(),
            );
        }
        c.respond(404, &[], b"")
    });
    *me.lock().unwrap() = srv.url();
    (srv, verdicts)
}
