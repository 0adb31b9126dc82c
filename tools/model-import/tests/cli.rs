//! model-import as a process: from a file and from stdin, refusals with exit 2
//! and nothing written.

use pipeline_tests::{ollama_layout, out3, tiny_llama, TestStore};
use protocol::Name;

const EXE: &str = env!("CARGO_BIN_EXE_model-import");

/// An archive of `tiny:latest` and `me/tiny:v2` (same blobs), and the manifest bytes.
fn archive() -> (Vec<u8>, Vec<u8>) {
    let t = TestStore::new();
    let m = ollama_layout(
        t.root(),
        "registry.ollama.ai/library/tiny/latest",
        &tiny_llama(),
        "{{ .Prompt }}",
    );
    let store = store::Store::open(t.root());
    store
        .write_manifest(&Name::parse("me/tiny:v2").unwrap(), &m)
        .unwrap();
    let mut out = Vec::new();
    let names = [
        Name::parse("tiny").unwrap(),
        Name::parse("me/tiny:v2").unwrap(),
    ];
    store::export(&store, &names, &mut out).unwrap();
    (out, m)
}

#[test]
fn imports_from_a_file_and_from_stdin() {
    let (tar_bytes, manifest) = archive();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.tar");
    std::fs::write(&file, &tar_bytes).unwrap();
    for (args, stdin) in [
        (vec![file.to_str().unwrap()], &[][..]),
        (vec!["-"], &tar_bytes[..]),
    ] {
        let t = TestStore::new();
        let (code, stdout, stderr) = out3(&t.run(EXE, &args, stdin));
        assert_eq!(code, 0, "{stderr}");
        assert!(stderr.contains("2 models, 4 blobs written"), "{stderr}");
        let docs: Vec<_> = stdout
            .lines()
            .map(|l| protocol::Line::parse(l).unwrap().model().unwrap().unwrap())
            .collect();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].name, "tiny:latest");
        assert_eq!(docs[1].name, "me/tiny:v2");
        assert!(docs.iter().all(|d| d.blobs().all(|b| b.present)));
        for rel in [
            "registry.ollama.ai/library/tiny/latest",
            "registry.ollama.ai/me/tiny/v2",
        ] {
            let got = std::fs::read(t.root().join("manifests").join(rel)).unwrap();
            assert_eq!(got, manifest, "{rel}: manifest bytes identical");
        }
        // manifests + 4 blobs, no temp files
        assert_eq!(t.files().len(), 2 + 4, "{:?}", t.files());
    }
}

#[test]
fn tampered_truncated_or_missing_archives_are_refused_with_nothing_written() {
    let (tar_bytes, _) = archive();
    let weights = protocol::Digest::of_bytes(&tiny_llama());
    // flip one byte inside the weights entry's data
    let pos = tar_bytes
        .windows(8)
        .position(|w| w == b"GGUF\x03\0\0\0")
        .unwrap();
    let mut tampered = tar_bytes.clone();
    tampered[pos + 300] ^= 1;
    let cut = &tar_bytes[..pos + 100];
    for (input, want) in [
        (
            &tampered[..],
            format!("entry blobs/sha256/{}: content hashes to", weights.hex()),
        ),
        (cut, "truncated archive".to_string()),
        (&b"not a tar at all"[..], "refusing archive".to_string()),
    ] {
        let t = TestStore::new();
        let (code, stdout, stderr) = out3(&t.run(EXE, &["-"], input));
        assert_eq!(code, 2, "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(&want), "want {want}: {stderr}");
        assert!(
            stderr.starts_with("model-import: error: importing -: "),
            "{stderr}"
        );
        assert!(stdout.is_empty());
        assert!(t.files().is_empty(), "{:?}", t.files());
    }
    let t = TestStore::new();
    let (code, _, stderr) = out3(&t.run(EXE, &["/nonexistent.tar"], b""));
    assert_eq!(code, 2);
    assert!(stderr.contains("opening /nonexistent.tar"), "{stderr}");
}
