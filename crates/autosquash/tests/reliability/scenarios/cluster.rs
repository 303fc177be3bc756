//! Three Garage nodes with replication factor 3; the daemon talks to node 0 while 8 readers
//! read with no disk cache and little memory, and node 2 is killed with SIGKILL halfway: no
//! read may fail (Garage still has a read quorum of 2).

use crate::load::{Load, Watch};
use crate::setup::{self, LOAD_IMAGES, PREFIX, secs, variant};
use crate::{Outcome, Scale};
use autosquash_testkit::garage_cluster::GarageCluster;
use std::time::{Duration, Instant};

pub fn run(scale: Scale, out: &mut Outcome) {
    let t = Instant::now();
    let cluster = GarageCluster::start("cluster", 3);
    out.figure("cluster start", secs(t.elapsed()));
    for name in LOAD_IMAGES {
        cluster.put(&format!("{PREFIX}{name}.squash"), &variant(name).image);
    }
    let served = setup::serve_bucket(
        &cluster.bucket,
        &cluster.endpoint(0),
        &["--cache-size", "0", "--memory-limit", "16M"],
        &cluster.env(),
    );
    let samples = setup::load_samples(&served.mnt);
    let half = scale.pick(Duration::from_secs(60), Duration::from_secs(15));
    let watch = Watch::start(served.daemon.child.id(), Duration::from_secs(1));
    let load = Load::start(&samples, 8, 4);
    std::thread::sleep(half);
    let before = load.counts.reads();
    cluster.kill(2);
    std::thread::sleep(half);
    let counts = load.stop();
    let rss = watch.stop();
    out.figure("reads", counts.line());
    out.figure(
        "reads before / after node 2 was killed",
        format!("{before} / {}", counts.reads() - before),
    );
    out.figure("errors", counts.error_summary());
    out.figure("slowest read", secs(counts.slowest()));
    out.figure(
        "daemon RSS peak",
        format!("{:.0} MiB", rss.iter().map(|s| s.1).fold(0.0, f64::max)),
    );
    out.check(counts.reads() - before > 20, "reads went on after the kill");
    out.check(
        counts.failed() == 0,
        format!("0 failed reads ({})", counts.error_summary()),
    );
    out.check(counts.wrong() == 0, "0 wrong bytes");
}
