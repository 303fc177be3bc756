//! Fixture trees built on the host and packed with `mksquashfs` (fixed times, root ownership,
//! one processor, so every run gives the same bytes): the bases the crafted images patch.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

use super::rng::Rng;

pub(super) fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.byte()).collect()
}

fn text(len: usize) -> Vec<u8> {
    b"a hostile image is still a squashfs image\n"
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

pub(super) fn fresh_dir(path: &Path) {
    if path.exists() {
        fs::remove_dir_all(path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
    }
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    chmod(path, 0o755);
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn write_file(path: &Path, data: &[u8]) {
    fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    chmod(path, 0o644);
}

fn make_dir(path: &Path) {
    fs::create_dir(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    chmod(path, 0o755);
}

/// The small tree most patches start from. With `-b 4096`:
/// `a.txt` (fragment only), `big.bin` (3 blocks and a fragment tail), `dir/sub/{f,g}.txt`,
/// `hard1`/`hard2` (one extended file inode, nlink 2), `link -> a.txt`.
pub(super) fn build_small_tree(root: &Path) {
    fresh_dir(root);
    write_file(&root.join("a.txt"), &text(100));
    write_file(&root.join("big.bin"), &random_bytes(1, 3 * 4096 + 500));
    make_dir(&root.join("dir"));
    make_dir(&root.join("dir/sub"));
    write_file(&root.join("dir/sub/f.txt"), &text(30));
    write_file(&root.join("dir/sub/g.txt"), &text(40));
    write_file(&root.join("hard1"), &text(50));
    fs::hard_link(root.join("hard1"), root.join("hard2")).expect("hard link");
    symlink("a.txt", root.join("link")).expect("symlink");
}

/// One file of exactly one incompressible 128 KiB block (stored uncompressed in the image).
pub(super) fn build_bomb_tree(root: &Path) {
    fresh_dir(root);
    write_file(&root.join("block.bin"), &random_bytes(2, 128 * 1024));
}

pub(super) fn mksquashfs(src: &Path, out: &Path, args: &[&str]) -> Vec<u8> {
    if out.exists() {
        fs::remove_file(out).expect("remove old image");
    }
    let output = Command::new("mksquashfs")
        .arg(src)
        .arg(out)
        .args([
            "-noappend",
            "-no-progress",
            "-quiet",
            "-processors",
            "1",
            "-mkfs-time",
            "1600000000",
            "-all-time",
            "1600000000",
            "-all-root",
            "-no-xattrs",
        ])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run mksquashfs (is squashfs-tools installed?): {e}"));
    assert!(
        output.status.success(),
        "mksquashfs {} {args:?} failed: {}{}",
        out.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    fs::read(out).unwrap_or_else(|e| panic!("read {}: {e}", out.display()))
}

/// A 3000-deep chain `d/d/.../d`, described by a pseudo file so no path on the host exceeds
/// PATH_MAX (mksquashfs stops scanning a real tree at PATH_MAX).
pub(super) fn build_deep(work: &Path, depth: usize) -> Vec<u8> {
    let empty = work.join("deep-src");
    fresh_dir(&empty);
    let mut pf = String::new();
    let mut path = String::new();
    for _ in 0..depth {
        if !path.is_empty() {
            path.push('/');
        }
        path.push('d');
        pf.push_str(&path);
        pf.push_str(" d 755 0 0\n");
    }
    let pf_path = work.join("deep.pf");
    fs::write(&pf_path, pf).expect("write pseudo file");
    let pf_arg = pf_path.to_str().expect("UTF-8 work path");
    mksquashfs(
        &empty,
        &work.join("deep.squash"),
        &["-comp", "gzip", "-pf", pf_arg],
    )
}
