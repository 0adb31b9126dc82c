//! model-push: uploads a model from the store to its registry (blobs the
//! registry lacks, then the manifest) and prints one `push` line.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use serde_json::json;

/// Push a model from the store to its registry.
///
/// Uploads every blob the registry does not have yet (checked with HEAD),
/// then the manifest byte for byte. Prints
/// `{"type":"push","data":{"name":…,"manifest_digest":…,"uploaded":N,"skipped":N,"mounted":N}}`.
#[derive(Parser, Debug)]
#[command(name = "model-push", version, after_help = registry::ENV_HELP)]
struct Args {
    /// The model, e.g. 127.0.0.1:5000/library/smollm2:135m (http:// or https:// prefix allowed).
    name: String,
    /// Allow a plain-http registry.
    #[arg(long)]
    insecure: bool,
    /// Upload in PATCH chunks of this many bytes instead of one PUT.
    #[arg(long, value_name = "BYTES")]
    chunk_size: Option<u64>,
    /// Try a cross-repository mount from this repository (namespace/model) first.
    #[arg(long, value_name = "REPO")]
    mount_from: Option<String>,
    /// Store root (default: $OLLAMA_MODELS, else ~/.ollama/models).
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    /// Log each blob on stderr.
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
        let (name, base) = registry::parse_name(&args.name)?;
        let mut opts = registry::PushOptions {
            chunk_size: args.chunk_size.filter(|&c| c > 0),
            mount_from: args.mount_from.clone(),
            verbose: args.verbose,
            ..registry::PushOptions::default()
        };
        opts.remote.insecure = args.insecure;
        opts.remote.base_url = base;
        let report = registry::push(&name, &store, &opts)
            .with_context(|| format!("pushing {}", name.short()))?;
        let line = json!({"type": "push", "data": {
            "name": name.short(),
            "manifest_digest": report.manifest_digest.to_string(),
            "uploaded": report.uploaded,
            "skipped": report.skipped,
            "mounted": report.mounted,
        }});
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
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
            "model-push",
            "h:1/n/m:t",
            "--insecure",
            "--chunk-size",
            "10",
            "--mount-from",
            "a/b",
        ])
        .unwrap();
        assert_eq!(
            (a.name.as_str(), a.insecure, a.chunk_size),
            ("h:1/n/m:t", true, Some(10))
        );
        assert_eq!(a.mount_from.as_deref(), Some("a/b"));
        assert!(Args::try_parse_from(["model-push"]).is_err());
    }
}
