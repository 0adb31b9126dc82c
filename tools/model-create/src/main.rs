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
/// from the GGUF header (family, parameter count, file type). --quantize
/// quantizes an F16, BF16 or F32 model's weights on the way in (llama.cpp's
/// quantizer, as `ollama create --quantize`). Prints the new model's
/// pipeline document.
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
    /// Quantize the weights of an F16, BF16 or F32 model to TYPE (q4_K_M,
    /// q4_K_S, q8_0, q4_0, q5_K_M, q6_K, …; any case).
    #[arg(short = 'q', long, value_name = "TYPE")]
    quantize: Option<String>,
    /// Threads for --quantize [default: all].
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: usize,
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
        let quantize = match args.quantize.as_deref() {
            None => None,
            Some(q) => {
                let to = engine::quantize::QuantType::parse(q).map_err(anyhow::Error::msg)?;
                let threads = args.threads;
                Some(store::Quantize {
                    to: to.name().into(),
                    run: std::sync::Arc::new(move |src, dst, from| {
                        eprintln!("model-create: quantizing {from} model to {}", to.name());
                        let opts = engine::quantize::QuantizeOptions {
                            to,
                            threads,
                            allow_requantize: false,
                        };
                        engine::quantize::quantize(src, dst, &opts)
                    }),
                })
            }
        };
        let store = Store::from_env()?;
        let opts = CreateOptions { base_dir, quantize };
        let doc = store::create(&store, &name, &modelfile, &opts)
            .with_context(|| format!("creating {}", name.short()))?;
        eprintln!(
            "model-create: created {} ({})",
            doc.name, doc.manifest_digest
        );
        protocol::write_line(&mut std::io::stdout().lock(), &Line::Model(doc))?;
        Ok(Outcome::Ok)
    })
}
