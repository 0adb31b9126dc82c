//! `infer --rpc`: layers split across `infer-worker`s on 127.0.0.1 and the
//! local CPU give the local run's greedy text; a worker lost mid-run, a
//! port where nothing listens, garbage and another protocol version are each
//! one line and exit 2, never a hang or an abort.
//!
//! Needs the `infer-worker` binary beside `infer` (`cargo build --release
//! -p infer-worker`, or `--workspace --bins` as scripts/test.sh does) and the
//! real models (scripts/fetch-models.sh).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";

/// An `infer-worker` on 127.0.0.1, killed when dropped; its stderr lines
/// arrive on `lines`.
struct Worker {
    child: Child,
    port: u16,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
    _cache: tempfile::TempDir,
}

impl Worker {
    /// Starts a worker on a free port and waits (at most 30 s) until it listens.
    fn start() -> Worker {
        for _ in 0..5 {
            let port = pipeline_tests::free_port();
            let cache = tempfile::tempdir().unwrap();
            let mut child = Command::new(pipeline_tests::bin("infer-worker"))
                .args(["--port", &port.to_string(), "--threads", "1", "--cache"])
                .arg(cache.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start infer-worker");
            let (tx, lines) = mpsc::channel();
            let err = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                for l in BufReader::new(err).lines().map_while(Result::ok) {
                    let _ = tx.send(l);
                }
            });
            let mut w = Worker {
                child,
                port,
                lines,
                log: vec![],
                _cache: cache,
            };
            if w.wait_for("listening on", Duration::from_secs(30)) {
                return w;
            }
            // the port was taken between free_port and the bind: another one
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
        panic!("infer-worker did not start on any of 5 ports");
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Waits for a stderr line containing `text`; false on timeout or exit.
    fn wait_for(&mut self, text: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if self.log.iter().any(|l| l.contains(text)) {
                return true;
            }
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.log.push(l),
                Err(_) => return false,
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs infer; panics if it runs past `timeout` (a hang) after killing it.
fn infer(args: &[&str], timeout: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_infer"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run infer");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let o = std::thread::spawn(move || {
        let mut v = vec![];
        let _ = out.read_to_end(&mut v);
        v
    });
    let e = std::thread::spawn(move || {
        let mut v = vec![];
        let _ = err.read_to_end(&mut v);
        v
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "infer {args:?} still running after {timeout:?} (a hang); stderr:\n{}",
                String::from_utf8_lossy(&e.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    }
}

fn model(name: &str) -> PathBuf {
    pipeline_tests::real_model(name)
}

/// Greedy text of `prompt` (chat template unless `raw`), 32 tokens, one thread.
fn greedy(model: &Path, prompt: &str, raw: bool, extra: &[&str]) -> Output {
    let mut args = vec![
        "--model",
        model.to_str().unwrap(),
        "--engine",
        "llama.cpp",
        "-p",
        prompt,
        "-n",
        "32",
        "--temperature",
        "0",
        "--threads",
        "1",
    ];
    if raw {
        args.push("--raw");
    }
    args.extend_from_slice(extra);
    infer(&args, Duration::from_secs(300))
}

/// `flags` go to both runs.
fn split_three_ways(file: &str, flags: &[&str]) {
    let m = model(file);
    let (mut w1, mut w2) = (Worker::start(), Worker::start());
    let rpc = format!("{},{}", w1.endpoint(), w2.endpoint());
    for (prompt, raw) in [("Why is the sky blue?", false), ("Once upon a time", true)] {
        let local = greedy(&m, prompt, raw, flags);
        let (code, want, err) = pipeline_tests::out3(&local);
        assert_eq!(code, 0, "local run of {file}: {err}");
        let mut split_flags = vec!["--rpc", &rpc, "--tensor-split", "1,1,1"];
        split_flags.extend_from_slice(flags);
        let split = greedy(&m, prompt, raw, &split_flags);
        let (code, got, err) = pipeline_tests::out3(&split);
        assert_eq!(code, 0, "split run of {file}: {err}");
        let notice = err
            .lines()
            .find(|l| l.contains("splitting") && l.contains("over RPC"))
            .unwrap_or_else(|| panic!("no split notice:\n{err}"));
        // every side holds some layers: "N on the local CPU, N on A (RPC0), N on B (RPC1)"
        let (_, parts) = notice.split_once("over RPC: ").unwrap();
        for part in parts.split(';').next().unwrap().split(", ") {
            let n: usize = part.split(' ').next().unwrap().parse().unwrap();
            assert!(n > 0, "{part} in {notice}");
        }
        assert!(
            notice.contains(&w1.endpoint()) && notice.contains(&w2.endpoint()),
            "{notice}"
        );
        assert!(!want.trim().is_empty());
        pipeline_tests::assert_text_eq(&want, &got);
    }
    for w in [&mut w1, &mut w2] {
        assert!(
            w.wait_for("connection from 127.0.0.1:", Duration::from_secs(5)),
            "worker logged no connection: {:?}",
            w.log
        );
    }
}

#[test]
fn rpc_smollm2_split_three_ways_matches_local() {
    // Q4_1: no weight the CPU backend repacks, so the default run compares
    split_three_ways(SMOLLM2, &[]);
}

#[test]
fn rpc_gemma3_split_three_ways_matches_local() {
    // Q4_K weights are repacked on the local CPU by default and never on a
    // worker (ggml's RPC server allocates plain CPU buffers), and repacked
    // kernels add in another order: the same bits need --no-repack on both
    split_three_ways(GEMMA3, &["--no-repack"]);
}

#[test]
fn rpc_worker_killed_mid_generation_is_one_line_exit_2() {
    let m = model(SMOLLM2);
    let (w1, mut w2) = (Worker::start(), Worker::start());
    let rpc = format!("{},{}", w1.endpoint(), w2.endpoint());
    let mut child = Command::new(env!("CARGO_BIN_EXE_infer"))
        .args([
            "--model",
            m.to_str().unwrap(),
            "--engine",
            "llama.cpp",
            "--raw",
        ])
        .args([
            "-p",
            "Once upon a time",
            "-n",
            "100000",
            "--ignore-eos",
            "--ctx",
            "4096",
        ])
        .args(["--temperature", "0", "--threads", "1", "--rpc", &rpc])
        .args(["--tensor-split", "1,1,1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run infer");
    // wait for generated text, then kill the second worker
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(n).is_err() {
                break;
            }
        }
    });
    let mut got = 0;
    let t0 = Instant::now();
    while got < 40 {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(n) => got += n,
            Err(_) => {
                let _ = child.kill();
                panic!("no text within {:?}", t0.elapsed());
            }
        }
    }
    w2.kill();
    let killed = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if killed.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("infer still running 20 s after its worker died (a hang)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = killed.elapsed();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(2), "status {status:?}, stderr:\n{err}");
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("infer: error:") && last.contains("RPC"),
        "last stderr line: {last:?}\n{err}"
    );
    // the worker that died is named; the live one is not
    assert!(
        last.contains(&format!("RPC worker {} no longer answers", w2.endpoint())),
        "{last}"
    );
    assert!(!last.contains(&w1.endpoint()), "{last}");
    assert!(
        !err.contains("backtrace") && !err.contains("panicked"),
        "{err}"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "took {elapsed:?} to notice"
    );
}

/// `infer --rpc ENDPOINT` on SmolLM2: exit 2 and exactly one stderr line,
/// containing each of `want`.
fn refused(endpoint: &str, want: &[&str]) {
    let m = model(SMOLLM2);
    let o = infer(
        &[
            "--model",
            m.to_str().unwrap(),
            "-p",
            "Hi",
            "-n",
            "4",
            "--rpc",
            endpoint,
        ],
        Duration::from_secs(30),
    );
    let (code, out, err) = pipeline_tests::out3(&o);
    assert_eq!(code, 2, "stdout {out:?}, stderr:\n{err}");
    assert_eq!(err.lines().count(), 1, "not one line:\n{err}");
    assert!(err.starts_with("infer: error:"), "{err}");
    for w in want {
        assert!(err.contains(w), "{w:?} not in {err}");
    }
}

/// A server on 127.0.0.1 that answers every connection's first bytes with
/// `reply`, then closes it.
fn fake_worker(reply: Vec<u8>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            let mut req = [0u8; 33];
            let _ = s.read_exact(&mut req);
            let _ = s.write_all(&reply);
        }
    });
    addr
}

#[test]
fn rpc_port_where_nothing_listens() {
    let port = pipeline_tests::free_port();
    let ep = format!("127.0.0.1:{port}");
    refused(&ep, &[&ep, "cannot connect"]);
}

#[test]
fn rpc_garbage_from_the_socket() {
    let ep = fake_worker(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".to_vec());
    refused(&ep, &[&ep, "not ggml RPC"]);
    let ep = fake_worker(vec![]);
    refused(&ep, &[&ep, "closed the connection"]);
}

#[test]
fn rpc_incompatible_protocol_version() {
    let [major, minor, _] = ggml::rpc::RPC_PROTO;
    // a newer major version, in today's hello format
    let mut next = 28u64.to_le_bytes().to_vec();
    next.extend_from_slice(&[major + 1, 0, 0, 0]);
    next.extend_from_slice(&[0; 24]);
    let ep = fake_worker(next);
    refused(&ep, &[&ep, &format!("protocol {}.0.0", major + 1)]);
    // an older worker (protocol 3: a three-byte hello answer)
    let mut old = 3u64.to_le_bytes().to_vec();
    old.extend_from_slice(&[3, 0, 0]);
    let ep = fake_worker(old);
    refused(&ep, &[&ep, "protocol 3.0.0", &format!("{major}.{minor}")]);
}

#[test]
fn rpc_refuses_the_native_engine_and_bad_addresses() {
    let m = model(SMOLLM2);
    let run = |extra: &[&str]| {
        let mut a = vec!["--model", m.to_str().unwrap(), "-p", "Hi", "-n", "4"];
        a.extend_from_slice(extra);
        pipeline_tests::out3(&infer(&a, Duration::from_secs(30)))
    };
    let (code, _, err) = run(&["--engine", "native", "--rpc", "127.0.0.1:1"]);
    assert_eq!((code, err.lines().count()), (2, 1), "{err}");
    assert!(err.contains("--rpc runs on llama.cpp's engine"), "{err}");
    let (code, _, err) = run(&["--rpc", "127.0.0.1"]);
    assert_eq!((code, err.lines().count()), (2, 1), "{err}");
    assert!(err.contains("not HOST:PORT"), "{err}");
}
