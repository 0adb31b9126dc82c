//! infer end to end: greedy text equals llama.cpp's; usage errors exit 2.

use std::path::PathBuf;
use std::process::Command;

use engine::llama_cpp::{ContextOptions, LlamaContext, LlamaModel, ModelOptions};

fn smollm2() -> PathBuf {
    pipeline_tests::real_model("SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn infer(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_infer"))
        .args(args)
        .output()
        .expect("run infer")
}

#[test]
fn raw_greedy_text_matches_llama_cpp() {
    let model = smollm2();
    let prompt = "The capital of France is";
    let rm = LlamaModel::load(&model, &ModelOptions::default()).unwrap();
    let mut rc = LlamaContext::new(
        &rm,
        &ContextOptions {
            n_ctx: 256,
            n_threads: 1,
            // infer's default, as llama.cpp's tools
            flash_attn: true,
            ..Default::default()
        },
    )
    .unwrap();
    let want = rm
        .detokenize(
            &rc.greedy(&rm.tokenize(prompt, true, false).unwrap(), 8)
                .unwrap(),
            false,
            false,
        )
        .unwrap();
    let want = format!("{}\n", String::from_utf8(want).unwrap());
    let m = model.to_str().unwrap();
    let out = infer(&[
        "--model",
        m,
        "--raw",
        "-p",
        prompt,
        "--temperature",
        "0",
        "-n",
        "8",
        "--threads",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = String::from_utf8(out.stdout).unwrap();
    assert_eq!(got, want, "\n--- expected ---\n{want}--- got ---\n{got}");
}

#[test]
fn json_ends_with_ollama_timing_record() {
    let m = smollm2();
    let out = infer(&[
        "--model",
        m.to_str().unwrap(),
        "--raw",
        "--json",
        "-n",
        "4",
        "--seed",
        "3",
        "--threads",
        "1",
        "Hello",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["type"], "done");
    for k in [
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ] {
        assert!(last["data"][k].as_u64().is_some(), "{k} missing in {last}");
    }
    assert_eq!(last["data"]["eval_count"], 4);
    assert_eq!(text.lines().filter(|l| l.contains("\"token\"")).count(), 4);
}

#[test]
fn no_prompt_is_a_usage_error() {
    let m = smollm2();
    let out = infer(&["--model", m.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no prompt"));
}

/// A file that is not a model fails with one line that names it once.
#[test]
fn bad_model_file_is_one_line_naming_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, "not a gguf file at all").unwrap();
    let bad = bad.to_str().unwrap();
    let out = infer(&["--model", bad, "-p", "hi"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "infer: error: running {bad}: not a gguf file: magic is \"not \", expected \"GGUF\" (at byte 0)\n"
        )
    );
    assert!(out.stdout.is_empty());
    let missing = dir.path().join("missing.gguf");
    let missing = missing.to_str().unwrap();
    for engine in ["native", "llama.cpp"] {
        let out = infer(&["--model", missing, "-p", "hi", "--engine", engine]);
        assert_eq!(out.status.code(), Some(2));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!(
                "infer: error: running {missing}: cannot open the model file: No such file or directory (os error 2)\n"
            )
        );
    }
    // a chat names it the same way
    let out = Command::new(env!("CARGO_BIN_EXE_infer"))
        .args(["--model", bad, "--chat"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "infer: error: chatting with {bad}: not a gguf file"
        )),
        "{err}"
    );
    assert_eq!(err.matches(bad).count(), 1, "{err}");
}

#[test]
fn bad_temperature_is_an_error() {
    let m = smollm2();
    let out = infer(&[
        "--model",
        m.to_str().unwrap(),
        "-p",
        "hi",
        "--temperature=-1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("temperature"));
}

#[test]
fn params_layer_from_stdin_sets_defaults_and_flags_override() {
    use std::io::Write;
    let m = smollm2();
    let zero = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let doc = serde_json::json!({"type": "model", "data": {
    "name": "m:t", "parts": {"host": "h", "namespace": "n", "model": "m", "tag": "t"},
    "manifest_digest": zero, "manifest": {},
    "layers": [
        {"media_type": "application/vnd.ollama.image.model", "digest": zero, "size": 1, "path": m, "present": true},
        {"media_type": "application/vnd.ollama.image.params", "digest": zero, "size": 1,
         "text": "{\"temperature\":0,\"num_predict\":8}"}
    ]}});
    let run = |extra: &[&str]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_infer"))
            .args(["--raw", "--threads", "1", "-p", "The capital of France is"])
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{doc}").unwrap();
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
    };
    let from_params = run(&[]);
    let direct = infer(&[
        "--model",
        m.to_str().unwrap(),
        "--raw",
        "--threads",
        "1",
        "--temperature",
        "0",
        "-n",
        "8",
        "The capital of France is",
    ]);
    assert_eq!(from_params, String::from_utf8(direct.stdout).unwrap());
    let shorter = run(&["-n", "2"]);
    assert!(
        from_params.starts_with(shorter.trim_end()) && shorter.len() < from_params.len(),
        "{shorter:?} vs {from_params:?}"
    );
}

const SMOL_SYSTEM: &str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

fn chatml(turns: &[(&str, &str)]) -> String {
    let mut s: String = turns
        .iter()
        .map(|(r, c)| format!("<|im_start|>{r}\n{c}<|im_end|>\n"))
        .collect();
    s.push_str("<|im_start|>assistant\n");
    s
}

#[test]
fn chat_template_greedy_text_matches_llama_cpp() {
    let model = smollm2();
    let prompt = "What is 2+2?";
    let rm = LlamaModel::load(&model, &ModelOptions::default()).unwrap();
    let mut rc = LlamaContext::new(
        &rm,
        &ContextOptions {
            n_ctx: 256,
            n_threads: 1,
            // infer's default, as llama.cpp's tools
            flash_attn: true,
            ..Default::default()
        },
    )
    .unwrap();
    let text = chatml(&[("system", SMOL_SYSTEM), ("user", prompt)]);
    let ids = rm.tokenize(&text, true, true).unwrap();
    let want = rm
        .detokenize(&rc.greedy(&ids, 8).unwrap(), false, false)
        .unwrap();
    let want = format!("{}\n", String::from_utf8(want).unwrap());
    let m = model.to_str().unwrap();
    let out = infer(&[
        "--model",
        m,
        "-p",
        prompt,
        "-n",
        "8",
        "--temperature",
        "0",
        "--threads",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = String::from_utf8(out.stdout).unwrap();
    assert!(!got.trim().is_empty());
    assert_eq!(got, want, "\n--- expected ---\n{want}--- got ---\n{got}");
}

#[test]
fn system_flag_overrides_the_system_layer_and_messages_come_first() {
    use std::io::Write;
    let m = smollm2();
    let zero = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let layer = |mt: &str, text: &str| serde_json::json!({"media_type": mt, "digest": zero, "size": 1, "text": text});
    let history = r#"[{"role":"user","content":"2+2?"},{"role":"assistant","content":"4"}]"#;
    let doc = serde_json::json!({"type": "model", "data": {
    "name": "m:t", "parts": {"host": "h", "namespace": "n", "model": "m", "tag": "t"},
    "manifest_digest": zero, "manifest": {},
    "layers": [
        {"media_type": "application/vnd.ollama.image.model", "digest": zero, "size": 1, "path": m, "present": true},
        layer("application/vnd.ollama.image.system", "Be brief."),
        layer("application/vnd.ollama.image.messages", history),
    ]}});
    let prompt_tokens = |extra: &[&str]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_infer"))
            .args(["--json", "-n", "1", "--threads", "1", "-p", "And 3+3?"])
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{doc}").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        last["data"]["prompt_eval_count"].as_u64().unwrap() as usize
    };
    let vocab = LlamaModel::load(
        &m,
        &ModelOptions {
            vocab_only: true,
            ..ModelOptions::default()
        },
    )
    .unwrap();
    let want = |system: &str| {
        let text = chatml(&[
            ("system", system),
            ("user", "2+2?"),
            ("assistant", "4"),
            ("user", "And 3+3?"),
        ]);
        vocab.tokenize(&text, true, true).unwrap().len()
    };
    let flag = "You are a calculator. Reply with one number and nothing else.";
    assert_ne!(want("Be brief."), want(flag));
    assert_eq!(prompt_tokens(&[]), want("Be brief."));
    assert_eq!(prompt_tokens(&["--system", flag]), want(flag));
}

#[test]
fn gpu_layers_that_offload_nothing_say_so() {
    let model = smollm2();
    let m = model.to_str().unwrap();
    let args = [
        "--model",
        m,
        "--raw",
        "-p",
        "Hi",
        "-n",
        "1",
        "--gpu-layers",
        "8",
    ];
    let o = infer(&args);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let gpu = ggml::Device::gpu();
    if gpu.is_none() {
        // a CPU-only build (or no device): both engines offload nothing
        assert!(
            err.contains(
                "infer: --gpu-layers ignored: no GPU backend in this build or no GPU found"
            ),
            "{err}"
        );
        let o = infer(&[&args[..], &["--engine", "llama.cpp"]].concat());
        assert!(o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("--gpu-layers ignored: no GPU backend"),
            "{err}"
        );
    } else {
        // 8 of SmolLM2's 30 layers: a split, which llama.cpp's engine does
        assert!(
            err.contains("infer: offloading 8 of 30 layers: running on llama.cpp's engine"),
            "{err}"
        );
        // and which the native engine refuses when asked for
        let o = infer(&[&args[..], &["--engine", "native"]].concat());
        assert_eq!(o.status.code(), Some(2));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("offloads all layers or none"), "{err}");
        // all layers: the native engine on the GPU, nothing to say
        let mut all = args;
        all[8] = "-1";
        let o = infer(&all);
        assert!(o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("infer:"), "{err}");
    }
    // without the flag, no such notice
    let o = infer(&args[..7]);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("--gpu-layers"));
}

#[test]
fn closed_stdout_ends_quietly_with_0() {
    use std::io::Read;
    use std::process::Stdio;
    let m = smollm2();
    let mut child = Command::new(env!("CARGO_BIN_EXE_infer"))
        .args([
            "--model",
            m.to_str().unwrap(),
            "--raw",
            "-p",
            "Once upon a time",
        ])
        .args(["-n", "200", "--ignore-eos", "--threads", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run infer");
    // read a little, then close the pipe like `| head -c 8`
    let mut first = [0u8; 8];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A chat whose stdout is closed before it answers ends quietly with 0 too.
#[test]
fn chat_with_closed_stdout_ends_quietly_with_0() {
    use std::io::Write;
    use std::process::Stdio;
    let m = smollm2();
    let mut child = Command::new(env!("CARGO_BIN_EXE_infer"))
        .args(["--model", m.to_str().unwrap(), "--chat"])
        .args(["-n", "16", "--temperature", "0", "--threads", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run infer");
    // nobody reads the answers
    drop(child.stdout.take());
    let mut stdin = child.stdin.take().unwrap();
    // the chat may already have ended on the closed stdout
    let _ = stdin.write_all(b"Hi\nTell me more\n/bye\n");
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real model with one inconsistent key (an odd RoPE dimension count,
/// which ggml asserts against and would abort on): exit 2 and one line
/// naming the key, on the engine that runs it by default and on llama.cpp's
/// (which refuses the file at load).
#[test]
fn r12_inconsistent_model_exits_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd-rope.gguf");
    let mut bytes = std::fs::read(smollm2()).unwrap();
    // the key, its type (u32 = 4), then the value: patch the value in place
    let key = b"llama.rope.dimension_count\x04\x00\x00\x00";
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .expect("SmolLM2 has llama.rope.dimension_count")
        + key.len();
    bytes[at..at + 4].copy_from_slice(&63u32.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let p = path.to_str().unwrap();
    let out = infer(&["--model", p, "-p", "Once upon a time", "-n", "4"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("llama.rope.dimension_count = 63 is odd"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(out.stdout.is_empty());
    let out = infer(&[
        "--model",
        p,
        "-p",
        "Once",
        "-n",
        "4",
        "--engine",
        "llama.cpp",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty());
}
