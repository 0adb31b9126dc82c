//! Issue 14: token services on another origin (anonymous requests work,
//! credentials and signatures stay home unless trusted), and Ollama's key
//! auth against an emulated token service that verifies signatures, plus
//! interop with ssh-keygen.

mod common;
#[path = "common/ollama.rs"]
mod ollama;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::*;
use ollama::{ollama_front, ollama_registry, query};
use protocol::{media, Name};
use registry::{push, resolve_remote, Credentials, Error, OllamaKey, PushOptions, RemoteOptions};
use store::Store;

fn manifest() -> String {
    manifest_for(b"{}", &[(media::MODEL, b"weights")])
}

fn name() -> Name {
    Name::parse("127.0.0.1:1/library/m:t").unwrap()
}

fn remote(store: &Store, base: &str) -> RemoteOptions {
    RemoteOptions {
        base_url: Some(base.to_string()),
        store: Some(store.clone()),
        docker_config: Some("/nonexistent/config.json".into()),
        trusted_realms: Some(vec![]),
        ollama_registries: Some(vec![]),
        ollama_key_dir: Some("/nonexistent/key-dir".into()),
        stall_timeout: std::time::Duration::from_secs(5),
        connect_timeout: std::time::Duration::from_secs(2),
        ..RemoteOptions::default()
    }
}

fn host_of(srv: &FaultServer) -> String {
    srv.addr.to_string()
}

/// A registry needing `Bearer T`, whose challenge names `realm`.
fn registry_with_realm(realm: String) -> FaultServer {
    let m = manifest();
    serve(move |req, mut c| {
        if req.header("authorization") != Some("Bearer T") {
            let ch = format!(
                r#"Bearer realm="{realm}",service="svc",scope="repository:library/m:pull""#
            );
            return c.respond(401, &[("WWW-Authenticate", ch)], b"");
        }
        c.respond(
            200,
            &[("Content-Type", media::DOCKER_MANIFEST.into())],
            m.as_bytes(),
        )
    })
}

/// A token service: `T` to anonymous requests when `anonymous_ok`, and to
/// `Basic` with the right password always.
fn token_service(anonymous_ok: bool, basic: Option<String>) -> FaultServer {
    serve(move |req, mut c| {
        let auth = req.header("authorization");
        let ok = match auth {
            None => anonymous_ok,
            Some(a) => Some(a) == basic.as_deref(),
        };
        if ok {
            c.respond(200, &[], br#"{"token":"T"}"#)
        } else {
            c.respond(401, &[], b"")
        }
    })
}

fn creds() -> Credentials {
    Credentials {
        username: "u".into(),
        password: "secret".into(),
    }
}

/// Issue 14 item 1: a token service on another port answers anonymous
/// requests; our credentials never reach it.
#[test]
fn r14_anonymous_token_from_another_origin() {
    let tok = token_service(true, None);
    let reg = registry_with_realm(format!("{}/token", tok.url()));
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    let mut o = remote(&store, &reg.url());
    o.insecure = true;
    o.credentials = Some(creds());
    let doc = resolve_remote(&name(), &o).unwrap();
    assert_eq!(doc.manifest_text.as_deref(), Some(manifest().as_str()));
    let reqs = tok.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].header("authorization"), None, "credentials leaked");
    let q = query(&reqs[0]);
    assert!(q.contains(&("service".into(), "svc".into())), "{q:?}");
    assert!(q.contains(&("scope".into(), "repository:library/m:pull".into())));
    // an http realm for an https registry is still refused (--insecure off)
    let o = remote(&store, &reg.url().replace("http:", "https:"));
    assert!(resolve_remote(&name(), &o).is_err());
}

/// Credentials are withheld from a foreign realm; the error says how to
/// trust it; once trusted, Basic goes there (and only there).
#[test]
fn r14_credentials_go_to_a_foreign_realm_only_when_trusted() {
    let tok = token_service(false, Some(creds().basic_header()));
    let reg = registry_with_realm(format!("{}/auth/token", tok.url()));
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    let mut o = remote(&store, &reg.url());
    o.insecure = true;
    o.credentials = Some(creds());
    let e = resolve_remote(&name(), &o).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Auth(_)), "{e:?}");
    let hint = format!(
        "LLPIPE_TRUSTED_REALMS=\"{}=http://{}\"",
        host_of(&reg),
        host_of(&tok)
    );
    assert!(
        msg.contains("credentials were not sent to it")
            && msg.contains(&hint)
            && !msg.contains("secret"),
        "{msg}"
    );
    assert!(tok
        .requests()
        .iter()
        .all(|r| r.header("authorization").is_none()));
    // trusted for another registry: still withheld
    o.trusted_realms = Some(vec![format!("127.0.0.1:1={}", tok.url())]);
    assert!(resolve_remote(&name(), &o).is_err());
    assert!(tok
        .requests()
        .iter()
        .all(|r| r.header("authorization").is_none()));
    // trusted for this one
    o.trusted_realms = Some(vec![format!("{}={}/", host_of(&reg), tok.url())]);
    resolve_remote(&name(), &o).unwrap();
    let last = tok.requests().pop().unwrap();
    assert_eq!(
        last.header("authorization"),
        Some(creds().basic_header().as_str())
    );
    // a malformed entry is an error before any request
    let n = tok.requests().len();
    o.trusted_realms = Some(vec!["no-equals-sign".into()]);
    let e = resolve_remote(&name(), &o).unwrap_err().to_string();
    assert!(e.contains("LLPIPE_TRUSTED_REALMS"), "{e}");
    assert_eq!(tok.requests().len(), n);
}

fn ollama_opts(
    store: &Store,
    base: &str,
    key_dir: &std::path::Path,
    host: String,
) -> RemoteOptions {
    let mut o = remote(store, base);
    o.insecure = true;
    o.ollama_registries = Some(vec![host]);
    o.ollama_key_dir = Some(key_dir.to_path_buf());
    o
}

/// Issue 14 item 2: the key is created on first use and the token request
/// is signed as Ollama signs it; a wrong key gets 401 and a clear error.
#[test]
fn r14_ollama_signed_token_request() {
    let authorized = Arc::new(Mutex::new(String::new()));
    let (reg, verdicts) = ollama_registry(manifest(), authorized.clone(), None);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("models"));
    let key_dir = dir.path().join("home/.ollama");
    // create the key the way the session will find it, authorize it
    let (key, created) = OllamaKey::load_or_create(&key_dir).unwrap();
    assert!(created);
    *authorized.lock().unwrap() = std::fs::read_to_string(key.public_path()).unwrap();
    let o = ollama_opts(&store, &reg.url(), &key_dir, host_of(&reg));
    let doc = resolve_remote(&name(), &o).unwrap();
    assert_eq!(doc.manifest_text.as_deref(), Some(manifest().as_str()));
    assert_eq!(*verdicts.lock().unwrap(), vec![Ok(())]);
    let tok = reg
        .requests()
        .into_iter()
        .find(|r| r.path.starts_with("/token"))
        .unwrap();
    let q = query(&tok);
    let keys: Vec<&str> = q.iter().map(|(k, _)| k.as_str()).collect();
    // Go's url.Values.Encode order
    assert_eq!(keys, ["nonce", "scope", "service", "ts"], "{}", tok.path);
    assert!(q.contains(&("service".into(), "ollama.com".into())));
    // two requests never share a nonce
    resolve_remote(&name(), &o).unwrap();
    let nonces: Vec<String> = reg
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/token"))
        .map(|r| query(r).into_iter().find(|(k, _)| k == "nonce").unwrap().1)
        .collect();
    assert_eq!(nonces.len(), 2);
    assert_ne!(nonces[0], nonces[1]);

    // another key is refused: a one-line error naming the key files
    let other = tempfile::tempdir().unwrap();
    let (k2, _) = OllamaKey::load_or_create(other.path()).unwrap();
    *authorized.lock().unwrap() = k2.public_line();
    let e = resolve_remote(&name(), &o).unwrap_err().to_string();
    assert!(
        e.contains("answered 401")
            && e.contains(&key.path().display().to_string())
            && e.contains(&key.public_path().display().to_string())
            && e.contains("settings/keys")
            && !e.contains('\n'),
        "{e}"
    );
    assert!(verdicts.lock().unwrap().last().unwrap().is_err());
}

/// Without the Ollama registry marking, nothing is signed and no key is made.
#[test]
fn r14_other_registries_are_not_signed() {
    let authorized = Arc::new(Mutex::new("ssh-ed25519 AAAA".to_string()));
    let (reg, _) = ollama_registry(manifest(), authorized, None);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("models"));
    let key_dir = dir.path().join("keys");
    let mut o = ollama_opts(&store, &reg.url(), &key_dir, "127.0.0.1:1".into());
    o.ollama_registries = Some(vec!["127.0.0.1:1".into()]);
    let e = resolve_remote(&name(), &o).unwrap_err();
    assert!(matches!(e, Error::Unauthorized { .. }), "{e:?}");
    assert!(!key_dir.exists(), "a key was created");
    assert!(reg
        .requests()
        .iter()
        .all(|r| r.header("authorization").is_none()));
}

/// The signature never goes to a realm on another origin: the token
/// request there is anonymous, and the error says what was withheld.
#[test]
fn r14_signature_not_sent_to_a_foreign_realm() {
    let tok = token_service(false, None);
    let authorized = Arc::new(Mutex::new(String::new()));
    let (reg, _) = ollama_registry(manifest(), authorized, Some(format!("{}/token", tok.url())));
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("models"));
    let key_dir = dir.path().join("keys");
    let o = ollama_opts(&store, &reg.url(), &key_dir, host_of(&reg));
    let e = resolve_remote(&name(), &o).unwrap_err().to_string();
    assert!(e.contains("Ollama key signature was not sent to it"), "{e}");
    assert_eq!(tok.requests().len(), 1);
    assert_eq!(tok.requests()[0].header("authorization"), None);
    assert!(!key_dir.exists(), "a key was created for nothing");
}

fn ssh_keygen() -> bool {
    let ok = Command::new("ssh-keygen").arg("-?").output().is_ok();
    if !ok {
        println!("SKIPPED: ssh-keygen is not installed (apt-get install -y openssh-client)");
    }
    ok
}

/// A key we write is an OpenSSH key to ssh-keygen, with the same public key.
#[test]
fn r14_our_key_parses_with_ssh_keygen() {
    if !ssh_keygen() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = OllamaKey::load_or_create(dir.path()).unwrap();
    let out = Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(key.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    assert_eq!(line.trim(), key.public_line());
    assert_eq!(
        std::fs::read_to_string(key.public_path()).unwrap().trim(),
        key.public_line()
    );
}

/// A key from `ssh-keygen -t ed25519 -N ''` signs token requests that
/// verify against the .pub ssh-keygen wrote.
#[test]
fn r14_ssh_keygen_key_is_used() {
    if !ssh_keygen() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key_dir = dir.path().join(".ollama");
    std::fs::create_dir(&key_dir).unwrap();
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "me@example", "-f"])
        .arg(key_dir.join("id_ed25519"))
        .status()
        .unwrap();
    assert!(st.success());
    let pub_line = std::fs::read_to_string(key_dir.join("id_ed25519.pub")).unwrap();
    let authorized = Arc::new(Mutex::new(pub_line.clone()));
    let (reg, verdicts) = ollama_registry(manifest(), authorized, None);
    let store = Store::open(dir.path().join("models"));
    let o = ollama_opts(&store, &reg.url(), &key_dir, host_of(&reg));
    resolve_remote(&name(), &o).unwrap();
    assert_eq!(*verdicts.lock().unwrap(), vec![Ok(())]);
    let key = OllamaKey::load(&key_dir.join("id_ed25519")).unwrap();
    assert!(pub_line.starts_with(&key.public_line()));
    // a passphrase-protected key is a clear error, not a prompt or a panic
    let enc = dir.path().join("enc");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "pw", "-f"])
        .arg(&enc)
        .status()
        .unwrap();
    assert!(st.success());
    let e = OllamaKey::load(&enc).unwrap_err().to_string();
    assert!(
        e.contains("passphrase") && e.contains(&enc.display().to_string()),
        "{e}"
    );
    // an RSA key is refused by type
    let rsa = dir.path().join("rsa");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "rsa", "-b", "1024", "-N", "", "-f"])
        .arg(&rsa)
        .status()
        .unwrap();
    if st.success() {
        std::fs::set_permissions(&rsa, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = OllamaKey::load(&rsa).unwrap_err().to_string();
        assert!(
            e.contains("not ed25519") || e.contains("not an OpenSSH"),
            "{e}"
        );
    }
}

/// A push to an Ollama-style registry: every token request it makes is
/// signed and verified; the manifest lands upstream byte for byte.
#[test]
fn r14_push_with_signed_token_requests() {
    let up = docker_registry(None);
    let dir = tempfile::tempdir().unwrap();
    let key_dir = dir.path().join("keys");
    let (key, _) = OllamaKey::load_or_create(&key_dir).unwrap();
    let authorized = Arc::new(Mutex::new(key.public_line()));
    let (front, verdicts) = ollama_front(String::new(), authorized.clone(), None, Some(up.port));
    let store = Store::open(dir.path().join("models"));
    let name = Name::parse(&format!("{}/library/pushed:1", host_of(&front))).unwrap();
    let m = put_model(&store, &name, b"{}", &[(media::MODEL, &bytes(20_000, 3))]);
    let po = PushOptions {
        remote: ollama_opts(&store, &front.url(), &key_dir, host_of(&front)),
        ..PushOptions::default()
    };
    push(&name, &store, &po).unwrap();
    let v = verdicts.lock().unwrap().clone();
    assert!(!v.is_empty() && v.iter().all(|r| r.is_ok()), "{v:?}");
    // what the upstream registry holds is the manifest we pushed
    let other = Store::open(dir.path().join("other"));
    let direct = Name::parse(&format!("{}/library/pushed:1", up.host())).unwrap();
    let mut o = remote(&other, &up.url());
    o.insecure = true;
    let doc = resolve_remote(&direct, &o).unwrap();
    assert_eq!(doc.manifest_text.as_deref(), Some(m.as_str()));
    // with a key the registry does not know, the push fails naming the key
    *authorized.lock().unwrap() = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOther".into();
    let name2 = Name::parse(&format!("{}/library/pushed:2", host_of(&front))).unwrap();
    put_model(&store, &name2, b"{}", &[(media::MODEL, &bytes(20_000, 4))]);
    let e = push(&name2, &store, &po).unwrap_err().to_string();
    assert!(
        e.contains("Ollama key") && e.contains("id_ed25519.pub"),
        "{e}"
    );
}
