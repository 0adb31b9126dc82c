//! `resolve NAME…`: model names → pipeline documents (one JSON line each).

use std::io::Write;

use anyhow::Context;
use clap::Parser;
use cli::Outcome;
use protocol::{Line, ModelDoc, Name};
use store::Store;

/// Print the pipeline document of each model: parsed name, manifest path and
/// digest, the manifest, and every blob with media type, digest, size, store
/// path and presence; small text layers (template, system, params, license,
/// messages) inlined.
///
/// Names default like Ollama's: registry.ollama.ai/library/NAME:latest.
/// The store ($OLLAMA_MODELS, else ~/.ollama/models) is asked first; a model
/// that is not there is resolved from its registry: its manifest is fetched
/// and nothing is written (`fetch-blob` does that once every blob is present).
#[derive(Parser, Debug)]
#[command(
    name = "resolve",
    version,
    after_help = format!(
        "{}\n\n{}",
        "Exit status: 0 all resolved, 1 a model was not found (in the store with --offline, \
or on its registry), 2 bad name, I/O or network error.\n\nExamples:\n  resolve smollm2:135m | verify | jq .data.manifest_digest\n  \
resolve --insecure 127.0.0.1:5000/library/smollm2:135m | fetch-blob | verify",
        registry::ENV_HELP
    )
)]
struct Args {
    /// Model names ([http[s]://]host/namespace/model:tag); one per line from stdin when none are given.
    names: Vec<String>,
    /// Do not inline small text layers.
    #[arg(long)]
    no_inline: bool,
    /// Fetch the manifest from the registry even when the model is in the store.
    #[arg(long, conflicts_with = "offline")]
    pull: bool,
    /// Never contact a registry: a model missing from the store is a negative answer.
    #[arg(long)]
    offline: bool,
    /// Allow plain-http registries (local ones such as 127.0.0.1:5000); an http:// name implies it.
    #[arg(long)]
    insecure: bool,
}

fn main() -> std::process::ExitCode {
    cli::main(|| {
        let args: Args = cli::parse_args();
        let names = if args.names.is_empty() {
            cli::stdin_words()?
        } else {
            args.names.clone()
        };
        if names.is_empty() {
            anyhow::bail!("no model names given (arguments or one per line on stdin)");
        }
        // validate every name before producing any output
        let names: Vec<(Name, Option<String>)> = names
            .iter()
            .map(|n| registry::parse_name(n))
            .collect::<Result<_, _>>()?;
        let store = Store::from_env()?;
        let mut out = std::io::stdout().lock();
        let mut outcome = Outcome::Ok;
        for (name, base_url) in names {
            match resolve_one(&store, &args, &name, base_url)? {
                Some(doc) => protocol::write_line(&mut out, &Line::Model(doc))?,
                None => outcome = Outcome::Negative,
            }
        }
        Ok(outcome)
    })
}

/// Local first (unless --pull), then the registry (unless --offline).
/// `None` is "not found", already reported on stderr.
fn resolve_one(
    store: &Store,
    args: &Args,
    name: &Name,
    base_url: Option<String>,
) -> anyhow::Result<Option<ModelDoc>> {
    if !args.pull {
        let opts = store::ResolveOptions {
            no_inline: args.no_inline,
        };
        match store::resolve(store, name, &opts) {
            Ok(doc) => return Ok(Some(doc)),
            Err(e @ store::Error::NotFound { .. }) if args.offline => {
                writeln!(std::io::stderr(), "resolve: {e}")?;
                return Ok(None);
            }
            Err(store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e).with_context(|| format!("resolving {}", name.short())),
        }
    }
    let remote = registry::RemoteOptions {
        insecure: args.insecure
            || base_url
                .as_deref()
                .is_some_and(|b| b.starts_with("http://")),
        base_url,
        store: Some(store.clone()),
        ..Default::default()
    };
    match registry::resolve_remote(name, &remote) {
        Ok(mut doc) => {
            if args.no_inline {
                doc.blobs_mut().for_each(|b| b.text = None);
            }
            Ok(Some(doc))
        }
        Err(e @ registry::Error::NotFound { .. }) => {
            writeln!(std::io::stderr(), "resolve: {e}")?;
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("resolving {} from its registry", name.short())),
    }
}
