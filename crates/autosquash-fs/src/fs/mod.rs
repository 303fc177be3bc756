//! The filesystem logic, free of any FUSE type so it can be tested without a kernel.
//!
//! The root lists one directory per `<name>.squash` object. Looking a name up "mounts" the
//! image (opens it through the engine) into a *slot*; every inode number handed to the kernel
//! carries the slot in its high 32 bits and the squashfs inode number in the low 32 bits. A
//! slot lives until the kernel has forgotten every inode of it (lookups and readdirplus
//! entries minus forgets), so numbers are never reused while the kernel may still ask about
//! them, and a file the kernel holds open keeps reading the version it was opened on.
//!
//! Lifecycle: an image without requests for the idle timeout, or whose object was replaced or
//! removed, is *retired*: the next lookup mounts the current version, and the caller
//! invalidates the kernel's dentry.
//!
//! Modules: this one holds the shared types and the [`crate::Tree`] adapter; `lifecycle` the
//! slots, mounting, listing refreshes, expiry and the guard around engine calls; `ops` the
//! requests, the read path among them; `push` the files of a directory handed to the
//! kernel's page cache ahead of a reader going through them in order (which saves requests,
//! not round trips to the store). Nothing is fetched ahead here: the store's pipeline
//! (autosquash-cache) sees the image's bytes read in order and hydrates images in use.

mod lifecycle;
mod ops;
mod push;
mod restore;

pub use lifecycle::panics;

use crate::clock::{Clock, SystemClock};
use crate::error::{FsError, FsResult};
use crate::tree::{Invalidation, Tuning};
use autosquash_core::{BlockCache, FileKind, Image, Inode, ObjectMeta, Store};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::info;

/// The FUSE root's inode number.
pub const ROOT_INO: u64 = 1;
/// Objects with this suffix are images; the name shown is the key without it.
pub const IMAGE_SUFFIX: &str = ".squash";

#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Key prefix of the images in the store ("" for a local directory).
    pub prefix: String,
    pub idle_timeout: Duration,
    /// Owner override for every entry (as mount options `uid=`/`gid=` would).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Memory budget for decompressed blocks, inodes and listings of all images.
    pub memory_limit: u64,
    /// A name missing from the listing is checked with one HEAD at most this often, so an
    /// image uploaded a moment ago is found at once and stray names cost nothing.
    pub negative_ttl: Duration,
    /// Have the store fetch the whole of each image in use into its local copy.
    pub hydrate: bool,
}

impl Default for FsConfig {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            idle_timeout: Duration::from_secs(300),
            uid: None,
            gid: None,
            memory_limit: 64 << 20,
            negative_ttl: Duration::from_secs(60),
            hydrate: true,
        }
    }
}

/// Attributes of one entry, as the kernel needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: FileKind,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: u32,
    pub rdev: u32,
    pub blksize: u32,
}

/// One readdir entry; `next` is the offset at which the following entry starts.
#[derive(Debug, Clone)]
pub struct DirItem {
    pub ino: u64,
    pub kind: FileKind,
    pub name: Vec<u8>,
    pub next: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct FsStat {
    pub blocks: u64,
    pub files: u64,
    pub bsize: u32,
}

/// One mounted image version.
struct Mounted {
    slot: u32,
    name: String,
    image: Arc<Image>,
    /// Kernel references to inodes of this slot (lookups and readdirplus entries minus
    /// forgets). Files are opened without a request (see the fuse module), so these
    /// references are what keeps a slot, and with it an open file's image version, alive.
    lookups: AtomicU64,
    /// The store fetching the whole image into its local copy, while the image is used.
    hydration: Mutex<Option<autosquash_core::Hydration>>,
    /// Per directory, the files read so far (for locality when not hydrating).
    dirs_read: Mutex<HashMap<u32, DirReads>>,
    /// Per directory, its reader's position (for pushing pages ahead, see `push`).
    readers: Mutex<HashMap<u32, push::DirReader>>,
    /// The filesystem's clock in milliseconds (see [`AutoFs::now_ms`]) at the last operation.
    last_used: AtomicU64,
    mounted_at: u64,
    /// The object changed or vanished: retire as soon as no file is open.
    outdated: AtomicBool,
    retired: AtomicBool,
    /// A request on this mount panicked (logged once).
    panicked: AtomicBool,
    /// Reopened after a takeover (see `restore`): the kernel holds numbers of inodes this
    /// process never looked up, learnt by one walk of the image on the first unknown one.
    restored: bool,
    /// Whether that walk completed without an error. Held while walking, so that concurrent
    /// requests for unknown numbers wait for it instead of answering ESTALE.
    learnt: Mutex<bool>,
}

/// Reads in one directory of an image: how many files, the last one, and whether the
/// directory's neighbourhood was fetched ahead.
#[derive(Default)]
struct DirReads {
    files: u32,
    last: u32,
    fetched: bool,
}

impl Mounted {
    /// Whether the store is fetching (or has fetched) the whole image.
    fn hydrating(&self) -> bool {
        let hydration = self
            .hydration
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        hydration.as_ref().is_some_and(|h| {
            matches!(
                h.progress().state(),
                autosquash_core::HydrationState::Running | autosquash_core::HydrationState::Done
            )
        })
    }

    /// How far the store's hydration of this image got (`null` if there is none).
    fn hydration_status(&self) -> serde_json::Value {
        let hydration = self
            .hydration
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(h) = hydration.as_ref() else {
            return serde_json::Value::Null;
        };
        let p = h.progress();
        serde_json::json!({
            "state": format!("{:?}", p.state()).to_lowercase(),
            "size": p.size,
            "cached": p.cached.load(Ordering::Relaxed),
            "fetched": p.fetched.load(Ordering::Relaxed),
            "requests": p.requests.load(Ordering::Relaxed),
        })
    }

    /// Stops fetching the image ahead (it went idle or was replaced).
    fn stop_hydration(&self) {
        self.hydration
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // Its entries leave the shared cache now rather than by eviction, so memory follows
        // what is mounted. A scan of the cache: the last reference is dropped outside the
        // state lock (see `expire`).
        self.image.forget();
        info!(image = %self.name, slot = self.slot, "image unmounted");
    }
}

/// How often one image's failures are logged at warning level.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Default)]
struct State {
    /// The root listing: image name → object version.
    images: BTreeMap<String, ObjectMeta>,
    /// The current mount of each name.
    mounted: HashMap<String, Arc<Mounted>>,
    /// Every slot the kernel may still reference, current or retired.
    slots: HashMap<u32, Arc<Mounted>>,
    next_slot: u32,
    /// Versions that failed to open as invalid images: answered at once, logged once.
    broken: HashMap<String, String>,
    /// Names missing from the listing, and when (by the filesystem's clock) the store was last
    /// asked about them.
    misses: HashMap<String, Duration>,
    /// Keys that are not images, each logged once.
    ignored: std::collections::HashSet<String>,
    /// When each image's failures were last logged at warning level: one warning per image
    /// per [`FAILURE_LOG_INTERVAL`], not one per request (an outage fails thousands).
    failures_logged: HashMap<String, Duration>,
    /// When the root listing last changed (the root's mtime).
    root_mtime: u32,
    /// The root listing changed since the kernel was last told (it caches listings).
    root_changed: bool,
    /// Numbers under which root entries are listed before their image is mounted (slot 0),
    /// one per name for the daemon's life, so a number never names two images.
    placeholders: HashMap<String, u64>,
}

pub struct AutoFs {
    store: Arc<dyn Store>,
    /// As made; its idle timeout, negative TTL and hydration are `tuning`'s (a reload changes
    /// those in place).
    config: FsConfig,
    tuning: Mutex<Tuning>,
    cache: Arc<BlockCache>,
    state: Mutex<State>,
    /// One mount in flight per image, so concurrent first lookups of one image open it once
    /// while other images mount in parallel (a slow image stalls nobody else).
    mounting: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// What idle expiry, the negative TTL and the failure log measure time with (see the
    /// clock module): the real clock in the daemon, a manual one in tests.
    clock: Arc<dyn Clock>,
    /// Where slots and placeholder numbers are recorded for a successor (see `restore`).
    log: Mutex<Option<Arc<crate::handover::StateLog>>>,
    /// Images mounted and released (idle, outdated or early) since the start, for metrics.
    mounts_total: AtomicU64,
    expiries_total: AtomicU64,
    /// Where file data go ahead of the kernel's reads (see `push`), once mounted.
    pages: std::sync::OnceLock<crate::fuse::PageSink>,
}

fn split(ino: u64) -> (u32, u32) {
    ((ino >> 32) as u32, ino as u32)
}

fn join(slot: u32, ino: u32) -> u64 {
    (u64::from(slot) << 32) | u64::from(ino)
}

fn now_secs() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

/// The image name of a key, if it is an image directly under `prefix` whose name is usable
/// as one path component.
pub fn image_name<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    let name = key.strip_prefix(prefix)?.strip_suffix(IMAGE_SUFFIX)?;
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.starts_with('.')
        || name.contains('/')
        || name.chars().any(char::is_control);
    (!bad).then_some(name)
}

impl AutoFs {
    pub fn new(store: Arc<dyn Store>, config: FsConfig) -> Arc<Self> {
        Self::with_cache(store, BlockCache::new(config.memory_limit), config)
    }

    /// A root sharing `cache` with other mounts of the same daemon.
    pub fn with_cache(
        store: Arc<dyn Store>,
        cache: Arc<BlockCache>,
        config: FsConfig,
    ) -> Arc<Self> {
        Self::with_clock(store, cache, config, Arc::new(SystemClock::default()))
    }

    /// A root whose lifecycle (idle expiry, negative TTL, failure log) runs on `clock`: a
    /// [`crate::ManualClock`] lets a test move time instead of sleeping.
    pub fn with_clock(
        store: Arc<dyn Store>,
        cache: Arc<BlockCache>,
        config: FsConfig,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        Arc::new(Self {
            cache,
            store,
            tuning: Mutex::new(Tuning {
                idle_timeout: config.idle_timeout,
                negative_ttl: config.negative_ttl,
                hydrate: config.hydrate,
            }),
            config,
            state: Mutex::new(State {
                next_slot: 1,
                root_mtime: now_secs(),
                ..State::default()
            }),
            mounting: Mutex::default(),
            clock,
            log: Mutex::default(),
            mounts_total: AtomicU64::new(0),
            expiries_total: AtomicU64::new(0),
            pages: std::sync::OnceLock::new(),
        })
    }

    /// The settings a reload may have changed since the start.
    pub(crate) fn tuning(&self) -> Tuning {
        *self.tuning.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_tuning(&self, tuning: Tuning) {
        *self.tuning.lock().unwrap_or_else(PoisonError::into_inner) = tuning;
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Milliseconds on the filesystem's clock.
    fn now_ms(&self) -> u64 {
        self.clock.now().as_millis() as u64
    }

    fn touch(&self, m: &Mounted) {
        m.last_used.store(self.now_ms(), Ordering::Relaxed);
    }

    fn attr_of(&self, m: &Mounted, inode: &Inode) -> Attr {
        Attr {
            ino: join(m.slot, inode.ino),
            kind: inode.kind,
            perm: inode.perm,
            nlink: inode.nlink,
            uid: self.config.uid.unwrap_or(inode.uid),
            gid: self.config.gid.unwrap_or(inode.gid),
            size: inode.size,
            mtime: inode.mtime,
            rdev: inode.rdev,
            blksize: m.image.info().block_size,
        }
    }

    fn root_attr(&self) -> Attr {
        Attr {
            ino: ROOT_INO,
            kind: FileKind::Directory,
            perm: 0o755,
            nlink: 2,
            uid: self.config.uid.unwrap_or(0),
            gid: self.config.gid.unwrap_or(0),
            size: 0,
            mtime: self.state().root_mtime,
            rdev: 0,
            blksize: 4096,
        }
    }
}

#[async_trait::async_trait]
impl crate::tree::Tree for AutoFs {
    async fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        AutoFs::lookup(self, parent, name).await
    }
    fn lookup_now(&self, parent: u64, name: &[u8]) -> Option<FsResult<Attr>> {
        AutoFs::lookup_now(self, parent, name)
    }
    fn forget(&self, ino: u64, n: u64) {
        AutoFs::forget(self, ino, n)
    }
    fn getattr(&self, ino: u64) -> FsResult<Attr> {
        AutoFs::getattr(self, ino)
    }
    fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        AutoFs::readlink(self, ino)
    }
    fn readdir(
        &self,
        ino: u64,
        offset: u64,
        plus: bool,
        add: &mut dyn FnMut(&DirItem, Option<&Attr>) -> bool,
    ) -> FsResult<()> {
        AutoFs::readdir(self, ino, offset, plus, add)
    }
    async fn read(&self, ino: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        AutoFs::read(self, ino, offset, size).await
    }
    fn attach_pages(&self, pages: crate::fuse::PageSink) {
        AutoFs::attach_pages(self, pages);
    }
    fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        AutoFs::getxattr(self, ino, name)
    }
    fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        AutoFs::listxattr(self, ino)
    }
    fn statfs(&self, ino: u64) -> FsResult<FsStat> {
        AutoFs::statfs(self, ino)
    }
    async fn refresh(&self) -> autosquash_core::Result<()> {
        AutoFs::refresh(self).await
    }
    fn expire(&self) -> Vec<crate::tree::Invalidation> {
        AutoFs::expire(self)
    }
    fn retune(&self, tuning: Tuning) {
        self.set_tuning(tuning);
    }
    fn record_to(&self, log: Arc<crate::handover::StateLog>) -> bool {
        AutoFs::record_to(self, log);
        true
    }
    async fn restore(&self, lines: &[String]) -> usize {
        AutoFs::restore(self, lines).await
    }
    fn describe(&self) -> String {
        format!("{}/{}", self.store.describe(), self.config.prefix)
    }
    fn status(&self) -> serde_json::Value {
        let state = self.state();
        let now = self.now_ms();
        let images: Vec<_> = state
            .mounted
            .values()
            .map(|m| {
                serde_json::json!({
                    "name": m.name,
                    "key": m.image.meta().key,
                    "etag": m.image.meta().etag,
                    "size": m.image.meta().size,
                    "mounted_secs_ago": now.saturating_sub(m.mounted_at) / 1000,
                    "idle_secs": now.saturating_sub(m.last_used.load(Ordering::Relaxed)) / 1000,
                    "kernel_refs": m.lookups.load(Ordering::Relaxed),
                    "outdated": m.outdated.load(Ordering::Relaxed),
                    "hydration": m.hydration_status(),
                })
            })
            .collect();
        serde_json::json!({
            "kind": "images",
            "source": crate::tree::Tree::describe(self),
            "images_listed": state.images.len(),
            "images_mounted": images,
            "slots": state.slots.len(),
            "mounts_total": self.mounts_total.load(Ordering::Relaxed),
            "expiries_total": self.expiries_total.load(Ordering::Relaxed),
        })
    }
}
