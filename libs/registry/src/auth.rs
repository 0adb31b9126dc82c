//! Authentication: `WWW-Authenticate` parsing (RFC 7235) and credentials
//! from the environment or `~/.docker/config.json`. Where they may go is
//! [`crate::realm`]'s decision.

use std::path::{Path, PathBuf};

use crate::Error;
use base64::Engine as _;

/// One challenge of a `WWW-Authenticate` header: a scheme and its auth-params.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// The auth scheme, lowercased (`bearer`, `basic`).
    pub scheme: String,
    /// Parameters in order, names lowercased, values unquoted.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// The value of a parameter (case-insensitive name).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token68(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)
}

/// Parses a `WWW-Authenticate` header value into its challenges.
///
/// Quoted strings are honoured (a `,` or `realm=` inside a quoted value is
/// data), duplicate parameters in one challenge, unterminated quotes, empty
/// values for `realm` and stray bytes are errors. Never panics.
pub fn parse_www_authenticate(header: &str) -> Result<Vec<Challenge>, Error> {
    let bad = |why: &str| {
        Error::Auth(format!(
            "malformed WWW-Authenticate header {:?}: {why}",
            trunc(header)
        ))
    };
    let s = header.as_bytes();
    let mut i = 0;
    let mut out: Vec<Challenge> = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < s.len() && (s[*i] == b' ' || s[*i] == b'\t') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| -> Option<String> {
        let start = *i;
        while *i < s.len() && is_tchar(s[*i]) {
            *i += 1;
        }
        (start < *i).then(|| String::from_utf8_lossy(&s[start..*i]).into_owned())
    };
    loop {
        // skip empty list elements
        loop {
            skip_ws(&mut i);
            if i < s.len() && s[i] == b',' {
                i += 1;
            } else {
                break;
            }
        }
        if i >= s.len() {
            break;
        }
        let scheme = token(&mut i).ok_or_else(|| bad("expected an auth scheme"))?;
        let mut ch = Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params: Vec::new(),
        };
        let had_space = i < s.len() && (s[i] == b' ' || s[i] == b'\t');
        skip_ws(&mut i);
        if had_space && i < s.len() && s[i] != b',' {
            // token68 or an auth-param list
            let save = i;
            let t = token(&mut i);
            let mut j = i;
            skip_ws(&mut j);
            let is_param = t.is_some() && j < s.len() && s[j] == b'=' && {
                // `token=` followed by `=` or end is token68 padding, not a param
                let mut k = j;
                while k < s.len() && s[k] == b'=' {
                    k += 1;
                }
                k == j + 1
            };
            if !is_param {
                i = save;
                let start = i;
                while i < s.len() && is_token68(s[i]) {
                    i += 1;
                }
                while i < s.len() && s[i] == b'=' {
                    i += 1;
                }
                if start == i {
                    return Err(bad("expected token68 or parameters after the scheme"));
                }
                ch.params.push((
                    "token68".into(),
                    String::from_utf8_lossy(&s[start..i]).into_owned(),
                ));
                skip_ws(&mut i);
            } else {
                i = save;
                loop {
                    let name = token(&mut i)
                        .ok_or_else(|| bad("expected a parameter name"))?
                        .to_ascii_lowercase();
                    skip_ws(&mut i);
                    if i >= s.len() || s[i] != b'=' {
                        return Err(bad(&format!("parameter {name} has no '='")));
                    }
                    i += 1;
                    skip_ws(&mut i);
                    let value = if i < s.len() && s[i] == b'"' {
                        i += 1;
                        let mut v = Vec::new();
                        loop {
                            match s.get(i) {
                                None => return Err(bad("unterminated quoted string")),
                                Some(b'"') => {
                                    i += 1;
                                    break;
                                }
                                Some(b'\\') => {
                                    let c = *s
                                        .get(i + 1)
                                        .ok_or_else(|| bad("unterminated quoted string"))?;
                                    v.push(c);
                                    i += 2;
                                }
                                Some(&c) if c < 0x20 && c != b'\t' || c == 0x7f => {
                                    return Err(bad("control character in quoted string"))
                                }
                                Some(&c) => {
                                    v.push(c);
                                    i += 1;
                                }
                            }
                        }
                        String::from_utf8(v).map_err(|_| bad("quoted string is not UTF-8"))?
                    } else {
                        token(&mut i)
                            .ok_or_else(|| bad(&format!("parameter {name} has no value")))?
                    };
                    if ch.params.iter().any(|(k, _)| *k == name) {
                        return Err(bad(&format!("duplicate parameter {name}")));
                    }
                    ch.params.push((name, value));
                    skip_ws(&mut i);
                    if i >= s.len() {
                        break;
                    }
                    if s[i] != b',' {
                        return Err(bad("expected ',' between parameters"));
                    }
                    // After a ',', either another param of this challenge or a new challenge.
                    let mut j = i + 1;
                    while j < s.len() && (s[j] == b' ' || s[j] == b'\t' || s[j] == b',') {
                        j += 1;
                    }
                    let mut k = j;
                    while k < s.len() && is_tchar(s[k]) {
                        k += 1;
                    }
                    let mut m = k;
                    while m < s.len() && (s[m] == b' ' || s[m] == b'\t') {
                        m += 1;
                    }
                    if k > j && m < s.len() && s[m] == b'=' {
                        i = j;
                        continue;
                    }
                    break;
                }
            }
        }
        out.push(ch);
        skip_ws(&mut i);
        if i < s.len() && s[i] != b',' {
            return Err(bad("unexpected character"));
        }
    }
    if out.is_empty() {
        return Err(bad("no challenge"));
    }
    for c in &out {
        if c.scheme == "bearer" {
            match c.param("realm") {
                Some(r) if !r.is_empty() => {}
                _ => return Err(bad("bearer challenge without a realm")),
            }
        }
    }
    Ok(out)
}

fn trunc(s: &str) -> String {
    s.chars().take(200).collect()
}

/// A user name and password (or identity token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials {{ username: {:?}, password: <hidden> }}",
            self.username
        )
    }
}

impl Credentials {
    /// `Basic <base64(user:password)>`.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    /// Credentials for `host` (`host[:port]` as in the model name):
    /// `$LLPIPE_REGISTRY_USERNAME`/`$LLPIPE_REGISTRY_PASSWORD` when both are
    /// set, else the `auths` entry of `docker_config` (default
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`),
    /// through its credential helpers when it names them
    /// ([`from_docker_config`]).
    pub fn lookup(host: &str, docker_config: Option<&Path>) -> Result<Option<Credentials>, Error> {
        if let (Ok(u), Ok(p)) = (
            std::env::var("LLPIPE_REGISTRY_USERNAME"),
            std::env::var("LLPIPE_REGISTRY_PASSWORD"),
        ) {
            if !u.is_empty() {
                return Ok(Some(Credentials {
                    username: u,
                    password: p,
                }));
            }
        }
        let path = match docker_config {
            Some(p) => p.to_path_buf(),
            None => match default_docker_config() {
                Some(p) => p,
                None => return Ok(None),
            },
        };
        from_docker_config(&path, host)
    }
}

fn default_docker_config() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".docker").join("config.json"))
}

/// Credentials for `host` from a docker `config.json`, as the docker CLI
/// finds them: the helper `credHelpers` names for the host, else the
/// `credsStore` helper, run as `docker-credential-<name> get` (found on
/// `PATH`); when there is no helper or it has nothing for the host, the
/// host's `auths` entry. A missing file is no credentials; an unreadable or
/// malformed one, or a helper that fails, is an error.
pub fn from_docker_config(path: &Path, host: &str) -> Result<Option<Credentials>, Error> {
    config_credentials(path, host, None)
}

/// [`from_docker_config`] with helpers searched in `search_path` instead of `$PATH`.
fn config_credentials(
    path: &Path,
    host: &str,
    search_path: Option<&std::ffi::OsStr>,
) -> Result<Option<Credentials>, Error> {
    use std::io::Read;
    let bad = |why: String| Error::Auth(format!("docker config {}: {why}", path.display()));
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(e.to_string())),
    };
    let mut bytes = Vec::new();
    file.take(1 << 20)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(e.to_string()))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let hub = matches!(
        host,
        "docker.io" | "registry-1.docker.io" | "index.docker.io"
    );
    // Docker Hub is stored under its legacy index URL.
    let mut keys = vec![
        host.to_string(),
        format!("https://{host}"),
        format!("http://{host}"),
    ];
    if hub {
        keys.push("https://index.docker.io/v1/".into());
    }
    let matches = |k: &str| {
        keys.iter()
            .any(|want| want == k || want == k.trim_end_matches('/'))
    };
    let helper = v
        .get("credHelpers")
        .and_then(|h| h.as_object())
        .and_then(|h| h.iter().find(|(k, _)| matches(k)))
        .map(|(_, name)| name)
        .or_else(|| v.get("credsStore"))
        .and_then(|n| n.as_str())
        .filter(|n| !n.is_empty());
    if let Some(name) = helper {
        let server = if hub {
            "https://index.docker.io/v1/"
        } else {
            host
        };
        if let Some(c) = helper_credentials(name, server, search_path)? {
            return Ok(Some(c));
        }
    }
    let Some(auths) = v.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    for (k, entry) in auths {
        if !matches(k) {
            continue;
        }
        if let Some(tok) = entry
            .get("identitytoken")
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
        {
            return Ok(Some(Credentials {
                username: "<token>".into(),
                password: tok.into(),
            }));
        }
        if let (Some(u), Some(p)) = (
            entry.get("username").and_then(|x| x.as_str()),
            entry.get("password").and_then(|x| x.as_str()),
        ) {
            return Ok(Some(Credentials {
                username: u.into(),
                password: p.into(),
            }));
        }
        if let Some(a) = entry
            .get("auth")
            .and_then(|a| a.as_str())
            .filter(|a| !a.is_empty())
        {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(a)
                .map_err(|_| bad(format!("auth for {k} is not base64")))?;
            let raw =
                String::from_utf8(raw).map_err(|_| bad(format!("auth for {k} is not UTF-8")))?;
            let (u, p) = raw
                .split_once(':')
                .ok_or_else(|| bad(format!("auth for {k} has no ':'")))?;
            return Ok(Some(Credentials {
                username: u.into(),
                password: p.into(),
            }));
        }
    }
    Ok(None)
}

/// How long a credential helper may take (it may be waiting on a keychain).
const HELPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs `docker-credential-<name> get` with `server` on stdin. `None` when
/// the helper has no credentials for it ("credentials not found").
fn helper_credentials(
    name: &str,
    server: &str,
    search_path: Option<&std::ffi::OsStr>,
) -> Result<Option<Credentials>, Error> {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    let program = format!("docker-credential-{name}");
    let fail =
        |why: String| Error::Auth(format!("credential helper {program} for {server}: {why}"));
    // The name comes from a file: it must not turn into a path.
    if !name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
        || name.starts_with('.')
    {
        return Err(Error::Auth(format!(
            "docker config names an invalid credential helper {name:?}"
        )));
    }
    let mut cmd = Command::new(&program);
    if let Some(p) = search_path {
        cmd.env("PATH", p);
    }
    let mut child = cmd
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run it: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes());
    }
    // Read both pipes on threads (capped), so a chatty helper cannot block.
    let capped = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(r) = r {
                let _ = r.take(64 << 10).read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = capped(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = capped(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let start = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if start.elapsed() > HELPER_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("no answer in {} s", HELPER_TIMEOUT.as_secs())));
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(5)),
            Err(e) => return Err(fail(e.to_string())),
        }
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if !status.success() {
        let msg = String::from_utf8_lossy(if out.is_empty() { &err } else { &out });
        let msg = msg.trim();
        if msg.contains("credentials not found") {
            return Ok(None);
        }
        let msg: String = msg.chars().filter(|c| !c.is_control()).take(200).collect();
        return Err(fail(format!("{status}: {msg}")));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out).map_err(|e| fail(format!("bad JSON answer: {e}")))?;
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let (username, password) = (field("Username"), field("Secret"));
    if password.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials { username, password }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(h: &str) -> Challenge {
        let v = parse_www_authenticate(h).unwrap();
        assert_eq!(v.len(), 1, "{v:?}");
        v.into_iter().next().unwrap()
    }

    #[test]
    fn parses_registry_challenges() {
        let c = one(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:ai/smollm2:pull""#,
        );
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c.param("service"), Some("registry.docker.io"));
        assert_eq!(c.param("scope"), Some("repository:ai/smollm2:pull"));
        let c = one(r#"Basic realm="Registry Realm""#);
        assert_eq!(
            (c.scheme.as_str(), c.param("realm")),
            ("basic", Some("Registry Realm"))
        );
        let c = one(r#"bearer  REALM = "x" , error="insufficient_scope""#);
        assert_eq!(c.param("realm"), Some("x"));
        assert_eq!(c.param("error"), Some("insufficient_scope"));
        let c = one(r#"Bearer realm="a\"b\\c""#);
        assert_eq!(c.param("realm"), Some(r#"a"b\c"#));
        let c = one("Negotiate abc+/==");
        assert_eq!(c.param("token68"), Some("abc+/=="));
        let v = parse_www_authenticate(r#"Basic realm="r", Bearer realm="https://x/t", scope="s""#)
            .unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].param("scope"), Some("s"));
        let c = one("Bearer realm=tok");
        assert_eq!(c.param("realm"), Some("tok"));
    }

    /// HOSTILE row 10: the realm inside a quoted value is data, not a parameter.
    #[test]
    fn quoted_realm_is_not_a_param() {
        let c = one(
            r#"Bearer service="x,realm=Xhttps://evil.example/t",realm="https://reg.example/token""#,
        );
        assert_eq!(c.param("realm"), Some("https://reg.example/token"));
        assert_eq!(c.param("service"), Some("x,realm=Xhttps://evil.example/t"));
    }

    #[test]
    fn malformed_headers_are_errors_not_panics() {
        for h in [
            "",
            "Bearer realm=",
            r#"Bearer realm="""#,
            r#"Bearer realm="unterminated"#,
            r#"Bearer realm="a\"#,
            r#"Bearer realm="a",realm="b""#,
            r#"Bearer realm="a" junk"#,
            "Bearer realm",
            "Bearer =x",
            "=",
            ",,,",
            "Bearer \"x\"",
            "Bearer realm=\"a\u{1}\"",
            "Bearer",
            "Bearer service=\"s\"",
        ] {
            assert!(
                parse_www_authenticate(h).is_err(),
                "{h:?} accepted: {:?}",
                parse_www_authenticate(h)
            );
        }
        // every prefix and some mutations of a valid header: no panic
        let good = r#"Bearer realm="https://r/t",service="s\"x",scope="repository:a/b:pull""#;
        for i in 0..=good.len() {
            let _ = parse_www_authenticate(&good[..i]);
            let mut m = good.as_bytes().to_vec();
            if i < m.len() {
                m[i] = b'"';
                let _ = parse_www_authenticate(&String::from_utf8_lossy(&m));
                m[i] = b',';
                let _ = parse_www_authenticate(&String::from_utf8_lossy(&m));
            }
        }
    }

    #[test]
    fn docker_config_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret:x");
        std::fs::write(
            &p,
            format!(r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{auth}"}},"https://index.docker.io/v1/":{{"auth":"{auth}"}},"bad:1":{{"auth":"!!"}}}}}}"#),
        )
        .unwrap();
        let c = from_docker_config(&p, "127.0.0.1:5000").unwrap().unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("alice", "s3cret:x")
        );
        assert!(from_docker_config(&p, "docker.io").unwrap().is_some());
        assert!(from_docker_config(&p, "other:1").unwrap().is_none());
        assert!(from_docker_config(&p, "bad:1").is_err());
        assert!(from_docker_config(&dir.path().join("none.json"), "x")
            .unwrap()
            .is_none());
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(c.basic_header(), format!("Basic {auth}"));
    }

    /// A fake `docker-credential-*` helper in a temp dir used as the search path.
    fn helper(dir: &Path, name: &str, script: &str) {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(format!("docker-credential-{name}"));
        std::fs::write(&p, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn credential_helpers() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        // answers for 127.0.0.1:5000 only; logs what it was asked
        let asked = bin.join("asked");
        let store_script = r#"[ "$1" = get ] || exit 3
read -r url
echo "$url" >> ASKED
if [ "$url" = "127.0.0.1:5000" ]; then
  echo '{"ServerURL":"127.0.0.1:5000","Username":"bob","Secret":"from-store"}'
else
  echo "credentials not found in native keychain"; exit 1
fi"#;
        helper(
            &bin,
            "store",
            &store_script.replace("ASKED", &format!("'{}'", asked.display())),
        );
        helper(
            &bin,
            "special",
            r#"echo '{"Username":"carol","Secret":"special"}'"#,
        );
        helper(&bin, "broken", "echo 'keychain locked' >&2; exit 5");
        let p = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:from-auths");
        std::fs::write(
            &p,
            format!(
                r#"{{"credsStore":"store","credHelpers":{{"special.example":"special","broken.example":"broken"}},
                "auths":{{"127.0.0.1:5000":{{}},"other:1":{{"auth":"{auth}"}}}}}}"#
            ),
        )
        .unwrap();
        let get = |host: &str| config_credentials(&p, host, Some(bin.as_os_str()));
        let c = get("127.0.0.1:5000").unwrap().unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("bob", "from-store")
        );
        // credHelpers wins over credsStore for its host
        let c = get("special.example").unwrap().unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("carol", "special")
        );
        // the store has nothing: the auths entry, then nothing
        assert_eq!(get("other:1").unwrap().unwrap().password, "from-auths");
        assert_eq!(get("nobody.example").unwrap(), None);
        // Docker Hub is asked for under its index URL
        assert_eq!(get("docker.io").unwrap(), None);
        let asked = std::fs::read_to_string(&asked).unwrap();
        assert_eq!(
            asked.lines().collect::<Vec<_>>(),
            [
                "127.0.0.1:5000",
                "other:1",
                "nobody.example",
                "https://index.docker.io/v1/"
            ]
        );
        // a failing helper is a one-line error naming it and the host
        let e = get("broken.example").unwrap_err().to_string();
        assert!(
            e.contains("docker-credential-broken")
                && e.contains("broken.example")
                && e.contains("keychain locked")
                && !e.contains('\n'),
            "{e}"
        );
        // a missing helper is an error too, and names never become paths
        for (store, want) in [("missing", "cannot run"), ("../../bin/sh", "invalid")] {
            std::fs::write(&p, format!(r#"{{"credsStore":"{store}"}}"#)).unwrap();
            let e = get("x.example").unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
