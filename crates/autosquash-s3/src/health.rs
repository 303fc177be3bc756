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

/// Requests sent this close together may reach the store in either order (each first takes
/// a connection, maybe a new one): an answer to one says nothing of the other's timeout.
const REORDER: Duration = Duration::from_millis(250);

#[derive(Default)]
pub struct Health {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// When the store last failed to answer, and when the request that found it out was
    /// sent; `None` while it answers.
    failed: Option<(Instant, Instant)>,
    /// When the latest request that got an answer was sent. Times of sending, not of
    /// answering, are compared: a request sent before an outage may be answered well into
    /// it, which says nothing about the store now, while a request sent after another one
    /// and answered shows that the other's timeout is over.
    answered_sent: Option<Instant>,
}

impl Health {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// False right after the store failed to answer: fail without asking it.
    pub fn admit(&self) -> bool {
        self.state()
            .failed
            .is_none_or(|(at, _)| at.elapsed() >= HOLD)
    }

    /// A request sent at `started` got no answer (timeout, connection refused or reset).
    pub fn unreachable(&self, started: Instant) {
        let mut s = self.state();
        if s.answered_sent.is_some_and(|t| t > started + REORDER) {
            return;
        }
        if s.failed.is_none() {
            warn!(
                "the store is not answering; reads of uncached data fail (at once for {HOLD:?} \
                 after each timeout) until it does"
            );
        }
        let sent = s.failed.map_or(started, |(_, sent)| sent.max(started));
        s.failed = Some((Instant::now(), sent));
    }

    /// A request sent at `started` got an answer (data or a definite error).
    pub fn answered(&self, started: Instant) {
        let mut s = self.state();
        s.answered_sent = Some(s.answered_sent.map_or(started, |t| t.max(started)));
        // Only an answer to a request sent after the one that timed out ends the outage.
        if s.failed.is_some_and(|(_, sent)| started > sent + REORDER) {
            s.failed = None;
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
        // The store comes back; a request sent then is answered.
        std::thread::sleep(2 * REORDER);
        h.answered(Instant::now());
        assert!(h.admit(), "an answer clears it");
        // Regression: a request sent before the store came back timed out afterwards and
        // made every read fail again for a moment.
        h.unreachable(sent_during_the_outage);
        assert!(h.admit(), "an older request's timeout does not count");
    }

    /// Regression (a read waited two timeouts in the outage scenario): of two requests sent
    /// together as the outage began, one was answered and cancelled the other's timeout, so
    /// the next read was let through to wait a full timeout again. Either may be the first
    /// sent (each first takes a connection).
    #[test]
    fn requests_in_flight_as_the_outage_began_do_not_cancel_its_timeouts() {
        for answered_first in [true, false] {
            let h = Health::default();
            let first = Instant::now();
            let second = first + Duration::from_millis(1);
            let (answered, timed_out) = match answered_first {
                true => (first, second),
                false => (second, first),
            };
            h.answered(answered);
            h.unreachable(timed_out);
            assert!(
                !h.admit(),
                "the timeout counts (answered first: {answered_first})"
            );
            h.answered(answered);
            assert!(!h.admit(), "an answer sent with it does not end the outage");
            h.answered(timed_out + 2 * REORDER);
            assert!(h.admit(), "an answer to a request sent well after it does");
        }
    }
}
