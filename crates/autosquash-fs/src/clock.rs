//! The clock the filesystem logic measures its lifecycle with: idle expiry, the negative TTL
//! of names missing from the listing, the interval between warnings of one image, and the ages
//! shown in `status`. File times (mtimes) are wall-clock times and do not come from here.
//!
//! Why an injected clock rather than tokio's (whose `Instant` a paused test runtime makes
//! virtual): the logic is called from the FUSE threads as much as from the runtime
//! (`getattr`, `readdir`, `readlink` and `forget` run on a FUSE thread that has not entered
//! the runtime), and tokio's clock outside a runtime context silently falls back to the real
//! one, so a paused test clock would hold for some callers and not for others; nor can a
//! multi-threaded test runtime be paused.
//! A clock handed in at construction is the same for every caller on every thread, and a
//! test moves it with [`ManualClock::advance`] instead of sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Monotonic time since an arbitrary origin (the clock's creation for [`SystemClock`]).
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Duration;
}

/// The real monotonic clock (`std::time::Instant`): what the daemon uses.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock that moves only when told to, for tests: it starts at zero and stands still until
/// [`ManualClock::advance`].
#[derive(Debug, Default)]
pub struct ManualClock {
    nanos: AtomicU64,
}

impl ManualClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(by, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced() {
        let clock = ManualClock::new();
        assert_eq!(clock.now(), Duration::ZERO);
        assert_eq!(clock.now(), Duration::ZERO);
        clock.advance(Duration::from_millis(1500));
        assert_eq!(clock.now(), Duration::from_millis(1500));
    }

    #[test]
    fn the_system_clock_starts_near_zero_and_never_goes_back() {
        let clock = SystemClock::default();
        let a = clock.now();
        let b = clock.now();
        assert!(b >= a);
        assert!(a < Duration::from_secs(60));
    }
}
