//! Golden CLI tests: spawn the binary, compare stdout, stderr and exit code.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn model(file: &str) -> PathBuf {
    pipeline_tests::real_model(file)
}

const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";

/// Runs gguf-inspect; returns (exit code, stdout, stderr).
fn run(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gguf-inspect"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let s = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (
        out.status.code().unwrap_or(-1),
        s(out.stdout),
        s(out.stderr),
    )
}

/// One line each: `golden!(name, args, stdin, expected stdout)`.
macro_rules! golden {
    ($name:ident, $args:expr, $stdin:expr, $stdout:expr) => {
        #[test]
        fn $name() {
            let args: Vec<String> = $args;
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, got, err) = run(&args, $stdin);
            let want: &str = $stdout;
            assert!(
                code == 0 && got == want,
                "exit {code}, stderr {err}\n---- expected ----\n{want}---- got ----\n{got}----"
            );
        }
    };
}

fn path(file: &str) -> String {
    model(file).display().to_string()
}

golden!(
    table_smollm2,
    vec!["--format".into(), "table".into(), path(SMOL)],
    "",
    "  Model
    architecture        llama
    parameters          135M
    context length      8192
    embedding length    576
    quantization        Q4_1

  Capabilities
    completion

"
);

golden!(
    table_gemma3,
    vec!["--format".into(), "table".into(), path(GEMMA)],
    "",
    "  Model
    architecture        gemma3
    parameters          268M
    context length      32768
    embedding length    640
    quantization        Q4_K_M

  Capabilities
    completion

"
);

fn json_of(args: &[&str], stdin: &str) -> Vec<serde_json::Value> {
    let (code, out, err) = run(args, stdin);
    assert_eq!(code, 0, "stderr: {err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn json_answers_for_both_models() {
    let (s, g) = (path(SMOL), path(GEMMA));
    let docs = json_of(&[&s, &g], "");
    assert_eq!(docs.len(), 2);
    for (d, want) in docs.iter().zip([
        ("llama", "135M", 8192, 576, "Q4_1", 49152u64),
        ("gemma3", "268M", 32768, 640, "Q4_K_M", 262144),
    ]) {
        assert_eq!(d["architecture"], want.0);
        assert_eq!(d["parameters"], want.1);
        assert_eq!(d["context_length"], want.2);
        assert_eq!(d["embedding_length"], want.3);
        assert_eq!(d["quantization"], want.4);
        assert_eq!(d["capabilities"], serde_json::json!(["completion"]));
        let n = d["parameter_count"].as_u64().unwrap();
        assert_eq!(gguf::format_parameter_count(n), want.1);
        let md = d["metadata"].as_object().unwrap();
        // long arrays are summarized as null, as Ollama's /api/show does
        assert!(md["tokenizer.ggml.tokens"].is_null());
        assert_eq!(md.keys().next().unwrap(), "general.architecture");
        assert!(d.get("tensors").is_none());
        let _ = want.5;
    }
    // --verbose keeps them
    let v = json_of(&["--verbose", &s], "");
    assert_eq!(
        v[0]["metadata"]["tokenizer.ggml.tokens"]
            .as_array()
            .unwrap()
            .len(),
        49152
    );
}

#[test]
fn tensors_flag_lists_every_tensor() {
    let g = path(GEMMA);
    let d = &json_of(&["--tensors", &g], "")[0];
    let ts = d["tensors"].as_array().unwrap();
    let emb = ts
        .iter()
        .find(|t| t["name"] == "token_embd.weight")
        .unwrap();
    assert_eq!(emb["shape"], serde_json::json!([640, 262144]));
    assert!(emb["type"].is_string() && emb["offset"].is_u64());
    let total: u64 = ts
        .iter()
        .map(|t| {
            t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap())
                .product::<u64>()
        })
        .sum();
    assert_eq!(total, d["parameter_count"].as_u64().unwrap());
    let bytes: u64 = ts.iter().map(|t| t["bytes"].as_u64().unwrap()).sum();
    let file_len = std::fs::metadata(model(GEMMA)).unwrap().len();
    assert!(bytes <= file_len - d["data_offset"].as_u64().unwrap());
}

#[test]
fn pipeline_documents_bring_the_text_layers() {
    let digest = |c: char| format!("sha256:{}", c.to_string().repeat(64));
    let blob = |mt: &str, c: char, extra: serde_json::Value| {
        let mut b =
            serde_json::json!({"media_type": mt, "digest": digest(c), "size": 1, "present": true});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let line = serde_json::json!({"type": "model", "data": {
    "name": "smollm2:135m",
    "parts": {"host": "registry.ollama.ai", "namespace": "library", "model": "smollm2", "tag": "135m"},
    "manifest_digest": digest('a'),
    "manifest": {},
    "layers": [
        blob("application/vnd.ollama.image.model", 'b', serde_json::json!({"path": model(SMOL)})),
        blob("application/vnd.ollama.image.template", 'c', serde_json::json!({"text": "{{ if .Tools }}tools{{ end }}{{ .Prompt }}"})),
        blob("application/vnd.ollama.image.system", 'd', serde_json::json!({"text": "You are helpful."})),
        blob("application/vnd.ollama.image.params", 'e', serde_json::json!({"text": "{\"stop\":[\"<|im_end|>\"],\"temperature\":0.2}"})),
        blob("application/vnd.ollama.image.license", 'f', serde_json::json!({"text": "Apache License\nVersion 2.0\nmore"})),
    ]}});
    let other = r#"{"type":"token","data":{"text":"x"}}"#;
    let input = format!("{other}\n{line}\n");
    let d = &json_of(&[], &input)[0];
    assert_eq!(d["name"], "smollm2:135m");
    assert_eq!(d["architecture"], "llama");
    assert_eq!(
        d["capabilities"],
        serde_json::json!(["completion", "tools"])
    );
    assert_eq!(d["system"], "You are helpful.");
    assert_eq!(d["options"]["temperature"], 0.2);
    assert!(d["template"].as_str().unwrap().contains(".Tools"));
    assert!(d["license"].as_str().unwrap().starts_with("Apache"));

    let (code, table, err) = run(&["--format", "table"], &input);
    assert_eq!(code, 0, "{err}");
    assert!(
        table.contains("  Parameters\n    stop           \"<|im_end|>\"\n    temperature    0.2\n"),
        "{table}"
    );
    assert!(
        table.contains("  License\n    Apache License\n    Version 2.0\n    ...\n"),
        "{table}"
    );
    assert!(
        table.contains("  System\n    You are helpful.\n"),
        "{table}"
    );
}

#[test]
fn bad_files_fail_with_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let head = std::fs::read(model(SMOL)).unwrap()[..4096].to_vec();
    let trunc = dir.path().join("trunc.gguf");
    std::fs::write(&trunc, &head).unwrap();
    let mut magic = head.clone();
    magic[..4].copy_from_slice(b"FUGG");
    let bad = dir.path().join("magic.gguf");
    std::fs::write(&bad, &magic).unwrap();
    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();

    for (p, needle) in [
        (&trunc, "truncated file"),
        (&bad, "not a gguf file"),
        (&empty, "magic"),
    ] {
        let (code, out, err) = run(&[p.to_str().unwrap()], "");
        assert_eq!(code, 2, "{err}");
        assert!(out.is_empty());
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("gguf-inspect: error: inspecting ") && err.contains(needle),
            "{err}"
        );
    }
    // a FIFO is refused at once instead of blocking on open (HOSTILE.md row 16)
    let fifo = dir.path().join("fifo.gguf");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let (code, _, err) = run(&[fifo.to_str().unwrap()], "");
    assert_eq!(code, 2);
    assert!(err.contains("not a regular file"), "{err}");

    // a bad file among good ones: the good one is still answered
    let s = path(SMOL);
    let (code, out, err) = run(&[trunc.to_str().unwrap(), &s, "/dev/null"], "");
    assert_eq!(code, 2);
    assert_eq!(out.lines().count(), 1);
    assert_eq!(err.lines().count(), 2, "{err}");
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn a_model_without_a_model_layer_is_an_error() {
    let line = serde_json::json!({"type": "model", "data": {
        "name": "x:y", "parts": {"host": "h", "namespace": "n", "model": "x", "tag": "y"},
        "manifest_digest": format!("sha256:{}", "a".repeat(64)), "manifest": {}, "layers": []}});
    let (code, out, err) = run(&[], &format!("{line}\n"));
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(err.contains("model x:y has no model layer"), "{err}");
}
