//! Every corpus image through a real FUSE mount, compared entry by entry and byte for byte
//! with the kernel's own squashfs mount of the same image; everyday tools run on the mount.

mod common;

use common::{Daemon, KernelMount, corpus, corpus_source, open_tempdir, sh};
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Everything `stat`, `readlink` and `getxattr` say about one entry, comparable across mounts.
#[derive(Debug, PartialEq)]
struct Entry {
    mode: u32,
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

fn describe(path: &Path) -> Entry {
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

/// Walks `ours` and `theirs` in parallel; returns the number of entries compared.
fn compare_trees(ours: &Path, theirs: &Path) -> usize {
    let list = |p: &Path| -> BTreeMap<_, _> {
        std::fs::read_dir(p)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), e.path())
            })
            .collect()
    };
    let (a, b) = (list(ours), list(theirs));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "entries of {}",
        ours.display()
    );
    let mut n = 0;
    for (name, ours) in &a {
        let theirs = &b[name];
        let (x, y) = (describe(ours), describe(theirs));
        assert_eq!(x, y, "{}", ours.display());
        n += 1;
        let m = std::fs::symlink_metadata(ours).unwrap();
        if m.is_dir() {
            n += compare_trees(ours, theirs);
        } else if m.is_file() {
            let (x, y) = (std::fs::read(ours).unwrap(), std::fs::read(theirs).unwrap());
            assert!(x == y, "contents of {}", ours.display());
        }
    }
    n
}

/// `diff -r` reports every pair of special files ("X is a fifo while file Y is a fifo") even
/// when they agree; anything else in its output is a real difference.
fn only_special_files(diff_output: &str) -> bool {
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

#[test]
fn every_image_matches_the_kernel_squashfs_mount() {
    let dir = open_tempdir();
    let source = corpus_source(dir.path());
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let daemon = Daemon::start(&source, &mnt, &[]);
    let mut root: Vec<_> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    root.sort();
    let mut expected: Vec<_> = corpus().variants.iter().map(|v| v.name.clone()).collect();
    expected.sort();
    assert_eq!(root, expected);
    for variant in &corpus().variants {
        let kernel = KernelMount::new(&variant.image, &dir.path().join("k").join(&variant.name));
        let ours = mnt.join(&variant.name);
        assert_eq!(
            describe(&ours).mode,
            describe(&kernel.0).mode,
            "image root of {}",
            variant.name
        );
        let n = compare_trees(&ours, &kernel.0);
        assert!(n > 3000, "{}: only {n} entries compared", variant.name);
        // And the plain tools agree.
        let (_, out, err) = sh(&format!(
            "diff -r --no-dereference '{}' '{}'",
            ours.display(),
            kernel.0.display()
        ));
        assert!(
            only_special_files(&out) && err.is_empty(),
            "diff -r {}: {out}{err}",
            variant.name
        );
    }
    assert!(daemon.stop().success());
}

#[test]
fn everyday_tools_work_on_the_mount() {
    let dir = open_tempdir();
    let source = corpus_source(dir.path());
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _daemon = Daemon::start(&source, &mnt, &[]);
    let img = mnt.join("zstd");
    let variant = corpus().variants.iter().find(|v| v.name == "zstd").unwrap();
    let copy = dir.path().join("copy");
    for cmd in [
        format!("ls -lR '{}' > /dev/null", img.display()),
        format!(
            "find '{}' | wc -l | grep -q '^3[0-9][0-9][0-9]$'",
            img.display()
        ),
        format!("du -s '{}' > /dev/null", img.display()),
        format!(
            "tar cf - -C '{}' . | tar tf - | wc -l | grep -q '^3[0-9][0-9][0-9]$'",
            img.display()
        ),
        format!("stat '{}'/files/* > /dev/null", img.display()),
        format!("cp -a '{}' '{}'", img.display(), copy.display()),
        format!(
            "cd '{}' && find . -type f -exec sha256sum {{}} + > /dev/null",
            img.display()
        ),
    ] {
        let (ok, out, err) = sh(&cmd);
        assert!(ok, "{cmd}: {out}{err}");
    }
    let (_, out, err) = sh(&format!(
        "diff -r --no-dereference '{}' '{}'",
        copy.display(),
        variant.extracted.display()
    ));
    assert!(
        only_special_files(&out) && err.is_empty(),
        "cp -a copy differs: {out}{err}"
    );
    // mmap reads the same bytes as read.
    let (ok, out, err) = sh(&format!(
        "python3 -c 'import mmap,sys; f=open(sys.argv[1],\"rb\"); m=mmap.mmap(f.fileno(),0,prot=mmap.PROT_READ); \
         assert m[:] == open(sys.argv[2],\"rb\").read(); print(len(m))' '{}' '{}'",
        img.join(autosquash_testkit::corpus::RANDOM_3M_PATH)
            .display(),
        variant
            .extracted
            .join(autosquash_testkit::corpus::RANDOM_3M_PATH)
            .display()
    ));
    assert!(ok, "mmap: {out}{err}");
}

#[test]
fn thirty_two_concurrent_readers_get_the_right_bytes() {
    let dir = open_tempdir();
    let source = corpus_source(dir.path());
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _daemon = Daemon::start(&source, &mnt, &[]);
    // Every regular file of a few images, with its expected bytes' path.
    let mut files = Vec::new();
    for name in ["gzip-128k", "zstd-4k", "xz", "lz4"] {
        let v = corpus().variants.iter().find(|v| v.name == name).unwrap();
        let out = std::process::Command::new("find")
            .arg(".")
            .args(["-type", "f", "-print0"])
            .current_dir(&v.extracted)
            .output()
            .unwrap();
        assert!(out.status.success());
        for rel in out.stdout.split(|&b| b == 0).filter(|r| !r.is_empty()) {
            let rel = std::path::Path::new(std::ffi::OsStr::from_bytes(rel));
            files.push((mnt.join(name).join(rel), v.extracted.join(rel)));
        }
    }
    let files = Arc::new(files);
    let readers: Vec<_> = (0..32)
        .map(|t| {
            let files = files.clone();
            std::thread::spawn(move || {
                let mut checked = 0;
                for (ours, expected) in files
                    .iter()
                    .skip(t)
                    .step_by(32)
                    .chain(files.iter().take(20))
                {
                    let mut got = Vec::new();
                    std::fs::File::open(ours)
                        .unwrap()
                        .read_to_end(&mut got)
                        .unwrap();
                    assert!(
                        got == std::fs::read(expected).unwrap(),
                        "{}",
                        ours.display()
                    );
                    checked += 1;
                }
                checked
            })
        })
        .collect();
    let checked: usize = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(checked >= files.len());
}
