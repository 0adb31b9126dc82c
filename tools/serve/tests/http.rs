//! serve end to end: the built binary on a free port with a temp store
//! holding SmolLM2, spoken to over HTTP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pipeline_tests::{bin, docker_registry, out3, TestStore};
use serde_json::{json, Value};

mod common;
use common::{smol_path, start, start_on, stream_raw, Server};

fn greedy(prompt: &str, n: usize) -> Value {
    json!({"model": "smollm2:135m", "prompt": prompt, "stream": false,
           "options": {"temperature": 0, "num_predict": n}})
}

#[test]
fn generate_greedy_equals_the_runner_stream_and_not() {
    let Some(model) = smol_path("generate_greedy_equals_the_runner_stream_and_not") else {
        return;
    };
    let prompt = "What is the capital of France?";
    // the runner as `infer` runs it, same options
    let mut o = runner::InferOptions {
        model: model.clone(),
        prompt: prompt.into(),
        n_threads: 1,
        n_ctx: 1024,
        num_predict: Some(12),
        ..Default::default()
    };
    o.sampler.temperature = 0.0;
    let mut want = String::new();
    runner::infer(&o, &mut |ev| {
        if let runner::Event::Token { text, .. } | runner::Event::Text(text) = ev {
            want.push_str(text);
        }
        Ok(())
    })
    .unwrap();
    let s = start(&model, &[]);
    // keep_alive 0: the next request loads the model again, so it computes
    // the prompt as this one did (a cached prompt's last token computed
    // alone may add in another order and flip a near-tie; the runner's
    // tests/hold.rs checks reuse with batch-invariant kernels)
    let mut first = greedy(prompt, 12);
    first["keep_alive"] = json!(0);
    let (code, v) = s.post("/api/generate", first);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["response"].as_str().unwrap(), want);
    assert_eq!(v["done"], true);
    assert_eq!(v["done_reason"], "length");
    assert_eq!(v["eval_count"], 12);
    for k in [
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_duration",
    ] {
        assert!(v[k].as_u64().is_some_and(|n| n > 0), "{k}: {v}");
    }
    assert!(v["context"].as_array().is_some_and(|c| !c.is_empty()));
    // streaming: NDJSON, no blank lines, the same text, one final object
    let mut body = greedy(prompt, 12);
    body["stream"] = json!(true);
    let (code, text) = s.call("POST", "/api/generate", Some(body));
    assert_eq!(code, 200);
    let lines: Vec<Value> = text
        .split_terminator('\n')
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let got: String = lines
        .iter()
        .filter_map(|l| l["response"].as_str())
        .collect();
    assert_eq!(got, want);
    assert_eq!(lines.iter().filter(|l| l["done"] == true).count(), 1);
    assert_eq!(lines.last().unwrap()["done"], true);
    // the model stays loaded (keep_alive default), ps shows it
    let ps = s.get("/api/ps");
    assert_eq!(ps["models"][0]["name"], "smollm2:135m", "{ps}");
}

#[test]
fn chat_stream_and_not() {
    let Some(model) = smol_path("chat_stream_and_not") else {
        return;
    };
    let s = start(&model, &[]);
    let req = json!({"model": "smollm2:135m", "stream": false,
        "messages": [{"role": "user", "content": "Say hello."}],
        "options": {"temperature": 0, "num_predict": 8}});
    // keep_alive 0: the streamed run below computes the prompt afresh, as
    // this one does (see generate_greedy_equals_the_runner_stream_and_not)
    let mut first = req.clone();
    first["keep_alive"] = json!(0);
    let (code, v) = s.post("/api/chat", first);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["message"]["role"], "assistant");
    let want = v["message"]["content"].as_str().unwrap().to_string();
    assert!(!want.is_empty());
    assert_eq!(v["done"], true);
    let mut sreq = req.clone();
    sreq.as_object_mut().unwrap().remove("stream"); // streams by default
    let (code, text) = s.call("POST", "/api/chat", Some(sreq));
    assert_eq!(code, 200);
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() > 2, "{text}");
    let got: String = lines
        .iter()
        .filter_map(|l| l["message"]["content"].as_str())
        .collect();
    assert_eq!(got, want);
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true);
    assert_eq!(last["prompt_eval_count"], v["prompt_eval_count"]);
    // a third run reuses the cached prompt, yet counts it (as Ollama)
    let (code, again) = s.post("/api/chat", req);
    assert_eq!(code, 200, "{again}");
    assert_eq!(again["prompt_eval_count"], v["prompt_eval_count"]);
}

#[test]
fn tags_show_copy_delete_and_errors() {
    let Some(model) = smol_path("tags_show_copy_delete_and_errors") else {
        return;
    };
    let s = start(&model, &[]);
    let (code, text) = s.call("GET", "/", None);
    assert_eq!((code, text.as_str()), (200, "Ollama is running"));
    assert!(s.get("/api/version")["version"].is_string());
    let tags = s.get("/api/tags");
    assert_eq!(tags["models"][0]["name"], "smollm2:135m");
    assert_eq!(tags["models"][0]["details"]["family"], "llama");
    assert_eq!(tags["models"][0]["digest"].as_str().unwrap().len(), 64);
    let (code, show) = s.post("/api/show", json!({"model": "smollm2:135m"}));
    assert_eq!(code, 200);
    assert_eq!(show["model_info"]["general.architecture"], "llama");
    assert!(show["capabilities"]
        .as_array()
        .unwrap()
        .contains(&json!("completion")));
    // copy, then delete both ways
    let (code, _) = s.call(
        "POST",
        "/api/copy",
        Some(json!({"source": "smollm2:135m", "destination": "mine:v1"})),
    );
    assert_eq!(code, 200);
    assert_eq!(s.get("/api/tags")["models"].as_array().unwrap().len(), 2);
    assert_eq!(s.get("/v1/models")["data"].as_array().unwrap().len(), 2);
    let (code, body) = s.call("DELETE", "/api/delete", Some(json!({"model": "mine:v1"})));
    assert_eq!((code, body.as_str()), (200, ""));
    let (code, body) = s.call("DELETE", "/api/delete", Some(json!({"model": "mine:v1"})));
    assert_eq!(
        (code, body.as_str()),
        (404, r#"{"error":"model 'mine:v1' not found"}"#)
    );
    // errors as Ollama words them
    let (code, v) = s.post("/api/generate", json!({"model": "nope"}));
    assert_eq!((code, v), (404, json!({"error": "model 'nope' not found"})));
    let (code, v) = s.post("/api/generate", json!({}));
    assert_eq!((code, v), (404, json!({"error": "model '' not found"})));
    let (code, v) = s.post("/api/chat", json!({}));
    assert_eq!((code, v), (400, json!({"error": "model is required"})));
    let (code, v) = s.post("/api/show", json!({"model": "nope"}));
    assert_eq!((code, v), (404, json!({"error": "model 'nope' not found"})));
    let (code, v) = s.post("/api/copy", json!({"source": "nope", "destination": "x"}));
    assert_eq!(
        (code, v),
        (404, json!({"error": "model \"nope\" not found"}))
    );
    let (code, v) = s.post(
        "/v1/chat/completions",
        json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
    );
    assert_eq!(code, 404);
    assert_eq!(v["error"]["type"], "not_found_error");
    let bad = "POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\n\r\n{bad";
    assert_eq!(s.raw(bad.as_bytes()), 400);
    let empty = "POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(s.raw(empty.as_bytes()), 400);
    // a 10 GB body is refused at once, unread
    let t0 = Instant::now();
    let huge = "POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10000000000\r\n\r\n{\"model\":";
    assert_eq!(s.raw(huge.as_bytes()), 413);
    assert!(t0.elapsed() < Duration::from_secs(5));
    // DNS rebinding guard: bound to loopback, a foreign Host is 403
    let evil = "GET /api/tags HTTP/1.1\r\nHost: evil.example.com\r\n\r\n";
    assert_eq!(s.raw(evil.as_bytes()), 403);
    let local = "GET /api/tags HTTP/1.1\r\nHost: localhost:11434\r\n\r\n";
    assert_eq!(s.raw(local.as_bytes()), 200);
    // CORS: an allowed origin is echoed, another refused
    let ok =
        "GET /api/version HTTP/1.1\r\nHost: localhost\r\nOrigin: http://localhost:3000\r\n\r\n";
    assert_eq!(s.raw(ok.as_bytes()), 200);
    let no =
        "GET /api/version HTTP/1.1\r\nHost: localhost\r\nOrigin: https://evil.example.com\r\n\r\n";
    assert_eq!(s.raw(no.as_bytes()), 403);
    // unknown path, wrong method
    assert_eq!(s.call("GET", "/api/nothing", None).0, 404);
    assert_eq!(s.call("GET", "/api/show", None).0, 405);
    // blobs: HEAD 404 then POST with a wrong digest, then the right one
    let d = protocol::Digest::of_bytes(b"hello");
    let head = format!("HEAD /api/blobs/{d} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(s.raw(head.as_bytes()), 404);
    let (code, v) = blob_post(&s, &d.to_string(), b"hellO");
    assert_eq!(code, 400, "{v}");
    assert!(v.starts_with(r#"{"error":"digest mismatch"#), "{v}");
    assert_eq!(blob_post(&s, &d.to_string(), b"hello").0, 201);
    assert_eq!(s.raw(head.as_bytes()), 200);
    assert_eq!(blob_post(&s, &d.to_string(), b"hello").0, 200);
    assert!(s
        .store
        .root()
        .join("blobs")
        .join(d.blob_file_name())
        .exists());
}

fn blob_post(s: &Server, digest: &str, bytes: &[u8]) -> (u16, String) {
    let mut r = s
        .agent
        .post(&s.url(&format!("/api/blobs/{digest}")))
        .send(bytes)
        .unwrap();
    let code = r.status().as_u16();
    (code, r.body_mut().read_to_string().unwrap())
}

#[test]
fn keep_alive_zero_unloads_and_an_empty_prompt_loads() {
    let Some(model) = smol_path("keep_alive_zero_unloads_and_an_empty_prompt_loads") else {
        return;
    };
    let s = start(&model, &[]);
    let (code, v) = s.post("/api/generate", json!({"model": "smollm2:135m"}));
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        (v["done"].clone(), v["done_reason"].clone()),
        (json!(true), json!("load"))
    );
    assert_eq!(s.get("/api/ps")["models"].as_array().unwrap().len(), 1);
    let (code, v) = s.post(
        "/api/generate",
        json!({"model": "smollm2:135m", "keep_alive": 0}),
    );
    assert_eq!((code, v["done_reason"].clone()), (200, json!("unload")));
    assert_eq!(s.get("/api/ps"), json!({"models": []}));
    let mut req = greedy("Hi", 2);
    req["keep_alive"] = json!(0);
    let (code, v) = s.post("/api/generate", req);
    assert_eq!(code, 200, "{v}");
    assert_eq!(s.get("/api/ps"), json!({"models": []}));
    let (code, v) = s.post(
        "/api/generate",
        json!({"model": "smollm2:135m", "keep_alive": "10"}),
    );
    assert_eq!(code, 400, "{v}");
}

#[test]
fn a_full_queue_answers_503() {
    let Some(model) = smol_path("a_full_queue_answers_503") else {
        return;
    };
    let s = std::sync::Arc::new(start(&model, &[("OLLAMA_MAX_QUEUE", "1")]));
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let s = s.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100 * i));
                s.post("/api/generate", greedy("Tell me a long story.", 24))
            })
        })
        .collect();
    let results: Vec<(u16, Value)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let busy: Vec<_> = results.iter().filter(|(c, _)| *c == 503).collect();
    assert!(results.iter().any(|(c, _)| *c == 200), "{results:?}");
    assert!(!busy.is_empty(), "{results:?}");
    assert_eq!(
        busy[0].1,
        json!({"error": "server busy, please try again.  maximum pending requests exceeded"})
    );
}

#[test]
fn a_client_gone_mid_stream_frees_the_model() {
    let Some(model) = smol_path("a_client_gone_mid_stream_frees_the_model") else {
        return;
    };
    let s = start(&model, &[]);
    // load first, so the timing below is about generation only
    assert_eq!(s.post("/api/generate", greedy("Hi", 1)).0, 200);
    // a raw prompt greedy decoding repeats without end: only a cancel stops it
    let body = json!({"model": "smollm2:135m", "prompt": "1 1 1 1 1 1 1 1 1 1 1 1", "raw": true,
        "options": {"temperature": 0, "num_predict": 100000}})
    .to_string();
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    write!(
        c,
        "POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut chunks = 0;
    while chunks < 10 {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "stream ended");
        assert!(!line.contains("\"done\":true"), "{line}");
        chunks += line.contains("\"done\":false") as usize;
    }
    drop(r);
    c.shutdown(std::net::Shutdown::Both).unwrap();
    drop(c);
    // the next request runs promptly: the stream's generation was canceled
    let t0 = Instant::now();
    let (code, v) = s.post("/api/generate", greedy("Hi", 2));
    assert_eq!(code, 200, "{v}");
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(v["eval_count"], 2);
}

#[test]
fn openai_chat_completions_and_models() {
    let Some(model) = smol_path("openai_chat_completions_and_models") else {
        return;
    };
    let s = start(&model, &[]);
    let msgs = json!([{"role": "user", "content": "Say hello."}]);
    let (code, v) = s.post(
        "/v1/chat/completions",
        json!({"model": "smollm2:135m", "messages": msgs, "max_tokens": 6, "temperature": 0}),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["usage"]["completion_tokens"], 6);
    let want = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, text) = s.call(
        "POST",
        "/v1/chat/completions",
        Some(
            json!({"model": "smollm2:135m", "messages": msgs, "max_tokens": 6,
                    "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}),
        ),
    );
    assert_eq!(code, 200);
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap())
        .collect();
    assert_eq!(*events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let got: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(got, want);
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 6);
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "length"
    );
    let (code, v) = s.post(
        "/v1/completions",
        json!({"model": "smollm2:135m", "prompt": "The sky is", "max_tokens": 4, "temperature": 0}),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert!(v["choices"][0]["text"].is_string());
    let m = s.get("/v1/models");
    assert_eq!(m["data"][0]["id"], "smollm2:135m");
    assert_eq!(m["data"][0]["owned_by"], "library");
    assert_eq!(s.get("/v1/models/smollm2:135m")["id"], "smollm2:135m");
    assert_eq!(s.call("GET", "/v1/models/nope:1", None).0, 404);
}

#[test]
fn usage_errors_exit_2() {
    let o = Command::new(env!("CARGO_BIN_EXE_serve"))
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let o = Command::new(env!("CARGO_BIN_EXE_serve"))
        .env("OLLAMA_HOST", "127.0.0.1:notaport")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("OLLAMA_HOST"), "{err}");
}

/// The official Python clients (ollama 0.6.3, openai 3.51.0) against the
/// server, from a cached venv; SKIPPED when PyPI cannot be reached.
#[test]
fn official_python_clients() {
    let Some(model) = smol_path("official_python_clients") else {
        return;
    };
    let home = PathBuf::from(std::env::var_os("HOME").unwrap());
    let venv = home.join(".cache/llpipe/venv-serve");
    let py = venv.join("bin/python");
    let ready = |py: &std::path::Path| {
        Command::new(py)
            .args(["-c", "import ollama, openai, importlib.metadata as m; assert m.version('ollama') == '0.6.3' and m.version('openai') == '3.51.0'"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ready(&py) {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success());
        let installed = made
            && Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "ollama==0.6.3", "openai==3.51.0"])
                .status()
                .is_ok_and(|s| s.success());
        if !installed || !ready(&py) {
            println!(
                "official_python_clients: SKIPPED: cannot install ollama and openai from PyPI"
            );
            return;
        }
    }
    let s = start(&model, &[]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients.py");
    // push and pull go through a local registry when there is one
    let reg =
        have_registry("official_python_clients (push and pull)").then(|| docker_registry(None));
    let mut child = Command::new(&py)
        .arg(&script)
        .arg(format!("127.0.0.1:{}", s.port))
        .arg(&model)
        .args(reg.as_ref().map(|r| r.host()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "clients.py failed:\n{out}\n{err}");
    assert!(out.contains("all client checks passed"), "{out}");
    assert!(out.contains("ok: create from files"), "{out}");
    if reg.is_some() {
        assert!(out.contains("ok: the pulled model generates"), "{out}");
    }
}

/// Continuous batching: 16 streaming clients on `OLLAMA_NUM_PARALLEL=4`,
/// plus one killed mid-stream. Every answer equals the one the same
/// prompt gets alone on a one-sequence server (exactly: a batched step's
/// logits equal a lone run's bit for bit, models/tests/batched.rs; the
/// prompts start with different words, so no cached prefix changes how a
/// prompt is split into batches), the streams overlap, and the killed
/// client's slot serves the next request.
#[test]
fn parallel_streams_equal_runs_alone() {
    let Some(model) = smol_path("parallel_streams_equal_runs_alone") else {
        return;
    };
    let subjects = [
        "Paris",
        "Water",
        "Sunlight",
        "Cats",
        "Music",
        "Volcanoes",
        "Python",
        "Mountains",
        "Oceans",
        "Bread",
        "Winter",
        "Libraries",
        "Trains",
        "Coffee",
        "Bees",
        "Gold",
    ];
    common::parallel_streams_equal_runs_alone(&model, &[], &subjects);
}

/// `/api/embed`, `/api/embeddings` and `/v1/embeddings`: unit vectors,
/// the same on a one-sequence server and on a batching one while a
/// generation runs beside them, and Ollama's errors.
#[test]
fn embeddings_and_their_errors() {
    let Some(model) = smol_path("embeddings_and_their_errors") else {
        return;
    };
    let body = |input: Value| json!({"model": "smollm2:135m", "input": input});
    let texts = json!(["Why is the sky blue?", "A cat sat on the mat."]);
    let alone = {
        let s = start(&model, &[]);
        let (code, v) = s.post("/api/embed", body(texts.clone()));
        assert_eq!(code, 200, "{v}");
        // errors, as Ollama words them
        let (code, v) = s.post("/api/embed", body(json!(42)));
        assert_eq!((code, &v), (400, &json!({"error": "invalid input type"})));
        let (code, v) = s.post("/api/embed", json!({"input": "x"}));
        assert_eq!((code, &v), (400, &json!({"error": "model is required"})));
        let (code, v) = s.post("/api/embed", json!({"model": "nope", "input": "x"}));
        assert_eq!(
            (code, &v),
            (
                404,
                &json!({"error": "model \"nope\" not found, try pulling it first"})
            )
        );
        let long = "word ".repeat(1500); // > 1024 tokens, the test's context
        let (code, v) = s.post(
            "/api/embed",
            json!({"model": "smollm2:135m", "input": long, "truncate": false}),
        );
        assert_eq!(
            (code, &v),
            (
                400,
                &json!({"error": "the input length exceeds the context length"})
            )
        );
        let (code, v) = s.post(
            "/api/embed",
            json!({"model": "smollm2:135m", "input": long}),
        );
        assert_eq!(code, 200, "truncated by default: {v}");
        assert_eq!(v["prompt_eval_count"], 1024);
        let (code, v) = s.post("/api/embed", body(json!([])));
        assert_eq!((code, &v["embeddings"]), (200, &json!([])), "only loads");
        let (code, v) = s.post(
            "/v1/embeddings",
            json!({"model": "smollm2:135m", "input": []}),
        );
        assert_eq!(
            (code, &v["error"]["message"]),
            (400, &json!("invalid input"))
        );
        let (code, _) = s.post(
            "/v1/embeddings",
            json!({"model": "smollm2:135m", "input": "x", "encoding_format": "hex"}),
        );
        assert_eq!(code, 400);
        let (code, legacy) = s.post(
            "/api/embeddings",
            json!({"model": "smollm2:135m", "prompt": "Why is the sky blue?"}),
        );
        assert_eq!(code, 200, "{legacy}");
        assert_eq!(legacy["embedding"], v_first(&v_embed(&s, &texts)));
        v_embed(&s, &texts)
    };
    let vecs = alone["embeddings"].as_array().unwrap();
    assert_eq!(vecs.len(), 2);
    for v in vecs {
        let v: Vec<f64> = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(v.len(), 576, "SmolLM2's n_embd");
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "unit length: {norm}");
    }
    assert_ne!(vecs[0], vecs[1]);
    // a batching server, a generation running beside: the same vectors
    let s = std::sync::Arc::new(start(&model, &[("OLLAMA_NUM_PARALLEL", "2")]));
    let port = s.port;
    let gen = std::thread::spawn(move || stream_raw(port, "Once upon a time", 48).0);
    std::thread::sleep(Duration::from_millis(300));
    let batched = v_embed(&s, &texts);
    assert_eq!(batched["embeddings"], alone["embeddings"]);
    assert!(!gen.join().unwrap().is_empty());
}

fn v_embed(s: &Server, texts: &Value) -> Value {
    let (code, v) = s.post(
        "/api/embed",
        json!({"model": "smollm2:135m", "input": texts}),
    );
    assert_eq!(code, 200, "{v}");
    v
}

fn v_first(v: &Value) -> Value {
    v["embeddings"][0].clone()
}

/// Structured output: `format: "json"` and a JSON schema (native API),
/// `response_format` (OpenAI), on a one-sequence server and a batching
/// one: the text parses and matches the schema; a bad format is a 400.
#[test]
fn structured_output_follows_the_format() {
    let Some(model) = smol_path("structured_output_follows_the_format") else {
        return;
    };
    let schema = json!({"type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"], "additionalProperties": false});
    for env in [&[][..], &[("OLLAMA_NUM_PARALLEL", "2")][..]] {
        let s = start(&model, env);
        let ask = |format: Value| {
            let (code, v) = s.post(
                "/api/generate",
                json!({"model": "smollm2:135m", "prompt": "Describe a person as JSON.",
                       "stream": false, "format": format,
                       "options": {"temperature": 0, "num_predict": 400}}),
            );
            assert_eq!(code, 200, "{v}");
            let text = v["response"].as_str().unwrap().to_string();
            let parsed: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{env:?}: not JSON ({e}): {text:?}"));
            assert_eq!(v["done_reason"], "stop", "the grammar ended it: {text:?}");
            parsed
        };
        assert!(ask(json!("json")).is_object());
        let p = ask(schema.clone());
        assert!(p["name"].is_string() && p["age"].is_i64(), "{env:?}: {p}");
        let (code, v) = s.post(
            "/api/chat",
            json!({"model": "smollm2:135m", "format": schema, "stream": false,
                   "messages": [{"role": "user", "content": "Who are you? Answer as JSON."}],
                   "options": {"temperature": 0, "num_predict": 64}}),
        );
        assert_eq!(code, 200, "{v}");
        let p: Value = serde_json::from_str(v["message"]["content"].as_str().unwrap()).unwrap();
        assert!(p["name"].is_string() && p["age"].is_i64(), "{env:?}: {p}");
        let (code, v) = s.post(
            "/v1/chat/completions",
            json!({"model": "smollm2:135m", "max_tokens": 64, "temperature": 0,
                   "messages": [{"role": "user", "content": "Describe a person."}],
                   "response_format": {"type": "json_schema",
                                       "json_schema": {"name": "p", "schema": schema}}}),
        );
        assert_eq!(code, 200, "{v}");
        let text = v["choices"][0]["message"]["content"].as_str().unwrap();
        let p: Value = serde_json::from_str(text).unwrap();
        assert!(p["name"].is_string() && p["age"].is_i64(), "{env:?}: {p}");
        let (code, v) = s.post(
            "/api/generate",
            json!({"model": "smollm2:135m", "prompt": "x", "format": 42}),
        );
        assert_eq!(code, 400, "{v}");
    }
}

// ---- pull, push, create ----

/// Whether docker-registry is installed; prints SKIPPED when not.
fn have_registry(test: &str) -> bool {
    let ok = std::path::Path::new("/usr/bin/docker-registry").exists();
    if !ok {
        println!("{test}: SKIPPED: /usr/bin/docker-registry missing (see shared/REGISTRY.md)");
    }
    ok
}

impl Server {
    /// POSTs and parses the reply as NDJSON: every line must be an object.
    fn ndjson(&self, path: &str, body: Value) -> (u16, Vec<Value>) {
        let (code, text) = self.call("POST", path, Some(body));
        assert!(text.ends_with('\n'), "{path}: {text:?}");
        let lines = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect::<Vec<_>>();
        assert!(lines.iter().all(Value::is_object), "{text}");
        (code, lines)
    }
    fn manifest(&self, name: &str) -> Vec<u8> {
        let st = store::Store::open(self.store.root());
        st.read_manifest(&store::Name::parse(name).unwrap())
            .unwrap()
            .2
    }
}

/// The `status` values of progress lines, in order, blob lines as `<verb> <hex>`.
fn statuses(lines: &[Value]) -> Vec<&str> {
    lines
        .iter()
        .map(|l| l["status"].as_str().unwrap_or_else(|| panic!("{l}")))
        .collect()
}

/// The blob lines for `digest`: each with total = `size`, completed never
/// going back, the last one complete.
fn check_blob_lines(lines: &[Value], verb: &str, digest: &str, size: u64) {
    let mine: Vec<&Value> = lines.iter().filter(|l| l["digest"] == digest).collect();
    assert!(!mine.is_empty(), "no {verb} line for {digest}: {lines:?}");
    let hex12 = &digest["sha256:".len().."sha256:".len() + 12];
    for l in &mine {
        assert_eq!(l["status"], format!("{verb} {hex12}"), "{l}");
        assert_eq!(l["total"], size, "{l}");
    }
    let done: Vec<u64> = mine
        .iter()
        .map(|l| l["completed"].as_u64().unwrap())
        .collect();
    assert!(done.windows(2).all(|w| w[0] <= w[1]), "{done:?}");
    assert_eq!(*done.last().unwrap(), size, "{mine:?}");
}

#[test]
fn push_then_pull_into_an_empty_store_through_a_registry() {
    let test = "push_then_pull_into_an_empty_store_through_a_registry";
    let Some(model) = smol_path(test) else {
        return;
    };
    if !have_registry(test) {
        return;
    }
    let reg = docker_registry(None);
    let a = start(&model, &[]);
    let name = format!("{}/library/smol:t1", reg.host());
    let (code, _) = a.call(
        "POST",
        "/api/copy",
        Some(json!({"source": "smollm2:135m", "destination": name})),
    );
    assert_eq!(code, 200);
    let weights = protocol::Digest::of_bytes(&std::fs::read(&model).unwrap()).to_string();
    let size = std::fs::metadata(&model).unwrap().len();

    // push over http://, streamed
    let (code, lines) = a.ndjson("/api/push", json!({"model": format!("http://{name}")}));
    assert_eq!(code, 200, "{lines:?}");
    let st = statuses(&lines);
    assert_eq!(st[0], "retrieving manifest");
    assert_eq!(
        st[st.len() - 2..],
        ["pushing manifest", "success"],
        "{st:?}"
    );
    check_blob_lines(&lines, "pushing", &weights, size);
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["digest"] == weights.as_str())
            .count(),
        2
    );
    // pushed again, every blob is there already: one complete line each
    let (code, lines) = a.ndjson("/api/push", json!({"model": name, "insecure": true}));
    assert_eq!(code, 200);
    let blob_lines: Vec<_> = lines.iter().filter(|l| l.get("digest").is_some()).collect();
    assert!(
        blob_lines.iter().all(|l| l["completed"] == l["total"]),
        "{lines:?}"
    );

    // pull into a server with an empty store
    let b = start_on(TestStore::new(), &[]);
    assert_eq!(b.get("/api/tags")["models"], json!([]));
    let (code, lines) = b.ndjson("/api/pull", json!({"model": name, "insecure": true}));
    assert_eq!(code, 200, "{lines:?}");
    let st = statuses(&lines);
    assert_eq!(st[0], "pulling manifest");
    assert_eq!(
        st[st.len() - 3..],
        ["verifying sha256 digest", "writing manifest", "success"],
        "{st:?}"
    );
    check_blob_lines(&lines, "pulling", &weights, size);
    let first = lines
        .iter()
        .find(|l| l["digest"] == weights.as_str())
        .unwrap();
    assert_eq!(first["completed"], 0, "a fresh blob starts at 0: {first}");
    assert_eq!(a.manifest(&name), b.manifest(&name), "manifests differ");

    // the pulled model generates the same greedy text
    let body = json!({"model": name, "prompt": "Why is the sky blue?", "stream": false,
                      "options": {"temperature": 0, "num_predict": 5}});
    let (code, ra) = a.post("/api/generate", body.clone());
    assert_eq!(code, 200, "{ra}");
    let (code, rb) = b.post("/api/generate", body);
    assert_eq!(code, 200, "{rb}");
    assert_eq!(rb["eval_count"], 5);
    assert_eq!(ra["response"], rb["response"]);

    // pulled again, not streaming: just success; every blob was present
    let (code, v) = b.post(
        "/api/pull",
        json!({"name": format!("http://{name}"), "stream": false}),
    );
    assert_eq!((code, v), (200, json!({"status": "success"})));

    // an unknown model: Ollama's text, in the stream or with a status
    let nope = format!("http://{}/library/nope:x", reg.host());
    let (code, lines) = b.ndjson("/api/pull", json!({"model": nope}));
    assert_eq!(code, 200);
    assert_eq!(lines[0]["status"], "pulling manifest");
    assert_eq!(
        lines.last().unwrap(),
        &json!({"error": "pull model manifest: file does not exist"})
    );
    let (code, v) = b.post("/api/pull", json!({"model": nope, "stream": false}));
    assert_eq!(
        (code, v),
        (
            500,
            json!({"error": "pull model manifest: file does not exist"})
        )
    );
    assert_eq!(b.get("/api/tags")["models"].as_array().unwrap().len(), 1);
    let (code, v) = b.post("/api/pull", json!({}));
    assert_eq!((code, v), (400, json!({"error": "model is required"})));
    let (code, v) = b.post("/api/push", json!({"model": "nope:x"}));
    assert_eq!(
        (code, v),
        (404, json!({"error": "model 'nope:x' not found"}))
    );
}

#[test]
fn create_from_an_uploaded_gguf_and_from_a_model() {
    let Some(model) = smol_path("create_from_an_uploaded_gguf_and_from_a_model") else {
        return;
    };
    let s = start_on(TestStore::new(), &[]);
    let bytes = std::fs::read(&model).unwrap();
    let digest = protocol::Digest::of_bytes(&bytes).to_string();
    assert_eq!(blob_post(&s, &digest, &bytes).0, 201);
    let template = "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n";
    let (code, lines) = s.ndjson(
        "/api/create",
        json!({"model": "mine:v1", "files": {"smol.gguf": digest}, "template": template,
               "system": "Be brief.", "license": ["MIT", "Apache-2.0"],
               "parameters": {"num_predict": 3, "temperature": 0, "stop": ["<|im_end|>", "<|im_start|>"]},
               "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}),
    );
    assert_eq!(code, 200, "{lines:?}");
    let st = statuses(&lines);
    assert_eq!(st[0], "parsing GGUF");
    assert!(
        st.contains(&format!("using existing layer {digest}").as_str()),
        "{st:?}"
    );
    assert!(
        st.iter()
            .any(|s| s.starts_with("creating new layer sha256:")),
        "{st:?}"
    );
    assert_eq!(
        st[st.len() - 2..],
        ["writing manifest", "success"],
        "{st:?}"
    );

    let (code, show) = s.post("/api/show", json!({"model": "mine:v1"}));
    assert_eq!(code, 200, "{show}");
    assert_eq!(show["template"], template);
    assert_eq!(show["system"], "Be brief.");
    assert_eq!(show["license"], "MIT\nApache-2.0");
    let params = show["parameters"].as_str().unwrap();
    assert!(
        params.contains("num_predict") && params.contains("<|im_end|>"),
        "{params}"
    );
    assert_eq!(show["details"]["family"], "llama");
    // the model's num_predict 3 holds when the request sets none
    let (code, r) = s.post(
        "/api/generate",
        json!({"model": "mine:v1", "prompt": "Why is the sky blue?", "stream": false}),
    );
    assert_eq!(code, 200, "{r}");
    assert!(r["eval_count"].as_u64().unwrap() <= 3, "{r}");
    assert!(!r["response"].as_str().unwrap().is_empty(), "{r}");

    // from an existing model, a new system prompt; the rest is kept
    let (code, v) = s.post(
        "/api/create",
        json!({"model": "mine:v2", "from": "mine:v1", "system": "Answer in French.", "stream": false}),
    );
    assert_eq!((code, v), (200, json!({"status": "success"})));
    let (_, show2) = s.post("/api/show", json!({"model": "mine:v2"}));
    assert_eq!(show2["system"], "Answer in French.");
    assert_eq!(show2["template"], template);
    assert_eq!(show2["parameters"], show["parameters"]);

    // errors
    let zero = format!("sha256:{}", "0".repeat(64));
    let (code, v) = s.post(
        "/api/create",
        json!({"model": "x", "files": {"x.gguf": zero}}),
    );
    assert_eq!(
        (code, v),
        (400, json!({"error": format!("blob \"{zero}\" not found")}))
    );
    let (code, v) = s.post("/api/create", json!({"model": "x"}));
    assert_eq!(
        (code, v),
        (
            400,
            json!({"error": "neither 'from' or 'files' was specified"})
        )
    );
    let (code, v) = s.post(
        "/api/create",
        json!({"model": "x", "files": {"../x.gguf": digest}}),
    );
    assert_eq!(
        (code, v),
        (400, json!({"error": "file path must be relative"}))
    );
    let (code, v) = s.post(
        "/api/create",
        json!({"model": "x", "from": "mine:v1", "quantize": "q4_K_M", "stream": false}),
    );
    assert_eq!(code, 400, "{v}");
    assert_eq!(
        v["error"], "quantization is only supported for F16 and F32 models",
        "{v}"
    );
    let (code, v) = s.post(
        "/api/create",
        json!({"model": "x", "from": "mine:v1", "parameters": {"bogus": 1}}),
    );
    assert_eq!(code, 400, "{v}");
    // a blob that is not a GGUF: refused, nothing created
    let d = protocol::Digest::of_bytes(b"not a gguf").to_string();
    assert_eq!(blob_post(&s, &d, b"not a gguf").0, 201);
    let (code, v) = s.post(
        "/api/create",
        json!({"model": "x", "files": {"x.gguf": d}, "stream": false}),
    );
    assert_eq!(code, 400, "{v}");
    let (code, lines) = s.ndjson("/api/create", json!({"model": "x", "files": {"x.gguf": d}}));
    assert_eq!(code, 200);
    assert!(lines.last().unwrap()["error"].is_string(), "{lines:?}");
    let names: Vec<_> = s.get("/api/tags")["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

/// A TCP proxy on 127.0.0.1 in front of `upstream` that passes answers on
/// at about 1.6 MB/s (16 KiB every 10 ms) and counts the bytes it passed.
struct SlowProxy {
    port: u16,
    passed: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

fn slow_proxy(upstream: u16) -> SlowProxy {
    use std::sync::atomic::{AtomicU64, Ordering};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let passed = std::sync::Arc::new(AtomicU64::new(0));
    let p = passed.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let Ok(mut u) = TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            let (mut c_in, mut u_out) = (c.try_clone().unwrap(), u.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_in, &mut u_out);
                let _ = u_out.shutdown(std::net::Shutdown::Write);
            });
            let p = p.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 << 10];
                while let Ok(n @ 1..) = u.read(&mut buf) {
                    if c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    p.fetch_add(n as u64, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = c.shutdown(std::net::Shutdown::Both);
                let _ = u.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    SlowProxy { port, passed }
}

/// A client that goes away mid-pull cancels it: the registry is read no
/// further, the partial blob is removed and no manifest is written (the
/// blobs already complete may stay, as orphans).
#[test]
fn a_client_gone_mid_pull_stops_it_and_leaves_nothing_half_done() {
    use std::sync::atomic::Ordering;
    let test = "a_client_gone_mid_pull_stops_it_and_leaves_nothing_half_done";
    let Some(model) = smol_path(test) else {
        return;
    };
    if !have_registry(test) {
        return;
    }
    let reg = docker_registry(None);
    let name = format!("{}/library/smol:gone", reg.host());
    let store = TestStore::new();
    let (code, _, err) = out3(&store.run(
        bin("model-create"),
        &[&name, "--gguf", model.to_str().unwrap()],
        b"",
    ));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = out3(&store.run(bin("model-push"), &[&name, "--insecure"], b""));
    assert_eq!(code, 0, "{err}");
    let size = std::fs::metadata(&model).unwrap().len();
    let proxy = slow_proxy(reg.port);
    let name = format!("127.0.0.1:{}/library/smol:gone", proxy.port);

    for stream in [true, false] {
        let b = start_on(TestStore::new(), &[]);
        let body = json!({"model": name, "insecure": true, "stream": stream}).to_string();
        let mut c = TcpStream::connect(("127.0.0.1", b.port)).unwrap();
        write!(
            c,
            "POST /api/pull HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let before = proxy.passed.load(Ordering::SeqCst);
        if stream {
            // wait for bytes of the weights to arrive
            let mut r = BufReader::new(c);
            let mut l = String::new();
            loop {
                l.clear();
                assert!(r.read_line(&mut l).unwrap() > 0, "no status line");
                // headers and chunk sizes besides the NDJSON lines
                let Ok(v) = serde_json::from_str::<Value>(&l) else {
                    continue;
                };
                if v["total"] == size && v["completed"].as_u64() > Some(0) {
                    break;
                }
            }
        } else {
            std::thread::sleep(Duration::from_secs(2));
            drop(c);
        }
        // the registry is read no further: the bytes passed stop growing
        let t0 = Instant::now();
        let mut last = proxy.passed.load(Ordering::SeqCst);
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let now = proxy.passed.load(Ordering::SeqCst);
            if now == last {
                break;
            }
            last = now;
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "stream {stream}: the pull goes on: {} bytes",
                now - before
            );
        }
        assert!(
            last - before < size / 2,
            "{} of {size} bytes",
            last - before
        );
        std::thread::sleep(Duration::from_millis(500));
        let st = store::Store::open(b.store.root());
        let n = store::Name::parse(&name).unwrap();
        assert!(
            st.read_manifest(&n).is_err(),
            "stream {stream}: manifest written"
        );
        let v = store::verify_all(&st, &store::VerifyOptions::default()).unwrap();
        let bad: Vec<_> = v
            .findings
            .iter()
            .filter(|f| f.kind != store::FindingKind::Orphan)
            .collect();
        assert!(bad.is_empty(), "stream {stream}: {bad:?}");
        let left: Vec<_> = std::fs::read_dir(st.blobs_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|f| !f.starts_with("sha256-") || f.ends_with("-partial"))
            .collect();
        assert!(left.is_empty(), "stream {stream}: {left:?}");
    }
}

/// The server's memory stays bounded over 1,000 requests (4 clients at
/// once on `OLLAMA_NUM_PARALLEL=4`, generate and chat alternating): its
/// resident size after all of them is within 24 MiB of what it was after
/// the first 100.
#[test]
fn memory_stays_bounded_over_1000_requests() {
    let Some(model) = smol_path("memory_stays_bounded_over_1000_requests") else {
        return;
    };
    let s = std::sync::Arc::new(start(&model, &[("OLLAMA_NUM_PARALLEL", "4")]));
    let rss = |pid: u32| -> u64 {
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = st.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    };
    let pid = s.child.id();
    let batch = |n: usize, from: usize| {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in (from + t..from + n).step_by(4) {
                        let (code, v) = if i % 2 == 0 {
                            s.post("/api/generate", greedy(&format!("Count to {i}."), 2))
                        } else {
                            s.post(
                                "/api/chat",
                                json!({"model": "smollm2:135m", "stream": false,
                                       "messages": [{"role": "user", "content": format!("Say {i}.")}],
                                       "options": {"temperature": 0, "num_predict": 2}}),
                            )
                        };
                        assert_eq!(code, 200, "request {i}: {v}");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    };
    batch(100, 0);
    let after_100 = rss(pid);
    batch(900, 100);
    let after_1000 = rss(pid);
    println!("serve RSS: {after_100} bytes after 100 requests, {after_1000} after 1000");
    assert!(
        after_1000 < after_100 + (24 << 20),
        "RSS grew from {after_100} to {after_1000} bytes"
    );
}

#[test]
fn think_tools_suffix_and_logprobs_errors_as_ollama_words_them() {
    let Some(model) = smol_path("think_tools_suffix_and_logprobs_errors_as_ollama_words_them")
    else {
        return;
    };
    let s = start(&model, &[]);
    let (code, show) = s.post("/api/show", json!({"model": "smollm2:135m"}));
    assert_eq!(code, 200);
    assert_eq!(show["capabilities"], json!(["completion"]), "{show}");
    let msgs = json!([{"role": "user", "content": "Hi"}]);
    let chat = |extra: Value| {
        let mut b = json!({"model": "smollm2:135m", "messages": msgs, "stream": false,
                           "options": {"num_predict": 1}});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        s.post("/api/chat", b)
    };
    let generate = |extra: Value| {
        let mut b = greedy("Hi", 1);
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        s.post("/api/generate", b)
    };
    let no_think = json!({"error": "\"smollm2:135m\" does not support thinking"});
    for think in [json!(true), json!("high"), json!("max")] {
        assert_eq!(chat(json!({"think": think})), (400, no_think.clone()));
        assert_eq!(generate(json!({"think": think})), (400, no_think.clone()));
    }
    // think:false is accepted everywhere; the model's own name form is kept
    assert_eq!(chat(json!({"think": false})).0, 200);
    assert_eq!(generate(json!({"think": false})).0, 200);
    let (code, v) = s.post(
        "/api/chat",
        json!({"model": "SmolLM2:135m", "messages": msgs, "think": true}),
    );
    assert_eq!(
        (code, v),
        (
            400,
            json!({"error": "\"SmolLM2:135m\" does not support thinking"})
        )
    );
    let (code, v) = chat(json!({"think": "lots"}));
    assert_eq!(code, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid think value: \"lots\""),
        "{v}"
    );
    let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
    assert_eq!(
        chat(json!({"tools": tools})),
        (
            400,
            json!({"error": "registry.ollama.ai/library/smollm2:135m does not support tools"})
        )
    );
    // an empty list of tools is no tools (ollama-python always sends one)
    assert_eq!(chat(json!({"tools": []})).0, 200);
    assert_eq!(
        generate(json!({"suffix": "world"})),
        (
            400,
            json!({"error": "registry.ollama.ai/library/smollm2:135m does not support insert"})
        )
    );
    assert_eq!(generate(json!({"suffix": ""})).0, 200);
    for n in [21, -1] {
        let top = json!({"logprobs": true, "top_logprobs": n});
        let want = json!({"error": "top_logprobs must be between 0 and 20"});
        assert_eq!(chat(top.clone()), (400, want.clone()));
        assert_eq!(generate(top), (400, want));
    }
    // OpenAI's shape, same texts
    let (code, v) = s.post(
        "/v1/chat/completions",
        json!({"model": "smollm2:135m", "messages": msgs, "tools": tools}),
    );
    assert_eq!(code, 400);
    assert_eq!(
        v["error"]["message"],
        "registry.ollama.ai/library/smollm2:135m does not support tools"
    );
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let (code, v) = s.post(
        "/v1/chat/completions",
        json!({"model": "smollm2:135m", "messages": msgs, "reasoning_effort": "high"}),
    );
    assert_eq!((code, &v["error"]["message"]), (400, &no_think["error"]));
    let (code, v) = s.post(
        "/v1/chat/completions",
        json!({"model": "smollm2:135m", "messages": msgs, "reasoning_effort": "none", "max_tokens": 1}),
    );
    assert_eq!(code, 200, "{v}");
    let (code, v) = s.post(
        "/v1/completions",
        json!({"model": "smollm2:135m", "prompt": "a", "suffix": "b"}),
    );
    assert_eq!(code, 400);
    assert_eq!(
        v["error"]["message"],
        "registry.ollama.ai/library/smollm2:135m does not support insert"
    );
}

/// Checks one token's `logprobs` entry of a greedy run with `top`
/// alternatives; its token text.
fn check_logprob(lp: &Value, top: usize) -> String {
    let token = lp["token"].as_str().unwrap().to_string();
    let p = lp["logprob"].as_f64().unwrap();
    assert!(p <= 0.0, "{lp}");
    let bytes: Vec<u8> = serde_json::from_value(lp["bytes"].clone()).unwrap();
    assert_eq!(String::from_utf8_lossy(&bytes), token, "{lp}");
    let alts = lp["top_logprobs"].as_array().unwrap();
    assert_eq!(alts.len(), top, "{lp}");
    let ps: Vec<f64> = alts
        .iter()
        .map(|a| a["logprob"].as_f64().unwrap())
        .collect();
    assert!(ps.windows(2).all(|w| w[0] >= w[1]), "sorted: {lp}");
    assert!(ps.iter().all(|&q| q <= 0.0 && q <= p + 1e-6), "{lp}");
    // greedy: the chosen token is the most likely one
    assert!((ps[0] - p).abs() < 1e-5, "{lp}");
    assert_eq!(alts[0]["token"], lp["token"], "{lp}");
    token
}

#[test]
fn logprobs_of_greedy_runs() {
    let Some(model) = smol_path("logprobs_of_greedy_runs") else {
        return;
    };
    let s = start(&model, &[]);
    let mut req = greedy("What is the capital of France?", 8);
    req["logprobs"] = json!(true);
    req["top_logprobs"] = json!(3);
    let (code, v) = s.post("/api/generate", req.clone());
    assert_eq!(code, 200, "{v}");
    let lps = v["logprobs"].as_array().unwrap();
    assert_eq!(lps.len() as u64, v["eval_count"].as_u64().unwrap(), "{v}");
    let text: String = lps.iter().map(|lp| check_logprob(lp, 3)).collect();
    assert_eq!(text, v["response"].as_str().unwrap());
    // streamed: each chunk carries its token's
    req["stream"] = json!(true);
    let (code, lines) = s.ndjson("/api/generate", req.clone());
    assert_eq!(code, 200);
    let streamed: Vec<&Value> = lines
        .iter()
        .filter_map(|l| l["logprobs"].as_array())
        .flatten()
        .collect();
    assert_eq!(streamed.len(), lps.len());
    for (a, b) in streamed.iter().zip(lps) {
        assert_eq!(a["token"], b["token"]);
        assert!((a["logprob"].as_f64().unwrap() - b["logprob"].as_f64().unwrap()).abs() < 1e-4);
    }
    // without top_logprobs: no alternatives; without logprobs: none at all
    req["stream"] = json!(false);
    req["top_logprobs"] = json!(0);
    let (_, v) = s.post("/api/generate", req.clone());
    assert!(v["logprobs"][0].get("top_logprobs").is_none(), "{v}");
    assert!(v["logprobs"][0]["logprob"].as_f64().unwrap() <= 0.0);
    let (_, v) = s.post("/api/generate", greedy("Hi", 2));
    assert!(v.get("logprobs").is_none(), "{v}");
    // chat, and OpenAI's chat
    let msgs = json!([{"role": "user", "content": "Say hello."}]);
    let (code, v) = s.post(
        "/api/chat",
        json!({"model": "smollm2:135m", "messages": msgs, "stream": false, "logprobs": true,
               "top_logprobs": 2, "options": {"temperature": 0, "num_predict": 6}}),
    );
    assert_eq!(code, 200, "{v}");
    let lps = v["logprobs"].as_array().unwrap();
    assert_eq!(lps.len() as u64, v["eval_count"].as_u64().unwrap());
    let text: String = lps.iter().map(|lp| check_logprob(lp, 2)).collect();
    assert_eq!(text, v["message"]["content"].as_str().unwrap());
    let (code, v) = s.post(
        "/v1/chat/completions",
        json!({"model": "smollm2:135m", "messages": msgs, "logprobs": true, "top_logprobs": 2,
               "max_tokens": 6, "temperature": 0}),
    );
    assert_eq!(code, 200, "{v}");
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap()
    );
    let text: String = content.iter().map(|lp| check_logprob(lp, 2)).collect();
    assert_eq!(
        text,
        v["choices"][0]["message"]["content"].as_str().unwrap()
    );
}

/// A Go template that renders tools, tool calls and results, thinking, and
/// a suffix (fill in the middle), over SmolLM2's chat format.
const TOOLS_TEMPLATE: &str = r#"{{- if .Suffix }}<|im_start|>user
Fill in the blank: {{ .Prompt }}___{{ .Suffix }}<|im_end|>
<|im_start|>assistant
{{ else }}
{{- if .Tools }}<|im_start|>system
You may call these tools by answering with JSON: {{ range .Tools }}{{ .Function.Name }} ({{ .Function.Description }}) {{ end }}<|im_end|>
{{ end }}
{{- range .Messages }}<|im_start|>{{ .Role }}
{{ if .ToolCalls }}{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ json .Function.Arguments }}}{{ end }}
{{- else }}{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}{{ end }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ end }}"#;

#[test]
fn a_template_with_tools_thinking_and_suffix() {
    let Some(model) = smol_path("a_template_with_tools_thinking_and_suffix") else {
        return;
    };
    let s = start(&model, &[]);
    let (code, v) = s.post(
        "/api/create",
        json!({"model": "tooly:v1", "from": "smollm2:135m", "template": TOOLS_TEMPLATE, "stream": false}),
    );
    assert_eq!(code, 200, "{v}");
    let (_, show) = s.post("/api/show", json!({"model": "tooly:v1"}));
    assert_eq!(
        show["capabilities"],
        json!(["completion", "tools", "insert", "thinking"]),
        "{show}"
    );
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "description": "the weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let chat = |extra: Value| {
        let mut b = json!({"model": "tooly:v1", "stream": false,
                           "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
                           "options": {"temperature": 0, "num_predict": 40}});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (code, v) = s.post("/api/chat", b);
        assert_eq!(code, 200, "{v}");
        v
    };
    // the tools are rendered into the prompt
    let plain = chat(json!({"think": false}));
    let with_tools = chat(json!({"tools": tools, "think": false}));
    let count = |v: &Value| v["prompt_eval_count"].as_u64().unwrap();
    assert!(
        count(&with_tools) > count(&plain) + 5,
        "{plain} {with_tools}"
    );
    // a thinking model thinks unless told not to; output without the tags
    // is all content, the same as with think:false
    let thinking = chat(json!({}));
    assert_eq!(thinking["message"]["content"], plain["message"]["content"]);
    assert!(thinking["message"].get("thinking").is_none(), "{thinking}");
    // a tool call, forced by a schema: parsed into message.tool_calls
    let call_schema = json!({"type": "object", "additionalProperties": false,
        "required": ["name", "arguments"],
        "properties": {"name": {"type": "string", "enum": ["get_weather"]},
                       "arguments": {"type": "object", "additionalProperties": false, "required": ["city"],
                                     "properties": {"city": {"type": "string", "maxLength": 12}}}}});
    let v = chat(json!({"tools": tools, "format": call_schema}));
    let calls = v["message"]["tool_calls"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(calls.len(), 1, "{v}");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert_eq!(calls[0]["function"]["index"], 0);
    assert!(calls[0]["function"]["arguments"]["city"].is_string(), "{v}");
    let id = calls[0]["id"].as_str().unwrap();
    assert!(id.starts_with("call_") && id.len() == 13, "{id}");
    assert_eq!(v["message"]["content"], "");
    // streamed, the call arrives in a chunk
    let mut b = json!({"model": "tooly:v1", "tools": tools, "format": call_schema,
                       "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
                       "options": {"temperature": 0, "num_predict": 40}});
    let (code, lines) = s.ndjson("/api/chat", b.clone());
    assert_eq!(code, 200);
    let streamed: Vec<&Value> = lines
        .iter()
        .filter_map(|l| l["message"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(streamed.len(), 1, "{lines:?}");
    assert_eq!(streamed[0]["function"], calls[0]["function"]);
    // OpenAI: tool_calls with arguments as a string, finish_reason tool_calls
    b["stream"] = json!(false);
    b["response_format"] =
        json!({"type": "json_schema", "json_schema": {"name": "call", "schema": call_schema}});
    b.as_object_mut().unwrap().remove("format");
    b["max_tokens"] = json!(40);
    b["temperature"] = json!(0);
    let (code, v) = s.post("/v1/chat/completions", b);
    assert_eq!(code, 200, "{v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, calls[0]["function"]["arguments"]);
    // a call and its result render as the next turn's history
    let history = json!([
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "18 degrees and sunny", "tool_name": "get_weather"}]);
    let v = chat(json!({"tools": tools, "messages": history, "think": false}));
    assert!(count(&v) > count(&with_tools) + 10, "{v}");
    let (code, v) = s.post(
        "/v1/chat/completions",
        json!({"model": "tooly:v1", "tools": tools, "max_tokens": 4, "messages": [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees"}]}),
    );
    assert_eq!(code, 200, "{v}");
    let (code, v) = s.post(
        "/v1/chat/completions",
        json!({"model": "tooly:v1", "messages": [
            {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{bad"}}]}]}),
    );
    assert_eq!(
        (code, &v["error"]["message"]),
        (400, &json!("invalid tool call arguments"))
    );
    // fill in the middle: the suffix goes through the template
    let fim = |suffix: Value| {
        let mut b = greedy("def add(a, b):", 4);
        b["model"] = json!("tooly:v1");
        b["suffix"] = suffix;
        let (code, v) = s.post("/api/generate", b);
        assert_eq!(code, 200, "{v}");
        count(&v)
    };
    assert!(
        fim(json!("    return c")) > fim(json!("")),
        "the suffix is rendered"
    );
    let (code, v) = s.post(
        "/v1/completions",
        json!({"model": "tooly:v1", "prompt": "def add(a, b):", "suffix": "    return c", "max_tokens": 2}),
    );
    assert_eq!(code, 200, "{v}");
    // a template whose prompt opens the reasoning: the output is thinking
    // until the closing tag (SmolLM2 never writes it), split as it streams
    let opens = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}\
                 {{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n<think>\n";
    let (code, v) = s.post(
        "/api/create",
        json!({"model": "opens:v1", "from": "smollm2:135m", "template": opens, "stream": false}),
    );
    assert_eq!(code, 200, "{v}");
    let ask = |think: Value, stream: bool| {
        json!({"model": "opens:v1", "think": think, "stream": stream,
               "messages": [{"role": "user", "content": "Why is the sky blue?"}],
               "options": {"temperature": 0, "num_predict": 12}})
    };
    let (_, plain) = s.post("/api/chat", ask(json!(false), false));
    let text = plain["message"]["content"].as_str().unwrap();
    assert!(
        !text.trim().is_empty() && !text.contains("</think>"),
        "{plain}"
    );
    let (_, v) = s.post("/api/chat", ask(Value::Null, false));
    assert_eq!(
        v["message"]["thinking"].as_str(),
        Some(text.trim_start()),
        "{v}"
    );
    assert_eq!(v["message"]["content"], "");
    let (_, lines) = s.ndjson("/api/chat", ask(json!(true), true));
    let streamed: String = lines
        .iter()
        .filter_map(|l| l["message"]["thinking"].as_str())
        .collect();
    assert_eq!(streamed, text.trim_start());
    let (code, v) = s.post(
        "/v1/chat/completions",
        json!({"model": "opens:v1", "max_tokens": 12, "temperature": 0,
               "messages": [{"role": "user", "content": "Why is the sky blue?"}]}),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        v["choices"][0]["message"]["reasoning"].as_str(),
        Some(text.trim_start()),
        "{v}"
    );
}

#[test]
fn load_time_options_load_a_copy_of_their_own() {
    let Some(model) = smol_path("load_time_options_load_a_copy_of_their_own") else {
        return;
    };
    let s = start(&model, &[]);
    let (code, a) = s.post("/api/generate", greedy("The capital of France is", 8));
    assert_eq!(code, 200, "{a}");
    // the server runs 1 thread, mapped: these load a second copy, once
    let mut req = greedy("The capital of France is", 8);
    req["options"]["num_thread"] = json!(2);
    req["options"]["use_mmap"] = json!(false);
    for _ in 0..2 {
        let (code, b) = s.post("/api/generate", req.clone());
        assert_eq!(code, 200, "{b}");
        assert_eq!(b["response"], a["response"], "threads change no bits");
        assert_eq!(s.get("/api/ps")["models"].as_array().unwrap().len(), 2);
    }
    // out of range or absent values are the server's: the first copy
    let mut req = greedy("The capital of France is", 8);
    req["options"]["num_thread"] = json!(0);
    req["options"]["num_gpu"] = json!(-1);
    let (code, _) = s.post("/api/generate", req);
    assert_eq!(code, 200);
    assert_eq!(s.get("/api/ps")["models"].as_array().unwrap().len(), 2);
    let mut req = greedy("Hi", 2);
    req["options"]["use_mmap"] = json!("yes");
    let (code, v) = s.post("/api/generate", req);
    assert_eq!(code, 500, "{v}");
    assert_eq!(v["error"], "option \"use_mmap\" must be of type boolean");
}

#[test]
fn create_with_quantize() {
    let Some(model) = smol_path("create_with_quantize") else {
        return;
    };
    let s = start(&model, &[]);
    let refused = |body: Value| {
        let (code, v) = s.post("/api/create", body);
        assert_eq!(code, 400, "{v}");
        v["error"].as_str().unwrap().to_string()
    };
    assert_eq!(
        refused(
            json!({"model": "q:1", "from": "smollm2:135m", "quantize": "q8_0", "stream": false})
        ),
        "quantization is only supported for F16 and F32 models"
    );
    assert_eq!(
        refused(json!({"model": "q:1", "from": "smollm2:135m", "quantize": "q9_9"})),
        "unsupported quantization type q9_9"
    );
    assert_eq!(s.get("/api/tags")["models"].as_array().unwrap().len(), 1);

    // an F16 model (SmolLM2's Q4_1 weights widened), uploaded, quantized to Q8_0
    let dir = tempfile::tempdir().unwrap();
    let f16 = dir.path().join("f16.gguf");
    let opts = engine::quantize::QuantizeOptions {
        to: engine::quantize::QuantType::parse("f16").unwrap(),
        threads: 2,
        allow_requantize: true,
    };
    engine::quantize::quantize(&model, &f16, &opts).unwrap();
    let bytes = std::fs::read(&f16).unwrap();
    let digest = protocol::Digest::of_bytes(&bytes).to_string();
    assert_eq!(blob_post(&s, &digest, &bytes).0, 201);
    drop(bytes);
    let (code, lines) = s.ndjson(
        "/api/create",
        json!({"model": "smol:q8", "files": {"f16.gguf": digest}, "quantize": "q8_0"}),
    );
    assert_eq!(code, 200, "{lines:?}");
    let st = statuses(&lines);
    assert_eq!(
        st[..2],
        ["parsing GGUF", "quantizing F16 model to Q8_0"],
        "{st:?}"
    );
    assert_eq!(
        st[st.len() - 2..],
        ["writing manifest", "success"],
        "{st:?}"
    );
    let (code, show) = s.post("/api/show", json!({"model": "smol:q8"}));
    assert_eq!(code, 200, "{show}");
    assert_eq!(show["details"]["quantization_level"], "Q8_0", "{show}");
    let mut req = greedy("The capital of France is", 4);
    req["model"] = json!("smol:q8");
    req["raw"] = json!(true);
    let (code, v) = s.post("/api/generate", req);
    assert_eq!(code, 200, "{v}");
    assert!(v["response"].as_str().unwrap().contains("Paris"), "{v}");

    // from a model: its other layers stay, its weights are quantized
    let (code, lines) = s.ndjson(
        "/api/create",
        json!({"model": "smol:f16", "files": {"f16.gguf": digest}, "system": "Be brief."}),
    );
    assert_eq!(code, 200, "{lines:?}");
    let (code, v) = s.post(
        "/api/create",
        json!({"model": "smol:q4", "from": "smol:f16", "quantize": "Q4_K_M", "stream": false}),
    );
    assert_eq!((code, v["status"].as_str()), (200, Some("success")), "{v}");
    let (code, show) = s.post("/api/show", json!({"model": "smol:q4"}));
    assert_eq!(code, 200, "{show}");
    assert_eq!(show["details"]["quantization_level"], "Q4_K_M", "{show}");
    assert_eq!(show["system"], "Be brief.");
    // nothing but blobs left behind
    for e in std::fs::read_dir(s.store.root().join("blobs")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(name.starts_with("sha256-"), "{name} left in blobs/");
    }
}

/// `think` as a level (native) and `reasoning_effort` (OpenAI, clamped to
/// Ollama's levels) reach the template's `.ThinkLevel`; plain `true` is
/// "medium". Each request unloads the model, so no prompt cache hides a
/// difference in the prompt's length.
#[test]
fn think_levels_reach_the_template() {
    let Some(model) = smol_path("think_levels_reach_the_template") else {
        return;
    };
    let s = start(&model, &[]);
    let template = "{{ if eq .ThinkLevel \"high\" }}Think hard, very hard, about every word of \
        this question before you answer it. {{ end }}{{ range .Messages }}{{ if .Thinking }}<think>\
        {{ .Thinking }}</think>{{ end }}{{ .Content }}{{ end }}";
    let (code, v) = s.post(
        "/api/create",
        json!({"model": "levels:v1", "from": "smollm2:135m", "template": template, "stream": false}),
    );
    assert_eq!(code, 200, "{v}");
    let native = |think: Value| {
        let (code, v) = s.post(
            "/api/chat",
            json!({"model": "levels:v1", "stream": false, "think": think, "keep_alive": 0,
                   "messages": [{"role": "user", "content": "Why is the sky blue?"}],
                   "options": {"num_predict": 1}}),
        );
        assert_eq!(code, 200, "{v}");
        v["prompt_eval_count"].as_u64().unwrap()
    };
    let openai = |effort: &str| {
        let (code, v) = s.post(
            "/v1/chat/completions",
            json!({"model": "levels:v1", "reasoning_effort": effort, "keep_alive": 0,
                   "max_tokens": 1,
                   "messages": [{"role": "user", "content": "Why is the sky blue?"}]}),
        );
        assert_eq!(code, 200, "{v}");
        v["usage"]["prompt_tokens"].as_u64().unwrap()
    };
    let (high, low) = (native(json!("high")), native(json!("low")));
    assert!(high > low + 10, "high {high}, low {low}");
    assert_eq!(native(json!(true)), low, "true is medium");
    assert_eq!(openai("high"), high);
    assert_eq!(openai("xhigh"), low, "xhigh is max");
}
