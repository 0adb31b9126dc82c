//! fetch-blob: reads pipeline documents, makes every blob present in the
//! store (downloading missing ones from the registry), writes the manifest
//! once all blobs are there, and prints the documents. Other lines pass through.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use protocol::Line;

/// Make every blob of the models on stdin present in the store, then store their manifests.
///
/// Reads `model` documents (from `resolve`) on stdin and prints them with
/// every blob present. Large blobs download in parallel ranged parts into
/// `blobs/sha256-<hex>-partial` and resume after any interruption; a blob
/// gets its name only once its digest matches.
#[derive(Parser, Debug)]
#[command(name = "fetch-blob", version, after_help = registry::ENV_HELP)]
struct Args {
    /// Pull these models by name (the manifest is fetched from the registry)
    /// instead of reading documents from stdin; `http://host/...` implies --insecure.
    #[arg(value_name = "NAME")]
    names: Vec<String>,
    /// Allow plain-http registries (local registries such as 127.0.0.1:5000).
    #[arg(long)]
    insecure: bool,
    /// Parts downloaded at once per blob.
    #[arg(long, default_value_t = 8, value_name = "N")]
    parallel: usize,
    /// Part size in bytes (default: blob size / 16, clamped to 100 MB–1 GB).
    #[arg(long, value_name = "BYTES")]
    part_size: Option<u64>,
    /// Retries per part after a reset, stall or 5xx.
    #[arg(long, default_value_t = 6, value_name = "N")]
    retries: u32,
    /// First retry delay in milliseconds, doubled on each retry.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    backoff_ms: u64,
    /// Seconds without a byte before a part counts as stalled and is retried.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    stall_timeout: u64,
    /// Do not fsync blobs before they get their final name.
    #[arg(long)]
    no_fsync: bool,
    /// Store root (default: $OLLAMA_MODELS, else ~/.ollama/models).
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    /// Log resumes and retries on stderr.
    #[arg(short, long)]
    verbose: bool,
}

fn main() -> std::process::ExitCode {
    cli::main(|| {
        let args: Args = cli::parse_args();
        let store = match &args.store {
            Some(p) => store::Store::open(p),
            None => store::Store::from_env()?,
        };
        let mut opts = registry::FetchOptions {
            parallel: args.parallel.max(1),
            part_size: args.part_size.filter(|&p| p > 0),
            retries: args.retries,
            backoff: Duration::from_millis(args.backoff_ms),
            fsync: !args.no_fsync,
            progress: cli::stderr_is_terminal(),
            verbose: args.verbose,
            ..registry::FetchOptions::default()
        };
        opts.remote.insecure = args.insecure;
        opts.remote.stall_timeout = Duration::from_secs(args.stall_timeout.max(1));
        opts.remote.store = Some(store.clone());
        let mut out = std::io::stdout().lock();
        for n in &args.names {
            let (name, base) = registry::parse_name(n)?;
            let mut o = opts.clone();
            o.remote.base_url = base;
            let mut doc = registry::resolve_remote(&name, &o.remote)
                .with_context(|| format!("resolving {n}"))?;
            registry::fetch_blob(&mut doc, &store, &o)
                .with_context(|| format!("fetching blobs of {}", doc.name))?;
            protocol::write_line(&mut out, &Line::Model(doc))?;
        }
        let lines: Box<dyn Iterator<Item = _>> = if args.names.is_empty() {
            Box::new(cli::stdin_lines())
        } else {
            Box::new(std::iter::empty())
        };
        for line in lines {
            match line.context("reading stdin")? {
                Line::Model(mut doc) => {
                    let report = registry::fetch_blob(&mut doc, &store, &opts)
                        .with_context(|| format!("fetching blobs of {}", doc.name))?;
                    if args.verbose {
                        eprintln!(
                            "fetch-blob: {}: {} blobs fetched, {} bytes received, {} bytes resumed",
                            doc.name,
                            report.blobs_fetched,
                            report.bytes_fetched,
                            report.bytes_resumed
                        );
                    }
                    protocol::write_line(&mut out, &Line::Model(doc))?;
                }
                other => protocol::write_line(&mut out, &other)?,
            }
        }
        out.flush()?;
        Ok(cli::Outcome::Ok)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags() {
        Args::command().debug_assert();
        let a = Args::try_parse_from([
            "fetch-blob",
            "--insecure",
            "--parallel",
            "4",
            "--part-size",
            "1024",
            "--no-fsync",
        ])
        .unwrap();
        assert!(a.insecure && a.no_fsync);
        assert_eq!((a.parallel, a.part_size), (4, Some(1024)));
        assert!(Args::try_parse_from(["fetch-blob", "--parallel", "x"]).is_err());
        let a = Args::try_parse_from(["fetch-blob", "http://127.0.0.1:5000/library/m:t"]).unwrap();
        assert_eq!(a.names, ["http://127.0.0.1:5000/library/m:t"]);
    }
}
