//! `CachedStore<S>`: a [`Store`] that keeps what it reads from `S` on local disk, so a daemon
//! restart (or a second reader) does not fetch it again.
//!
//! Objects are cached in aligned chunks of [`CHUNK`] bytes keyed by (store, key, ETag, chunk
//! index): versions never mix, and a replaced object simply stops being asked for. Each chunk
//! file carries a CRC32 of its bytes, checked on every read; a bad chunk is dropped and
//! fetched again. Files are written under a temporary name and renamed, so a crash never
//! leaves a half chunk. The total size stays under a cap by evicting the least recently used
//! chunks; the index is rebuilt at start from one directory walk (file sizes and mtimes), so
//! the cache survives restarts. A write that fails (full or failing disk) turns the disk cache
//! off with one log line; it never fails a read. Concurrent readers of one chunk share one
//! fetch, and a read spanning several missing chunks fetches them in one ranged request.

mod disk;

use autosquash_core::{Error, ObjectMeta, Result, Store};
use bytes::{Bytes, BytesMut};
use disk::Disk;
use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

/// Chunk size: large enough for few files and requests, small enough to waste little.
pub const CHUNK: u64 = 1 << 20;

type Flight = Arc<tokio::sync::OnceCell<Result<Bytes>>>;

pub struct CachedStore<S: Store> {
    inner: S,
    disk: Disk,
    /// Object sizes by (key, ETag), learned from listings and HEADs: the last chunk of an
    /// object is shorter, and only the size says so.
    sizes: Mutex<HashMap<(String, String), u64>>,
    /// Chunk fetches in progress, shared by concurrent readers.
    flights: Mutex<HashMap<PathBuf, Flight>>,
}

impl<S: Store> CachedStore<S> {
    /// A cache in `dir` (created if needed) of at most `cap_bytes`.
    pub fn new(inner: S, dir: PathBuf, cap_bytes: u64) -> Self {
        let disk = Disk::open(dir, cap_bytes, &inner.describe());
        Self {
            inner,
            disk,
            sizes: Mutex::default(),
            flights: Mutex::default(),
        }
    }

    /// Bytes on disk, and whether the disk cache is working.
    pub fn disk_usage(&self) -> (u64, bool) {
        self.disk.usage()
    }

    fn learn(&self, meta: &ObjectMeta) {
        let mut sizes = self.sizes.lock().unwrap_or_else(PoisonError::into_inner);
        if sizes.len() > 100_000 {
            sizes.clear();
        }
        sizes.insert((meta.key.clone(), meta.etag.clone()), meta.size);
    }

    fn size_of(&self, key: &str, etag: &str) -> Option<u64> {
        let sizes = self.sizes.lock().unwrap_or_else(PoisonError::into_inner);
        sizes.get(&(key.to_owned(), etag.to_owned())).copied()
    }

    /// Chunks `first..=last` of an object of `size` bytes, from disk or fetched together.
    async fn chunks(
        &self,
        key: &str,
        etag: &str,
        size: u64,
        first: u64,
        last: u64,
    ) -> Result<Vec<Bytes>> {
        let mut out: Vec<Option<Bytes>> = (first..=last)
            .map(|i| self.disk.get(key, etag, i))
            .collect();
        let missing: Vec<u64> = (first..=last)
            .filter(|i| out[(i - first) as usize].is_none())
            .collect();
        match missing.as_slice() {
            [] => {}
            // One chunk: through the single-flight table.
            [i] => out[(i - first) as usize] = Some(self.one_chunk(key, etag, size, *i).await?),
            // Several: the span from the first to the last missing chunk in one request.
            [a, .., b] => {
                let (start, end) = (a * CHUNK, ((b + 1) * CHUNK).min(size));
                let data = self.inner.read(key, etag, start..end).await?;
                for i in *a..=*b {
                    let from = ((i - a) * CHUNK) as usize;
                    let chunk = data.slice(from..(from + CHUNK as usize).min(data.len()));
                    if out[(i - first) as usize].is_none() {
                        self.disk.put(key, etag, i, &chunk);
                        out[(i - first) as usize] = Some(chunk);
                    }
                }
            }
        }
        Ok(out.into_iter().map(|c| c.unwrap_or_default()).collect())
    }

    async fn one_chunk(&self, key: &str, etag: &str, size: u64, index: u64) -> Result<Bytes> {
        let path = self.disk.path(key, etag, index);
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
            flights.entry(path.clone()).or_default().clone()
        };
        let result = flight
            .get_or_init(|| async {
                let range = index * CHUNK..((index + 1) * CHUNK).min(size);
                let data = self.inner.read(key, etag, range).await?;
                self.disk.put(key, etag, index, &data);
                Ok(data)
            })
            .await
            .clone();
        self.flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&path);
        result
    }
}

#[async_trait::async_trait]
impl<S: Store> Store for CachedStore<S> {
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let objects = self.inner.list(prefix).await?;
        objects.iter().for_each(|o| self.learn(o));
        Ok(objects)
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let meta = self.inner.head(key).await?;
        self.learn(&meta);
        Ok(meta)
    }

    async fn read(&self, key: &str, etag: &str, range: Range<u64>) -> Result<Bytes> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let Some(size) = self.size_of(key, etag).filter(|&s| range.end <= s) else {
            // Unknown version (or a range past its end): no caching, the store decides.
            return self.inner.read(key, etag, range).await;
        };
        let (first, last) = (range.start / CHUNK, (range.end - 1) / CHUNK);
        let chunks = self.chunks(key, etag, size, first, last).await?;
        let mut out = BytesMut::with_capacity((range.end - range.start) as usize);
        for (i, chunk) in (first..=last).zip(chunks) {
            let base = i * CHUNK;
            let from = range.start.saturating_sub(base) as usize;
            let to = ((range.end - base) as usize).min(chunk.len());
            if from > to {
                return Err(Error::store(key, "cached chunk shorter than expected"));
            }
            out.extend_from_slice(&chunk[from..to]);
        }
        Ok(out.freeze())
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn retries(&self) -> u64 {
        self.inner.retries()
    }
}
