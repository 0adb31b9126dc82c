//! `serve --rpc`: models load split across an `infer-worker` on 127.0.0.1
//! and the local CPU, and answer what `infer` answers locally; a second
//! load of the same model (another num_ctx) shares the worker's connection
//! (a worker serves one client at a time, and that client is this server).

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pipeline_tests::{bin, free_port, models_dir, out3, TestStore};
use serde_json::{json, Value};

const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Kills a child when dropped.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_rpc_answers_as_a_local_run() {
    let model = models_dir().join(SMOL);
    if !model.exists() {
        println!(
            "serve --rpc: SKIPPED: {} missing (scripts/fetch-models.sh)",
            model.display()
        );
        return;
    }
    // the worker, on a free port; wait until it listens
    let wport = free_port();
    let mut worker = Kill(
        Command::new(bin("infer-worker"))
            .args(["--port", &wport.to_string(), "--threads", "1", "--no-cache"])
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start infer-worker"),
    );
    let mut lines = BufReader::new(worker.0.stderr.take().unwrap()).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(first.contains("listening on"), "infer-worker: {first}");
    std::thread::spawn(move || lines.for_each(drop));

    let store = TestStore::new();
    let (code, _, err) = out3(&store.run(
        bin("model-create"),
        &["smollm2:135m", "--gguf", model.to_str().unwrap()],
        b"",
    ));
    assert_eq!(code, 0, "model-create: {err}");
    let port = free_port();
    let _serve = Kill(
        Command::new(env!("CARGO_BIN_EXE_serve"))
            .args(["--threads", "1", "--rpc", &format!("127.0.0.1:{wport}")])
            .args(["--tensor-split", "1,1"])
            .env("OLLAMA_HOST", format!("127.0.0.1:{port}"))
            .env("OLLAMA_MODELS", store.root())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn serve"),
    );
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "serve did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let local = Command::new(bin("infer"))
        .args([
            "--model",
            model.to_str().unwrap(),
            "--engine",
            "llama.cpp",
            "--raw",
        ])
        .args([
            "-p",
            "Once upon a time",
            "-n",
            "16",
            "--temperature",
            "0",
            "--threads",
            "1",
        ])
        .output()
        .expect("run infer");
    let (code, want, err) = out3(&local);
    assert_eq!(code, 0, "infer: {err}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    // the second request loads another copy (num_ctx): no second connection
    for num_ctx in [4096, 2048] {
        let body = json!({"model": "smollm2:135m", "prompt": "Once upon a time", "raw": true,
            "stream": false, "options": {"temperature": 0, "num_predict": 16, "num_ctx": num_ctx}});
        let mut r = agent
            .post(&format!("http://127.0.0.1:{port}/api/generate"))
            .send_json(&body)
            .expect("POST /api/generate");
        let status = r.status().as_u16();
        let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(status, 200, "num_ctx {num_ctx}: {v}");
        pipeline_tests::assert_text_eq(want.trim_end(), v["response"].as_str().unwrap());
    }
}
