//! fetch-blob as a process: pass-through, pulls by name and from stdin,
//! one-line errors with exit 2.

#[path = "../../../libs/registry/tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::*;
use protocol::{media, Digest, Line};

fn run(args: &[&str], stdin: &str, store: &std::path::Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fetch-blob"))
        .args(args)
        .env("OLLAMA_MODELS", store)
        .env("DOCKER_CONFIG", "/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn passes_other_lines_through() {
    let dir = tempfile::tempdir().unwrap();
    let input = "{\"type\":\"token\",\"data\":{\"text\":\"hi\"},\"x\":[1,2]}\n";
    let out = run(&[], input, dir.path());
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), input.to_string()),
        "{}",
        text(&out.stderr)
    );
    assert!(common::files_under(dir.path()).is_empty());
}

#[test]
fn pulls_by_name_then_from_stdin_without_network() {
    let config = b"{}".to_vec();
    let weights = bytes(200_000, 5);
    let manifest = manifest_for(&config, &[(media::MODEL, &weights)]);
    let blobs: Vec<(String, Vec<u8>)> = [config, weights.clone()]
        .into_iter()
        .map(|b| (Digest::of_bytes(&b).to_string(), b))
        .collect();
    let m2 = manifest.clone();
    let srv = serve(move |req, mut c| {
        if req.path.contains("/manifests/") {
            return c.respond(
                200,
                &[("Content-Type", media::DOCKER_MANIFEST.into())],
                m2.as_bytes(),
            );
        }
        match blobs.iter().find(|(d, _)| req.path.ends_with(d.as_str())) {
            Some((_, b)) => c.blob(req, b),
            None => c.respond(404, &[], b""),
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let name = format!("{}/library/m:t", srv.url());
    let out = run(
        &["--no-fsync", "--part-size", "65536", &name],
        "",
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let line = text(&out.stdout);
    assert_eq!(line.lines().count(), 1);
    let doc = Line::parse(line.trim()).unwrap().model().unwrap().unwrap();
    assert!(doc.blobs().all(|b| b.present) && doc.manifest_text.is_none());
    assert_eq!(doc.model_layer().unwrap().size, 200_000);
    let stored = dir
        .path()
        .join("manifests")
        .join(srv.addr.to_string())
        .join("library/m/t");
    assert_eq!(std::fs::read_to_string(stored).unwrap(), manifest);

    // the same document again: everything is present, no request is made
    let before = srv.requests().len();
    let out = run(&["--no-fsync"], &line, dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), line);
    assert_eq!(srv.requests().len(), before);
}

#[test]
fn errors_are_one_line_naming_model_and_registry() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let out = run(
        &[&format!("http://127.0.0.1:{port}/library/gone:1")],
        "",
        dir.path(),
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("gone:1") && err.contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    let srv = serve(|_, mut c| c.respond(412, &[], b""));
    let out = run(&[&format!("{}/library/new:1", srv.url())], "", dir.path());
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains("newer client") && err.contains("new:1"),
        "{err}"
    );

    let out = run(&[], "{\"type\":\"model\",\"data\":{}}\n", dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("line 1"),
        "{}",
        text(&out.stderr)
    );
}
