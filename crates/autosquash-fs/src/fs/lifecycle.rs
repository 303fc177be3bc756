//! Slots and their lifecycle: mounting on lookup (one open in flight per image), listing
//! refreshes, idle and early expiry, versions, the failure log, and the guard that turns a
//! panic in the engine into an error for one request.

use super::*;
use futures::FutureExt;
use std::panic::AssertUnwindSafe;
use tracing::{debug, error, warn};

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
pub(super) async fn guarded<T>(
    m: &Mounted,
    call: impl Future<Output = autosquash_core::Result<T>>,
) -> Result<autosquash_core::Result<T>, FsError> {
    AssertUnwindSafe(call)
        .catch_unwind()
        .await
        .map_err(|p| caught_panic(m, p))
}

impl AutoFs {
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
        let idle_ms = self.tuning().idle_timeout.as_millis() as u64;
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
                m.stop_hydration();
                self.expiries_total.fetch_add(1, Ordering::Relaxed);
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
        for m in &freed {
            // Appended, never rewritten in place: a crash in the middle of a rewrite would
            // leave the successor without the slots the kernel still references.
            self.record(&serde_json::json!({"gone": m.slot}));
        }
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
    pub(super) async fn mount(&self, name: &str) -> FsResult<Arc<Mounted>> {
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
    pub(super) async fn find_unlisted(&self, name: &str) -> FsResult<()> {
        if image_name("", &format!("{name}{IMAGE_SUFFIX}")) != Some(name) {
            return Err(FsError::NotFound);
        }
        {
            let mut state = self.state();
            if state.misses.len() > 10_000 {
                state.misses.clear();
            }
            let (now, ttl) = (self.clock.now(), self.tuning().negative_ttl);
            if state
                .misses
                .get(name)
                .is_some_and(|at| now.saturating_sub(*at) < ttl)
            {
                return Err(FsError::NotFound);
            }
            state.misses.insert(name.to_owned(), now);
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

    pub(super) async fn open_version(
        &self,
        name: &str,
        meta: ObjectMeta,
    ) -> FsResult<Arc<Mounted>> {
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
        // The lookup that mounts it (see `mount`).
        let m = self.install(&mut state, slot, name, image, &meta, 1);
        Ok(m)
    }

    /// Puts an opened image into `slot` as the current mount of `name`, with `lookups` kernel
    /// references, and records the slot for a successor.
    pub(super) fn install(
        &self,
        state: &mut State,
        slot: u32,
        name: &str,
        image: Arc<Image>,
        meta: &ObjectMeta,
        lookups: u64,
    ) -> Arc<Mounted> {
        let restored = lookups == super::restore::UNKNOWN_REFS;
        let m = Arc::new(Mounted {
            slot,
            name: name.to_owned(),
            image,
            lookups: AtomicU64::new(lookups),
            hydration: Mutex::new(if self.tuning().hydrate {
                self.store.hydrate(meta)
            } else {
                None
            }),
            dirs_read: Mutex::default(),
            readers: Mutex::default(),
            last_used: AtomicU64::new(self.now_ms()),
            mounted_at: self.now_ms(),
            outdated: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            restored,
            learnt: Mutex::new(false),
        });
        info!(image = %name, slot, etag = %meta.etag, restored, "image mounted");
        self.mounts_total.fetch_add(1, Ordering::Relaxed);
        state.failures_logged.remove(name);
        state.slots.insert(slot, m.clone());
        state.mounted.insert(name.to_owned(), m.clone());
        if !restored {
            self.record(&super::restore::slot_line(slot, name, meta));
        }
        m
    }

    /// The existing mount of `name` with one more kernel reference counted; an error if its
    /// current version is known to be broken.
    pub(super) fn current(&self, name: &str) -> FsResult<Option<Arc<Mounted>>> {
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

    pub(super) fn slot(&self, slot: u32) -> FsResult<Arc<Mounted>> {
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
    pub(super) fn resolve(&self, ino: u64) -> FsResult<(Arc<Mounted>, Arc<Inode>)> {
        let (slot, sq) = split(ino);
        let m = self.slot(slot)?;
        let inode = self.engine(&m, || match m.image.inode(sq) {
            // A number a predecessor gave the kernel; if it is still unknown after a walk that
            // met an error, that error (EIO, worth retrying) is the answer rather than ESTALE.
            Err(autosquash_core::Error::UnknownInode(_)) if m.restored => {
                let learnt = learn_numbers(&m);
                match m.image.inode(sq) {
                    Err(e @ autosquash_core::Error::UnknownInode(_)) => {
                        Err(learnt.err().unwrap_or(e))
                    }
                    other => other,
                }
            }
            other => other,
        })?;
        Ok((m, inode))
    }

    /// Runs a synchronous engine call for `m`: an error is logged where it is answered, a
    /// panic is caught (see [`caught_panic`]).
    pub(super) fn engine<T>(
        &self,
        m: &Mounted,
        call: impl FnOnce() -> autosquash_core::Result<T>,
    ) -> FsResult<T> {
        std::panic::catch_unwind(AssertUnwindSafe(call))
            .map_err(|p| caught_panic(m, p))?
            .map_err(|e| self.fail(m, e))
    }

    /// Logs an engine error, with the image, where it is answered.
    pub(super) fn fail(&self, m: &Mounted, e: autosquash_core::Error) -> FsError {
        if self.warning_due(&m.name) {
            warn!(image = %m.name, key = %m.image.meta().key, error = %e, "request failed");
        } else {
            debug!(image = %m.name, error = %e, "request failed");
        }
        e.into()
    }

    /// Whether a failure of `name` should be logged at warning level (else at debug).
    pub(super) fn warning_due(&self, name: &str) -> bool {
        let now = self.clock.now();
        let mut state = self.state();
        let due = state
            .failures_logged
            .get(name)
            .is_none_or(|t| now.saturating_sub(*t) >= FAILURE_LOG_INTERVAL);
        if due {
            state.failures_logged.insert(name.to_owned(), now);
        }
        due
    }
}

/// Learns every inode number of a restored mount, which the kernel may hold from a
/// predecessor: one walk of the image, which concurrent callers wait for. A walk that met an
/// error (a store outage) is done again by the next caller; that error is returned.
fn learn_numbers(m: &Mounted) -> autosquash_core::Result<()> {
    let mut learnt = m.learnt.lock().unwrap_or_else(PoisonError::into_inner);
    if *learnt {
        return Ok(());
    }
    let (mut entries, mut first_error) = (0usize, None);
    for walked in m.image.walk(usize::MAX) {
        entries += 1;
        if let Err(e) = walked.inode {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        None => {
            *learnt = true;
            debug!(image = %m.name, entries, "inode numbers learnt after a takeover");
            Ok(())
        }
        Some(e) => {
            debug!(image = %m.name, entries, error = %e, "inode numbers not all learnt");
            Err(e)
        }
    }
}
