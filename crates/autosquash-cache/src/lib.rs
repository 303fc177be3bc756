//! `CachedStore<S>`: a [`Store`] that keeps what it reads from `S` on local disk, so a daemon
//! restart (or a second reader) does not fetch it again, and fetches ahead of its readers:
//! the daemon's one prefetch pipeline (`prefetch`).
//!
//! Objects are cached in aligned chunks of [`CHUNK`] bytes, per object version (key and ETag):
//! versions never mix, and a replaced object simply stops being asked for. Each version is
//! one sparse local file with the chunks at their own offsets, beside a map of which chunks
//! are present with a CRC32 of each, checked on every read (`disk`): a cached image is read
//! like a local one, one `pread` per read, and a bad or torn chunk is dropped and fetched
//! again. The total stays under a cap by evicting the least recently used chunks (holes are
//! punched); the index is rebuilt at start from the maps, so the cache survives restarts. A
//! write that fails (full or failing disk) turns the disk cache off with one log line; it
//! never fails a read.
//!
//! Three kinds of fetch share one table of chunks in flight, so no chunk is fetched twice at
//! once and a reader waits for a chunk already on its way instead of racing it:
//! - **demand**: the chunks a read needs and the disk lacks, fetched at once, never queued
//!   (adjacent ones in one request);
//! - **prefetch**: ahead of each sequential reader, and what a caller hints at
//!   ([`Store::prefetch`]: the neighbours of a file being read), in parts of [`PART`] bytes
//!   under one in-flight budget for the whole daemon;
//! - **hydration**: the whole of an image in use ([`Store::hydrate`]), in parts, below
//!   prefetch in that budget.
//!
//! With the disk cache off (cap 0, or a failing disk) nothing is hydrated and prefetched
//! chunks wait in memory, within the budget, until read.
//!
//! Threads: all of it runs on the caller's tokio runtime. Demand fetches run in the reading
//! task; prefetch parts and hydrations in spawned tasks. Cached chunks are read inline when
//! their pages are in memory, else on the blocking pool, where background parts are also
//! written.

mod disk;
mod prefetch;

pub use prefetch::{PART, PipelineConfig};

use autosquash_core::{Error, Hydration, ObjectMeta, Result, Store};
use bytes::{Bytes, BytesMut};
use disk::{ChunkId, Disk};
use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::watch;

/// Chunk size: two 128 KiB blocks. Larger chunks waste bytes on random reads (a small file's
/// fragment pulls its whole chunk); adjacent missing chunks are fetched in one request anyway.
pub const CHUNK: u64 = 256 << 10;

/// What a chunk fetch delivers to the readers waiting for it.
type Sent = Option<Result<Bytes>>;
/// A chunk being fetched: readers wait for the value the fetching task sends.
type Flight = watch::Receiver<Sent>;
/// An entry of the table of chunks on their way: being fetched, or only queued for a
/// prefetch part that waits for budget (`None`), which a demand read takes over.
type OnTheWay = Option<Flight>;
/// A chunk this task has claimed and must fetch.
type Claim = (u64, watch::Sender<Sent>);

pub struct CachedStore<S: Store> {
    shared: Arc<Shared<S>>,
}

/// The state demand reads and background tasks share.
struct Shared<S: Store> {
    inner: S,
    disk: Disk,
    /// Chunks being fetched or queued for prefetch, shared by concurrent readers.
    flights: Mutex<HashMap<ChunkId, OnTheWay>>,
    pipeline: prefetch::Pipeline,
}

/// The chunks of one span, sorted by who gets them.
#[derive(Default)]
struct Claimed {
    /// Fetched by this task.
    mine: Vec<Claim>,
    /// Being fetched by another.
    theirs: Vec<(u64, Flight)>,
    /// Landed on disk since this task looked.
    landed: Vec<u64>,
}

impl<S: Store> CachedStore<S> {
    /// A cache in `dir` (created if needed) of at most `cap_bytes` (0: no disk cache), with
    /// the default pipeline settings.
    pub fn new(inner: S, dir: PathBuf, cap_bytes: u64) -> Self {
        Self::with_config(inner, dir, cap_bytes, PipelineConfig::default())
    }

    pub fn with_config(inner: S, dir: PathBuf, cap_bytes: u64, config: PipelineConfig) -> Self {
        let disk = Disk::open(dir, cap_bytes, &inner.describe());
        Self {
            shared: Arc::new(Shared {
                inner,
                disk,
                flights: Mutex::default(),
                pipeline: prefetch::Pipeline::new(config),
            }),
        }
    }

    /// Waits until what was fetched or read ahead so far has landed (hydrations go on): the
    /// point after which a read of it no longer needs the store.
    pub async fn settled(&self) {
        self.shared.pipeline.settled().await;
    }
}

impl<S: Store> Shared<S> {
    fn flights(&self) -> std::sync::MutexGuard<'_, HashMap<ChunkId, OnTheWay>> {
        self.flights.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sorts `indices` of `object` into chunks to fetch here (missing, or only queued),
    /// chunks in flight elsewhere and chunks that landed meanwhile; the first are registered
    /// as in flight.
    fn claim(&self, object: &ObjectMeta, indices: impl Iterator<Item = u64>) -> Claimed {
        let mut claimed = Claimed::default();
        let mut flights = self.flights();
        for i in indices {
            let id = self.disk.id(object, i);
            match flights.get(&id) {
                Some(Some(rx)) => claimed.theirs.push((i, rx.clone())),
                None if self.disk.contains(object, i) || self.pipeline.is_staged(id) => {
                    claimed.landed.push(i)
                }
                Some(None) | None => {
                    let (tx, rx) = watch::channel(None);
                    flights.insert(id, Some(rx));
                    claimed.mine.push((i, tx));
                }
            }
        }
        claimed
    }

    /// Marks the chunks of `chunks` nobody has or fetches as queued for prefetch; returns
    /// the ones on disk (to be read into the page cache ahead of their reader).
    fn queue(&self, object: &ObjectMeta, chunks: Range<u64>) -> Vec<u64> {
        let mut on_disk = Vec::new();
        let mut flights = self.flights();
        for i in chunks {
            let id = self.disk.id(object, i);
            if flights.contains_key(&id) || self.pipeline.is_staged(id) {
                continue;
            }
            if self.disk.contains(object, i) {
                on_disk.push(i);
            } else {
                flights.insert(id, None);
            }
        }
        on_disk
    }

    /// Whether a chunk of `first..=last` is in flight or waits in memory (disk cache off).
    fn fetched_ahead(&self, object: &ObjectMeta, first: u64, last: u64) -> bool {
        let flights = self.flights();
        (first..=last).any(|i| {
            let id = self.disk.id(object, i);
            flights.contains_key(&id) || self.pipeline.is_staged(id)
        })
    }

    /// A chunk from disk or, with the disk cache off, from what prefetch left in memory.
    async fn landed(&self, object: &ObjectMeta, i: u64) -> Option<Bytes> {
        match self.pipeline.take_staged(self.disk.id(object, i)) {
            Some(data) => Some(data),
            None => self.disk.get(object, i..i + 1).await,
        }
    }

    /// Demand: chunks `first..=last` of `object`, from disk, from a fetch in flight, or
    /// fetched here at once.
    async fn chunks(
        self: &Arc<Self>,
        object: &ObjectMeta,
        first: u64,
        last: u64,
    ) -> Result<Vec<Bytes>> {
        // Chunks on disk are read concurrently (in parallel when they must come from disk).
        let mut out: Vec<Option<Bytes>> =
            futures::future::join_all((first..=last).map(|i| self.landed(object, i))).await;
        let missing = (first..=last).filter(|i| out[(i - first) as usize].is_none());
        let claimed = self.claim(object, missing);
        let fetched = self.fetch(object, &claimed.mine, false).await;
        for ((i, _), result) in claimed.mine.iter().zip(fetched) {
            out[(i - first) as usize] = Some(result?);
        }
        for (i, rx) in claimed.theirs {
            out[(i - first) as usize] = Some(self.wait(object, i, rx).await?);
        }
        for i in claimed.landed {
            let data = match self.landed(object, i).await {
                Some(data) => data,
                // Evicted again in between: rare enough to fetch alone.
                None => self.inner.read(object, chunk_range(object, i)).await?,
            };
            out[(i - first) as usize] = Some(data);
        }
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// The chunk another task is fetching; fetched here if that task went away.
    async fn wait(&self, object: &ObjectMeta, i: u64, mut rx: Flight) -> Result<Bytes> {
        match rx.wait_for(Option::is_some).await.map(|v| v.clone()) {
            Ok(value) => value.unwrap_or_else(|| Err(Error::store(&object.key, "fetch vanished"))),
            Err(_) => {
                self.flights().remove(&self.disk.id(object, i));
                let data = self.inner.read(object, chunk_range(object, i)).await;
                if let Ok(data) = &data {
                    self.disk.put(object, &[(i, data.clone())]);
                }
                data
            }
        }
    }

    /// Fetches the claimed chunks, one request per run of adjacent ones; each chunk lands
    /// (on disk, or in memory for a background fetch with the disk cache off) before its
    /// waiters are told, so a reader who missed the flight finds it landed.
    async fn fetch(
        self: &Arc<Self>,
        object: &ObjectMeta,
        claimed: &[Claim],
        background: bool,
    ) -> Vec<Result<Bytes>> {
        let mut results = Vec::with_capacity(claimed.len());
        let mut start = 0;
        while start < claimed.len() {
            let mut end = start + 1;
            while end < claimed.len() && claimed[end].0 == claimed[end - 1].0 + 1 {
                end += 1;
            }
            let (a, b) = (claimed[start].0, claimed[end - 1].0);
            let range = a * CHUNK..((b + 1) * CHUNK).min(object.size);
            let run: Vec<Result<Bytes>> = match self.inner.read(object, range).await {
                Ok(data) => (a..=b)
                    .map(|i| {
                        let from = ((i - a) * CHUNK) as usize;
                        let to = (from + CHUNK as usize).min(data.len());
                        Ok(data.slice(from.min(to)..to))
                    })
                    .collect(),
                Err(e) => (a..=b).map(|_| Err(e.clone())).collect(),
            };
            let landed: Vec<(u64, Bytes)> = (a..=b)
                .zip(&run)
                .filter_map(|(i, chunk)| Some((i, chunk.as_ref().ok()?.clone())))
                .collect();
            if background {
                // Off the async workers: hydration writes hundreds of chunks a second.
                let (me, object) = (self.clone(), object.clone());
                let _ = tokio::task::spawn_blocking(move || me.land(&object, &landed, true)).await;
            } else {
                self.land(object, &landed, false);
            }
            let mut flights = self.flights();
            for ((i, tx), result) in claimed[start..end].iter().zip(&run) {
                flights.remove(&self.disk.id(object, *i));
                // A failed fetch ahead is nobody's error: its waiters, told nothing, fetch
                // the chunk themselves once this task lets go of it.
                if result.is_ok() || !background {
                    let _ = tx.send(Some(result.clone()));
                }
            }
            drop(flights);
            results.extend(run);
            start = end;
        }
        results
    }

    /// Keeps a fetched chunk: on disk, or (a chunk fetched ahead, with the disk cache off) in
    /// memory until it is read.
    fn land(&self, object: &ObjectMeta, chunks: &[(u64, Bytes)], background: bool) {
        if self.disk.enabled() {
            self.disk.put(object, chunks);
        } else if background {
            for (i, data) in chunks {
                self.pipeline.stage(self.disk.id(object, *i), data.clone());
            }
        }
    }
}

/// The byte range of chunk `i` of `object`.
fn chunk_range(object: &ObjectMeta, i: u64) -> Range<u64> {
    i * CHUNK..((i + 1) * CHUNK).min(object.size)
}

#[async_trait::async_trait]
impl<S: Store> Store for CachedStore<S> {
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.shared.inner.list(prefix).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.shared.inner.head(key).await
    }

    async fn read(&self, object: &ObjectMeta, range: Range<u64>) -> Result<Bytes> {
        let shared = &self.shared;
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        // A range past the end is the store's to refuse.
        if range.end > object.size {
            return shared.inner.read(object, range).await;
        }
        let key = object.key.as_str();
        let (first, last) = (range.start / CHUNK, (range.end - 1) / CHUNK);
        // Before this read's own fetch, so the parts after it are on their way at once.
        shared.prefetch_after(object, first, last);
        shared.pipeline.touch(object, first);
        // With the disk cache off, a read that nothing fetched ahead is passed on exactly: a
        // whole chunk would be fetched only to be thrown away.
        if !shared.disk.enabled() && !shared.fetched_ahead(object, first, last) {
            return shared.inner.read(object, range).await;
        }
        // All on disk (a cached image read again): one read, and the range a slice of it.
        if let Some(run) = shared.disk.get(object, first..last + 1).await {
            let base = first * CHUNK;
            let (from, to) = ((range.start - base) as usize, (range.end - base) as usize);
            if to <= run.len() {
                return Ok(run.slice(from..to));
            }
        }
        let chunks = shared.chunks(object, first, last).await?;
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
        self.shared.inner.describe()
    }

    fn retries(&self) -> u64 {
        self.shared.inner.retries()
    }

    fn prefetch(&self, object: &ObjectMeta, range: Range<u64>) {
        let end = range.end.min(object.size);
        if range.start < end {
            self.shared
                .schedule(object, range.start / CHUNK..end.div_ceil(CHUNK));
        }
    }

    fn takes_hints(&self) -> bool {
        true
    }

    fn hydrate(&self, object: &ObjectMeta) -> Option<Hydration> {
        self.shared.hydrate(object)
    }

    /// Bytes on disk, and whether the disk cache is working.
    fn disk_usage(&self) -> Option<(u64, bool)> {
        Some(self.shared.disk.usage())
    }
}
