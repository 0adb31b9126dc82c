//! Golden CLI tests of `model-list`.

use pipeline_tests::{bin, golden, out3, TestStore};

golden!(extra_argument_is_usage, "model-list", ["extra"], "" => 2, "");

#[test]
fn table_and_json_agree() {
    let t = TestStore::new();
    let bytes = pipeline_tests::ollama_layout(
        t.root(),
        "registry.ollama.ai/library/tiny/latest",
        &pipeline_tests::tiny_llama(),
        "{{ .Prompt }}",
    );
    let d = protocol::Digest::of_bytes(&bytes);
    let (code, table, _) = out3(&t.run(bin("model-list"), &[], b""));
    assert_eq!(code, 0);
    let mut rows = table.lines();
    assert!(rows.next().unwrap().starts_with("NAME"));
    let row = rows.next().unwrap();
    assert!(row.starts_with("tiny:latest"), "{row}");
    assert!(row.contains(d.short()), "{row}");
    let (_, json, _) = out3(&t.run(bin("model-list"), &["--json"], b""));
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["data"]["id"], d.short());
    let manifest: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let size: u64 = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .chain([&manifest["config"]])
        .map(|l| l["size"].as_u64().unwrap())
        .sum();
    assert_eq!(v["data"]["size"], size);
}
