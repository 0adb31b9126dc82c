//! The store library against stores laid out by hand exactly as Ollama
//! writes them, and against what `create` writes.

use std::fs;

use pipeline_tests::{ollama_layout, put_blob, tiny_llama, TestStore};
use protocol::{media, Digest, Name};
use store::{CreateOptions, FindingKind, Modelfile, ResolveOptions, Store, VerifyOptions};

#[test]
fn hand_laid_ollama_store_resolves_and_verifies() {
    let t = TestStore::new();
    let bytes = ollama_layout(
        t.root(),
        "registry.ollama.ai/library/smollm2/135m",
        &tiny_llama(),
        "{{ .Prompt }}",
    );
    let store = Store::open(t.root());
    let doc = store::resolve(
        &store,
        &Name::parse("smollm2:135m").unwrap(),
        &ResolveOptions::default(),
    )
    .unwrap();
    assert_eq!(doc.name, "smollm2:135m");
    assert_eq!(doc.manifest_digest, Digest::of_bytes(&bytes));
    assert_eq!(doc.layers.len(), 3);
    assert!(doc.blobs().all(|b| b.present));
    assert_eq!(
        doc.layer(media::TEMPLATE).unwrap().text.as_deref(),
        Some("{{ .Prompt }}")
    );
    assert_eq!(
        doc.layer(media::PARAMS).unwrap().text.as_deref(),
        Some(r#"{"stop":["<|im_end|>"]}"#)
    );
    assert!(doc.model_layer().unwrap().text.is_none());
    assert_eq!(
        doc.model_layer().unwrap().path.as_deref(),
        Some(
            store
                .blob_path(&doc.model_layer().unwrap().digest)
                .as_path()
        )
    );

    // case-insensitive, as Ollama matches names
    let upper = store::resolve(
        &store,
        &Name::parse("SmolLM2:135M").unwrap(),
        &ResolveOptions::default(),
    )
    .unwrap();
    assert_eq!(upper.manifest_digest, doc.manifest_digest);
    assert_eq!(upper.name, "smollm2:135m");

    let report = store::verify_all(&store, &VerifyOptions::default()).unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    assert_eq!(report.blobs_checked, 4);

    let missing = store::resolve(
        &store,
        &Name::parse("nope").unwrap(),
        &ResolveOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(missing, store::Error::NotFound { .. }));
    assert!(missing.to_string().contains("nope:latest"), "{missing}");
}

#[test]
fn create_writes_ollama_layout_and_shapes() {
    let t = TestStore::new();
    let gguf_path = t.root().join("tiny.gguf");
    let gguf = tiny_llama();
    fs::write(&gguf_path, &gguf).unwrap();
    let store = Store::open(t.root().join("models"));
    let mf = Modelfile::parse(
        "FROM ./tiny.gguf\nTEMPLATE {{ .Prompt }}\nSYSTEM Be brief.\nPARAMETER temperature 0\nPARAMETER stop <end>\nLICENSE MIT\nMESSAGE user hi\n",
    )
    .unwrap();
    let name = Name::parse("tiny:1").unwrap();
    let doc = store::create(
        &store,
        &name,
        &mf,
        &CreateOptions {
            base_dir: Some(t.root().to_path_buf()),
            ..Default::default()
        },
    )
    .unwrap();

    let d = |b: &[u8]| Digest::of_bytes(b);
    let (m, tp, sy, li, pa, me) = (
        d(&gguf),
        d(b"{{ .Prompt }}"),
        d(b"Be brief."),
        d(b"MIT"),
        d(br#"{"stop":["<end>"],"temperature":0}"#),
        d(br#"[{"role":"user","content":"hi"}]"#),
    );
    let config = format!(
        r#"{{"model_format":"gguf","model_family":"llama","model_families":["llama"],"model_type":"{}","file_type":"F32","architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{m}","{tp}","{sy}","{li}","{pa}","{me}"]}}}}"#,
        gguf::format_parameter_count(32)
    );
    let c = d(config.as_bytes());
    let expected = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{c}","size":{}}},"layers":[{{"mediaType":"application/vnd.ollama.image.model","digest":"{m}","size":{}}},{{"mediaType":"application/vnd.ollama.image.template","digest":"{tp}","size":13}},{{"mediaType":"application/vnd.ollama.image.system","digest":"{sy}","size":9}},{{"mediaType":"application/vnd.ollama.image.license","digest":"{li}","size":3}},{{"mediaType":"application/vnd.ollama.image.params","digest":"{pa}","size":34}},{{"mediaType":"application/vnd.ollama.image.messages","digest":"{me}","size":32}}]}}"#,
        config.len(),
        gguf.len()
    );
    let written = fs::read_to_string(
        t.root()
            .join("models/manifests/registry.ollama.ai/library/tiny/1"),
    )
    .unwrap();
    pipeline_tests::assert_text_eq(&expected, &written);
    assert_eq!(fs::read_to_string(store.blob_path(&c)).unwrap(), config);
    assert_eq!(doc.manifest_digest, d(written.as_bytes()));
    // every blob is where Ollama would look for it, and nothing else is there
    let mut blobs: Vec<String> = fs::read_dir(store.blobs_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    blobs.sort();
    let mut want: Vec<String> = [&m, &tp, &sy, &li, &pa, &me, &c]
        .iter()
        .map(|d| d.blob_file_name())
        .collect();
    want.sort();
    assert_eq!(blobs, want);

    // a second model from the same GGUF shares the blob; creating again is idempotent
    store::create(
        &store,
        &Name::parse("tiny:2").unwrap(),
        &Modelfile::from_source(gguf_path.to_str().unwrap()),
        &CreateOptions::default(),
    )
    .unwrap();
    assert_eq!(fs::read_dir(store.blobs_dir()).unwrap().count(), 8);
    // FROM an existing model inherits its layers and replaces the system prompt
    let child = store::create(
        &store,
        &Name::parse("tiny:child").unwrap(),
        &Modelfile::parse("FROM tiny:1\nSYSTEM Be long.").unwrap(),
        &CreateOptions::default(),
    )
    .unwrap();
    assert_eq!(
        child.layer(media::SYSTEM).unwrap().text.as_deref(),
        Some("Be long.")
    );
    assert_eq!(child.layer(media::TEMPLATE).unwrap().digest, tp);
    assert_eq!(
        child
            .layers
            .iter()
            .filter(|l| l.media_type == media::SYSTEM)
            .count(),
        1
    );
}

#[test]
fn create_refuses_a_bad_gguf_and_writes_nothing() {
    let t = TestStore::new();
    let bad = t.root().join("bad.gguf");
    let mut bytes = tiny_llama();
    bytes.truncate(40);
    fs::write(&bad, &bytes).unwrap();
    let store = Store::open(t.root().join("models"));
    let err = store::create(
        &store,
        &Name::parse("bad").unwrap(),
        &Modelfile::from_source(bad.to_str().unwrap()),
        &CreateOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("bad.gguf"), "{err}");
    assert!(!t.root().join("models").exists());
}

fn two_models() -> (TestStore, Store) {
    let t = TestStore::new();
    ollama_layout(
        t.root(),
        "registry.ollama.ai/library/a/latest",
        &tiny_llama(),
        "A",
    );
    ollama_layout(
        t.root(),
        "registry.ollama.ai/library/b/latest",
        &tiny_llama(),
        "B",
    );
    let store = Store::open(t.root());
    (t, store)
}

#[test]
fn verify_names_a_flipped_byte() {
    let (_t, store) = two_models();
    let doc = store::resolve(
        &store,
        &Name::parse("a").unwrap(),
        &ResolveOptions::default(),
    )
    .unwrap();
    let model = doc.model_layer().unwrap();
    let path = model.path.clone().unwrap();
    let mut bytes = fs::read(&path).unwrap();
    bytes[100] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let checks: Vec<_> = doc
        .blobs()
        .map(|b| store::BlobCheck {
            digest: b.digest.clone(),
            path: b.path.clone().unwrap(),
            size: Some(b.size),
        })
        .collect();
    let results = store::verify(&checks, &VerifyOptions { threads: 2 });
    let bad: Vec<_> = results.iter().flatten().collect();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].kind, FindingKind::Corrupt);
    assert_eq!(bad[0].digest.as_ref(), Some(&model.digest));
    assert!(
        bad[0].detail.contains("hashes to sha256:"),
        "{}",
        bad[0].detail
    );
}

#[test]
fn verify_all_finds_orphan_missing_leftover_and_symlink() {
    let (t, store) = two_models();
    let orphan = put_blob(t.root(), b"nobody wants me");
    let doc = store::resolve(
        &store,
        &Name::parse("b").unwrap(),
        &ResolveOptions::default(),
    )
    .unwrap();
    let template = doc.layer(media::TEMPLATE).unwrap().clone();
    fs::remove_file(template.path.as_ref().unwrap()).unwrap();
    fs::write(
        t.root()
            .join("blobs")
            .join(format!("{}-partial", orphan.blob_file_name())),
        b"half",
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "/etc/passwd",
        t.root()
            .join("blobs")
            .join(Digest::of_bytes(b"x").blob_file_name()),
    )
    .unwrap();

    let report = store::verify_all(&store, &VerifyOptions::default()).unwrap();
    let kinds: Vec<_> = report
        .findings
        .iter()
        .map(|f| (f.kind, f.digest.clone()))
        .collect();
    assert!(
        kinds.contains(&(FindingKind::Orphan, Some(orphan.clone()))),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(FindingKind::Missing, Some(template.digest.clone()))),
        "{kinds:?}"
    );
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.kind == FindingKind::Leftover
                && f.path.to_string_lossy().ends_with("-partial"))
    );
    assert!(report
        .findings
        .iter()
        .any(|f| f.kind == FindingKind::Unsafe));
    let missing = report
        .findings
        .iter()
        .find(|f| f.kind == FindingKind::Missing)
        .unwrap();
    assert_eq!(missing.models, vec!["b:latest".to_string()]);
    assert_eq!(report.findings.len(), 4, "{:#?}", report.findings);
}

#[test]
fn remove_prunes_only_unshared_blobs_and_copy_shares() {
    let (t, store) = two_models();
    let a = store::resolve(
        &store,
        &Name::parse("a").unwrap(),
        &ResolveOptions::default(),
    )
    .unwrap();
    let copied = store::copy(
        &store,
        &Name::parse("a").unwrap(),
        &Name::parse("me/a-copy:v1").unwrap(),
    )
    .unwrap();
    assert_eq!(copied, a.manifest_digest);
    assert_eq!(store::list(&store).unwrap().len(), 3);

    // a and its copy share everything: removing a prunes nothing
    let r = store::remove(&store, &Name::parse("a").unwrap()).unwrap();
    assert!(r.pruned.is_empty(), "{:?}", r.pruned);
    // removing the copy prunes a's template and config, never the model blob b still uses
    let r = store::remove(&store, &Name::parse("me/a-copy:v1").unwrap()).unwrap();
    assert_eq!(r.pruned.len(), 2, "{:?}", r.pruned);
    assert!(store.has_blob(&a.model_layer().unwrap().digest).unwrap());
    assert!(
        !t.root().join("manifests/registry.ollama.ai/me").exists(),
        "empty folders removed"
    );
    let report = store::verify_all(&store, &VerifyOptions::default()).unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    assert!(matches!(
        store::remove(&store, &Name::parse("a").unwrap()),
        Err(store::Error::NotFound { .. })
    ));
}

#[test]
fn symlinked_manifest_and_blob_are_refused() {
    let (t, store) = two_models();
    let outside = t.root().join("outside");
    fs::write(&outside, b"{}").unwrap();
    let dir = t.root().join("manifests/registry.ollama.ai/library/evil");
    fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("latest")).unwrap();
    let err = store::resolve(
        &store,
        &Name::parse("evil").unwrap(),
        &ResolveOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("symlink"), "{err}");

    let a = store::resolve(
        &store,
        &Name::parse("a").unwrap(),
        &ResolveOptions::default(),
    )
    .unwrap();
    let tpl = a.layer(media::TEMPLATE).unwrap().path.clone().unwrap();
    fs::remove_file(&tpl).unwrap();
    std::os::unix::fs::symlink(&outside, &tpl).unwrap();
    let err = store::resolve(
        &store,
        &Name::parse("a").unwrap(),
        &ResolveOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("symlink"), "{err}");
}
