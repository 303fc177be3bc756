//! `autosquash pack` and `push` through the real binary: images built from directories and tar
//! archives are extracted with `unsquashfs` and compared with the source, byte for byte and
//! metadata; pushed images are read back from a real S3 server (Garage) with `autosquash cat`.
//! Root-tests ring (owners are set with lchown, extraction restores them, the kernel's squashfs
//! mounts the images); the push test also needs the s3-tests ring (Garage).

use autosquash_testkit::corpus::pseudo_random_bytes;
use autosquash_testkit::garage::Garage;
use autosquash_testkit::tree::metadata;
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

/// `got` must be `want` entry for entry: type, mode, owner (or `owner` when forced), mtime
/// (not the root's: backhand's writer cannot set it), size, bytes, link targets, devices.
fn compare_trees(want: &Path, got: &Path, owner: Option<(u32, u32)>) {
    let (w, g) = (metadata(want), metadata(got));
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
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
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
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
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
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
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
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
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
    let got = metadata(&out);
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
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
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
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
fn with_mksquashfs() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture(dir.path());
    let image = dir.path().join("mk.squash");
    pack(&src, &image, &["--mksquashfs", "--compression", "xz"]);
    compare_trees(&src, &unsquash(&image), None);
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
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
#[cfg_attr(
    not(all(feature = "root-tests", feature = "s3-tests")),
    ignore = "root-tests and s3-tests rings, need root and Garage: sudo bash tests/run"
)]
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

/// A tree built to look like real software, with everything squashfs can hold: relative,
/// absolute and 4000-byte symlinks, hard links (nlink 2 and 3), xattrs in the three namespaces
/// the kernel reads back (on files, a directory and the root), a fifo, a character device, a
/// sparse file, names with spaces, a newline, non-UTF-8 bytes and 255 bytes, a directory of
/// 3000 entries, duplicate files, setuid, setgid, sticky and 0000 modes, owners on files,
/// directories and symlinks, and mtimes set on every kind, the root's last.
fn software_tree(dir: &Path) -> PathBuf {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::symlink;
    let src = dir.join("software");
    for d in [
        "usr/bin",
        "usr/lib/python3/site",
        "etc/empty",
        "var/tmp",
        "many",
    ] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    let lib = pseudo_random_bytes(11, 300_000);
    std::fs::write(src.join("usr/lib/libfoo.so.1.2.3"), &lib).unwrap();
    std::fs::write(src.join("usr/lib/python3/copy-of-libfoo"), &lib).unwrap();
    symlink("libfoo.so.1.2.3", src.join("usr/lib/libfoo.so.1")).unwrap();
    symlink("libfoo.so.1", src.join("usr/lib/libfoo.so")).unwrap();
    symlink("/usr/lib/libfoo.so.1.2.3", src.join("usr/bin/absolute")).unwrap();
    let long = format!("{}target", "../".repeat(1330));
    assert!(long.len() > 3990);
    symlink(&long, src.join("usr/lib/long-link")).unwrap();
    let tool = src.join("usr/bin/tool");
    std::fs::write(&tool, pseudo_random_bytes(12, 70_000)).unwrap();
    set_mode(&tool, 0o4755);
    std::fs::hard_link(&tool, src.join("usr/bin/tool-again")).unwrap();
    for name in ["b", "c"] {
        std::fs::hard_link(&tool, src.join(format!("usr/lib/python3/{name}"))).unwrap();
    }
    std::fs::write(src.join("usr/lib/python3/site/a.py"), b"print('a')\n").unwrap();
    std::fs::hard_link(
        src.join("usr/lib/python3/site/a.py"),
        src.join("usr/lib/python3/site/also-a.py"),
    )
    .unwrap();
    xattr::set(
        &tool,
        "security.capability",
        // VFS_CAP_REVISION_2: permitted CAP_NET_BIND_SERVICE.
        &[0, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    )
    .unwrap();
    xattr::set(&tool, "user.comment", b"a tool").unwrap();
    xattr::set(src.join("usr/lib"), "trusted.overlay.opaque", b"y").unwrap();
    xattr::set(&src, "user.root", b"the root's own").unwrap();
    xattr::set(
        src.join("usr/lib/python3/site/a.py"),
        "user.mime_type",
        b"text/x-python",
    )
    .unwrap();
    sh(Command::new("mkfifo").arg(src.join("var/tmp/fifo")));
    sh(Command::new("mknod")
        .arg(src.join("var/tmp/null"))
        .args(["c", "1", "3"]));
    // Holes, data at 1 MiB, and a tail after the last hole.
    let sparse = std::fs::File::create(src.join("var/sparse.img")).unwrap();
    sparse.set_len(5 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"data in the middle", 1 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"end", (5 << 20) - 3).unwrap();
    let odd: [&[u8]; 6] = [
        b"with space",
        b"new\nline",
        b"-dash",
        b"\xff\xfe not utf-8",
        "ünïcödé".as_bytes(),
        &[b'n'; 255],
    ];
    for (i, name) in odd.iter().enumerate() {
        std::fs::write(src.join("etc").join(OsStr::from_bytes(name)), [i as u8; 3]).unwrap();
    }
    for i in 0..3000 {
        // A third of them duplicates of one another.
        let body = if i % 3 == 0 {
            b"same\n".to_vec()
        } else {
            format!("entry {i}\n").into_bytes()
        };
        std::fs::write(src.join(format!("many/module_{i:04}.py")), body).unwrap();
    }
    std::fs::write(src.join("etc/empty-file"), b"").unwrap();
    std::fs::write(src.join("etc/secret"), b"none may read\n").unwrap();
    set_mode(&src.join("etc/secret"), 0o000);
    set_mode(&src.join("var/tmp"), 0o1777);
    set_mode(&src.join("usr/lib/python3"), 0o2755);
    lchown(src.join("etc/secret"), Some(1234), Some(2345)).unwrap();
    lchown(src.join("usr/lib/python3"), Some(65534), Some(65534)).unwrap();
    lchown(src.join("usr/lib/libfoo.so"), Some(1000), Some(1001)).unwrap();
    for (path, time) in [
        ("usr/lib/libfoo.so", "@1400000000"),
        ("usr/lib/libfoo.so.1.2.3", "@1500000000"),
        ("var/tmp/fifo", "@1300000000"),
        ("var/tmp/null", "@1310000000"),
        ("etc/empty", "@1200000000"),
        ("var/tmp", "@1100000000"),
        ("", "@1600000000"),
    ] {
        sh(Command::new("touch")
            .args(["-h", "-d", time])
            .arg(src.join(path)));
    }
    src
}

/// What the test compares of one entry.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    kind: String,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    nlink: u64,
    /// The first path (in sorted order) of this entry's inode: hard links share it.
    inode_of: PathBuf,
    target: Option<PathBuf>,
    xattrs: Vec<(String, Vec<u8>)>,
    rdev: u64,
    bytes: Option<Vec<u8>>,
}

/// Every entry under `root` (the root itself as ""), as the kernel shows it.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Seen> {
    let metas = metadata(root);
    let mut first: BTreeMap<(u64, u64), PathBuf> = BTreeMap::new();
    for (rel, m) in &metas {
        first
            .entry((m.dev(), m.ino()))
            .or_insert_with(|| rel.clone());
    }
    metas
        .iter()
        .map(|(rel, m)| {
            let path = root.join(rel);
            let ft = m.file_type();
            let mut xattrs: Vec<_> = xattr::list(&path)
                .unwrap()
                .map(|n| {
                    let v = xattr::get(&path, &n).unwrap().unwrap_or_default();
                    (n.to_string_lossy().into_owned(), v)
                })
                .collect();
            xattrs.sort();
            let seen = Seen {
                kind: format!("{ft:?}"),
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
                mtime: m.mtime(),
                nlink: m.nlink(),
                inode_of: first[&(m.dev(), m.ino())].clone(),
                target: ft.is_symlink().then(|| std::fs::read_link(&path).unwrap()),
                xattrs,
                rdev: m.rdev(),
                bytes: ft.is_file().then(|| std::fs::read(&path).unwrap()),
            };
            (rel.clone(), seen)
        })
        .collect()
}

/// `got` must equal `want` entry for entry; the first difference is reported by path.
fn assert_same(want: &BTreeMap<PathBuf, Seen>, got: &BTreeMap<PathBuf, Seen>, what: &str) {
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>(),
        "{what}: entries differ"
    );
    for (rel, w) in want {
        let g = &got[rel];
        if w != g {
            let (mut w, mut g) = (format!("{w:?}"), format!("{g:?}"));
            w.truncate(2000);
            g.truncate(2000);
            panic!("{what}: {} differs:\nwant {w}\ngot  {g}", rel.display());
        }
    }
}

/// A read-only kernel squashfs mount of an image, unmounted on drop.
struct KernelMount(PathBuf);

impl KernelMount {
    fn new(image: &Path) -> Self {
        let dir = image.with_extension("mnt");
        std::fs::create_dir_all(&dir).unwrap();
        sh(Command::new("mount")
            .args(["-t", "squashfs", "-o", "loop,ro"])
            .arg(image)
            .arg(&dir));
        KernelMount(dir)
    }
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// With a forced owner every entry is that owner's; everything else stays.
fn owned_by(mut tree: BTreeMap<PathBuf, Seen>, uid: u32, gid: u32) -> BTreeMap<PathBuf, Seen> {
    for seen in tree.values_mut() {
        (seen.uid, seen.gid) = (uid, gid);
    }
    tree
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
fn software_tree_round_trips_through_the_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let src = software_tree(dir.path());
    let want = snapshot(&src);
    assert_eq!(want[Path::new("usr/bin/tool")].nlink, 4);
    assert!(!want[Path::new("")].xattrs.is_empty());

    let image = dir.path().join("ours.squash");
    pack(&src, &image, &["-q"]);
    let ours = snapshot(&KernelMount::new(&image).0);
    assert_same(&want, &ours, "pack of the directory");

    // mksquashfs packs the same tree to the same result.
    let mk = dir.path().join("mk.squash");
    sh(Command::new("mksquashfs").arg(&src).arg(&mk).args([
        "-noappend",
        "-no-progress",
        "-quiet",
        "-comp",
        "zstd",
    ]));
    let theirs = snapshot(&KernelMount::new(&mk).0);
    assert_same(&theirs, &ours, "pack vs mksquashfs");

    // A tarball of it, with its xattrs, hard links and owners.
    let archive = dir.path().join("software.tar.zst");
    sh(Command::new("tar")
        .args([
            "--format=posix",
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "--zstd",
            "-cf",
        ])
        .arg(&archive)
        .arg("-C")
        .arg(&src)
        .arg("."));
    let image = dir.path().join("from-tar.squash");
    pack(&archive, &image, &["-q"]);
    assert_same(
        &want,
        &snapshot(&KernelMount::new(&image).0),
        "pack of the tarball",
    );

    let image = dir.path().join("all-root.squash");
    pack(&archive, &image, &["-q", "--all-root"]);
    let got = snapshot(&KernelMount::new(&image).0);
    assert_same(&owned_by(snapshot(&src), 0, 0), &got, "pack --all-root");
}

/// Duplicates are stored once: two copies of 1 MiB of noise take the room of one, and so do
/// two copies of a file smaller than a block.
#[test]
fn duplicates_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("dups");
    std::fs::create_dir(&src).unwrap();
    let noise = pseudo_random_bytes(21, 1 << 20);
    std::fs::write(src.join("one"), &noise).unwrap();
    let image = dir.path().join("one.squash");
    pack(&src, &image, &["-q"]);
    let single = std::fs::metadata(&image).unwrap().len();
    std::fs::write(src.join("two"), &noise).unwrap();
    std::fs::write(src.join("small-1"), &noise[..50_000]).unwrap();
    std::fs::write(src.join("small-2"), &noise[..50_000]).unwrap();
    let image = dir.path().join("dups.squash");
    pack(&src, &image, &["-q"]);
    let doubled = std::fs::metadata(&image).unwrap().len();
    assert!(
        doubled < single + 50_000 + 8192,
        "{doubled} bytes with duplicates, {single} without"
    );
    compare_trees(&src, &unsquash(&image), None);
    // Blocks are compressed in parallel but written in order: the same tree, the same image.
    let again = dir.path().join("again.squash");
    pack(&src, &again, &["-q"]);
    assert!(std::fs::read(&image).unwrap() == std::fs::read(&again).unwrap());
}

/// `--level`: a higher zstd level makes a smaller image of compressible data; levels a codec
/// does not have are refused.
#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
fn compression_levels() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture(dir.path());
    let text: String = (0..200_000)
        .map(|i| format!("line {} of {}\n", i % 977, i % 13))
        .collect();
    std::fs::write(src.join("text"), text).unwrap();
    let size = |level: &str| {
        let image = dir.path().join(format!("level-{level}.squash"));
        pack(&src, &image, &["-q", "--level", level]);
        compare_trees(&src, &unsquash(&image), None);
        std::fs::metadata(&image).unwrap().len()
    };
    assert!(size("19") < size("1"));
    for (args, expect) in [
        (vec!["--level", "23"], "zstd levels are 1 to 22"),
        (
            vec!["--compression", "lz4", "--level", "3"],
            "lz4 has no compression levels",
        ),
    ] {
        let mut all = vec!["pack", s(&src), "-o", "/nonexistent/x.squash"];
        all.extend(args);
        let out = autosquash(&all);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{err}");
    }
}

/// What squashfs cannot store is an error naming the path, and nothing is written.
#[test]
fn unrepresentable_input_fails_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("out.squash");
    let src = dir.path().join("acl");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("file"), b"x").unwrap();
    // Only user., trusted. and security. xattrs exist in squashfs: an ACL (here one that
    // also lets uid 1000 read) has no place.
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (1u16, 6u16, u32::MAX),
        (2, 4, 1000),
        (4, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 4, u32::MAX),
    ] {
        acl.extend(tag.to_le_bytes());
        acl.extend(perm.to_le_bytes());
        acl.extend(id.to_le_bytes());
    }
    xattr::set(src.join("file"), "system.posix_acl_access", &acl).unwrap();
    let out = autosquash(&["pack", s(&src), "-o", s(&image)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("acl/file") && err.contains("system.posix_acl_access"),
        "{err}"
    );
    assert!(!image.exists());
}
