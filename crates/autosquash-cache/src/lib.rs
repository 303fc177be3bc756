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
use std::sync::{Mutex, PoisonError};
use tokio::sync::watch;

/// Chunk size: two 128 KiB blocks. Larger chunks waste bytes on random reads (a small file's
/// fragment pulls its whole chunk); adjacent missing chunks are fetched in one request anyway.
pub const CHUNK: u64 = 256 << 10;

/// A chunk being fetched: readers wait for the value the fetching reader sends.
type Flight = watch::Receiver<Option<Result<Bytes>>>;

pub struct CachedStore<S: Store> {
    inner: S,
    disk: Disk,
    /// Chunk fetches in progress, shared by concurrent readers.
    flights: Mutex<HashMap<PathBuf, Flight>>,
    /// Per object version: the chunk after the last miss, and the current fetch-ahead window.
    patterns: Mutex<HashMap<(String, String), (u64, u64)>>,
}

/// Fetch-ahead window of a sequential reader, in chunks (1 MiB to 16 MiB).
const AHEAD_MIN: u64 = (1 << 20) / CHUNK;
const AHEAD_MAX: u64 = (16 << 20) / CHUNK;

impl<S: Store> CachedStore<S> {
    /// A cache in `dir` (created if needed) of at most `cap_bytes`.
    pub fn new(inner: S, dir: PathBuf, cap_bytes: u64) -> Self {
        let disk = Disk::open(dir, cap_bytes, &inner.describe());
        Self {
            inner,
            disk,
            flights: Mutex::default(),
            patterns: Mutex::default(),
        }
    }

    /// Bytes on disk, and whether the disk cache is working.
    pub fn disk_usage(&self) -> (u64, bool) {
        self.disk.usage()
    }

    /// Chunks `first..=last` of an object of `size` bytes: from disk, from a fetch another
    /// reader has in flight, or fetched here, runs of adjacent chunks in one request each.
    async fn chunks(&self, object: &ObjectMeta, first: u64, last: u64) -> Result<Vec<Bytes>> {
        let (key, etag, size) = (object.key.as_str(), object.etag.as_str(), object.size);
        // Chunks on disk are read concurrently (in parallel when they must come from disk).
        let mut out: Vec<Option<Bytes>> =
            futures::future::join_all((first..=last).map(|i| self.disk.get(key, etag, i))).await;
        // Claim the missing chunks nobody is fetching; wait for the others.
        let mut mine: Vec<(u64, watch::Sender<Option<Result<Bytes>>>)> = Vec::new();
        let mut theirs: Vec<(u64, watch::Receiver<Option<Result<Bytes>>>)> = Vec::new();
        {
            let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
            for i in (first..=last).filter(|i| out[(i - first) as usize].is_none()) {
                let path = self.disk.path(key, etag, i);
                match flights.get(&path) {
                    Some(rx) => theirs.push((i, rx.clone())),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        flights.insert(path, rx);
                        mine.push((i, tx));
                    }
                }
            }
            // A reader going forward through the object: extend the request with the chunks
            // after it (same round trip), stopping at the first one cached or in flight.
            if mine.last().is_some_and(|(i, _)| *i == last) {
                for i in self.ahead(key, etag, size, mine[0].0, last) {
                    let path = self.disk.path(key, etag, i);
                    if self.disk.contains(&path) || flights.contains_key(&path) {
                        break;
                    }
                    let (tx, rx) = watch::channel(None);
                    flights.insert(path, rx);
                    mine.push((i, tx));
                }
            }
        }
        let fetched = self.fetch_claimed(object, &mine).await;
        {
            let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
            for (i, _) in &mine {
                flights.remove(&self.disk.path(key, etag, *i));
            }
        }
        for ((i, tx), result) in mine.iter().zip(fetched) {
            let _ = tx.send(Some(result.clone()));
            // Chunks fetched ahead are only stored; their errors concern nobody yet.
            if *i <= last {
                out[(i - first) as usize] = Some(result?);
            }
        }
        for (i, mut rx) in theirs {
            let waited = rx.wait_for(Option::is_some).await.map(|v| v.clone());
            let result = match waited {
                Ok(value) => value.unwrap_or_else(|| Err(Error::store(key, "fetch vanished"))),
                // The fetching reader was cancelled: fetch it here.
                Err(_) => {
                    let path = self.disk.path(key, etag, i);
                    self.flights
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&path);
                    let range = i * CHUNK..((i + 1) * CHUNK).min(size);
                    let data = self.inner.read(object, range).await;
                    if let Ok(data) = &data {
                        self.disk.put(key, etag, i, data);
                    }
                    data
                }
            };
            out[(i - first) as usize] = Some(result?);
        }
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// Chunks to fetch ahead of a miss at `from..=last`: none for a random reader; for one that
    /// continues where its last miss ended, a window that doubles from 1 MiB to 16 MiB.
    fn ahead(
        &self,
        key: &str,
        etag: &str,
        size: u64,
        from: u64,
        last: u64,
    ) -> std::ops::Range<u64> {
        let mut patterns = self.patterns.lock().unwrap_or_else(PoisonError::into_inner);
        if patterns.len() > 10_000 {
            patterns.clear();
        }
        let entry = patterns
            .entry((key.to_owned(), etag.to_owned()))
            .or_insert((u64::MAX, 0));
        let sequential = entry.0 != u64::MAX && from + 2 >= entry.0 && from <= entry.0 + 2;
        let window = if sequential {
            (entry.1 * 2).clamp(AHEAD_MIN, AHEAD_MAX)
        } else {
            0
        };
        let end = (last + 1 + window).min(size.div_ceil(CHUNK));
        *entry = (end, window);
        last + 1..end
    }

    /// Fetches the claimed chunks, one request per run of adjacent ones, and stores them.
    async fn fetch_claimed<T>(
        &self,
        object: &ObjectMeta,
        claimed: &[(u64, T)],
    ) -> Vec<Result<Bytes>> {
        let (key, etag, size) = (object.key.as_str(), object.etag.as_str(), object.size);
        let mut results = Vec::with_capacity(claimed.len());
        let mut start = 0;
        while start < claimed.len() {
            let mut end = start + 1;
            while end < claimed.len() && claimed[end].0 == claimed[end - 1].0 + 1 {
                end += 1;
            }
            let (a, b) = (claimed[start].0, claimed[end - 1].0);
            let range = a * CHUNK..((b + 1) * CHUNK).min(size);
            match self.inner.read(object, range).await {
                Ok(data) => {
                    for i in a..=b {
                        let from = ((i - a) * CHUNK) as usize;
                        let chunk = data
                            .slice(from.min(data.len())..(from + CHUNK as usize).min(data.len()));
                        self.disk.put(key, etag, i, &chunk);
                        results.push(Ok(chunk));
                    }
                }
                Err(e) => results.extend((a..=b).map(|_| Err(e.clone()))),
            }
            start = end;
        }
        results
    }
}

#[async_trait::async_trait]
impl<S: Store> Store for CachedStore<S> {
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.inner.list(prefix).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.inner.head(key).await
    }

    async fn read(&self, object: &ObjectMeta, range: Range<u64>) -> Result<Bytes> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        // A range past the end is the store's to refuse; a disk cache that is off must not
        // fetch ahead what it cannot keep.
        if range.end > object.size || !self.disk.enabled() {
            return self.inner.read(object, range).await;
        }
        let key = object.key.as_str();
        let (first, last) = (range.start / CHUNK, (range.end - 1) / CHUNK);
        let chunks = self.chunks(object, first, last).await?;
        // The part of each chunk inside the range; a range inside one chunk is that chunk's
        // slice, not a copy.
        let piece = |i: u64, chunk: &Bytes| {
            let base = i * CHUNK;
            let from = range.start.saturating_sub(base) as usize;
            let to = ((range.end - base) as usize).min(chunk.len());
            (from <= to)
                .then(|| chunk.slice(from..to))
                .ok_or_else(|| Error::store(key, "cached chunk shorter than expected"))
        };
        if let [chunk] = &chunks[..] {
            return piece(first, chunk);
        }
        let mut out = BytesMut::with_capacity((range.end - range.start) as usize);
        for (i, chunk) in (first..=last).zip(&chunks) {
            out.extend_from_slice(&piece(i, chunk)?);
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
