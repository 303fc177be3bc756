//! The housekeeping of a served tree: idle images retired every second (or every idle timeout,
//! if shorter), the source listed again on each change notification and every list interval,
//! and what changed sent to the kernel. Timed with tokio's clock, so a test runs it on paused
//! time and moves that instead of sleeping.

use crate::tree::{Invalidation, Tree};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::Receiver;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::warn;

/// How often housekeeping looks at a tree.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub idle_timeout: Duration,
    pub list_interval: Duration,
}

/// How long a burst of change notifications (a copy in progress) settles before the listing.
pub const SETTLE: Duration = Duration::from_millis(200);

/// Runs until the task is dropped. `notify` sends invalidations to the kernel; `changes`
/// carries the source's change notifications (a watched directory), if it has any; a reload
/// may change `schedule` while it runs.
pub async fn run<F, Fut>(
    tree: Arc<dyn Tree>,
    mut notify: F,
    mut changes: Option<Receiver<()>>,
    mut schedule: watch::Receiver<Schedule>,
) where
    F: FnMut(Vec<Invalidation>) -> Fut,
    Fut: Future<Output = ()>,
{
    let ticks = |s: &Schedule| {
        let tick = Duration::from_secs(1).min(s.idle_timeout);
        tokio::time::interval(tick.max(Duration::from_millis(1)))
    };
    let mut expiry = ticks(&schedule.borrow_and_update());
    let mut last_list = Instant::now();
    loop {
        let changed = async {
            match changes.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = expiry.tick() => {
                notify(tree.expire()).await;
                if last_list.elapsed() < schedule.borrow().list_interval {
                    continue;
                }
            }
            Some(()) = changed => tokio::time::sleep(SETTLE).await,
            Ok(()) = schedule.changed() => {
                expiry = ticks(&schedule.borrow_and_update());
                continue;
            }
        }
        last_list = Instant::now();
        if let Err(e) = tree.refresh().await {
            warn!(source = %tree.describe(), error = %e, "cannot refresh the listing; keeping the previous one");
        }
        // Changed versions are shown at once, not a tick later.
        notify(tree.expire()).await;
    }
}
