//! File-system primitives that never follow a symlink inside the store.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::{io_err, Error, Result};

/// Writes `bytes` to `path` atomically: a temp file beside it (named
/// `.<file>.tmp-<pid>-<n>`, never a valid blob name), fsync, rename, fsync
/// of the directory. On any error the temp file is removed.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path_for(path);
    let result = (|| {
        let mut f = create_new(&tmp)?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        drop(f);
        publish(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A unique temp name in `path`'s directory.
pub(crate) fn temp_path_for(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    path.with_file_name(format!(".{file}.tmp-{}-{n}-{nanos}", std::process::id()))
}

/// Creates a new file (fails if it exists; never follows a symlink).
pub(crate) fn create_new(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o644)
        .open(path)
        .map_err(io_err(path))
}

/// Renames a finished temp file onto its final name and syncs the directory.
pub(crate) fn publish(tmp: &Path, path: &Path) -> Result<()> {
    if let Ok(meta) = fs::symlink_metadata(path) {
        if !meta.is_file() {
            return Err(unsafe_entry(path, &meta));
        }
    }
    fs::rename(tmp, path).map_err(io_err(path))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

pub(crate) fn unsafe_entry(path: &Path, meta: &fs::Metadata) -> Error {
    let why = if meta.file_type().is_symlink() {
        "a symlink"
    } else if meta.is_dir() {
        "a directory where a file belongs"
    } else {
        "not a regular file"
    };
    Error::Unsafe {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

/// Whether `path` is a regular file; a symlink or special file there is an error.
pub(crate) fn regular_file_exists(path: &Path) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => Ok(true),
        Ok(m) => Err(unsafe_entry(path, &m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Ok(false),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Opens a regular file for reading without following a symlink.
pub(crate) fn open_regular(path: &Path) -> Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                Error::Unsafe {
                    path: path.to_path_buf(),
                    why: "a symlink".into(),
                }
            } else {
                io_err(path)(e)
            }
        })?;
    let meta = f.metadata().map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(unsafe_entry(path, &meta));
    }
    Ok(f)
}

/// Reads a regular file of at most `max` bytes.
pub(crate) fn read_small_file(path: &Path, max: u64) -> Result<Vec<u8>> {
    let f = open_regular(path)?;
    let len = f.metadata().map_err(io_err(path))?.len();
    if len > max {
        return Err(Error::Other(format!(
            "{}: {len} bytes, more than the {max} allowed",
            path.display()
        )));
    }
    let mut out = Vec::with_capacity(len as usize);
    f.take(max + 1)
        .read_to_end(&mut out)
        .map_err(io_err(path))?;
    if out.len() as u64 > max {
        return Err(Error::Other(format!(
            "{}: more than the {max} bytes allowed",
            path.display()
        )));
    }
    Ok(out)
}

/// Creates `dir` and its parents below `root`, refusing to pass through a
/// symlink or a non-directory anywhere from `root` down.
pub(crate) fn create_dirs_safely(root: &Path, dir: &Path) -> Result<()> {
    fs::create_dir_all(root).map_err(io_err(root))?;
    let rel = dir.strip_prefix(root).map_err(|_| {
        Error::Other(format!(
            "{} is outside the store {}",
            dir.display(),
            root.display()
        ))
    })?;
    let mut cur = root.to_path_buf();
    for comp in rel.components() {
        cur.push(comp);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(m) => return Err(unsafe_entry(&cur, &m)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match fs::create_dir(&cur) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(&cur)(e)),
            },
            Err(e) => return Err(io_err(&cur)(e)),
        }
    }
    Ok(())
}

/// The entry of `dir` whose name equals `want` ignoring ASCII case
/// (exact match preferred). A missing `dir` gives `None`.
pub(crate) fn find_entry_fold(dir: &Path, want: &str) -> Result<Option<String>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut best = None;
    for entry in rd {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == want {
            return Ok(Some(name));
        }
        if best.is_none() && name.eq_ignore_ascii_case(want) {
            best = Some(name);
        }
    }
    Ok(best)
}

/// What a walk found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum EntryKind {
    /// A regular file at the expected depth.
    File,
    /// A symlink (never followed).
    Symlink,
    /// Something else: a file at the wrong depth, a device, a fifo…
    Stray,
}

/// Walks `root` down to `depth` levels without following symlinks; returns
/// every non-directory entry with its path parts. A missing root is empty.
pub(crate) fn walk_depth(
    root: &Path,
    depth: usize,
) -> Result<Vec<(Vec<String>, PathBuf, EntryKind)>> {
    let mut out = Vec::new();
    walk(root, depth, &mut Vec::new(), &mut out)?;
    Ok(out)
}

fn walk(
    dir: &Path,
    left: usize,
    parts: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, PathBuf, EntryKind)>,
) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && parts.is_empty() => return Ok(()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut entries: Vec<_> = rd.collect::<std::io::Result<_>>().map_err(io_err(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let ft = entry.file_type().map_err(io_err(&path))?;
        parts.push(entry.file_name().to_string_lossy().into_owned());
        if ft.is_symlink() {
            out.push((parts.clone(), path, EntryKind::Symlink));
        } else if ft.is_dir() && left > 1 {
            walk(&path, left - 1, parts, out)?;
        } else if ft.is_file() && left == 1 {
            out.push((parts.clone(), path, EntryKind::File));
        } else {
            out.push((parts.clone(), path, EntryKind::Stray));
        }
        parts.pop();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_leaves_no_temp_and_refuses_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

        let target = dir.path().join("target");
        fs::write(&target, b"keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(
            regular_file_exists(&link),
            Err(Error::Unsafe { .. })
        ));
        assert!(matches!(open_regular(&link), Err(Error::Unsafe { .. })));
        assert!(atomic_write(&link, b"x").is_err());
        assert_eq!(fs::read(&target).unwrap(), b"keep");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            3,
            "no temp file left"
        );
    }

    #[test]
    fn create_dirs_refuses_symlinked_parent() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("manifests")).unwrap();
        let err = create_dirs_safely(dir.path(), &dir.path().join("manifests/h/n/m")).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn read_small_file_caps() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, vec![b'x'; 100]).unwrap();
        assert!(read_small_file(&p, 99).is_err());
        assert_eq!(read_small_file(&p, 100).unwrap().len(), 100);
    }
}
