//! One blob into the store: parallel ranged parts written into
//! `blobs/sha256-<hex>-partial`, hashed in order while they land, renamed
//! to `blobs/sha256-<hex>` only when size and digest match.
//!
//! ## The partial file
//!
//! `sha256-<hex>-partial` holds the blob's `size` bytes at their offsets,
//! followed by a trailer: `LLPPART1`, size, part size, part count (u64 LE)
//! and one u64 per part: how many bytes of that part are written. A worker
//! writes data first and the counter after, so after kill -9 the counters
//! never claim more than was written; a restart resumes each part from its
//! counter and re-hashes what is there. The trailer is cut off before the
//! rename. An exclusive `flock` on the partial file makes concurrent
//! fetchers of the same blob wait for one download. A fetch cancelled by
//! its caller ([`crate::Cancel`]) removes the partial file: it is no
//! resume point then, just a leftover.
//!
//! ## Hashing without reading twice
//!
//! One hasher thread hashes the blob in order. `claimed` is the hash
//! frontier: every byte before it is hashed or queued for the hasher. A
//! worker that has just written the bytes starting exactly at the frontier
//! claims them (compare-and-swap) and hands its buffer to the hasher, which
//! hashes it without reading the file. Bytes written ahead of the frontier
//! (later parts) are published through the counters and, once the frontier
//! reaches them, claimed by the hasher and read back from the page cache.
//! A worker claims only bytes it has not yet published and the hasher only
//! published ones, so no byte is hashed twice or skipped.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::ProgressBar;
use protocol::{Digest, Hasher};
use store::Store;

use crate::client::{Body, Session};
use crate::{io_err, Error, FetchOptions, Result};

/// Suffix of the file a blob is downloaded into (`sha256-<hex>-partial`);
/// such a file is never mistaken for a blob.
pub const PARTIAL_SUFFIX: &str = "-partial";
const MAGIC: &[u8; 8] = b"LLPPART1";
const HEADER: u64 = 32;
/// Bytes a worker receives before it writes them out and hands them on.
const CHUNK: usize = 1 << 20;
/// Bytes the hasher reads back from the file at once.
const HASH_CHUNK: usize = 4 << 20;
/// In-order buffers queued for the hasher (each `CHUNK` bytes).
const QUEUE: usize = 8;
/// With fsync, a worker starts writeback of what it wrote every this many bytes.
const FLUSH_EVERY: u64 = 8 << 20;

/// What one blob download did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// Bytes received over the network in this run.
    pub fetched: u64,
    /// Bytes found in a partial file from an earlier run and kept.
    pub resumed: u64,
    /// The blob was already present (or another process fetched it).
    pub already: bool,
}

pub(crate) struct BlobJob<'a> {
    pub session: &'a Session,
    pub repo: &'a str,
    pub digest: &'a Digest,
    pub size: u64,
    pub what: String,
}

fn partial_path(store: &Store, d: &Digest) -> PathBuf {
    store
        .blobs_dir()
        .join(format!("{}{PARTIAL_SUFFIX}", d.blob_file_name()))
}

/// Whether a regular file of the right size is under the blob's name.
fn complete(store: &Store, d: &Digest, size: u64) -> Result<bool> {
    if !store.has_blob(d)? {
        return Ok(false);
    }
    let p = store.blob_path(d);
    Ok(fs::symlink_metadata(&p).map_err(io_err(&p))?.len() == size)
}

/// The part size for a blob: total/16 clamped to 100 MB–1 GB (as Ollama), or the override.
fn part_size_for(size: u64, want: Option<u64>) -> u64 {
    want.unwrap_or_else(|| (size / 16).clamp(100_000_000, 1_000_000_000))
        .max(1)
}

pub(crate) fn download(
    job: &BlobJob,
    store: &Store,
    opts: &FetchOptions,
    pb: Option<&ProgressBar>,
) -> Result<Outcome> {
    if complete(store, job.digest, job.size)? {
        return Ok(Outcome {
            already: true,
            ..Outcome::default()
        });
    }
    let blobs = store.blobs_dir();
    ensure_dir(&blobs)?;
    if job.size == 0 {
        if *job.digest != Digest::of_bytes(b"") {
            return Err(Error::DigestMismatch {
                expected: job.digest.clone(),
                got: Digest::of_bytes(b""),
            });
        }
        store::atomic_write(&store.blob_path(job.digest), b"")?;
        return Ok(Outcome::default());
    }
    let partial = partial_path(store, job.digest);
    let Some(file) = lock_partial(&partial, store, job, opts.verbose)? else {
        return Ok(Outcome {
            already: true,
            ..Outcome::default()
        });
    };
    // From here on we hold the lock; dropping `file` releases it.
    let (mut part_size, mut done) = match load_state(&file, job.size) {
        Some(s) => s,
        None => fresh_state(
            &file,
            &partial,
            job.size,
            part_size_for(job.size, opts.part_size),
        )?,
    };
    let resumed: u64 = done.iter().sum();
    check_free_space(&blobs, job.size - resumed.min(job.size))?;
    if opts.verbose && resumed > 0 {
        eprintln!(
            "fetch-blob: {}: resuming, {resumed} of {} bytes already here",
            job.digest, job.size
        );
    }
    let mut fetched = 0;
    let mut restarted = false;
    let got = loop {
        if let Some(pb) = pb {
            pb.set_position(done.iter().sum());
        }
        let (result, n) = transfer(job, &file, part_size, done, opts, pb);
        fetched += n;
        match result {
            Ok(got) => break got,
            // A registry without Range support: start over as one whole GET.
            Err(Error::RangesUnsupported { .. }) if !restarted => {
                restarted = true;
                if opts.verbose {
                    eprintln!(
                        "fetch-blob: {}: registry ignores Range, fetching it whole",
                        job.digest
                    );
                }
                (part_size, done) = fresh_state(&file, &partial, job.size, job.size)?;
            }
            Err(e @ Error::Canceled { .. }) => {
                // a cancelled pull leaves nothing behind (not even for a resume)
                let _ = fs::remove_file(&partial);
                return Err(e);
            }
            Err(e) => return Err(e),
        }
    };
    if got != *job.digest {
        let _ = fs::remove_file(&partial);
        return Err(Error::DigestMismatch {
            expected: job.digest.clone(),
            got,
        });
    }
    file.set_len(job.size).map_err(io_err(&partial))?;
    if opts.fsync {
        file.sync_data().map_err(io_err(&partial))?;
    }
    let final_path = store.blob_path(job.digest);
    if let Ok(m) = fs::symlink_metadata(&final_path) {
        if !m.is_file() {
            return Err(Error::Store(store::Error::Unsafe {
                path: final_path,
                why: "not a regular file".into(),
            }));
        }
    }
    fs::rename(&partial, &final_path).map_err(io_err(&final_path))?;
    if opts.fsync {
        if let Ok(d) = File::open(&blobs) {
            let _ = d.sync_all();
        }
    }
    drop(file);
    Ok(Outcome {
        fetched,
        resumed,
        already: false,
    })
}

/// Runs the workers and the hasher over the parts not yet done. Returns the
/// digest of the whole blob (or the first error) and the bytes received.
fn transfer(
    job: &BlobJob,
    file: &File,
    part_size: u64,
    done: Vec<u64>,
    opts: &FetchOptions,
    pb: Option<&ProgressBar>,
) -> (Result<Digest>, u64) {
    let (tx, rx) = sync_channel(QUEUE);
    let shared = Shared {
        job,
        file,
        part_size,
        done: done.into_iter().map(AtomicU64::new).collect(),
        failed: AtomicBool::new(false),
        error: Mutex::new(None),
        claimed: AtomicU64::new(0),
        tx,
        pool: Mutex::new(Vec::new()),
        fetched: AtomicU64::new(0),
        next: AtomicUsize::new(0),
        opts,
        pb,
    };
    let pending: Vec<usize> = (0..shared.done.len())
        .filter(|&i| shared.done[i].load(Ordering::Relaxed) < shared.part_len(i))
        .collect();
    let workers = opts.parallel.clamp(1, 64).min(pending.len().max(1));
    let got = std::thread::scope(|s| {
        let hasher = s.spawn(|| shared.hash(rx));
        for _ in 0..workers {
            s.spawn(|| shared.work(&pending));
        }
        hasher.join().unwrap_or(None)
    });
    let fetched = shared.fetched.load(Ordering::Relaxed);
    if let Some(e) = shared
        .error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        return (Err(e), fetched);
    }
    let got = got.ok_or_else(|| Error::Protocol {
        what: job.what.clone(),
        why: "download stopped".into(),
    });
    (got, fetched)
}

fn ensure_dir(dir: &Path) -> Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::Store(store::Error::Unsafe {
            path: dir.to_path_buf(),
            why: "not a directory".into(),
        })),
        Err(_) => fs::create_dir_all(dir).map_err(io_err(dir)),
    }
}

/// Opens and locks the partial file. `None`: the blob became present while we waited.
fn lock_partial(path: &Path, store: &Store, job: &BlobJob, verbose: bool) -> Result<Option<File>> {
    loop {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(0o644)
            .open(path)
            .map_err(io_err(path))?;
        let meta = f.metadata().map_err(io_err(path))?;
        if !meta.is_file() {
            return Err(Error::Store(store::Error::Unsafe {
                path: path.to_path_buf(),
                why: "not a regular file".into(),
            }));
        }
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != ErrorKind::WouldBlock {
                return Err(io_err(path)(e));
            }
            if verbose {
                eprintln!(
                    "fetch-blob: {}: another process is downloading it, waiting",
                    job.digest
                );
            }
            loop {
                // SAFETY: as above.
                if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
                    break;
                }
                let e = std::io::Error::last_os_error();
                if e.kind() != ErrorKind::Interrupted {
                    return Err(io_err(path)(e));
                }
            }
        }
        // The holder before us may have renamed the file away: lock the one at `path`.
        match fs::symlink_metadata(path) {
            Ok(m) if m.ino() == meta.ino() && m.dev() == meta.dev() => {}
            _ => continue,
        }
        if complete(store, job.digest, job.size)? {
            let _ = fs::remove_file(path);
            return Ok(None);
        }
        return Ok(Some(f));
    }
}

fn parts(size: u64, part_size: u64) -> u64 {
    size.div_ceil(part_size)
}

/// Reads the trailer; `None` when absent or inconsistent (start over).
fn load_state(f: &File, size: u64) -> Option<(u64, Vec<u64>)> {
    let len = f.metadata().ok()?.len();
    let mut h = [0u8; HEADER as usize];
    f.read_exact_at(&mut h, size).ok()?;
    let word = |i: usize| u64::from_le_bytes(h[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
    if &h[..8] != MAGIC || word(1) != size {
        return None;
    }
    let (ps, n) = (word(2), word(3));
    if ps == 0 || n != parts(size, ps) || n > 1 << 20 || len != size.checked_add(HEADER + 8 * n)? {
        return None;
    }
    let mut raw = vec![0u8; usize::try_from(8 * n).ok()?];
    f.read_exact_at(&mut raw, size + HEADER).ok()?;
    let done: Vec<u64> = raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    for (i, &d) in done.iter().enumerate() {
        let start = i as u64 * ps;
        if d > ps.min(size - start) {
            return None;
        }
    }
    Some((ps, done))
}

/// Starts the partial file over: zero counters, blocks reserved up front.
///
/// Never truncates to 0 bytes: on ext4 that marks the file for a flush of
/// all its dirty pages at close (`auto_da_alloc`), which the download would
/// pay for. Stale bytes left in the data area are harmless: no counter
/// claims them.
fn fresh_state(f: &File, path: &Path, size: u64, part_size: u64) -> Result<(u64, Vec<u64>)> {
    let n = parts(size, part_size);
    f.set_len(size + HEADER + 8 * n).map_err(io_err(path))?;
    preallocate(f, size);
    let mut h = Vec::with_capacity(usize::try_from(HEADER + 8 * n).unwrap_or(0));
    h.extend_from_slice(MAGIC);
    for w in [size, part_size, n] {
        h.extend_from_slice(&w.to_le_bytes());
    }
    h.resize(h.capacity(), 0);
    f.write_all_at(&h, size).map_err(io_err(path))?;
    Ok((part_size, vec![0; usize::try_from(n).unwrap_or(0)]))
}

/// Reserves the data area's blocks (best effort): the page-cache writes
/// then skip ext4's per-page delayed-allocation bookkeeping, and the space
/// is ours before the first byte arrives.
fn preallocate(f: &File, size: u64) {
    #[cfg(target_os = "linux")]
    if let Ok(len) = libc::off_t::try_from(size) {
        // SAFETY: fallocate on a file descriptor we own; mode 0 only allocates
        // (and never shrinks the file); failure (EOPNOTSUPP, ENOSPC) is ignored
        // and left to the writes to report.
        unsafe {
            libc::fallocate(f.as_raw_fd(), 0, 0, len);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (f, size);
}

/// Starts writing `len` bytes at `off` to disk without waiting (Linux
/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`), so the fsync before the rename
/// finds most of the blob already written instead of all of it. Only a hint:
/// durability still comes from that fsync.
fn start_writeback(f: &File, off: u64, len: u64) {
    #[cfg(target_os = "linux")]
    if let (Ok(off), Ok(len)) = (libc::off64_t::try_from(off), libc::off64_t::try_from(len)) {
        // SAFETY: a hint on a file descriptor we own; errors are ignored.
        unsafe {
            libc::sync_file_range(f.as_raw_fd(), off, len, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (f, off, len);
}

fn check_free_space(dir: &Path, need: u64) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return Ok(());
    };
    // SAFETY: statvfs is plain integers, for which all zeros is valid.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs writes into the struct we own; the path is NUL-terminated.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Ok(());
    }
    #[allow(clippy::useless_conversion)] // u32 on some targets
    let free = u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize));
    if free < need {
        return Err(Error::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::other(format!("{need} bytes needed, {free} free")),
        });
    }
    Ok(())
}

/// A buffer handed to the hasher: `buf[..len]` are the blob's bytes at `pos`.
struct Chunk {
    pos: u64,
    buf: Vec<u8>,
    len: usize,
}

enum Msg {
    Chunk(Chunk),
    /// Something changed (bytes published at the frontier, a failure): look again.
    Wake,
}

struct Shared<'a> {
    job: &'a BlobJob<'a>,
    file: &'a File,
    part_size: u64,
    /// Bytes written per part (mirrors the counters in the trailer).
    done: Vec<AtomicU64>,
    failed: AtomicBool,
    error: Mutex<Option<Error>>,
    /// The hash frontier: bytes before it are hashed or queued for the hasher.
    claimed: AtomicU64,
    tx: SyncSender<Msg>,
    /// Buffers the hasher is done with, for the workers to reuse.
    pool: Mutex<Vec<Vec<u8>>>,
    fetched: AtomicU64,
    next: AtomicUsize,
    opts: &'a FetchOptions,
    pb: Option<&'a ProgressBar>,
}

impl Shared<'_> {
    fn part_len(&self, i: usize) -> u64 {
        let start = i as u64 * self.part_size;
        self.part_size.min(self.job.size - start)
    }

    fn fail(&self, e: Error) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e);
        }
        self.failed.store(true, Ordering::SeqCst);
        let _ = self.tx.try_send(Msg::Wake);
    }

    /// Whether to stop: a failure elsewhere, or the caller's cancel (which
    /// becomes the error).
    fn stopped(&self) -> bool {
        if self.opts.canceled() && !self.failed.load(Ordering::SeqCst) {
            self.fail(Error::Canceled {
                what: self.job.what.clone(),
            });
        }
        self.failed.load(Ordering::SeqCst)
    }

    fn buffer(&self) -> Vec<u8> {
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_else(|| vec![0u8; CHUNK])
    }

    /// Hashes the blob in order (see the module doc); `None` if stopped.
    fn hash(&self, rx: Receiver<Msg>) -> Option<Digest> {
        let mut h = Hasher::new();
        let mut scratch = Vec::new();
        // in-order chunks that arrived before the one at `pos` (two workers
        // may claim adjacent ranges and send them in either order)
        let mut early: BTreeMap<u64, Chunk> = BTreeMap::new();
        let mut pos = 0u64;
        let partial = || {
            PathBuf::from(format!(
                "{}{PARTIAL_SUFFIX}",
                self.job.digest.blob_file_name()
            ))
        };
        while pos < self.job.size {
            if self.stopped() {
                return None;
            }
            if let Some(c) = early.remove(&pos) {
                h.update(&c.buf[..c.len]);
                pos += c.len as u64;
                self.pool
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(c.buf);
                continue;
            }
            let msg = match rx.try_recv() {
                Ok(m) => Some(m),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => return None,
            };
            if let Some(m) = msg {
                if let Msg::Chunk(c) = m {
                    early.insert(c.pos, c);
                }
                continue;
            }
            // Nothing queued: published bytes at the frontier are ours to read back.
            if self.claimed.load(Ordering::SeqCst) == pos {
                let i = usize::try_from(pos / self.part_size).unwrap_or(usize::MAX);
                let start = i as u64 * self.part_size;
                let avail = start + self.done.get(i).map_or(0, |d| d.load(Ordering::SeqCst));
                if avail > pos {
                    let n = usize::try_from(avail - pos)
                        .unwrap_or(HASH_CHUNK)
                        .min(HASH_CHUNK);
                    let end = pos + n as u64;
                    if self
                        .claimed
                        .compare_exchange(pos, end, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                    {
                        scratch.resize(HASH_CHUNK, 0);
                        if let Err(e) = self.file.read_exact_at(&mut scratch[..n], pos) {
                            self.fail(Error::Io {
                                path: partial(),
                                source: e,
                            });
                            return None;
                        }
                        h.update(&scratch[..n]);
                        pos = end;
                    }
                    continue;
                }
            }
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Msg::Chunk(c)) => {
                    early.insert(c.pos, c);
                }
                Ok(Msg::Wake) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
        Some(h.finish())
    }

    fn work(&self, pending: &[usize]) {
        let mut buf = self.buffer();
        loop {
            if self.stopped() {
                return;
            }
            let k = self.next.fetch_add(1, Ordering::SeqCst);
            let Some(&i) = pending.get(k) else { return };
            if let Err(e) = self.run_part(i, &mut buf) {
                self.fail(e);
                return;
            }
        }
    }

    fn run_part(&self, i: usize, buf: &mut Vec<u8>) -> Result<()> {
        let len = self.part_len(i);
        let mut fails = 0u32;
        loop {
            let before = self.done[i].load(Ordering::Acquire);
            if before >= len {
                return Ok(());
            }
            if self.stopped() {
                return Ok(());
            }
            match self.fetch_range(i, before, len, buf) {
                Ok(()) => {}
                Err(e) if e.is_retryable() => {
                    if self.done[i].load(Ordering::Acquire) > before {
                        fails = 0;
                    }
                    fails += 1;
                    if fails > self.opts.retries {
                        return Err(e);
                    }
                    if self.opts.verbose {
                        eprintln!(
                            "fetch-blob: {}: part {i}: {e}; retry {fails} of {}",
                            self.job.digest, self.opts.retries
                        );
                    }
                    let wait = self
                        .opts
                        .backoff
                        .saturating_mul(1 << (fails - 1).min(10))
                        .min(Duration::from_secs(60));
                    let until = std::time::Instant::now() + wait;
                    while std::time::Instant::now() < until {
                        if self.stopped() {
                            return Ok(());
                        }
                        std::thread::sleep(Duration::from_millis(10).min(wait));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes `buf[..k]` at `pos` (part `i`), hands it to the hasher when it
    /// sits at the hash frontier, then publishes it in the part's counter.
    fn land(&self, i: usize, pos: u64, buf: &mut Vec<u8>, k: usize) -> Result<()> {
        let p = partial_name(self.job);
        self.file.write_all_at(&buf[..k], pos).map_err(io_err(&p))?;
        let end = pos + k as u64;
        let in_order = self
            .claimed
            .compare_exchange(pos, end, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if in_order {
            // Send first, refill after: between the claim and the send a
            // worker must not stall, or later chunks pile up in the hasher.
            let chunk = Chunk {
                pos,
                buf: std::mem::take(buf),
                len: k,
            };
            let sent = self.tx.send(Msg::Chunk(chunk));
            *buf = self.buffer();
            if sent.is_err() {
                return Err(Error::Protocol {
                    what: self.job.what.clone(),
                    why: "hasher stopped".into(),
                });
            }
        }
        let d = self.done[i].fetch_add(k as u64, Ordering::SeqCst) + k as u64;
        let slot = self.job.size + HEADER + 8 * i as u64;
        self.file
            .write_all_at(&d.to_le_bytes(), slot)
            .map_err(io_err(&p))?;
        // The hasher may have reached `pos` meanwhile and found nothing: wake it.
        if !in_order && self.claimed.load(Ordering::SeqCst) == pos {
            let _ = self.tx.try_send(Msg::Wake);
        }
        self.fetched.fetch_add(k as u64, Ordering::Relaxed);
        if let Some(pb) = self.pb {
            pb.inc(k as u64);
        }
        Ok(())
    }

    /// One GET of the rest of part `i`, from `done` bytes into it.
    fn fetch_range(&self, i: usize, done: u64, len: u64, buf: &mut Vec<u8>) -> Result<()> {
        let job = self.job;
        let what = &job.what;
        let proto = |why: String| Error::Protocol {
            what: what.clone(),
            why,
        };
        let start = i as u64 * self.part_size;
        let (from, to) = (start + done, start + len - 1);
        let whole = from == 0 && to + 1 == job.size;
        let mut headers = Vec::new();
        if !whole {
            headers.push(("Range", format!("bytes={from}-{to}")));
        }
        let url = job
            .session
            .url(&format!("v2/{}/blobs/{}", job.repo, job.digest))?;
        let resp = job
            .session
            .request("GET", url, &headers, &Body::None, what)?;
        let want = to - from + 1;
        match resp.status() {
            200 if whole => {}
            200 => return Err(Error::RangesUnsupported { what: what.clone() }),
            206 => {
                let cr = resp.header("content-range").unwrap_or("");
                let ok = parse_content_range(cr).is_some_and(|(a, b, t)| {
                    a == from && b == to && t.is_none_or(|t| t == job.size)
                });
                if !ok {
                    return Err(proto(format!(
                        "Content-Range {cr:?} does not match the requested bytes {from}-{to}/{}",
                        job.size
                    )));
                }
            }
            416 => {
                // Do not read the body: its Content-Length may lie (docker-registry does).
                return Err(proto(format!(
                    "registry answered 416 for bytes {from}-{to}: it holds fewer than the {} bytes the manifest declares",
                    job.size
                )));
            }
            _ => return Err(job.session.status_error(resp, what)),
        }
        if let Some(cl) = resp.header("content-length") {
            let cl: u64 = cl
                .trim()
                .parse()
                .map_err(|_| proto(format!("bad Content-Length {cl:?}")))?;
            if cl != want {
                return Err(proto(format!(
                    "registry sends {cl} bytes where {want} were asked for (size {} declared)",
                    job.size
                )));
            }
        }
        let chunked_or_close = resp.header("content-length").is_none();
        let mut body = resp.into_reader();
        let mut pos = from;
        let mut flushed = from;
        let net = |detail: String| Error::Net {
            registry: job.session.name(),
            what: what.clone(),
            detail,
        };
        while pos <= to {
            if self.stopped() {
                return Ok(());
            }
            let n = buf
                .len()
                .min(usize::try_from(to + 1 - pos).unwrap_or(usize::MAX));
            // Fill the buffer from several reads (ureq hands out 8 KiB at a
            // time, a socket what has arrived), so each write, counter update
            // and hand-over covers up to CHUNK bytes.
            let mut k = 0;
            let mut failure = None;
            while k < n {
                if self.stopped() {
                    return Ok(());
                }
                match body.read(&mut buf[k..n]) {
                    Ok(0) => {
                        failure = Some(format!(
                            "connection closed after {} of {want} bytes",
                            pos + k as u64 - from
                        ));
                        break;
                    }
                    Ok(r) => k += r,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        failure = Some(format!(
                            "{e} after {} of {want} bytes",
                            pos + k as u64 - from
                        ));
                        break;
                    }
                }
            }
            if k > 0 {
                self.land(i, pos, buf, k)?;
                pos += k as u64;
                if self.opts.fsync && (pos - flushed >= FLUSH_EVERY || pos > to) {
                    start_writeback(self.file, flushed, pos - flushed);
                    flushed = pos;
                }
            }
            if let Some(f) = failure {
                return Err(net(f));
            }
        }
        if chunked_or_close {
            // No declared length: one more byte means the registry sends more than declared.
            let mut extra = [0u8; 1];
            if let Ok(k) = body.read(&mut extra) {
                if k > 0 {
                    return Err(proto(format!(
                        "registry sends more than the {} bytes declared",
                        job.size
                    )));
                }
            }
        }
        Ok(())
    }
}

fn partial_name(job: &BlobJob) -> PathBuf {
    PathBuf::from(format!("{}{PARTIAL_SUFFIX}", job.digest.blob_file_name()))
}

/// `bytes a-b/t` → (a, b, Some(t)); `t` may be `*`.
fn parse_content_range(s: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = s.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    if b < a {
        return None;
    }
    let t = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((a, b, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(parse_content_range("bytes 0-9/10"), Some((0, 9, Some(10))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, 9, None)));
        for bad in [
            "",
            "bytes 9-5/10",
            "bytes 0-9",
            "items 0-9/10",
            "bytes -1-9/10",
            "bytes 0-9/x",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn part_sizes() {
        assert_eq!(part_size_for(1 << 30, None), 100_000_000);
        assert_eq!(part_size_for(100 << 30, None), 1_000_000_000);
        assert_eq!(part_size_for(10, Some(4)), 4);
        assert_eq!(parts(10, 4), 3);
    }

    #[test]
    fn trailer_round_trip_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        assert!(load_state(&f, 10).is_none());
        let (ps, done) = fresh_state(&f, &p, 10, 4).unwrap();
        assert_eq!((ps, done), (4, vec![0, 0, 0]));
        f.write_all_at(&3u64.to_le_bytes(), 10 + HEADER + 8)
            .unwrap();
        assert_eq!(load_state(&f, 10), Some((4, vec![0, 3, 0])));
        assert!(load_state(&f, 11).is_none());
        // a counter larger than its part is garbage
        f.write_all_at(&5u64.to_le_bytes(), 10 + HEADER).unwrap();
        assert!(load_state(&f, 10).is_none());
        // starting over (without truncating to 0) zeroes every counter, for
        // a longer and a shorter trailer alike
        f.write_all_at(&[0xff; 40], 10 + HEADER).unwrap();
        assert_eq!(fresh_state(&f, &p, 10, 2).unwrap(), (2, vec![0; 5]));
        assert_eq!(load_state(&f, 10), Some((2, vec![0; 5])));
        f.write_all_at(&[0xff; 40], 10 + HEADER).unwrap();
        assert_eq!(fresh_state(&f, &p, 10, 10).unwrap(), (10, vec![0]));
        assert_eq!(load_state(&f, 10), Some((10, vec![0])));
        assert_eq!(f.metadata().unwrap().len(), 10 + HEADER + 8);
    }
}
