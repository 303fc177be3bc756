//! Every image of the corpus (all compressions, block sizes and fragment modes mksquashfs
//! offers) read through the engine and compared, entry by entry and byte for byte, with the
//! `unsquashfs` extraction of the same image (and with the source tree for what unsquashfs
//! does not reproduce: sockets and the root's own attributes).

mod common;

use autosquash_core::{FileKind, Image, Inode};
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::Metadata;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

fn kind_of(meta: &Metadata) -> FileKind {
    let t = meta.file_type();
    if t.is_dir() {
        FileKind::Directory
    } else if t.is_file() {
        FileKind::File
    } else if t.is_symlink() {
        FileKind::Symlink
    } else if t.is_block_device() {
        FileKind::BlockDevice
    } else if t.is_char_device() {
        FileKind::CharDevice
    } else if t.is_fifo() {
        FileKind::Fifo
    } else {
        FileKind::Socket
    }
}

fn sorted_xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out: Vec<_> = xattr::list(path)
        .unwrap()
        .map(|name| {
            let value = xattr::get(path, &name).unwrap().unwrap_or_default();
            (name.as_bytes().to_vec(), value)
        })
        .collect();
    out.sort();
    out
}

/// Compares one inode's metadata with what the host says about `path`.
fn compare_meta(image: &Image, inode: &Inode, path: &Path, check_nlink: bool) {
    let host = std::fs::symlink_metadata(path).unwrap();
    let at = path.display();
    assert_eq!(inode.kind, kind_of(&host), "type of {at}");
    assert_eq!(u32::from(inode.perm), host.mode() & 0o7777, "mode of {at}");
    assert_eq!(inode.mode(), host.mode(), "st_mode of {at}");
    assert_eq!(
        (inode.uid, inode.gid),
        (host.uid(), host.gid()),
        "owner of {at}"
    );
    assert_eq!(i64::from(inode.mtime), host.mtime(), "mtime of {at}");
    if check_nlink {
        assert_eq!(u64::from(inode.nlink), host.nlink(), "nlink of {at}");
    }
    match inode.kind {
        FileKind::File => assert_eq!(inode.size, host.size(), "size of {at}"),
        FileKind::Symlink => {
            let target = std::fs::read_link(path).unwrap();
            assert_eq!(
                image.readlink(inode).unwrap(),
                target.as_os_str().as_bytes(),
                "target of {at}"
            );
            assert_eq!(inode.size, host.size(), "symlink size of {at}");
        }
        FileKind::BlockDevice | FileKind::CharDevice => {
            let rdev = host.rdev();
            let (major, minor) = (libc::major(rdev), libc::minor(rdev));
            assert_eq!(inode.device(), (major, minor), "device of {at}");
        }
        _ => {}
    }
    assert_eq!(
        image
            .xattrs(inode)
            .unwrap()
            .into_iter()
            .collect::<BTreeSet<_>>(),
        sorted_xattrs(path).into_iter().collect::<BTreeSet<_>>(),
        "xattrs of {at}"
    );
}

/// Checks an image against its extraction; returns the number of entries compared.
async fn check_variant(variant: &autosquash_testkit::corpus::Variant, source: &Path) -> usize {
    let image = common::open_file(&variant.image).await.unwrap();
    assert_eq!(image.info().block_size, variant.block_size);
    let root = image.root().unwrap();
    compare_meta(&image, &root, source, false);
    let mut compared = 0;
    let mut chunk_sizes = [4096usize, 1 << 20, 100_000, 131_072, 7]
        .into_iter()
        .cycle();
    let mut seen = BTreeSet::new();
    for walked in image.walk(usize::MAX) {
        let inode = walked.inode.unwrap();
        let rel = OsStr::from_bytes(&walked.path);
        // Lookup by path finds the same inode as the listing.
        assert_eq!(image.resolve(&walked.path).unwrap().ino, inode.ino);
        let (host, src) = (variant.extracted.join(rel), source.join(rel));
        // unsquashfs skips sockets: compare those with the source tree.
        let reference = if inode.kind == FileKind::Socket {
            &src
        } else {
            &host
        };
        compare_meta(&image, &inode, reference, true);
        compared += 1;
        match inode.kind {
            FileKind::Directory => {
                assert!(image.lookup(&inode, b"no such name").unwrap().is_none());
            }
            FileKind::File => {
                let expected = std::fs::read(&host).unwrap();
                let chunk = chunk_sizes.next().unwrap();
                let got = common::read_all(&image, &inode, chunk).await.unwrap();
                assert!(
                    got == expected,
                    "contents of {} (chunk {chunk})",
                    host.display()
                );
            }
            _ => {}
        }
        seen.insert(walked.path);
    }
    // Every entry of the source tree, and nothing else.
    let in_source: BTreeSet<Vec<u8>> = autosquash_testkit::tree::metadata(source)
        .into_keys()
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| p.into_os_string().into_vec())
        .collect();
    assert_eq!(seen, in_source, "entries of {}", variant.image.display());
    compared
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
async fn every_variant_matches_unsquashfs() {
    let corpus = common::corpus();
    assert!(corpus.variants.len() >= 10);
    for variant in &corpus.variants {
        let compared = check_variant(variant, &corpus.source).await;
        assert!(compared > 3000, "{}: only {compared} entries", variant.name);
    }
}

/// Hard links share one inode number and report the right link count.
#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
async fn hard_links_are_one_inode() {
    let corpus = common::corpus();
    let image = common::open_file(&corpus.variants[0].image).await.unwrap();
    let names = ["hardlinks/a/one", "hardlinks/b/two", "hardlinks/c/three"];
    let inodes: Vec<_> = names
        .iter()
        .map(|n| image.resolve(n.as_bytes()).unwrap())
        .collect();
    for inode in &inodes {
        assert_eq!(inode.nlink, 3);
        assert_eq!(inode.ino, inodes[0].ino);
    }
}

/// Reads at arbitrary offsets match the file's bytes (block-level random access).
#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
async fn random_offsets_read_the_right_bytes() {
    let corpus = common::corpus();
    for variant in corpus
        .variants
        .iter()
        .filter(|v| ["zstd-4k", "gzip-1m", "xz"].contains(&v.name.as_str()))
    {
        let image = common::open_file(&variant.image).await.unwrap();
        let mut stack = vec![(image.root().unwrap(), variant.extracted.clone())];
        let mut seed = 7u64;
        while let Some((dir, path)) = stack.pop() {
            for entry in image.listing(&dir).unwrap().iter() {
                let inode = image.entry_inode(&dir, entry).unwrap();
                let host = path.join(OsStr::from_bytes(&entry.name));
                match inode.kind {
                    FileKind::Directory => stack.push((inode, host)),
                    FileKind::File if inode.size > 10_000 => {
                        let expected = std::fs::read(&host).unwrap();
                        for _ in 0..20 {
                            seed ^= seed << 13;
                            seed ^= seed >> 7;
                            seed ^= seed << 17;
                            let offset = seed % (inode.size + 10);
                            let len = (seed >> 20) as usize % 300_000;
                            let got = image.read(&inode, offset, len).await.unwrap();
                            let start = (offset as usize).min(expected.len());
                            let end = (start + len).min(expected.len());
                            assert!(
                                got[..] == expected[start..end],
                                "{} at {offset}+{len}",
                                host.display()
                            );
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}
