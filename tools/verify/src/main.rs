//! `verify`: re-hash blobs, name what is corrupt, pass good documents on.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};
use clap::Parser;
use cli::Outcome;
use protocol::Digest;
use store::{BlobCheck, Finding, Store, VerifyOptions};

/// Re-hash blobs and name every mismatch.
///
/// With pipeline documents on stdin: checks every blob of each model and
/// passes on the documents whose blobs are all good; lines of other types
/// pass through. With arguments: checks those blobs (store paths named
/// sha256-<hex>, or digests). With --all: audits the whole store.
///
/// With --quarantine, a corrupt blob is moved out of blobs/ into
/// <store>/quarantine/ and, on the document stream, the model is passed on
/// with that blob (and any missing one) marked "present":false, so that
/// `| fetch-blob` fetches exactly those again from the model's registry.
#[derive(Parser, Debug)]
#[command(
    name = "verify",
    version,
    after_help = "Exit status: 0 all good (with --quarantine: every corrupt or missing blob handed on to be fetched again), 1 something is corrupt, missing or left over, 2 usage or I/O error.\n\nExamples:\n  resolve smollm2:135m | verify | infer -p hi\n  resolve smollm2:135m | verify --quarantine | fetch-blob   (repair: fetch only the corrupt blobs again)"
)]
struct Args {
    /// Blob paths or digests (sha256:<hex>) to check instead of reading stdin.
    items: Vec<String>,
    /// Audit the whole store: corrupt, missing and orphan blobs, leftover temporary or partial files, symlinks.
    #[arg(long, conflicts_with = "items")]
    all: bool,
    /// Move corrupt blobs into <store>/quarantine/ and pass their models on with those blobs present:false (for `| fetch-blob`); then exit 0 when every problem was handed on that way (--all still exits 1: the audit found corruption).
    #[arg(long)]
    quarantine: bool,
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
            let mut handled = 0;
            for f in &report.findings {
                writeln!(out, "{}", serde_json::json!({"type": "finding", "data": f}))?;
                eprintln!("verify: {f}");
                if args.quarantine && quarantine_corrupt(&store, f)? {
                    handled += 1;
                }
            }
            eprintln!(
                "verify: {} blobs, {} bytes checked, {} problems",
                report.blobs_checked,
                report.bytes_hashed,
                report.findings.len()
            );
            if handled > 0 {
                eprintln!("verify: {handled} corrupt blobs quarantined: their models now lack them until fetched again (resolve NAME | fetch-blob)");
            }
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
                        if !(args.quarantine && quarantine_corrupt(&store, &f)?) {
                            outcome = Outcome::Negative;
                        }
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
        verify_stream(&store, &opts, args.quarantine, &mut out)
    })
}

/// Reads every document, verifies (and with `quarantine` repairs-to-be)
/// their blobs, and passes on what [`store::verify_docs`] keeps.
fn verify_stream(
    store: &Store,
    opts: &VerifyOptions,
    quarantine: bool,
    out: &mut impl Write,
) -> anyhow::Result<Outcome> {
    let lines = cli::stdin_lines()
        .collect::<Result<Vec<_>, _>>()
        .context("reading pipeline documents from stdin")?;
    let v =
        store::verify_docs(store, lines, opts, quarantine).context("quarantining corrupt blobs")?;
    for f in &v.findings {
        eprintln!("verify: {f}");
    }
    for (digest, to) in &v.quarantined {
        say_quarantined(digest, to);
    }
    for line in &v.lines {
        protocol::write_line(out, line)?;
    }
    Ok(if v.dropped > 0 {
        Outcome::Negative
    } else {
        Outcome::Ok
    })
}

/// Moves the blob of a `corrupt` finding aside, saying so; false for any other finding.
fn quarantine_corrupt(store: &Store, f: &Finding) -> anyhow::Result<bool> {
    let moved = store::quarantine_finding(store, f)
        .with_context(|| format!("quarantining {}", f.path.display()))?;
    if let (Some(to), Some(digest)) = (&moved, &f.digest) {
        say_quarantined(digest, to);
    }
    Ok(moved.is_some())
}

fn say_quarantined(digest: &Digest, to: &Path) {
    eprintln!(
        "verify: quarantined blob {digest} to {}; `fetch-blob` fetches it again",
        to.display()
    );
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
