//! `verify`: re-hash blobs and name what is corrupt; `verify --all` audits the
//! whole store (corrupt, missing, orphan, leftover, unsafe entries).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::fsutil::{self, EntryKind};
use crate::manifest::{Manifest, MAX_MANIFEST};
use protocol::Line;

use crate::{Digest, Name, Result, Store};

/// Options of [`verify()`] and [`verify_all()`].
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Hashing threads; 0 means one per available core.
    pub threads: usize,
}

/// One blob to check.
#[derive(Clone, Debug)]
pub struct BlobCheck {
    /// What its content must hash to.
    pub digest: Digest,
    /// Where it is.
    pub path: PathBuf,
    /// The size the manifest declares, if known.
    pub size: Option<u64>,
}

/// What kind of problem a [`Finding`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FindingKind {
    /// Content does not hash to the blob's digest (or has the wrong size).
    Corrupt,
    /// A blob a manifest needs is not there.
    Missing,
    /// A blob no manifest references.
    Orphan,
    /// A temporary or partial file left by an interrupted write or download.
    Leftover,
    /// A symlink or special file inside the store.
    Unsafe,
    /// A manifest that cannot be parsed, or a path that is not a valid name.
    BadManifest,
    /// The blob could not be read.
    Unreadable,
}

/// One problem, with everything needed to act on it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    /// The kind of problem.
    pub kind: FindingKind,
    /// The file concerned.
    pub path: PathBuf,
    /// The blob's expected digest, when it is a blob.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// Models that reference it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// One line of detail.
    pub detail: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = serde_json::to_value(self.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        write!(f, "{kind}: ")?;
        match &self.digest {
            Some(d) => write!(f, "blob {d}")?,
            None => write!(f, "{}", self.path.display())?,
        }
        if !self.models.is_empty() {
            write!(f, " (model {})", self.models.join(", "))?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// Result of [`verify_all()`].
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    /// Every problem found, sorted.
    pub findings: Vec<Finding>,
    /// Blobs hashed.
    pub blobs_checked: usize,
    /// Bytes hashed.
    pub bytes_hashed: u64,
}

/// Re-hashes each blob, in parallel across blobs (largest first). Returns,
/// in input order, `None` for a good blob or the problem found. A blob that
/// is listed twice is hashed once.
pub fn verify(checks: &[BlobCheck], opts: &VerifyOptions) -> Vec<Option<Finding>> {
    let mut unique: Vec<usize> = Vec::new();
    let mut seen = BTreeMap::new();
    let mut alias = vec![0usize; checks.len()];
    for (i, c) in checks.iter().enumerate() {
        let key = (c.path.clone(), c.digest.clone());
        alias[i] = *seen.entry(key).or_insert_with(|| {
            unique.push(i);
            i
        });
    }
    let sizes: Vec<u64> = unique
        .iter()
        .map(|&i| {
            std::fs::symlink_metadata(&checks[i].path)
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .collect();
    let mut order: Vec<usize> = (0..unique.len()).collect();
    order.sort_by_key(|&k| std::cmp::Reverse(sizes[k]));

    let threads = match opts.threads {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n => n,
    }
    .min(unique.len().max(1));
    let results: Mutex<BTreeMap<usize, Option<Finding>>> = Mutex::new(BTreeMap::new());
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&slot) = order.get(k) else { break };
                let i = unique[slot];
                let finding = check_one(&checks[i]);
                results
                    .lock()
                    .expect("no panics while holding the lock")
                    .insert(i, finding);
            });
        }
    });
    let results = results
        .into_inner()
        .expect("no panics while holding the lock");
    alias
        .iter()
        .map(|a| results.get(a).cloned().flatten())
        .collect()
}

fn check_one(c: &BlobCheck) -> Option<Finding> {
    let finding = |kind, detail: String| {
        Some(Finding {
            kind,
            path: c.path.clone(),
            digest: Some(c.digest.clone()),
            models: vec![],
            detail,
        })
    };
    let file = match fsutil::open_regular(&c.path) {
        Ok(f) => f,
        Err(crate::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return finding(FindingKind::Missing, "not in the store".into())
        }
        Err(e @ crate::Error::Unsafe { .. }) => return finding(FindingKind::Unsafe, e.to_string()),
        Err(e) => return finding(FindingKind::Unreadable, e.to_string()),
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if let Some(size) = c.size {
        if len != size {
            return finding(
                FindingKind::Corrupt,
                format!("size is {len} bytes, manifest says {size}"),
            );
        }
    }
    match hash_file(file) {
        Ok(d) if d == c.digest => None,
        Ok(d) => finding(FindingKind::Corrupt, format!("content hashes to {d}")),
        Err(e) => finding(FindingKind::Unreadable, e.to_string()),
    }
}

/// sha256 of an open file, read in large sequential chunks (SHA-NI when the CPU has it).
pub(crate) fn hash_file(mut file: std::fs::File) -> std::io::Result<Digest> {
    use std::os::fd::AsRawFd;
    // SAFETY: advisory call on a valid, open descriptor.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
    let mut h = protocol::Hasher::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(h.finish())
}

/// Moves a corrupt blob out of `blobs/` into `<root>/quarantine/`, under
/// `sha256-<hex>-<unix nanos>`, so that a later `fetch-blob` finds it
/// missing and fetches it again (fetch-blob treats a present file of the
/// right size as good, so a corrupt blob must leave its name first). Returns
/// where it went. The blob is renamed, never copied or followed: a symlink
/// under the blob's name is moved as the link itself. Ollama ignores the
/// folder; delete it once the repaired model checks out.
pub fn quarantine(store: &Store, digest: &Digest) -> Result<PathBuf> {
    let from = store.blob_path(digest);
    std::fs::symlink_metadata(&from).map_err(crate::io_err(&from))?;
    let dir = store.quarantine_dir();
    fsutil::create_dirs_safely(store.root(), &dir)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let to = dir.join(format!("{}-{nanos}", digest.blob_file_name()));
    if std::fs::symlink_metadata(&to).is_ok() {
        return Err(crate::Error::Other(format!(
            "cannot quarantine blob {digest}: {} exists",
            to.display()
        )));
    }
    std::fs::rename(&from, &to).map_err(crate::io_err(&from))?;
    if let Ok(d) = std::fs::File::open(store.blobs_dir()) {
        let _ = d.sync_all();
    }
    Ok(to)
}

/// What [`verify_docs()`] found, and the lines to pass on.
#[derive(Clone, Debug, Default)]
pub struct DocsVerdict {
    /// The lines to pass on, in input order: other line types unchanged,
    /// model documents whose blobs are all good (each marked present), and
    /// with quarantine those whose bad blobs were handed on (marked not present).
    pub lines: Vec<Line>,
    /// Every problem found, naming its model.
    pub findings: Vec<Finding>,
    /// Corrupt blobs moved aside, and where to.
    pub quarantined: Vec<(Digest, PathBuf)>,
    /// Model documents dropped: a blob bad and not handed on.
    pub dropped: usize,
}

/// Re-hashes every blob of the model documents among `lines` (in parallel)
/// and decides which documents pass on. With `quarantine`, a corrupt blob
/// is moved aside ([`quarantine_finding()`]; once, however many documents
/// share it) and a document whose bad blobs are all corrupt-and-moved or
/// missing passes on with those blobs `present: false`, for `fetch-blob`
/// to fetch again. Any other problem (unreadable, a symlink) drops it.
pub fn verify_docs(
    store: &Store,
    lines: Vec<Line>,
    opts: &VerifyOptions,
    quarantine: bool,
) -> Result<DocsVerdict> {
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
    let results = verify(&checks, opts);
    let mut verdict = DocsVerdict::default();
    let mut bad = vec![false; lines.len()];
    let mut absent = vec![BTreeSet::new(); lines.len()];
    let mut handed_on = BTreeSet::new();
    for ((r, &i), c) in results.into_iter().zip(&owner).zip(&checks) {
        let (Some(mut f), Line::Model(doc)) = (r, &lines[i]) else {
            continue;
        };
        f.models = vec![doc.name.clone()];
        let ok = quarantine
            && (f.kind == FindingKind::Missing || handed_on.contains(&c.digest) || {
                let moved = quarantine_finding(store, &f)?;
                let ok = moved.is_some();
                verdict
                    .quarantined
                    .extend(moved.map(|p| (c.digest.clone(), p)));
                ok
            });
        if ok {
            handed_on.insert(c.digest.clone());
            absent[i].insert(c.digest.clone());
        } else {
            bad[i] = true;
        }
        verdict.findings.push(f);
    }
    for ((line, bad), absent) in lines.into_iter().zip(bad).zip(&absent) {
        match line {
            Line::Model(mut doc) if !bad => {
                for b in doc.blobs_mut() {
                    b.present = !absent.contains(&b.digest);
                }
                verdict.lines.push(Line::Model(doc));
            }
            Line::Model(_) => verdict.dropped += 1,
            other => verdict.lines.push(other),
        }
    }
    Ok(verdict)
}

/// [`quarantine()`] for a finding: moves the blob when the finding says a
/// store blob is corrupt, and returns where it went; `None` for any other
/// finding (missing, unreadable, a path outside the store's blobs).
pub fn quarantine_finding(store: &Store, f: &Finding) -> Result<Option<PathBuf>> {
    match &f.digest {
        Some(d) if f.kind == FindingKind::Corrupt && f.path == store.blob_path(d) => {
            quarantine(store, d).map(Some)
        }
        _ => Ok(None),
    }
}

/// Audits the whole store: every blob re-hashed against its name; manifests
/// that do not parse or point at missing blobs; orphan blobs; leftover
/// temporary or partial files; symlinks and special files.
pub fn verify_all(store: &Store, opts: &VerifyOptions) -> Result<VerifyReport> {
    let mut findings = Vec::new();
    let mut refs: BTreeMap<Digest, BTreeSet<String>> = BTreeMap::new();
    let stray = |kind, path: &Path, detail: &str| Finding {
        kind,
        path: path.to_path_buf(),
        digest: None,
        models: vec![],
        detail: detail.to_string(),
    };

    for (parts, path, kind) in fsutil::walk_depth(&store.manifests_dir(), 4)? {
        let leftover = parts
            .last()
            .is_some_and(|p| p.starts_with('.') && p.contains(".tmp-"));
        match kind {
            EntryKind::Symlink => {
                findings.push(stray(FindingKind::Unsafe, &path, "symlink in manifests/"))
            }
            EntryKind::Stray => findings.push(stray(
                FindingKind::Unsafe,
                &path,
                "not a manifest (wrong depth or not a regular file)",
            )),
            EntryKind::File if leftover => findings.push(stray(
                FindingKind::Leftover,
                &path,
                "temporary file of an interrupted write",
            )),
            EntryKind::File => {
                let text = format!("{}/{}/{}:{}", parts[0], parts[1], parts[2], parts[3]);
                let Ok(name) = Name::parse(&text) else {
                    findings.push(stray(
                        FindingKind::BadManifest,
                        &path,
                        "path is not a valid model name",
                    ));
                    continue;
                };
                let parsed = fsutil::read_small_file(&path, MAX_MANIFEST)
                    .and_then(|b| Manifest::parse(&b, &name.short()));
                match parsed {
                    Ok(m) => {
                        for d in m.blobs() {
                            refs.entry(d.digest.clone())
                                .or_default()
                                .insert(name.short());
                        }
                    }
                    Err(e) => findings.push(stray(FindingKind::BadManifest, &path, &e.to_string())),
                }
            }
        }
    }

    let mut checks = Vec::new();
    let mut on_disk = BTreeSet::new();
    for (parts, path, kind) in fsutil::walk_depth(&store.blobs_dir(), 1)? {
        match (kind, Digest::from_blob_file_name(&parts[0])) {
            (EntryKind::File, Ok(digest)) => {
                on_disk.insert(digest.clone());
                checks.push(BlobCheck {
                    digest,
                    path,
                    size: None,
                });
            }
            (EntryKind::File, Err(_)) => findings.push(stray(
                FindingKind::Leftover,
                &path,
                "temporary or partial file, not a blob",
            )),
            (EntryKind::Symlink, _) => {
                findings.push(stray(FindingKind::Unsafe, &path, "symlink in blobs/"))
            }
            (EntryKind::Stray, _) => {
                findings.push(stray(FindingKind::Unsafe, &path, "not a regular file"))
            }
        }
    }
    let bytes_hashed = checks
        .iter()
        .filter_map(|c| std::fs::metadata(&c.path).ok())
        .map(|m| m.len())
        .sum();
    for (c, f) in checks.iter().zip(verify(&checks, opts)) {
        let models: Vec<String> = refs
            .get(&c.digest)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        if let Some(mut f) = f {
            f.models = models.clone();
            findings.push(f);
        }
        if models.is_empty() {
            let mut f = stray(FindingKind::Orphan, &c.path, "no manifest references it");
            f.digest = Some(c.digest.clone());
            findings.push(f);
        }
    }
    for (digest, models) in &refs {
        if !on_disk.contains(digest) {
            findings.push(Finding {
                kind: FindingKind::Missing,
                path: store.blob_path(digest),
                digest: Some(digest.clone()),
                models: models.iter().cloned().collect(),
                detail: "referenced by a manifest but not in the store".into(),
            });
        }
    }
    findings.sort();
    Ok(VerifyReport {
        findings,
        blobs_checked: checks.len(),
        bytes_hashed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quarantine_moves_the_blob_aside_and_verify_all_reports_it_missing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path());
        let blob = store.write_blob(b"weights").unwrap();
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"c","digest":"{blob}","size":7}},"layers":[]}}"#
        );
        store
            .write_manifest(&Name::parse("m:t").unwrap(), manifest.as_bytes())
            .unwrap();
        std::fs::write(store.blob_path(&blob), b"wEights").unwrap();
        let moved = quarantine(&store, &blob).unwrap();
        assert!(
            moved.starts_with(dir.path().join("quarantine")),
            "{moved:?}"
        );
        assert_eq!(std::fs::read(&moved).unwrap(), b"wEights");
        assert!(!store.has_blob(&blob).unwrap());
        // the manifest now points at a missing blob, and the audit says so
        let report = verify_all(&store, &VerifyOptions::default()).unwrap();
        let kinds: Vec<_> = report.findings.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, [FindingKind::Missing]);
        // a blob that is not there cannot be quarantined
        let err = quarantine(&store, &blob).unwrap_err().to_string();
        assert!(err.contains(&blob.blob_file_name()), "{err}");
    }

    #[test]
    fn quarantine_refuses_a_symlinked_quarantine_folder() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path());
        let blob = store.write_blob(b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("quarantine")).unwrap();
        let err = quarantine(&store, &blob).unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");
        assert!(store.has_blob(&blob).unwrap());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }
}

#[cfg(test)]
mod docs_tests {
    use super::*;

    #[test]
    fn a_shared_corrupt_blob_moves_once_and_both_models_are_handed_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path());
        let shared = store.write_blob(b"weights").unwrap();
        let own = store.write_blob(b"config").unwrap();
        let mut lines = Vec::new();
        for n in ["a:1", "b:1"] {
            let m = format!(
                r#"{{"schemaVersion":2,"config":{{"mediaType":"c","digest":"{own}","size":6}},"layers":[{{"mediaType":"m","digest":"{shared}","size":7}}]}}"#
            );
            let name = Name::parse(n).unwrap();
            store.write_manifest(&name, m.as_bytes()).unwrap();
            lines.push(Line::Model(store.model_doc(&name, m.as_bytes()).unwrap()));
        }
        std::fs::write(store.blob_path(&shared), b"wEights").unwrap();

        // without quarantine: both dropped, nothing moved
        let v = verify_docs(&store, lines.clone(), &VerifyOptions::default(), false).unwrap();
        assert_eq!((v.lines.len(), v.dropped, v.quarantined.len()), (0, 2, 0));
        assert_eq!(v.findings.len(), 2);
        assert!(store.has_blob(&shared).unwrap());

        let v = verify_docs(&store, lines, &VerifyOptions::default(), true).unwrap();
        assert_eq!((v.lines.len(), v.dropped), (2, 0));
        assert_eq!(v.quarantined.len(), 1, "moved once");
        for line in &v.lines {
            let Line::Model(doc) = line else { panic!() };
            let present: Vec<_> = doc.blobs().map(|b| (b.digest == own, b.present)).collect();
            assert_eq!(present, [(true, true), (false, false)]);
        }
        assert!(!store.has_blob(&shared).unwrap());
    }
}
