//! Every corpus image through a real FUSE mount, compared entry by entry and byte for byte
//! with the kernel's own squashfs mount of the same image; everyday tools run on the mount.

mod common;

use common::{
    Daemon, KernelMount, compare_trees, corpus, corpus_source, describe, only_special_files,
    open_tempdir, sh,
};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
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
    // Walked in listing order, files were pushed to the page cache ahead of their reads:
    // what was compared above includes what the kernel never asked for.
    let pushed = &daemon.status()["mounts"][0]["fuse"]["pushed"];
    assert!(
        pushed["files"].as_u64().unwrap() > 100,
        "too few files pushed ahead: {pushed}"
    );
    assert!(daemon.stop().success());
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
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
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
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
