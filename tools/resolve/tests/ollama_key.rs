//! Issue 14 item 2 as a process: `resolve` against an emulated Ollama-style
//! registry whose token service verifies Ollama's signature. The key lives in
//! `$HOME/.ollama` (a temp HOME), not under `$OLLAMA_MODELS`.

#[path = "../../../libs/registry/tests/common/mod.rs"]
mod common;
#[path = "../../../libs/registry/tests/common/ollama.rs"]
mod ollama;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use ollama::ollama_registry;
use protocol::media;

fn manifest() -> String {
    common::manifest_for(b"{}", &[(media::MODEL, b"weights")])
}

fn resolve(home: &Path, models: &Path, registry: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resolve"))
        .arg(format!("http://{registry}/library/m:t"))
        .env("HOME", home)
        .env("OLLAMA_MODELS", models)
        .env("DOCKER_CONFIG", "/nonexistent")
        .env("LLPIPE_OLLAMA_REGISTRIES", registry)
        .env_remove("LLPIPE_TRUSTED_REALMS")
        .env_remove("LLPIPE_REGISTRY_USERNAME")
        .env_remove("LLPIPE_REGISTRY_PASSWORD")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn r14_key_created_in_home_then_used() {
    let authorized = Arc::new(Mutex::new(String::new()));
    let (reg, verdicts) = ollama_registry(manifest(), authorized.clone(), None);
    let host = reg.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let (home, models) = (dir.path().join("home"), dir.path().join("models"));
    std::fs::create_dir(&home).unwrap();
    let key = home.join(".ollama/id_ed25519");

    // first run: no key yet. It is created and announced; the registry does
    // not know it yet, so the token request is refused with a clear error.
    let out = resolve(&home, &models, &host);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let pub_line = std::fs::read_to_string(home.join(".ollama/id_ed25519.pub")).unwrap();
    assert!(
        err.starts_with(&format!(
            "Couldn't find '{}'. Generating new private key.\nYour new public key is: \n\n{}\n",
            key.display(),
            pub_line.trim_end()
        )),
        "{err}"
    );
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("resolve: error: ")
            && last.contains("answered 401")
            && last.contains(&key.display().to_string())
            && last.contains("id_ed25519.pub"),
        "{last}"
    );
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(!models.join("id_ed25519").exists() && !models.join(".ollama").exists());

    // the user adds the .pub to the registry: the same key now gets a token,
    // and nothing is printed on stderr
    *authorized.lock().unwrap() = pub_line.clone();
    let out = resolve(&home, &models, &host);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["type"], "model");
    assert_eq!(
        std::fs::read_to_string(home.join(".ollama/id_ed25519.pub")).unwrap(),
        pub_line
    );
    assert_eq!(verdicts.lock().unwrap().last(), Some(&Ok(())));
}

/// Bad key files: one line naming the file, exit 2, no request signed.
#[test]
fn r14_bad_key_file_is_a_one_line_error() {
    let authorized = Arc::new(Mutex::new(String::new()));
    let (reg, verdicts) = ollama_registry(manifest(), authorized, None);
    let host = reg.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let (home, models) = (dir.path().join("home"), dir.path().join("models"));
    std::fs::create_dir_all(home.join(".ollama")).unwrap();
    let key = home.join(".ollama/id_ed25519");
    for (content, mode, want) in [
        ("not a key\n", 0o600, "not an OpenSSH private key"),
        (
            "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
            0o600,
            "not an OpenSSH private key",
        ),
        ("whatever", 0o644, "too open"),
    ] {
        std::fs::write(&key, content).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = resolve(&home, &models, &host);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(want) && err.contains(&key.display().to_string()),
            "{want}: {err}"
        );
        assert!(!err.contains("panicked"));
        assert_eq!(
            std::fs::read_to_string(&key).unwrap(),
            content,
            "key rewritten"
        );
    }
    assert!(
        verdicts.lock().unwrap().is_empty(),
        "a token request was sent"
    );
}
