//! `list`, `remove` (with blob pruning) and `copy`.

use std::collections::BTreeSet;
use std::time::SystemTime;

use crate::manifest::{Manifest, MAX_MANIFEST};
use crate::{fsutil, Digest, Error, Name, Result, Store};

/// One row of `list`.
#[derive(Clone, Debug)]
pub struct ListEntry {
    /// The name as stored.
    pub name: Name,
    /// sha256 of the manifest bytes (`ollama list` shows its first 12 hex digits as ID).
    pub digest: Digest,
    /// Config plus layers, in bytes.
    pub size: u64,
    /// The manifest's modification time.
    pub modified: SystemTime,
}

/// Every model in the store, most recently modified first (as `ollama list`).
/// A manifest that cannot be read is an error naming it.
pub fn list(store: &Store) -> Result<Vec<ListEntry>> {
    let mut out = Vec::new();
    for (name, path) in store.manifests()? {
        let bytes = fsutil::read_small_file(&path, MAX_MANIFEST)?;
        let manifest = Manifest::parse(&bytes, &name.short())?;
        let modified = std::fs::symlink_metadata(&path)
            .and_then(|m| m.modified())
            .map_err(crate::io_err(&path))?;
        out.push(ListEntry {
            digest: Digest::of_bytes(&bytes),
            size: manifest.total_size(),
            modified,
            name,
        });
    }
    out.sort_by(|a, b| {
        b.modified
            .cmp(&a.modified)
            .then_with(|| a.name.cmp(&b.name))
    });
    Ok(out)
}

/// What [`remove()`] did.
#[derive(Clone, Debug)]
pub struct RemoveReport {
    /// The model removed, as stored.
    pub name: Name,
    /// Blobs deleted because no other manifest references them.
    pub pruned: Vec<Digest>,
}

/// Removes a model's manifest, then deletes its blobs that no other manifest
/// references. If another manifest cannot be parsed, no blob is pruned
/// (it might reference them) and the error says so.
pub fn remove(store: &Store, name: &Name) -> Result<RemoveReport> {
    let (stored, path, bytes) = store.read_manifest(name)?;
    let manifest = Manifest::parse(&bytes, &stored.short())?;
    std::fs::remove_file(&path).map_err(crate::io_err(&path))?;
    // drop empty folders up to manifests/
    let top = store.manifests_dir();
    let mut dir = path.parent().map(|p| p.to_path_buf());
    while let Some(d) = dir {
        if d == top || std::fs::remove_dir(&d).is_err() {
            break;
        }
        dir = d.parent().map(|p| p.to_path_buf());
    }

    let mut still_used = BTreeSet::new();
    for (other, other_path) in store.manifests()? {
        let m = fsutil::read_small_file(&other_path, MAX_MANIFEST)
            .and_then(|b| Manifest::parse(&b, &other.short()));
        match m {
            Ok(m) => still_used.extend(m.blobs().map(|d| d.digest.clone())),
            Err(e) => {
                return Err(Error::Other(format!(
                    "removed {} but pruned no blobs: cannot read manifest of {}: {e}",
                    stored.short(),
                    other.short()
                )))
            }
        }
    }
    let mut pruned = Vec::new();
    let candidates: BTreeSet<Digest> = manifest.blobs().map(|d| d.digest.clone()).collect();
    for digest in candidates {
        if still_used.contains(&digest) || !store.has_blob(&digest).unwrap_or(false) {
            continue;
        }
        let p = store.blob_path(&digest);
        std::fs::remove_file(&p).map_err(crate::io_err(&p))?;
        pruned.push(digest);
    }
    Ok(RemoveReport {
        name: stored,
        pruned,
    })
}

/// Copies (tags) a model: the same manifest bytes under another name.
/// Returns the manifest digest (identical for both names).
pub fn copy(store: &Store, src: &Name, dst: &Name) -> Result<Digest> {
    let (_, _, bytes) = store.read_manifest(src)?;
    store.write_manifest(dst, &bytes)
}
