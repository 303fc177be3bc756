//! The handle of a background hydration ([`super::Store::hydrate`]): its progress, shown by
//! `status`, and the switch that stops it when the image is no longer used.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HydrationState {
    Running,
    /// Every byte of the object is in the local copy.
    Done,
    /// Stopped before the end: the image went idle, the cache had to evict, or the disk
    /// cache was turned off.
    Stopped,
    /// A fetch failed; demand reads fetch what they need as before.
    Failed,
}

/// Counters of one hydration, shared by the task doing it and `status`.
#[derive(Debug)]
pub struct HydrationProgress {
    pub size: u64,
    /// Bytes of the object known to be in the local copy (found there or fetched).
    pub cached: AtomicU64,
    /// Bytes the hydration fetched from the store, and in how many requests.
    pub fetched: AtomicU64,
    pub requests: AtomicU64,
    state: AtomicU8,
    stop: AtomicBool,
}

impl HydrationProgress {
    pub fn new(size: u64) -> Arc<Self> {
        Arc::new(Self {
            size,
            cached: AtomicU64::new(0),
            fetched: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            state: AtomicU8::new(0),
            stop: AtomicBool::new(false),
        })
    }

    pub fn state(&self) -> HydrationState {
        match self.state.load(Ordering::Relaxed) {
            0 => HydrationState::Running,
            1 => HydrationState::Done,
            2 => HydrationState::Stopped,
            _ => HydrationState::Failed,
        }
    }

    /// Records the end (the first end recorded wins).
    pub fn finish(&self, state: HydrationState) {
        let code = match state {
            HydrationState::Running => return,
            HydrationState::Done => 1,
            HydrationState::Stopped => 2,
            HydrationState::Failed => 3,
        };
        let _ = self
            .state
            .compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Whether the owner let go of it: the task stops before its next part.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// A hydration in progress; dropping it stops it.
#[derive(Debug)]
pub struct Hydration(Arc<HydrationProgress>);

impl Hydration {
    pub fn new(progress: Arc<HydrationProgress>) -> Self {
        Self(progress)
    }

    pub fn progress(&self) -> &HydrationProgress {
        &self.0
    }
}

impl Drop for Hydration {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
        self.0.finish(HydrationState::Stopped);
    }
}
