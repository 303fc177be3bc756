//! `autosquash pack` and `push` through the real binary: images built from directories and tar
//! archives are extracted with `unsquashfs` and compared with the source, byte for byte and
//! metadata; pushed images are read back from a real S3 server (Garage) with `autosquash cat`.
//! Runs as root (owners are set with lchown, extraction restores them).

use autosquash_testkit::corpus::pseudo_random_bytes;
use autosquash_testkit::garage::Garage;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn autosquash(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_autosquash"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must succeed.
fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A tree with files of several sizes (empty, fragment-sized, exactly one block, many blocks,
/// all zeros, a duplicate), modes 0600/0755/04755, non-root owners on a file, a directory and
/// a symlink, symlinks (one dangling), a fifo, a hard link and, where mknod works, a device.
fn fixture(dir: &Path) -> PathBuf {
    let src = dir.join("tree");
    let sub = src.join("sub/deep");
    std::fs::create_dir_all(&sub).unwrap();
    let big = pseudo_random_bytes(1, (1 << 20) + 17);
    let files: [(&str, Vec<u8>, u32); 8] = [
        ("empty", vec![], 0o644),
        ("small.txt", b"hello, squashfs\n".to_vec(), 0o600),
        ("block.bin", pseudo_random_bytes(2, 128 << 10), 0o644),
        ("big.bin", big.clone(), 0o644),
        ("dup.bin", big, 0o444),
        ("zeros.bin", vec![0; 512 << 10], 0o644),
        ("run.sh", b"#!/bin/sh\necho hi\n".to_vec(), 0o755),
        ("sub/deep/setuid", pseudo_random_bytes(3, 5000), 0o4755),
    ];
    for (name, data, mode) in files {
        std::fs::write(src.join(name), data).unwrap();
        set_mode(&src.join(name), mode);
    }
    std::fs::write(src.join("sub/owned.txt"), b"owned by 1234:2345\n").unwrap();
    lchown(src.join("sub/owned.txt"), Some(1234), Some(2345)).unwrap();
    set_mode(&src.join("sub"), 0o750);
    lchown(src.join("sub"), Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::symlink("small.txt", src.join("link")).unwrap();
    std::os::unix::fs::symlink("../nowhere/at/all", src.join("sub/dangling")).unwrap();
    lchown(src.join("sub/dangling"), Some(1234), Some(2345)).unwrap();
    std::fs::hard_link(src.join("small.txt"), src.join("hardlink.txt")).unwrap();
    sh(Command::new("mkfifo").arg(src.join("fifo")));
    // Containers without CAP_MKNOD cannot make devices; the rest of the test still holds.
    let _ = Command::new("mknod")
        .arg(src.join("null"))
        .args(["c", "1", "3"])
        .output();
    for (name, time) in [("big.bin", "@1500000000"), ("link", "@1400000000")] {
        sh(Command::new("touch")
            .args(["-h", "-d", time])
            .arg(src.join(name)));
    }
    src
}

/// Every entry under `root` by relative path (the root itself as "").
fn walk(root: &Path) -> BTreeMap<PathBuf, std::fs::Metadata> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![PathBuf::new()];
    out.insert(PathBuf::new(), std::fs::symlink_metadata(root).unwrap());
    while let Some(rel) = dirs.pop() {
        for entry in std::fs::read_dir(root.join(&rel)).unwrap() {
            let rel = rel.join(entry.unwrap().file_name());
            let meta = std::fs::symlink_metadata(root.join(&rel)).unwrap();
            if meta.is_dir() {
                dirs.push(rel.clone());
            }
            out.insert(rel, meta);
        }
    }
    out
}

/// `got` must be `want` entry for entry: type, mode, owner (or `owner` when forced), mtime
/// (not the root's: backhand's writer cannot set it), size, bytes, link targets, devices.
fn compare_trees(want: &Path, got: &Path, owner: Option<(u32, u32)>) {
    let (w, g) = (walk(want), walk(got));
    assert_eq!(
        w.keys().collect::<Vec<_>>(),
        g.keys().collect::<Vec<_>>(),
        "entries differ"
    );
    for (rel, wm) in &w {
        let gm = &g[rel];
        let at = rel.display();
        assert_eq!(wm.file_type(), gm.file_type(), "type of {at}");
        assert_eq!(wm.mode() & 0o7777, gm.mode() & 0o7777, "mode of {at}");
        let (uid, gid) = owner.unwrap_or((wm.uid(), wm.gid()));
        assert_eq!((uid, gid), (gm.uid(), gm.gid()), "owner of {at}");
        if !rel.as_os_str().is_empty() {
            assert_eq!(wm.mtime(), gm.mtime(), "mtime of {at}");
        }
        if wm.is_file() {
            assert_eq!(wm.len(), gm.len(), "size of {at}");
            let (a, b) = (
                std::fs::read(want.join(rel)).unwrap(),
                std::fs::read(got.join(rel)).unwrap(),
            );
            assert!(a == b, "content of {at}");
        }
        if wm.file_type().is_symlink() {
            assert_eq!(
                std::fs::read_link(want.join(rel)).unwrap(),
                std::fs::read_link(got.join(rel)).unwrap(),
                "target of {at}"
            );
        }
        assert_eq!(wm.rdev(), gm.rdev(), "device of {at}");
    }
}

/// Extracts `image` with unsquashfs into a fresh directory.
fn unsquash(image: &Path) -> PathBuf {
    let out = image.with_extension("extracted");
    sh(Command::new("unsquashfs")
        .args(["-no-progress", "-d"])
        .arg(&out)
        .arg(image));
    out
}

fn pack(src: &Path, image: &Path, extra: &[&str]) -> String {
    let mut args = vec!["pack", s(src), "-o", s(image)];
    args.extend(extra);
    ok(autosquash(&args))
}

#[test]
fn directory_matches_unsquashfs() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture(dir.path());
    let image = dir.path().join("tree.squash");
    let summary = pack(&src, &image, &[]);
    assert!(
        summary.contains("files") && summary.contains("zstd"),
        "{summary}"
    );
    assert!(!dir.path().join("tree.squash.tmp").exists());
    compare_trees(&src, &unsquash(&image), None);
    // The root keeps the source directory's mode and owner.
    let listing = String::from_utf8(
        Command::new("unsquashfs")
            .args(["-lln"])
            .arg(&image)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        listing.contains("1234/2345") && listing.contains("-rwsr-xr-x"),
        "{listing}"
    );
}

#[test]
fn every_compression_and_block_size() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture(dir.path());
    for compression in ["gzip", "xz", "lz4", "lzo", "none", "zstd"] {
        for block in ["4K", "1M"] {
            let image = dir.path().join(format!("{compression}-{block}.squash"));
            pack(
                &src,
                &image,
                &["--compression", compression, "--block-size", block, "-q"],
            );
            compare_trees(&src, &unsquash(&image), None);
        }
    }
    let out = autosquash(&["pack", s(&src), "--block-size", "3K"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("power of two"));
}

#[test]
fn tar_archives_by_content() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture(dir.path());
    // Names that do not say what the files are: the format is found from the content.
    let archives = [
        ("plain.data", vec!["-cf"]),
        ("gz.tgz", vec!["-czf"]),
        ("xz.data", vec!["-cJf"]),
        ("zst.tar.zst", vec!["--zstd", "-cf"]),
    ];
    for (name, flags) in archives {
        let archive = dir.path().join(name);
        sh(Command::new("tar")
            .args(flags)
            .arg(&archive)
            .arg("-C")
            .arg(&src)
            .arg("."));
        let image = dir.path().join(format!("{name}.squash"));
        pack(&archive, &image, &[]);
        compare_trees(&src, &unsquash(&image), None);
    }
}

#[test]
fn tar_without_directory_entries() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture(dir.path());
    let archive = dir.path().join("files.tar.gz");
    sh(Command::new("tar")
        .args(["--no-recursion", "-czf"])
        .arg(&archive)
        .arg("-C")
        .arg(&src)
        .args(["sub/deep/setuid", "small.txt", "hardlink.txt"]));
    let image = dir.path().join("files.squash");
    pack(&archive, &image, &[]);
    let out = unsquash(&image);
    let got = walk(&out);
    let names: Vec<_> = got.keys().map(|p| p.display().to_string()).collect();
    assert_eq!(
        names,
        [
            "",
            "hardlink.txt",
            "small.txt",
            "sub",
            "sub/deep",
            "sub/deep/setuid"
        ]
    );
    // Implied directories: 0755 root:root.
    assert_eq!(got[Path::new("sub")].mode() & 0o7777, 0o755);
    assert_eq!(got[Path::new("sub")].uid(), 0);
    // The hard link (stored by tar as a link) is a copy with the same bytes and mode.
    assert_eq!(
        std::fs::read(out.join("hardlink.txt")).unwrap(),
        b"hello, squashfs\n"
    );
    assert_eq!(got[Path::new("hardlink.txt")].mode() & 0o7777, 0o600);
    assert_eq!(got[Path::new("sub/deep/setuid")].mode() & 0o7777, 0o4755);
}

#[test]
fn forced_owner() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture(dir.path());
    let image = dir.path().join("forced.squash");
    pack(&src, &image, &["--force-uid", "42", "--force-gid", "43"]);
    compare_trees(&src, &unsquash(&image), Some((42, 43)));
    let archive = dir.path().join("forced.tar.zst");
    sh(Command::new("tar")
        .args(["--zstd", "-cf"])
        .arg(&archive)
        .arg("-C")
        .arg(&src)
        .arg("."));
    let image = dir.path().join("forced-tar.squash");
    pack(&archive, &image, &["--force-uid", "7", "--force-gid", "8"]);
    compare_trees(&src, &unsquash(&image), Some((7, 8)));
}

#[test]
fn with_mksquashfs() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture(dir.path());
    let image = dir.path().join("mk.squash");
    pack(&src, &image, &["--mksquashfs", "--compression", "xz"]);
    compare_trees(&src, &unsquash(&image), None);
}

#[test]
fn bad_sources_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("out.squash");
    let fails = |src: &Path, expect: &str| {
        let out = autosquash(&["pack", s(src), "-o", s(&image)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{src:?} packed");
        assert!(err.contains(expect), "{src:?}: {err}");
        assert!(!image.exists() && !dir.path().join("out.squash.tmp").exists());
    };
    fails(&dir.path().join("missing"), "No such file");

    let junk = dir.path().join("junk.tar.gz");
    std::fs::write(&junk, pseudo_random_bytes(9, 10_000)).unwrap();
    fails(&junk, "not a directory nor a tar archive");

    let src = fixture(dir.path());
    let archive = dir.path().join("whole.tgz");
    sh(Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(&src)
        .arg("."));
    let data = std::fs::read(&archive).unwrap();
    let cut = dir.path().join("cut.tgz");
    std::fs::write(&cut, &data[..data.len() / 2]).unwrap();
    fails(&cut, "cut.tgz");

    let gz_junk = dir.path().join("junk.gz");
    sh(Command::new("sh").arg("-c").arg(format!(
        "head -c 5000 /dev/urandom | gzip > {}",
        s(&gz_junk)
    )));
    fails(&gz_junk, "does not hold a tar archive");

    let image_src = dir.path().join("already.squash");
    pack(&src, &image_src, &["-q"]);
    fails(&image_src, "already a squashfs image");
}

fn push(garage: &Garage, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_autosquash"))
        .arg("push")
        .args(args)
        .args(["--endpoint-url", &garage.endpoint, "--force-path-style"])
        .envs(garage.env())
        .output()
        .unwrap()
}

fn cat(garage: &Garage, url: &str, path: &str) -> Vec<u8> {
    let out = Command::new(env!("CARGO_BIN_EXE_autosquash"))
        .args(["cat", url, path])
        .args(["--endpoint-url", &garage.endpoint, "--force-path-style"])
        .envs(garage.env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cat {url} {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn push_to_s3() {
    let garage = Garage::start("bucket");
    let dir = tempfile::tempdir().unwrap();

    // A small tree: one PUT.
    let src = fixture(dir.path());
    let out = ok(push(&garage, &[s(&src), "s3://bucket/images/small.squash"]));
    assert!(out.contains("s3://bucket/images/small.squash"), "{out}");
    let url = "s3://bucket/images/small.squash";
    assert_eq!(cat(&garage, url, "small.txt"), b"hello, squashfs\n");
    assert_eq!(
        cat(&garage, url, "big.bin"),
        std::fs::read(src.join("big.bin")).unwrap()
    );

    // 40 MiB that does not compress: a multipart upload of three parts; the name comes from
    // the directory when the URL ends with '/'.
    let big = dir.path().join("big");
    std::fs::create_dir_all(big.join("d")).unwrap();
    let mut files = Vec::new();
    for i in 0..5u64 {
        let name = format!("d/part{i}.bin");
        let data = pseudo_random_bytes(100 + i, (8 << 20) + i as usize);
        std::fs::write(big.join(&name), &data).unwrap();
        files.push((name, data));
    }
    let out = ok(push(&garage, &[s(&big), "s3://bucket/images/"]));
    let etag = out.rsplit("ETag ").next().unwrap().trim();
    assert!(
        etag.trim_matches('"').ends_with("-3"),
        "not multipart: {out}"
    );
    for (name, data) in &files {
        assert!(
            cat(&garage, "s3://bucket/images/big.squash", name) == *data,
            "{name} differs"
        );
    }

    // An image is uploaded as is.
    let image = dir.path().join("prebuilt.squash");
    pack(&src, &image, &["-q"]);
    ok(push(
        &garage,
        &[s(&image), "s3://bucket/other/prebuilt.squash"],
    ));
    assert_eq!(
        cat(
            &garage,
            "s3://bucket/other/prebuilt.squash",
            "sub/owned.txt"
        ),
        b"owned by 1234:2345\n"
    );

    let listing = ok(Command::new(env!("CARGO_BIN_EXE_autosquash"))
        .args(["ls", "s3://bucket/images/"])
        .args(["--endpoint-url", &garage.endpoint, "--force-path-style"])
        .envs(garage.env())
        .output()
        .unwrap());
    assert_eq!(listing.lines().collect::<Vec<_>>(), ["big", "small"]);

    // A missing bucket is an error that says so.
    let out = push(&garage, &[s(&image), "s3://nosuchbucket/x.squash"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nosuchbucket"), "{err}");
}
