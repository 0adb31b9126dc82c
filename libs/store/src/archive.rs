//! `export` and `import`: models moved between machines as an OCI image
//! layout in a tar archive, no registry needed.
//!
//! ```text
//! oci-layout                 {"imageLayoutVersion":"1.0.0"}
//! index.json                 one descriptor per model, named by the
//!                            org.opencontainers.image.ref.name annotation
//!                            (host/namespace/model:tag)
//! blobs/sha256/<hex>         every manifest (bytes as stored), config and layer, once
//! ```
//!
//! Export writes `oci-layout` and `index.json` first, then the blobs, so an
//! importer can stream. Import trusts nothing in the archive: each blob is
//! streamed into a temp file in the store's `blobs/` while being hashed, and
//! only when the whole archive has been read, every digest and size checked
//! and every manifest parsed, are blobs renamed into place and then the
//! manifests written. A refused archive leaves the store as it was.
//!
//! What no digest covers: `index.json` itself. A model's name altered there
//! imports the same (verified) model under the altered name.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::manifest::{Manifest, MAX_MANIFEST};
use crate::{fsutil, io_err, Digest, Error, Name, Result, Store};

/// The annotation that names a model in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// `index.json`'s media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// The `oci-layout` file's content.
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// Largest `index.json` and `oci-layout` accepted.
const MAX_SMALL: u64 = 4 << 20;
/// Largest blob accepted (1 TiB, as manifests allow).
const MAX_BLOB: u64 = 1 << 40;

/// What [`export()`] wrote.
#[derive(Clone, Debug, Default)]
pub struct ExportReport {
    /// Each model (as stored) and its manifest digest.
    pub models: Vec<(Name, Digest)>,
    /// Distinct blobs written (manifests included).
    pub blobs: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// What [`import()`] did.
#[derive(Clone, Debug, Default)]
pub struct ImportReport {
    /// Each model written and its manifest digest.
    pub models: Vec<(Name, Digest)>,
    /// Blobs new to the store.
    pub blobs_written: usize,
    /// Blobs the store already had (checked in the archive all the same).
    pub blobs_present: usize,
}

/// Options of [`import()`].
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// fsync each blob before it gets its name.
    pub fsync: bool,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions { fsync: true }
    }
}

#[derive(Serialize, Deserialize)]
struct Index {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    manifests: Vec<IndexEntry>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Serialize, Deserialize)]
struct IndexEntry {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: Digest,
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

fn bad(why: impl Into<String>) -> Error {
    Error::Archive(why.into())
}

// ---- export ----

/// Writes the models `names` (with every blob they use, each once) to `out`
/// as a tar of an OCI image layout. Blobs are re-hashed as they stream out:
/// a corrupt blob stops the export with an error naming it (`out` then
/// holds a partial archive, which [`import()`] refuses).
pub fn export(store: &Store, names: &[Name], out: impl Write) -> Result<ExportReport> {
    let mut report = ExportReport::default();
    let mut index = Index {
        schema_version: 2,
        media_type: Some(OCI_INDEX.into()),
        manifests: Vec::new(),
        extra: Map::new(),
    };
    // digest → (size, which model, manifest bytes when it is a manifest)
    let mut blobs: BTreeMap<Digest, (u64, String, Option<Vec<u8>>)> = BTreeMap::new();
    for name in names {
        let (stored, _, bytes) = store.read_manifest(name)?;
        let manifest = Manifest::parse(&bytes, &stored.short())?;
        let digest = Digest::of_bytes(&bytes);
        for d in manifest.blobs() {
            blobs
                .entry(d.digest.clone())
                .or_insert((d.size, stored.short(), None));
        }
        index.manifests.push(IndexEntry {
            media_type: manifest
                .media_type
                .clone()
                .unwrap_or_else(|| protocol::media::OCI_MANIFEST.into()),
            digest: digest.clone(),
            size: bytes.len() as u64,
            annotations: [(REF_NAME.to_string(), stored.to_string())].into(),
        });
        blobs.insert(
            digest.clone(),
            (bytes.len() as u64, stored.short(), Some(bytes)),
        );
        report.models.push((stored, digest));
    }
    let index = serde_json::to_vec(&index).map_err(|e| bad(e.to_string()))?;

    let mut tar = tar::Builder::new(out);
    append(&mut tar, "oci-layout", OCI_LAYOUT.len() as u64, OCI_LAYOUT)?;
    append(&mut tar, "index.json", index.len() as u64, &index[..])?;
    for (digest, (size, model, bytes)) in &blobs {
        let entry = format!("blobs/sha256/{}", digest.hex());
        match bytes {
            Some(b) => append(&mut tar, &entry, *size, &b[..])?,
            None => {
                let path = store.blob_path(digest);
                let file = fsutil::open_regular(&path)?;
                let len = file.metadata().map_err(io_err(&path))?.len();
                if len != *size {
                    return Err(Error::Other(format!(
                        "blob {digest} of {model} is {len} bytes, its manifest says {size} (verify --quarantine, then fetch-blob, repairs it)"
                    )));
                }
                let mut reader = HashingReader::new(file);
                append(&mut tar, &entry, *size, &mut reader)?;
                let got = reader.hasher.finish();
                if got != *digest {
                    return Err(Error::Other(format!(
                        "blob {digest} of {model} is corrupt: its content hashes to {got} (verify --quarantine, then fetch-blob, repairs it)"
                    )));
                }
            }
        }
        report.blobs += 1;
        report.bytes += size;
    }
    tar.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(|e| Error::Other(format!("writing the archive: {e}")))?;
    Ok(report)
}

/// [`export()`] into the file `path`, written beside it under a temp name
/// and renamed only once complete: a failed export leaves no file (and an
/// existing file at `path` unchanged).
pub fn export_file(store: &Store, names: &[Name], path: &std::path::Path) -> Result<ExportReport> {
    let tmp = fsutil::temp_path_for(path);
    let result = (|| {
        let f = fsutil::create_new(&tmp)?;
        let mut w = io::BufWriter::with_capacity(1 << 20, f);
        let report = export(store, names, &mut w)?;
        let f = w.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
        f.sync_all().map_err(io_err(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io_err(path))?;
        Ok(report)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Appends a regular file with reproducible metadata (mode 0644, uid/gid 0, mtime 0).
fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    size: u64,
    data: impl Read,
) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    tar.append_data(&mut h, path, data)
        .map_err(|e| Error::Other(format!("writing {path} to the archive: {e}")))
}

struct HashingReader<R> {
    inner: R,
    hasher: protocol::Hasher,
}

impl<R> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: protocol::Hasher::new(),
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

// ---- import ----

/// Temp files written so far; removed on drop unless published.
struct Staged {
    temps: Vec<PathBuf>,
}

impl Drop for Staged {
    fn drop(&mut self) {
        for t in &self.temps {
            let _ = std::fs::remove_file(t);
        }
    }
}

/// Where a blob of the archive went while reading.
enum Held {
    /// In a temp file in `blobs/`.
    Temp(PathBuf),
    /// The store has it already; the archive's copy was hashed and dropped.
    Present,
}

/// Reads an OCI image layout tar from `input` and stores its models: every
/// blob is checked against its name and every manifest against the index
/// before anything gets a final name; then blobs are renamed into place and
/// the manifests written, bytes as in the archive.
///
/// Refused, with nothing left in the store: entries whose path is absolute
/// or has `..`, links and special files, duplicate entries, sizes over
/// 1 TiB or past the end of the input, a truncated archive, a blob whose
/// content does not hash to its name, an index naming a blob the archive
/// lacks, a manifest without a valid `org.opencontainers.image.ref.name`.
pub fn import(store: &Store, input: impl Read, opts: &ImportOptions) -> Result<ImportReport> {
    let blobs_dir = store.blobs_dir();
    let created_root = !store.root().exists();
    let created_blobs = !blobs_dir.exists();
    let result = import_inner(store, input, opts);
    if result.is_err() {
        // leave no empty folder behind that the import created
        if created_blobs {
            let _ = std::fs::remove_dir(&blobs_dir);
        }
        if created_root {
            let _ = std::fs::remove_dir(store.root());
        }
    }
    result
}

fn import_inner(store: &Store, input: impl Read, opts: &ImportOptions) -> Result<ImportReport> {
    let mut staged = Staged { temps: Vec::new() };
    let mut held: BTreeMap<Digest, (Held, u64)> = BTreeMap::new();
    let mut index_bytes = None;
    let mut layout_bytes = None;
    let mut seen = BTreeSet::new();

    let counter = CountingReader {
        inner: input,
        count: 0,
    };
    let mut archive = tar::Archive::new(counter);
    let mut end_of_entries = 0u64;
    let mut last = String::from("the start");
    let entries = archive.entries().map_err(|e| tar_error(&e, &last))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| tar_error(&e, &last))?;
        let raw = entry.path_bytes().into_owned();
        let path = entry_path(&raw)?;
        last = format!("entry {path}");
        let kind = entry.header().entry_type();
        let size = entry.size();
        end_of_entries = entry.raw_file_position() + size.div_ceil(512) * 512;
        if kind.is_dir() || kind == tar::EntryType::XGlobalHeader {
            continue;
        }
        if size > MAX_BLOB {
            return Err(bad(format!(
                "entry {path} declares {size} bytes, more than {MAX_BLOB}"
            )));
        }
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            let what = if kind.is_symlink() {
                "a symlink"
            } else if kind.is_hard_link() {
                "a hard link"
            } else {
                "not a regular file"
            };
            return Err(bad(format!(
                "entry {path} is {what}; only regular files are imported"
            )));
        }
        if !seen.insert(path.clone()) {
            return Err(bad(format!("duplicate entry {path}")));
        }
        match path.as_str() {
            "index.json" | "oci-layout" => {
                if size > MAX_SMALL {
                    return Err(bad(format!(
                        "entry {path} declares {size} bytes, more than {MAX_SMALL}"
                    )));
                }
                let bytes = read_exact_entry(&mut entry, size, &path)?;
                if path == "index.json" {
                    index_bytes = Some(bytes);
                } else {
                    layout_bytes = Some(bytes);
                }
            }
            p => {
                let Some(hex) = p.strip_prefix("blobs/sha256/") else {
                    continue; // another file of the layout: not ours, skipped
                };
                let digest: Digest = format!("sha256:{hex}")
                    .parse()
                    .map_err(|_| bad(format!("entry {path}: not a sha256 blob name")))?;
                let h = stage_blob(store, &mut staged, &mut entry, &digest, size, opts)?;
                held.insert(digest, (h, size));
            }
        }
    }
    archive_counter_check(archive, end_of_entries)?;

    if let Some(l) = &layout_bytes {
        let v: Value = serde_json::from_slice(l)
            .map_err(|e| bad(format!("oci-layout: {}", printable(&e.to_string()))))?;
        if v.get("imageLayoutVersion").and_then(Value::as_str) != Some("1.0.0") {
            return Err(bad("oci-layout: imageLayoutVersion is not 1.0.0"));
        }
    }
    let index_bytes = index_bytes.ok_or_else(|| bad("no index.json in the archive"))?;
    let index: Index = serde_json::from_slice(&index_bytes)
        .map_err(|e| bad(format!("index.json: {}", printable(&e.to_string()))))?;
    if index.schema_version != 2 {
        return Err(bad(format!(
            "index.json: schemaVersion {} (only 2 is supported)",
            index.schema_version
        )));
    }
    if index.manifests.is_empty() {
        return Err(bad("index.json names no manifest"));
    }

    // check every model before anything is renamed
    let mut models = Vec::new();
    let mut layers = BTreeSet::new();
    for m in &index.manifests {
        let ref_name = m.annotations.get(REF_NAME).ok_or_else(|| {
            bad(format!(
                "index.json: manifest {} has no {REF_NAME}",
                m.digest
            ))
        })?;
        let name = Name::parse(ref_name)
            .map_err(|e| bad(format!("index.json: manifest {}: {e}", m.digest)))?;
        let bytes = read_held(store, &held, &m.digest, m.size)?;
        let manifest = Manifest::parse(&bytes, &format!("{name} in the archive"))?;
        for d in manifest.blobs() {
            match held.get(&d.digest) {
                None => {
                    return Err(bad(format!(
                        "manifest of {name} needs blob {} that the archive lacks",
                        d.digest
                    )))
                }
                Some((_, size)) if *size != d.size => {
                    return Err(bad(format!(
                        "blob {} of {name} is {size} bytes in the archive, the manifest says {}",
                        d.digest, d.size
                    )))
                }
                Some(_) => {
                    layers.insert(d.digest.clone());
                }
            }
        }
        models.push((name, bytes, m.digest.clone()));
    }

    // publish the blobs the manifests use (a manifest itself lives only
    // under manifests/, as Ollama keeps it), then the manifests
    let mut report = ImportReport::default();
    for d in &layers {
        match held.get(d) {
            Some((Held::Temp(tmp), _)) => {
                fsutil::publish(tmp, &store.blob_path(d))?;
                report.blobs_written += 1;
            }
            _ => report.blobs_present += 1,
        }
    }
    for (name, bytes, digest) in models {
        store.write_manifest(&name, &bytes)?;
        report.models.push((name, digest));
    }
    Ok(report)
}

/// After the last entry, the archive must have gone on to its end-of-archive
/// blocks; an input that simply stops after an entry was cut short.
fn archive_counter_check<R: Read>(
    archive: tar::Archive<CountingReader<R>>,
    end_of_entries: u64,
) -> Result<()> {
    let read = archive.into_inner().count;
    if read <= end_of_entries {
        return Err(bad(
            "truncated archive: it ends without the end-of-archive blocks",
        ));
    }
    Ok(())
}

struct CountingReader<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// An error of the tar reader, between entries: the input ended, or a
/// header is malformed.
fn tar_error(e: &io::Error, after: &str) -> Error {
    let raw = e.to_string();
    // the tar reader quotes the bad header bytes: keep its words, not the bytes
    let text = match raw.split_once(':') {
        Some((words, rest)) if printable(rest) != rest => printable(words),
        _ => printable(&raw),
    };
    if e.kind() == io::ErrorKind::UnexpectedEof
        || text.contains("EOF")
        || text.contains("entire block")
    {
        bad(format!("truncated archive: it ends after {after} ({text})"))
    } else {
        bad(format!("malformed archive after {after}: {text}"))
    }
}

/// The entry's path, checked: UTF-8, relative, no `..`, a leading `./` dropped.
fn entry_path(raw: &[u8]) -> Result<String> {
    let shown = printable(&String::from_utf8_lossy(raw));
    let Ok(p) = std::str::from_utf8(raw) else {
        return Err(bad(format!("entry {shown}: path is not UTF-8")));
    };
    if p.starts_with('/') {
        return Err(bad(format!("entry {shown}: absolute path")));
    }
    if p.split('/').any(|c| c == "..") {
        return Err(bad(format!("entry {shown}: path leaves the archive")));
    }
    if p.len() > MAX_PATH || p.chars().any(char::is_control) {
        return Err(bad(format!(
            "entry {shown}: path longer than {MAX_PATH} bytes or with control characters"
        )));
    }
    let mut p = p;
    while let Some(rest) = p.strip_prefix("./") {
        p = rest;
    }
    Ok(p.trim_end_matches('/').to_string())
}

/// Longest entry path accepted (ours are 77 bytes).
const MAX_PATH: usize = 1024;

/// Text from the archive made safe for one line on a terminal: control
/// characters escaped, at most 120 characters.
fn printable(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(120)
        .flat_map(|c| {
            if c.is_control() || c == char::REPLACEMENT_CHARACTER {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    if s.chars().nth(120).is_some() {
        out.push('…');
    }
    out
}

/// Reads exactly `size` bytes of a small entry; fewer means a truncated archive.
fn read_exact_entry(entry: &mut impl Read, size: u64, path: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    entry
        .take(size)
        .read_to_end(&mut out)
        .map_err(|e| bad(format!("entry {path}: {e}")))?;
    if out.len() as u64 != size {
        return Err(bad(format!(
            "truncated archive: entry {path} has {} of its {size} bytes",
            out.len()
        )));
    }
    Ok(out)
}

/// Streams one blob entry into a temp file in `blobs/` (or, when the store
/// has the blob, into nothing) while hashing; checks size and digest.
fn stage_blob(
    store: &Store,
    staged: &mut Staged,
    entry: &mut impl Read,
    digest: &Digest,
    size: u64,
    opts: &ImportOptions,
) -> Result<Held> {
    let path = format!("blobs/sha256/{}", digest.hex());
    let present = store.has_blob(digest)?;
    let mut sink: Box<dyn Write> = Box::new(io::sink());
    let mut tmp = None;
    if !present {
        fsutil::create_dirs_safely(store.root(), &store.blobs_dir())?;
        let t = fsutil::temp_path_for(&store.blob_path(digest));
        let f = fsutil::create_new(&t)?;
        staged.temps.push(t.clone());
        sink = Box::new(io::BufWriter::with_capacity(1 << 20, f));
        tmp = Some(t);
    }
    let mut reader = HashingReader::new(entry.take(size));
    let n = io::copy(&mut reader, &mut sink).map_err(|e| bad(format!("entry {path}: {e}")))?;
    if n != size {
        return Err(bad(format!(
            "truncated archive: entry {path} has {n} of its {size} bytes"
        )));
    }
    let got = reader.hasher.finish();
    if got != *digest {
        return Err(bad(format!(
            "entry {path}: content hashes to {got}, not the digest its name says"
        )));
    }
    sink.flush()
        .map_err(|e| bad(format!("writing blob {digest}: {e}")))?;
    drop(sink);
    match tmp {
        Some(t) => {
            if opts.fsync {
                File::open(&t)
                    .and_then(|f| f.sync_all())
                    .map_err(io_err(&t))?;
            }
            Ok(Held::Temp(t))
        }
        None => Ok(Held::Present),
    }
}

/// The bytes of a manifest the index names, from its temp file (or the
/// store's copy), checked again against its digest and the index's size.
fn read_held(
    store: &Store,
    held: &BTreeMap<Digest, (Held, u64)>,
    digest: &Digest,
    size: u64,
) -> Result<Vec<u8>> {
    let (h, got) = held.get(digest).ok_or_else(|| {
        bad(format!(
            "index.json names manifest {digest} that the archive lacks"
        ))
    })?;
    if *got != size {
        return Err(bad(format!(
            "index.json: manifest {digest} is {got} bytes in the archive, the index says {size}"
        )));
    }
    if size > MAX_MANIFEST {
        return Err(bad(format!(
            "manifest {digest}: {size} bytes, more than {MAX_MANIFEST}"
        )));
    }
    let path = match h {
        Held::Temp(t) => t.clone(),
        Held::Present => store.blob_path(digest),
    };
    let bytes = fsutil::read_small_file(&path, MAX_MANIFEST)?;
    if Digest::of_bytes(&bytes) != *digest {
        return Err(Error::Other(format!(
            "{} changed while importing",
            path.display()
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two models sharing their weights blob; returns the store and the weights' digest.
    fn two_models(dir: &std::path::Path) -> (Store, Digest) {
        let store = Store::open(dir);
        let weights = store.write_blob(&[7u8; 3000]).unwrap();
        for (name, tpl) in [("a:1", "A {{ .Prompt }}"), ("me/b:2", "B {{ .Prompt }}")] {
            let t = store.write_blob(tpl.as_bytes()).unwrap();
            let c = store
                .write_blob(format!("{{\"n\":\"{name}\"}}").as_bytes())
                .unwrap();
            let m = format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{c}","size":{}}},"layers":[{{"mediaType":"application/vnd.ollama.image.model","digest":"{weights}","size":3000}},{{"mediaType":"application/vnd.ollama.image.template","digest":"{t}","size":{}}}]}}"#,
                name.len() + 8,
                tpl.len()
            );
            store
                .write_manifest(&Name::parse(name).unwrap(), m.as_bytes())
                .unwrap();
        }
        (store, weights)
    }

    fn names(list: &[&str]) -> Vec<Name> {
        list.iter().map(|n| Name::parse(n).unwrap()).collect()
    }

    /// Every file under `dir`, relative, with its bytes.
    fn files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for e in walk(dir) {
            let rel = e.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            out.push((rel, std::fs::read(&e).unwrap()));
        }
        out.sort();
        out
    }

    fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(dir) else {
            return out;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    fn entry_names(tar_bytes: &[u8]) -> Vec<String> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn round_trip_is_byte_for_byte_and_shared_blobs_go_once() {
        let src = tempfile::tempdir().unwrap();
        let (store, weights) = two_models(src.path());
        let mut tar_bytes = Vec::new();
        let r = export(&store, &names(&["a:1", "me/b:2"]), &mut tar_bytes).unwrap();
        assert_eq!(r.models.len(), 2);
        let entries = entry_names(&tar_bytes);
        assert_eq!(&entries[..2], ["oci-layout", "index.json"]);
        let weights_entry = format!("blobs/sha256/{}", weights.hex());
        assert_eq!(entries.iter().filter(|e| **e == weights_entry).count(), 1);
        // 2 manifests + 2 configs + 2 templates + 1 shared weights
        assert_eq!(entries.len(), 2 + 7, "{entries:?}");
        assert_eq!(r.blobs, 7);

        // index.json names both models with the OCI annotation
        let mut a = tar::Archive::new(&tar_bytes[..]);
        let mut index = String::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            if e.path().unwrap().to_str() == Some("index.json") {
                e.read_to_string(&mut index).unwrap();
            }
        }
        let v: Value = serde_json::from_str(&index).unwrap();
        let refs: Vec<&str> = v["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["annotations"][REF_NAME].as_str().unwrap())
            .collect();
        assert_eq!(
            refs,
            [
                "registry.ollama.ai/library/a:1",
                "registry.ollama.ai/me/b:2"
            ]
        );

        let dst = tempfile::tempdir().unwrap();
        let into = Store::open(dst.path());
        let r = import(&into, &tar_bytes[..], &ImportOptions::default()).unwrap();
        assert_eq!(r.models.len(), 2);
        assert_eq!((r.blobs_written, r.blobs_present), (5, 0));
        assert_eq!(
            files(src.path()),
            files(dst.path()),
            "same files, same bytes"
        );

        // again: nothing new, everything checked
        let r = import(&into, &tar_bytes[..], &ImportOptions::default()).unwrap();
        assert_eq!((r.blobs_written, r.blobs_present), (0, 5));
        assert_eq!(files(src.path()), files(dst.path()));

        // and the export of the import is the same archive
        let mut again = Vec::new();
        export(&into, &names(&["a:1", "me/b:2"]), &mut again).unwrap();
        assert_eq!(again, tar_bytes);
    }

    #[test]
    fn export_refuses_a_corrupt_blob_naming_it() {
        let src = tempfile::tempdir().unwrap();
        let (store, weights) = two_models(src.path());
        std::fs::write(store.blob_path(&weights), [8u8; 3000]).unwrap();
        let err = export(&store, &names(&["a:1"]), &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("blob {weights} of a:1 is corrupt")),
            "{err}"
        );
        let err = export(&store, &names(&["nope:1"]), &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope:1 not found"), "{err}");
        // to a file: nothing is left behind, an existing file is kept
        let out = tempfile::tempdir().unwrap();
        let path = out.path().join("a.tar");
        assert!(export_file(&store, &names(&["a:1"]), &path).is_err());
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
        std::fs::write(&path, b"keep").unwrap();
        assert!(export_file(&store, &names(&["a:1"]), &path).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"keep");
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 1);
        std::fs::write(store.blob_path(&weights), [7u8; 3000]).unwrap();
        export_file(&store, &names(&["me/b:2"]), &path).unwrap();
        assert_eq!(entry_names(&std::fs::read(&path).unwrap()).len(), 2 + 4);
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 1);
    }

    // ---- hostile archives ----

    /// A raw tar entry: name bytes as given (no checks), type flag, declared
    /// size and the data actually written.
    fn raw_entry(out: &mut Vec<u8>, name: &str, kind: u8, declared: u64, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_mode(0o644);
        h.set_size(declared);
        h.set_entry_type(tar::EntryType::new(kind));
        if kind == b'1' || kind == b'2' {
            h.as_old_mut().linkname[..10].copy_from_slice(b"/etc/passw");
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    fn end(out: &mut Vec<u8>) {
        out.extend_from_slice(&[0u8; 1024]);
    }

    /// A valid archive of `a:1` from a fresh store.
    fn good_archive() -> Vec<u8> {
        let src = tempfile::tempdir().unwrap();
        let (store, _) = two_models(src.path());
        let mut t = Vec::new();
        export(&store, &names(&["a:1"]), &mut t).unwrap();
        t
    }

    /// Imports into a fresh store and expects a one-line refusal holding
    /// `want`, with nothing left in the store (not even an empty folder).
    #[track_caller]
    fn refused(archive: &[u8], want: &str) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("models");
        let err = import(&Store::open(&root), archive, &ImportOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "want {want:?}, got {err:?}");
        assert!(!err.contains('\n'), "{err}");
        assert!(!root.exists(), "left behind: {:?}", files(&root));
        // and into a store that holds a model already: it is unchanged
        let dir2 = tempfile::tempdir().unwrap();
        two_models(dir2.path());
        let before = files(dir2.path());
        assert!(import(
            &Store::open(dir2.path()),
            archive,
            &ImportOptions::default()
        )
        .is_err());
        assert_eq!(before, files(dir2.path()));
    }

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn hostile_entry_names_and_types() {
        let mut t = Vec::new();
        raw_entry(&mut t, "../evil", b'0', 3, b"bad");
        end(&mut t);
        refused(&t, "entry ../evil: path leaves the archive");

        let mut t = Vec::new();
        raw_entry(&mut t, "blobs/sha256/../../x", b'0', 3, b"bad");
        end(&mut t);
        refused(&t, "path leaves the archive");

        let mut t = Vec::new();
        raw_entry(&mut t, "/etc/passwd", b'0', 3, b"bad");
        end(&mut t);
        refused(&t, "entry /etc/passwd: absolute path");

        let name = format!("blobs/sha256/{HEX}");
        for (kind, what) in [
            (b'2', "a symlink"),
            (b'1', "a hard link"),
            (b'3', "not a regular file"),
        ] {
            let mut t = Vec::new();
            raw_entry(&mut t, &name, kind, 0, b"");
            end(&mut t);
            refused(&t, &format!("entry {name} is {what}"));
        }

        // terminal escapes in a name are not echoed raw
        let mut t = Vec::new();
        raw_entry(&mut t, "x\x1b[31mred", b'0', 3, b"bad");
        end(&mut t);
        refused(
            &t,
            "entry x\\u{1b}[31mred: path longer than 1024 bytes or with control characters",
        );

        let mut t = Vec::new();
        raw_entry(&mut t, "blobs/sha256/ABC", b'0', 3, b"bad");
        end(&mut t);
        refused(&t, "entry blobs/sha256/ABC: not a sha256 blob name");
    }

    #[test]
    fn hostile_sizes_duplicates_and_contents() {
        let name = format!("blobs/sha256/{HEX}");
        // a declared size far past anything real, and one past the input's end
        let mut t = Vec::new();
        raw_entry(&mut t, &name, b'0', 1 << 41, b"");
        end(&mut t);
        refused(&t, "declares 2199023255552 bytes, more than");
        let mut t = Vec::new();
        raw_entry(&mut t, &name, b'0', 1 << 30, b"");
        refused(&t, "truncated archive");
        let mut t = Vec::new();
        raw_entry(&mut t, "index.json", b'0', 1 << 30, b"{}");
        end(&mut t);
        refused(&t, "entry index.json declares 1073741824 bytes");

        // duplicate entries (also through a ./ prefix)
        let mut t = Vec::new();
        raw_entry(&mut t, &name, b'0', 0, b"");
        raw_entry(&mut t, &format!("./{name}"), b'0', 0, b"");
        end(&mut t);
        refused(&t, &format!("duplicate entry {name}"));

        // content that does not hash to its name
        let mut t = Vec::new();
        raw_entry(&mut t, &name, b'0', 4, b"evil");
        end(&mut t);
        refused(&t, &format!("entry {name}: content hashes to"));
    }

    /// Single-byte corruptions anywhere in a good archive: never a panic;
    /// either refused with nothing left behind, or the same blobs and
    /// manifest bytes as the original. (`index.json` carries no digest in
    /// an OCI layout, so a flip there that still parses, in a model's name,
    /// imports the same model under the changed name: that is the one
    /// change an archive without a signature cannot reveal.)
    #[test]
    fn flipped_bytes_are_refused_or_harmless() {
        let good = good_archive();
        let summary = |dir: &std::path::Path| -> Vec<(String, Digest)> {
            files(dir)
                .into_iter()
                .map(|(name, bytes)| (name, Digest::of_bytes(&bytes)))
                .collect()
        };
        let want = {
            let dir = tempfile::tempdir().unwrap();
            import(
                &Store::open(dir.path()),
                &good[..],
                &ImportOptions::default(),
            )
            .unwrap();
            summary(dir.path())
        };
        let index_range = {
            let mut a = tar::Archive::new(&good[..]);
            let e = a.entries().unwrap().nth(1).unwrap().unwrap();
            assert_eq!(e.path().unwrap().to_str(), Some("index.json"));
            let at = e.raw_file_position() as usize;
            at..at + e.size() as usize
        };
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let (mut refused, mut harmless) = (0, 0);
        for _ in 0..300 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut bad = good.clone();
            let at = (seed % bad.len() as u64) as usize;
            bad[at] ^= 1 << (seed >> 60 & 7);
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("m");
            match import(
                &Store::open(&root),
                &bad[..],
                &ImportOptions { fsync: false },
            ) {
                Err(e) => {
                    assert!(!root.exists(), "byte {at}: {e}: left {:?}", files(&root));
                    refused += 1;
                }
                Ok(_) => {
                    let got = summary(&root);
                    let digests =
                        |v: &[(String, Digest)]| v.iter().map(|f| f.1.clone()).collect::<Vec<_>>();
                    assert_eq!(
                        digests(&got),
                        digests(&want),
                        "byte {at} changed a blob or manifest"
                    );
                    if !index_range.contains(&at) {
                        assert_eq!(got, want, "byte {at} changed what was imported");
                    }
                    harmless += 1;
                }
            }
        }
        assert!(
            refused > 0 && harmless > 0,
            "{refused} refused, {harmless} harmless"
        );
    }

    #[test]
    fn hostile_index_and_truncation() {
        let good = good_archive();
        // index.json names a manifest the archive lacks
        let mut t = Vec::new();
        let idx = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"x","digest":"sha256:{HEX}","size":0,"annotations":{{"{REF_NAME}":"a:1"}}}}]}}"#
        );
        raw_entry(&mut t, "index.json", b'0', idx.len() as u64, idx.as_bytes());
        end(&mut t);
        refused(
            &t,
            &format!("index.json names manifest sha256:{HEX} that the archive lacks"),
        );

        // a manifest whose layer is missing: drop the weights entry from a good archive
        let mut t = Vec::new();
        let mut a = tar::Archive::new(&good[..]);
        let mut dropped = String::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            if e.size() == 3000 {
                dropped = p;
                continue;
            }
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            raw_entry(&mut t, &p, b'0', data.len() as u64, &data);
        }
        end(&mut t);
        let weights = dropped.trim_start_matches("blobs/sha256/");
        refused(
            &t,
            &format!("needs blob sha256:{weights} that the archive lacks"),
        );

        // no index at all
        let mut t = Vec::new();
        raw_entry(&mut t, "oci-layout", b'0', 2, b"{}");
        end(&mut t);
        refused(&t, "oci-layout: imageLayoutVersion");

        // truncated anywhere: mid-header, mid-blob, in the last entry's
        // padding, or just the end-of-archive blocks missing (a cut inside
        // the second zero block loses nothing and is accepted, as by tar(1))
        for cut in [
            100,
            700,
            good.len() / 2,
            good.len() - 1025,
            good.len() - 1024,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("m");
            let err = import(&Store::open(&root), &good[..cut], &ImportOptions::default());
            let err = err
                .err()
                .unwrap_or_else(|| panic!("cut at {cut} accepted"))
                .to_string();
            assert!(err.contains("truncated archive"), "cut at {cut}: {err}");
            assert!(!root.exists(), "cut at {cut}: {:?}", files(&root));
        }
        // the whole archive imports
        let dir = tempfile::tempdir().unwrap();
        import(
            &Store::open(dir.path()),
            &good[..],
            &ImportOptions::default(),
        )
        .unwrap();
    }
}
