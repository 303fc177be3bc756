//! The one walk of a directory tree on disk or on a mount, for the tests: the source trees pack
//! and mksquashfs read, extractions, and the FUSE mounts under test (where a hostile image makes
//! listings and stats fail, so errors are yielded, not raised). The engine's own walk of an image
//! is `autosquash_core::Image::walk`.

use std::collections::BTreeMap;
use std::fs::Metadata;
use std::io::Read;
use std::path::{Path, PathBuf};

/// One entry met by [`walk`]: its path relative to the walk's root, and its `lstat`, or why
/// it could not be listed or stat'ed. A directory that cannot be listed is yielded again with
/// the listing's error.
pub struct Entry {
    pub rel: PathBuf,
    pub path: PathBuf,
    pub meta: std::io::Result<Metadata>,
}

/// Every entry below `root` (not `root` itself), depth first, symlinks not followed, at most
/// `limit` of them (a hostile image may list millions).
pub fn walk(root: &Path, limit: usize) -> impl Iterator<Item = Entry> {
    let root = root.to_path_buf();
    let mut dirs = vec![PathBuf::new()];
    let mut listing: Option<(PathBuf, std::fs::ReadDir)> = None;
    let mut left = limit;
    std::iter::from_fn(move || {
        loop {
            if left == 0 {
                return None;
            }
            let Some((rel_dir, entries)) = listing.as_mut() else {
                let rel = dirs.pop()?;
                let path = root.join(&rel);
                match std::fs::read_dir(&path) {
                    Ok(entries) => listing = Some((rel, entries)),
                    Err(e) => {
                        left -= 1;
                        return Some(Entry {
                            rel,
                            path,
                            meta: Err(e),
                        });
                    }
                }
                continue;
            };
            let entry = match entries.next() {
                None => {
                    listing = None;
                    continue;
                }
                Some(Err(e)) => {
                    // A listing that fails half way is not retried: the rest of it is lost.
                    let rel = rel_dir.clone();
                    listing = None;
                    left -= 1;
                    return Some(Entry {
                        path: root.join(&rel),
                        rel,
                        meta: Err(e),
                    });
                }
                Some(Ok(entry)) => entry,
            };
            left -= 1;
            let rel = rel_dir.join(entry.file_name());
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path);
            if meta.as_ref().is_ok_and(|m| m.is_dir()) {
                dirs.push(rel.clone());
            }
            return Some(Entry { rel, path, meta });
        }
    })
}

/// Every entry below `root` with its metadata, by relative path, the root itself as "".
/// Panics on any error: for trees the test built or extracted itself.
pub fn metadata(root: &Path) -> BTreeMap<PathBuf, Metadata> {
    let mut out = BTreeMap::new();
    let top = std::fs::symlink_metadata(root).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
    out.insert(PathBuf::new(), top);
    for e in walk(root, usize::MAX) {
        let meta = e
            .meta
            .unwrap_or_else(|err| panic!("{}: {err}", e.path.display()));
        out.insert(e.rel, meta);
    }
    out
}

/// What [`read_everything`] met.
#[derive(Debug, Default)]
pub struct ReadAll {
    pub entries: u64,
    /// Bytes of file content read.
    pub bytes: u64,
    /// Failed listings, stats, xattr reads, readlinks and file reads, by errno name.
    pub errors: BTreeMap<String, u64>,
}

impl ReadAll {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn note(&mut self, e: &std::io::Error) {
        *self.errors.entry(errno_name(e)).or_default() += 1;
    }
}

/// Does to `root` what a user's `ls -lR`, `getfattr -d`, `readlink` and `cat` would: every
/// entry's attributes, xattr names and values, symlink targets, and every file's bytes (at most
/// `max_file` of each), for at most `limit` entries. Errors are expected on hostile images and
/// only counted.
pub fn read_everything(root: &Path, limit: usize, max_file: u64) -> ReadAll {
    let mut out = ReadAll::default();
    for e in walk(root, limit) {
        let meta = match e.meta {
            Ok(meta) => meta,
            Err(err) => {
                out.note(&err);
                continue;
            }
        };
        out.entries += 1;
        match xattr::list(&e.path) {
            Ok(names) => {
                for name in names {
                    if let Err(err) = xattr::get(&e.path, name) {
                        out.note(&err);
                    }
                }
            }
            Err(err) => out.note(&err),
        }
        if meta.file_type().is_symlink() {
            if let Err(err) = std::fs::read_link(&e.path) {
                out.note(&err);
            }
        } else if meta.is_file() {
            let mut buf = Vec::new();
            match std::fs::File::open(&e.path).and_then(|f| f.take(max_file).read_to_end(&mut buf))
            {
                Ok(n) => out.bytes += n as u64,
                Err(err) => out.note(&err),
            }
        }
    }
    out
}

/// The errno's name (`EIO`, `ENOENT`, ...), or the error's text when it has none.
pub fn errno_name(e: &std::io::Error) -> String {
    let Some(errno) = e.raw_os_error() else {
        return e.to_string();
    };
    let name = match errno {
        libc::EIO => "EIO",
        libc::ESTALE => "ESTALE",
        libc::ENOENT => "ENOENT",
        libc::ENOTCONN => "ENOTCONN",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::EROFS => "EROFS",
        libc::EINVAL => "EINVAL",
        libc::ENOMEM => "ENOMEM",
        libc::E2BIG => "E2BIG",
        libc::ERANGE => "ERANGE",
        libc::ENODATA => "ENODATA",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ELOOP => "ELOOP",
        libc::ENOTDIR => "ENOTDIR",
        libc::EFBIG => "EFBIG",
        libc::ETIMEDOUT => "ETIMEDOUT",
        _ => return format!("errno {errno}"),
    };
    name.to_owned()
}
