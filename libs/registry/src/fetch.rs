//! `fetch_blob`: make every blob of a document present, then store its manifest.

use std::collections::BTreeMap;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use protocol::{media, Digest, ModelDoc};
use serde_json::Value;
use store::Store;

use crate::download::{download, BlobJob};
use crate::resolve::{check_manifest, session_for};
use crate::{Cancel, Error, Progress, RemoteOptions, Result};

/// How often [`FetchOptions::on_progress`] hears about a download.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Text layers up to this size are inlined into the document (as `resolve` does).
const MAX_INLINE_TEXT: u64 = 1 << 20;

/// Options of [`fetch_blob`].
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// How to reach the registry. `base_url` here overrides the document's `extra.registry.url`.
    pub remote: RemoteOptions,
    /// Parts downloaded at once per blob.
    pub parallel: usize,
    /// Part size; `None`: total/16 clamped to 100 MB–1 GB.
    pub part_size: Option<u64>,
    /// Retries per part after a retryable failure without progress.
    pub retries: u32,
    /// First backoff; doubled on each retry.
    pub backoff: Duration,
    /// fsync each blob before it gets its name.
    pub fsync: bool,
    /// Progress bars on stderr (the caller checks it is a terminal).
    pub progress: bool,
    /// Log retries and resumes on stderr.
    pub verbose: bool,
    /// Called for every blob: once with completed = total for a blob already
    /// present; for one downloaded, at its start, about every 250 ms while
    /// bytes arrive, and with completed = total when it is in place.
    pub on_progress: Option<Progress>,
    /// Stops the fetch when set: the blob being downloaded loses its
    /// partial file and the manifest is not written ([`Error::Canceled`]).
    pub cancel: Option<Cancel>,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            remote: RemoteOptions::default(),
            parallel: 8,
            part_size: None,
            retries: 6,
            backoff: Duration::from_secs(1),
            fsync: true,
            progress: false,
            verbose: false,
            on_progress: None,
            cancel: None,
        }
    }
}

impl FetchOptions {
    /// Whether [`FetchOptions::cancel`] is set.
    pub(crate) fn canceled(&self) -> bool {
        self.cancel.as_ref().is_some_and(Cancel::is_canceled)
    }
    /// [`Error::Canceled`] for `what` when [`FetchOptions::cancel`] is set.
    pub(crate) fn check_canceled(&self, what: &str) -> Result<()> {
        match self.canceled() {
            true => Err(Error::Canceled {
                what: what.to_string(),
            }),
            false => Ok(()),
        }
    }
}

/// What [`fetch_blob`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FetchReport {
    /// Blobs downloaded (fully or the rest of a partial one).
    pub blobs_fetched: usize,
    /// Bytes received over the network.
    pub bytes_fetched: u64,
    /// Bytes kept from partial files of earlier runs.
    pub bytes_resumed: u64,
    /// Whether the manifest was written into the store.
    pub manifest_written: bool,
}

/// Makes every blob of `doc` present in `store`, fetching the missing ones
/// from the registry, then writes the manifest (from `manifest_text`) into
/// the store — only once every blob is present — and drops `manifest_text`.
/// Sets `present`, `path` and, for small text layers, `text` on each blob.
///
/// The blob list comes from the manifest itself; a document whose blobs
/// differ from its manifest is refused. Duplicate digests are fetched once.
pub fn fetch_blob(doc: &mut ModelDoc, store: &Store, opts: &FetchOptions) -> Result<FetchReport> {
    let what_model = format!("model {}", doc.name);
    let wanted = wanted_blobs(doc, &what_model)?;
    let mut report = FetchReport::default();
    let mut missing = Vec::new();
    for (d, &size) in &wanted {
        if !(store.has_blob(d)?
            && std::fs::symlink_metadata(store.blob_path(d)).is_ok_and(|m| m.len() == size))
        {
            missing.push((d.clone(), size));
        } else if let Some(p) = &opts.on_progress {
            p.report(d, size, size);
        }
    }
    if !missing.is_empty() {
        let (base, insecure) = registry_of(doc);
        let mut remote = opts.remote.clone();
        remote.insecure |= insecure;
        let base = remote.base_url.clone().or(base);
        let scope = format!("repository:{}:pull", doc.parts.repository());
        let session = session_for(&doc.parts, base.as_deref(), &remote, scope)?;
        let bars = opts.progress.then(MultiProgress::new);
        for (d, size) in &missing {
            opts.check_canceled(&what_model)?;
            let pb = bars.as_ref().map(|m| {
                let pb = m.add(ProgressBar::new(*size));
                pb.set_style(
                    ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                pb.set_prefix(format!("pulling {}", d.short()));
                pb
            });
            // a caller that wants progress without bars gets a hidden bar,
            // whose position the download keeps as it does a visible one's
            let pb = pb.or_else(|| {
                opts.on_progress.as_ref().map(|_| {
                    let pb = ProgressBar::hidden();
                    pb.set_length(*size);
                    pb
                })
            });
            let job = BlobJob {
                session: &session,
                repo: &doc.parts.repository(),
                digest: d,
                size: *size,
                what: format!("blob {d} of {what_model} from {}", session.name()),
            };
            let out = match (&opts.on_progress, &pb) {
                (Some(p), Some(pb)) => {
                    watched(p, pb, d, *size, || download(&job, store, opts, Some(pb)))?
                }
                _ => download(&job, store, opts, pb.as_ref())?,
            };
            if let Some(pb) = pb {
                pb.finish();
            }
            if !out.already {
                report.blobs_fetched += 1;
            }
            report.bytes_fetched += out.fetched;
            report.bytes_resumed += out.resumed;
        }
    }
    for b in doc.blobs_mut() {
        let path = store.blob_path(&b.digest);
        b.present = true;
        if b.text.is_none() && media::is_text(&b.media_type) && b.size <= MAX_INLINE_TEXT {
            if let Ok(bytes) = std::fs::read(&path) {
                b.text = Some(String::from_utf8_lossy(&bytes).into_owned());
            }
        }
        b.path = Some(path);
    }
    opts.check_canceled(&what_model)?;
    if let Some(text) = doc.manifest_text.take() {
        store.write_manifest(&doc.parts, text.as_bytes())?;
        doc.manifest_path = Some(store.manifest_path(&doc.parts));
        report.manifest_written = true;
    }
    Ok(report)
}

/// Runs `f` while a thread beside it reports `pb`'s position to `p` every
/// [`PROGRESS_EVERY`]; reports the start, and completed = total on success.
fn watched<T>(
    p: &Progress,
    pb: &ProgressBar,
    d: &Digest,
    size: u64,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    p.report(d, pb.position(), size);
    let out = std::thread::scope(|s| {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        s.spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(PROGRESS_EVERY)
            {
                p.report(d, pb.position().min(size), size);
            }
        });
        let out = f();
        drop(stop);
        out
    });
    if out.is_ok() {
        p.report(d, size, size);
    }
    out
}

/// The unique blobs (digest → size) the manifest names, checked against the document.
fn wanted_blobs(doc: &ModelDoc, what: &str) -> Result<BTreeMap<Digest, u64>> {
    let bad = |why: String| Error::BadManifest {
        what: what.to_string(),
        why,
    };
    let manifest_bytes: Vec<u8> = match &doc.manifest_text {
        Some(t) => {
            let got = Digest::of_bytes(t.as_bytes());
            if got != doc.manifest_digest {
                return Err(bad(format!(
                    "manifest_text has digest {got}, the document says {}",
                    doc.manifest_digest
                )));
            }
            t.as_bytes().to_vec()
        }
        None => serde_json::to_vec(&doc.manifest).map_err(|e| bad(e.to_string()))?,
    };
    if doc.manifest_text.is_some() {
        check_manifest(&manifest_bytes, None, what)?;
    }
    let m = store::Manifest::parse(&manifest_bytes, what)?;
    let mut from_manifest = BTreeMap::new();
    for d in m.blobs() {
        if let Some(s) = from_manifest.insert(d.digest.clone(), d.size) {
            if s != d.size {
                return Err(bad(format!(
                    "blob {} listed with sizes {s} and {}",
                    d.digest, d.size
                )));
            }
        }
        if d.size > crate::resolve::MAX_BLOB_SIZE {
            return Err(bad(format!("blob {} declares {} bytes", d.digest, d.size)));
        }
    }
    let mut from_doc = BTreeMap::new();
    for b in doc.blobs() {
        from_doc.insert(b.digest.clone(), b.size);
    }
    if from_doc != from_manifest {
        return Err(bad("the document's blobs differ from its manifest's".into()));
    }
    Ok(from_manifest)
}

/// `extra.registry.url` / `.insecure` as `resolve_remote` writes them.
fn registry_of(doc: &ModelDoc) -> (Option<String>, bool) {
    let r = doc.extra.get("registry");
    let url = r
        .and_then(|r| r.get("url"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let insecure = r
        .and_then(|r| r.get("insecure"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    (url, insecure)
}
