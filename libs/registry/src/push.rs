//! `push`: upload a model's blobs (skipping those the registry has), then its manifest.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;

use protocol::{Digest, Name};
use store::Store;
use url::Url;

use crate::client::{Body, Response, Session};
use crate::resolve::{check_manifest, session_for};
use crate::{io_err, Error, Progress, RemoteOptions, Result};

/// Options of [`push`].
#[derive(Clone, Debug, Default)]
pub struct PushOptions {
    /// How to reach the registry.
    pub remote: RemoteOptions,
    /// Upload in `PATCH` chunks of this many bytes; `None`: one monolithic `PUT`.
    pub chunk_size: Option<u64>,
    /// Try a cross-repository mount from this repository (`namespace/model`) first.
    pub mount_from: Option<String>,
    /// Log each blob on stderr.
    pub verbose: bool,
    /// Called for every blob: with completed = total when the registry has
    /// it already (or it was mounted); else with 0 before its upload and
    /// completed = total after.
    pub on_progress: Option<Progress>,
}

/// What [`push`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushReport {
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Blobs the registry already had.
    pub skipped: usize,
    /// Blobs mounted from another repository.
    pub mounted: usize,
    /// Digest of the manifest pushed.
    pub manifest_digest: Digest,
}

/// Pushes `name` from `store` to its registry: every blob not already
/// there (HEAD), by mount, monolithic `PUT` or chunked `PATCH`, with
/// `Content-Type: application/octet-stream`; then the manifest, byte for byte.
pub fn push(name: &Name, store: &Store, opts: &PushOptions) -> Result<PushReport> {
    let what = format!("model {}", name.short());
    let (_stored, _path, bytes) = store.read_manifest(name)?;
    check_manifest(&bytes, None, &what)?;
    let manifest = store::Manifest::parse(&bytes, &what)?;
    let repo = name.repository();
    let mut scope = format!("repository:{repo}:pull,push");
    if let Some(from) = &opts.mount_from {
        scope.push_str(&format!(" repository:{from}:pull"));
    }
    let session = session_for(name, opts.remote.base_url.as_deref(), &opts.remote, scope)?;
    let mut blobs = BTreeMap::new();
    for d in manifest.blobs() {
        blobs.insert(d.digest.clone(), d.size);
    }
    let mut report = PushReport {
        uploaded: 0,
        skipped: 0,
        mounted: 0,
        manifest_digest: Digest::of_bytes(&bytes),
    };
    let report_progress = |d: &Digest, done: u64, size: u64| {
        if let Some(p) = &opts.on_progress {
            p.report(d, done, size);
        }
    };
    for (d, &size) in &blobs {
        let bwhat = format!("blob {d} of {what} to {}", session.name());
        let head = session.request(
            "HEAD",
            session.url(&format!("v2/{repo}/blobs/{d}"))?,
            &[],
            &Body::None,
            &bwhat,
        )?;
        match head.status() {
            200 => {
                report.skipped += 1;
                report_progress(d, size, size);
                continue;
            }
            404 => {}
            _ => return Err(session.status_error(head, &bwhat)),
        }
        let file = open_blob(store, d, size)?;
        report_progress(d, 0, size);
        let mut start = session.url(&format!("v2/{repo}/blobs/uploads/"))?;
        if let Some(from) = &opts.mount_from {
            start
                .query_pairs_mut()
                .append_pair("mount", &d.to_string())
                .append_pair("from", from);
        }
        let resp = session.request(
            "POST",
            start,
            &[("Content-Length", "0".into())],
            &Body::Bytes(b""),
            &bwhat,
        )?;
        match resp.status() {
            201 if opts.mount_from.is_some() => {
                report.mounted += 1;
                report_progress(d, size, size);
                continue;
            }
            202 => {}
            _ => return Err(session.status_error(resp, &bwhat)),
        }
        let loc = location(&session, &resp, &bwhat)?;
        upload(&session, loc, &file, d, size, opts.chunk_size, &bwhat)?;
        if opts.verbose {
            eprintln!("model-push: {d}: uploaded {size} bytes");
        }
        report.uploaded += 1;
        report_progress(d, size, size);
    }
    let mt = manifest
        .media_type
        .clone()
        .unwrap_or_else(|| protocol::media::DOCKER_MANIFEST.into());
    let url = session.url(&format!("v2/{repo}/manifests/{}", name.tag))?;
    let mwhat = format!("manifest of {what} to {}", session.name());
    let resp = session.request(
        "PUT",
        url,
        &[("Content-Type", mt)],
        &Body::Bytes(&bytes),
        &mwhat,
    )?;
    if resp.status() != 201 && resp.status() != 200 {
        return Err(session.status_error(resp, &mwhat));
    }
    if let Some(h) = resp.header("docker-content-digest") {
        if h != report.manifest_digest.to_string() {
            return Err(Error::Protocol {
                what: mwhat,
                why: format!(
                    "registry stored digest {h}, we sent {}",
                    report.manifest_digest
                ),
            });
        }
    }
    Ok(report)
}

fn open_blob(store: &Store, d: &Digest, size: u64) -> Result<File> {
    let p = store.blob_path(d);
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&p)
        .map_err(io_err(&p))?;
    let m = f.metadata().map_err(io_err(&p))?;
    if !m.is_file() || m.len() != size {
        return Err(Error::Store(store::Error::Unsafe {
            path: p,
            why: format!(
                "not a regular file of {size} bytes (blob missing or corrupt: run verify)"
            ),
        }));
    }
    Ok(f)
}

fn location(session: &Session, resp: &Response, what: &str) -> Result<Url> {
    let loc = resp.header("location").ok_or_else(|| Error::Protocol {
        what: what.into(),
        why: format!("{} without Location", resp.status()),
    })?;
    let u = session.base.join(loc).map_err(|e| Error::Protocol {
        what: what.into(),
        why: format!("bad Location {loc:?}: {e}"),
    })?;
    if crate::realm::origin(&u) != crate::realm::origin(&session.base) {
        return Err(Error::Protocol {
            what: what.into(),
            why: format!("upload Location {u} is on another origin"),
        });
    }
    Ok(u)
}

fn upload(
    session: &Session,
    mut loc: Url,
    file: &File,
    d: &Digest,
    size: u64,
    chunk: Option<u64>,
    what: &str,
) -> Result<()> {
    let octet = ("Content-Type", "application/octet-stream".to_string());
    let mut sent = 0u64;
    if let Some(chunk) = chunk.filter(|&c| c > 0) {
        while sent < size {
            let len = chunk.min(size - sent);
            let range = ("Content-Range", format!("{}-{}", sent, sent + len - 1));
            let body = Body::File {
                file,
                offset: sent,
                len,
            };
            let resp =
                session.request("PATCH", loc.clone(), &[octet.clone(), range], &body, what)?;
            if resp.status() != 202 {
                return Err(session.status_error(resp, what));
            }
            loc = location(session, &resp, what)?;
            sent += len;
        }
    }
    loc.query_pairs_mut().append_pair("digest", &d.to_string());
    let body = if sent < size {
        Body::File {
            file,
            offset: 0,
            len: size,
        }
    } else {
        Body::Bytes(b"")
    };
    let resp = session.request("PUT", loc, &[octet], &body, what)?;
    if resp.status() != 201 {
        return Err(session.status_error(resp, what));
    }
    Ok(())
}
