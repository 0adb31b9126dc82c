//! `model-import FILE.tar`: store the models of an OCI image layout tar.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Parser;
use cli::Outcome;
use protocol::Line;
use store::{ImportOptions, ResolveOptions, Store};

/// Store the models of a tar holding an OCI image layout (as `model-export`
/// writes): every blob is hashed against its name and every manifest
/// checked against index.json before anything becomes visible; then the
/// blobs are renamed into place and the manifests written, bytes as in the
/// archive. A truncated or tampered archive is refused with nothing written.
///
/// Prints the pipeline document of each model imported.
#[derive(Parser, Debug)]
#[command(
    name = "model-import",
    version,
    after_help = "Exit status: 0 imported, 2 refused archive (malformed, truncated, tampered) or I/O error; the store is then unchanged.\n\nExamples:\n  model-import models.tar | verify\n  ssh other model-export smollm2:135m -o - | model-import -"
)]
struct Args {
    /// The archive; `-` reads it from stdin.
    #[arg(value_name = "FILE")]
    archive: PathBuf,
    /// Do not fsync blobs before they get their final name.
    #[arg(long)]
    no_fsync: bool,
}

fn main() -> std::process::ExitCode {
    cli::main(|| {
        let args: Args = cli::parse_args();
        let store = Store::from_env()?;
        let opts = ImportOptions {
            fsync: !args.no_fsync,
        };
        let what = args.archive.display().to_string();
        let report = if what == "-" {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                bail!("refusing to read a tar archive from a terminal: give FILE or pipe it in");
            }
            store::import(&store, stdin.lock(), &opts)
        } else {
            let f =
                std::fs::File::open(&args.archive).with_context(|| format!("opening {what}"))?;
            store::import(&store, std::io::BufReader::with_capacity(1 << 20, f), &opts)
        }
        .with_context(|| format!("importing {what}"))?;
        let mut out = std::io::stdout().lock();
        for (name, _) in &report.models {
            let doc = store::resolve(&store, name, &ResolveOptions::default())
                .with_context(|| format!("resolving {}", name.short()))?;
            protocol::write_line(&mut out, &Line::Model(doc))?;
        }
        out.flush()?;
        eprintln!(
            "model-import: {} models, {} blobs written, {} already present",
            report.models.len(),
            report.blobs_written,
            report.blobs_present
        );
        Ok(Outcome::Ok)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags() {
        Args::command().debug_assert();
        let a = Args::try_parse_from(["model-import", "-", "--no-fsync"]).unwrap();
        assert!(a.no_fsync && a.archive.to_str() == Some("-"));
        assert!(Args::try_parse_from(["model-import"]).is_err());
    }
}
