//! End-to-end harness: runs the real `autosquash` binary on a real FUSE mount, and mounts
//! images with the kernel's own squashfs for comparison. Needs root and /dev/fuse (CI has both).
#![allow(dead_code)]

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub fn is_mounted(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let wanted = path.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(wanted.as_str()))
}

/// Waits until `cond` holds, up to `limit`.
pub fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A temporary directory others can traverse (tests run commands as `nobody`).
pub fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A running `autosquash serve`, stopped with SIGTERM on drop.
pub struct Daemon {
    pub child: Child,
    pub mountpoint: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `autosquash serve` and returns without waiting.
    pub fn spawn(
        source: impl AsRef<OsStr>,
        mountpoint: &Path,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> Daemon {
        let mut args: Vec<&OsStr> = vec![
            "--source".as_ref(),
            source.as_ref(),
            "--mountpoint".as_ref(),
            mountpoint.as_os_str(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        Self::launch(
            env!("CARGO_BIN_EXE_autosquash").as_ref(),
            &args,
            mountpoint,
            env,
        )
    }

    /// [`Daemon::spawn`] of another copy of the program.
    pub fn spawn_program(program: &Path, source: &Path, mountpoint: &Path) -> Daemon {
        let args = [
            "--source".as_ref(),
            source.as_os_str(),
            "--mountpoint".as_ref(),
            mountpoint.as_os_str(),
        ];
        Self::launch(program, &args, mountpoint, &[])
    }

    /// Starts `autosquash serve --config CONFIG`; the log, control socket and cache are
    /// named after `mountpoint`, as for [`Daemon::spawn`].
    pub fn spawn_with_config(config: &Path, mountpoint: &Path, env: &[(&str, String)]) -> Daemon {
        Self::launch(
            env!("CARGO_BIN_EXE_autosquash").as_ref(),
            &["--config".as_ref(), config.as_os_str()],
            mountpoint,
            env,
        )
    }

    fn launch(
        program: &Path,
        args: &[&OsStr],
        mountpoint: &Path,
        env: &[(&str, String)],
    ) -> Daemon {
        autosquash_testkit::rings::require_root("a daemon's FUSE mount (allow_other, setpriv)");
        static RUN: AtomicU32 = AtomicU32::new(0);
        let log = mountpoint.with_extension(format!("log{}", RUN.fetch_add(1, Ordering::Relaxed)));
        let child = Command::new(program)
            .arg("serve")
            .args(args)
            .arg("--control-socket")
            .arg(mountpoint.with_extension("sock"))
            .arg("--cache-dir")
            .arg(mountpoint.with_extension("cache"))
            .env("AUTOSQUASH_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon {
            child,
            mountpoint: mountpoint.to_path_buf(),
            log,
        }
    }

    /// Starts `autosquash serve` and waits until it has mounted.
    pub fn start(source: impl AsRef<OsStr>, mountpoint: &Path, extra: &[&str]) -> Daemon {
        Self::start_with_env(source, mountpoint, extra, &[])
    }

    pub fn start_with_env(
        source: impl AsRef<OsStr>,
        mountpoint: &Path,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> Daemon {
        let mut daemon = Self::spawn(source, mountpoint, extra, env);
        let start = Instant::now();
        while !is_mounted(mountpoint) {
            if let Some(status) = daemon.child.try_wait().unwrap() {
                panic!("daemon exited with {status}: {}", daemon.log_text());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "daemon did not mount: {}",
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    /// Starts a daemon on a mountpoint holding a stale mount (which `start`'s wait would
    /// mistake for a live one): waits for the log line saying it serves.
    pub fn start_keeping_stale(source: &Path, mountpoint: &Path) -> Daemon {
        let daemon = Self::spawn(source, mountpoint, &[], &[]);
        wait_for(
            Duration::from_secs(20),
            "the restarted daemon to serve",
            || daemon.log_text().contains("serving"),
        );
        daemon
    }

    pub fn control_socket(&self) -> PathBuf {
        self.mountpoint.with_extension("sock")
    }

    /// The daemon's `autosquash status --json` document.
    pub fn status(&self) -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_autosquash"))
            .args(["status", "--json", "--control-socket"])
            .arg(self.control_socket())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: &str) {
        Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
    }

    /// The process that answers the mount's requests: the supervisor's child where there is
    /// one (started as root without a service manager), else the daemon itself.
    pub fn serving_pid(&self) -> u32 {
        let pid = self.child.id();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        children
            .split_whitespace()
            .next()
            .and_then(|c| c.parse().ok())
            .unwrap_or(pid)
    }

    /// SIGTERM, then waits for a clean exit and unmount.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let status = self.child.wait().unwrap();
        assert!(!is_mounted(&self.mountpoint), "still mounted after SIGTERM");
        status
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal("TERM");
            let _ = self.child.wait();
        }
        if is_mounted(&self.mountpoint) {
            let _ = Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.mountpoint)
                .status();
        }
    }
}

/// The kernel's own squashfs mount of an image, unmounted on drop.
pub struct KernelMount(pub PathBuf);

impl KernelMount {
    pub fn new(image: &Path, at: &Path) -> KernelMount {
        autosquash_testkit::rings::require_root("a kernel squashfs loop mount");
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "squashfs", "-o", "loop,ro"])
            .arg(image)
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kernel mount of {} failed: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        KernelMount(at.to_path_buf())
    }
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The corpus, built once per test run and shared by the test binaries.
pub fn corpus() -> &'static autosquash_testkit::corpus::Corpus {
    static CORPUS: OnceLock<autosquash_testkit::corpus::Corpus> = OnceLock::new();
    CORPUS
        .get_or_init(|| autosquash_testkit::corpus::shared(Path::new(env!("CARGO_TARGET_TMPDIR"))))
}

/// A source directory holding (hard links to) every corpus image, as `<variant>.squash`.
pub fn corpus_source(dir: &Path) -> PathBuf {
    let source = dir.join("source");
    std::fs::create_dir_all(&source).unwrap();
    for v in &corpus().variants {
        let to = source.join(format!("{}.squash", v.name));
        // A copy where the corpus is on another filesystem than the test's directory.
        if std::fs::hard_link(&v.image, &to).is_err() {
            std::fs::copy(&v.image, &to).unwrap();
        }
    }
    source
}

/// Runs a shell command, returning (success, stdout, stderr).
pub fn sh(cmd: &str) -> (bool, String, String) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Everything `stat`, `readlink` and `getxattr` say about one entry, comparable across mounts.
#[derive(Debug, PartialEq)]
pub struct Entry {
    pub mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: i64,
    nlink: u64,
    rdev: u64,
    /// The squashfs inode number (ours carries the image slot in the high bits).
    ino: u64,
    target: Option<PathBuf>,
    xattrs: Vec<(String, Vec<u8>)>,
}

pub fn describe(path: &Path) -> Entry {
    let m = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut xattrs: Vec<_> = xattr::list(path)
        .unwrap()
        .map(|n| {
            let v = xattr::get(path, &n).unwrap().unwrap_or_default();
            (n.to_string_lossy().into_owned(), v)
        })
        .collect();
    xattrs.sort();
    Entry {
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        size: if m.is_dir() { 0 } else { m.size() },
        mtime: m.mtime(),
        nlink: m.nlink(),
        rdev: m.rdev(),
        ino: m.ino() & 0xffff_ffff,
        target: m
            .file_type()
            .is_symlink()
            .then(|| std::fs::read_link(path).unwrap()),
        xattrs,
    }
}

/// `ours` and `theirs` hold the same entries with the same [`describe`] and bytes; returns
/// the number of entries compared.
pub fn compare_trees(ours: &Path, theirs: &Path) -> usize {
    let (a, b) = (
        autosquash_testkit::tree::metadata(ours),
        autosquash_testkit::tree::metadata(theirs),
    );
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "entries of {} and {}",
        ours.display(),
        theirs.display()
    );
    for (rel, meta) in a.iter().filter(|(rel, _)| !rel.as_os_str().is_empty()) {
        let (x, y) = (ours.join(rel), theirs.join(rel));
        assert_eq!(describe(&x), describe(&y), "{}", x.display());
        if meta.is_file() {
            let (p, q) = (std::fs::read(&x).unwrap(), std::fs::read(&y).unwrap());
            assert!(p == q, "contents of {}", x.display());
        }
    }
    a.len() - 1
}

/// `diff -r` reports every pair of special files ("X is a fifo while file Y is a fifo") even
/// when they agree; anything else in its output is a real difference.
pub fn only_special_files(diff_output: &str) -> bool {
    diff_output.lines().all(|line| {
        [
            "fifo",
            "socket",
            "block special file",
            "character special file",
        ]
        .iter()
        .any(|kind| {
            line.starts_with("File ") && line.matches(&format!(" is a {kind}")).count() == 2
        })
    })
}
