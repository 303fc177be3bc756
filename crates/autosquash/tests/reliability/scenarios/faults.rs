//! 10% of requests answered 503 SlowDown and 2% of connections reset, for minutes of mixed
//! reads by 16 readers with no disk cache and little memory, so that reads keep reaching the
//! store: every read must succeed with the right bytes.

use crate::load::{Load, Watch};
use crate::setup::{self, secs};
use crate::{Outcome, Scale};
use autosquash_testkit::fault_proxy::{Fault, FaultProxy};
use std::sync::atomic::Ordering;
use std::time::Duration;

pub fn run(scale: Scale, out: &mut Outcome) {
    let garage = setup::garage("faults");
    setup::upload_load_images(&garage);
    let proxy = FaultProxy::start(&garage.endpoint);
    let served = setup::serve_s3(
        &garage,
        &proxy.endpoint,
        &["--cache-size", "0", "--memory-limit", "16M"],
    );
    let samples = setup::load_samples(&served.mnt);
    proxy.fail_randomly(&[(Fault::SlowDown, 0.10), (Fault::Reset, 0.02)]);
    let duration = scale.pick(Duration::from_secs(300), Duration::from_secs(40));
    let watch = Watch::start(served.daemon.child.id(), Duration::from_secs(1));
    let load = Load::start(&samples, 16, 1);
    std::thread::sleep(duration);
    let counts = load.stop();
    let rss = watch.stop();
    let status = served.daemon.status();
    let store = &status["mounts"][0]["store"];
    let requests = proxy.faults.requests.load(Ordering::Relaxed);
    let injected = proxy.faults.injected.load(Ordering::Relaxed);
    out.figure("duration", secs(duration));
    out.figure("readers", 16);
    out.figure("reads", counts.line());
    out.figure(
        "requests through the proxy",
        format!(
            "{requests}, of which {injected} failed on purpose ({:.1}%)",
            100.0 * injected as f64 / requests.max(1) as f64
        ),
    );
    out.figure("retries counted by the daemon", &store["retries"]);
    out.figure("store errors seen by readers", counts.error_summary());
    out.figure("slowest read", secs(counts.slowest()));
    out.figure(
        "daemon RSS peak",
        format!("{:.0} MiB", rss.iter().map(|s| s.1).fold(0.0, f64::max)),
    );
    out.check(counts.reads() > 100, "the readers made progress");
    out.check(injected > 50, "faults were injected");
    out.check(
        counts.failed() == 0,
        format!("0 failed reads ({})", counts.error_summary()),
    );
    out.check(
        counts.wrong() == 0,
        format!("0 wrong bytes {:?}", counts.wrong_examples.lock().unwrap()),
    );
}
