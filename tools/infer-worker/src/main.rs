//! `infer-worker`: serve this machine's backend to `infer --rpc` over
//! ggml's RPC protocol (llama.cpp's `rpc-server`).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Parser;
use ggml::rpc::{serve, ServeEvent, ServeOptions};

/// Serve this machine's CPU or GPUs to `infer --rpc` over ggml's RPC protocol.
///
/// `infer --rpc HOST:PORT` on another machine then runs part of a model's
/// layers here (llama.cpp's `rpc-server`, as a tool). One client at a time;
/// connections are logged on stderr.
///
/// The protocol has NO authentication: whoever reaches the port can
/// allocate this machine's memory and run computations on it (and a
/// malformed request can end the worker). It listens on loopback unless
/// --host says otherwise; expose it only on a private network, or keep it on
/// 127.0.0.1 and reach it through an SSH tunnel (`ssh -N -L
/// 50052:127.0.0.1:50052 worker-host`, then `infer --rpc 127.0.0.1:50052`).
#[derive(Parser, Debug)]
#[command(
    name = "infer-worker",
    version,
    after_help = "Example: infer-worker --port 50052 &  infer --model m.gguf --rpc 127.0.0.1:50052 -p Hi\n\
                  Exit status: 2 on bad input (an address or port it cannot listen on, an unknown device) \
                  or when ggml's server stops; otherwise it serves until killed."
)]
struct Args {
    /// IPv4 address to listen on (0.0.0.0: every interface; see the warning above).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// TCP port.
    #[arg(long, default_value_t = 50052)]
    port: u16,
    /// CPU threads [default: available parallelism].
    #[arg(long)]
    threads: Option<usize>,
    /// Devices to serve, by ggml name (CPU, CUDA0, …; comma-separated)
    /// [default: every GPU, else the CPU].
    #[arg(long, value_delimiter = ',')]
    device: Vec<String>,
    /// Keep tensors that clients send by hash (those over 10 MiB) here, so
    /// a client run again sends hashes, not the weights
    /// [default: ~/.cache/llpipe/rpc].
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// No tensor cache.
    #[arg(long, conflicts_with = "cache")]
    no_cache: bool,
}

fn main() -> std::process::ExitCode {
    cli::main(|| {
        let a: Args = cli::parse_args();
        let host: Ipv4Addr = a.host.parse().with_context(|| {
            format!(
                "--host {:?} is not an IPv4 address (ggml's RPC server binds IPv4 only)",
                a.host
            )
        })?;
        if a.port == 0 {
            bail!("--port must be 1-65535");
        }
        let mut o = ServeOptions {
            host,
            port: a.port,
            devices: a.device.clone(),
            ..Default::default()
        };
        if let Some(t) = a.threads {
            if t == 0 {
                bail!("--threads must be at least 1");
            }
            o.threads = t;
        }
        if !a.no_cache {
            o.cache = Some(match &a.cache {
                Some(d) => d.clone(),
                None => default_cache()?,
            });
        }
        let cache = o
            .cache
            .as_ref()
            .map_or("no cache".into(), |c| format!("cache {}", c.display()));
        let endpoint = format!("{host}:{}", a.port);
        let Err(e) = serve(&o, move |ev| match ev {
            ServeEvent::Listening(devs) => {
                eprintln!(
                    "infer-worker: listening on {endpoint}, serving {}; {cache}",
                    devs.join(", ")
                );
                if !host.is_loopback() {
                    eprintln!(
                        "infer-worker: WARNING: {endpoint} is not loopback: the RPC protocol has \
                         no authentication, and anyone who can reach this port can use this \
                         machine's memory and CPU/GPU. Use a private network or an SSH tunnel \
                         (README, Across machines)."
                    );
                }
            }
            ServeEvent::Connected(p) => eprintln!("infer-worker: connection from {}", peer(p)),
            ServeEvent::Closed(p) => eprintln!("infer-worker: connection from {} closed", peer(p)),
            ServeEvent::Other(line) => eprintln!("infer-worker: ggml: {line}"),
        });
        Err(e.into())
    })
}

fn peer(p: Option<std::net::SocketAddr>) -> String {
    p.map_or("? (already gone)".into(), |p| p.to_string())
}

/// `$XDG_CACHE_HOME/llpipe/rpc`, else `~/.cache/llpipe/rpc`.
fn default_cache() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => {
            PathBuf::from(std::env::var_os("HOME").context("no $HOME for the default --cache")?)
                .join(".cache")
        }
    };
    Ok(base.join("llpipe").join("rpc"))
}
