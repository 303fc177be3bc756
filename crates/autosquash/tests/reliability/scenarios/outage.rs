//! The store stops answering (requests are accepted and never answered, the hardest case for
//! timeouts) in the middle of reading: what is cached keeps being served, what is not fails
//! with EIO within the configured timeout, and everything works again afterwards.

use crate::load::{Load, samples};
use crate::setup::{self, LOAD_IMAGES, secs, variant};
use crate::{Outcome, Scale};
use autosquash_testkit::fault_proxy::{Fault, FaultProxy};
use std::time::{Duration, Instant};

pub fn run(scale: Scale, out: &mut Outcome) {
    let garage = setup::garage("outage");
    setup::upload_load_images(&garage);
    let proxy = FaultProxy::start(&garage.endpoint);
    let timeout = Duration::from_secs(5);
    let served = setup::serve_s3(
        &garage,
        &proxy.endpoint,
        &[
            "--s3-timeout",
            "5s",
            "--list-interval",
            "2s",
            "--memory-limit",
            "16M",
        ],
    );
    let (cached_name, uncached_name) = (LOAD_IMAGES[0], LOAD_IMAGES[1]);
    let cached = samples(
        &served.mnt.join(cached_name),
        &variant(cached_name).extracted,
        0,
    );
    let uncached = samples(
        &served.mnt.join(uncached_name),
        &variant(uncached_name).extracted,
        1,
    );
    // Everything of the first image goes to the disk cache; the second is only mounted.
    let (failed, wrong) = setup::read_all(&cached);
    assert_eq!((failed, wrong), (0, 0), "reads before the outage");
    std::fs::read_dir(served.mnt.join(uncached_name))
        .unwrap()
        .count();

    let outage = scale.pick(Duration::from_secs(30), Duration::from_secs(12));
    proxy.fail_all(Some(Fault::Blackhole));
    let started = Instant::now();
    let on_cached = Load::start(&cached, 4, 2);
    let on_uncached = Load::start(&uncached, 2, 3);
    std::thread::sleep(outage);
    let listing: Vec<_> = std::fs::read_dir(&served.mnt)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let on_cached = on_cached.stop();
    let on_uncached = on_uncached.stop();
    let outage_took = started.elapsed();
    proxy.fail_all(None);
    let back = Instant::now();
    // The first read of an image nobody has opened yet: its metadata and data both need
    // the store.
    let fresh = LOAD_IMAGES[2];
    let fresh = samples(&served.mnt.join(fresh), &variant(fresh).extracted, 2);
    let probe = fresh.iter().max_by_key(|s| s.size).unwrap();
    let mut last_error = String::new();
    let recovered = loop {
        match std::fs::read(&probe.mounted) {
            Ok(d) if d == std::fs::read(&probe.reference).unwrap() => break Some(back.elapsed()),
            Ok(_) => last_error = "wrong bytes".into(),
            Err(e) => last_error = e.to_string(),
        }
        if back.elapsed() > Duration::from_secs(60) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let all = setup::load_samples(&served.mnt);
    let (failed_after, wrong_after) = setup::read_all(&all);
    if failed_after > 0 {
        let log = served.daemon.log_text();
        let lines: Vec<_> = log.lines().collect();
        eprintln!(
            "daemon log (end):\n{}",
            lines[lines.len().saturating_sub(15)..].join("\n")
        );
    }

    out.figure(
        "outage",
        format!(
            "{} (store accepts connections, never answers)",
            secs(outage_took)
        ),
    );
    out.figure("configured timeout (--s3-timeout)", secs(timeout));
    out.figure("reads of cached data during the outage", on_cached.line());
    out.figure(
        "reads of uncached data during the outage",
        on_uncached.line(),
    );
    out.figure("their errors", on_uncached.error_summary());
    out.figure("slowest failed read", secs(on_uncached.slowest_failure()));
    out.figure(
        "slowest read of any kind",
        secs(on_cached.slowest().max(on_uncached.slowest())),
    );
    out.figure(
        "first good read of a never-opened image after the store came back",
        recovered.map_or(format!("never (60 s): {last_error}"), secs),
    );
    out.figure(
        "after the outage",
        format!(
            "{} files read, {failed_after} failed, {wrong_after} wrong",
            all.len()
        ),
    );
    out.check(
        on_cached.reads() > 20,
        "cached reads made progress during the outage",
    );
    out.check(
        on_cached.failed() == 0 && on_cached.wrong() == 0,
        format!("cached reads kept working ({})", on_cached.error_summary()),
    );
    out.check(on_uncached.reads() > 0, "uncached reads were attempted");
    out.check(
        on_uncached.wrong() == 0,
        "no wrong bytes from uncached reads",
    );
    let only_eio = on_uncached
        .errors
        .lock()
        .unwrap()
        .keys()
        .all(|k| k == "EIO");
    out.check(only_eio, "uncached reads failed with EIO only");
    out.check(
        on_uncached.slowest() <= timeout + Duration::from_secs(3),
        format!(
            "no read waited much longer than the timeout ({} ≤ {} + 3 s)",
            secs(on_uncached.slowest()),
            secs(timeout)
        ),
    );
    out.check(
        LOAD_IMAGES.iter().all(|n| listing.iter().any(|l| l == *n)),
        "failed re-listings kept every image in the root",
    );
    out.check(
        recovered.is_some_and(|r| r < timeout + Duration::from_secs(5)),
        "reads recovered within the timeout after the store came back",
    );
    out.check(
        failed_after == 0 && wrong_after == 0,
        "full recovery: every file reads right",
    );
}
