//! The prefetch pipeline: what is fetched before anyone asks for it, and how much at once.
//!
//! - Sequential readers are found per object version (up to [`STREAMS`] at once, so parallel
//!   readers of one file each keep their own pattern); each gets a window ahead of it that
//!   doubles from 1 MiB to [`WINDOW_MAX`], refilled once half of it is consumed.
//! - A caller may hint at a range it expects to be read ([`Store::prefetch`]: the neighbours
//!   of a file being read).
//! - Hydration walks a whole object in order when nobody reads it, and only the few parts
//!   after the reader while someone does (then wraps around for what it skipped).
//! - All of them fetch in parts of [`PART`] bytes on multiples of PART, each part one request,
//!   as many in parallel as one global budget of bytes in flight allows. Prefetch goes before
//!   hydration in that budget; demand reads are never in it, so a read never queues behind
//!   bytes fetched ahead, and a chunk only queued for a part is taken over by the read that
//!   needs it. Parts are small enough that a reader waiting on one waits about a round trip.
//! - A part claims only chunks nobody has and nobody is fetching, when it gets its budget;
//!   chunks of a window that are already on disk are read into the page cache instead.

use super::{CHUNK, ChunkId, Shared};
use autosquash_core::{Hydration, HydrationProgress, HydrationState, ObjectMeta, Result, Store};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tracing::{debug, info};

/// Bytes per background request: at 20 ms a part costs about a round trip plus its transfer,
/// which bounds what a reader waiting on it waits.
pub const PART: u64 = 2 << 20;
const PART_CHUNKS: u64 = PART / CHUNK;
const WINDOW_MIN: u64 = (1 << 20) / CHUNK;
/// The most a sequential reader gets ahead of it: enough to cover several round trips at
/// a few hundred MiB/s.
const WINDOW_MAX: u64 = (32 << 20) / CHUNK;
/// Sequential patterns tracked per object version.
const STREAMS: usize = 8;
/// A reader counts as active this long after its last read. While one is, a hydration only
/// fetches the [`FOLLOW_PARTS`] parts after it, at most [`FOLLOW_IN_FLIGHT`] at once: on a
/// machine where the network or the CPU is the limit, fetching the far end of an image would
/// only slow the reader down.
const READER_ACTIVE: Duration = Duration::from_millis(200);
const FOLLOW_PARTS: usize = 8;
const FOLLOW_IN_FLIGHT: usize = 4;

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Bytes fetched ahead (prefetch and hydration together) in flight at once.
    pub budget: u64,
    /// Largest object hydrated (0: no hydration). An object is also never hydrated into a
    /// disk cache less than twice its size.
    pub hydrate_max: u64,
    /// Bytes per second one hydration may fetch (0: no limit).
    pub hydrate_bandwidth: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            budget: 32 << 20,
            hydrate_max: 4 << 30,
            hydrate_bandwidth: 0,
        }
    }
}

/// One sequential reader, in chunks.
#[derive(Debug, Clone, Copy)]
struct Stream {
    /// The chunk after the last one read.
    next: u64,
    window: u64,
    /// Everything before this is fetched or scheduled.
    ahead: u64,
    /// For replacing the stream used longest ago.
    used: u64,
}

pub(crate) struct Pipeline {
    config: PipelineConfig,
    budget: Arc<Budget>,
    streams: Mutex<Streams>,
    /// With the disk cache off: chunks fetched ahead and not yet read.
    staged: Mutex<Staged>,
    /// Objects being hydrated, each with where and when it was last read.
    hydrating: Mutex<HashMap<u64, Option<(u64, Instant)>>>,
    /// Parts and disk read-aheads scheduled and not finished (see [`Pipeline::settled`]).
    outstanding: Arc<Outstanding>,
}

/// A count of background work with a way to wait for it to reach zero.
#[derive(Default)]
struct Outstanding {
    count: Mutex<usize>,
    zero: Notify,
}

/// One unit of [`Outstanding`] work, counted from its scheduling to its drop.
struct Pending(Arc<Outstanding>);

impl Pending {
    fn new(of: &Arc<Outstanding>) -> Self {
        *lock(&of.count) += 1;
        Self(of.clone())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut count = lock(&self.0.count);
        *count -= 1;
        if *count == 0 {
            self.0.zero.notify_waiters();
        }
    }
}

#[derive(Default)]
struct Streams {
    /// By a hash of key and ETag (no allocation per read; a collision only mixes patterns).
    by_object: HashMap<u64, Vec<Stream>>,
    clock: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pipeline {
    pub(crate) fn new(config: PipelineConfig) -> Self {
        let budget = Arc::new(Budget::new(config.budget.max(PART)));
        let staged = Staged {
            cap: config.budget,
            ..Staged::default()
        };
        Self {
            config,
            budget,
            streams: Mutex::default(),
            staged: Mutex::new(staged),
            hydrating: Mutex::default(),
            outstanding: Arc::default(),
        }
    }

    /// Waits until everything fetched or read ahead so far has landed (not hydrations).
    pub(crate) async fn settled(&self) {
        loop {
            let zero = self.outstanding.zero.notified();
            if *lock(&self.outstanding.count) == 0 {
                return;
            }
            zero.await;
        }
    }

    /// Records a read of chunks `first..=last` of an object of `count` chunks and returns the
    /// chunks to fetch ahead of it, if any.
    fn observe(&self, object: &ObjectMeta, first: u64, last: u64) -> Option<Range<u64>> {
        let count = object.size.div_ceil(CHUNK);
        let max_window = WINDOW_MAX.min(self.config.budget / CHUNK).max(WINDOW_MIN);
        let mut streams = lock(&self.streams);
        if streams.by_object.len() > 10_000 {
            streams.by_object.clear();
        }
        streams.clock += 1;
        let clock = streams.clock;
        let list = streams.by_object.entry(object_id(object)).or_default();
        // The kernel's readahead arrives slightly out of order: near the last end counts.
        let Some(s) = list
            .iter_mut()
            .find(|s| first + 2 >= s.next && first <= s.next + 2)
        else {
            let fresh = Stream {
                next: last + 1,
                window: 0,
                ahead: last + 1,
                used: clock,
            };
            match list.len() < STREAMS {
                true => list.push(fresh),
                false => {
                    if let Some(oldest) = list.iter_mut().min_by_key(|s| s.used) {
                        *oldest = fresh;
                    }
                }
            }
            return None;
        };
        s.used = clock;
        // Reading the same chunks again is no progress.
        if last < s.next {
            return None;
        }
        s.next = last + 1;
        s.window = (s.window * 2).clamp(WINDOW_MIN, max_window);
        if s.ahead >= s.next + s.window / 2 {
            return None;
        }
        let from = s.ahead.max(s.next);
        let to = (s.next + s.window).min(count);
        s.ahead = to.max(from);
        (from < to).then_some(from..to)
    }

    /// `object` was just read at `chunk`: its hydration follows the reader for a while.
    pub(crate) fn touch(&self, object: &ObjectMeta, chunk: u64) {
        let mut hydrating = lock(&self.hydrating);
        if hydrating.is_empty() {
            return;
        }
        if let Some(at) = hydrating.get_mut(&object_id(object)) {
            *at = Some((chunk, Instant::now()));
        }
    }

    /// Where a reader of hydration `id` is, if one read in the last [`READER_ACTIVE`].
    fn reader(&self, id: u64) -> Option<u64> {
        let (chunk, when) = lock(&self.hydrating).get(&id).copied().flatten()?;
        (when.elapsed() < READER_ACTIVE).then_some(chunk)
    }

    pub(crate) fn is_staged(&self, id: ChunkId) -> bool {
        lock(&self.staged).map.contains_key(&id)
    }

    pub(crate) fn take_staged(&self, id: ChunkId) -> Option<Bytes> {
        let mut staged = lock(&self.staged);
        let data = staged.map.remove(&id)?;
        staged.bytes -= data.len() as u64;
        Some(data)
    }

    pub(crate) fn stage(&self, id: ChunkId, data: Bytes) {
        lock(&self.staged).insert(id, data);
    }
}

/// Chunks fetched ahead with the disk cache off, oldest dropped first past the cap.
#[derive(Default)]
struct Staged {
    map: HashMap<ChunkId, Bytes>,
    order: VecDeque<ChunkId>,
    bytes: u64,
    cap: u64,
}

impl Staged {
    fn insert(&mut self, id: ChunkId, data: Bytes) {
        self.bytes += data.len() as u64;
        if let Some(old) = self.map.insert(id, data) {
            self.bytes -= old.len() as u64;
        }
        self.order.push_back(id);
        while self.bytes > self.cap {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(old) = self.map.remove(&oldest) {
                self.bytes -= old.len() as u64;
            }
        }
        // Chunks already taken linger in the order; keep it proportional to what is held.
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order.retain(|p| map.contains_key(p));
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Priority {
    Prefetch,
    Hydrate,
}

/// Bytes in flight for background fetches. Hydration takes budget only while no prefetch is
/// waiting for it.
struct Budget {
    state: Mutex<BudgetState>,
    changed: Notify,
    total: u64,
}

struct BudgetState {
    free: u64,
    prefetch_waiting: usize,
}

/// Budget held by a part in flight; returned when dropped.
struct Permit {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Drop for Permit {
    fn drop(&mut self) {
        lock(&self.budget.state).free += self.bytes;
        self.budget.changed.notify_waiters();
    }
}

/// Counts a waiting prefetch for as long as it waits (also if its task is dropped).
struct Waiting<'a>(&'a Budget);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).prefetch_waiting -= 1;
        self.0.changed.notify_waiters();
    }
}

impl Budget {
    fn new(total: u64) -> Self {
        Self {
            state: Mutex::new(BudgetState {
                free: total,
                prefetch_waiting: 0,
            }),
            changed: Notify::new(),
            total,
        }
    }

    async fn acquire(self: &Arc<Self>, bytes: u64, priority: Priority) -> Permit {
        let bytes = bytes.min(self.total);
        let mut waiting = None;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = lock(&self.state);
                let others_first = priority == Priority::Hydrate && state.prefetch_waiting > 0;
                if state.free >= bytes && !others_first {
                    state.free -= bytes;
                    drop(state);
                    drop(waiting);
                    return Permit {
                        budget: self.clone(),
                        bytes,
                    };
                }
                if priority == Priority::Prefetch && waiting.is_none() {
                    state.prefetch_waiting += 1;
                    waiting = Some(Waiting(self));
                }
            }
            notified.await;
        }
    }
}

impl<S: Store> Shared<S> {
    /// Schedules the parts ahead of a read of chunks `first..=last`, if its reader is
    /// sequential. Each part waits for budget in its own task.
    pub(crate) fn prefetch_after(self: &Arc<Self>, object: &ObjectMeta, first: u64, last: u64) {
        if let Some(ahead) = self.pipeline.observe(object, first, last) {
            self.schedule(object, ahead);
        }
    }

    /// Fetches `chunks` ahead: queued at once (a demand read takes a queued chunk over),
    /// each part fetched in its own task once it has budget.
    pub(crate) fn schedule(self: &Arc<Self>, object: &ObjectMeta, ahead: Range<u64>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let on_disk = self.queue(object, ahead.clone());
        if !on_disk.is_empty() {
            // Chunks already local are read ahead from disk instead (a restarted daemon
            // reading what it cached before).
            let (me, object) = (self.clone(), object.clone());
            let pending = Pending::new(&self.pipeline.outstanding);
            runtime.spawn_blocking(move || {
                me.disk.read_ahead(&object, &on_disk);
                drop(pending);
            });
        }
        // Parts on multiples of PART, like hydration's: a store keeps objects in aligned
        // blocks (Garage: 1 MiB), and a part across a block boundary makes it read one more.
        let mut part = ahead.start;
        while part < ahead.end {
            let chunks = part..((part / PART_CHUNKS + 1) * PART_CHUNKS).min(ahead.end);
            part = chunks.end;
            let (me, object) = (self.clone(), object.clone());
            let pending = Pending::new(&self.pipeline.outstanding);
            runtime.spawn(async move {
                let _pending = pending;
                let bytes = (chunks.end - chunks.start) * CHUNK;
                let permit = me.pipeline.budget.acquire(bytes, Priority::Prefetch).await;
                // Errors concern nobody yet: a read that needs the chunk fetches it again.
                let _ = me.fetch_part(&object, chunks).await;
                drop(permit);
            });
        }
    }

    /// Fetches the chunks of `chunks` that nobody has or is fetching, as one request per
    /// run; the bytes fetched and the requests made.
    async fn fetch_part(
        self: &Arc<Self>,
        object: &ObjectMeta,
        chunks: Range<u64>,
    ) -> Result<(u64, u64)> {
        let claimed = self.claim(object, chunks);
        let mine = &claimed.mine;
        let requests = (0..mine.len())
            .filter(|&n| n == 0 || mine[n].0 != mine[n - 1].0 + 1)
            .count() as u64;
        let mut fetched = 0;
        for result in self.fetch(object, mine, true).await {
            fetched += result?.len() as u64;
        }
        Ok((fetched, requests))
    }

    pub(crate) fn hydrate(self: &Arc<Self>, object: &ObjectMeta) -> Option<Hydration> {
        let config = &self.pipeline.config;
        let fits = object.size <= config.hydrate_max && object.size <= self.disk.cap() / 2;
        if !self.disk.enabled() || object.size == 0 || !fits {
            return None;
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        // Registered before the task runs, so a read right after this call is seen.
        lock(&self.pipeline.hydrating).insert(object_id(object), None);
        let progress = HydrationProgress::new(object.size);
        runtime.spawn(self.clone().hydration(object.clone(), progress.clone()));
        Some(Hydration::new(progress))
    }

    /// Walks `object` in parts, in order, fetching those not on disk until it is whole, the
    /// owner lets go, or the cache starts evicting (the image would push out itself).
    async fn hydration(self: Arc<Self>, object: ObjectMeta, progress: Arc<HydrationProgress>) {
        let id = object_id(&object);
        let parts_count = object.size.div_ceil(PART);
        let mut visited = vec![false; usize::try_from(parts_count).unwrap_or(0)];
        let evictions = self.disk.evictions();
        let bandwidth = self.pipeline.config.hydrate_bandwidth;
        let started = tokio::time::Instant::now();
        let mut scheduled = 0u64;
        let mut parts = tokio::task::JoinSet::new();
        let mut end = HydrationState::Done;
        let mut cursor = 0;
        loop {
            if progress.stopping() || self.disk.evictions() != evictions || !self.disk.enabled() {
                end = HydrationState::Stopped;
                break;
            }
            while let Some(done) = parts.try_join_next() {
                if let Ok(Err(e)) = done {
                    debug!(key = %object.key, error = %e, "hydration part failed");
                    end = HydrationState::Failed;
                }
            }
            if end == HydrationState::Failed {
                break;
            }
            let part = match self.pipeline.reader(id) {
                // A reader is active: only what follows it, a few parts at a time (what is
                // skipped is fetched when the walk wraps around).
                Some(chunk) => {
                    let at = usize::try_from(chunk / PART_CHUNKS).unwrap_or(usize::MAX);
                    let next = (at..visited.len().min(at.saturating_add(FOLLOW_PARTS)))
                        .find(|&p| !visited[p]);
                    match next {
                        Some(p) if parts.len() < FOLLOW_IN_FLIGHT => p,
                        _ => {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                None => match (cursor..visited.len())
                    .chain(0..cursor)
                    .find(|&p| !visited[p])
                {
                    Some(p) => p,
                    None => break,
                },
            };
            visited[part] = true;
            cursor = part + 1;
            let first = part as u64 * PART_CHUNKS;
            let chunks = first..(first + PART_CHUNKS).min(object.size.div_ceil(CHUNK));
            let bytes = (chunks.end * CHUNK).min(object.size) - chunks.start * CHUNK;
            let present = chunks.clone().all(|i| self.disk.contains(&object, i));
            if present {
                progress.cached.fetch_add(bytes, Ordering::Relaxed);
                continue;
            }
            if bandwidth > 0 {
                let due = Duration::from_secs_f64(scheduled as f64 / bandwidth as f64);
                tokio::time::sleep_until(started + due).await;
            }
            scheduled += bytes;
            let permit = self.pipeline.budget.acquire(bytes, Priority::Hydrate).await;
            if progress.stopping() {
                end = HydrationState::Stopped;
                break;
            }
            let (me, part_of, progress) = (self.clone(), object.clone(), progress.clone());
            parts.spawn(async move {
                let result = me.fetch_part(&part_of, chunks).await;
                drop(permit);
                let (fetched, requests) = result?;
                progress.fetched.fetch_add(fetched, Ordering::Relaxed);
                progress.requests.fetch_add(requests, Ordering::Relaxed);
                progress.cached.fetch_add(bytes, Ordering::Relaxed);
                Ok::<(), autosquash_core::Error>(())
            });
        }
        while let Some(done) = parts.join_next().await {
            if let Ok(Err(e)) = done {
                debug!(key = %object.key, error = %e, "hydration part failed");
                end = HydrationState::Failed;
            }
        }
        lock(&self.pipeline.hydrating).remove(&id);
        progress.finish(end);
        info!(
            key = %object.key,
            state = ?progress.state(),
            fetched = progress.fetched.load(Ordering::Relaxed),
            seconds = started.elapsed().as_secs_f32(),
            "hydration ended"
        );
    }
}

/// A hash of an object version's key and ETag (a collision only mixes hints or patterns).
fn object_id(object: &ObjectMeta) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&object.key, &object.etag).hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(size: u64) -> ObjectMeta {
        ObjectMeta {
            key: "k".into(),
            size,
            etag: "e".into(),
        }
    }

    #[test]
    fn a_sequential_reader_gets_a_growing_window_and_a_seek_resets_it() {
        let p = Pipeline::new(PipelineConfig::default());
        let o = object(1 << 30);
        assert_eq!(
            p.observe(&o, 0, 3),
            None,
            "the first read is no pattern yet"
        );
        let first = p.observe(&o, 4, 7).expect("the second one is");
        assert_eq!(first, 8..8 + WINDOW_MIN);
        let mut ahead = first.end;
        let mut at = 8;
        while at < 2000 {
            if let Some(r) = p.observe(&o, at, at + 3) {
                assert_eq!(r.start, ahead, "gap or overlap in what is fetched ahead");
                ahead = r.end;
            }
            at += 4;
            assert!(ahead > at, "prefetch fell behind the reader at chunk {at}");
        }
        assert!(ahead - at <= WINDOW_MAX, "window past its cap");
        assert!(ahead - at >= WINDOW_MAX / 2, "window did not grow");
        // Far away: a new pattern, nothing fetched ahead yet.
        assert_eq!(p.observe(&o, 90_000, 90_003), None);
    }

    #[test]
    fn parallel_readers_of_one_object_keep_their_own_patterns() {
        let p = Pipeline::new(PipelineConfig::default());
        let o = object(1 << 30);
        let starts = [0u64, 1000, 2000, 3000];
        for s in starts {
            assert_eq!(p.observe(&o, s, s + 3), None);
        }
        for s in starts {
            assert!(
                p.observe(&o, s + 4, s + 7).is_some(),
                "reader at {s} not seen as sequential"
            );
        }
    }

    #[tokio::test]
    async fn hydration_waits_while_prefetch_wants_the_budget() {
        let budget = Arc::new(Budget::new(4 * PART));
        let held = budget.acquire(4 * PART, Priority::Prefetch).await;
        let b = budget.clone();
        let prefetch = tokio::spawn(async move { b.acquire(PART, Priority::Prefetch).await });
        let b = budget.clone();
        let hydrate = tokio::spawn(async move { b.acquire(4 * PART, Priority::Hydrate).await });
        tokio::task::yield_now().await;
        drop(held);
        let p = prefetch.await.unwrap();
        assert!(
            !hydrate.is_finished(),
            "hydration went before a waiting prefetch"
        );
        drop(p);
        let h = tokio::time::timeout(Duration::from_secs(5), hydrate)
            .await
            .expect("hydration never got the budget back")
            .unwrap();
        assert_eq!(lock(&budget.state).free, 0);
        drop(h);
        assert_eq!(lock(&budget.state).free, 4 * PART);
    }
}
