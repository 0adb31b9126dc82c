//! `model-create NAME`: a model in the store from a GGUF file and an optional Modelfile.

use anyhow::{bail, Context};
use clap::Parser;
use cli::Outcome;
use protocol::{Line, Name};
use store::{CreateOptions, Modelfile, Store};

/// Create a model in the store, like `ollama create`.
///
/// The source is a Modelfile (-f) whose FROM names a GGUF file or an existing
/// model, or a GGUF file given with --gguf. TEMPLATE, SYSTEM, PARAMETER,
/// LICENSE and MESSAGE each become their own layer; the config blob is filled
/// from the GGUF header (family, parameter count, file type). Prints the new
/// model's pipeline document.
#[derive(Parser, Debug)]
#[command(
    name = "model-create",
    version,
    after_help = "Exit status: 0 created, 2 usage, bad Modelfile or GGUF, or I/O error.\n\nExample: model-create smollm2:135m --gguf SmolLM2-135M-Instruct.Q4_1.gguf"
)]
struct Args {
    /// Name of the model to create (host/namespace/model:tag).
    name: String,
    /// Modelfile to read (relative FROM/ADAPTER paths are taken from its folder).
    #[arg(short = 'f', long = "file", value_name = "MODELFILE")]
    file: Option<std::path::PathBuf>,
    /// GGUF file to create the model from (same as a Modelfile with only FROM).
    #[arg(long, value_name = "FILE", conflicts_with = "file")]
    gguf: Option<std::path::PathBuf>,
}

fn main() -> std::process::ExitCode {
    cli::main(|| {
        let args: Args = cli::parse_args();
        let name = Name::parse(&args.name)?;
        let (modelfile, base_dir) = match (&args.file, &args.gguf) {
            (Some(f), None) => {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("reading Modelfile {}", f.display()))?;
                let mf =
                    Modelfile::parse(&text).with_context(|| format!("parsing {}", f.display()))?;
                (mf, f.parent().map(|p| p.to_path_buf()))
            }
            (None, Some(g)) => (Modelfile::from_source(&g.to_string_lossy()), None),
            _ => bail!("give a Modelfile (-f FILE) or a GGUF file (--gguf FILE)"),
        };
        let store = Store::from_env()?;
        let doc = store::create(
            &store,
            &name,
            &modelfile,
            &CreateOptions {
                base_dir,
                ..Default::default()
            },
        )
        .with_context(|| format!("creating {}", name.short()))?;
        eprintln!(
            "model-create: created {} ({})",
            doc.name, doc.manifest_digest
        );
        protocol::write_line(&mut std::io::stdout().lock(), &Line::Model(doc))?;
        Ok(Outcome::Ok)
    })
}
