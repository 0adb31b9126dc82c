//! model-export as a process: archive to a file and to stdout, one-line errors.

use pipeline_tests::{ollama_layout, out3, tiny_llama, TestStore};

const EXE: &str = env!("CARGO_BIN_EXE_model-export");

fn setup() -> (TestStore, Vec<u8>) {
    let t = TestStore::new();
    let m = ollama_layout(
        t.root(),
        "registry.ollama.ai/library/tiny/latest",
        &tiny_llama(),
        "{{ .Prompt }}",
    );
    (t, m)
}

fn entries(tar_bytes: &[u8]) -> Vec<String> {
    tar::Archive::new(tar_bytes)
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn to_a_file_and_to_stdout_alike() {
    let (t, manifest) = setup();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("tiny.tar");
    let (code, stdout, stderr) = out3(&t.run(EXE, &["tiny", "-o", file.to_str().unwrap()], b""));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.is_empty());
    assert!(stderr.contains("1 models, 5 blobs"), "{stderr}");
    let bytes = std::fs::read(&file).unwrap();
    let names = entries(&bytes);
    assert_eq!(&names[..2], ["oci-layout", "index.json"]);
    let md = protocol::Digest::of_bytes(&manifest);
    assert!(
        names.contains(&format!("blobs/sha256/{}", md.hex())),
        "{names:?}"
    );
    assert_eq!(names.len(), 2 + 5);

    let o = t.run(
        EXE,
        &["-o", "-", "registry.ollama.ai/library/tiny:latest"],
        b"",
    );
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(o.stdout, bytes, "the same archive, reproducibly");

    // names from pipeline documents
    let doc = t.run(pipeline_tests::bin("resolve"), &["tiny"], b"").stdout;
    let o = t.run(EXE, &["-o", "-"], &doc);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.stdout, bytes);
}

#[test]
fn errors_are_one_line_and_leave_no_file() {
    let (t, _) = setup();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("x.tar");
    let f = file.to_str().unwrap();
    for (args, want) in [
        (vec!["tiny", "nope", "-o", f], "nope:latest not found"),
        (vec!["../x", "-o", f], "invalid model name"),
    ] {
        let (code, stdout, stderr) = out3(&t.run(EXE, &args, b""));
        assert_eq!(code, 2, "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(want), "{stderr}");
        assert!(stdout.is_empty());
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
    }
    // a corrupt blob is named, and no archive is left
    let weights = protocol::Digest::of_bytes(&tiny_llama());
    std::fs::write(
        t.root().join("blobs").join(weights.blob_file_name()),
        vec![0u8; tiny_llama().len()],
    )
    .unwrap();
    let (code, _, stderr) = out3(&t.run(EXE, &["tiny", "-o", f], b""));
    assert_eq!(code, 2);
    assert!(
        stderr.contains(&format!("blob {weights} of tiny:latest is corrupt")),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}
