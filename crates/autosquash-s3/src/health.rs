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
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// When the store last failed to answer; `None` while it answers.
    failed_at: Option<Instant>,
    /// When it last answered: a request that started before that and timed out afterwards
    /// (it was sent during an outage now over) says nothing about the store now.
    answered_at: Option<Instant>,
}

impl Health {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// False right after the store failed to answer: fail without asking it.
    pub fn admit(&self) -> bool {
        self.state().failed_at.is_none_or(|t| t.elapsed() >= HOLD)
    }

    /// A request sent at `started` got no answer (timeout, connection refused or reset).
    pub fn unreachable(&self, started: Instant) {
        let mut s = self.state();
        if s.answered_at.is_some_and(|t| t > started) {
            return;
        }
        if s.failed_at.is_none() {
            warn!(
                "the store is not answering; reads of uncached data fail (at once for {HOLD:?} \
                 after each timeout) until it does"
            );
        }
        s.failed_at = Some(Instant::now());
    }

    /// The store answered (with data or a definite error).
    pub fn answered(&self) {
        let mut s = self.state();
        s.answered_at = Some(Instant::now());
        if s.failed_at.take().is_some() {
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
        h.unreachable(Instant::now());
        assert!(!h.admit(), "fails fast right after a timeout");
        std::thread::sleep(HOLD);
        assert!(h.admit(), "asks the store again after the hold");
        let sent_during_the_outage = Instant::now();
        h.unreachable(sent_during_the_outage);
        assert!(!h.admit());
        h.answered();
        assert!(h.admit(), "an answer clears it");
        // Regression: a request sent before the store came back timed out afterwards and
        // made every read fail again for a moment.
        h.unreachable(sent_during_the_outage);
        assert!(h.admit(), "an older request's timeout does not count");
    }
}
