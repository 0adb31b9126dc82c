//! Golden CLI tests of `model-remove`.

use pipeline_tests::{bin, golden, out3, TestStore};

golden!(missing_is_negative, "model-remove", ["nope"], "" => 1, "");
golden!(bad_name, "model-remove", ["../../x"], "" => 2, "");

#[test]
fn removes_and_prunes() {
    let t = TestStore::new();
    pipeline_tests::ollama_layout(
        t.root(),
        "registry.ollama.ai/library/tiny/latest",
        &pipeline_tests::tiny_llama(),
        "{{ .Prompt }}",
    );
    let (code, _, stderr) = out3(&t.run(bin("model-remove"), &["TINY"], b""));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("deleted 'tiny:latest' (4 blobs pruned)"),
        "{stderr}"
    );
    assert_eq!(t.files(), Vec::<String>::new());
}
