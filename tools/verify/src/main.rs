//! `verify`: re-hash blobs, name what is corrupt, pass good documents on.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};
use clap::Parser;
use cli::Outcome;
use protocol::{Digest, Line};
use store::{BlobCheck, Store, VerifyOptions};

/// Re-hash blobs and name every mismatch.
///
/// With pipeline documents on stdin: checks every blob of each model and
/// passes on the documents whose blobs are all good; lines of other types
/// pass through. With arguments: checks those blobs (store paths named
/// sha256-<hex>, or digests). With --all: audits the whole store.
#[derive(Parser, Debug)]
#[command(
    name = "verify",
    version,
    after_help = "Exit status: 0 all good, 1 something is corrupt, missing or left over, 2 usage or I/O error.\n\nExample: resolve smollm2:135m | verify | infer -p hi"
)]
struct Args {
    /// Blob paths or digests (sha256:<hex>) to check instead of reading stdin.
    items: Vec<String>,
    /// Audit the whole store: corrupt, missing and orphan blobs, leftover temporary or partial files, symlinks.
    #[arg(long, conflicts_with = "items")]
    all: bool,
    /// Hashing threads (default: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn main() -> std::process::ExitCode {
    cli::main(|| {
        let args: Args = cli::parse_args();
        let store = Store::from_env()?;
        let opts = VerifyOptions {
            threads: args.threads,
        };
        let mut out = std::io::stdout().lock();
        if args.all {
            let report = store::verify_all(&store, &opts)
                .with_context(|| format!("auditing {}", store.root().display()))?;
            for f in &report.findings {
                writeln!(out, "{}", serde_json::json!({"type": "finding", "data": f}))?;
                eprintln!("verify: {f}");
            }
            eprintln!(
                "verify: {} blobs, {} bytes checked, {} problems",
                report.blobs_checked,
                report.bytes_hashed,
                report.findings.len()
            );
            return Ok(if report.findings.is_empty() {
                Outcome::Ok
            } else {
                Outcome::Negative
            });
        }
        if !args.items.is_empty() {
            let checks = args
                .items
                .iter()
                .map(|i| check_for_item(&store, i))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let results = store::verify(&checks, &opts);
            let mut outcome = Outcome::Ok;
            for (c, r) in checks.iter().zip(results) {
                match r {
                    Some(f) => {
                        eprintln!("verify: {f}");
                        outcome = Outcome::Negative;
                    }
                    None => writeln!(
                        out,
                        "{}",
                        serde_json::json!({"type": "blob", "data": {"digest": c.digest, "path": c.path, "ok": true}})
                    )?,
                }
            }
            return Ok(outcome);
        }
        if !cli::stdin_has_data() {
            bail!("nothing to verify: pipe pipeline documents in, or give blob paths or digests, or --all");
        }
        verify_stream(&store, &opts, &mut out)
    })
}

/// Reads every document, hashes all their blobs in parallel, then passes on
/// the documents whose blobs are all good, in input order.
fn verify_stream(
    store: &Store,
    opts: &VerifyOptions,
    out: &mut impl Write,
) -> anyhow::Result<Outcome> {
    let lines = cli::stdin_lines()
        .collect::<Result<Vec<_>, _>>()
        .context("reading pipeline documents from stdin")?;
    let mut checks = Vec::new();
    let mut owner = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if let Line::Model(doc) = line {
            for b in doc.blobs() {
                checks.push(BlobCheck {
                    digest: b.digest.clone(),
                    path: store.blob_path(&b.digest),
                    size: Some(b.size),
                });
                owner.push(i);
            }
        }
    }
    let results = store::verify(&checks, opts);
    let mut bad = vec![false; lines.len()];
    for ((r, &i), _) in results.into_iter().zip(&owner).zip(&checks) {
        if let (Some(mut f), Line::Model(doc)) = (r, &lines[i]) {
            f.models = vec![doc.name.clone()];
            eprintln!("verify: {f}");
            bad[i] = true;
        }
    }
    for (line, bad) in lines.into_iter().zip(&bad) {
        match line {
            Line::Model(mut doc) if !bad => {
                for b in doc.blobs_mut() {
                    b.present = true;
                }
                protocol::write_line(out, &Line::Model(doc))?;
            }
            Line::Model(_) => {}
            other => protocol::write_line(out, &other)?,
        }
    }
    Ok(if bad.contains(&true) {
        Outcome::Negative
    } else {
        Outcome::Ok
    })
}

fn check_for_item(store: &Store, item: &str) -> anyhow::Result<BlobCheck> {
    if item.starts_with("sha256:") {
        let digest: Digest = item.parse()?;
        return Ok(BlobCheck {
            path: store.blob_path(&digest),
            digest,
            size: None,
        });
    }
    let path = Path::new(item);
    let file_name = path
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or_default();
    let digest = Digest::from_blob_file_name(file_name).with_context(|| {
        format!(
            "cannot tell the digest of {item}: give a store blob path (sha256-<hex>) or a digest"
        )
    })?;
    Ok(BlobCheck {
        digest,
        path: path.to_path_buf(),
        size: None,
    })
}
