//! An image replaced again and again while readers stream one of its files: every open file
//! reads one version from start to end (or fails with ESTALE once its version is gone from the
//! store), never a mix; new opens get the new version once the old one is idle. Then the image
//! is deleted: it leaves the listing and a file still open keeps reading from the cache.

use crate::load::{errno_name, forget_pages};
use crate::setup::{self, PREFIX, secs};
use crate::{Outcome, Scale};
use autosquash_testkit::corpus::{mksquashfs, pseudo_random_bytes};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LEN: usize = 16 << 20;
const PIECE: usize = 256 << 10;

fn build_versions(dir: &Path, n: u64) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    (0..n)
        .map(|v| {
            let src = dir.join(format!("v{v}"));
            std::fs::create_dir_all(&src).unwrap();
            let data = pseudo_random_bytes(0xabc0 + v, LEN);
            std::fs::write(src.join("data.bin"), &data).unwrap();
            let image = dir.join(format!("v{v}.squash"));
            mksquashfs(&src, &image, &["-comp", "zstd"]);
            (image, data)
        })
        .collect()
}

/// Reads `path` piece by piece, slowly, and says which version it was.
fn stream(path: &Path, versions: &[Vec<u8>]) -> Result<usize, String> {
    let f = File::open(path).map_err(|e| errno_name(&e))?;
    let mut version = None;
    for at in (0..LEN).step_by(PIECE) {
        let mut piece = vec![0; PIECE];
        f.read_exact_at(&mut piece, at as u64)
            .map_err(|e| errno_name(&e))?;
        forget_pages(&f);
        let matches = |v: &Vec<u8>| v[at..at + PIECE] == piece[..];
        match version {
            None => version = versions.iter().position(matches),
            Some(v) if !matches(&versions[v]) => return Err("MIXED".into()),
            Some(_) => {}
        }
        if version.is_none() {
            return Err("UNKNOWN".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(version.unwrap())
}

pub fn run(scale: Scale, out: &mut Outcome) {
    let garage = setup::garage("replace");
    let work = crate::common::open_tempdir();
    let versions = build_versions(work.path(), 3);
    let data: Arc<Vec<Vec<u8>>> = Arc::new(versions.iter().map(|v| v.1.clone()).collect());
    let key = format!("{PREFIX}img.squash");
    garage.put(&key, &versions[0].0);
    let idle = Duration::from_secs(2);
    let served = setup::serve_s3(
        &garage,
        &garage.endpoint,
        // Little memory and no disk cache: the old version's data is soon gone, so readers of
        // it meet the store's 412 (ESTALE) rather than a cached copy.
        &[
            "--idle-timeout",
            "2s",
            "--list-interval",
            "1s",
            "--memory-limit",
            "8M",
            "--cache-size",
            "0",
        ],
    );
    let file = served.mnt.join("img/data.bin");

    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    // Readers pause between files: the image switches to the new version only when no file
    // of the old one is open (a running program keeps seeing the version it started with).
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (stop, outcomes, data, file) =
                (stop.clone(), outcomes.clone(), data.clone(), file.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let what = match stream(&file, &data) {
                        Ok(v) => format!("whole version {v}"),
                        Err(e) => e,
                    };
                    *outcomes.lock().unwrap().entry(what).or_default() += 1;
                    std::thread::sleep(Duration::from_millis(300));
                }
            })
        })
        .collect();
    let duration = scale.pick(Duration::from_secs(90), Duration::from_secs(20));
    let every = Duration::from_secs(3);
    let started = Instant::now();
    let mut replacements = 0;
    let mut current = 0;
    while started.elapsed() < duration {
        std::thread::sleep(every);
        current = (current + 1) % versions.len();
        garage.put(&key, &versions[current].0);
        replacements += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    // Once nothing holds the old version, new opens get the last one.
    let t = Instant::now();
    let switched = loop {
        if std::fs::read(&file).is_ok_and(|d| d == data[current]) {
            break Some(t.elapsed());
        }
        if t.elapsed() > Duration::from_secs(30) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };

    served.daemon.stop();

    // Deletion, with the disk cache on: an open file keeps reading from the cache, the name
    // leaves the listing.
    let served = setup::serve_s3(&garage, &garage.endpoint, &["--list-interval", "1s"]);
    let file = served.mnt.join("img/data.bin");
    let open = File::open(&file).unwrap();
    let mut before = vec![0; LEN];
    open.read_exact_at(&mut before, 0).unwrap();
    forget_pages(&open);
    garage.delete(&key);
    let t = Instant::now();
    let gone = loop {
        let listed = std::fs::read_dir(&served.mnt)
            .unwrap()
            .any(|e| e.unwrap().file_name() == "img");
        if !listed {
            break Some(t.elapsed());
        }
        if t.elapsed() > Duration::from_secs(30) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut after = vec![0; LEN];
    let still_reads = open.read_exact_at(&mut after, 0).is_ok() && after == before;

    let outcomes = outcomes.lock().unwrap().clone();
    let count = |pred: &dyn Fn(&str) -> bool| -> u64 {
        outcomes
            .iter()
            .filter(|(k, _)| pred(k))
            .map(|(_, v)| v)
            .sum()
    };
    let whole = count(&|k| k.starts_with("whole"));
    let estale = count(&|k| k == "ESTALE");
    let mixed = count(&|k| k == "MIXED" || k == "UNKNOWN");
    let other =
        count(&|k| !k.starts_with("whole") && k != "ESTALE" && k != "MIXED" && k != "UNKNOWN");
    out.figure(
        "replacements",
        format!(
            "{replacements} in {} (one every {})",
            secs(duration),
            secs(every)
        ),
    );
    out.figure(
        "streams of data.bin (16 MiB, 256 KiB at a time)",
        format!("{outcomes:?}"),
    );
    out.figure(
        "new version visible to new opens after the last replacement",
        switched.map_or("never (30 s)".into(), secs),
    );
    out.figure("idle timeout", secs(idle));
    out.figure(
        "deleted image gone from the listing after",
        gone.map_or("never (30 s)".into(), secs),
    );
    out.check(whole > 10, "whole files were read");
    out.check(
        outcomes.keys().filter(|k| k.starts_with("whole")).count() > 1,
        "readers saw more than one version",
    );
    out.check(
        mixed == 0,
        format!("0 reads mixing versions (ESTALE: {estale})"),
    );
    out.check(other == 0, "no failures other than ESTALE");
    out.check(switched.is_some(), "the last version became visible");
    out.check(gone.is_some(), "the deleted image left the listing");
    out.check(
        still_reads,
        "a file open before the deletion still reads the same bytes",
    );
}
