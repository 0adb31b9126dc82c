//! Protocol conformance against a real registry: Debian's docker-registry
//! (distribution 2.8) on 127.0.0.1, plain and with htpasswd Basic auth.

mod common;

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use protocol::{media, Digest, Name};
use registry::{fetch_blob, push, resolve_remote, Credentials, Error, FetchOptions, PushOptions};
use store::Store;

fn fetch_opts(store: &Store, base: &str) -> FetchOptions {
    let mut o = FetchOptions {
        fsync: false,
        backoff: Duration::from_millis(5),
        part_size: Some(1 << 20),
        ..FetchOptions::default()
    };
    o.remote.base_url = Some(base.into());
    o.remote.store = Some(store.clone());
    o.remote.docker_config = Some("/nonexistent/config.json".into());
    o
}

fn push_opts(base: &str) -> PushOptions {
    let mut o = PushOptions::default();
    o.remote.base_url = Some(base.into());
    o.remote.docker_config = Some("/nonexistent/config.json".into());
    o
}

fn models_dir() -> std::path::PathBuf {
    pipeline_tests::models_dir()
}

/// create smollm2:135m → push → remove locally → resolve | fetch-blob | verify → same manifest digest.
#[test]
fn round_trip_smollm2() {
    let gguf = models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        gguf.exists(),
        "{} missing: run scripts/fetch-models.sh",
        gguf.display()
    );
    let reg = docker_registry(None);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    let (name, base) =
        registry::parse_name(&format!("http://{}/library/smollm2:135m", reg.host())).unwrap();
    let base = base.unwrap();
    let mf = store::Modelfile::parse(&format!(
        "FROM {}\nTEMPLATE \"{{{{ .Prompt }}}}\"\nSYSTEM \"be brief\"\n",
        gguf.display()
    ))
    .unwrap();
    let created = store::create(&store, &name, &mf, &store::CreateOptions::default()).unwrap();

    let mut po = push_opts(&base);
    let (pushed, seen) = recorder();
    po.on_progress = Some(seen);
    let report = push(&name, &store, &po).unwrap();
    assert_eq!(report.manifest_digest, created.manifest_digest);
    check_progress(&pushed.lock().unwrap(), &created, true);
    assert_eq!(
        report.uploaded,
        created
            .blobs()
            .map(|b| &b.digest)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    );
    let again = push(&name, &store, &push_opts(&base)).unwrap();
    assert_eq!(
        (again.uploaded, again.skipped),
        (0, report.uploaded),
        "HEAD did not skip existing blobs"
    );

    store::remove(&store, &name).unwrap();
    assert!(store.find_manifest(&name).unwrap().is_none());
    // remove may keep shared blobs; drop them all to force a full pull
    for f in files_under(&store.blobs_dir()) {
        std::fs::remove_file(store.blobs_dir().join(f)).unwrap();
    }

    let mut o = fetch_opts(&store, &base);
    let (pulled, seen) = recorder();
    o.on_progress = Some(seen);
    let mut doc = resolve_remote(&name, &o.remote).unwrap();
    assert!(doc.blobs().all(|b| !b.present));
    let r = fetch_blob(&mut doc, &store, &o).unwrap();
    check_progress(&pulled.lock().unwrap(), &created, true);
    // a second pull finds every blob present: one completed = total each
    let (again, seen) = recorder();
    o.on_progress = Some(seen);
    let mut doc2 = resolve_remote(&name, &o.remote).unwrap();
    fetch_blob(&mut doc2, &store, &o).unwrap();
    check_progress(&again.lock().unwrap(), &created, false);
    assert!(again.lock().unwrap().iter().all(|(_, c, t)| c == t));
    assert!(r.manifest_written && r.blobs_fetched >= 2);
    assert_eq!(doc.manifest_digest, created.manifest_digest);
    let local = store::resolve(&store, &name, &store::ResolveOptions::default()).unwrap();
    assert_eq!(local.manifest_digest, created.manifest_digest);
    let v = store::verify_all(&store, &store::VerifyOptions::default()).unwrap();
    assert!(v.findings.is_empty(), "{:?}", v.findings);
    assert_eq!(v.bytes_hashed, doc.blobs().map(|b| b.size).sum::<u64>());
}

type Events = Arc<std::sync::Mutex<Vec<(Digest, u64, u64)>>>;

/// A progress callback that records every call.
fn recorder() -> (Events, registry::Progress) {
    let ev: Events = Default::default();
    let e = ev.clone();
    let p = registry::Progress::new(move |d, c, t| e.lock().unwrap().push((d.clone(), c, t)));
    (ev, p)
}

/// Every blob of `doc` was reported, its last report complete with the
/// blob's size and no report beyond it; `from_zero`: the first at 0.
fn check_progress(ev: &[(Digest, u64, u64)], doc: &protocol::ModelDoc, from_zero: bool) {
    for b in doc.blobs() {
        let mine: Vec<_> = ev.iter().filter(|(d, _, _)| *d == b.digest).collect();
        assert!(!mine.is_empty(), "no progress for {}", b.digest);
        assert!(
            mine.iter().all(|(_, c, t)| *t == b.size && c <= t),
            "{mine:?}"
        );
        assert!(mine.windows(2).all(|w| w[0].1 <= w[1].1), "{mine:?}");
        assert_eq!(mine.last().unwrap().1, b.size);
        if from_zero {
            assert_eq!(mine[0].1, 0, "{}: {mine:?}", b.digest);
        }
    }
}

#[test]
fn chunked_push_cross_mount_and_oci_pull() {
    let reg = docker_registry(None);
    let a = tempfile::tempdir().unwrap();
    let sa = Store::open(a.path());
    let base = reg.url();
    let big = bytes(300_000, 3);
    let n1 = Name::parse(&format!("{}/team/one:v1", reg.host())).unwrap();
    let m1 = put_model(
        &sa,
        &n1,
        b"{}",
        &[(media::MODEL, &big), (media::LICENSE, b"MIT")],
    );
    let mut po = push_opts(&base);
    po.chunk_size = Some(64 << 10);
    let r1 = push(&n1, &sa, &po).unwrap();
    assert_eq!(r1.uploaded, 3);

    // a Docker Model Runner style OCI artifact sharing the big blob, mounted from team/one
    let n2 = Name::parse(&format!("{}/ai/two:Q4", reg.host())).unwrap();
    let cfg = br#"{"config":{"format":"gguf"}}"#;
    sa.write_blob(cfg).unwrap();
    let oci = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","artifactType":"application/vnd.docker.ai.model.config.v0.1+json","config":{{"mediaType":"application/vnd.docker.ai.model.config.v0.1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"{}","digest":"{}","size":{}}}]}}"#,
        media::OCI_MANIFEST,
        Digest::of_bytes(cfg),
        cfg.len(),
        media::DOCKER_AI_GGUF,
        Digest::of_bytes(&big),
        big.len()
    );
    sa.write_manifest(&n2, oci.as_bytes()).unwrap();
    let mut po2 = push_opts(&base);
    po2.mount_from = Some("team/one".into());
    let r2 = push(&n2, &sa, &po2).unwrap();
    assert_eq!((r2.mounted, r2.uploaded), (1, 1), "{r2:?}");

    for (name, manifest) in [(&n1, &m1), (&n2, &oci)] {
        let b = tempfile::tempdir().unwrap();
        let sb = Store::open(b.path());
        let o = fetch_opts(&sb, &base);
        let mut doc = resolve_remote(name, &o.remote).unwrap();
        assert_eq!(
            doc.manifest_text.as_deref(),
            Some(manifest.as_str()),
            "manifest not byte-identical"
        );
        fetch_blob(&mut doc, &sb, &o).unwrap();
        assert_eq!(
            std::fs::read(sb.blob_path(&Digest::of_bytes(&big))).unwrap(),
            big
        );
        assert!(doc.model_layer().is_some());
        assert_eq!(
            std::fs::read_to_string(sb.manifest_path(name)).unwrap(),
            *manifest
        );
    }

    let missing = Name::parse(&format!("{}/team/none:v1", reg.host())).unwrap();
    let e = resolve_remote(&missing, &fetch_opts(&sa, &base).remote).unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
}

#[test]
fn htpasswd_basic_auth() {
    let reg = docker_registry(Some(("alice", "s3cret")));
    let base = reg.url();
    let a = tempfile::tempdir().unwrap();
    let sa = Store::open(a.path());
    let name = Name::parse(&format!("{}/library/tiny:1", reg.host())).unwrap();
    put_model(&sa, &name, b"{}", &[(media::MODEL, &bytes(10_000, 1))]);

    let e = push(&name, &sa, &push_opts(&base)).unwrap_err();
    assert!(matches!(e, Error::Unauthorized { .. }), "{e}");
    let mut po = push_opts(&base);
    po.remote.credentials = Some(Credentials {
        username: "alice".into(),
        password: "wrong".into(),
    });
    assert!(matches!(
        push(&name, &sa, &po).unwrap_err(),
        Error::Unauthorized { .. }
    ));
    po.remote.credentials = Some(Credentials {
        username: "alice".into(),
        password: "s3cret".into(),
    });
    push(&name, &sa, &po).unwrap();

    let b = tempfile::tempdir().unwrap();
    let sb = Store::open(b.path());
    let mut o = fetch_opts(&sb, &base);
    let e = resolve_remote(&name, &o.remote).unwrap_err();
    assert!(
        e.to_string().contains("401") && e.to_string().contains("tiny"),
        "{e}"
    );
    // credentials from a docker config.json
    let cfg = b.path().join("config.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"YWxpY2U6czNjcmV0"}}}}}}"#,
            reg.host()
        ),
    )
    .unwrap();
    o.remote.docker_config = Some(cfg);
    let mut doc = resolve_remote(&name, &o.remote).unwrap();
    fetch_blob(&mut doc, &sb, &o).unwrap();
    assert!(doc.blobs().all(|b| b.present));
}

// ---- token auth: docker-registry trusting a small RS256 token server of ours ----

fn b64url(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Signs `input` with RS256 (SHA-256 + PKCS#1 v1.5) using openssl.
fn rs256(key: &std::path::Path, input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl installed");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// Forwards one request to 127.0.0.1:`port` and copies the answer back.
fn forward(req: &Req, c: &mut Conn, port: u16) {
    use std::io::{Read, Write};
    let Ok(mut up) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.path);
    for (k, v) in &req.headers {
        if !k.eq_ignore_ascii_case("connection") {
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

/// A front on one origin: `/token` is an RS256 token server (anonymous
/// callers get `pull` only, `alice:pw` gets what the scope asks), the rest
/// is forwarded to the docker-registry whose port is set later.
fn token_front(dir: &std::path::Path) -> (FaultServer, std::path::PathBuf, Arc<AtomicU16>) {
    let key = dir.join("key.pem");
    let cert = dir.join("cert.pem");
    let st = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=llpipe-token",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl missing: apt-get install -y openssl");
    assert!(st.success());
    let der = std::process::Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(&cert)
        .output()
        .unwrap()
        .stdout;
    use base64::Engine as _;
    let x5c = base64::engine::general_purpose::STANDARD.encode(der);
    let reg_port = Arc::new(AtomicU16::new(0));
    let rp = reg_port.clone();
    let srv = serve(move |req, mut c| {
        if !req.path.starts_with("/token") {
            return forward(req, &mut c, rp.load(Ordering::SeqCst));
        }
        let q = req.path.split_once('?').map(|(_, q)| q).unwrap_or("");
        let scopes: Vec<String> = url::form_urlencoded::parse(q.as_bytes())
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.into_owned())
            .collect();
        let authed = req.header("authorization") == Some("Basic YWxpY2U6cHc="); // alice:pw
        let mut access = Vec::new();
        for s in scopes.iter().flat_map(|s| s.split(' ')) {
            let parts: Vec<&str> = s.split(':').collect();
            if let [kind, name, actions] = parts[..] {
                let acts: Vec<&str> = actions
                    .split(',')
                    .filter(|a| authed || *a == "pull")
                    .collect();
                access.push(serde_json::json!({"type": kind, "name": name, "actions": acts}));
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5c": [x5c]});
        let claims = serde_json::json!({"iss": "llpipe-issuer", "sub": if authed {"alice"} else {""}, "aud": "llpipe-test",
            "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", access.len()), "access": access});
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let sig = rs256(&key, input.as_bytes());
        let token = format!("{input}.{}", b64url(&sig));
        c.respond(
            200,
            &[("Content-Type", "application/json".into())],
            serde_json::json!({"token": token}).to_string().as_bytes(),
        );
    });
    (srv, cert, reg_port)
}

#[test]
fn token_auth_anonymous_pull_credentialed_push() {
    let tdir = tempfile::tempdir().unwrap();
    let (front, cert, reg_port) = token_front(tdir.path());
    let auth = format!(
        "auth:\n  token:\n    realm: {}/token\n    service: llpipe-test\n    issuer: llpipe-issuer\n    rootcertbundle: {}\n",
        front.url(),
        cert.display()
    );
    let reg = docker_registry_with(None, Some(auth));
    reg_port.store(reg.port, Ordering::SeqCst);
    let a = tempfile::tempdir().unwrap();
    let sa = Store::open(a.path());
    let name = Name::parse(&format!("{}/library/tok:1", front.addr)).unwrap();
    put_model(&sa, &name, b"{}", &[(media::MODEL, &bytes(50_000, 4))]);

    // anonymous: a pull-only token, so the push is refused (insufficient_scope)
    let e = push(&name, &sa, &push_opts(&front.url())).unwrap_err();
    assert!(matches!(e, Error::Unauthorized { .. }), "{e}");
    // with credentials: pull,push
    let mut po = push_opts(&front.url());
    po.remote.credentials = Some(Credentials {
        username: "alice".into(),
        password: "pw".into(),
    });
    push(&name, &sa, &po).unwrap();
    // anonymous pull with a Bearer token
    let b = tempfile::tempdir().unwrap();
    let sb = Store::open(b.path());
    let o = fetch_opts(&sb, &front.url());
    let mut doc = resolve_remote(&name, &o.remote).unwrap();
    fetch_blob(&mut doc, &sb, &o).unwrap();
    assert!(doc.blobs().all(|b| b.present));
    let tokens = front
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/token"))
        .count();
    assert!(tokens >= 3, "{tokens} token requests");
    // issue 14: the registry's own port is another origin than its token
    // service (as with GitLab or docker_auth): an anonymous pull works there
    let direct = Name::parse(&format!("{}/library/tok:1", reg.host())).unwrap();
    let c = tempfile::tempdir().unwrap();
    let sc = Store::open(c.path());
    let mut o = fetch_opts(&sc, &reg.url());
    o.remote.trusted_realms = Some(vec![]);
    let mut doc = resolve_remote(&direct, &o.remote).unwrap();
    fetch_blob(&mut doc, &sc, &o).unwrap();
    // a push with credentials: they are withheld from the other origin, the
    // anonymous token is pull-only, and the error says how to trust the realm
    put_model(&sa, &direct, b"{}", &[(media::MODEL, &bytes(50_000, 4))]);
    let before = front.requests().len();
    let mut po = push_opts(&reg.url());
    po.remote.trusted_realms = Some(vec![]);
    po.remote.credentials = Some(Credentials {
        username: "alice".into(),
        password: "pw".into(),
    });
    let e = push(&direct, &sa, &po).unwrap_err().to_string();
    assert!(
        e.contains("CVE-2025-51471")
            && e.contains(&format!("LLPIPE_TRUSTED_REALMS=\"{}=", reg.host())),
        "{e}"
    );
    let tokens: Vec<Req> = front.requests().split_off(before);
    assert!(!tokens.is_empty());
    assert!(tokens.iter().all(|r| r.header("authorization").is_none()));
    // trusted by configuration: the credentials go to the realm and the push works
    po.remote.trusted_realms = Some(vec![format!("{}={}/token", reg.host(), front.url())]);
    push(&direct, &sa, &po).unwrap();
    assert!(front
        .requests()
        .iter()
        .any(|r| r.header("authorization") == Some("Basic YWxpY2U6cHc=")));
}
