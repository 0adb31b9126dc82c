//! Pipelines of the built binaries on the real models, in a temp store.

use std::io::Read;
use std::process::{Command, Stdio};

use pipeline_tests::{bin, out3, real_model, TestStore};

fn create(t: &TestStore, name: &str, file: &str) -> protocol::ModelDoc {
    let path = real_model(file);
    let (code, stdout, stderr) = out3(&t.run(
        bin("model-create"),
        &[name, "--gguf", path.to_str().unwrap()],
        b"",
    ));
    assert_eq!(code, 0, "{stderr}");
    match protocol::Line::parse(stdout.trim()).unwrap() {
        protocol::Line::Model(d) => d,
        other => panic!("{other:?}"),
    }
}

fn config(t: &TestStore, doc: &protocol::ModelDoc) -> serde_json::Value {
    let c = doc.config.as_ref().unwrap();
    let bytes = std::fs::read(t.root().join("blobs").join(c.digest.blob_file_name())).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn real_models_create_resolve_verify() {
    let t = TestStore::new();
    let smol = create(&t, "smollm2:135m", "SmolLM2-135M-Instruct.Q4_1.gguf");
    let gemma = create(&t, "gemma3:270m", "gemma-3-270m-q4_k_m.gguf");
    assert_eq!(
        smol.model_layer().unwrap().digest.to_string(),
        "sha256:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    );
    let c = config(&t, &smol);
    assert_eq!(
        (
            c["model_family"].as_str(),
            c["model_type"].as_str(),
            c["file_type"].as_str()
        ),
        (Some("llama"), Some("135M"), Some("Q4_1"))
    );
    let c = config(&t, &gemma);
    assert_eq!(
        (
            c["model_family"].as_str(),
            c["model_type"].as_str(),
            c["file_type"].as_str()
        ),
        (Some("gemma3"), Some("268M"), Some("Q4_K_M"))
    );

    let (code, docs, stderr) = out3(&t.run(bin("resolve"), &["smollm2:135m", "gemma3:270m"], b""));
    assert_eq!(code, 0, "{stderr}");
    let (code, verified, stderr) = out3(&t.run(bin("verify"), &[], docs.as_bytes()));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(verified, docs);
    let (code, _, stderr) = out3(&t.run(bin("verify"), &["--all"], b""));
    assert_eq!(code, 0, "{stderr}");
}

/// `resolve … | head -c 1`: a closed stdout ends the tool quietly with 0.
#[test]
fn closed_stdout_ends_quietly() {
    let t = TestStore::new();
    pipeline_tests::ollama_layout(
        t.root(),
        "registry.ollama.ai/library/tiny/latest",
        &pipeline_tests::tiny_llama(),
        "T",
    );
    let names: Vec<&str> = std::iter::repeat_n("tiny", 2000).collect();
    let mut child = Command::new(bin("resolve"))
        .args(&names)
        .env("OLLAMA_MODELS", t.root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut one = [0u8; 1];
    child.stdout.take().unwrap().read_exact(&mut one).unwrap(); // then dropped: the pipe closes
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The design's pipeline against a real registry on 127.0.0.1: create →
/// push → remove locally → `resolve | fetch-blob | verify` → same manifest.
#[test]
fn push_remove_resolve_fetch_verify_round_trip() {
    let reg = pipeline_tests::docker_registry(None);
    let t = TestStore::new();
    let name = format!("{}/library/smollm2:135m", reg.host());
    let created = create(&t, &name, "SmolLM2-135M-Instruct.Q4_1.gguf");
    let (code, _, stderr) = out3(&t.run(bin("model-push"), &["--insecure", &name], b""));
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = out3(&t.run(bin("model-remove"), &[&name], b""));
    assert_eq!(code, 0, "{stderr}");
    assert!(t.files().is_empty(), "{:?}", t.files());

    let (code, doc, stderr) = out3(&t.run(bin("resolve"), &["--insecure", &name], b""));
    assert_eq!(code, 0, "{stderr}");
    assert!(doc.contains("\"present\":false"), "{doc}");
    let (code, fetched, stderr) = out3(&t.run(bin("fetch-blob"), &["--insecure"], doc.as_bytes()));
    assert_eq!(code, 0, "{stderr}");
    let (code, verified, stderr) = out3(&t.run(bin("verify"), &[], fetched.as_bytes()));
    assert_eq!(code, 0, "{stderr}");
    let doc = match protocol::Line::parse(verified.trim()).unwrap() {
        protocol::Line::Model(d) => d,
        other => panic!("{other:?}"),
    };
    assert_eq!(doc.manifest_digest, created.manifest_digest);
    assert!(doc.blobs().all(|b| b.present));
    let (code, _, stderr) = out3(&t.run(bin("verify"), &["--all"], b""));
    assert_eq!(code, 0, "{stderr}");
}

/// Repair (issue 14 item 4): a model pushed to a real registry on
/// 127.0.0.1, one blob corrupted locally; `resolve | verify --quarantine |
/// fetch-blob` moves it aside and fetches only that blob again.
#[test]
fn quarantine_then_fetch_repairs_only_the_corrupt_blob() {
    if !std::path::Path::new("/usr/bin/docker-registry").exists() {
        println!("SKIPPED: /usr/bin/docker-registry is not installed");
        return;
    }
    let reg = pipeline_tests::docker_registry(None);
    let t = TestStore::new();
    let name = format!("{}/library/tiny:latest", reg.host());
    let weights = pipeline_tests::tiny_llama();
    pipeline_tests::ollama_layout(
        t.root(),
        &format!("{}/library/tiny/latest", reg.host()),
        &weights,
        "{{ .Prompt }}",
    );
    let (code, _, stderr) = out3(&t.run(bin("model-push"), &["--insecure", &name], b""));
    assert_eq!(code, 0, "{stderr}");

    let digest = protocol::Digest::of_bytes(&weights);
    let path = t.root().join("blobs").join(digest.blob_file_name());
    let mut bad = weights.clone();
    bad[100] ^= 1; // same size: fetch-blob alone would take it as present
    std::fs::write(&path, &bad).unwrap();
    let before = t.files();

    let (code, doc, stderr) = out3(&t.run(bin("resolve"), &[&name], b""));
    assert_eq!(code, 0, "{stderr}");
    let (code, handed, stderr) = out3(&t.run(bin("verify"), &["--quarantine"], doc.as_bytes()));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(handed.matches("\"present\":false").count(), 1, "{handed}");
    let (code, fetched, stderr) =
        out3(&t.run(bin("fetch-blob"), &["--insecure", "-v"], handed.as_bytes()));
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("1 blobs fetched"), "{stderr}");
    assert_eq!(std::fs::read(&path).unwrap(), weights);
    let (code, verified, stderr) = out3(&t.run(bin("verify"), &[], fetched.as_bytes()));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(verified, fetched);
    let (code, _, stderr) = out3(&t.run(bin("verify"), &["--all"], b""));
    assert_eq!(code, 0, "{stderr}");
    // same store files, plus the quarantined copy holding the corrupt bytes
    let after = t.files();
    let extra: Vec<_> = after.iter().filter(|f| !before.contains(f)).collect();
    assert_eq!(extra.len(), 1, "{after:?}");
    assert!(extra[0].starts_with("quarantine/"), "{extra:?}");
    assert_eq!(std::fs::read(t.root().join(extra[0])).unwrap(), bad);
}

/// Moving models without a registry (issue 14 item 5): `model-export -o - |
/// model-import -` between two stores gives the same manifest bytes and
/// blobs, and the imported store audits clean.
#[test]
fn export_import_between_two_stores() {
    let a = TestStore::new();
    let manifest = pipeline_tests::ollama_layout(
        a.root(),
        "registry.ollama.ai/library/tiny/latest",
        &pipeline_tests::tiny_llama(),
        "{{ .Prompt }}",
    );
    let (code, _, stderr) = out3(&a.run(bin("model-copy"), &["tiny", "me/tiny:v2"], b""));
    assert_eq!(code, 0, "{stderr}");
    let o = a.run(bin("model-export"), &["tiny", "me/tiny:v2", "-o", "-"], b"");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let b = TestStore::new();
    let (code, docs, stderr) = out3(&b.run(bin("model-import"), &["-"], &o.stdout));
    assert_eq!(code, 0, "{stderr}");
    let (code, verified, stderr) = out3(&b.run(bin("verify"), &[], docs.as_bytes()));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(verified.lines().count(), 2);
    assert_eq!(a.files(), b.files());
    for f in a.files() {
        assert_eq!(
            std::fs::read(a.root().join(&f)).unwrap(),
            std::fs::read(b.root().join(&f)).unwrap(),
            "{f}"
        );
    }
    let m = std::fs::read(b.root().join("manifests/registry.ollama.ai/me/tiny/v2")).unwrap();
    assert_eq!(m, manifest);
    let (code, _, stderr) = out3(&b.run(bin("verify"), &["--all"], b""));
    assert_eq!(code, 0, "{stderr}");
}
