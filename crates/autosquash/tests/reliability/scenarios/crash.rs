//! kill -9 of the process that serves the mount while 8 readers are busy, as an OOM kill or a
//! crash would do it: the supervisor keeps the FUSE connection, a new process takes it over,
//! and the readers wait for the gap instead of failing (0 failed reads, 0 wrong bytes). Then
//! the same for the whole daemon (supervisor included), which a restart must clean up after:
//! the dead mount is replaced and reads work again within 5 s.

use crate::common::{Daemon, is_mounted};
use crate::load::Load;
use crate::setup::{self, secs};
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

    // The serving process dies; the supervisor and the mount live on.
    let load = Load::start(&samples, 8, 6);
    std::thread::sleep(scale.pick(Duration::from_secs(30), Duration::from_secs(8)));
    let kills = scale.pick(5, 2);
    let mut gaps = Vec::new();
    for _ in 0..kills {
        let before = served.daemon.serving_pid();
        let killed = Instant::now();
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &before.to_string()])
            .status();
        let back = loop {
            let now = served.daemon.serving_pid();
            if now != before && now != served.daemon.child.id() {
                break Some(killed.elapsed());
            }
            if killed.elapsed() > Duration::from_secs(30) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        gaps.push(back);
        std::thread::sleep(scale.pick(Duration::from_secs(5), Duration::from_secs(2)));
    }
    let across = load.stop();
    out.figure("kill -9 of the serving process", format!("{kills} times"));
    out.figure(
        "reads across the kills",
        format!(
            "{} ({}), slowest {}",
            across.line(),
            across.error_summary(),
            secs(across.slowest())
        ),
    );
    out.figure(
        "kill to a new serving process",
        gaps.iter()
            .map(|g| g.map_or("never (30 s)".into(), secs))
            .collect::<Vec<_>>()
            .join(", "),
    );
    out.check(
        gaps.iter().all(Option::is_some),
        "a new serving process takes over after every kill",
    );
    out.check(
        across.reads() > 20 && across.failed() == 0 && across.wrong() == 0,
        format!(
            "no failed read and no wrong byte across the kills ({})",
            across.error_summary()
        ),
    );
    out.check(
        mounts_at(&mnt) == 1,
        "one mount, the same one, after the kills",
    );

    // The whole daemon dies (nothing holds the connection): a restart replaces the dead mount.
    let mut old = served.daemon;
    let load = Load::start(&samples, 8, 7);
    std::thread::sleep(Duration::from_secs(1));
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
    let load = Load::start(&samples, 8, 8);
    std::thread::sleep(scale.pick(Duration::from_secs(20), Duration::from_secs(5)));
    let after = load.stop();
    out.figure(
        "reads while the whole daemon was dead",
        format!(
            "{} failed ({}), {} wrong",
            during.failed(),
            during.error_summary(),
            during.wrong()
        ),
    );
    out.figure(
        "a dead mount was left behind by kill -9 of the daemon",
        stale,
    );
    out.figure(
        "kill of the daemon to first right read (0.5 s before the restart)",
        back.map_or("never".into(), |b| {
            secs(restarted.duration_since(killed) + b)
        }),
    );
    out.figure("reads after the restart", after.line());
    out.check(
        during.wrong() == 0,
        "no wrong bytes around the daemon's death",
    );
    out.check(
        back.is_some_and(|b| b < Duration::from_secs(5)),
        "the mount works again within 5 s of the restart",
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
