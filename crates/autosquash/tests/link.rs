//! `autosquash link` run for real on temporary source and target trees.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Trees {
    _dir: tempfile::TempDir,
    /// Canonical, as the links must point to it.
    source: PathBuf,
    target: PathBuf,
}

impl Trees {
    /// A source with files at several depths and an empty target.
    fn new() -> Trees {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let (source, target) = (root.join("overlay"), root.join("root"));
        fs::create_dir_all(source.join("home/training/course")).unwrap();
        fs::create_dir(&target).unwrap();
        fs::write(source.join("top.txt"), "top").unwrap();
        fs::write(source.join("home/training/course/genome.fa"), "ACGT").unwrap();
        fs::write(source.join("home/training/notes.txt"), "notes").unwrap();
        Trees {
            _dir: dir,
            source,
            target,
        }
    }

    fn files(&self) -> [&'static str; 3] {
        [
            "home/training/course/genome.fa",
            "home/training/notes.txt",
            "top.txt",
        ]
    }

    fn link(&self, extra: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_autosquash"))
            .arg("link")
            .arg("--source")
            .arg(&self.source)
            .arg("--target")
            .arg(&self.target)
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "link failed: {}", text(&out.stderr));
        out
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn summary(out: &Output) -> String {
    text(&out.stdout).lines().last().unwrap_or("").to_owned()
}

/// Every entry under `dir`: path, kind, link target and inode, to compare before and after.
fn snapshot(dir: &Path) -> Vec<(PathBuf, String, u64)> {
    let mut all = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let meta = fs::symlink_metadata(&path).unwrap();
        let kind = if meta.is_symlink() {
            format!("-> {}", fs::read_link(&path).unwrap().display())
        } else if meta.is_dir() {
            "dir".to_owned()
        } else {
            format!("file {}", fs::read_to_string(&path).unwrap())
        };
        all.push((path.clone(), kind, meta.ino()));
        if meta.is_dir() {
            all.extend(snapshot(&path));
        }
    }
    all
}

#[test]
fn first_run_links_every_file_and_second_run_changes_nothing() {
    let t = Trees::new();
    let out = t.link(&[]);
    assert_eq!(
        summary(&out),
        "created 3, replaced 0, unchanged 0, pruned 0, conflicts 0"
    );
    for file in t.files() {
        let link = t.target.join(file);
        assert_eq!(fs::read_link(&link).unwrap(), t.source.join(file));
        assert!(
            text(&out.stdout).contains(&format!("create {}\n", link.display())),
            "{}",
            text(&out.stdout)
        );
    }
    // Nested directories are real directories, made world-readable.
    let course = t.target.join("home/training/course");
    let meta = fs::symlink_metadata(&course).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    assert_eq!(
        fs::read_to_string(t.target.join("home/training/course/genome.fa")).unwrap(),
        "ACGT"
    );

    let before = snapshot(&t.target);
    let again = t.link(&[]);
    assert_eq!(
        text(&again.stdout),
        "created 0, replaced 0, unchanged 3, pruned 0, conflicts 0\n"
    );
    assert_eq!(snapshot(&t.target), before);
}

#[test]
fn real_files_and_foreign_links_are_replaced() {
    let t = Trees::new();
    fs::write(t.target.join("top.txt"), "old copy").unwrap();
    fs::create_dir_all(t.target.join("home/training")).unwrap();
    symlink(
        "/elsewhere/notes.txt",
        t.target.join("home/training/notes.txt"),
    )
    .unwrap();
    let out = t.link(&[]);
    assert_eq!(
        summary(&out),
        "created 1, replaced 2, unchanged 0, pruned 0, conflicts 0"
    );
    assert!(
        text(&out.stdout).contains(&format!("replace {}\n", t.target.join("top.txt").display()))
    );
    for file in t.files() {
        assert_eq!(
            fs::read_link(t.target.join(file)).unwrap(),
            t.source.join(file)
        );
    }
    // No temporary name left behind.
    let names: Vec<_> = fs::read_dir(&t.target)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn a_directory_in_the_way_is_a_conflict_and_left_alone() {
    let t = Trees::new();
    let blocked = t.target.join("top.txt");
    fs::create_dir(&blocked).unwrap();
    fs::write(blocked.join("mine"), "keep").unwrap();
    let out = t.link(&[]);
    assert_eq!(
        summary(&out),
        "created 2, replaced 0, unchanged 0, pruned 0, conflicts 1"
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("conflict") && stderr.contains(&blocked.display().to_string()),
        "{stderr}"
    );
    assert!(fs::symlink_metadata(&blocked).unwrap().is_dir());
    assert_eq!(fs::read_to_string(blocked.join("mine")).unwrap(), "keep");
    // And it stays a conflict, not a change, on the next run.
    assert_eq!(
        summary(&t.link(&[])),
        "created 0, replaced 0, unchanged 2, pruned 0, conflicts 1"
    );
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let t = Trees::new();
    fs::write(t.target.join("top.txt"), "old copy").unwrap();
    fs::create_dir_all(t.target.join("home/training/notes.txt")).unwrap();
    symlink(t.source.join("gone.txt"), t.target.join("gone.txt")).unwrap();
    let before = snapshot(&t.target);
    let out = t.link(&["--dry-run", "--prune"]);
    let shown = |p: &str| t.target.join(p).display().to_string();
    assert_eq!(
        text(&out.stdout),
        format!(
            "replace {}\nprune {}\nconflict {}\ncreate {}\n\
             created 1, replaced 1, unchanged 0, pruned 1, conflicts 1 (dry run)\n",
            shown("top.txt"),
            shown("gone.txt"),
            shown("home/training/notes.txt"),
            shown("home/training/course/genome.fa"),
        )
    );
    assert_eq!(snapshot(&t.target), before);

    // Quiet: only the summary.
    let quiet = t.link(&["--dry-run", "--quiet"]);
    assert_eq!(
        text(&quiet.stdout),
        "created 1, replaced 1, unchanged 0, pruned 0, conflicts 1 (dry run)\n"
    );
    assert_eq!(snapshot(&t.target), before);
}

#[test]
fn prune_removes_only_dangling_links_into_source() {
    let t = Trees::new();
    t.link(&[]);
    let training = t.target.join("home/training");
    fs::remove_file(t.source.join("home/training/notes.txt")).unwrap();
    symlink("/nonexistent/elsewhere", training.join("foreign")).unwrap();
    fs::write(training.join("real.txt"), "mine").unwrap();
    // A directory that has no counterpart under SOURCE is not looked at.
    fs::create_dir(t.target.join("unrelated")).unwrap();
    symlink(t.source.join("gone"), t.target.join("unrelated/gone")).unwrap();

    // Without --prune nothing is removed.
    let out = t.link(&[]);
    assert_eq!(
        summary(&out),
        "created 0, replaced 0, unchanged 2, pruned 0, conflicts 0"
    );
    assert!(fs::symlink_metadata(training.join("notes.txt")).is_ok());

    let out = t.link(&["--prune"]);
    assert_eq!(
        text(&out.stdout),
        format!(
            "prune {}\ncreated 0, replaced 0, unchanged 2, pruned 1, conflicts 0\n",
            training.join("notes.txt").display()
        )
    );
    assert!(fs::symlink_metadata(training.join("notes.txt")).is_err());
    assert_eq!(
        fs::read_link(training.join("foreign")).unwrap(),
        Path::new("/nonexistent/elsewhere")
    );
    assert_eq!(
        fs::read_to_string(training.join("real.txt")).unwrap(),
        "mine"
    );
    assert!(fs::symlink_metadata(t.target.join("unrelated/gone")).is_ok());
    assert!(fs::read_link(training.join("course/genome.fa")).is_ok());
}

#[test]
fn symlinked_directories_in_source_are_not_followed() {
    let t = Trees::new();
    symlink(&t.source, t.source.join("home/loop")).unwrap();
    let out = t.link(&[]);
    assert_eq!(
        summary(&out),
        "created 3, replaced 0, unchanged 0, pruned 0, conflicts 0"
    );
    assert!(text(&out.stderr).contains("loop"));
    assert!(fs::symlink_metadata(t.target.join("home/loop")).is_err());
}

#[test]
fn a_missing_or_non_directory_source_is_an_error() {
    let t = Trees::new();
    for source in [t.source.join("nope"), t.source.join("top.txt")] {
        let out = Command::new(env!("CARGO_BIN_EXE_autosquash"))
            .args(["link", "--source"])
            .arg(&source)
            .arg("--target")
            .arg(&t.target)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = text(&out.stderr);
        assert!(stderr.contains(&source.display().to_string()), "{stderr}");
    }
    assert_eq!(fs::read_dir(&t.target).unwrap().count(), 0);
}
