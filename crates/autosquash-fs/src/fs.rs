//! The filesystem logic, free of any FUSE type so it can be tested without a kernel.
//!
//! The root lists one directory per `<name>.squash` object. Looking a name up "mounts" the
//! image (opens it through the engine) into a *slot*; every inode number handed to the kernel
//! carries the slot in its high 32 bits and the squashfs inode number in the low 32 bits. A
//! slot lives until the kernel has forgotten every inode of it, so numbers are never reused
//! while the kernel may still ask about them.
//!
//! Lifecycle: an image with no open files and no activity for the idle timeout, or whose
//! object was replaced or removed (as soon as it has no open files), is *retired*: the next
//! lookup mounts the current version, and the caller invalidates the kernel's dentry.

use crate::error::{FsError, FsResult};
use crate::tree::Invalidation;
use autosquash_core::{BlockCache, FileKind, Image, Inode, ObjectMeta, Store};
use bytes::Bytes;
use futures::FutureExt;
use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{debug, error, info, warn};

/// Panics caught in engine calls since the daemon started: each one is a bug (data from
/// outside must give an error, never a panic), answered EIO and shown in `status`.
static PANICS: AtomicU64 = AtomicU64::new(0);

/// Panics caught so far (see [`PANICS`]).
pub fn panics() -> u64 {
    PANICS.load(Ordering::Relaxed)
}

/// Counts and logs a panic caught in a request for image `m`: the first per mount at error
/// level with the image and key, the rest at debug level (a hostile image may cause many).
fn caught_panic(m: &Mounted, payload: Box<dyn std::any::Any + Send>) -> FsError {
    PANICS.fetch_add(1, Ordering::Relaxed);
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    if !m.panicked.swap(true, Ordering::Relaxed) {
        error!(image = %m.name, key = %m.image.meta().key, panic = %message, "bug: a request panicked; answered EIO");
    } else {
        debug!(image = %m.name, panic = %message, "request panicked");
    }
    FsError::Io(format!("internal error on image {}", m.name))
}

/// Runs an async engine call for `m`, turning a panic into an error (see [`caught_panic`]).
async fn guarded<T>(
    m: &Mounted,
    call: impl Future<Output = autosquash_core::Result<T>>,
) -> Result<autosquash_core::Result<T>, FsError> {
    AssertUnwindSafe(call)
        .catch_unwind()
        .await
        .map_err(|p| caught_panic(m, p))
}

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
}

impl Default for FsConfig {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            idle_timeout: Duration::from_secs(300),
            uid: None,
            gid: None,
            memory_limit: 128 << 20,
            negative_ttl: Duration::from_secs(60),
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
    /// Sequential readahead state per squashfs inode being read.
    readahead: Mutex<HashMap<u32, Readahead>>,
    /// Milliseconds since the filesystem started, at the last operation.
    last_used: AtomicU64,
    mounted_at: u64,
    /// The object changed or vanished: retire as soon as no file is open.
    outdated: AtomicBool,
    retired: AtomicBool,
    /// A request on this mount panicked (logged once).
    panicked: AtomicBool,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // The image's entries in the shared cache are not scanned out (that would walk the
        // whole cache): nothing asks for its namespace again, so they are the first evicted.
        info!(image = %self.name, slot = self.slot, "image unmounted");
    }
}

/// Sequential readahead of one file: while reads follow each other, the next `window`
/// bytes are fetched (in parallel parts, so decompression uses every core) before they are
/// asked for, the window doubling from 1 MiB up to 64 MiB (or an eighth of the memory budget).
/// The kernel's own readahead arrives slightly out of order, so a read starting within 1 MiB
/// of where the last one ended still counts as sequential.
#[derive(Default)]
struct Readahead {
    /// Where the last read ended.
    next: u64,
    window: u64,
    /// Everything before this has been fetched or is being fetched.
    ahead: u64,
}

const READAHEAD_MIN: u64 = 1 << 20;
const READAHEAD_MAX: u64 = 64 << 20;
const READAHEAD_PART: u64 = 4 << 20;

impl Readahead {
    /// Records a read of `offset..end` and returns the range to fetch ahead, if any.
    fn advance(&mut self, offset: u64, end: u64, max_window: u64) -> Option<std::ops::Range<u64>> {
        let sequential =
            offset.abs_diff(self.next) <= READAHEAD_MIN && (offset > 0 || self.next > 0);
        self.next = self.next.max(end);
        if !sequential {
            self.window = 0;
            self.ahead = end;
            return None;
        }
        self.window = (self.window * 2).clamp(READAHEAD_MIN, max_window.max(READAHEAD_MIN));
        let target = end + self.window;
        // Only refill once half the window has been consumed, so fetches come in big parts.
        if self.ahead >= end + self.window / 2 {
            return None;
        }
        let from = self.ahead.max(end);
        self.ahead = target;
        Some(from..target)
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
    /// Names missing from the listing, and when the store was last asked about them.
    misses: HashMap<String, Instant>,
    /// Keys that are not images, each logged once.
    ignored: std::collections::HashSet<String>,
    /// When each image's failures were last logged at warning level: one warning per image
    /// per [`FAILURE_LOG_INTERVAL`], not one per request (an outage fails thousands).
    failures_logged: HashMap<String, Instant>,
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
    config: FsConfig,
    cache: Arc<BlockCache>,
    state: Mutex<State>,
    /// One mount in flight per image, so concurrent first lookups of one image open it once
    /// while other images mount in parallel (a slow image stalls nobody else).
    mounting: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    started: Instant,
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

/// Fetches `range` of a file into the cache in the background, in parallel parts. Errors are
/// ignored: the read that needs the data will fetch it again and report them.
fn prefetch(m: &Arc<Mounted>, inode: &Arc<Inode>, range: std::ops::Range<u64>) {
    let end = range.end.min(inode.size);
    let mut part = range.start;
    while part < end {
        let len = READAHEAD_PART.min(end - part);
        let (m, inode) = (m.clone(), inode.clone());
        tokio::spawn(async move {
            let _ = guarded(&m, m.image.read(&inode, part, len as usize)).await;
        });
        part += len;
    }
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
        Arc::new(Self {
            cache,
            store,
            config,
            state: Mutex::new(State {
                next_slot: 1,
                root_mtime: now_secs(),
                ..State::default()
            }),
            mounting: Mutex::default(),
            started: Instant::now(),
        })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn touch(&self, m: &Mounted) {
        m.last_used.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Re-lists the store and updates the root. Images whose object changed or vanished are
    /// marked outdated (they keep serving open files until retired by [`AutoFs::expire`]).
    pub async fn refresh(&self) -> autosquash_core::Result<()> {
        let objects = self.store.list(&self.config.prefix).await?;
        let mut images = BTreeMap::new();
        let mut state = self.state();
        for object in objects {
            match image_name(&self.config.prefix, &object.key) {
                Some(name) => {
                    images.insert(name.to_owned(), object);
                }
                None => {
                    if state.ignored.insert(object.key.clone()) {
                        info!(key = %object.key, "ignoring: not a <name>{IMAGE_SUFFIX} object with a usable name");
                    }
                }
            }
        }
        if state.images.keys().ne(images.keys()) {
            state.root_mtime = now_secs();
            state.root_changed = true;
        }
        for (name, m) in &state.mounted {
            let changed = images
                .get(name)
                .is_none_or(|o| o.etag != m.image.meta().etag);
            if changed && !m.outdated.swap(true, Ordering::Relaxed) {
                info!(image = %name, "image replaced or removed; switching when idle");
            }
        }
        state
            .broken
            .retain(|name, etag| images.get(name).is_some_and(|o| &o.etag == etag));
        self.mounting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|name, _| images.contains_key(name));
        state.images = images;
        Ok(())
    }

    /// Retires idle and outdated images and frees slots the kernel has forgotten. Returns what
    /// the kernel should drop: the dentries of retired images, and the root's cached listing
    /// if it changed.
    pub fn expire(&self) -> Vec<Invalidation> {
        let now = self.now_ms();
        let idle_ms = self.config.idle_timeout.as_millis() as u64;
        let mut state = self.state();
        let mut retire: Vec<String> = state
            .mounted
            .values()
            .filter(|m| {
                m.outdated.load(Ordering::Relaxed)
                    || now.saturating_sub(m.last_used.load(Ordering::Relaxed)) >= idle_ms
            })
            .map(|m| m.name.clone())
            .collect();
        // The tables of mounted images live outside the shared cache: past half the memory
        // limit, the least recently used images go early.
        let mut resident: u64 = state
            .mounted
            .values()
            .filter(|m| !retire.contains(&m.name))
            .map(|m| m.image.resident_bytes())
            .sum();
        if resident > self.config.memory_limit / 2 {
            let mut candidates: Vec<&Arc<Mounted>> = state
                .mounted
                .values()
                .filter(|m| !retire.contains(&m.name))
                .collect();
            candidates.sort_by_key(|m| m.last_used.load(Ordering::Relaxed));
            for m in candidates {
                if resident <= self.config.memory_limit / 2 {
                    break;
                }
                resident -= m.image.resident_bytes();
                debug!(image = %m.name, "releasing early to stay within the memory limit");
                retire.push(m.name.clone());
            }
        }
        for name in &retire {
            if let Some(m) = state.mounted.remove(name) {
                m.retired.store(true, Ordering::Relaxed);
                info!(image = %name, "image idle; releasing");
            }
        }
        // Freed slots are dropped after the lock is released: dropping an image is not free.
        let mut freed = Vec::new();
        state.slots.retain(|_, m| {
            let keep =
                !(m.retired.load(Ordering::Relaxed) && m.lookups.load(Ordering::Relaxed) == 0);
            if !keep {
                freed.push(m.clone());
            }
            keep
        });
        let root_changed = std::mem::take(&mut state.root_changed);
        drop(state);
        drop(freed);
        let mut out: Vec<Invalidation> = retire
            .into_iter()
            .map(|name| Invalidation::Entry(ROOT_INO, name.into_bytes()))
            .collect();
        if root_changed {
            out.push(Invalidation::Inode(ROOT_INO));
        }
        out
    }

    /// Number of images currently mounted (not retired) and of live slots.
    pub fn mounted_count(&self) -> (usize, usize) {
        let state = self.state();
        (state.mounted.len(), state.slots.len())
    }

    /// Mounts the current version of `name`, or returns its existing mount, with one kernel
    /// reference already counted: counted under the state lock that hands the mount out, so
    /// [`AutoFs::expire`] can never free its slot between the mount and the kernel's lookup.
    async fn mount(&self, name: &str) -> FsResult<Arc<Mounted>> {
        match self.current(name) {
            Ok(Some(m)) => return Ok(m),
            Ok(None) => {}
            Err(FsError::NotFound) => self.find_unlisted(name).await?,
            Err(e) => return Err(e),
        }
        let gate = self
            .mounting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_owned())
            .or_default()
            .clone();
        let _one_at_a_time = gate.lock().await;
        if let Some(m) = self.current(name)? {
            return Ok(m);
        }
        let meta = self
            .state()
            .images
            .get(name)
            .cloned()
            .ok_or(FsError::NotFound)?;
        self.open_version(name, meta).await
    }

    /// A name the listing does not know: asks the store, at most once per negative TTL.
    async fn find_unlisted(&self, name: &str) -> FsResult<()> {
        if image_name("", &format!("{name}{IMAGE_SUFFIX}")) != Some(name) {
            return Err(FsError::NotFound);
        }
        {
            let mut state = self.state();
            if state.misses.len() > 10_000 {
                state.misses.clear();
            }
            let ttl = self.config.negative_ttl;
            if state.misses.get(name).is_some_and(|at| at.elapsed() < ttl) {
                return Err(FsError::NotFound);
            }
            state.misses.insert(name.to_owned(), Instant::now());
        }
        let key = format!("{}{name}{IMAGE_SUFFIX}", self.config.prefix);
        match self.store.head(&key).await {
            Ok(meta) => {
                info!(image = %name, "found an image not yet listed");
                let mut state = self.state();
                state.misses.remove(name);
                state.images.insert(name.to_owned(), meta);
                state.root_mtime = now_secs();
                state.root_changed = true;
                Ok(())
            }
            Err(autosquash_core::Error::ObjectNotFound(_)) => Err(FsError::NotFound),
            Err(e) => {
                warn!(image = %name, error = %e, "cannot check for an unlisted image");
                Err(FsError::NotFound)
            }
        }
    }

    async fn open_version(&self, name: &str, meta: ObjectMeta) -> FsResult<Arc<Mounted>> {
        let opened = AssertUnwindSafe(Image::open(
            self.store.clone(),
            meta.clone(),
            self.cache.clone(),
        ))
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            PANICS.fetch_add(1, Ordering::Relaxed);
            error!(image = %name, key = %meta.key, "bug: opening the image panicked; answered EIO");
            Err(autosquash_core::Error::Corrupt(
                "the engine panicked opening it".into(),
            ))
        });
        let image = match opened {
            Ok(image) => image,
            Err(e) => {
                if self.warning_due(name) {
                    warn!(image = %name, key = %meta.key, error = %e, "cannot mount image");
                } else {
                    debug!(image = %name, error = %e, "cannot mount image");
                }
                if matches!(
                    e,
                    autosquash_core::Error::Corrupt(_)
                        | autosquash_core::Error::Unsupported(_)
                        | autosquash_core::Error::Limit(_)
                ) {
                    self.state().broken.insert(name.to_owned(), meta.etag);
                }
                return Err(e.into());
            }
        };
        let mut state = self.state();
        let slot = loop {
            let slot = state.next_slot;
            state.next_slot = state.next_slot.checked_add(1).unwrap_or(1);
            if !state.slots.contains_key(&slot) {
                break slot;
            }
        };
        let m = Arc::new(Mounted {
            slot,
            name: name.to_owned(),
            image,
            // The lookup that mounts it (see `mount`).
            lookups: AtomicU64::new(1),
            readahead: Mutex::default(),
            last_used: AtomicU64::new(self.now_ms()),
            mounted_at: self.now_ms(),
            outdated: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
        });
        info!(image = %name, slot, etag = %meta.etag, "image mounted");
        state.failures_logged.remove(name);
        state.slots.insert(slot, m.clone());
        state.mounted.insert(name.to_owned(), m.clone());
        Ok(m)
    }

    /// The existing mount of `name` with one more kernel reference counted; an error if its
    /// current version is known to be broken.
    fn current(&self, name: &str) -> FsResult<Option<Arc<Mounted>>> {
        let state = self.state();
        if let Some(m) = state.mounted.get(name) {
            m.lookups.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(m.clone()));
        }
        let object = state.images.get(name).ok_or(FsError::NotFound)?;
        if state.broken.get(name) == Some(&object.etag) {
            return Err(FsError::Io(format!("image {name} is invalid")));
        }
        Ok(None)
    }

    fn slot(&self, slot: u32) -> FsResult<Arc<Mounted>> {
        let m = self
            .state()
            .slots
            .get(&slot)
            .cloned()
            .ok_or_else(|| FsError::Stale(format!("slot {slot} is gone")))?;
        self.touch(&m);
        Ok(m)
    }

    /// The mounted image and inode behind a (non-root) inode number.
    fn resolve(&self, ino: u64) -> FsResult<(Arc<Mounted>, Arc<Inode>)> {
        let (slot, sq) = split(ino);
        let m = self.slot(slot)?;
        let inode = self.engine(&m, || m.image.inode(sq))?;
        Ok((m, inode))
    }

    /// Runs a synchronous engine call for `m`: an error is logged where it is answered, a
    /// panic is caught (see [`caught_panic`]).
    fn engine<T>(
        &self,
        m: &Mounted,
        call: impl FnOnce() -> autosquash_core::Result<T>,
    ) -> FsResult<T> {
        std::panic::catch_unwind(AssertUnwindSafe(call))
            .map_err(|p| caught_panic(m, p))?
            .map_err(|e| self.fail(m, e))
    }

    /// Logs an engine error, with the image, where it is answered.
    fn fail(&self, m: &Mounted, e: autosquash_core::Error) -> FsError {
        if self.warning_due(&m.name) {
            warn!(image = %m.name, key = %m.image.meta().key, error = %e, "request failed");
        } else {
            debug!(image = %m.name, error = %e, "request failed");
        }
        e.into()
    }

    /// Whether a failure of `name` should be logged at warning level (else at debug).
    fn warning_due(&self, name: &str) -> bool {
        let now = Instant::now();
        let mut state = self.state();
        let due = state
            .failures_logged
            .get(name)
            .is_none_or(|t| now.duration_since(*t) >= FAILURE_LOG_INTERVAL);
        if due {
            state.failures_logged.insert(name.to_owned(), now);
        }
        due
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

    /// Looks `name` up in `parent`; on success the kernel holds one more reference. Only a
    /// lookup in the root may wait (to mount an image); see [`AutoFs::lookup_now`].
    pub async fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        if parent != ROOT_INO {
            return self.lookup_below(parent, name);
        }
        let name = std::str::from_utf8(name).map_err(|_| FsError::NotFound)?;
        let m = self.mount(name).await?;
        self.image_root_entry(m)
    }

    /// The lookup answered without waiting, where it can be: below the root (metadata is in
    /// memory or in the tables), and in the root for an image already mounted. `None`: the
    /// lookup may need the store; run [`AutoFs::lookup`] where waiting is fine.
    pub fn lookup_now(&self, parent: u64, name: &[u8]) -> Option<FsResult<Attr>> {
        if parent != ROOT_INO {
            return Some(self.lookup_below(parent, name));
        }
        let m = self.current(std::str::from_utf8(name).ok()?).ok()??;
        Some(self.image_root_entry(m))
    }

    /// The entry of a mounted image's root; `m` comes with the kernel's reference counted.
    fn image_root_entry(&self, m: Arc<Mounted>) -> FsResult<Attr> {
        match self.engine(&m, || m.image.root()) {
            Ok(root) => {
                self.touch(&m);
                Ok(self.attr_of(&m, &root))
            }
            Err(e) => {
                // The kernel takes no reference on a failed lookup.
                m.lookups.fetch_sub(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    fn lookup_below(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        let (m, dir) = self.resolve(parent)?;
        if !dir.is_dir() {
            return Err(FsError::NotDir);
        }
        let child = self.engine(&m, || m.image.lookup(&dir, name))?;
        let child = child.ok_or(FsError::NotFound)?;
        m.lookups.fetch_add(1, Ordering::Relaxed);
        Ok(self.attr_of(&m, &child))
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let state = self.state();
        if let Some(m) = state.slots.get(&split(ino).0) {
            // Saturating: a confused kernel count must not wrap into "referenced forever".
            let _ = m
                .lookups
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    Some(v.saturating_sub(n))
                });
        }
    }

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        if ino == ROOT_INO {
            return Ok(self.root_attr());
        }
        if split(ino).0 == 0 {
            // A root entry listed before its image was mounted (see `readdir`).
            return Ok(Attr {
                ino,
                ..self.root_attr()
            });
        }
        let (m, inode) = self.resolve(ino)?;
        Ok(self.attr_of(&m, &inode))
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let (m, inode) = self.resolve(ino)?;
        let target = m.image.readlink(&inode).map_err(|_| FsError::Invalid)?;
        Ok(target.to_vec())
    }

    /// Entries of directory `ino` from `offset` on (0 is `.`, 1 is `..`, then the entries),
    /// each handed to `add` until it answers that the kernel's buffer is full: O(1) per entry.
    ///
    /// With `plus` (readdirplus), entries come with their attributes and, once added, count as
    /// kernel references, as lookups do. `.` and `..` carry none (the kernel does not take them
    /// from a readdirplus), nor do root entries of images not mounted yet (mounting every
    /// image for `ls` would defeat the lazy mount): they are listed under a placeholder number
    /// (slot 0) that the kernel must look up before use.
    pub fn readdir(
        &self,
        ino: u64,
        offset: u64,
        plus: bool,
        add: &mut dyn FnMut(&DirItem, Option<&Attr>) -> bool,
    ) -> FsResult<()> {
        let dot = |ino, name: &[u8], next| DirItem {
            ino,
            kind: FileKind::Directory,
            name: name.to_vec(),
            next,
        };
        if ino == ROOT_INO {
            let mut state = self.state();
            let state = &mut *state;
            for item in [dot(ROOT_INO, b".", 1), dot(ROOT_INO, b"..", 2)] {
                if item.next > offset && add(&item, None) {
                    return Ok(());
                }
            }
            let skip = offset.saturating_sub(2) as usize;
            for (i, name) in state.images.keys().enumerate().skip(skip) {
                let mounted = state.mounted.get(name).and_then(|m| {
                    let root = m.image.root().ok()?;
                    Some((m, self.attr_of(m, &root)))
                });
                let ino = match &mounted {
                    Some((_, attr)) => attr.ino,
                    None => {
                        let next = state.placeholders.len() as u64 + 2;
                        *state.placeholders.entry(name.clone()).or_insert(next)
                    }
                };
                let item = DirItem {
                    ino,
                    kind: FileKind::Directory,
                    name: name.as_bytes().to_vec(),
                    next: 3 + i as u64,
                };
                let attr = mounted.as_ref().filter(|_| plus).map(|(_, a)| a);
                if add(&item, attr) {
                    break;
                }
                if let Some((m, _)) = mounted.filter(|_| plus) {
                    m.lookups.fetch_add(1, Ordering::Relaxed);
                }
            }
            return Ok(());
        }
        let (m, dir) = self.resolve(ino)?;
        if !dir.is_dir() {
            return Err(FsError::NotDir);
        }
        let parent = if dir.ino == m.image.root_ino() {
            ROOT_INO
        } else {
            join(m.slot, dir.parent().unwrap_or(dir.ino))
        };
        for item in [dot(ino, b".", 1), dot(parent, b"..", 2)] {
            if item.next > offset && add(&item, None) {
                return Ok(());
            }
        }
        let listing = self.engine(&m, || m.image.listing(&dir))?;
        let skip = offset.saturating_sub(2) as usize;
        for (i, entry) in listing.iter().enumerate().skip(skip) {
            let item = DirItem {
                ino: join(m.slot, entry.ino),
                kind: entry.kind,
                name: entry.name.to_vec(),
                next: 3 + i as u64,
            };
            if !plus {
                if add(&item, None) {
                    break;
                }
                continue;
            }
            let inode = self.engine(&m, || m.image.entry_inode(&dir, entry))?;
            if add(&item, Some(&self.attr_of(&m, &inode))) {
                break;
            }
            m.lookups.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Up to `size` bytes of file `ino` from `offset`. Files are opened without a request,
    /// so reads name the inode; a sequential reader gets the following bytes fetched ahead.
    pub async fn read(&self, ino: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let (m, inode) = self.resolve(ino)?;
        if inode.kind != FileKind::File {
            return Err(FsError::Invalid);
        }
        let end = (offset + u64::from(size)).min(inode.size);
        let max_window = (self.config.memory_limit / 8).min(READAHEAD_MAX);
        let ahead = {
            let mut readahead = m.readahead.lock().unwrap_or_else(PoisonError::into_inner);
            if readahead.len() > 4096 {
                readahead.clear();
            }
            readahead
                .entry(inode.ino)
                .or_default()
                .advance(offset, end, max_window)
        };
        if let Some(range) = ahead.filter(|r| r.start < inode.size) {
            prefetch(&m, &inode, range);
        }
        guarded(&m, m.image.read(&inode, offset, size as usize))
            .await?
            .map_err(|e| self.fail(&m, e))
    }

    /// The value of extended attribute `name` (only that value is decoded).
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        if ino == ROOT_INO {
            return Err(FsError::NoXattr);
        }
        let (m, inode) = self.resolve(ino)?;
        self.engine(&m, || m.image.xattr(&inode, name))?
            .ok_or(FsError::NoXattr)
    }

    /// Names of the extended attributes, each followed by a NUL (the listxattr format).
    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        if ino == ROOT_INO {
            return Ok(Vec::new());
        }
        let (m, inode) = self.resolve(ino)?;
        let mut out = Vec::new();
        for name in self.engine(&m, || m.image.xattr_names(&inode))? {
            out.extend_from_slice(&name);
            out.push(0);
        }
        Ok(out)
    }

    pub fn statfs(&self, ino: u64) -> FsResult<FsStat> {
        if ino == ROOT_INO {
            return Ok(FsStat {
                blocks: 0,
                files: self.state().images.len() as u64,
                bsize: 4096,
            });
        }
        let (m, _) = self.resolve(ino)?;
        let info = m.image.info();
        Ok(FsStat {
            blocks: info.bytes_used.div_ceil(u64::from(info.block_size)),
            files: u64::from(info.inode_count),
            bsize: info.block_size,
        })
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
    fn dir_is_immutable(&self, ino: u64) -> bool {
        // Image directories are pinned to one version; the root changes with the listing.
        ino != ROOT_INO
    }
    async fn read(&self, ino: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        AutoFs::read(self, ino, offset, size).await
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
                    "etag": m.image.meta().etag,
                    "size": m.image.meta().size,
                    "mounted_secs_ago": now.saturating_sub(m.mounted_at) / 1000,
                    "idle_secs": now.saturating_sub(m.last_used.load(Ordering::Relaxed)) / 1000,
                    "kernel_refs": m.lookups.load(Ordering::Relaxed),
                    "outdated": m.outdated.load(Ordering::Relaxed),
                })
            })
            .collect();
        serde_json::json!({
            "kind": "images",
            "source": crate::tree::Tree::describe(self),
            "images_listed": state.images.len(),
            "images_mounted": images,
            "slots": state.slots.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readahead_grows_on_sequential_reads_and_resets_on_seeks() {
        let mut r = Readahead::default();
        let max = 64 << 20;
        assert_eq!(
            r.advance(0, 131072, max),
            None,
            "the first read is no pattern yet"
        );
        let first = r
            .advance(131072, 262144, max)
            .expect("sequential read triggers readahead");
        assert_eq!(first, 262144..262144 + (1 << 20));
        // Slightly out of order (kernel readahead) still counts, and the window doubles.
        let mut fetched = vec![first];
        let mut offset = 262144;
        while offset < 40 << 20 {
            if let Some(range) = r.advance(offset, offset + 131072, max) {
                assert_eq!(
                    range.start,
                    fetched.last().unwrap().end,
                    "gap or overlap in readahead"
                );
                fetched.push(range);
            }
            offset += 131072;
        }
        assert!(r.window > 8 << 20, "window did not grow: {}", r.window);
        assert!(
            fetched.last().unwrap().end >= offset,
            "readahead fell behind the reader"
        );
        // A seek far away resets it.
        assert_eq!(r.advance(900 << 20, (900 << 20) + 4096, max), None);
        assert_eq!(r.window, 0);
        // The window never exceeds the cap.
        let mut r = Readahead::default();
        let mut offset = 0;
        for _ in 0..1000 {
            r.advance(offset, offset + (1 << 20), 4 << 20);
            offset += 1 << 20;
        }
        assert_eq!(r.window, 4 << 20);
    }
}
