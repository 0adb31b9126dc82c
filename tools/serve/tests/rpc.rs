//! `serve --rpc`: models load split across an `infer-worker` on 127.0.0.1
//! and the local CPU, and answer what `infer` answers locally; a second
//! load of the same model (another num_ctx) shares the worker's connection
//! (a worker serves one client at a time, and that client is this server).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use pipeline_tests::{bin, free_port, out3};
use serde_json::json;

mod common;
use common::{smol_path, start_with};

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
    let Some(model) = smol_path("serve --rpc") else {
        return;
    };
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

    let rpc = format!("127.0.0.1:{wport}");
    let s = start_with(&model, &["--rpc", &rpc, "--tensor-split", "1,1"], &[]);
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
    // the second request loads another copy (num_ctx): no second connection
    for num_ctx in [4096, 2048] {
        let body = json!({"model": "smollm2:135m", "prompt": "Once upon a time", "raw": true,
            "stream": false, "options": {"temperature": 0, "num_predict": 16, "num_ctx": num_ctx}});
        let (status, v) = s.post("/api/generate", body);
        assert_eq!(status, 200, "num_ctx {num_ctx}: {v}");
        pipeline_tests::assert_text_eq(want.trim_end(), v["response"].as_str().unwrap());
    }
}
