//! Checks before mounting: /dev/fuse, the mountpoint, and a stale mount left by a daemon that
//! died ("Transport endpoint is not connected"), which is cleaned up instead of failing.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use tracing::warn;

pub fn check_fuse_device() -> Result<()> {
    if !Path::new("/dev/fuse").exists() {
        bail!(
            "/dev/fuse is missing: load the module (modprobe fuse), or in a container pass the \
             device (--device /dev/fuse)"
        );
    }
    Ok(())
}

/// Fails with a clear message unless `path` is an existing directory (or a dead mount,
/// which `prepare` cleans up). Checked before a mount's source is listed, so that a typo in
/// the mountpoint is reported as such and not hidden behind a store that cannot be reached.
pub fn must_exist(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "mountpoint {} does not exist (create it with: mkdir -p {})",
            path.display(),
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot use mountpoint {}", path.display())),
        Ok(meta) if !meta.is_dir() => bail!("mountpoint {} is not a directory", path.display()),
        Ok(_) => Ok(()),
    }
}

/// Makes `path` ready to be mounted on and returns its canonical form.
pub fn prepare(path: &Path) -> Result<PathBuf> {
    must_exist(path)?;
    if let Err(e) = std::fs::metadata(path)
        && e.raw_os_error() == Some(libc::ENOTCONN)
    {
        warn!(mountpoint = %path.display(), "stale mount of a dead daemon found; unmounting it");
        lazy_unmount(path)?;
    }
    let path = path
        .canonicalize()
        .with_context(|| format!("cannot use mountpoint {}", path.display()))?;
    if is_mountpoint(&path)? {
        bail!(
            "{} is already a mount point (is another autosquash serving it? unmount it with: \
             fusermount3 -u {})",
            path.display(),
            path.display()
        );
    }
    Ok(path)
}

/// The canonical form of `path` without looking at `path` itself (a mount there may be one
/// that nobody answers yet): its parent resolved, its name appended.
pub fn resolve_without_entering(path: &Path) -> Result<PathBuf> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(path.to_path_buf());
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    Ok(parent
        .canonicalize()
        .with_context(|| format!("cannot use mountpoint {}", path.display()))?
        .join(name))
}

/// Whether something is mounted exactly at `path`, from /proc/self/mountinfo.
pub fn is_mountpoint(path: &Path) -> Result<bool> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let wanted = path.to_string_lossy();
    Ok(info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|mp| unescape(mp) == wanted))
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn lazy_unmount(path: &Path) -> Result<()> {
    for (tool, args) in [("fusermount3", ["-u", "-z"]), ("umount", ["-l", "-i"])] {
        match Command::new(tool).args(args).arg(path).output() {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => {
                warn!(tool, stderr = %String::from_utf8_lossy(&out.stderr).trim(), "unmount failed")
            }
            Err(e) => warn!(tool, error = %e, "cannot run"),
        }
    }
    bail!(
        "a stale mount at {} could not be removed; run: fusermount3 -uz {}",
        path.display(),
        path.display()
    )
}
