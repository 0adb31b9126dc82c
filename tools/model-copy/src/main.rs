//! `model-copy SRC DST`: the same model under another name (a tag).

use anyhow::Context;
use clap::Parser;
use cli::Outcome;
use protocol::Name;
use store::Store;

/// Copy a model under another name, like `ollama cp`: the manifest is
/// written byte for byte under DST; blobs are shared.
#[derive(Parser, Debug)]
#[command(
    name = "model-copy",
    version,
    after_help = "Exit status: 0 copied, 2 bad name, missing source or I/O error."
)]
struct Args {
    /// Existing model.
    source: String,
    /// New name.
    destination: String,
}

fn main() -> std::process::ExitCode {
    cli::main(|| {
        let args: Args = cli::parse_args();
        let (src, dst) = (Name::parse(&args.source)?, Name::parse(&args.destination)?);
        let store = Store::from_env()?;
        store::copy(&store, &src, &dst)
            .with_context(|| format!("copying {} to {}", src.short(), dst.short()))?;
        eprintln!("copied '{}' to '{}'", src.short(), dst.short());
        Ok(Outcome::Ok)
    })
}
