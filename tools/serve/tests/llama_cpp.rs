//! serve on llama.cpp's engine (`--engine llama.cpp`): continuous batching
//! over a context of several sequences, a client gone freeing its slot,
//! and embeddings that match the native engine's.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pipeline_tests::{bin, free_port, models_dir, out3, TestStore};
use serde_json::{json, Value};

const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// A running `serve` on a temp store holding `smollm2:135m`; killed when
/// dropped.
struct Server {
    child: Child,
    port: u16,
    _store: TestStore,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real model, or `None` (the test prints SKIPPED and returns).
fn smol_path(test: &str) -> Option<PathBuf> {
    let p = models_dir().join(SMOL);
    if !p.exists() {
        println!(
            "{test}: SKIPPED: {} missing (scripts/fetch-models.sh)",
            p.display()
        );
        return None;
    }
    Some(p)
}

/// Starts `serve` with `args` and `env` on a fresh store.
fn start(model: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
    let store = TestStore::new();
    let (code, _, stderr) = out3(&store.run(
        bin("model-create"),
        &["smollm2:135m", "--gguf", model.to_str().unwrap()],
        b"",
    ));
    assert_eq!(code, 0, "model-create: {stderr}");
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_serve"));
    cmd.args(["--threads", "1", "--ctx", "1024"])
        .args(args)
        .env("OLLAMA_HOST", format!("127.0.0.1:{port}"))
        .env("OLLAMA_MODELS", store.root())
        .env_remove("OLLAMA_KEEP_ALIVE")
        .env_remove("OLLAMA_MAX_QUEUE")
        .env_remove("OLLAMA_NUM_PARALLEL")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn serve");
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "serve did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Server {
        child,
        port,
        _store: store,
    }
}

impl Server {
    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let mut r = agent
            .post(&url)
            .send_json(&body)
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

/// Streams `prompt` (raw, greedy, `n` tokens); the text, and when the
/// first chunk and the end arrived.
fn stream_raw(port: u16, prompt: &str, n: usize) -> (String, Instant, Instant) {
    let body = json!({"model": "smollm2:135m", "prompt": prompt, "raw": true,
        "options": {"temperature": 0, "num_predict": n}})
    .to_string();
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    write!(
        c,
        "POST /api/generate HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut r = BufReader::new(c);
    let (mut text, mut first) = (String::new(), None);
    loop {
        let mut line = String::new();
        assert!(
            r.read_line(&mut line).unwrap() > 0,
            "{prompt}: stream ended early"
        );
        let Ok(v) = serde_json::from_str::<Value>(line.trim()) else {
            continue; // status line, headers, chunk sizes
        };
        first.get_or_insert_with(Instant::now);
        assert!(v.get("error").is_none(), "{prompt}: {v}");
        text.push_str(v["response"].as_str().unwrap_or(""));
        if v["done"] == true {
            assert_eq!(v["eval_count"], n, "{prompt}: {v}");
            return (text, first.unwrap(), Instant::now());
        }
    }
}

/// A client that streams without end and goes away after `chunks` chunks.
fn endless_then_gone(port: u16, chunks: usize) {
    let body = json!({"model": "smollm2:135m", "prompt": "1 1 1 1 1 1 1 1", "raw": true,
        "options": {"temperature": 0, "num_predict": 100000}})
    .to_string();
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        c,
        "POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut seen = 0;
    while seen < chunks {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "endless stream ended");
        seen += line.contains("\"done\":false") as usize;
    }
    c.shutdown(std::net::Shutdown::Both).unwrap();
}

/// Continuous batching on llama.cpp's engine: 8 streaming clients on
/// `OLLAMA_NUM_PARALLEL=4` plus one that goes away mid-stream. Every answer
/// equals the one the same prompt gets on a one-sequence llama.cpp server
/// (one request at a time), exactly: the context keeps a cache per
/// sequence (`kv_unified` off), so a sequence attends over its own cells
/// as it would alone, and on the CPU a row of a batched matrix product
/// does not depend on the other rows (SmolLM2's Q4_1 weights are not
/// repacked; repacked ones, such as Q4_K, round apart in steps of four
/// rows or more: see engine's `llama_cpp` tests). The prompts start with different
/// words (no cached prefix changes how a prompt is split into batches).
/// The streams overlap, and the gone client's slot serves the next request.
#[test]
fn llama_cpp_parallel_streams_equal_runs_one_at_a_time() {
    let Some(model) = smol_path("llama_cpp_parallel_streams_equal_runs_one_at_a_time") else {
        return;
    };
    const N: usize = 12;
    let subjects = [
        "Paris",
        "Water",
        "Sunlight",
        "Cats",
        "Music",
        "Volcanoes",
        "Python",
        "Mountains",
    ];
    let prompts: Vec<String> = subjects
        .iter()
        .map(|s| format!("{s} is one of the most interesting topics because"))
        .collect();
    let engine = ["--engine", "llama.cpp"];
    let alone: Vec<String> = {
        let s = start(&model, &engine, &[]);
        prompts.iter().map(|p| stream_raw(s.port, p, N).0).collect()
    };
    let s = start(&model, &engine, &[("OLLAMA_NUM_PARALLEL", "4")]);
    let (code, v) = s.post(
        "/api/generate",
        json!({"model": "smollm2:135m", "prompt": "Hi", "options": {"num_predict": 1}}),
    );
    assert_eq!(code, 200, "load: {v}");
    let port = s.port;
    let gone = std::thread::spawn(move || endless_then_gone(port, 20));
    let clients: Vec<_> = prompts
        .iter()
        .cloned()
        .map(|p| std::thread::spawn(move || stream_raw(port, &p, N)))
        .collect();
    let got: Vec<(String, Instant, Instant)> =
        clients.into_iter().map(|t| t.join().unwrap()).collect();
    gone.join().unwrap();
    for (i, (text, _, _)) in got.iter().enumerate() {
        assert_eq!(text, &alone[i], "prompt {:?}", prompts[i]);
    }
    let overlapped = got.iter().enumerate().any(|(i, a)| {
        got.iter()
            .enumerate()
            .any(|(j, b)| i != j && a.1 < b.2 && b.1 < a.2)
    });
    assert!(overlapped, "no two streams ran at the same time");
    // every slot is free again (the gone client's too): four at once
    // complete promptly, with the same answers
    let t0 = Instant::now();
    let again: Vec<_> = prompts[..4]
        .iter()
        .cloned()
        .map(|p| std::thread::spawn(move || stream_raw(port, &p, N).0))
        .collect();
    for (i, t) in again.into_iter().enumerate() {
        assert_eq!(t.join().unwrap(), alone[i]);
    }
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t0.elapsed()
    );
}

/// Cosine similarity of two unit vectors given as JSON arrays.
fn cosine(a: &Value, b: &Value) -> f64 {
    let a: Vec<f64> = serde_json::from_value(a.clone()).unwrap();
    let b: Vec<f64> = serde_json::from_value(b.clone()).unwrap();
    assert_eq!(a.len(), b.len());
    let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Embeddings on llama.cpp's engine (its embeddings mode, per-token final
/// hidden states, mean-pooled and scaled to unit length as the native
/// engine does): `/api/embed`, `/api/embeddings` and `/v1/embeddings`
/// answer, and each vector matches the native engine's for the same text
/// with a cosine above 0.9999 (measured: 1.0 for short texts, 0.9999997
/// for 300 tokens, which llama.cpp reads in other batches), while a
/// generation runs beside them.
#[test]
fn llama_cpp_embeddings_match_the_native_engine() {
    let Some(model) = smol_path("llama_cpp_embeddings_match_the_native_engine") else {
        return;
    };
    let long = "word ".repeat(300);
    let texts = json!(["Why is the sky blue?", "A cat sat on the mat.", long]);
    let body = json!({"model": "smollm2:135m", "input": texts});
    let native = {
        let s = start(&model, &["--engine", "native"], &[]);
        let (code, v) = s.post("/api/embed", body.clone());
        assert_eq!(code, 200, "{v}");
        v
    };
    let s = start(
        &model,
        &["--engine", "llama.cpp"],
        &[("OLLAMA_NUM_PARALLEL", "2")],
    );
    let port = s.port;
    let gen = std::thread::spawn(move || stream_raw(port, "Once upon a time", 32).0);
    std::thread::sleep(Duration::from_millis(300));
    let (code, v) = s.post("/api/embed", body);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["prompt_eval_count"], native["prompt_eval_count"]);
    let (got, want) = (
        v["embeddings"].as_array().unwrap(),
        native["embeddings"].as_array().unwrap(),
    );
    assert_eq!(got.len(), 3);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.as_array().unwrap().len(), 576, "SmolLM2's n_embd");
        assert!((cosine(g, g) - 1.0).abs() < 1e-6);
        let norm: f64 = g
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap().powi(2))
            .sum::<f64>()
            .sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "text {i}: unit length: {norm}");
        let c = cosine(g, w);
        assert!(c > 0.9999, "text {i}: cosine with the native engine's {c}");
    }
    assert!(!gen.join().unwrap().is_empty());
    let (code, legacy) = s.post(
        "/api/embeddings",
        json!({"model": "smollm2:135m", "prompt": "Why is the sky blue?"}),
    );
    assert_eq!(code, 200, "{legacy}");
    assert!(cosine(&legacy["embedding"], &want[0]) > 0.9999);
    let (code, oa) = s.post(
        "/v1/embeddings",
        json!({"model": "smollm2:135m", "input": "Why is the sky blue?"}),
    );
    assert_eq!(code, 200, "{oa}");
    assert!(cosine(&oa["data"][0]["embedding"], &want[0]) > 0.9999);
}
