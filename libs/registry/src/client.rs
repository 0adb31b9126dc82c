//! One registry session: base URL, credentials, the current Authorization,
//! redirects followed by hand so credentials never leave the origin.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use url::Url;

use crate::auth::{parse_www_authenticate, Credentials};
use crate::http1;
use crate::ollama_key::{self, OllamaKey};
use crate::realm::{
    check_realm, host_key, origin, trusted_realm_origins, trusted_realms_from_env,
    TRUSTED_REALMS_ENV,
};
use crate::{Error, RemoteOptions, Result};

/// Largest token response read.
pub(crate) const MAX_TOKEN: u64 = 64 << 10;
/// Largest error body read.
pub(crate) const MAX_ERROR_BODY: u64 = 8 << 10;
const MAX_REDIRECTS: usize = 10;

/// A request body that can be sent again (after a 401).
pub(crate) enum Body<'a> {
    None,
    Bytes(&'a [u8]),
    File {
        file: &'a File,
        offset: u64,
        len: u64,
    },
}

/// A response from either transport: ureq (https, requests with a body)
/// or [`http1`] (bodiless GET/HEAD over plain http).
pub(crate) enum Response {
    Ureq(ureq::Response),
    Http1(http1::Response),
}

impl Response {
    pub fn status(&self) -> u16 {
        match self {
            Response::Ureq(r) => r.status(),
            Response::Http1(r) => r.status(),
        }
    }
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        match self {
            Response::Ureq(r) => r.header(name),
            Response::Http1(r) => r.header(name),
        }
    }
    /// Every header of that name.
    pub fn all(&self, name: &str) -> Vec<&str> {
        match self {
            Response::Ureq(r) => r.all(name),
            Response::Http1(r) => r.all(name),
        }
    }
    pub fn into_reader(self) -> Box<dyn Read + Send> {
        match self {
            Response::Ureq(r) => Box::new(r.into_reader()),
            Response::Http1(r) => Box::new(r.into_reader()),
        }
    }
}

pub(crate) struct Session {
    agent: ureq::Agent,
    http1: http1::Config,
    /// `scheme://host[:port]`, no path.
    pub base: Url,
    pub insecure: bool,
    creds: Option<Credentials>,
    authz: Mutex<Option<String>>,
    /// The scope asked for when a challenge names none.
    pub scope: String,
    /// Realm origins the user trusts with credentials for this registry.
    trusted_realms: Vec<String>,
    /// Whether token requests are signed with the Ollama key.
    ollama: bool,
    /// Where the Ollama key lives (`None`: `$HOME/.ollama`).
    key_dir: Option<PathBuf>,
    /// The Ollama key, loaded (or created) on first use.
    key: Mutex<Option<Arc<OllamaKey>>>,
    /// The last token realm that got an anonymous request although we had
    /// credentials or a key for it (another origin, not trusted).
    withheld_from: Mutex<Option<Url>>,
}

/// Environment variable naming more registries that sign token requests
/// with the Ollama key, besides registry.ollama.ai and ollama.com.
pub const OLLAMA_REGISTRIES_ENV: &str = "LLPIPE_OLLAMA_REGISTRIES";

/// The API base for a registry host as it appears in model names.
pub(crate) fn base_for_host(host: &str, insecure: bool) -> Result<Url> {
    let api_host = match host {
        "docker.io" | "index.docker.io" => "registry-1.docker.io",
        h => h,
    };
    let scheme = if insecure { "http" } else { "https" };
    Url::parse(&format!("{scheme}://{api_host}/"))
        .map_err(|e| Error::Auth(format!("registry host {host:?}: {e}")))
}

impl Session {
    pub fn new(base: Url, opts: &RemoteOptions, scope: String) -> Result<Session> {
        if base.scheme() == "http" && !opts.insecure && opts.base_url.is_none() {
            return Err(Error::Auth(format!(
                "refusing plain http registry {base} without --insecure"
            )));
        }
        if !matches!(base.scheme(), "http" | "https") {
            return Err(Error::Auth(format!("unsupported registry URL {base}")));
        }
        let insecure = opts.insecure || base.scheme() == "http";
        let host = host_key(&base);
        let creds = match &opts.credentials {
            Some(c) => Some(c.clone()),
            None => Credentials::lookup(&host, opts.docker_config.as_deref())?,
        };
        let trusted_realms = match &opts.trusted_realms {
            Some(t) => trusted_realm_origins(&base, t)?,
            None => trusted_realm_origins(&base, &trusted_realms_from_env())?,
        };
        let ollama_registries: Vec<String> = match &opts.ollama_registries {
            Some(r) => r.clone(),
            None => std::env::var(OLLAMA_REGISTRIES_ENV)
                .ok()
                .into_iter()
                .collect(),
        };
        let ollama = ollama_key::OLLAMA_HOSTS
            .iter()
            .any(|h| h.eq_ignore_ascii_case(&host))
            || ollama_registries
                .iter()
                .flat_map(|e| e.split([' ', ',', '\n', '\t']))
                .any(|h| h.eq_ignore_ascii_case(&host));
        let user_agent = concat!("llpipe/", env!("CARGO_PKG_VERSION"));
        let agent = ureq::AgentBuilder::new()
            .redirects(0)
            .timeout_connect(opts.connect_timeout)
            .timeout_read(opts.stall_timeout)
            .timeout_write(opts.stall_timeout)
            .user_agent(user_agent)
            .build();
        Ok(Session {
            agent,
            http1: http1::Config {
                connect_timeout: opts.connect_timeout,
                io_timeout: opts.stall_timeout,
                user_agent: user_agent.into(),
            },
            base,
            insecure,
            creds,
            authz: Mutex::new(None),
            scope,
            trusted_realms,
            ollama,
            key_dir: opts.ollama_key_dir.clone(),
            key: Mutex::new(None),
            withheld_from: Mutex::new(None),
        })
    }

    /// The registry for messages: the base URL without the trailing slash.
    pub fn name(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_string()
    }

    pub fn url(&self, path: &str) -> Result<Url> {
        self.base.join(path).map_err(|e| Error::Protocol {
            what: path.into(),
            why: e.to_string(),
        })
    }

    /// Sends a request, following redirects (GET/HEAD only) and answering
    /// one 401 challenge. Returns any status; callers decide.
    pub fn request(
        &self,
        method: &str,
        url: Url,
        headers: &[(&str, String)],
        body: &Body,
        what: &str,
    ) -> Result<Response> {
        let mut auth_rounds = 0;
        loop {
            let mut cur = url.clone();
            let mut creds_ok = same_origin(&cur, &self.base);
            let mut hops = 0;
            let resp = loop {
                let mut hdrs = headers.to_vec();
                if creds_ok {
                    if let Some(a) = self.authz.lock().unwrap_or_else(|p| p.into_inner()).clone() {
                        hdrs.push(("Authorization", a));
                    }
                }
                let r = self.send(method, &cur, &hdrs, body, what)?;
                if matches!(r.status(), 301 | 302 | 303 | 307 | 308)
                    && matches!(method, "GET" | "HEAD")
                {
                    hops += 1;
                    if hops > MAX_REDIRECTS {
                        return Err(Error::Protocol {
                            what: what.into(),
                            why: format!("more than {MAX_REDIRECTS} redirects"),
                        });
                    }
                    let loc = r.header("location").ok_or_else(|| Error::Protocol {
                        what: what.into(),
                        why: format!("{} without Location", r.status()),
                    })?;
                    (cur, creds_ok) = next_hop(&self.base, &cur, loc, self.insecure, creds_ok)
                        .map_err(|why| Error::Protocol {
                            what: what.into(),
                            why,
                        })?;
                    continue;
                }
                break r;
            };
            if resp.status() == 401 && creds_ok && auth_rounds < 2 {
                auth_rounds += 1;
                let challenges: Vec<String> = resp
                    .all("www-authenticate")
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                if challenges.is_empty() {
                    return Ok(resp);
                }
                let old = self.authz.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let new = self.authorize(&challenges.join(", "), what)?;
                if new.is_none() || new == old {
                    return Ok(resp);
                }
                *self.authz.lock().unwrap_or_else(|p| p.into_inner()) = new;
                continue;
            }
            return Ok(resp);
        }
    }

    /// One request, no redirects or auth: bodiless GET/HEAD over plain http
    /// through [`http1`], everything else through ureq.
    fn send(
        &self,
        method: &str,
        url: &Url,
        headers: &[(&str, String)],
        body: &Body,
        what: &str,
    ) -> Result<Response> {
        if matches!(body, Body::None) && matches!(method, "GET" | "HEAD") && url.scheme() == "http"
        {
            return http1::request(method, url, headers, &self.http1)
                .map(Response::Http1)
                .map_err(|f| {
                    let registry = registry_of(url);
                    let what = what.to_string();
                    match f {
                        http1::Failure::Dns(detail) => Error::Dns {
                            registry,
                            what,
                            detail,
                        },
                        http1::Failure::Net(detail) => Error::Net {
                            registry,
                            what,
                            detail,
                        },
                        http1::Failure::Protocol(why) => Error::Protocol {
                            what,
                            why: format!("registry {registry}: {why}"),
                        },
                    }
                });
        }
        let mut req = self.agent.request_url(method, url);
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let r = match body {
            Body::None => req.call(),
            Body::Bytes(b) => req.send_bytes(b),
            Body::File { file, offset, len } => {
                let reader = RangeReader {
                    file,
                    pos: *offset,
                    end: offset.saturating_add(*len),
                };
                req.set("Content-Length", &len.to_string()).send(reader)
            }
        };
        match r {
            Ok(r) => Ok(Response::Ureq(r)),
            Err(ureq::Error::Status(_, r)) => Ok(Response::Ureq(r)),
            Err(ureq::Error::Transport(t)) => Err(self.transport_error(&t, url, what)),
        }
    }

    fn transport_error(&self, t: &ureq::Transport, url: &Url, what: &str) -> Error {
        let registry = registry_of(url);
        let detail = t.to_string();
        let lower = detail.to_ascii_lowercase();
        match t.kind() {
            ureq::ErrorKind::Dns => Error::Dns {
                registry,
                what: what.into(),
                detail,
            },
            _ if lower.contains("certificate")
                || lower.contains("tls")
                || lower.contains("handshake") =>
            {
                Error::Tls {
                    registry,
                    what: what.into(),
                    detail,
                }
            }
            _ => Error::Net {
                registry,
                what: what.into(),
                detail,
            },
        }
    }

    /// The Ollama key, read or created on first use; a new key is
    /// announced on stderr as Ollama does.
    fn ollama_key(&self) -> Result<Arc<OllamaKey>> {
        let mut slot = self.key.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = &*slot {
            return Ok(k.clone());
        }
        let dir = match &self.key_dir {
            Some(d) => d.clone(),
            None => ollama_key::default_key_dir()?,
        };
        let (key, created) = OllamaKey::load_or_create(&dir)?;
        if created {
            eprint!(
                "Couldn't find '{}'. Generating new private key.\nYour new public key is: \n\n{}\n\n",
                key.path().display(),
                key.public_line()
            );
        }
        let key = Arc::new(key);
        *slot = Some(key.clone());
        Ok(key)
    }

    /// Works out the Authorization for a challenge; `None` when we have
    /// nothing to offer (no credentials for Basic).
    ///
    /// Bearer: the token request carries our credentials (Basic) or, for
    /// an Ollama registry, Ollama's key signature, but only when the realm
    /// may receive them ([`check_realm`]); otherwise it is anonymous.
    fn authorize(&self, header: &str, what: &str) -> Result<Option<String>> {
        let challenges = parse_www_authenticate(header)?;
        if let Some(b) = challenges.iter().find(|c| c.scheme == "bearer") {
            let (realm, may_authenticate) = check_realm(
                b.param("realm").unwrap_or(""),
                &self.base,
                self.insecure,
                &self.trusted_realms,
            )?;
            let scope = b.param("scope").unwrap_or(&self.scope);
            let mut hdrs = Vec::new();
            let mut signed_by = None;
            let u = if may_authenticate && self.creds.is_none() && self.ollama {
                let key = self.ollama_key()?;
                let ts = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let u = ollama_key::token_url(
                    &realm,
                    b.param("service").unwrap_or(""),
                    scope,
                    ts,
                    &ollama_key::new_nonce(),
                );
                hdrs.push(("Authorization", key.sign_token_request(&u)));
                signed_by = Some(key);
                u
            } else {
                if may_authenticate {
                    if let Some(c) = &self.creds {
                        hdrs.push(("Authorization", c.basic_header()));
                    }
                }
                let mut u = realm.clone();
                {
                    let mut q = u.query_pairs_mut();
                    if let Some(s) = b.param("service") {
                        q.append_pair("service", s);
                    }
                    q.append_pair("scope", scope);
                }
                u
            };
            let withheld = !may_authenticate && (self.creds.is_some() || self.ollama);
            if withheld {
                *self.withheld_from.lock().unwrap_or_else(|p| p.into_inner()) = Some(realm.clone());
            }
            let what_tok = format!("{what}: token from {realm}");
            let resp = self.send("GET", &u, &hdrs, &Body::None, &what_tok)?;
            match resp.status() {
                200 => {}
                s @ (401 | 403) => {
                    if let Some(key) = signed_by {
                        return Err(Error::Auth(format!(
                            "{what}: token service {realm} answered {s} to a request signed with the Ollama key {}: add its public key ({}, {}) to your account on that registry (ollama.com: https://ollama.com/settings/keys)",
                            key.path().display(),
                            key.public_path().display(),
                            key.public_line()
                        )));
                    }
                    if withheld {
                        return Err(Error::Auth(format!(
                            "{what}: token service {realm} answered {s} to an anonymous request; {}",
                            self.withheld_hint(&realm)
                        )));
                    }
                    return Err(Error::Unauthorized {
                        registry: realm.to_string(),
                        what: what.into(),
                    });
                }
                s => return Err(Error::Auth(format!("{what_tok}: answered {s}"))),
            }
            let bytes = read_capped(resp, MAX_TOKEN, &what_tok)?;
            let v: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| Error::Auth(format!("{what_tok}: bad token JSON: {e}")))?;
            let tok = v
                .get("token")
                .and_then(|t| t.as_str())
                .filter(|t| !t.is_empty())
                .or_else(|| {
                    v.get("access_token")
                        .and_then(|t| t.as_str())
                        .filter(|t| !t.is_empty())
                })
                .ok_or_else(|| Error::Auth(format!("{what_tok}: no token in the answer")))?;
            if tok.bytes().any(|c| c < 0x21 || c == 0x7f) {
                return Err(Error::Auth(format!(
                    "{what_tok}: token has invalid characters"
                )));
            }
            return Ok(Some(format!("Bearer {tok}")));
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            return Ok(self.creds.as_ref().map(|c| c.basic_header()));
        }
        Err(Error::Auth(format!(
            "{what}: unsupported auth scheme in {header:?}"
        )))
    }

    /// Why credentials or the key signature did not go to `realm`, and how
    /// to trust it.
    fn withheld_hint(&self, realm: &Url) -> String {
        let sent = if self.creds.is_some() {
            "credentials were"
        } else {
            "the Ollama key signature was"
        };
        format!(
            "{sent} not sent to it because it is not on the registry's origin {} (CVE-2025-51471); to trust it, set {TRUSTED_REALMS_ENV}=\"{}={}\"",
            origin(&self.base),
            host_key(&self.base),
            origin(realm)
        )
    }

    /// Turns a non-success status into an error naming `what`.
    pub fn status_error(&self, resp: Response, what: &str) -> Error {
        let registry = self.name();
        let what = what.to_string();
        if resp.status() == 401 {
            let withheld = self
                .withheld_from
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(realm) = withheld {
                return Error::Auth(format!(
                    "{what}: registry {registry} answered 401 unauthorized with an anonymous token from {realm}; {}",
                    self.withheld_hint(&realm)
                ));
            }
        }
        match resp.status() {
            401 => Error::Unauthorized { registry, what },
            403 => Error::Forbidden { registry, what },
            404 => Error::NotFound { registry, what },
            412 => Error::NeedsNewerClient { registry, what },
            status => {
                let detail = error_detail(resp);
                Error::Status {
                    registry,
                    what,
                    status,
                    detail,
                }
            }
        }
    }
}

/// `: CODE message` from a registry JSON error body, read only when it
/// declares a small Content-Length (a lying length must not make us wait).
fn error_detail(resp: Response) -> String {
    let small = resp
        .header("content-length")
        .and_then(|l| l.parse::<u64>().ok())
        .is_some_and(|l| l <= MAX_ERROR_BODY);
    if !small {
        return String::new();
    }
    let mut buf = Vec::new();
    if resp
        .into_reader()
        .take(MAX_ERROR_BODY)
        .read_to_end(&mut buf)
        .is_err()
    {
        return String::new();
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&buf) else {
        return String::new();
    };
    let Some(e) = v.get("errors").and_then(|e| e.get(0)) else {
        return String::new();
    };
    let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
    let msg = e.get("message").and_then(|c| c.as_str()).unwrap_or("");
    let s: String = format!(": {code} {msg}")
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    s.trim_end().to_string()
}

/// Reads a body of at most `cap` bytes; more is an error. A compressed body
/// is refused (we never decompress).
pub(crate) fn read_capped(resp: Response, cap: u64, what: &str) -> Result<Vec<u8>> {
    if let Some(enc) = resp
        .header("content-encoding")
        .filter(|e| !e.eq_ignore_ascii_case("identity"))
    {
        return Err(Error::Protocol {
            what: what.into(),
            why: format!("refusing a body with Content-Encoding {enc}"),
        });
    }
    if let Some(len) = resp
        .header("content-length")
        .and_then(|l| l.parse::<u64>().ok())
    {
        if len > cap {
            return Err(Error::Protocol {
                what: what.into(),
                why: format!("body of {len} bytes, more than the limit of {cap}"),
            });
        }
    }
    let mut buf = Vec::new();
    resp.into_reader()
        .take(cap + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::Net {
            registry: String::new(),
            what: what.into(),
            detail: e.to_string(),
        })?;
    if buf.len() as u64 > cap {
        return Err(Error::Protocol {
            what: what.into(),
            why: format!("body larger than the limit of {cap} bytes"),
        });
    }
    Ok(buf)
}

fn same_origin(a: &Url, b: &Url) -> bool {
    origin(a) == origin(b)
}

/// Where a redirect from `cur` to `location` leads, and whether credentials
/// may go there: only while the whole chain stays on the registry's origin
/// (scheme, host and port: an https → http hop on the same host is another
/// origin). Once the chain leaves the origin, credentials stay off for the
/// rest of it, even back on the origin. A hop to anything but https is
/// refused unless the registry is insecure, and then only to http.
fn next_hop(
    base: &Url,
    cur: &Url,
    location: &str,
    insecure: bool,
    creds_ok: bool,
) -> std::result::Result<(Url, bool), String> {
    let next = cur
        .join(location)
        .map_err(|e| format!("bad redirect Location: {e}"))?;
    if next.scheme() != "https" && !(insecure && next.scheme() == "http") {
        return Err(format!("refusing redirect to non-https {next}"));
    }
    let creds = creds_ok && same_origin(&next, base);
    Ok((next, creds))
}

/// `scheme://host[:port]` of a URL, for messages.
fn registry_of(url: &Url) -> String {
    format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""))
        + &url.port().map(|p| format!(":{p}")).unwrap_or_default()
}

/// Reads `file[pos..end]` with positioned reads (no shared file offset).
struct RangeReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.end.saturating_sub(self.pos);
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if n == 0 {
            return Ok(0);
        }
        let k = self.file.read_at(&mut buf[..n], self.pos)?;
        if k == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "file shorter than the blob size",
            ));
        }
        self.pos += k as u64;
        Ok(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    /// Redirect rules, including the https → http downgrade (no TLS server
    /// with a trusted certificate exists in the tests, so the rule is
    /// checked here; the fault tests cover cross-host redirects end to end).
    #[test]
    fn redirects_never_carry_credentials_off_the_origin() {
        let base = u("https://reg.example/");
        let cur = u("https://reg.example/v2/m/blobs/sha256:ab");
        // same origin, relative or absolute: credentials stay
        for loc in [
            "/v2/other",
            "https://reg.example/x",
            "https://reg.example:443/x",
        ] {
            assert!(next_hop(&base, &cur, loc, false, true).unwrap().1, "{loc}");
        }
        // https → http on the same host: refused outright unless insecure …
        for loc in ["http://reg.example/x", "http://reg.example:443/x"] {
            let e = next_hop(&base, &cur, loc, false, true).unwrap_err();
            assert!(e.contains("non-https"), "{e}");
            // … and without credentials when insecure
            let (next, creds) = next_hop(&base, &cur, loc, true, true).unwrap();
            assert_eq!((next.scheme(), creds), ("http", false), "{loc}");
        }
        // other schemes are never followed
        for loc in ["ftp://reg.example/x", "file:///etc/passwd", "data:,x"] {
            assert!(next_hop(&base, &cur, loc, true, true).is_err(), "{loc}");
        }
        // another host or port: no credentials
        for loc in [
            "https://cdn.example/x",
            "https://reg.example:8443/x",
            "//evil.example/x",
        ] {
            assert!(!next_hop(&base, &cur, loc, false, true).unwrap().1, "{loc}");
        }
        // back on the origin after leaving it: still none
        let off = u("https://cdn.example/x");
        assert!(
            !next_hop(&base, &off, "https://reg.example/y", false, false)
                .unwrap()
                .1
        );
        // an insecure http registry keeps credentials on its own origin only;
        // an upgrade to https is another origin too
        let hbase = u("http://127.0.0.1:5000/");
        let hcur = u("http://127.0.0.1:5000/v2/x");
        assert!(next_hop(&hbase, &hcur, "/v2/y", true, true).unwrap().1);
        assert!(
            !next_hop(&hbase, &hcur, "https://127.0.0.1:5000/v2/y", true, true)
                .unwrap()
                .1
        );
        assert!(
            !next_hop(&hbase, &hcur, "http://127.0.0.1:5001/v2/y", true, true)
                .unwrap()
                .1
        );
    }
}
