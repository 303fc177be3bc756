//! kill -9 of the daemon while 8 readers are busy, then a restart on the same mountpoint (as
//! systemd's Restart=on-failure does): the dead mount is replaced and reads work again within
//! 5 s, with no stale mount left behind.

use crate::common::{Daemon, is_mounted};
use crate::load::Load;
use crate::setup::{self, PREFIX, secs};
use crate::{Outcome, Scale};
use std::path::Path;
use std::time::{Duration, Instant};

fn mounts_at(path: &Path) -> usize {
    let wanted = path.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(wanted.as_str()))
        .count()
}

pub fn run(scale: Scale, out: &mut Outcome) {
    let garage = setup::garage("crash");
    setup::upload_load_images(&garage);
    let served = setup::serve_s3(&garage, &garage.endpoint, &["--memory-limit", "32M"]);
    let mnt = served.mnt.clone();
    let samples = setup::load_samples(&mnt);
    let load = Load::start(&samples, 8, 6);
    std::thread::sleep(scale.pick(Duration::from_secs(30), Duration::from_secs(8)));
    let mut old = served.daemon;
    let before = load.counts.reads();
    old.child.kill().unwrap();
    old.child.wait().unwrap();
    let killed = Instant::now();
    // Its Drop would unmount the new daemon's mount.
    std::mem::forget(old);
    std::thread::sleep(Duration::from_millis(500));
    let during = load.stop();
    let stale = is_mounted(&mnt);

    let url = setup::url(&garage.bucket);
    let flags = setup::flags(&garage.endpoint, &["--memory-limit", "32M"]);
    let restarted = Instant::now();
    let daemon = Daemon::spawn(&url, &mnt, &flags, &garage.env());
    let probe = samples.iter().max_by_key(|s| s.size).unwrap();
    let back = loop {
        if std::fs::read(&probe.mounted)
            .is_ok_and(|d| d == std::fs::read(&probe.reference).unwrap())
        {
            break Some(restarted.elapsed());
        }
        if restarted.elapsed() > Duration::from_secs(30) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mounts = mounts_at(&mnt);
    let load = Load::start(&samples, 8, 7);
    std::thread::sleep(scale.pick(Duration::from_secs(20), Duration::from_secs(5)));
    let after = load.stop();
    out.figure("reads before the kill", before);
    out.figure(
        "reads in flight or started while the daemon was dead",
        format!(
            "{} failed ({}), {} wrong",
            during.failed(),
            during.error_summary(),
            during.wrong()
        ),
    );
    out.figure("a dead mount was left behind by kill -9", stale);
    out.figure(
        "restart to first right read of the largest file",
        back.map_or("never (30 s)".into(), secs),
    );
    out.figure(
        "kill to first right read (including 0.5 s before the restart)",
        back.map_or("never".into(), |b| {
            secs(restarted.duration_since(killed) + b)
        }),
    );
    out.figure("mounts at the mountpoint after the restart", mounts);
    out.figure("reads after the restart", after.line());
    out.check(during.wrong() == 0, "no wrong bytes around the crash");
    out.check(
        back.is_some_and(|b| b < Duration::from_secs(5)),
        "the mount works again within 5 s",
    );
    out.check(mounts == 1, "exactly one mount, no stale one stacked below");
    out.check(
        after.reads() > 20 && after.failed() == 0 && after.wrong() == 0,
        format!(
            "reads after the restart are right ({})",
            after.error_summary()
        ),
    );
    daemon.stop();
    out.check(
        !is_mounted(&mnt),
        "nothing left mounted after the final stop",
    );
}
