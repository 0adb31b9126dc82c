//! model-push as a process against a real docker-registry on 127.0.0.1.

#[path = "../../../libs/registry/tests/common/mod.rs"]
mod common;
#[path = "../../../libs/registry/tests/common/ollama.rs"]
mod ollama;

use std::process::Command;

use common::*;
use protocol::{media, Name};

fn push(args: &[&str], store: &std::path::Path) -> std::process::Output {
    push_env(args, store, &[])
}

fn push_env(args: &[&str], store: &std::path::Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_model-push"));
    cmd.args(args)
        .env("OLLAMA_MODELS", store)
        .env("DOCKER_CONFIG", "/nonexistent")
        .env_remove("LLPIPE_TRUSTED_REALMS")
        .env_remove("LLPIPE_OLLAMA_REGISTRIES");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn pushes_then_skips() {
    let reg = docker_registry(None);
    let dir = tempfile::tempdir().unwrap();
    let store = store::Store::open(dir.path());
    let name = Name::parse(&format!("{}/library/tiny:1", reg.host())).unwrap();
    let manifest = put_model(
        &store,
        &name,
        b"{}",
        &[(media::MODEL, &bytes(150_000, 9)), (media::SYSTEM, b"hi")],
    );
    let arg = format!("http://{}/library/tiny:1", reg.host());
    let out = push(&[&arg, "--chunk-size", "65536"], dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["type"], "push");
    assert_eq!(v["data"]["uploaded"], 3);
    assert_eq!(
        v["data"]["manifest_digest"],
        protocol::Digest::of_bytes(manifest.as_bytes()).to_string()
    );
    let again = push(&[&arg], dir.path());
    let v: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(
        (
            v["data"]["uploaded"].as_u64(),
            v["data"]["skipped"].as_u64()
        ),
        (Some(0), Some(3))
    );
}

#[test]
fn missing_model_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = push(&["http://127.0.0.1:1/library/none:1"], dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1);
    assert!(err.contains("none:1"), "{err}");
}

/// Issue 14: `model-push` to an Ollama-style registry signs its token
/// requests with $HOME/.ollama/id_ed25519 (an existing, authorized key:
/// nothing is printed on stderr); the emulated front verifies every one.
#[test]
fn r14_pushes_with_the_ollama_key() {
    use std::sync::{Arc, Mutex};
    let up = docker_registry(None);
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let (key, _) = registry::OllamaKey::load_or_create(&home.join(".ollama")).unwrap();
    let authorized = Arc::new(Mutex::new(key.public_line()));
    let (front, verdicts) = ollama::ollama_front(String::new(), authorized, None, Some(up.port));
    let models = dir.path().join("models");
    let store = store::Store::open(&models);
    let host = front.addr.to_string();
    let name = Name::parse(&format!("{host}/library/tiny:1")).unwrap();
    put_model(&store, &name, b"{}", &[(media::MODEL, &bytes(30_000, 5))]);
    let home_s = home.display().to_string();
    let arg = format!("http://{host}/library/tiny:1");
    let out = push_env(
        &[&arg],
        &models,
        &[("HOME", &home_s), ("LLPIPE_OLLAMA_REGISTRIES", &host)],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(err, "");
    let v = verdicts.lock().unwrap().clone();
    assert!(!v.is_empty() && v.iter().all(|r| r.is_ok()), "{v:?}");
}

/// A malformed LLPIPE_TRUSTED_REALMS is a one-line usage error, exit 2.
#[test]
fn r14_malformed_trusted_realms_is_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let store = store::Store::open(dir.path());
    let name = Name::parse("127.0.0.1:1/library/tiny:1").unwrap();
    put_model(&store, &name, b"{}", &[(media::SYSTEM, b"hi")]);
    let out = push_env(
        &["http://127.0.0.1:1/library/tiny:1"],
        dir.path(),
        &[("LLPIPE_TRUSTED_REALMS", "127.0.0.1:1")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("LLPIPE_TRUSTED_REALMS entry \"127.0.0.1:1\""),
        "{err}"
    );
}
