//! infer-worker's command line: bad input is one line and exit 2; a
//! non-loopback address is served with a loud warning.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn worker(args: &[&str]) -> (i32, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_infer-worker"))
        .args(args)
        .arg("--no-cache")
        .stdin(Stdio::null())
        .output()
        .expect("run infer-worker");
    let (code, _, err) = pipeline_tests::out3(&o);
    (code, err)
}

fn one_line_exit_2(args: &[&str], want: &str) {
    let (code, err) = worker(args);
    assert_eq!(code, 2, "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: not one line:\n{err}");
    assert!(
        err.starts_with("infer-worker: error:") && err.contains(want),
        "{args:?}: {err}"
    );
}

#[test]
fn bad_host_port_and_device() {
    one_line_exit_2(&["--host", "localhost"], "not an IPv4 address");
    one_line_exit_2(&["--host", "10.0.0.300"], "not an IPv4 address");
    one_line_exit_2(&["--port", "0"], "--port");
    one_line_exit_2(&["--threads", "0"], "--threads");
    // an address this machine does not have (TEST-NET-1)
    one_line_exit_2(&["--host", "192.0.2.1", "--port", "50999"], "cannot listen");
    one_line_exit_2(&["--device", "NoSuchDevice"], "no such device");
}

#[test]
fn port_in_use() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    one_line_exit_2(&["--port", &port], "cannot listen");
}

#[test]
fn warns_when_not_on_loopback() {
    let port = pipeline_tests::free_port().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_infer-worker"))
        .args([
            "--host",
            "0.0.0.0",
            "--port",
            &port,
            "--threads",
            "1",
            "--no-cache",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start infer-worker");
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut lines = vec![];
    let end = Instant::now() + Duration::from_secs(30);
    while !lines.iter().any(|l: &String| l.contains("WARNING")) {
        match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(l) => lines.push(l),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = lines.join("\n");
    assert!(
        text.contains("WARNING") && text.contains("no authentication"),
        "{text}"
    );
    assert!(
        text.contains(&format!("listening on 0.0.0.0:{port}")),
        "{text}"
    );
}
