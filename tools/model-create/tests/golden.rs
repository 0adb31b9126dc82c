//! Golden CLI tests of `model-create`.

use pipeline_tests::{bin, golden, out3, tiny_llama, TestStore};

golden!(needs_a_source, "model-create", ["x"], "" => 2, "");
golden!(missing_gguf, "model-create", ["x", "--gguf", "/nonexistent.gguf"], "" => 2, "");

#[test]
fn bad_names_exit_2_and_write_nothing() {
    let t = TestStore::new();
    let gguf = t.root().join("m.gguf");
    std::fs::write(&gguf, tiny_llama()).unwrap();
    let long = format!("m:{}", "t".repeat(81));
    for bad in [
        "../x",
        "a/../../b",
        "m:../../t",
        long.as_str(),
        "http://h/n/m",
    ] {
        let o = t.run(
            bin("model-create"),
            &[bad, "--gguf", gguf.to_str().unwrap()],
            b"",
        );
        let (code, _, stderr) = out3(&o);
        assert_eq!(code, 2, "{bad}");
        assert!(stderr.contains("invalid model name"), "{stderr}");
        assert_eq!(t.files(), vec!["m.gguf".to_string()], "{bad} wrote files");
    }
}

#[test]
fn creates_from_a_modelfile_and_prints_the_document() {
    let t = TestStore::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.gguf"), tiny_llama()).unwrap();
    std::fs::write(
        dir.path().join("Modelfile"),
        "FROM ./m.gguf\nSYSTEM \"\"\"Be\nbrief.\"\"\"\nPARAMETER num_ctx 64\n",
    )
    .unwrap();
    let mf = dir.path().join("Modelfile");
    let o = t.run(
        bin("model-create"),
        &["me/tiny:v1", "-f", mf.to_str().unwrap()],
        b"",
    );
    let (code, stdout, stderr) = out3(&o);
    assert_eq!(code, 0, "{stderr}");
    let doc = match protocol::Line::parse(stdout.trim()).unwrap() {
        protocol::Line::Model(d) => d,
        other => panic!("{other:?}"),
    };
    assert_eq!(doc.name, "me/tiny:v1");
    assert_eq!(
        doc.layer(protocol::media::SYSTEM).unwrap().text.as_deref(),
        Some("Be\nbrief.")
    );
    assert_eq!(
        doc.layer(protocol::media::PARAMS).unwrap().text.as_deref(),
        Some(r#"{"num_ctx":64}"#)
    );
    let o = t.run(bin("verify"), &["--all"], b"");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    std::fs::write(&mf, "FROM ./m.gguf\nPARAMETER bogus 1\n").unwrap();
    let o = t.run(
        bin("model-create"),
        &["me/tiny:v2", "-f", mf.to_str().unwrap()],
        b"",
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown parameter \"bogus\""));
}
