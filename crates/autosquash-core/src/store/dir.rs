//! A local directory as a store: files are objects, the ETag is derived from size, mtime and
//! inode number, so a replaced file (new inode or new mtime) is noticed on the next read.
//!
//! Open files are kept per (key, ETag): a version replaced by rename stays readable through
//! its descriptor for as long as readers pin it, the local equivalent of S3's If-Match.

use super::{ObjectMeta, Store, check_key, check_range};
use crate::error::{Error, Result};
use bytes::Bytes;
use rustix::io::ReadWriteFlags;
use std::fs::{File, Metadata};
use std::io::ErrorKind;
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// Descriptors kept open; the oldest is closed beyond this.
const OPEN_FILES: usize = 64;

pub struct DirStore {
    root: PathBuf,
    /// Most recently used last.
    open: Mutex<Vec<(String, String, Arc<File>)>>,
}

impl DirStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            open: Mutex::default(),
        }
    }

    /// A file rewritten in place (same inode, new mtime or size) is another version: never mix
    /// them. Checked after the read, so bytes read from a changed file are never returned.
    fn check_version(
        key: &str,
        etag_wanted: &str,
        range: &Range<u64>,
        meta: &std::fs::Metadata,
    ) -> Result<()> {
        if etag(meta) != etag_wanted {
            return Err(Error::Replaced(key.to_owned()));
        }
        check_range(key, range, meta.size())
    }

    /// An open descriptor of version `etag` of `key`: a kept one, or the current file.
    fn file(&self, key: &str, etag_wanted: &str) -> Result<Arc<File>> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = open
            .iter()
            .position(|(k, e, _)| k == key && e == etag_wanted)
        {
            let entry = open.remove(i);
            let file = entry.2.clone();
            open.push(entry);
            return Ok(file);
        }
        drop(open);
        let file = File::open(self.path(key)?).map_err(|e| Self::io_error(key, e))?;
        let meta = file.metadata().map_err(|e| Self::io_error(key, e))?;
        if etag(&meta) != etag_wanted {
            return Err(Error::Replaced(key.to_owned()));
        }
        let file = Arc::new(file);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.len() >= OPEN_FILES {
            open.remove(0);
        }
        open.push((key.to_owned(), etag_wanted.to_owned(), file.clone()));
        Ok(file)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    /// A channel that receives a message shortly after files in the directory change (created,
    /// removed, renamed, rewritten), so listings can be refreshed without polling.
    pub fn watch(&self) -> Result<tokio::sync::mpsc::Receiver<()>> {
        use futures::StreamExt;
        use inotify::{Inotify, WatchMask};
        let fail = |e: std::io::Error| Error::store(&self.describe(), format!("inotify: {e}"));
        let inotify = Inotify::init().map_err(fail)?;
        inotify
            .watches()
            .add(
                &self.root,
                WatchMask::CREATE
                    | WatchMask::DELETE
                    | WatchMask::MOVED_TO
                    | WatchMask::MOVED_FROM
                    | WatchMask::CLOSE_WRITE
                    | WatchMask::ATTRIB,
            )
            .map_err(fail)?;
        let mut events = inotify.into_event_stream(vec![0u8; 4096]).map_err(fail)?;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            while events.next().await.is_some() {
                // A full channel already holds a pending notification: dropping this one
                // coalesces bursts (a copy writes many events) into one refresh.
                if tx.try_send(()).is_err() && tx.is_closed() {
                    break;
                }
            }
        });
        Ok(rx)
    }

    fn io_error(key: &str, err: std::io::Error) -> Error {
        if err.kind() == ErrorKind::NotFound {
            Error::ObjectNotFound(key.to_owned())
        } else {
            Error::store(key, err)
        }
    }
}

fn etag(meta: &Metadata) -> String {
    format!(
        "\"{:x}-{:x}.{:x}-{:x}\"",
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ino()
    )
}

fn object_meta(key: String, meta: &Metadata) -> ObjectMeta {
    ObjectMeta {
        key,
        size: meta.size(),
        etag: etag(meta),
    }
}

/// Regular files under `dir`, recursively, as `/`-separated keys; unreadable or non-UTF-8
/// entries are skipped (they cannot be addressed by key).
fn walk(root: &Path, rel: &str, out: &mut Vec<ObjectMeta>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let key = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let Ok(meta) = std::fs::metadata(root.join(&key)) else {
            continue;
        };
        if meta.is_dir() {
            walk(root, &key, out)?;
        } else if meta.is_file() {
            out.push(object_meta(key, &meta));
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl Store for DirStore {
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk(&root, "", &mut out).map_err(|e| Self::io_error(&prefix, e))?;
            out.retain(|o| o.key.starts_with(&prefix));
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
        .map_err(|e| Error::store(&self.describe(), e))?
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let path = self.path(key)?;
        let meta = tokio::fs::metadata(&path)
            .await
            .map_err(|e| Self::io_error(key, e))?;
        if !meta.is_file() {
            return Err(Error::ObjectNotFound(key.to_owned()));
        }
        Ok(object_meta(key.to_owned(), &meta))
    }

    /// Reads inline when the bytes are in the page cache (`RWF_NOWAIT`: the caller, often a
    /// FUSE thread, gets them without a thread hop), else on the blocking pool, never on an
    /// async worker.
    async fn read(&self, object: &ObjectMeta, range: Range<u64>) -> Result<Bytes> {
        let (key, etag_wanted) = (object.key.as_str(), object.etag.as_str());
        check_range(key, &range, object.size)?;
        let file = self.file(key, etag_wanted)?;
        let mut buf = vec![0; (range.end - range.start) as usize];
        let mut io = [std::io::IoSliceMut::new(&mut buf)];
        let cached = rustix::io::preadv2(&*file, &mut io, range.start, ReadWriteFlags::NOWAIT);
        if cached.is_ok_and(|n| n == buf.len()) {
            let meta = file.metadata().map_err(|e| Self::io_error(key, e))?;
            Self::check_version(key, etag_wanted, &range, &meta)?;
            return Ok(Bytes::from(buf));
        }
        let key = key.to_owned();
        let etag_wanted = etag_wanted.to_owned();
        tokio::task::spawn_blocking(move || {
            let meta = file.metadata().map_err(|e| Self::io_error(&key, e))?;
            Self::check_version(&key, &etag_wanted, &range, &meta)?;
            file.read_exact_at(&mut buf, range.start)
                .map_err(|e| Self::io_error(&key, e))?;
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(|e| Error::store(&self.describe(), e))?
    }

    fn describe(&self) -> String {
        format!("dir:{}", self.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lists_reads_and_notices_replacement() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a.squash"), b"0123456789").unwrap();
        std::fs::write(dir.path().join("sub/b"), b"x").unwrap();
        let store = DirStore::new(dir.path());
        let keys: Vec<_> = store
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, ["a.squash", "sub/b"]);
        let meta = store.head("a.squash").await.unwrap();
        assert_eq!(meta.size, 10);
        assert_eq!(&store.read(&meta, 2..5).await.unwrap()[..], b"234");
        assert!(store.read(&meta, 5..11).await.is_err());
        assert!(matches!(
            store.head("../etc").await,
            Err(Error::InvalidKey(_))
        ));
        assert!(matches!(
            store.head("nope").await,
            Err(Error::ObjectNotFound(_))
        ));
        // Replacement by rename gives a new inode, hence a new ETag; the old version stays
        // readable through the kept descriptor.
        std::fs::write(dir.path().join("new"), b"abcdefghij").unwrap();
        std::fs::rename(dir.path().join("new"), dir.path().join("a.squash")).unwrap();
        assert_eq!(&store.read(&meta, 0..3).await.unwrap()[..], b"012");
        let new = store.head("a.squash").await.unwrap();
        assert_ne!(new.etag, meta.etag);
        assert_eq!(&store.read(&new, 0..3).await.unwrap()[..], b"abc");
        // A version never opened before is gone once replaced.
        std::fs::write(dir.path().join("sub/b2"), b"y").unwrap();
        let b = store.head("sub/b").await.unwrap();
        std::fs::rename(dir.path().join("sub/b2"), dir.path().join("sub/b")).unwrap();
        assert!(matches!(
            store.read(&b, 0..1).await,
            Err(Error::Replaced(_))
        ));
    }
}
