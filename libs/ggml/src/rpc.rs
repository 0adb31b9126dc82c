//! ggml's RPC backend (`ggml/src/ggml-rpc`): a worker serves its backend
//! over TCP ([`serve`]), a client adds the workers' devices ([`connect`])
//! for llama.cpp's scheduler to split a model's layers across.
//!
//! ggml's client ends the process with `GGML_ABORT` on any socket error
//! (a worker that cannot be reached, answers garbage or another protocol
//! version, or dies mid-run). So [`connect`] first checks each worker
//! itself with the protocol's hello handshake ([`probe`]) and turns what it
//! finds into an error; and it installs an abort callback that prints one
//! line and exits 2 ([`exit_on_abort`]) for a worker lost later, when no
//! error can be returned through ggml's `void` calls.
//!
//! The protocol has no authentication: anyone who can reach a worker can
//! allocate its memory and run graphs on it. [`serve`] binds where it is
//! told; its caller warns when that is not loopback.
//!
//! ```no_run
//! let workers = ggml::rpc::connect(&["127.0.0.1:50052".to_string()])?;
//! for w in &workers {
//!     println!("{} {} MiB free", w.endpoint, w.memory().0 >> 20);
//! }
//! # Ok::<(), ggml::Error>(())
//! ```

use std::ffi::{c_char, CString};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use llama_cpp_sys_2 as sys;

use crate::{cstr, Error, ErrorKind};

include!(concat!(env!("OUT_DIR"), "/rpc_proto.rs"));

/// `RPC_CMD_HELLO`: fixed at 14 in every protocol version (ggml-rpc.cpp
/// asserts it), so any worker can be asked its version.
const CMD_HELLO: u8 = 14;
/// `RPC_CONN_CAPS_SIZE`: transport capabilities in the hello (all zero:
/// plain TCP, no RDMA).
const CONN_CAPS: usize = 24;
/// How long a worker has to accept and answer the hello.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

fn rpc_err<T>(endpoint: &str, what: impl Into<String>) -> Result<T, Error> {
    Err(Error {
        kind: ErrorKind::Rpc(endpoint.to_string(), what.into()),
    })
}

// ---- endpoints ----

/// Checks a worker address as ggml's client takes it: `HOST:PORT`, the host
/// an IPv4 address or a name (ggml splits at the first `:`, so no IPv6
/// literal), the port 1–65535.
pub fn check_endpoint(endpoint: &str) -> Result<(), Error> {
    let Some((host, port)) = endpoint.split_once(':') else {
        return rpc_err(endpoint, "not HOST:PORT");
    };
    if host.is_empty() || port.contains(':') {
        return rpc_err(
            endpoint,
            "not HOST:PORT (an IPv4 address or a name; ggml's RPC has no IPv6)",
        );
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => rpc_err(endpoint, format!("port {port:?} is not 1-65535")),
    }
}

/// The protocol version a worker announces in its hello answer, or why it
/// has none: a connection refused, closed, silent, or bytes that are not
/// ggml RPC. Does not check that the version is ours ([`connect`] does).
pub fn probe(endpoint: &str, timeout: Duration) -> Result<[u8; 3], Error> {
    check_endpoint(endpoint)?;
    let addrs: Vec<SocketAddr> = match endpoint.to_socket_addrs() {
        Ok(a) => a.filter(SocketAddr::is_ipv4).collect(),
        Err(e) => return rpc_err(endpoint, format!("cannot resolve: {e}")),
    };
    let Some(addr) = addrs.first() else {
        return rpc_err(endpoint, "has no IPv4 address");
    };
    let mut s = match TcpStream::connect_timeout(addr, timeout) {
        Ok(s) => s,
        Err(e) => return rpc_err(endpoint, format!("cannot connect: {e}")),
    };
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Error {
            kind: ErrorKind::Rpc(
                endpoint.to_string(),
                format!(
                    "no answer to the hello within {}s (not a ggml RPC worker, or \
                     busy: a worker serves one client at a time)",
                    timeout.as_secs()
                ),
            ),
        },
        std::io::ErrorKind::UnexpectedEof => Error {
            kind: ErrorKind::Rpc(
                endpoint.to_string(),
                format!(
                    "closed the connection during the hello (not a ggml RPC worker \
                     of protocol {}.x?)",
                    RPC_PROTO[0]
                ),
            ),
        },
        _ => Error {
            kind: ErrorKind::Rpc(endpoint.to_string(), format!("hello failed: {e}")),
        },
    };
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    // request: | cmd: u8 | size: u64 LE | conn_caps: [u8; 24] |
    let mut req = vec![CMD_HELLO];
    req.extend_from_slice(&(CONN_CAPS as u64).to_le_bytes());
    req.extend_from_slice(&[0; CONN_CAPS]);
    s.write_all(&req).map_err(io)?;
    // answer: | size: u64 LE | major, minor, patch, pad: u8 | conn_caps |
    let mut size = [0u8; 8];
    s.read_exact(&mut size).map_err(io)?;
    let size = u64::from_le_bytes(size);
    let mut body = vec![0u8; 4 + CONN_CAPS];
    match size {
        // protocols before the transport negotiation answered three bytes
        3 => {
            s.read_exact(&mut body[..3]).map_err(io)?;
            Ok([body[0], body[1], body[2]])
        }
        n if n == body.len() as u64 => {
            s.read_exact(&mut body).map_err(io)?;
            Ok([body[0], body[1], body[2]])
        }
        n => rpc_err(
            endpoint,
            format!(
                "answered the hello with a {n}-byte message, not ggml RPC (garbage from the socket?)"
            ),
        ),
    }
}

/// Whether a worker announcing `v` can serve this build's client: the same
/// major version and a minor version no newer than ours (ggml's rule).
pub fn compatible(v: [u8; 3]) -> bool {
    v[0] == RPC_PROTO[0] && v[1] <= RPC_PROTO[1]
}

// ---- the client ----

/// A device a worker serves, added to this process's ggml (not to its
/// registry's device list: it goes to llama.cpp by name, so that nothing
/// that enumerates local GPUs finds it).
#[derive(Clone, Copy)]
pub struct Worker {
    /// The worker's `HOST:PORT`.
    pub endpoint: &'static str,
    raw: sys::ggml_backend_dev_t,
}

// SAFETY: a device handle is an immutable entry that ggml-rpc keeps for the
// life of the process (its `add_server` caches it per endpoint).
unsafe impl Send for Worker {}
// SAFETY: as above.
unsafe impl Sync for Worker {}

impl Worker {
    /// ggml's handle, for `llama_model_params.devices`.
    pub fn raw(&self) -> sys::ggml_backend_dev_t {
        self.raw
    }
    /// ggml's name for the device (`RPC0`, `RPC1`…).
    pub fn name(&self) -> String {
        // SAFETY: live device; ggml returns a string it owns.
        unsafe { cstr(sys::ggml_backend_dev_name(self.raw)) }
    }
    /// Free and total memory of the worker's device, in bytes (asked over
    /// the connection).
    pub fn memory(&self) -> (usize, usize) {
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: live device; two out-parameters.
        unsafe { sys::ggml_backend_dev_memory(self.raw, &mut free, &mut total) };
        (free, total)
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Worker({} {})", self.name(), self.endpoint)
    }
}

/// The RPC backend's registry entry; an error when ggml was built without it.
fn rpc_reg() -> Result<sys::ggml_backend_reg_t, Error> {
    // SAFETY: registry lookup by a NUL-terminated name; null when absent.
    let reg = unsafe { sys::ggml_backend_reg_by_name(c"RPC".as_ptr()) };
    if reg.is_null() {
        return Err(Error {
            kind: ErrorKind::Backend(
                "RPC (not in this build: a ggml built before .cargo/config.toml set \
                 GGML_RPC=ON stays without it; run `cargo clean -p llama-cpp-sys-2` and build again)"
                    .into(),
            ),
        });
    }
    Ok(reg)
}

/// A function of the RPC backend, by name (ggml hands them out as `void *`).
fn proc_address(name: &std::ffi::CStr) -> Result<*mut std::ffi::c_void, Error> {
    let reg = rpc_reg()?;
    // SAFETY: live registry entry; NUL-terminated name; null when unknown.
    let f = unsafe { sys::ggml_backend_reg_get_proc_address(reg, name.as_ptr()) };
    if f.is_null() {
        return Err(Error {
            kind: ErrorKind::Backend(format!("RPC (no {name:?})")),
        });
    }
    Ok(f)
}

/// The workers this process has connected to, in order.
static KNOWN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Connects to each worker and returns its devices, in order. Each worker
/// is first asked its version ([`probe`]): one that cannot be reached,
/// answers garbage or speaks another major version (or a newer minor one)
/// is an error naming it, before ggml (which would abort) sees it. Also
/// installs [`exit_on_abort`], for a worker lost later.
pub fn connect(endpoints: &[String]) -> Result<Vec<Worker>, Error> {
    type AddServer = unsafe extern "C" fn(*const c_char) -> sys::ggml_backend_reg_t;
    let add = proc_address(c"ggml_backend_rpc_add_server")?;
    // SAFETY: ggml-rpc.h declares `ggml_backend_reg_t
    // ggml_backend_rpc_add_server(const char * endpoint)`, the function this
    // name resolves to.
    let add: AddServer = unsafe { std::mem::transmute::<*mut std::ffi::c_void, AddServer>(add) };
    // a worker this process already uses is not asked again: it serves one
    // client at a time, and that client is us (a server loading a second
    // model); ggml reuses its connection
    let known = KNOWN.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for e in endpoints.iter().filter(|e| !known.contains(e)) {
        let v = probe(e, PROBE_TIMEOUT)?;
        if !compatible(v) {
            return rpc_err(
                e,
                format!(
                    "speaks ggml RPC protocol {}.{}.{}, this build {}.{}.{} \
                     (run an infer-worker of the same llpipe version)",
                    v[0], v[1], v[2], RPC_PROTO[0], RPC_PROTO[1], RPC_PROTO[2]
                ),
            );
        }
    }
    exit_on_abort();
    let mut out = vec![];
    for e in endpoints {
        let c = CString::new(e.as_str()).or_else(|_| rpc_err(e, "has a NUL byte"))?;
        // SAFETY: a NUL-terminated endpoint that passed the hello; ggml copies
        // it. A worker lost since the probe aborts, which exit_on_abort
        // turns into one line and exit 2.
        let reg = unsafe { add(c.as_ptr()) };
        if reg.is_null() {
            return rpc_err(e, "serves no device");
        }
        // ggml keeps the endpoint string for the life of the process, and so do we
        let endpoint: &'static str = Box::leak(e.clone().into_boxed_str());
        // SAFETY: a live registry entry that ggml-rpc keeps forever.
        let n = unsafe { sys::ggml_backend_reg_dev_count(reg) };
        if n == 0 {
            return rpc_err(e, "serves no device");
        }
        // ggml connects per use and hangs up when nothing holds the
        // connection (a dozen connections before the first token); a backend
        // kept for the life of the process holds one open, which every
        // later call shares
        // SAFETY: device 0 of a live entry; a null backend is allowed (then
        // ggml connects per use, as without this).
        let _held = unsafe {
            sys::ggml_backend_dev_init(sys::ggml_backend_reg_dev_get(reg, 0), std::ptr::null())
        };
        for i in 0..n {
            // SAFETY: i < the entry's device count.
            let raw = unsafe { sys::ggml_backend_reg_dev_get(reg, i) };
            out.push(Worker { endpoint, raw });
        }
        let mut k = KNOWN.lock().unwrap_or_else(|p| p.into_inner());
        if !k.contains(e) {
            k.push(e.clone());
        }
    }
    Ok(out)
}

/// Makes ggml's `GGML_ABORT` (e.g. ggml-rpc's "Remote RPC server crashed or
/// returned malformed response" when a worker dies mid-run) print one line
/// on stderr, `TOOL: error: ggml: MESSAGE`, and exit 2 at once, from
/// whichever thread aborts, instead of a core dump. Nothing is unwound or
/// flushed: the process cannot go on (ggml's call never returns).
pub fn exit_on_abort() {
    unsafe extern "C" fn on_abort(msg: *const c_char) {
        let text = if msg.is_null() {
            String::new()
        } else {
            // SAFETY: ggml passes its NUL-terminated message buffer.
            unsafe { std::ffi::CStr::from_ptr(msg) }
                .to_string_lossy()
                .into_owned()
        };
        // drop ggml's "path/file.cpp:123: " prefix; keep one line
        let text = match text.split_once(": ") {
            Some((loc, rest)) if loc.contains(".c") => rest,
            _ => text.as_str(),
        };
        let text = text.trim().replace('\n', " ");
        let tool = std::env::args()
            .next()
            .and_then(|a| {
                Path::new(&a)
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "llpipe".into());
        let hint = if text.contains("RPC") {
            // name the worker that no longer accepts connections, if one
            // does not (a live one accepts, even while it serves us)
            let known = KNOWN.try_lock().map(|k| k.clone()).unwrap_or_default();
            let gone: Vec<String> = known
                .into_iter()
                .filter(|e| {
                    let addr = e.to_socket_addrs().ok().and_then(|mut a| a.next());
                    addr.is_none_or(|a| {
                        TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_err()
                    })
                })
                .collect();
            match gone.as_slice() {
                [] => " (an RPC worker went away or answered garbage)".to_string(),
                g => format!(" (RPC worker {} no longer answers)", g.join(", ")),
            }
        } else {
            String::new()
        };
        let line = format!("{tool}: error: ggml: {text}{hint}\n");
        // SAFETY: write(2) of a live buffer to stderr, then _exit: no
        // destructors, no locks taken (another thread may hold stderr's).
        unsafe {
            libc::write(2, line.as_ptr().cast(), line.len());
            libc::_exit(2);
        }
    }
    // SAFETY: a 'static callback; ggml keeps the pointer.
    unsafe { sys::ggml_set_abort_callback(Some(on_abort)) };
}

// ---- the worker ----

/// How [`serve`] serves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to listen on (IPv4: ggml's server binds IPv4 only).
    pub host: Ipv4Addr,
    /// TCP port.
    pub port: u16,
    /// CPU threads of the CPU backend.
    pub threads: usize,
    /// ggml device names to serve (`CPU`, `CUDA0`…); empty: every GPU, or
    /// the CPU where there is none (as llama.cpp's `rpc-server`).
    pub devices: Vec<String>,
    /// Where the worker keeps tensors clients sent by hash (those over
    /// 10 MiB), so a restarted client sends a hash, not the bytes; `None`:
    /// no cache.
    pub cache: Option<std::path::PathBuf>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            host: Ipv4Addr::LOCALHOST,
            port: 50052,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            devices: vec![],
            cache: None,
        }
    }
}

/// What [`serve`] reports, for its caller to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServeEvent {
    /// Listening, serving these devices (name and description, free MiB).
    Listening(Vec<String>),
    /// A client connected (its address, when still connected to look it up).
    Connected(Option<SocketAddr>),
    /// That client's connection closed.
    Closed(Option<SocketAddr>),
    /// Another line ggml's server printed.
    Other(String),
}

/// The devices `names` names, or the default set (every GPU, else the CPU).
fn serve_devices(names: &[String]) -> Result<Vec<sys::ggml_backend_dev_t>, Error> {
    let mut devs = vec![];
    for n in names {
        let c = CString::new(n.as_str()).map_err(|_| Error {
            kind: ErrorKind::Backend(n.clone()),
        })?;
        // SAFETY: registry lookup by a NUL-terminated name; null when absent.
        let d = unsafe { sys::ggml_backend_dev_by_name(c.as_ptr()) };
        if d.is_null() {
            return Err(Error {
                kind: ErrorKind::Backend(format!("{n} (no such device; {})", device_names())),
            });
        }
        devs.push(d);
    }
    if devs.is_empty() {
        // SAFETY: plain registry enumeration.
        unsafe {
            for i in 0..sys::ggml_backend_dev_count() {
                let d = sys::ggml_backend_dev_get(i);
                if sys::ggml_backend_dev_type(d) == sys::GGML_BACKEND_DEVICE_TYPE_GPU {
                    devs.push(d);
                }
            }
            if devs.is_empty() {
                devs.push(sys::ggml_backend_dev_by_type(
                    sys::GGML_BACKEND_DEVICE_TYPE_CPU,
                ));
            }
        }
    }
    Ok(devs)
}

/// The names of this build's devices, for an error message.
fn device_names() -> String {
    // SAFETY: plain registry enumeration; names are ggml's strings.
    let names: Vec<String> = unsafe {
        (0..sys::ggml_backend_dev_count())
            .map(|i| cstr(sys::ggml_backend_dev_name(sys::ggml_backend_dev_get(i))))
            .collect()
    };
    format!("this build has {}", names.join(", "))
}

/// Serves this machine's devices to ggml RPC clients until the process
/// ends (ggml's server takes one client at a time). Returns only on error:
/// a host:port it cannot listen on (in use, not this machine's), an unknown
/// device, a cache directory it cannot create. `on_event` gets the start and
/// each connection, from another thread.
///
/// ggml's server prints on stdout; this points stdout at a pipe and turns
/// its lines into events, so stdout must not be needed for anything else.
pub fn serve(
    opts: &ServeOptions,
    on_event: impl Fn(ServeEvent) + Send + Sync + 'static,
) -> Result<std::convert::Infallible, Error> {
    type StartServer = unsafe extern "C" fn(
        *const c_char,
        *const c_char,
        usize,
        usize,
        *mut sys::ggml_backend_dev_t,
    );
    let endpoint = format!("{}:{}", opts.host, opts.port);
    let start = proc_address(c"ggml_backend_rpc_start_server")?;
    // SAFETY: ggml-rpc.h declares `void ggml_backend_rpc_start_server(const
    // char * endpoint, const char * cache_dir, size_t n_threads, size_t
    // n_devices, ggml_backend_dev_t * devices)`, the function this name
    // resolves to.
    let start: StartServer =
        unsafe { std::mem::transmute::<*mut std::ffi::c_void, StartServer>(start) };
    let devs = serve_devices(&opts.devices)?;
    // a request that trips one of ggml's asserts ends the worker with one line
    exit_on_abort();
    // ggml's own bind failure is a bare "Failed to create server socket":
    // try the address first for the OS's reason (std sets SO_REUSEADDR, as
    // ggml does, so what binds here binds there)
    drop(
        std::net::TcpListener::bind((opts.host, opts.port))
            .or_else(|e| rpc_err(&endpoint, format!("cannot listen: {e}")))?,
    );
    let cache = match &opts.cache {
        Some(dir) => {
            std::fs::create_dir_all(dir).or_else(|e| {
                rpc_err(
                    &endpoint,
                    format!("cannot create cache {}: {e}", dir.display()),
                )
            })?;
            Some(
                CString::new(dir.as_os_str().as_encoded_bytes())
                    .or_else(|_| rpc_err(&endpoint, "cache path has a NUL byte"))?,
            )
        }
        None => None,
    };
    let described: Vec<String> = devs
        .iter()
        .map(|&d| {
            let (mut free, mut total) = (0usize, 0usize);
            // SAFETY: live devices from the registry; out-parameters.
            unsafe {
                sys::ggml_backend_dev_memory(d, &mut free, &mut total);
                format!(
                    "{} ({}, {} MiB free)",
                    cstr(sys::ggml_backend_dev_name(d)),
                    cstr(sys::ggml_backend_dev_description(d)),
                    free >> 20
                )
            }
        })
        .collect();
    let port = opts.port;
    let on_event: std::sync::Arc<dyn Fn(ServeEvent) + Send + Sync> = std::sync::Arc::new(on_event);
    forward_logs(on_event.clone());
    capture_stdout(on_event.clone())
        .or_else(|e| rpc_err(&endpoint, format!("cannot capture ggml's output: {e}")))?;
    let c_endpoint = CString::new(endpoint.clone()).expect("no NUL in an address");
    let threads = opts.threads.max(1);
    // device handles cross to the server's thread as `Device`s (Send)
    let devs: Vec<crate::Device> = devs.into_iter().map(|raw| crate::Device { raw }).collect();
    let server = std::thread::spawn(move || {
        let mut devs: Vec<sys::ggml_backend_dev_t> = devs.iter().map(|d| d.raw).collect();
        let cache_ptr = cache.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        // SAFETY: live NUL-terminated strings and device array, all owned by
        // this thread for the whole call (which runs until the process ends
        // or returns on a bind failure).
        unsafe {
            start(
                c_endpoint.as_ptr(),
                cache_ptr,
                threads,
                devs.len(),
                devs.as_mut_ptr(),
            )
        };
    });
    // announce once ggml listens (it binds on its thread)
    let t0 = std::time::Instant::now();
    while !server.is_finished() && listening_port(port).is_none() {
        if t0.elapsed() > Duration::from_secs(10) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if !server.is_finished() {
        on_event(ServeEvent::Listening(described));
    }
    let _ = server.join();
    rpc_err(
        &endpoint,
        "ggml's RPC server stopped (cannot listen there?)",
    )
}

/// Sends ggml's log lines (information, warnings, errors: a tensor saved in
/// the cache, a malformed request) to `on_event` as [`ServeEvent::Other`].
fn forward_logs(on_event: std::sync::Arc<dyn Fn(ServeEvent) + Send + Sync>) {
    type Sink = std::sync::Arc<dyn Fn(ServeEvent) + Send + Sync>;
    static SINK: std::sync::OnceLock<Sink> = std::sync::OnceLock::new();
    unsafe extern "C" fn log(
        level: sys::ggml_log_level,
        text: *const c_char,
        _: *mut std::ffi::c_void,
    ) {
        if level == sys::GGML_LOG_LEVEL_DEBUG || text.is_null() {
            return;
        }
        // SAFETY: ggml passes a NUL-terminated string.
        let t = unsafe { std::ffi::CStr::from_ptr(text) }.to_string_lossy();
        let t = t.trim_end();
        if let (Some(sink), false) = (SINK.get(), t.is_empty()) {
            sink(ServeEvent::Other(t.to_string()));
        }
    }
    let _ = SINK.set(on_event);
    // SAFETY: a 'static callback; ggml keeps the pointer.
    unsafe { sys::ggml_log_set(Some(log), std::ptr::null_mut()) };
}

/// Points stdout (fd 1) at a pipe whose lines a thread turns into events.
fn capture_stdout(
    on_event: std::sync::Arc<dyn Fn(ServeEvent) + Send + Sync>,
) -> std::io::Result<()> {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) into a two-int array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fds[1] is the pipe's write end we just made; dup2 onto fd 1
    // replaces stdout for C and Rust alike.
    if unsafe { libc::dup2(fds[1], 1) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fds[1] is ours and now duplicated on fd 1.
    unsafe { libc::close(fds[1]) };
    // SAFETY: fds[0] is the pipe's read end, owned by the File from here on.
    let read = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) };
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut peer = None;
        for line in std::io::BufReader::new(read).lines() {
            let Ok(line) = line else { break };
            let ev = match line.trim() {
                "Accepted client connection" => {
                    peer = connected_peer();
                    ServeEvent::Connected(peer)
                }
                "Client connection closed" => ServeEvent::Closed(peer.take()),
                // the start-up banner: said by Listening, which comes first
                l if l.starts_with("Starting RPC server")
                    || l == "Devices:"
                    || line.starts_with("  ") =>
                {
                    continue
                }
                _ => ServeEvent::Other(line),
            };
            on_event(ev);
        }
    });
    Ok(())
}

/// The sockets this process holds, as raw fds (from /proc/self/fd).
fn socket_fds() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return vec![];
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let fd: i32 = e.file_name().to_str()?.parse().ok()?;
        let target = std::fs::read_link(e.path()).ok()?;
        target.to_str()?.starts_with("socket:").then_some(fd)
    })
    .collect()
}

/// The IPv4 address of an fd's socket: its own (`peer` false) or its peer's.
fn sock_addr(fd: i32, peer: bool) -> Option<std::net::SocketAddrV4> {
    // SAFETY: a zeroed sockaddr_in is a valid out-parameter.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let p = (&mut sa as *mut libc::sockaddr_in).cast();
    // SAFETY: fd may be anything (an error is returned then); sa and len
    // are valid for the call.
    let r = unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    };
    (r == 0 && sa.sin_family == libc::AF_INET as libc::sa_family_t).then(|| {
        std::net::SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
            u16::from_be(sa.sin_port),
        )
    })
}

/// Whether some socket of this process listens on `port` (ggml's server,
/// once it has bound).
fn listening_port(port: u16) -> Option<i32> {
    socket_fds().into_iter().find(|&fd| {
        let mut on: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: fd is a socket of ours; on/len valid out-parameters.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ACCEPTCONN,
                (&mut on as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        r == 0 && on != 0 && sock_addr(fd, false).is_some_and(|a| a.port() == port)
    })
}

/// The peer of the one connected TCP socket of this process (ggml's server
/// serves one client at a time); `None` when it has already gone.
fn connected_peer() -> Option<SocketAddr> {
    socket_fds()
        .into_iter()
        .find_map(|fd| sock_addr(fd, true))
        .map(SocketAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert!(check_endpoint("127.0.0.1:50052").is_ok());
        assert!(check_endpoint("worker-1:7000").is_ok());
        for bad in [
            "127.0.0.1",
            ":50052",
            "h:0",
            "h:65536",
            "h:x",
            "[::1]:5",
            "::1:5",
        ] {
            let e = check_endpoint(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn versions() {
        assert!(compatible(RPC_PROTO));
        assert!(!compatible([RPC_PROTO[0] + 1, 0, 0]));
        assert!(!compatible([RPC_PROTO[0], RPC_PROTO[1] + 1, 0]));
        assert!(!compatible([3, 0, 0]));
    }

    /// A one-shot server on 127.0.0.1 that answers any request with `reply`.
    fn fake(reply: Vec<u8>) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = [0u8; 33];
            let _ = s.read_exact(&mut req);
            let _ = s.write_all(&reply);
        });
        addr
    }

    #[test]
    fn probe_reads_versions_and_refuses_garbage() {
        let mut ok = 28u64.to_le_bytes().to_vec();
        ok.extend_from_slice(&[RPC_PROTO[0], RPC_PROTO[1], 9, 0]);
        ok.extend_from_slice(&[0; 24]);
        assert_eq!(
            probe(&fake(ok), PROBE_TIMEOUT).unwrap(),
            [RPC_PROTO[0], RPC_PROTO[1], 9]
        );
        let mut old = 3u64.to_le_bytes().to_vec();
        old.extend_from_slice(&[3, 0, 0]);
        assert_eq!(probe(&fake(old), PROBE_TIMEOUT).unwrap(), [3, 0, 0]);
        let e = probe(
            &fake(b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec()),
            PROBE_TIMEOUT,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not ggml RPC"), "{e}");
        let e = probe(&fake(vec![]), PROBE_TIMEOUT).unwrap_err().to_string();
        assert!(e.contains("closed the connection"), "{e}");
    }

    #[test]
    fn probe_names_a_closed_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let e = probe(&addr, PROBE_TIMEOUT).unwrap_err().to_string();
        assert!(e.contains(&addr) && e.contains("cannot connect"), "{e}");
    }
}
