//! The daemon's life on a real FUSE mount: permissions and read-only enforcement, idle expiry
//! and remount, replacement while a file is open, images added and removed, kill -9 and
//! restart, and clear errors for bad mountpoints.

mod common;

use autosquash_testkit::corpus::{mksquashfs, pseudo_random_bytes};
use autosquash_testkit::tree;
use common::{Daemon, is_mounted, open_tempdir, sh, wait_for};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Builds `<source>/<name>.squash` from a tree holding `data.bin` (seeded) and `hello.txt`,
/// atomically (temporary name, then rename), as an admin's upload would.
fn put_image(source: &Path, name: &str, seed: u64) -> Vec<u8> {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let data = pseudo_random_bytes(seed, 1 << 20);
    std::fs::write(src.join("data.bin"), &data).unwrap();
    std::fs::write(src.join("hello.txt"), format!("hello {seed}\n")).unwrap();
    let tmp = source.join(format!(".{name}.tmp"));
    mksquashfs(&src, &tmp, &["-comp", "zstd"]);
    std::fs::rename(&tmp, source.join(format!("{name}.squash"))).unwrap();
    data
}

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = open_tempdir();
    let source = dir.path().join("source");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&source).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    (dir, source, mnt)
}

fn as_nobody(cmd: &str) -> (bool, String, String) {
    sh(&format!(
        "setpriv --reuid=65534 --regid=65534 --clear-groups sh -c '{cmd}'"
    ))
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
fn permissions_and_read_only_are_enforced() {
    let (dir, source, mnt) = setup();
    let src = dir.path().join("tree");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("secret"), "root only\n").unwrap();
    std::fs::set_permissions(src.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(src.join("public"), "everyone\n").unwrap();
    std::fs::copy("/usr/bin/id", src.join("setuid-id")).unwrap();
    std::fs::set_permissions(
        src.join("setuid-id"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    assert!(sh(&format!("mknod '{}' c 1 3", src.join("null").display())).0);
    mksquashfs(&src, &source.join("sec.squash"), &[]);
    let _daemon = Daemon::start(&source, &mnt, &["--allow-other"]);
    let img = mnt.join("sec");
    let p = |n: &str| img.join(n).display().to_string();

    let (ok, out, _) = as_nobody(&format!("cat {}", p("public")));
    assert!(
        ok && out == "everyone\n",
        "nobody cannot read a public file"
    );
    let (ok, _, err) = as_nobody(&format!("cat {}", p("secret")));
    assert!(
        !ok && err.contains("Permission denied"),
        "nobody read a 0600 root file: {err}"
    );
    // nosuid: the setuid bit is shown but grants nothing.
    assert_eq!(
        std::fs::metadata(img.join("setuid-id")).unwrap().mode() & 0o4000,
        0o4000
    );
    let (ok, out, err) = as_nobody(&format!("{} -u", p("setuid-id")));
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "65534", "a setuid binary gained privileges");
    // nodev: a device node cannot be opened, even by root.
    let err = std::fs::File::open(img.join("null")).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EACCES),
        "device opened: {err}"
    );
    // Every write-type operation is refused with EROFS.
    for cmd in [
        format!("touch {}", p("new")),
        format!("echo x >> {}", p("public")),
        format!("mkdir {}", p("d")),
        format!("rm {}", p("public")),
        format!("mv {} {}", p("public"), p("moved")),
        format!("chmod 777 {}", p("public")),
        format!("ln -s x {}", p("l")),
        format!("mknod {} p", p("fifo")),
        format!(
            "setfattr -n user.x -v 1 {} 2>&1 || python3 -c 'import os,sys; os.setxattr(sys.argv[1], \"user.x\", b\"1\")' {}",
            p("public"),
            p("public")
        ),
        format!("touch {}", mnt.join("new-image").display()),
    ] {
        let (ok, _, err) = sh(&cmd);
        assert!(!ok && err.contains("Read-only file system"), "{cmd}: {err}");
    }
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
fn idle_images_are_forgotten_and_mount_again() {
    let (_dir, source, mnt) = setup();
    let data = put_image(&source, "img", 1);
    let daemon = Daemon::start(&source, &mnt, &["--idle-timeout", "1s"]);
    let first = std::fs::metadata(mnt.join("img")).unwrap().ino();
    // Files open without a request, so the daemon does not know this one is open: the image
    // is released from the root when idle, yet the open file, whose inode the kernel still
    // references, keeps reading its mount to the end.
    let mut open = std::fs::File::open(mnt.join("img/data.bin")).unwrap();
    let mut head = vec![0; 1000];
    open.read_exact(&mut head).unwrap();
    wait_for(
        Duration::from_secs(10),
        "the idle image to be released",
        || daemon.log_text().contains("image idle"),
    );
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).unwrap();
    head.extend(rest);
    assert!(
        head == data,
        "an open file of a released image read other bytes"
    );
    drop(open);
    // The kernel was told to forget it: the next access mounts it again, in a new slot.
    let again = std::fs::metadata(mnt.join("img")).unwrap().ino();
    assert_ne!(again, first, "image not remounted after idle expiry");
    assert_eq!(std::fs::read(mnt.join("img/data.bin")).unwrap(), data);
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
fn a_replaced_image_serves_open_files_then_switches() {
    let (_dir, source, mnt) = setup();
    let old = put_image(&source, "img", 1);
    let daemon = Daemon::start(&source, &mnt, &[]);
    let mut file = std::fs::File::open(mnt.join("img/data.bin")).unwrap();
    let mut head = vec![0; 1000];
    file.read_exact(&mut head).unwrap();
    let new = put_image(&source, "img", 2);
    wait_for(
        Duration::from_secs(10),
        "the replacement to be noticed",
        || daemon.log_text().contains("replaced or removed"),
    );
    // The open file keeps reading the old version, past what was already read.
    file.seek(SeekFrom::Start(700_000)).unwrap();
    let mut tail = vec![0; 1000];
    file.read_exact(&mut tail).unwrap();
    assert_eq!(tail, old[700_000..701_000], "old and new versions mixed");
    drop(file);
    // Once idle, the new version is served.
    wait_for(Duration::from_secs(10), "the new version", || {
        std::fs::read(mnt.join("img/data.bin")).is_ok_and(|d| d == new)
    });
    assert_eq!(
        std::fs::read_to_string(mnt.join("img/hello.txt")).unwrap(),
        "hello 2\n"
    );
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
fn images_added_and_removed_show_up_without_restart() {
    let (_dir, source, mnt) = setup();
    put_image(&source, "first", 1);
    std::fs::write(source.join("README.txt"), "not an image").unwrap();
    let _daemon = Daemon::start(&source, &mnt, &[]);
    let names = || -> Vec<String> {
        let mut v: Vec<_> = std::fs::read_dir(&mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(), ["first"]);
    assert!(std::fs::metadata(mnt.join(".git")).is_err());
    let data = put_image(&source, "second", 2);
    wait_for(
        Duration::from_secs(5),
        "the new image in the listing",
        || names() == ["first", "second"],
    );
    assert_eq!(std::fs::read(mnt.join("second/data.bin")).unwrap(), data);
    std::fs::remove_file(source.join("first.squash")).unwrap();
    wait_for(
        Duration::from_secs(5),
        "the removed image to leave the listing",
        || names() == ["second"],
    );
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
fn a_killed_daemon_is_replaced_on_the_same_mountpoint() {
    let (_dir, source, mnt) = setup();
    let data = put_image(&source, "img", 3);
    let daemon = Daemon::start(&source, &mnt, &[]);
    assert_eq!(std::fs::read(mnt.join("img/data.bin")).unwrap(), data);
    daemon.signal("KILL");
    wait_for(Duration::from_secs(5), "the stale mount", || {
        std::fs::metadata(&mnt).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN))
    });
    drop(daemon);
    // Drop unmounted it; make it stale again the hard way to test the daemon's own cleanup.
    let daemon = Daemon::start(&source, &mnt, &[]);
    daemon.signal("KILL");
    wait_for(Duration::from_secs(5), "the stale mount", || {
        std::fs::metadata(&mnt).is_err()
    });
    let started = std::time::Instant::now();
    let restarted = Daemon::start_keeping_stale(&source, &mnt);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(std::fs::read(mnt.join("img/data.bin")).unwrap(), data);
    assert!(restarted.log_text().contains("stale mount"));
    assert!(restarted.stop().success());
}

/// A reader looping over a file of a mount, in a thread: fresh opens and reads at moving
/// offsets, so lookups and reads reach the daemon; failures, wrong bytes and the longest
/// read are counted.
struct Reader {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(u64, u64, u64, Duration)>,
}

impl Reader {
    fn start(file: PathBuf, data: Vec<u8>) -> Reader {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut reads, mut failed, mut wrong, mut longest) = (0, 0, 0, Duration::ZERO);
            let mut buf = vec![0u8; 64 << 10];
            let mut offset = 0u64;
            while !stopping.load(Ordering::Relaxed) {
                let started = std::time::Instant::now();
                let got = std::fs::File::open(&file).and_then(|mut f| {
                    f.seek(SeekFrom::Start(offset))?;
                    f.read(&mut buf)
                });
                match got {
                    Ok(n) if buf[..n] == data[offset as usize..offset as usize + n] => {}
                    Ok(_) => wrong += 1,
                    Err(_) => failed += 1,
                }
                longest = longest.max(started.elapsed());
                reads += 1;
                offset = (offset + 40_961) % (data.len() as u64 - buf.len() as u64);
            }
            (reads, failed, wrong, longest)
        });
        Reader { stop, thread }
    }

    /// Stops the reader and checks that nothing failed; returns the reads and the longest.
    fn finish(self) -> (u64, Duration) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (reads, failed, wrong, longest) = self.thread.join().unwrap();
        eprintln!("{reads} reads, longest {longest:?}");
        assert!(reads > 10, "{reads} reads");
        assert_eq!(failed, 0, "reads failed");
        assert_eq!(wrong, 0, "reads got wrong bytes");
        (reads, longest)
    }
}

/// What runs on a mount while its serving process changes: a [`Reader`] on `data.bin`, a
/// file held open and a process whose working directory is the image.
struct Users {
    reader: Reader,
    held: std::fs::File,
    in_image: std::process::Child,
    data: Vec<u8>,
}

impl Users {
    fn start(image: &Path, data: Vec<u8>) -> Users {
        let file = image.join("data.bin");
        Users {
            held: std::fs::File::open(&file).unwrap(),
            in_image: Command::new("sleep")
                .arg("60")
                .current_dir(image)
                .spawn()
                .unwrap(),
            reader: Reader::start(file, data.clone()),
            data,
        }
    }

    /// Checks that none of them noticed anything, and ends them.
    fn finish(mut self) {
        self.reader.finish();
        let mut again = Vec::new();
        self.held.read_to_end(&mut again).unwrap();
        assert!(again == self.data, "the file held open reads other bytes");
        let listed = std::fs::read_dir(format!("/proc/{}/cwd", self.in_image.id()))
            .unwrap()
            .count();
        assert_eq!(
            listed, 2,
            "the working directory in the image is not listed"
        );
        let _ = self.in_image.kill();
        let _ = self.in_image.wait();
        // Dropped here: a stop waits for open files to close, like any unmount.
    }
}

/// kill -9 of the process that serves, twice, while a reader loops over a file, a process
/// has its working directory in the image and a file is held open: the supervisor keeps the
/// connection, a new process takes it over, and nobody sees an error or a wrong byte.
#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
fn a_killed_serving_process_is_taken_over_without_a_failed_read() {
    let (_dir, source, mnt) = setup();
    let data = put_image(&source, "img", 5);
    let daemon = Daemon::start(&source, &mnt, &[]);
    let users = Users::start(&mnt.join("img"), data);
    kill_serving_twice(&daemon);
    users.finish();
    let log = daemon.log_text();
    assert!(log.contains("taking over the mount"), "{log}");
    assert!(daemon.stop().success());
}

/// kill -9 of the serving process, twice, and a wait for the one that takes over each time.
fn kill_serving_twice(daemon: &Daemon) {
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(300));
        let before = daemon.serving_pid();
        assert_ne!(
            before,
            daemon.child.id(),
            "no supervisor in front of the daemon"
        );
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
        assert!(sh(&format!("kill -KILL {before}")).0);
        wait_for(Duration::from_secs(10), "a new serving process", || {
            let now = daemon.serving_pid();
            now != before && now != daemon.child.id()
        });
    }
    std::thread::sleep(Duration::from_millis(500));
}

/// The same in the plain object view: its numbers are in the state log too, so a reader
/// and a file held open go on across the kills.
#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
fn a_killed_object_view_is_taken_over_without_a_failed_read() {
    let (_dir, source, mnt) = setup();
    let data = pseudo_random_bytes(6, 3 << 20);
    std::fs::create_dir_all(source.join("ref")).unwrap();
    std::fs::write(source.join("ref/genome.bin"), &data).unwrap();
    let daemon = Daemon::start(&source, &mnt, &["--view", "objects"]);
    let file = mnt.join("ref/genome.bin");
    let mut held = std::fs::File::open(&file).unwrap();
    let reader = Reader::start(file, data.clone());
    kill_serving_twice(&daemon);
    reader.finish();
    let mut again = Vec::new();
    held.read_to_end(&mut again).unwrap();
    assert!(again == data, "the file held open reads other bytes");
    let log = daemon.log_text();
    assert!(log.contains("taking over the mount"), "{log}");
    drop(held);
    assert!(daemon.stop().success());
}

/// A package upgrade: the program's file is replaced, then `systemctl reload` (SIGHUP) makes
/// the serving process exec the new program, which takes the mounts over: same pid, no
/// failed read, the open file and the working directory go on.
#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
fn a_reload_after_an_upgrade_hands_the_mounts_to_the_new_program() {
    let (dir, source, mnt) = setup();
    let data = put_image(&source, "img", 6);
    let program = dir.path().join("autosquash");
    std::fs::copy(env!("CARGO_BIN_EXE_autosquash"), &program).unwrap();
    let mut daemon = Daemon::spawn_program(&program, &source, &mnt);
    wait_for(Duration::from_secs(20), "the mount", || is_mounted(&mnt));
    let users = Users::start(&mnt.join("img"), data);
    std::thread::sleep(Duration::from_millis(300));
    let serving = daemon.serving_pid();
    install_over(&program);
    let exe = || std::fs::read_link(format!("/proc/{serving}/exe")).unwrap();
    assert!(exe().to_string_lossy().ends_with(" (deleted)"));
    daemon.signal("HUP");
    wait_for(
        Duration::from_secs(10),
        "the new program to take over",
        || {
            daemon.log_text().matches("taking over the mount").count() == 1
                && daemon.log_text().contains("handing the mounts over")
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(daemon.serving_pid(), serving, "not the same process");
    assert!(
        !exe().to_string_lossy().ends_with(" (deleted)"),
        "still the old program"
    );
    users.finish();
    assert!(daemon.child.try_wait().unwrap().is_none());
    assert!(daemon.stop().success());
}

/// What dpkg does to `program`: the new file is written beside it and renamed over it.
fn install_over(program: &Path) {
    let new = program.with_extension("new");
    std::fs::copy(env!("CARGO_BIN_EXE_autosquash"), &new).unwrap();
    std::fs::rename(&new, program).unwrap();
}

/// A stop that comes while the upgraded program is still taking the mounts over (the
/// packaging test's SIGTERM 0.27 s after the upgrade's reload killed it with the default
/// action; the supervisor took that for a crash, started another one and the stop was lost):
/// it waits until the new program handles it, which then stops as asked.
#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
fn a_stop_during_an_upgrades_takeover_is_not_lost() {
    let (dir, source, mnt) = setup();
    put_image(&source, "img", 7);
    let program = dir.path().join("autosquash");
    std::fs::copy(env!("CARGO_BIN_EXE_autosquash"), &program).unwrap();
    let mut daemon = Daemon::spawn_program(&program, &source, &mnt);
    wait_for(Duration::from_secs(20), "the mount", || is_mounted(&mnt));
    assert!(mnt.join("img").read_dir().is_ok());
    let serving = daemon.serving_pid();
    install_over(&program);
    daemon.signal("HUP");
    // Logged just before the exec: the stop arrives as the new program starts.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !daemon.log_text().contains("handing the mounts over") {
        assert!(std::time::Instant::now() < deadline, "no handover");
        std::thread::sleep(Duration::from_millis(1));
    }
    Command::new("kill")
        .args(["-TERM", &serving.to_string()])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running 15 s after the stop: {}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = daemon.log_text();
    assert!(status.success(), "{status:?}: {log}");
    assert!(!log.contains("was killed"), "{log}");
    assert!(!is_mounted(&mnt), "still mounted after the stop");
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
fn bad_mountpoints_and_sources_give_clear_errors() {
    let (dir, source, mnt) = setup();
    put_image(&source, "img", 1);
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_autosquash"))
            .arg("serve")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let missing = dir.path().join("nope");
    let (ok, err) = run(&[
        "--source",
        source.to_str().unwrap(),
        "--mountpoint",
        missing.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("does not exist"), "{err}");
    let (ok, err) = run(&[
        "--source",
        missing.to_str().unwrap(),
        "--mountpoint",
        mnt.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("not a directory"), "{err}");
    let _daemon = Daemon::start(&source, &mnt, &[]);
    let (ok, err) = run(&[
        "--source",
        source.to_str().unwrap(),
        "--mountpoint",
        mnt.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("already a mount point"), "{err}");
    assert!(
        is_mounted(&mnt),
        "a failed second daemon disturbed the first"
    );
}

/// Regression (issue: the engine panicked on a block another inode had cached with another
/// length, and one `ls -l` of an xattr bomb allocated gigabytes): hundreds of hostile images,
/// the crash input found by fuzzing, the crafted shared-block and xattr-bomb images and
/// seeded mutations, served by one daemon beside good images. Everything is read twice (page
/// cache dropped in between, so the second pass reaches the daemon's own cache): no panic, the
/// daemon lives, and the good images stay byte-identical.
#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
fn hostile_images_beside_good_ones_never_panic_the_daemon() {
    let (dir, source, mnt) = setup();
    let good: Vec<(String, Vec<u8>)> = (1..=3)
        .map(|seed| {
            let name = format!("good{seed}");
            let data = put_image(&source, &name, seed);
            (name, data)
        })
        .collect();
    let mut hostile: Vec<(String, Vec<u8>)> = autosquash_testkit::hostile::crafted(dir.path())
        .into_iter()
        .map(|h| (format!("crafted-{}", h.name), h.bytes))
        .collect();
    for (name, bytes) in autosquash_testkit::hostile::found() {
        hostile.push((format!("found-{name}"), bytes.to_vec()));
    }
    let base = std::fs::read(source.join("good1.squash")).unwrap();
    for (i, m) in autosquash_testkit::hostile::mutations(&base, 12, 300)
        .into_iter()
        .enumerate()
    {
        hostile.push((format!("mutant-{i:03}"), m));
    }
    for (name, bytes) in &hostile {
        std::fs::write(source.join(format!("{name}.squash")), bytes).unwrap();
    }
    let mut daemon = Daemon::start(&source, &mnt, &["--memory-limit", "64M"]);
    let (mut entries, mut errors) = (0, 0);
    for pass in 0..2 {
        if pass == 1 {
            std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
        }
        for (name, _) in &hostile {
            let read = tree::read_everything(&mnt.join(name), 2000, 4 << 20);
            entries += read.entries;
            errors += read.error_count();
        }
        for (name, data) in &good {
            let got = std::fs::read(mnt.join(name).join("data.bin")).unwrap();
            assert!(&got == data, "good image {name} changed on pass {pass}");
        }
    }
    println!(
        "{} hostile images: {entries} entries read, {errors} errors",
        hostile.len()
    );
    assert!(errors > 0, "no hostile image gave an error");
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the daemon died: {}",
        daemon.log_text()
    );
    assert_eq!(daemon.status()["panics"], 0, "requests panicked");
    let log = daemon.log_text();
    assert!(!log.contains("panicked"), "a panic in the log:\n{log}");
    for (name, _) in &good {
        assert_eq!(
            std::fs::read_to_string(mnt.join(name).join("hello.txt")).unwrap(),
            format!("hello {}\n", &name[4..])
        );
    }
}

/// Regression (issue: a replaced object kept its inode number and page cache, so old pages
/// were served next to new ones): in the plain object view a new version is a new inode.
/// Every read while the replacement is noticed is the whole old or the whole new version.
#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
fn the_object_view_never_mixes_versions_of_a_replaced_object() {
    let (_dir, source, mnt) = setup();
    let (old, new) = (
        pseudo_random_bytes(1, 3 << 20),
        pseudo_random_bytes(2, 3 << 20),
    );
    std::fs::write(source.join("ref.bin"), &old).unwrap();
    let _daemon = Daemon::start(&source, &mnt, &["--view", "objects"]);
    let path = mnt.join("ref.bin");
    assert!(std::fs::read(&path).unwrap() == old);
    let mut pinned = std::fs::File::open(&path).unwrap();
    let tmp = source.join(".ref.tmp");
    std::fs::write(&tmp, &new).unwrap();
    std::fs::rename(&tmp, source.join("ref.bin")).unwrap();
    let mut reads = 0;
    wait_for(Duration::from_secs(10), "the new version", || {
        reads += 1;
        let got = std::fs::read(&path).unwrap_or_default();
        assert!(
            got.is_empty() || got == old || got == new,
            "read {reads} mixed versions"
        );
        got == new
    });
    // A file opened on the old version reads the old version or fails, never the new one.
    let mut tail = vec![0; 4096];
    pinned.seek(SeekFrom::Start(2 << 20)).unwrap();
    if pinned.read_exact(&mut tail).is_ok() {
        assert!(
            tail == old[2 << 20..(2 << 20) + 4096],
            "the open file switched"
        );
    }
}

/// One `[[mount]]` of a test configuration.
fn mount_section(source: &Path, mountpoint: &Path, idle: &str) -> String {
    format!(
        "[[mount]]\nsource = \"{}\"\nmountpoint = \"{}\"\nidle_timeout = \"{idle}\"\n",
        source.display(),
        mountpoint.display()
    )
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
fn sighup_reloads_the_configuration() {
    let (dir, source, mnt) = setup();
    let other_source = dir.path().join("other-source");
    let other_mnt = dir.path().join("other-mnt");
    std::fs::create_dir(&other_source).unwrap();
    std::fs::create_dir(&other_mnt).unwrap();
    let a = put_image(&source, "a", 11);
    let b = put_image(&other_source, "b", 12);
    let config = dir.path().join("config.toml");
    let write = |text: String| std::fs::write(&config, format!("version = 1\n{text}")).unwrap();
    // The service manager's side of sd_notify: every message the daemon sends.
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // Messages about the file descriptor store (the mounts' connections kept for a
    // successor) are counted apart; the others in order.
    let stored = std::cell::Cell::new(0);
    let next_message = || {
        loop {
            let mut buf = [0; 4096];
            let n = notify.recv(&mut buf).expect("a notification within 20 s");
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            if message.starts_with("FDSTORE=1\n") {
                stored.set(stored.get() + 1);
            }
            if !message.starts_with("FDSTORE") {
                return message;
            }
        }
    };
    let env = [("NOTIFY_SOCKET", notify_path.display().to_string())];

    write(mount_section(&source, &mnt, "5m"));
    let daemon = Daemon::spawn_with_config(&config, &mnt, &env);
    let ready = next_message();
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    assert!(is_mounted(&mnt), "READY before the mount answered");
    assert_eq!(
        stored.get(),
        2,
        "the connection and the state log given to the manager"
    );
    let mut open_file = std::fs::File::open(mnt.join("a/data.bin")).unwrap();
    let reload = |daemon: &Daemon| {
        daemon.signal("HUP");
        let first = next_message();
        assert!(first.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{first}");
        let done = next_message();
        assert!(done.starts_with("READY=1\n"), "{done}");
    };

    // A soft change (idle timeout) is applied in place and a new mount is added.
    write(mount_section(&source, &mnt, "10m") + &mount_section(&other_source, &other_mnt, "5m"));
    reload(&daemon);
    assert!(is_mounted(&other_mnt));
    assert_eq!(std::fs::read(other_mnt.join("b/data.bin")).unwrap(), b);
    assert!(daemon.log_text().contains("settings changed in place"));
    let mut head = vec![0; 4096];
    open_file.read_exact(&mut head).unwrap();
    assert_eq!(head, a[..4096]);

    // An invalid file is refused and everything keeps serving as it was.
    write(mount_section(&source, &mnt, "10m") + "no_such_key = 1\n");
    reload(&daemon);
    assert!(daemon.log_text().contains("reload refused"));
    assert!(is_mounted(&other_mnt));
    assert_eq!(
        std::fs::read(mnt.join("a/hello.txt")).unwrap(),
        b"hello 11\n"
    );

    // A new source replaces the mount; a removed section unmounts. The file opened on the
    // old mount reads on to its end.
    write(mount_section(&other_source, &mnt, "10m"));
    reload(&daemon);
    assert!(!is_mounted(&other_mnt), "a removed mount is taken off");
    assert_eq!(std::fs::read(mnt.join("b/data.bin")).unwrap(), b);
    assert!(std::fs::metadata(mnt.join("a")).is_err());
    open_file.seek(SeekFrom::Start(0)).unwrap();
    let mut all = Vec::new();
    open_file.read_to_end(&mut all).unwrap();
    assert!(all == a, "the open file of the replaced mount changed");
    drop(open_file);
    // Its last file closed, the old mount's session ends; that must leave the new mount be.
    let ended = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        daemon.log_text().contains("image unmounted image=a")
    });
    assert!(
        ended,
        "the old mount's session did not end: {}",
        daemon.log_text()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        is_mounted(&mnt),
        "the end of the old session took the new mount off"
    );
    assert_eq!(
        std::fs::read(mnt.join("b/hello.txt")).unwrap(),
        b"hello 12\n"
    );

    let log = daemon.log.clone();
    let status = daemon.stop();
    let log = std::fs::read_to_string(log).unwrap();
    assert!(status.success(), "{status}: {log}");
    let stopping = next_message();
    assert!(stopping.starts_with("STOPPING=1"), "{stopping}");
}
