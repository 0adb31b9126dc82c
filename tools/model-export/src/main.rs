//! `model-export NAME… -o FILE.tar`: models into an OCI image layout tar.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Parser;
use cli::Outcome;
use protocol::{Line, Name};
use store::Store;

/// Write models, with every blob they use (each once), to a tar holding an
/// OCI image layout: oci-layout, index.json naming each model by its
/// org.opencontainers.image.ref.name annotation, blobs/sha256/<hex>.
/// Manifests go in byte for byte; blobs are re-hashed on the way out.
/// `model-import` on another machine stores them again.
///
/// Without NAME, the models of the pipeline documents on stdin are exported.
#[derive(Parser, Debug)]
#[command(
    name = "model-export",
    version,
    after_help = "Exit status: 0 exported, 2 bad name, missing model, corrupt blob or I/O error (no file is left behind).\n\nExamples:\n  model-export smollm2:135m gemma3:270m -o models.tar\n  model-export smollm2:135m -o - | ssh other model-import -"
)]
struct Args {
    /// Models to export.
    names: Vec<String>,
    /// The archive to write; `-` streams it to stdout.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
}

fn main() -> std::process::ExitCode {
    cli::main(|| {
        let args: Args = cli::parse_args();
        let names = if args.names.is_empty() {
            names_from_stdin()?
        } else {
            args.names
                .iter()
                .map(|n| Name::parse(n))
                .collect::<Result<Vec<_>, _>>()?
        };
        let store = Store::from_env()?;
        let what = names.iter().map(Name::short).collect::<Vec<_>>().join(", ");
        let report = if args.output.as_os_str() == "-" {
            let out = std::io::stdout();
            if out.is_terminal() {
                bail!("refusing to write a tar archive to a terminal: use -o FILE or a pipe");
            }
            let mut out = std::io::BufWriter::with_capacity(1 << 20, out.lock());
            let r = store::export(&store, &names, &mut out)
                .with_context(|| format!("exporting {what}"))?;
            out.flush()?;
            r
        } else {
            store::export_file(&store, &names, &args.output)
                .with_context(|| format!("exporting {what} to {}", args.output.display()))?
        };
        eprintln!(
            "model-export: {} models, {} blobs, {} bytes",
            report.models.len(),
            report.blobs,
            report.bytes
        );
        Ok(Outcome::Ok)
    })
}

/// The names of the `model` documents on stdin (other lines are ignored).
fn names_from_stdin() -> anyhow::Result<Vec<Name>> {
    if !cli::stdin_has_data() {
        bail!("nothing to export: give model names, or pipe pipeline documents in");
    }
    let mut names = Vec::new();
    for line in cli::stdin_lines() {
        if let Line::Model(doc) = line.context("reading pipeline documents from stdin")? {
            names.push(doc.parts);
        }
    }
    if names.is_empty() {
        bail!("nothing to export: no model documents on stdin");
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags() {
        Args::command().debug_assert();
        let a = Args::try_parse_from(["model-export", "a:1", "b", "-o", "-"]).unwrap();
        assert_eq!((a.names.len(), a.output.to_str()), (2, Some("-")));
        let a = Args::try_parse_from(["model-export", "--output", "x.tar"]).unwrap();
        assert!(a.names.is_empty());
        assert!(
            Args::try_parse_from(["model-export", "a:1"]).is_err(),
            "-o is required"
        );
    }
}
