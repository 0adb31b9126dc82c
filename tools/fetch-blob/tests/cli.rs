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

/// DNS and TLS failures: exit 2 and one line naming the model and the registry.
#[test]
fn dns_and_tls_failures_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "nonexistent.invalid/library/m:t",
        "http://nonexistent.invalid:5000/library/m:t",
    ] {
        let out = run(&[name], "", dir.path());
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("cannot resolve registry host")
                && err.contains("nonexistent.invalid")
                && err.contains("library/m:t"),
            "{err}"
        );
    }
    let tls = self_signed_tls_server();
    let out = run(&[&format!("{}/library/m:t", tls.url())], "", dir.path());
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("TLS failure")
            && err.contains(&tls.url())
            && err.contains("library/m:t")
            && err.to_lowercase().contains("certificate"),
        "{err}"
    );
    // https to a plain-http server: a TLS failure too, not a hang or a parse error
    let srv = serve(|_, mut c| c.respond(200, &[], b"plain http"));
    let url = srv.url().replace("http://", "https://");
    let out = run(&[&format!("{url}/library/m:t")], "", dir.path());
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("TLS failure") && err.contains(&url), "{err}");
    assert!(common::files_under(dir.path()).is_empty());
}

/// `credsStore` in the docker config: the helper found on PATH supplies the
/// credentials for a registry that requires Basic auth.
#[test]
fn credentials_from_a_docker_credential_helper_on_path() {
    use std::os::unix::fs::PermissionsExt;
    let config = b"{}".to_vec();
    let weights = bytes(5_000, 9);
    let manifest = manifest_for(&config, &[(media::MODEL, &weights)]);
    let blobs: Vec<(String, Vec<u8>)> = [config, weights]
        .into_iter()
        .map(|b| (Digest::of_bytes(&b).to_string(), b))
        .collect();
    // "Basic " + base64("bob:hunter2")
    let want = "Basic Ym9iOmh1bnRlcjI=";
    let srv = serve(move |req, mut c| {
        if req.header("authorization") != Some(want) {
            return c.respond(
                401,
                &[("WWW-Authenticate", r#"Basic realm="test""#.into())],
                b"",
            );
        }
        if req.path.contains("/manifests/") {
            return c.respond(
                200,
                &[("Content-Type", media::DOCKER_MANIFEST.into())],
                manifest.as_bytes(),
            );
        }
        match blobs.iter().find(|(d, _)| req.path.ends_with(d.as_str())) {
            Some((_, b)) => c.blob(req, b),
            None => c.respond(404, &[], b""),
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let host = srv.addr.to_string();
    let helper = bin.join("docker-credential-fake");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread -r url\nif [ \"$1\" = get ] && [ \"$url\" = \"{host}\" ]; then\n  echo '{{\"ServerURL\":\"{host}\",\"Username\":\"bob\",\"Secret\":\"hunter2\"}}'\nelse\n  echo 'credentials not found in native keychain'; exit 1\nfi\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let docker = dir.path().join("docker");
    std::fs::create_dir(&docker).unwrap();
    std::fs::write(docker.join("config.json"), r#"{"credsStore":"fake"}"#).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let pull = |config_dir: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_fetch-blob"))
            .args(["--no-fsync", &format!("{}/library/m:t", srv.url())])
            .env("OLLAMA_MODELS", dir.path().join("store"))
            .env("DOCKER_CONFIG", config_dir)
            .env("PATH", &path)
            .env_remove("LLPIPE_REGISTRY_USERNAME")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // without the helper: 401
    let out = pull(std::path::Path::new("/nonexistent"));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("401"), "{}", text(&out.stderr));
    let out = pull(&docker);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc = Line::parse(text(&out.stdout).trim())
        .unwrap()
        .model()
        .unwrap()
        .unwrap();
    assert!(doc.blobs().all(|b| b.present));
}
