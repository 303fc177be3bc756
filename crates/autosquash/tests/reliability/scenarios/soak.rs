//! 64 readers for ten minutes, the load moving between images every 20 s so that idle images
//! are forgotten and mounted again all along: RSS and open descriptors must stay flat.

use crate::load::{Load, Watch};
use crate::setup::{self, secs};
use crate::{Outcome, Scale};
use std::time::{Duration, Instant};

pub fn run(scale: Scale, out: &mut Outcome) {
    let garage = setup::garage("soak");
    setup::upload_load_images(&garage);
    let served = setup::serve_s3(
        &garage,
        &garage.endpoint,
        &["--idle-timeout", "3s", "--list-interval", "5s"],
    );
    let samples = setup::load_samples(&served.mnt);
    let duration = scale.pick(Duration::from_secs(600), Duration::from_secs(60));
    let window = scale.pick(Duration::from_secs(20), Duration::from_secs(6));
    let pid = served.daemon.child.id();
    let watch = Watch::start(pid, Duration::from_secs(2));
    let load = Load::start(&samples, 64, 8);
    let started = Instant::now();
    let mut windows = 0;
    while started.elapsed() < duration {
        let (a, b) = (windows % 5, (windows + 1) % 5);
        load.set_active(|s| s.image == a || s.image == b, &samples);
        windows += 1;
        std::thread::sleep(window.min(duration.saturating_sub(started.elapsed())));
    }
    let counts = load.stop();
    let series = watch.stop();
    let mounts = served.daemon.log_text().matches("image mounted").count();

    // Flat: the last quarter's peak against the second quarter's (the first is warm-up).
    let quarter = |q: usize| -> Vec<(f64, f64, usize)> {
        let n = series.len();
        series[n * q / 4..n * (q + 1) / 4].to_vec()
    };
    let peak_rss = |s: &[(f64, f64, usize)]| s.iter().map(|x| x.1).fold(0.0, f64::max);
    let peak_fds = |s: &[(f64, f64, usize)]| s.iter().map(|x| x.2).max().unwrap_or(0);
    let (rss2, rss4) = (peak_rss(&quarter(1)), peak_rss(&quarter(3)));
    let (fds2, fds4) = (peak_fds(&quarter(1)), peak_fds(&quarter(3)));
    let step = (series.len() / 10).max(1);
    let trace: Vec<String> = series
        .iter()
        .step_by(step)
        .map(|(t, rss, fds)| format!("{t:.0}s {rss:.0}M/{fds}"))
        .collect();
    out.figure(
        "duration",
        format!(
            "{} with 64 readers, load moving every {}",
            secs(duration),
            secs(window)
        ),
    );
    out.figure("reads", counts.line());
    out.figure("errors", counts.error_summary());
    out.figure("slowest read", secs(counts.slowest()));
    out.figure(
        "image mounts logged (idle images forgotten and mounted again)",
        mounts,
    );
    out.figure("RSS / descriptors over time", trace.join(", "));
    out.figure(
        "RSS peak, second vs last quarter",
        format!("{rss2:.0} MiB vs {rss4:.0} MiB"),
    );
    out.figure(
        "descriptors peak, second vs last quarter",
        format!("{fds2} vs {fds4}"),
    );
    out.check(
        counts.failed() == 0 && counts.wrong() == 0,
        "every read right",
    );
    out.check(mounts >= 5, "images were forgotten and mounted again");
    out.check(
        rss4 <= rss2 * 1.10 + 16.0,
        format!("RSS flat: last quarter's peak {rss4:.0} MiB ≤ 110% of the second's {rss2:.0} MiB + 16 MiB"),
    );
    out.check(
        fds4 <= fds2 + 8,
        format!("descriptors flat: {fds4} ≤ {fds2} + 8"),
    );
}
