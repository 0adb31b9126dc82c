//! Golden CLI tests of `verify`.

use pipeline_tests::{bin, golden, ollama_layout, out3, put_blob, tiny_llama, TestStore};

golden!(empty_stream_is_ok, "verify", [], "" => 0, "");
golden!(bad_digest_argument, "verify", ["sha256:../../etc"], "" => 2, "");
golden!(unknown_file_name, "verify", ["/etc/hostname"], "" => 2, "");
golden!(clean_store_audit, "verify", ["--all"], "" => 0, "");
golden!(other_line_types_pass_through, "verify", [], "{\"type\":\"token\",\"data\":{\"t\":1}}\n" => 0, "{\"type\":\"token\",\"data\":{\"t\":1}}\n");

fn setup() -> (TestStore, String) {
    let t = TestStore::new();
    ollama_layout(
        t.root(),
        "registry.ollama.ai/library/tiny/latest",
        &tiny_llama(),
        "{{ .Prompt }}",
    );
    let o = t.run(bin("resolve"), &["tiny"], b"");
    assert_eq!(o.status.code(), Some(0));
    (t, String::from_utf8(o.stdout).unwrap())
}

#[test]
fn passes_good_documents_on_unchanged() {
    let (t, doc) = setup();
    let o = t.run(bin("verify"), &[], doc.as_bytes());
    let (code, stdout, stderr) = out3(&o);
    assert_eq!(code, 0, "{stderr}");
    pipeline_tests::assert_text_eq(&doc, &stdout);
}

#[test]
fn a_flipped_byte_is_named_and_exits_1() {
    let (t, doc) = setup();
    let model = protocol::Digest::of_bytes(&tiny_llama());
    let path = t.root().join("blobs").join(model.blob_file_name());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[200] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let o = t.run(bin("verify"), &[], doc.as_bytes());
    let (code, stdout, stderr) = out3(&o);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stdout.is_empty(),
        "a corrupt model is not passed on: {stdout}"
    );
    assert!(
        stderr.contains(&format!("corrupt: blob {model} (model tiny:latest)")),
        "{stderr}"
    );
    // by path and by digest too
    let o = t.run(bin("verify"), &[path.to_str().unwrap()], b"");
    assert_eq!(o.status.code(), Some(1));
    let o = t.run(bin("verify"), &[&model.to_string()], b"");
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&model.to_string()));
}

#[test]
fn all_finds_orphan_missing_and_partial() {
    let (t, _) = setup();
    let orphan = put_blob(t.root(), b"orphan");
    std::fs::write(
        t.root()
            .join("blobs")
            .join(format!("{}-partial-0", orphan.blob_file_name())),
        b"x",
    )
    .unwrap();
    let tpl = protocol::Digest::of_bytes(b"{{ .Prompt }}");
    std::fs::remove_file(t.root().join("blobs").join(tpl.blob_file_name())).unwrap();
    let o = t.run(bin("verify"), &["--all"], b"");
    let (code, stdout, stderr) = out3(&o);
    assert_eq!(code, 1, "{stderr}");
    let kinds: Vec<String> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["data"]["kind"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(kinds, ["missing", "orphan", "leftover"], "{stdout}");
    assert!(
        stderr.contains(&format!("missing: blob {tpl} (model tiny:latest)")),
        "{stderr}"
    );
}

#[test]
fn quarantine_moves_the_corrupt_blob_and_hands_the_model_on() {
    let (t, doc) = setup();
    let model = protocol::Digest::of_bytes(&tiny_llama());
    let path = t.root().join("blobs").join(model.blob_file_name());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[200] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let o = t.run(bin("verify"), &["--quarantine"], doc.as_bytes());
    let (code, stdout, stderr) = out3(&o);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(&format!("quarantined blob {model}")),
        "{stderr}"
    );
    let got = match protocol::Line::parse(stdout.trim()).unwrap() {
        protocol::Line::Model(d) => d,
        other => panic!("{other:?}"),
    };
    for b in got.blobs() {
        assert_eq!(b.present, b.digest != model, "{}", b.digest);
    }
    assert!(!path.exists());
    let moved: Vec<_> = std::fs::read_dir(t.root().join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(moved.len(), 1);
    assert_eq!(std::fs::read(&moved[0]).unwrap(), bytes);
    // the store says the blob is missing until fetched again: resolve marks
    // it not present, the audit names it
    let o = t.run(bin("resolve"), &["tiny"], b"");
    let again = String::from_utf8(o.stdout).unwrap();
    assert_eq!(again.matches("\"present\":false").count(), 1, "{again}");
    let o = t.run(bin("verify"), &["--all"], b"");
    let (code, stdout, _) = out3(&o);
    assert_eq!(code, 1);
    assert!(stdout.contains("\"kind\":\"missing\""), "{stdout}");
    // the same document again: now missing, still handed on; without --quarantine, dropped
    let o = t.run(bin("verify"), &["--quarantine"], doc.as_bytes());
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"present\":false"));
    let o = t.run(bin("verify"), &[], doc.as_bytes());
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
}

#[test]
fn quarantine_of_an_item_and_in_the_audit() {
    let (t, _) = setup();
    let model = protocol::Digest::of_bytes(&tiny_llama());
    let path = t.root().join("blobs").join(model.blob_file_name());
    std::fs::write(&path, b"garbage").unwrap();
    let o = t.run(bin("verify"), &["--quarantine", &model.to_string()], b"");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!path.exists());
    std::fs::write(&path, b"garbage").unwrap();
    let o = t.run(bin("verify"), &["--all", "--quarantine"], b"");
    // the audit still answers "corrupt" (exit 1) but has moved the blob aside
    assert_eq!(o.status.code(), Some(1));
    assert!(!path.exists());
    assert_eq!(
        std::fs::read_dir(t.root().join("quarantine"))
            .unwrap()
            .count(),
        2
    );
}
