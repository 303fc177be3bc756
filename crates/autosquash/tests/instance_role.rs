//! The EC2 instance role, the credential path users on EC2 rely on: the daemon started with no
//! static credentials at all gets them from the instance metadata service (a stand-in speaking
//! IMDSv2 on 127.0.0.1) and uses them against a real S3 server (Garage), follows their rotation,
//! and waits for the metadata service at boot.

mod common;

use autosquash_testkit::corpus::{mksquashfs, pseudo_random_bytes};
use autosquash_testkit::garage::{Garage, REGION};
use autosquash_testkit::imds::{Imds, RoleCredentials, Rotation};
use common::{Daemon, is_mounted, open_tempdir, wait_for};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const PREFIX: &str = "autosquash/";

/// Keys of the role (Garage key ids are `GK` and 24 hex digits, secrets 64 hex digits).
const ROLE_KEY: (&str, &str) = (
    "GKcccccccccccccccccccccccc",
    concat!(
        "cccccccccccccccccccccccccccccccc",
        "cccccccccccccccccccccccccccccccc"
    ),
);
const KEY_A: (&str, &str) = (
    "GKaaaaaaaaaaaaaaaaaaaaaaaa",
    concat!(
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    ),
);
const KEY_B: (&str, &str) = (
    "GKbbbbbbbbbbbbbbbbbbbbbbbb",
    concat!(
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
    ),
);

fn role_credentials((id, secret): (&str, &str), token: &str) -> RoleCredentials {
    RoleCredentials::new(id, secret, token)
}

fn url(garage: &Garage) -> String {
    format!("s3://{}/{PREFIX}", garage.bucket)
}

fn mountpoint(dir: &Path) -> PathBuf {
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    mnt
}

/// An image of `files` files `f000`… of `size` seeded bytes each; returns it and the contents.
fn image(dir: &Path, files: usize, size: usize) -> (PathBuf, Vec<Vec<u8>>) {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let contents: Vec<Vec<u8>> = (0..files)
        .map(|i| pseudo_random_bytes(1000 + i as u64, size))
        .collect();
    for (i, data) in contents.iter().enumerate() {
        std::fs::write(src.join(format!("f{i:03}")), data).unwrap();
    }
    let image = dir.join("img.squash");
    mksquashfs(&src, &image, &["-comp", "zstd"]);
    (image, contents)
}

/// Starts `autosquash serve` on `garage` with no static credentials anywhere: no `AWS_*`
/// variable but the region and the metadata service's endpoint, an empty `HOME`, and config
/// and credentials files that do not exist. Does not wait for the mount.
fn spawn_without_credentials(garage: &Garage, imds: &Imds, dir: &Path, extra: &[&str]) -> Daemon {
    static RUN: AtomicU32 = AtomicU32::new(0);
    let mnt = mountpoint(dir);
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let log = mnt.with_extension(format!("log{}", RUN.fetch_add(1, Ordering::Relaxed)));
    let mut command = Command::new(env!("CARGO_BIN_EXE_autosquash"));
    command
        .arg("serve")
        .arg("--source")
        .arg(url(garage))
        .arg("--mountpoint")
        .arg(&mnt)
        .arg("--control-socket")
        .arg(mnt.with_extension("sock"))
        .arg("--cache-dir")
        .arg(mnt.with_extension("cache"))
        .args([
            "--endpoint-url",
            &garage.endpoint,
            "--force-path-style",
            "--list-interval",
            "1s",
        ])
        .args(extra);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("AWS_") {
            command.env_remove(name);
        }
    }
    let child = command
        .env("HOME", &home)
        .env("AWS_CONFIG_FILE", home.join("no-such-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            home.join("no-such-credentials"),
        )
        .env("AWS_REGION", REGION)
        .envs(imds.env())
        .env("AUTOSQUASH_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Daemon {
        child,
        mountpoint: mnt,
        log,
    }
}

/// Waits (bounded) until `daemon` has mounted.
fn wait_mounted(daemon: &mut Daemon, limit: Duration) {
    let start = Instant::now();
    while !is_mounted(&daemon.mountpoint) {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            panic!("daemon exited with {status}: {}", daemon.log_text());
        }
        assert!(
            start.elapsed() < limit,
            "daemon did not mount within {limit:?}: {}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_no_secrets_logged(daemon: &Daemon, secrets: &[&str]) {
    let log = daemon.log_text();
    for secret in secrets {
        assert!(!log.contains(secret), "a secret was logged: {log}");
    }
}

#[test]
#[cfg_attr(
    not(all(feature = "root-tests", feature = "s3-tests")),
    ignore = "root-tests and s3-tests rings, need root and Garage: sudo bash tests/run"
)]
fn the_instance_role_serves_an_image() {
    let garage = Garage::start("role");
    garage.add_key("role", ROLE_KEY.0, ROLE_KEY.1);
    let imds = Imds::start(vec![role_credentials(ROLE_KEY, "session-token-role")]);
    let dir = open_tempdir();
    let (image, contents) = image(dir.path(), 4, 300_000);
    garage.put(&format!("{PREFIX}img.squash"), &image);
    let mut daemon = spawn_without_credentials(&garage, &imds, dir.path(), &[]);
    wait_mounted(&mut daemon, Duration::from_secs(20));
    let mnt = daemon.mountpoint.clone();
    for (i, data) in contents.iter().enumerate() {
        let read = std::fs::read(mnt.join(format!("img/f{i:03}"))).unwrap();
        assert!(read == *data, "contents of f{i:03} differ");
    }
    assert!(imds.token_fetches() >= 1, "no IMDSv2 token was fetched");
    assert!(imds.role_fetches() >= 1, "the role's name was not fetched");
    assert!(
        imds.credential_fetches() >= 1,
        "no credentials were fetched"
    );
    assert_eq!(imds.unauthorized(), 0, "metadata requested without a token");
    assert!(
        imds.handed_out().iter().all(|k| k == ROLE_KEY.0),
        "{:?}",
        imds.handed_out()
    );
    assert_no_secrets_logged(&daemon, &[ROLE_KEY.1, "session-token-role"]);
    assert!(daemon.stop().success());
}

/// The role's credentials expire and come back as another key; the old key is then deleted.
/// Reads of files never read before (disk cache off, so each goes to the store) keep working.
#[test]
#[cfg_attr(
    not(all(feature = "root-tests", feature = "s3-tests")),
    ignore = "root-tests and s3-tests rings, need root and Garage: sudo bash tests/run"
)]
fn rotated_role_credentials_are_picked_up_before_the_old_key_dies() {
    let garage = Garage::start("rotation");
    garage.add_key("a", KEY_A.0, KEY_A.1);
    garage.add_key("b", KEY_B.0, KEY_B.1);
    let imds = Imds::start(vec![
        role_credentials(KEY_A, "session-token-a"),
        role_credentials(KEY_B, "session-token-b"),
    ]);
    // The SDK's identity cache refreshes credentials lazily (on the next request), 5 to 10 s
    // before they expire (10 s buffer time, minus up to 5 s of jitter): with 20 s, the second
    // fetch comes 10 to 15 s after the first (the daemon lists the bucket every second).
    imds.set_lifetime(Duration::from_secs(20));
    imds.set_rotation(Rotation::EachFetch);
    let dir = open_tempdir();
    let (image, contents) = image(dir.path(), 100, 128 << 10);
    garage.put(&format!("{PREFIX}img.squash"), &image);
    let mut daemon = spawn_without_credentials(
        &garage,
        &imds,
        dir.path(),
        &["--cache-size", "0", "--no-hydrate"],
    );
    wait_mounted(&mut daemon, Duration::from_secs(20));
    let started = Instant::now();
    assert_eq!(imds.handed_out(), [KEY_A.0], "the first fetch hands out A");
    let mnt = daemon.mountpoint.clone();
    let store_bytes = || {
        daemon.status()["mounts"][0]["store"]["bytes"]
            .as_u64()
            .unwrap()
    };
    let mut files = contents.iter().enumerate();
    let mut read_next = || {
        let (i, data) = files.next().expect("ran out of files to read");
        let read = std::fs::read(mnt.join(format!("img/f{i:03}")))
            .unwrap_or_else(|e| panic!("reading f{i:03}: {e}\n{}", daemon.log_text()));
        assert!(read == *data, "contents of f{i:03} differ");
    };
    // Reads under A until the credentials are fetched again (they must be by 15 s).
    let mut reads = 0;
    while imds.credential_fetches() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "credentials were not refreshed in 25 s: {:?}",
            imds.handed_out()
        );
        read_next();
        reads += 1;
        std::thread::sleep(Duration::from_millis(400));
    }
    assert!(reads >= 3, "only {reads} reads before the rotation");
    assert_eq!(imds.handed_out()[..2], [KEY_A.0, KEY_B.0]);
    // A request signed with A before the refresh may still be on its way: give it a moment,
    // then A dies for good.
    read_next();
    std::thread::sleep(Duration::from_millis(500));
    garage.delete_key(KEY_A.0);
    assert!(
        !garage.key_can_list(KEY_A.0, KEY_A.1),
        "the deleted key still works"
    );
    assert!(garage.key_can_list(KEY_B.0, KEY_B.1));
    let before = store_bytes();
    // Reads under B, for 10 s more.
    let deleted = Instant::now();
    let mut after = 0;
    while deleted.elapsed() < Duration::from_secs(10) {
        read_next();
        after += 1;
        std::thread::sleep(Duration::from_millis(400));
    }
    assert!(
        after >= 10,
        "only {after} reads after the old key was deleted"
    );
    let fetched = store_bytes() - before;
    eprintln!(
        "{reads} reads before the rotation, {after} after the deletion ({fetched} bytes fetched); \
         credentials handed out: {:?}",
        imds.handed_out()
    );
    assert!(
        fetched >= after as u64 * (64 << 10),
        "the reads after the deletion did not all go to the store: {fetched} bytes"
    );
    assert!(
        imds.handed_out()[1..].iter().all(|k| k == KEY_B.0),
        "{:?}",
        imds.handed_out()
    );
    assert_no_secrets_logged(
        &daemon,
        &[KEY_A.1, KEY_B.1, "session-token-a", "session-token-b"],
    );
    assert!(daemon.stop().success());
}

/// At boot the metadata service may not answer yet: with --wait-for-store the daemon keeps
/// trying, and serves once it does.
#[test]
#[cfg_attr(
    not(all(feature = "root-tests", feature = "s3-tests")),
    ignore = "root-tests and s3-tests rings, need root and Garage: sudo bash tests/run"
)]
fn the_daemon_waits_for_the_metadata_service_at_boot() {
    let garage = Garage::start("boot");
    garage.add_key("role", ROLE_KEY.0, ROLE_KEY.1);
    let imds = Imds::start(vec![role_credentials(ROLE_KEY, "session-token-boot")]);
    imds.set_up(false);
    let dir = open_tempdir();
    let (image, contents) = image(dir.path(), 2, 200_000);
    garage.put(&format!("{PREFIX}img.squash"), &image);
    let mut daemon = spawn_without_credentials(&garage, &imds, dir.path(), &["--wait-for-store"]);
    wait_for(
        Duration::from_secs(15),
        "the daemon to report the store unreachable",
        || {
            if let Some(status) = daemon.child.try_wait().unwrap() {
                panic!("daemon exited with {status}: {}", daemon.log_text());
            }
            daemon.log_text().contains("store not reachable yet")
        },
    );
    // It keeps waiting (and asking the metadata service) rather than exiting.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "daemon exited: {}",
        daemon.log_text()
    );
    assert!(!is_mounted(&daemon.mountpoint));
    assert!(
        imds.refused_connections() >= 1,
        "the metadata service was not asked"
    );
    assert_eq!(imds.credential_fetches(), 0);
    imds.set_up(true);
    // The daemon's retries back off 1, 2, 4, 8 s.
    wait_mounted(&mut daemon, Duration::from_secs(30));
    let mnt = daemon.mountpoint.clone();
    for (i, data) in contents.iter().enumerate() {
        let read = std::fs::read(mnt.join(format!("img/f{i:03}"))).unwrap();
        assert!(read == *data, "contents of f{i:03} differ");
    }
    assert!(imds.token_fetches() >= 1 && imds.credential_fetches() >= 1);
    assert!(daemon.stop().success());
}
