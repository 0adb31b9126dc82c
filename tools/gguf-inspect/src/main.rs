//! `gguf-inspect`: what `ollama show` tells about a model, from the GGUF
//! header alone. Glue over [`gguf::show::inspect`].

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use gguf::show::{inspect, table, Layers, ShowOptions};
use protocol::media;
use serde_json::{Map, Value};

/// Show a model's architecture, parameters, context, quantization,
/// capabilities, license, template, options and metadata from its GGUF
/// header. Reads GGUF paths, or else `resolve`'s pipeline documents on stdin
/// (the model layer's path plus the license, template, system and params
/// layers). Writes one JSON object per model, or `ollama show`'s table.
#[derive(Parser, Debug)]
#[command(name = "gguf-inspect", version)]
struct Args {
    /// GGUF files to inspect; without any, read pipeline documents from stdin.
    paths: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
    /// Add each tensor's name, type, shape, offset and size.
    #[arg(long)]
    tensors: bool,
    /// Keep long arrays (vocabulary, merges) in the metadata map.
    #[arg(short, long)]
    verbose: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// One JSON object per model, one per line.
    Json,
    /// The human layout of `ollama show`.
    Table,
}

fn main() -> std::process::ExitCode {
    cli::main(|| {
        let args: Args = cli::parse_args();
        let mut inputs: Vec<_> = args
            .paths
            .iter()
            .map(|p| (p.clone(), Layers::default()))
            .collect();
        if inputs.is_empty() {
            if !cli::stdin_has_data() {
                bail!("no GGUF path given and stdin is a terminal (see --help)");
            }
            for line in cli::stdin_lines() {
                let Some(doc) = line.context("reading pipeline documents")?.model() else {
                    continue;
                };
                inputs.push(from_doc(doc?)?);
            }
        }
        let opts = ShowOptions {
            verbose: args.verbose,
            tensors: args.tensors,
        };
        let mut out = io::stdout().lock();
        // every bad file gets its own error line; the last one is the exit error
        let mut failed = None;
        for (path, layers) in &inputs {
            match show_one(path, layers, &opts) {
                Ok(info) if args.format == Format::Table => {
                    out.write_all(table(&info, &opts).as_bytes())?
                }
                Ok(info) => writeln!(out, "{}", Value::Object(info))?,
                Err(e) => {
                    if let Some(prev) = failed.replace(e) {
                        eprintln!("gguf-inspect: error: {prev:#}");
                    }
                }
            }
            out.flush()?;
        }
        failed.map_or(Ok(cli::Outcome::Ok), Err)
    })
}

/// The model layer's path and the text layers of one pipeline document.
fn from_doc(doc: protocol::ModelDoc) -> anyhow::Result<(PathBuf, Layers)> {
    let model = doc
        .model_layer()
        .with_context(|| format!("model {} has no model layer", doc.name))?;
    let path = model
        .path
        .clone()
        .with_context(|| format!("model {}: model layer has no path", doc.name))?;
    let text = |t: &str| doc.layer(t).and_then(|l| l.text.clone());
    let layers = Layers {
        name: Some(doc.name.clone()),
        license: text(media::LICENSE),
        template: text(media::TEMPLATE),
        system: text(media::SYSTEM),
        params: text(media::PARAMS),
        projector: doc.layer(media::PROJECTOR).is_some(),
        template_caps: vec![],
    };
    Ok((path, layers))
}

/// Maps a regular file (a FIFO or device is refused without blocking) and inspects it.
fn show_one(
    path: &Path,
    layers: &Layers,
    opts: &ShowOptions,
) -> anyhow::Result<Map<String, Value>> {
    let ctx = || format!("inspecting {}", path.display());
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(ctx)?;
    if !file.metadata().with_context(ctx)?.is_file() {
        bail!("inspecting {}: not a regular file", path.display());
    }
    // SAFETY: a read-only private map; another process truncating the file
    // while we read it could fault, the accepted risk of mmap.
    let map = unsafe { memmap2::Mmap::map(&file) }.with_context(ctx)?;
    let g = gguf::parse(&map).with_context(ctx)?;
    let layers = Layers {
        template_caps: template::model_capabilities(
            layers.template.as_deref(),
            g.get_str("tokenizer.chat_template"),
        )
        .names(),
        ..layers.clone()
    };
    inspect(&g, &layers, opts).with_context(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_parse() {
        Args::command().debug_assert();
        let a = Args::try_parse_from([
            "gguf-inspect",
            "--format",
            "table",
            "--tensors",
            "-v",
            "x.gguf",
        ])
        .unwrap();
        assert_eq!(
            (a.format, a.tensors, a.verbose, a.paths.len()),
            (Format::Table, true, true, 1)
        );
        let a = Args::try_parse_from(["gguf-inspect"]).unwrap();
        assert_eq!(
            (a.format, a.tensors, a.verbose),
            (Format::Json, false, false)
        );
        assert!(Args::try_parse_from(["gguf-inspect", "--format", "yaml"]).is_err());
    }
}
