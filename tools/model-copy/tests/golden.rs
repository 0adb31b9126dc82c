//! Golden CLI tests of `model-copy`.

use pipeline_tests::{bin, golden, out3, TestStore};

golden!(missing_source, "model-copy", ["nope", "x"], "" => 2, "");
golden!(bad_destination, "model-copy", ["tiny", "a/../../b"], "" => 2, "");

#[test]
fn copy_is_the_same_manifest() {
    let t = TestStore::new();
    let bytes = pipeline_tests::ollama_layout(
        t.root(),
        "registry.ollama.ai/library/tiny/latest",
        &pipeline_tests::tiny_llama(),
        "{{ .Prompt }}",
    );
    let (code, _, stderr) = out3(&t.run(bin("model-copy"), &["tiny", "me/tiny:copy"], b""));
    assert_eq!(code, 0, "{stderr}");
    let copied = std::fs::read(t.root().join("manifests/registry.ollama.ai/me/tiny/copy")).unwrap();
    assert_eq!(copied, bytes);
}
