//! The daemon and the CLI against a real S3 server (Garage on 127.0.0.1), directly and through
//! a fault-injecting proxy.

mod common;

use autosquash_testkit::corpus::{mksquashfs, pseudo_random_bytes};
use autosquash_testkit::fault_proxy::{Fault, FaultProxy};
use autosquash_testkit::garage::Garage;
use common::{Daemon, KernelMount, compare_trees, corpus, open_tempdir, sh, wait_for};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const PREFIX: &str = "autosquash/";

/// Flags that point the CLI at `endpoint`.
fn s3_flags(endpoint: &str) -> Vec<String> {
    vec![
        "--endpoint-url".into(),
        endpoint.into(),
        "--force-path-style".into(),
    ]
}

/// Flags that point the daemon at `endpoint`, listing the bucket every second.
fn serve_flags(endpoint: &str) -> Vec<String> {
    let mut flags = s3_flags(endpoint);
    flags.extend(["--list-interval".into(), "1s".into()]);
    flags
}

fn url(garage: &Garage) -> String {
    format!("s3://{}/{PREFIX}", garage.bucket)
}

fn mountpoint(dir: &Path) -> PathBuf {
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    mnt
}

/// A small image with `data.bin` (1 MiB, seeded) and `hello.txt`.
fn small_image(dir: &Path, seed: u64) -> (PathBuf, Vec<u8>) {
    let src = dir.join(format!("src{seed}"));
    std::fs::create_dir_all(&src).unwrap();
    let data = pseudo_random_bytes(seed, 1 << 20);
    std::fs::write(src.join("data.bin"), &data).unwrap();
    std::fs::write(src.join("hello.txt"), format!("hello {seed}\n")).unwrap();
    let image = dir.join(format!("img{seed}.squash"));
    mksquashfs(&src, &image, &["-comp", "zstd"]);
    (image, data)
}

fn cli(garage: &Garage, args: &[&str]) -> (bool, Vec<u8>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_autosquash"))
        .args(args)
        .args(s3_flags(&garage.endpoint))
        .envs(garage.env())
        .output()
        .unwrap();
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
#[cfg_attr(
    not(all(feature = "root-tests", feature = "s3-tests")),
    ignore = "root-tests and s3-tests rings, need root and Garage: sudo bash tests/run"
)]
fn images_in_a_bucket_match_the_kernel_mount() {
    let garage = Garage::start("images");
    let dir = open_tempdir();
    let names = [
        "gzip-128k",
        "zstd-4k",
        "xz",
        "uncompressed",
        "always-fragments",
    ];
    for name in names {
        let v = corpus().variants.iter().find(|v| v.name == name).unwrap();
        garage.put(&format!("{PREFIX}{name}.squash"), &v.image);
    }
    let mnt = mountpoint(dir.path());
    let flags = serve_flags(&garage.endpoint);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let daemon = Daemon::start_with_env(url(&garage), &mnt, &flags, &garage.env());
    for name in names {
        let v = corpus().variants.iter().find(|v| v.name == name).unwrap();
        let kernel = KernelMount::new(&v.image, &dir.path().join("k").join(name));
        let n = compare_trees(&mnt.join(name), &kernel.0);
        assert!(n > 3000, "{name}: {n} entries");
    }
    assert!(
        !daemon
            .log_text()
            .contains(autosquash_testkit::garage::SECRET),
        "the secret key was logged"
    );
    assert!(daemon.stop().success());
}

#[test]
#[cfg_attr(
    not(all(feature = "root-tests", feature = "s3-tests")),
    ignore = "root-tests and s3-tests rings, need root and Garage: sudo bash tests/run"
)]
fn ls_and_cat_read_images_in_the_bucket() {
    let garage = Garage::start("cli");
    let dir = open_tempdir();
    let (image, data) = small_image(dir.path(), 5);
    garage.put(&format!("{PREFIX}tools.squash"), &image);
    let img_url = format!("{}tools.squash", url(&garage));
    let (ok, out, err) = cli(&garage, &["ls", &url(&garage)]);
    assert!(ok, "{err}");
    assert_eq!(String::from_utf8_lossy(&out), "tools\n");
    let (ok, out, err) = cli(&garage, &["ls", &img_url, "-l"]);
    assert!(ok, "{err}");
    assert!(String::from_utf8_lossy(&out).contains("hello.txt"));
    let (ok, out, err) = cli(&garage, &["cat", &img_url, "data.bin"]);
    assert!(ok, "{err}");
    assert!(out == data);
    let (ok, _, err) = cli(
        &garage,
        &["cat", &format!("{}nope.squash", url(&garage)), "x"],
    );
    assert!(!ok && err.contains("not found"), "{err}");
}

#[test]
#[cfg_attr(
    not(all(feature = "root-tests", feature = "s3-tests")),
    ignore = "root-tests and s3-tests rings, need root and Garage: sudo bash tests/run"
)]
fn wrong_credentials_and_missing_buckets_are_clear_errors() {
    let garage = Garage::start("exists");
    let dir = open_tempdir();
    let mnt = mountpoint(dir.path());
    let run = |source: &str, env: Vec<(&str, String)>| {
        let out = Command::new(env!("CARGO_BIN_EXE_autosquash"))
            .args([
                "serve",
                "--source",
                source,
                "--mountpoint",
                mnt.to_str().unwrap(),
            ])
            .args(serve_flags(&garage.endpoint))
            .envs(env)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run("s3://missing-bucket/", garage.env());
    assert!(!ok && err.contains("missing-bucket"), "{err}");
    let mut env = garage.env();
    env[1].1 = "0".repeat(64);
    let (ok, err) = run(&url(&garage), env);
    assert!(
        !ok && err.contains("cannot list") && err.contains("AccessDenied"),
        "{err}"
    );
    assert!(
        err.lines().count() < 4,
        "the error is not one clear line: {err}"
    );
    assert!(!err.contains(&"0".repeat(64)), "the secret key was printed");
    let mut env = garage.env();
    env[0].1 = "GK00000000000000000000000".into();
    let (ok, err) = run(&url(&garage), env);
    assert!(!ok && err.contains("cannot list"), "{err}");
    assert!(!common::is_mounted(&mnt));
}

#[test]
#[cfg_attr(
    not(all(feature = "root-tests", feature = "s3-tests")),
    ignore = "root-tests and s3-tests rings, need root and Garage: sudo bash tests/run"
)]
fn replaced_and_deleted_objects() {
    let garage = Garage::start("versions");
    let dir = open_tempdir();
    let (v1, old) = small_image(dir.path(), 1);
    let (v2, new) = small_image(dir.path(), 2);
    let key = format!("{PREFIX}img.squash");
    garage.put(&key, &v1);
    garage.put(&format!("{PREFIX}other.squash"), &v1);
    let mnt = mountpoint(dir.path());
    let flags = serve_flags(&garage.endpoint);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let daemon = Daemon::start_with_env(url(&garage), &mnt, &flags, &garage.env());
    let mut file = std::fs::File::open(mnt.join("img/data.bin")).unwrap();
    let mut head = vec![0; 4096];
    file.read_exact(&mut head).unwrap();
    assert_eq!(head, old[..4096]);
    garage.put(&key, &v2);
    wait_for(
        Duration::from_secs(10),
        "the replacement to be noticed",
        || daemon.log_text().contains("replaced or removed"),
    );
    // The old version is gone from the store: what was not cached cannot be read any more,
    // and must never come back as bytes of the new version.
    file.seek(SeekFrom::Start(900_000)).unwrap();
    let mut tail = vec![0; 4096];
    match file.read_exact(&mut tail) {
        Ok(()) => assert_eq!(tail, old[900_000..904_096], "old and new versions mixed"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ESTALE), "{e}"),
    }
    drop(file);
    wait_for(Duration::from_secs(10), "the new version", || {
        std::fs::read(mnt.join("img/data.bin")).is_ok_and(|d| d == new)
    });
    // A deleted object leaves the listing at the next refresh.
    garage.delete(&key);
    wait_for(
        Duration::from_secs(10),
        "the deleted image to leave the listing",
        || {
            !std::fs::read_dir(&mnt)
                .unwrap()
                .any(|e| e.unwrap().file_name() == "img")
        },
    );
    assert_eq!(std::fs::read(mnt.join("other/data.bin")).unwrap(), old);
}

#[test]
#[cfg_attr(
    not(all(feature = "root-tests", feature = "s3-tests")),
    ignore = "root-tests and s3-tests rings, need root and Garage: sudo bash tests/run"
)]
fn a_bucket_of_ten_thousand_images_lists_without_opening_any() {
    let garage = Garage::start("many");
    let dir = open_tempdir();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let keys: Vec<String> = (0..10_000)
        .map(|i| format!("{PREFIX}img{i:05}.squash"))
        .collect();
    garage.put_many(&keys, &empty);
    let (image, data) = small_image(dir.path(), 7);
    garage.put(&format!("{PREFIX}real.squash"), &image);
    let mnt = mountpoint(dir.path());
    let flags = serve_flags(&garage.endpoint);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let daemon = Daemon::start_with_env(url(&garage), &mnt, &flags, &garage.env());
    let started = Instant::now();
    let count = std::fs::read_dir(&mnt).unwrap().count();
    assert_eq!(count, 10_001);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        !daemon.log_text().contains("image mounted"),
        "listing opened an image"
    );
    assert_eq!(std::fs::read(mnt.join("real/data.bin")).unwrap(), data);
    // An empty object is not an image: EIO for it, everything else keeps working.
    let err = std::fs::read_dir(mnt.join("img00042")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(
        std::fs::read(mnt.join("real/hello.txt")).unwrap(),
        b"hello 7\n"
    );
}

#[test]
#[cfg_attr(
    not(all(feature = "root-tests", feature = "s3-tests")),
    ignore = "root-tests and s3-tests rings, need root and Garage: sudo bash tests/run"
)]
fn retried_faults_return_the_right_bytes_and_exhausted_retries_give_eio() {
    let garage = Garage::start("faults");
    let dir = open_tempdir();
    let v = corpus()
        .variants
        .iter()
        .find(|v| v.name == "zstd-4k")
        .unwrap();
    garage.put(&format!("{PREFIX}img.squash"), &v.image);
    let other = corpus()
        .variants
        .iter()
        .find(|v| v.name == "gzip-128k")
        .unwrap();
    garage.put(&format!("{PREFIX}other.squash"), &other.image);
    let proxy = FaultProxy::start(&garage.endpoint);
    let mnt = mountpoint(dir.path());
    let mut flags = serve_flags(&proxy.endpoint);
    // Every read goes to the store (through the proxy), not to the disk cache.
    flags.extend(["--cache-size".into(), "0".into()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let daemon = Daemon::start_with_env(url(&garage), &mnt, &flags, &garage.env());
    // One request in three fails: throttling, a server error, a reset, a cut-off body.
    proxy.fail_every(
        3,
        &[
            Fault::SlowDown,
            Fault::InternalError,
            Fault::Reset,
            Fault::Truncate,
        ],
    );
    proxy.set_latency(Duration::from_millis(2));
    let (ok, out, err) = sh(&format!(
        "diff -r --no-dereference '{}' '{}' | grep -v 'is a \\(fifo\\|socket\\|block special file\\|character special file\\) while' ; true",
        mnt.join("img").display(),
        v.extracted.display()
    ));
    assert!(
        ok && out.is_empty() && err.is_empty(),
        "bytes differ under faults:\n{out}{err}"
    );
    let injected = proxy
        .faults
        .injected
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(injected > 10, "only {injected} faults were injected");
    let doc = daemon.status();
    let retries = doc["mounts"][0]["store"]["retries"].as_u64().unwrap();
    assert!(
        retries >= injected / 2,
        "status reports {retries} retries for {injected} faults"
    );
    // The store is down: an image not yet read fails with EIO in bounded time, while what
    // was read keeps being served.
    let cached = std::fs::read(mnt.join("img/files/random-3m")).unwrap();
    proxy.fail_all(Some(Fault::SlowDown));
    let started = Instant::now();
    let err = std::fs::read(mnt.join("other/files/random-3m"))
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        std::fs::read(mnt.join("img/files/random-3m")).unwrap(),
        cached
    );
    proxy.fail_all(None);
    let recovered =
        std::fs::read(mnt.join("other/files/random-3m")).expect("no recovery after the outage");
    assert_eq!(recovered, cached);
    drop(daemon);
}

#[test]
#[cfg_attr(
    not(all(feature = "root-tests", feature = "s3-tests")),
    ignore = "root-tests and s3-tests rings, need root and Garage: sudo bash tests/run"
)]
fn after_a_restart_data_comes_from_the_disk_cache() {
    let garage = Garage::start("warm");
    let dir = open_tempdir();
    let (image, data) = small_image(dir.path(), 9);
    garage.put(&format!("{PREFIX}img.squash"), &image);
    let mnt = mountpoint(dir.path());
    let flags = serve_flags(&garage.endpoint);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let daemon = Daemon::start_with_env(url(&garage), &mnt, &flags, &garage.env());
    assert_eq!(std::fs::read(mnt.join("img/data.bin")).unwrap(), data);
    assert!(daemon.stop().success());
    let daemon = Daemon::start_with_env(url(&garage), &mnt, &flags, &garage.env());
    assert_eq!(std::fs::read(mnt.join("img/data.bin")).unwrap(), data);
    let doc = daemon.status();
    let store = &doc["mounts"][0]["store"];
    assert_eq!(
        store["bytes"], 0,
        "data fetched again after a restart: {store}"
    );
    // What the disk cache holds is reported (the image's bytes read, at least the file).
    let disk = &doc["mounts"][0]["disk_cache"];
    assert_eq!(disk["enabled"], true, "{disk}");
    let cached = disk["bytes"].as_u64().unwrap();
    assert!(
        cached >= data.len() as u64,
        "disk cache reports {cached} bytes"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_autosquash"))
        .args(["status", "--prometheus", "--control-socket"])
        .arg(daemon.control_socket())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("autosquash_disk_cache_bytes{"))
        .unwrap_or_else(|| panic!("no disk cache metric in:\n{text}"));
    assert!(line.ends_with(&format!(" {cached}")), "{line} vs {cached}");
}

/// Regression (found by the reliability suite): a store that accepts connections and never
/// answers made one `read` wait three timeouts (the kernel retries a failed page read, and
/// every retry waited again), and every failed read logged a warning.
#[test]
#[cfg_attr(
    not(all(feature = "root-tests", feature = "s3-tests")),
    ignore = "root-tests and s3-tests rings, need root and Garage: sudo bash tests/run"
)]
fn a_silent_store_fails_a_read_within_one_timeout_and_logs_it_once() {
    let garage = Garage::start("silent");
    let dir = open_tempdir();
    let v = corpus()
        .variants
        .iter()
        .find(|v| v.name == "zstd-4k")
        .unwrap();
    garage.put(&format!("{PREFIX}img.squash"), &v.image);
    let proxy = FaultProxy::start(&garage.endpoint);
    let mnt = mountpoint(dir.path());
    let mut flags = serve_flags(&proxy.endpoint);
    flags.extend(["--cache-size", "0", "--s3-timeout", "2s"].map(String::from));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let daemon = Daemon::start_with_env(url(&garage), &mnt, &flags, &garage.env());
    std::fs::read_dir(mnt.join("img")).unwrap().count();
    proxy.fail_all(Some(Fault::Blackhole));
    let started = Instant::now();
    let err = std::fs::read(mnt.join("img/files/random-3m")).unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        took < Duration::from_millis(3500),
        "one read took {took:?} with a 2 s timeout"
    );
    // More failing reads: still one warning.
    for e in std::fs::read_dir(v.extracted.join("files"))
        .unwrap()
        .take(3)
    {
        let _ = std::fs::read(mnt.join("img/files").join(e.unwrap().file_name()));
    }
    proxy.fail_all(None);
    wait_for(
        Duration::from_secs(10),
        "reads after the store came back",
        || {
            std::fs::read(mnt.join("img/files/random-3m"))
                .is_ok_and(|d| d == std::fs::read(v.extracted.join("files/random-3m")).unwrap())
        },
    );
    let log = daemon.log_text();
    assert_eq!(log.matches("request failed").count(), 1, "{log}");
    assert!(log.contains("the store is answering again"), "{log}");
}

/// Regression (found by the reliability suite): one key with a character XML cannot carry
/// (ESC) made every listing of the bucket fail, so the daemon could not start.
#[test]
#[cfg_attr(
    not(all(feature = "root-tests", feature = "s3-tests")),
    ignore = "root-tests and s3-tests rings, need root and Garage: sudo bash tests/run"
)]
fn a_key_with_control_characters_does_not_break_the_listing() {
    let garage = Garage::start("controlkeys");
    let dir = open_tempdir();
    let (image, data) = small_image(dir.path(), 7);
    garage.put(&format!("{PREFIX}good.squash"), &image);
    // (percent-encoded in the request URL)
    garage.put(&format!("{PREFIX}esc%1B%5B31m.squash"), &image);
    garage.put(&format!("{PREFIX}bell%07.squash"), &image);
    let mnt = mountpoint(dir.path());
    let flags = serve_flags(&garage.endpoint);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let daemon = Daemon::start_with_env(url(&garage), &mnt, &flags, &garage.env());
    let names: Vec<_> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["good"], "{}", daemon.log_text());
    assert_eq!(std::fs::read(mnt.join("good/data.bin")).unwrap(), data);
    let (ok, out, err) = cli(&garage, &["ls", &url(&garage)]);
    assert!(ok, "{err}");
    assert!(String::from_utf8_lossy(&out).contains("good"), "{err}");
}
