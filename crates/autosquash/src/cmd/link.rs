//! `autosquash link`: keep symlinks in the real filesystem pointing at the files of an overlay.
//!
//! This replaces the VMs' `overlay_linker.sh`. A file uploaded to the bucket under
//! `overlay/home/x/f` appears in the s3fs mount as `/mnt/s3fs/overlay/home/x/f`, and `/home/x/f`
//! must be a symlink to it. Only files are linked, never directories: a linked directory would
//! make writing a new file into it fail with a surprising "read-only filesystem" error.
//! A run converges on the same state whatever it starts from, so it is safe to repeat.

use anyhow::{Context, Result, bail};
use clap::Args;
use std::fs::{self, DirEntry};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

#[derive(Args)]
pub struct LinkArgs {
    /// Directory whose files are linked to, e.g. /mnt/s3fs/overlay.
    #[arg(long, value_name = "DIR")]
    source: PathBuf,
    /// Directory under which the links are made, at the same relative paths, e.g. /.
    #[arg(long, value_name = "DIR")]
    target: PathBuf,
    /// Print the plan (create, replace, prune and conflict lines) and change nothing.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Also remove dangling symlinks that point into SOURCE (nothing else). Only the
    /// directories of TARGET that match a directory of SOURCE are looked at, so the whole of a
    /// big TARGET such as / is never crawled, and links left in a directory that no longer
    /// exists under SOURCE are not found.
    #[arg(long)]
    prune: bool,
    /// Print only warnings and the summary line, not one line per change.
    #[arg(short, long)]
    quiet: bool,
}

pub fn link(args: LinkArgs) -> Result<()> {
    let source = fs::canonicalize(&args.source)
        .with_context(|| format!("cannot use source {}", args.source.display()))?;
    if !source.is_dir() {
        bail!("source {} is not a directory", args.source.display());
    }
    let target = fs::canonicalize(&args.target)
        .with_context(|| format!("cannot use target {}", args.target.display()))?;
    if !target.is_dir() {
        bail!("target {} is not a directory", args.target.display());
    }
    if target.starts_with(&source) {
        bail!(
            "target {} is inside source {}",
            args.target.display(),
            source.display()
        );
    }
    let mut linker = Linker {
        // Old links may have been made through the path as typed rather than the real one.
        source_as_given: std::path::absolute(&args.source)?,
        source,
        target: args.target,
        dry_run: args.dry_run,
        prune: args.prune,
        quiet: args.quiet,
        counts: Counts::default(),
    };
    linker.run();
    let c = &linker.counts;
    println!(
        "created {}, replaced {}, unchanged {}, pruned {}, conflicts {}{}",
        c.created,
        c.replaced,
        c.unchanged,
        c.pruned,
        c.conflicts,
        if args.dry_run { " (dry run)" } else { "" }
    );
    if c.failed > 0 {
        bail!(
            "{} path(s) could not be handled; see the warnings above",
            c.failed
        );
    }
    Ok(())
}

#[derive(Default)]
struct Counts {
    created: usize,
    replaced: usize,
    unchanged: usize,
    pruned: usize,
    conflicts: usize,
    failed: usize,
}

struct Linker {
    /// Canonical: what new links point to.
    source: PathBuf,
    source_as_given: PathBuf,
    target: PathBuf,
    dry_run: bool,
    prune: bool,
    quiet: bool,
    counts: Counts,
}

impl Linker {
    /// Depth-first over SOURCE's real directories (symlinks to directories are not followed,
    /// so there can be no loop), in name order.
    fn run(&mut self) {
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let mut subdirs = self.visit(&rel);
            subdirs.reverse();
            stack.extend(subdirs);
        }
    }

    /// Links the files of one source directory; returns its subdirectories.
    fn visit(&mut self, rel: &Path) -> Vec<PathBuf> {
        let dir = self.target.join(rel);
        let Some(mut dir_exists) = self.target_dir_state(&dir) else {
            return Vec::new();
        };
        let from_dir = self.source.join(rel);
        let entries = match read_sorted(&from_dir) {
            Ok(entries) => entries,
            Err(e) => {
                self.fail(&from_dir, &e);
                return Vec::new();
            }
        };
        let mut subdirs = Vec::new();
        for entry in entries {
            let from = entry.path();
            let to = dir.join(entry.file_name());
            match entry.file_type() {
                Ok(t) if t.is_dir() => subdirs.push(rel.join(entry.file_name())),
                Ok(t) if t.is_file() => self.link_file(&from, &to, &dir, &mut dir_exists),
                // A symlink to a file is linked like a file; one to a directory is not followed.
                Ok(t) if t.is_symlink() => match fs::metadata(&from) {
                    Ok(m) if m.is_file() => self.link_file(&from, &to, &dir, &mut dir_exists),
                    Ok(_) => warn(&from, "symlink to something else than a file; skipped"),
                    Err(e) => warn(&from, &format!("dangling symlink ({e}); skipped")),
                },
                Ok(_) => warn(&from, "not a regular file; skipped"),
                Err(e) => self.fail(&from, &e),
            }
        }
        if self.prune && dir_exists {
            self.prune_dir(&dir);
        }
        subdirs
    }

    /// Whether the target directory exists (`Some(false)`: it will be made when needed),
    /// or `None` when something else is in the way and the whole subtree is skipped.
    fn target_dir_state(&mut self, dir: &Path) -> Option<bool> {
        match fs::metadata(dir) {
            Ok(m) if m.is_dir() => match fs::canonicalize(dir) {
                // E.g. a directory symlinked into the overlay by hand: linking there would
                // replace the source files themselves.
                Ok(real) if real.starts_with(&self.source) => {
                    self.conflict(dir, "resolves into the source tree");
                    None
                }
                Ok(_) => Some(true),
                Err(e) => {
                    self.fail(dir, &e);
                    None
                }
            },
            Ok(_) => {
                self.conflict(dir, "is not a directory");
                None
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if fs::symlink_metadata(dir).is_ok() {
                    self.conflict(dir, "is a dangling symlink, not a directory");
                    None
                } else {
                    Some(false)
                }
            }
            Err(e) => {
                self.fail(dir, &e);
                None
            }
        }
    }

    fn link_file(&mut self, from: &Path, to: &Path, dir: &Path, dir_exists: &mut bool) {
        let replace = match fs::symlink_metadata(to) {
            Err(e) if e.kind() == ErrorKind::NotFound => false,
            Err(e) => return self.fail(to, &e),
            Ok(m) if m.is_symlink() => match fs::read_link(to) {
                Ok(current) if current == from => {
                    self.counts.unchanged += 1;
                    return;
                }
                Ok(_) => true,
                Err(e) => return self.fail(to, &e),
            },
            Ok(m) if m.is_dir() => return self.conflict(to, "is a directory"),
            Ok(_) => true,
        };
        if !self.dry_run {
            let mut done = Ok(());
            if !*dir_exists {
                done = make_dirs(dir);
                *dir_exists = done.is_ok();
            }
            if done.is_ok() {
                done = if replace {
                    replace_with_link(from, to)
                } else {
                    symlink(from, to)
                };
            }
            if let Err(e) = done {
                return self.fail(to, &e);
            }
        }
        if replace {
            self.counts.replaced += 1;
            self.report("replace", to);
        } else {
            self.counts.created += 1;
            self.report("create", to);
        }
    }

    /// Removes the symlinks of `dir` that point into SOURCE at something no longer there.
    fn prune_dir(&mut self, dir: &Path) {
        let entries = match read_sorted(dir) {
            Ok(entries) => entries,
            Err(e) => return self.fail(dir, &e),
        };
        for entry in entries {
            if !entry.file_type().is_ok_and(|t| t.is_symlink()) {
                continue;
            }
            let path = entry.path();
            let Ok(points_to) = fs::read_link(&path) else {
                continue;
            };
            let into_source = (points_to.starts_with(&self.source)
                || points_to.starts_with(&self.source_as_given))
                && !points_to.components().any(|c| c == Component::ParentDir);
            if !into_source || !is_missing(&points_to) {
                continue;
            }
            if !self.dry_run
                && let Err(e) = fs::remove_file(&path)
            {
                self.fail(&path, &e);
                continue;
            }
            self.counts.pruned += 1;
            self.report("prune", &path);
        }
    }

    fn report(&self, action: &str, path: &Path) {
        if !self.quiet {
            println!("{action} {}", path.display());
        }
    }

    /// Something other than a file link is in the way: left alone, counted and warned about
    /// (and part of the plan in a dry run).
    fn conflict(&mut self, path: &Path, why: &str) {
        self.counts.conflicts += 1;
        warn(path, &format!("conflict: {why}; left alone"));
        if self.dry_run {
            self.report("conflict", path);
        }
    }

    fn fail(&mut self, path: &Path, e: &io::Error) {
        self.counts.failed += 1;
        warn(path, &e.to_string());
    }
}

fn warn(path: &Path, message: &str) {
    eprintln!("autosquash: warning: {}: {message}", path.display());
}

fn read_sorted(dir: &Path) -> io::Result<Vec<DirEntry>> {
    let mut entries = fs::read_dir(dir)?.collect::<io::Result<Vec<_>>>()?;
    entries.sort_by_key(DirEntry::file_name);
    Ok(entries)
}

/// Like `mkdir -p` with mode 0755 whatever the umask: the links must be reachable by all.
fn make_dirs(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        make_dirs(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o755)),
        Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Readers see either the old file or the new link, never nothing.
fn replace_with_link(from: &Path, to: &Path) -> io::Result<()> {
    let tmp = to.with_file_name(format!(".autosquash-link.{}", std::process::id()));
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    symlink(from, &tmp)?;
    fs::rename(&tmp, to).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

fn is_missing(path: &Path) -> bool {
    fs::symlink_metadata(path)
        .is_err_and(|e| matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory))
}
