//! `model-remove NAME…`: remove models, then prune blobs nothing else uses.

use anyhow::Context;
use clap::Parser;
use cli::Outcome;
use protocol::Name;
use store::Store;

/// Remove models from the store, like `ollama rm`, then delete their blobs
/// that no other model references.
#[derive(Parser, Debug)]
#[command(
    name = "model-remove",
    version,
    after_help = "Exit status: 0 removed, 1 a model was not found, 2 bad name or I/O error."
)]
struct Args {
    /// Models to remove.
    #[arg(required = true)]
    names: Vec<String>,
}

fn main() -> std::process::ExitCode {
    cli::main(|| {
        let args: Args = cli::parse_args();
        let names: Vec<Name> = args
            .names
            .iter()
            .map(|n| Name::parse(n))
            .collect::<Result<_, _>>()?;
        let store = Store::from_env()?;
        let mut outcome = Outcome::Ok;
        for name in &names {
            match store::remove(&store, name) {
                Ok(r) => eprintln!(
                    "deleted '{}' ({} blobs pruned)",
                    r.name.short(),
                    r.pruned.len()
                ),
                Err(e @ store::Error::NotFound { .. }) => {
                    eprintln!("model-remove: {e}");
                    outcome = Outcome::Negative;
                }
                Err(e) => return Err(e).with_context(|| format!("removing {}", name.short())),
            }
        }
        Ok(outcome)
    })
}
