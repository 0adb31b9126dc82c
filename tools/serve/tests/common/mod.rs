//! The serve tests' harness: the built `serve` on a free port over a temp
//! store holding SmolLM2, spoken to over HTTP.
#![allow(dead_code)] // each test file uses its part

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pipeline_tests::{bin, free_port, models_dir, out3, TestStore};
use serde_json::{json, Value};

pub const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// A running `serve` on a temp store; killed when dropped.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub store: TestStore,
    pub agent: ureq::Agent,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real model, or `None` (the test prints SKIPPED and returns).
pub fn smol_path(test: &str) -> Option<PathBuf> {
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

/// Starts `serve` with a store holding `smollm2:135m` and `env` set.
pub fn start(model: &Path, env: &[(&str, &str)]) -> Server {
    start_with(model, &[], env)
}

/// As [`start`], with more arguments for `serve`.
pub fn start_with(model: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
    let store = TestStore::new();
    let (code, _, stderr) = out3(&store.run(
        bin("model-create"),
        &["smollm2:135m", "--gguf", model.to_str().unwrap()],
        b"",
    ));
    assert_eq!(code, 0, "model-create: {stderr}");
    start_on_with(store, args, env)
}

/// Starts `serve` (1 thread, a 1024 context) on `store` with `env` set.
pub fn start_on(store: TestStore, env: &[(&str, &str)]) -> Server {
    start_on_with(store, &[], env)
}

/// As [`start_on`], with more arguments for `serve`.
pub fn start_on_with(store: TestStore, args: &[&str], env: &[(&str, &str)]) -> Server {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_serve"));
    cmd.args(["--threads", "1", "--ctx", "1024"])
        .args(args)
        .env("OLLAMA_HOST", format!("127.0.0.1:{port}"))
        .env("OLLAMA_MODELS", store.root())
        .env_remove("OLLAMA_KEEP_ALIVE")
        .env_remove("OLLAMA_MAX_QUEUE")
        .env_remove("OLLAMA_ORIGINS")
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
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    Server {
        child,
        port,
        store,
        agent,
    }
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
    /// Status and body of a request with a JSON body (or none).
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
        let url = self.url(path);
        let r = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("POST", Some(b)) => self.agent.post(&url).send_json(&b),
            ("DELETE", Some(b)) => self
                .agent
                .delete(&url)
                .force_send_body()
                .send(b.to_string()),
            _ => panic!("{method} {path}"),
        };
        let mut r = r.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = r.status().as_u16();
        (status, r.body_mut().read_to_string().unwrap())
    }
    pub fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let (s, b) = self.call("POST", path, Some(body));
        (s, serde_json::from_str(&b).unwrap_or(Value::String(b)))
    }
    pub fn get(&self, path: &str) -> Value {
        let (s, b) = self.call("GET", path, None);
        assert_eq!(s, 200, "{path}: {b}");
        serde_json::from_str(&b).unwrap()
    }
    /// Sends raw bytes; the status code of the reply.
    pub fn raw(&self, req: &[u8]) -> u16 {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let _ = s.write_all(req);
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        line.split(' ').nth(1).unwrap_or("0").parse().unwrap()
    }
}

/// Streams `prompt` (raw, greedy, `n` tokens); the text, and when the
/// first chunk and the end arrived.
pub fn stream_raw(port: u16, prompt: &str, n: usize) -> (String, Instant, Instant) {
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
pub fn endless_then_gone(port: u16, chunks: usize) {
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

/// Continuous batching as clients see it: `"<subject> is one of the most
/// interesting topics because"` for each subject, streamed greedy (12
/// tokens) all at once to `serve ARGS` with `OLLAMA_NUM_PARALLEL=4` while
/// one more client streams without end and goes away. Every answer equals
/// the one the same prompt gets on a one-sequence server, the streams
/// overlap, and then four at once complete promptly (every slot free
/// again, the gone client's too) with the same answers.
pub fn parallel_streams_equal_runs_alone(model: &Path, args: &[&str], subjects: &[&str]) {
    const N: usize = 12;
    let prompts: Vec<String> = subjects
        .iter()
        .map(|s| format!("{s} is one of the most interesting topics because"))
        .collect();
    let alone: Vec<String> = {
        let s = start_with(model, args, &[]);
        prompts.iter().map(|p| stream_raw(s.port, p, N).0).collect()
    };
    let s = start_with(model, args, &[("OLLAMA_NUM_PARALLEL", "4")]);
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
    // one stream began before another ended
    let overlapped = got.iter().enumerate().any(|(i, a)| {
        got.iter()
            .enumerate()
            .any(|(j, b)| i != j && a.1 < b.2 && b.1 < a.2)
    });
    assert!(overlapped, "no two streams ran at the same time");
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
