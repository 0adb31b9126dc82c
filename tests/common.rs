//! Helpers shared by the golden CLI tests of every tool and the pipeline
//! tests in this folder: a tiny GGUF writer, a temp store, and a runner for
//! the workspace's binaries.
#![allow(clippy::missing_panics_doc)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A value in GGUF metadata, for [`tiny_gguf`].
pub enum Kv<'a> {
    /// GGUF type 4.
    U32(u32),
    /// GGUF type 6.
    F32(f32),
    /// GGUF type 8.
    Str(&'a str),
}

/// A minimal valid GGUF v3 file: the given metadata plus one F32 tensor
/// `token_embd.weight` of `[n_embd, n_vocab]` filled with a ramp.
pub fn tiny_gguf(kvs: &[(&str, Kv)], n_embd: u64, n_vocab: u64) -> Vec<u8> {
    fn s(out: &mut Vec<u8>, v: &str) {
        out.extend((v.len() as u64).to_le_bytes());
        out.extend(v.as_bytes());
    }
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend(1u64.to_le_bytes());
    out.extend((kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        s(&mut out, k);
        match v {
            Kv::U32(x) => {
                out.extend(4u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Kv::F32(x) => {
                out.extend(6u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Kv::Str(x) => {
                out.extend(8u32.to_le_bytes());
                s(&mut out, x);
            }
        }
    }
    s(&mut out, "token_embd.weight");
    out.extend(2u32.to_le_bytes());
    out.extend(n_embd.to_le_bytes());
    out.extend(n_vocab.to_le_bytes());
    out.extend(0u32.to_le_bytes()); // F32
    out.extend(0u64.to_le_bytes()); // offset
    while out.len() % 32 != 0 {
        out.push(0);
    }
    for i in 0..n_embd * n_vocab {
        out.extend((i as f32 * 0.01).to_le_bytes());
    }
    out
}

/// A tiny llama-architecture GGUF (file type F32, 4×8 parameters).
pub fn tiny_llama() -> Vec<u8> {
    tiny_gguf(
        &[
            ("general.architecture", Kv::Str("llama")),
            ("general.name", Kv::Str("tiny")),
            ("general.file_type", Kv::U32(0)),
            ("llama.context_length", Kv::U32(128)),
            ("llama.embedding_length", Kv::U32(4)),
        ],
        4,
        8,
    )
}

/// The folder holding the workspace's binaries (`target/debug` or
/// `target/release`), found from this test binary's own path
/// (`target/<profile>/deps/<test>`), since `CARGO_BIN_EXE_*` only covers
/// binaries of the same package.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("deps folder");
    deps.parent().expect("profile folder").to_path_buf()
}

/// Path of a workspace binary; panics with a clear message when it has
/// not been built (`cargo build --workspace --bins` first, as scripts/test.sh does).
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is not built: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        p.display()
    );
    p
}

/// A temporary store and a runner that points every tool at it.
pub struct TestStore {
    /// Keeps the folder alive.
    pub dir: tempfile::TempDir,
}

impl Default for TestStore {
    fn default() -> Self {
        Self::new()
    }
}

impl TestStore {
    /// A new empty store in a temp folder.
    pub fn new() -> TestStore {
        TestStore {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// The store root (`$OLLAMA_MODELS`).
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Runs a binary (by path or workspace name) with `OLLAMA_MODELS` set to this store.
    pub fn run(&self, exe: impl AsRef<Path>, args: &[&str], stdin: &[u8]) -> Output {
        let exe = exe.as_ref();
        let exe = if exe.components().count() == 1 {
            bin(&exe.to_string_lossy())
        } else {
            exe.to_path_buf()
        };
        let mut child = Command::new(&exe)
            .args(args)
            .env("OLLAMA_MODELS", self.root())
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", exe.display()));
        let mut input = child.stdin.take().expect("stdin");
        let data = stdin.to_vec();
        let feeder = std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let out = child.wait_with_output().expect("waiting for child");
        feeder.join().expect("stdin feeder");
        out
    }

    /// Every file under the store, relative, sorted (to assert nothing was written).
    pub fn files(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![self.root().to_path_buf()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() && !p.is_symlink() {
                    stack.push(p);
                } else {
                    out.push(
                        p.strip_prefix(self.root())
                            .unwrap()
                            .to_string_lossy()
                            .into_owned(),
                    );
                }
            }
        }
        out.sort();
        out
    }
}

/// Writes a blob by hand as Ollama stores it; returns its digest.
pub fn put_blob(root: &Path, bytes: &[u8]) -> protocol::Digest {
    let d = protocol::Digest::of_bytes(bytes);
    std::fs::create_dir_all(root.join("blobs")).unwrap();
    std::fs::write(root.join("blobs").join(d.blob_file_name()), bytes).unwrap();
    d
}

/// Lays out a model by hand, byte for byte as Ollama writes one (manifest
/// under `manifests/<name_path>`, config, model, template and params blobs);
/// returns the manifest bytes.
pub fn ollama_layout(root: &Path, name_path: &str, model: &[u8], template: &str) -> Vec<u8> {
    let m = put_blob(root, model);
    let t = put_blob(root, template.as_bytes());
    let p = put_blob(root, br#"{"stop":["<|im_end|>"]}"#);
    let config = format!(
        r#"{{"model_format":"gguf","model_family":"llama","model_families":["llama"],"model_type":"135M","file_type":"Q4_1","architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{m}","{t}","{p}"]}}}}"#
    );
    let c = put_blob(root, config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{c}","size":{}}},"layers":[{{"mediaType":"application/vnd.ollama.image.model","digest":"{m}","size":{}}},{{"mediaType":"application/vnd.ollama.image.template","digest":"{t}","size":{}}},{{"mediaType":"application/vnd.ollama.image.params","digest":"{p}","size":23}}]}}"#,
        config.len(),
        model.len(),
        template.len()
    );
    let path = root.join("manifests").join(name_path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &manifest).unwrap();
    manifest.into_bytes()
}

/// One golden CLI test: runs `$tool $args` with `$stdin` on a fresh store
/// holding the hand-laid model `tiny:latest` (see [`ollama_layout`]), and
/// compares exit code and stdout (with the store root written `$STORE`).
#[macro_export]
macro_rules! golden {
    ($name:ident, $tool:expr, [$($arg:expr),*], $stdin:expr => $code:expr, $stdout:expr) => {
        #[test]
        fn $name() {
            let t = $crate::TestStore::new();
            $crate::ollama_layout(t.root(), "registry.ollama.ai/library/tiny/latest", &$crate::tiny_llama(), "{{ .Prompt }}");
            let o = t.run($crate::bin($tool), &[$($arg),*], $stdin.as_bytes());
            let (code, stdout, stderr) = $crate::out3(&o);
            let stdout = stdout.replace(&t.root().display().to_string(), "$STORE");
            $crate::assert_text_eq($stdout, &stdout);
            assert_eq!(code, $code, "exit code; stderr: {stderr}");
        }
    };
}

/// Asserts equality, printing expected and got between rules on failure.
#[track_caller]
pub fn assert_text_eq(expected: &str, got: &str) {
    if expected != got {
        panic!("\n---- expected ----\n{expected}\n---- got ----\n{got}\n------------------");
    }
}

/// The exit code, stdout and stderr of an output, as a string triple.
pub fn out3(o: &Output) -> (i32, String, String) {
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Where the real models are cached (scripts/fetch-models.sh puts them there).
pub fn models_dir() -> PathBuf {
    match std::env::var_os("LLPIPE_MODELS_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/llpipe/models"),
    }
}

/// Path of a real model file; panics clearly when scripts/fetch-models.sh has not run.
pub fn real_model(file: &str) -> PathBuf {
    let p = models_dir().join(file);
    assert!(
        p.exists(),
        "{} missing: run scripts/fetch-models.sh",
        p.display()
    );
    p
}

// ---- docker-registry (shared with libs/registry tests) ----

/// A docker-registry process on 127.0.0.1, killed when dropped.
pub struct DockerRegistry {
    /// The process.
    pub child: Child,
    /// Its port.
    pub port: u16,
    /// Config and storage.
    pub dir: tempfile::TempDir,
}

impl DockerRegistry {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts /usr/bin/docker-registry on 127.0.0.1 with storage in a temp dir;
/// with `htpasswd = Some((user, password))` it requires Basic auth.
pub fn docker_registry(htpasswd: Option<(&str, &str)>) -> DockerRegistry {
    docker_registry_with(htpasswd, None)
}

/// As [`docker_registry`], with `auth_yaml` as the `auth:` section (token auth).
pub fn docker_registry_with(
    htpasswd: Option<(&str, &str)>,
    auth_yaml: Option<String>,
) -> DockerRegistry {
    let bin = "/usr/bin/docker-registry";
    assert!(
        Path::new(bin).exists(),
        "{bin} missing: apt-get install -y docker-registry (see shared/REGISTRY.md)"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut auth = auth_yaml.unwrap_or_default();
    if let Some((u, p)) = htpasswd {
        let out = Command::new("htpasswd")
            .args(["-Bbn", u, p])
            .output()
            .expect("htpasswd (apache2-utils) installed");
        assert!(out.status.success());
        let hp = dir.path().join("htpasswd");
        std::fs::write(&hp, out.stdout).unwrap();
        auth = format!(
            "auth:\n  htpasswd:\n    realm: llpipe-test\n    path: {}\n",
            hp.display()
        );
    }
    let cfg = format!(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
        dir.path().join("data").display()
    );
    let cp = dir.path().join("config.yml");
    std::fs::write(&cp, cfg).unwrap();
    let child = Command::new(bin)
        .arg("serve")
        .arg(&cp)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let reg = DockerRegistry { child, port, dir };
    let t0 = Instant::now();
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut buf = [0u8; 12];
            if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1") {
                return reg;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "docker-registry did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
