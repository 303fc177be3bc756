//! What most scenarios start from: a Garage server holding corpus images, maybe behind the
//! fault proxy, and a daemon serving them.

use crate::common::{self, Daemon, open_tempdir};
use crate::load::{Sample, samples};
use autosquash_testkit::corpus::Variant;
use autosquash_testkit::garage::Garage;
use std::path::{Path, PathBuf};

pub const PREFIX: &str = "autosquash/";

/// The corpus variants the readers use: every codec, and 4 KiB and 1 MiB blocks.
pub const LOAD_IMAGES: &[&str] = &["gzip-128k", "xz", "zstd-4k", "gzip-1m", "lz4"];

pub fn variant(name: &str) -> &'static Variant {
    common::corpus()
        .variants
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no corpus variant {name}"))
}

/// A Garage server (the suite needs one: [`Garage::start`] panics without it).
pub fn garage(bucket: &str) -> Garage {
    Garage::start(bucket)
}

/// Uploads the load images as `<variant>.squash`.
pub fn upload_load_images(garage: &Garage) {
    for name in LOAD_IMAGES {
        garage.put(&format!("{PREFIX}{name}.squash"), &variant(name).image);
    }
}

/// Every readable file of the load images under `mnt`.
pub fn load_samples(mnt: &Path) -> Vec<Sample> {
    LOAD_IMAGES
        .iter()
        .enumerate()
        .flat_map(|(i, name)| samples(&mnt.join(name), &variant(name).extracted, i))
        .collect()
}

pub struct Served {
    pub daemon: Daemon,
    pub mnt: PathBuf,
    /// Holds the mountpoint, cache and logs until the scenario ends.
    _dir: tempfile::TempDir,
}

/// A daemon serving `garage`'s bucket through `endpoint` (Garage itself or a proxy).
pub fn serve_s3(garage: &Garage, endpoint: &str, extra: &[&str]) -> Served {
    serve_s3_with_env(garage, endpoint, extra, &[])
}

pub fn serve_s3_with_env(
    garage: &Garage,
    endpoint: &str,
    extra: &[&str],
    env: &[(&'static str, String)],
) -> Served {
    let mut all_env = garage.env();
    all_env.extend(env.iter().cloned());
    serve_bucket(&garage.bucket, endpoint, extra, &all_env)
}

/// A daemon serving `s3://bucket/autosquash/` at `endpoint` with the client environment `env`.
pub fn serve_bucket(
    bucket: &str,
    endpoint: &str,
    extra: &[&str],
    env: &[(&'static str, String)],
) -> Served {
    let dir = open_tempdir();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let daemon = Daemon::start_with_env(url(bucket), &mnt, &flags(endpoint, extra), env);
    Served {
        daemon,
        mnt,
        _dir: dir,
    }
}

/// The daemon's source for `bucket`.
pub fn url(bucket: &str) -> String {
    format!("s3://{bucket}/{PREFIX}")
}

/// Flags pointing the daemon at `endpoint`, then `extra`.
pub fn flags<'a>(endpoint: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut flags = vec!["--endpoint-url", endpoint, "--force-path-style"];
    flags.extend_from_slice(extra);
    flags
}

/// Reads every sample once, checking the bytes; returns how many differed or failed.
pub fn read_all(samples: &[Sample]) -> (usize, usize) {
    let (mut failed, mut wrong) = (0, 0);
    for s in samples {
        match std::fs::read(&s.mounted) {
            Ok(got) => {
                if got != std::fs::read(&s.reference).unwrap() {
                    wrong += 1;
                }
            }
            Err(e) => {
                if failed < 3 {
                    eprintln!("  read {}: {e}", s.mounted.display());
                }
                failed += 1
            }
        }
    }
    (failed, wrong)
}

pub fn secs(d: std::time::Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}
