//! Golden CLI tests of `resolve`.

use pipeline_tests::{bin, golden, ollama_layout, out3, tiny_llama, TestStore};
use serde::Deserialize;

golden!(missing_model_is_a_negative_answer, "resolve", ["--offline", "nope:1"], "" => 1, "");
golden!(missing_model_from_stdin, "resolve", ["--offline"], "nope\n" => 1, "");
golden!(no_names_is_usage, "resolve", [], "" => 2, "");
golden!(bad_name_stops_before_any_output, "resolve", ["tiny", "../x"], "" => 2, "");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    data: Doc,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Doc {
    name: String,
    parts: serde_json::Value,
    manifest_path: String,
    manifest_digest: String,
    manifest: serde_json::Value,
    config: Blob,
    layers: Vec<Blob>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Blob {
    media_type: String,
    digest: String,
    size: u64,
    path: String,
    present: bool,
    text: Option<String>,
}

#[test]
fn emits_one_documented_line_per_model() {
    let t = TestStore::new();
    let bytes = ollama_layout(
        t.root(),
        "registry.ollama.ai/library/tiny/latest",
        &tiny_llama(),
        "{{ .Prompt }}",
    );
    ollama_layout(t.root(), "example.com:5000/me/other/v1", &tiny_llama(), "T");
    let o = t.run(
        bin("resolve"),
        &["tiny", "example.com:5000/me/other:v1"],
        b"",
    );
    let (code, stdout, stderr) = out3(&o);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<Envelope> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let d = &lines[0].data;
    assert_eq!(lines[0].kind, "model");
    assert_eq!(d.name, "tiny:latest");
    assert_eq!(
        d.parts,
        serde_json::json!({"host":"registry.ollama.ai","namespace":"library","model":"tiny","tag":"latest"})
    );
    assert_eq!(
        d.manifest_digest,
        protocol::Digest::of_bytes(&bytes).to_string()
    );
    assert_eq!(
        d.manifest,
        serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
    );
    assert_eq!(d.layers.len(), 3);
    assert_eq!(d.layers[1].text.as_deref(), Some("{{ .Prompt }}"));
    assert!(d
        .layers
        .iter()
        .all(|l| l.present && std::path::Path::new(&l.path).exists()));
    assert_eq!(lines[1].data.name, "example.com:5000/me/other:v1");
}

#[test]
fn bad_names_exit_2_and_create_nothing() {
    let long = "a".repeat(81);
    for bad in [
        "../x",
        "a/../../b",
        "m:../../t",
        long.as_str(),
        "a/https://b",
        "http://",
        "a/b/c/d",
        "x y",
    ] {
        let t = TestStore::new();
        let o = t.run(bin("resolve"), &[bad], b"");
        let (code, stdout, stderr) = out3(&o);
        assert_eq!(code, 2, "{bad}: {stderr}");
        assert!(stdout.is_empty());
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains("invalid model name"), "{stderr}");
        assert!(t.files().is_empty(), "{bad}: wrote {:?}", t.files());
    }
}

/// A registry host that cannot resolve (RFC 6761 `.invalid`): exit 2, one
/// line naming the model and the registry, nothing written.
#[test]
fn unresolvable_registry_is_one_line_exit_2() {
    for args in [
        &["nonexistent.invalid/library/m:t"][..],
        &["--insecure", "nonexistent.invalid:5000/library/m:t"][..],
    ] {
        let t = TestStore::new();
        let (code, stdout, stderr) = out3(&t.run(bin("resolve"), args, b""));
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stdout.is_empty());
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains("cannot resolve registry host")
                && stderr.contains("nonexistent.invalid")
                && stderr.contains("library/m:t"),
            "{stderr}"
        );
        assert!(t.files().is_empty(), "wrote {:?}", t.files());
    }
}
