//! Test helpers: a fault-injecting HTTP server and a real docker-registry,
//! both on 127.0.0.1 only, plus a model written straight into a store.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::{media, Digest, Name};

// ---- fault-injecting server ----

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// `Range: bytes=a-b` → (a, b).
    pub fn range(&self) -> Option<(u64, u64)> {
        let r = self.header("range")?.strip_prefix("bytes=")?;
        let (a, b) = r.split_once('-')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    }
}

/// The connection a handler answers on; counts body bytes written.
pub struct Conn {
    pub stream: TcpStream,
    pub sent: Arc<AtomicU64>,
}

impl Conn {
    pub fn head(&mut self, status: u16, headers: &[(&str, String)]) {
        let mut h = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
        for (k, v) in headers {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
        h.push_str("\r\n");
        let _ = self.stream.write_all(h.as_bytes());
    }
    /// Writes body bytes; false once the peer is gone.
    pub fn body(&mut self, b: &[u8]) -> bool {
        let ok = self.stream.write_all(b).is_ok();
        if ok {
            self.sent.fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        ok
    }
    /// A full response with Content-Length.
    pub fn respond(&mut self, status: u16, headers: &[(&str, String)], body: &[u8]) {
        let mut h: Vec<(&str, String)> = headers.to_vec();
        h.push(("Content-Length", body.len().to_string()));
        self.head(status, &h);
        self.body(body);
    }
    /// Closes with a TCP reset (SO_LINGER 0).
    pub fn reset(self) {
        let l = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on our own socket with a correctly sized struct.
        unsafe {
            libc::setsockopt(
                self.stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &l as *const libc::linger as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
        drop(self.stream);
    }
    /// Serves `data` honouring a Range header (206) or whole (200).
    pub fn blob(&mut self, req: &Req, data: &[u8]) {
        match req.range() {
            Some((a, b)) if (a as usize) < data.len() => {
                let b = b.min(data.len() as u64 - 1);
                let cr = format!("bytes {a}-{b}/{}", data.len());
                self.respond(
                    206,
                    &[("Content-Range", cr)],
                    &data[a as usize..=b as usize],
                );
            }
            Some(_) => self.respond(416, &[], b""),
            None => self.respond(200, &[], data),
        }
    }
}

type Handler = dyn Fn(&Req, Conn) + Send + Sync;

pub struct FaultServer {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<Req>>>,
    pub sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl FaultServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn requests(&self) -> Vec<Req> {
        self.log.lock().unwrap().clone()
    }
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

/// Starts a server on 127.0.0.1:0; each connection gets one request.
pub fn serve(handler: impl Fn(&Req, Conn) + Send + Sync + 'static) -> FaultServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let handler: Arc<Handler> = Arc::new(handler);
    let (log2, sent2, stop2) = (log.clone(), sent.clone(), stop.clone());
    std::thread::spawn(move || {
        for s in listener.incoming() {
            if stop2.load(Ordering::SeqCst) {
                break;
            }
            let Ok(stream) = s else { continue };
            let (h, log, sent) = (handler.clone(), log2.clone(), sent2.clone());
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let Some(req) = read_request(&stream) else {
                    return;
                };
                log.lock().unwrap().push(req.clone());
                h(&req, Conn { stream, sent });
            });
        }
    });
    FaultServer {
        addr,
        log,
        sent,
        stop,
    }
}

fn read_request(stream: &TcpStream) -> Option<Req> {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut it = line.split_whitespace();
    let (method, path) = (it.next()?.to_string(), it.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).ok()?;
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut req = Req {
        method,
        path,
        headers,
        body: Vec::new(),
    };
    let len: usize = req
        .header("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    req.body = body;
    Some(req)
}

// ---- manifests and stores ----

/// Deterministic pseudo-random bytes.
pub fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// An Ollama-style manifest for a config and layers (media type, bytes).
pub fn manifest_for(config: &[u8], layers: &[(&str, &[u8])]) -> String {
    let desc = |mt: &str, b: &[u8]| {
        format!(
            r#"{{"mediaType":"{mt}","digest":"{}","size":{}}}"#,
            Digest::of_bytes(b),
            b.len()
        )
    };
    let ls: Vec<String> = layers.iter().map(|(mt, b)| desc(mt, b)).collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{},"layers":[{}]}}"#,
        media::DOCKER_MANIFEST,
        desc(media::DOCKER_CONFIG, config),
        ls.join(",")
    )
}

/// A model written straight into a store: blobs and manifest.
pub fn put_model(
    store: &store::Store,
    name: &Name,
    config: &[u8],
    layers: &[(&str, &[u8])],
) -> String {
    store.write_blob(config).unwrap();
    for (_, b) in layers {
        store.write_blob(b).unwrap();
    }
    let m = manifest_for(config, layers);
    store.write_manifest(name, m.as_bytes()).unwrap();
    m
}

/// Every file under `dir`, relative.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

// ---- docker-registry ----

#[allow(unused_imports)]
pub use pipeline_tests::{docker_registry, docker_registry_with, free_port, DockerRegistry};

// ---- a TLS server with a self-signed certificate ----

/// `openssl s_server` on 127.0.0.1 with a fresh self-signed certificate
/// (valid for IP 127.0.0.1, so the only fault is the unknown issuer).
/// Killed on drop.
pub struct TlsServer {
    pub port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl TlsServer {
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn self_signed_tls_server() -> TlsServer {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=llpipe-test"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| {
            panic!("the TLS tests need the openssl command (apt-get install -y openssl): {e}")
        });
    assert!(made.success(), "openssl req failed");
    for _ in 0..5 {
        let port = free_port();
        let mut child = Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return TlsServer {
                    port,
                    child,
                    _dir: dir,
                };
            }
            if child.try_wait().unwrap().is_some() {
                break; // port taken meanwhile: try another
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("openssl s_server did not start");
}
