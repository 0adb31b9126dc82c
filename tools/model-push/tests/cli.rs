//! model-push as a process against a real docker-registry on 127.0.0.1.

#[path = "../../../libs/registry/tests/common/mod.rs"]
mod common;

use std::process::Command;

use common::*;
use protocol::{media, Name};

fn push(args: &[&str], store: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_model-push"))
        .args(args)
        .env("OLLAMA_MODELS", store)
        .env("DOCKER_CONFIG", "/nonexistent")
        .output()
        .unwrap()
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
