//! A tiny lock-free latency histogram for the metrics (`autosquash status --prometheus`):
//! fixed exponential buckets from 100 µs to 10 s, one atomic counter per bucket and the sum in
//! microseconds. Recording is a few relaxed atomic adds, cheap enough for the FUSE read path;
//! a snapshot is not atomic as a whole, so the count is taken as the sum of the buckets read
//! (count = sum of buckets always holds in what is exposed).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds (`le` in the exposition); one more bucket,
/// `+Inf`, takes the rest.
pub const BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

#[derive(Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

/// What a histogram held at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Observations per bucket, not cumulative, `+Inf` last (`BOUNDS_US.len() + 1` entries).
    pub buckets: Vec<u64>,
    pub sum_us: u64,
}

impl Snapshot {
    /// Observations in all buckets.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let i = BOUNDS_US.partition_point(|&bound| bound < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(0));
        h.observe(Duration::from_micros(100)); // on the bound: `le` is inclusive
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(10));
        h.observe(Duration::from_secs(11));
        h.observe(Duration::from_secs(3600));
        let s = h.snapshot();
        assert_eq!(s.buckets.len(), BOUNDS_US.len() + 1);
        assert_eq!(s.buckets[0], 2);
        assert_eq!(s.buckets[1], 1);
        assert_eq!(s.buckets[5], 1, "3 ms goes to le=5ms: {s:?}");
        assert_eq!(s.buckets[BOUNDS_US.len() - 1], 1, "10 s goes to le=10s");
        assert_eq!(s.buckets[BOUNDS_US.len()], 2, "the rest goes to +Inf");
        assert_eq!(s.count(), 7);
        assert_eq!(
            s.sum_us,
            201 + 3_000 + 10_000_000 + 11_000_000 + 3_600_000_000
        );
    }

    #[test]
    fn concurrent_observations_are_all_counted() {
        let h = std::sync::Arc::new(Histogram::default());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for i in 0..1000u64 {
                        h.observe(Duration::from_micros(i * 37 + t));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(h.snapshot().count(), 4000);
    }
}
