//! `resolve NAME…`: model names → pipeline documents (one JSON line each).

use std::io::Write;

use anyhow::Context;
use clap::Parser;
use cli::Outcome;
use protocol::{Line, Name};

/// Print the pipeline document of each model: parsed name, manifest path and
/// digest, the manifest, and every blob with media type, digest, size, store
/// path and presence; small text layers (template, system, params, license,
/// messages) inlined.
///
/// Names default like Ollama's: registry.ollama.ai/library/NAME:latest.
/// The store is $OLLAMA_MODELS, else ~/.ollama/models.
#[derive(Parser, Debug)]
#[command(
    name = "resolve",
    version,
    after_help = "Exit status: 0 all resolved, 1 a model is not in the store, 2 bad name or I/O error.\n\nExample: resolve smollm2:135m | verify | jq .data.manifest_digest"
)]
struct Args {
    /// Model names (host/namespace/model:tag); read one per line from stdin when none are given.
    names: Vec<String>,
    /// Do not inline small text layers.
    #[arg(long)]
    no_inline: bool,
}

fn main() -> std::process::ExitCode {
    cli::main(|| {
        let args: Args = cli::parse_args();
        let names = if args.names.is_empty() {
            cli::stdin_words()?
        } else {
            args.names
        };
        if names.is_empty() {
            anyhow::bail!("no model names given (arguments or one per line on stdin)");
        }
        let store = store::Store::from_env()?;
        let opts = store::ResolveOptions {
            no_inline: args.no_inline,
        };
        // validate every name before producing any output
        let names: Vec<Name> = names
            .iter()
            .map(|n| Name::parse(n))
            .collect::<Result<_, _>>()?;
        let mut out = std::io::stdout().lock();
        let mut outcome = Outcome::Ok;
        for name in &names {
            match store::resolve(&store, name, &opts) {
                Ok(doc) => protocol::write_line(&mut out, &Line::Model(doc))?,
                Err(e @ store::Error::NotFound { .. }) => {
                    writeln!(std::io::stderr(), "resolve: {e}")?;
                    outcome = Outcome::Negative;
                }
                Err(e) => return Err(e).with_context(|| format!("resolving {}", name.short())),
            }
        }
        Ok(outcome)
    })
}
