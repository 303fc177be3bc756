//! The disk cache damaged while the daemon is down (every chunk of every cached version has
//! bytes overwritten), and a
//! cache disk too small for the data (an 8 MiB tmpfs): reads stay right and keep working.

use crate::common::{Daemon, sh};
use crate::setup::{self, load_samples};
use crate::{Outcome, Scale};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The data files of the cache (one per object version, chunks at their own offsets).
fn data_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            data_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "data") {
            out.push(p);
        }
    }
}

/// The disk cache's chunk size.
const CHUNK: u64 = 256 << 10;

pub fn run(_scale: Scale, out: &mut Outcome) {
    let garage = setup::garage("diskcache");
    setup::upload_load_images(&garage);
    let extra = ["--memory-limit", "16M"];
    let served = setup::serve_s3(&garage, &garage.endpoint, &extra);
    let samples = load_samples(&served.mnt);
    let first = setup::read_all(&samples);
    let fetched = served.daemon.status()["mounts"][0]["store"]["bytes"]
        .as_u64()
        .unwrap();
    let mnt = served.mnt.clone();
    let cache = mnt.with_extension("cache");
    served.daemon.stop();

    let mut files = Vec::new();
    data_files(&cache, &mut files);
    let mut chunks = 0;
    for path in &files {
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        let len = f.metadata().unwrap().len();
        // Mid-chunk of every chunk (and of the short last one); in a chunk not cached this
        // only fills a hole the map says is empty.
        for at in (0..len).step_by(CHUNK as usize) {
            f.write_all_at(b"\xde\xad\xbe\xef", at + (len - at).min(CHUNK) / 2)
                .unwrap();
            chunks += 1;
        }
    }
    let url = setup::url(&garage.bucket);
    let flags = setup::flags(&garage.endpoint, &["--memory-limit", "16M"]);
    let daemon = Daemon::start_with_env(&url, &mnt, &flags, &garage.env());
    let (failed, wrong) = setup::read_all(&samples);
    let refetched = daemon.status()["mounts"][0]["store"]["bytes"]
        .as_u64()
        .unwrap();
    let dropped = daemon
        .log_text()
        .matches("damaged or missing cache chunks dropped")
        .count();
    daemon.stop();
    out.figure(
        "first pass",
        format!(
            "{} files, {} failed, {} wrong, {:.1} MiB fetched",
            samples.len(),
            first.0,
            first.1,
            mib(fetched)
        ),
    );
    out.figure(
        "chunks damaged while the daemon was down",
        format!("{chunks} in {} cached versions", files.len()),
    );
    out.figure(
        "after the restart",
        format!("{failed} failed, {wrong} wrong, {:.1} MiB fetched again, {dropped} damaged chunks logged", mib(refetched)),
    );
    out.check(first == (0, 0), "first pass right");
    out.check(chunks > 10, "the cache held chunks to damage");
    out.check(
        (failed, wrong) == (0, 0),
        "damaged chunks never reach readers",
    );
    out.check(
        refetched > 0 && dropped > 0,
        "damaged chunks were detected and fetched again",
    );

    // A cache disk far smaller than the data.
    // (mounted over the daemon's cache directory, which the harness always passes)
    let small = cache.clone();
    let (ok, _, err) = sh(&format!(
        "mount -t tmpfs -o size=8m tmpfs {}",
        small.display()
    ));
    assert!(ok, "tmpfs: {err}");
    let daemon = Daemon::start_with_env(&url, &mnt, &flags, &garage.env());
    let pass1 = setup::read_all(&samples);
    let pass2 = setup::read_all(&samples);
    let turned_off = daemon.log_text().contains("disk cache turned off");
    let (_, df, _) = sh(&format!(
        "df -k --output=used,size {} | tail -1",
        small.display()
    ));
    daemon.stop();
    sh(&format!("umount {}", small.display()));
    let total: u64 = samples.iter().map(|s| s.size).sum();
    out.figure(
        "full cache disk",
        format!(
            "8 MiB tmpfs for {:.0} MiB of files ({} used/size KiB at the end); two passes: {:?}, {:?} (failed, wrong); cache turned itself off: {turned_off}",
            mib(total),
            df.trim(),
            pass1,
            pass2
        ),
    );
    out.check(
        pass1 == (0, 0) && pass2 == (0, 0),
        "a full cache disk leaves reads working",
    );
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}
