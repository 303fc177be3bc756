//! Whether the store is answering. For a moment after a read timed out or could not reach
//! the store, reads fail at once instead of waiting again. Without this, the kernel's
//! immediate retry of a failed page read (and the next file a program tries) would each wait
//! out the full timeout, so one outage could hang a process several timeouts long; with it, a
//! read waits one timeout at most. After the moment, reads go to the store again: nothing
//! stays failed once the store is back.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

/// How long reads fail at once after the store stopped answering.
pub const HOLD: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Health {
    /// When the store last failed to answer; `None` while it answers.
    failed_at: Mutex<Option<Instant>>,
}

impl Health {
    fn failed_at(&self) -> MutexGuard<'_, Option<Instant>> {
        self.failed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// False right after the store failed to answer: fail without asking it.
    pub fn admit(&self) -> bool {
        self.failed_at().is_none_or(|t| t.elapsed() >= HOLD)
    }

    /// The store did not answer (timeout, connection refused or reset).
    pub fn unreachable(&self) {
        let mut failed_at = self.failed_at();
        if failed_at.is_none() {
            warn!(
                "the store is not answering; reads of uncached data fail (at once for {HOLD:?} \
                 after each timeout) until it does"
            );
        }
        *failed_at = Some(Instant::now());
    }

    /// The store answered (with data or a definite error).
    pub fn answered(&self) {
        if self.failed_at().take().is_some() {
            info!("the store is answering again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fails_fast_for_a_moment_after_a_timeout() {
        let h = Health::default();
        assert!(h.admit());
        h.unreachable();
        assert!(!h.admit(), "fails fast right after a timeout");
        std::thread::sleep(HOLD);
        assert!(h.admit(), "asks the store again after the hold");
        h.unreachable();
        assert!(!h.admit());
        h.answered();
        assert!(h.admit(), "an answer clears it");
    }
}
