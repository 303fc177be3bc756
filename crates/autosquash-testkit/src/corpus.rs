//! A corpus of squashfs images generated at test time with Debian's squashfs-tools.
//!
//! [`build_source_tree`] creates a directory tree that exercises every kind of inode, directory
//! layout and data layout `mksquashfs` 4.5.1 can produce; [`build`] packs it with a set of
//! compressor / block-size / fragment settings and extracts each image again with `unsquashfs`,
//! so engine tests can compare what they serve against a reference extraction byte for byte.
//!
//! Everything here panics on failure: it is test support, and a broken fixture must stop the test
//! with a message naming what went wrong.

use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Base of the modification times given to the source tree: every path gets `MTIME_BASE + n`
/// for a distinct `n` (assigned in sorted, depth-first, children-before-parent order).
pub const MTIME_BASE: i64 = 1_600_000_000;

/// Superblock creation time passed to every `mksquashfs` run (`-mkfs-time`), so images are
/// reproducible. `-all-time` is never passed: inode mtimes are those of the source tree.
pub const MKFS_TIME: u32 = 1_600_000_000;

/// Length of the incompressible file `files/random-3m`.
pub const RANDOM_3M_LEN: usize = 3 * MIB;
/// Seed used by [`pseudo_random_bytes`] for `files/random-3m`.
pub const RANDOM_3M_SEED: u64 = 0x5eed_0003;
/// Path of the 3 MiB incompressible file, relative to the source root.
pub const RANDOM_3M_PATH: &str = "files/random-3m";

/// Apparent length of the sparse file `files/sparse` (5 MiB plus an unaligned tail).
pub const SPARSE_LEN: u64 = 5 * MIB as u64 + 1234;

/// Number of entries in the large directory `big-dir`.
pub const BIG_DIR_ENTRIES: usize = 3000;

/// Depth of the `deep` tree (`deep/d00/d01/.../d39`).
pub const DEEP_LEVELS: usize = 40;

/// One image of the corpus.
#[derive(Debug, Clone)]
pub struct Variant {
    /// Short name, e.g. `"gzip-128k"`, `"zstd-4k"`, `"uncompressed"`.
    pub name: String,
    /// The `.squash` file.
    pub image: PathBuf,
    /// `unsquashfs -d` output of that image (run as root so owners, devices, xattrs are kept).
    pub extracted: PathBuf,
    /// Data block size the image was built with.
    pub block_size: u32,
}

/// The source tree and every image built from it.
#[derive(Debug, Clone)]
pub struct Corpus {
    /// Root of the source tree (see [`build_source_tree`]).
    pub source: PathBuf,
    /// One entry per `mksquashfs` configuration.
    pub variants: Vec<Variant>,
}

/// A `mksquashfs` configuration of the corpus.
struct VariantSpec {
    name: &'static str,
    block_size: u32,
    args: &'static [&'static str],
}

/// The configurations [`build`] produces. Every one also gets `-xattrs` and the common arguments
/// added by [`mksquashfs`].
const VARIANTS: &[VariantSpec] = &[
    VariantSpec {
        name: "gzip-128k",
        block_size: 128 * 1024,
        args: &["-comp", "gzip"],
    },
    VariantSpec {
        name: "xz",
        block_size: 128 * 1024,
        args: &["-comp", "xz"],
    },
    VariantSpec {
        name: "lzo",
        block_size: 128 * 1024,
        args: &["-comp", "lzo"],
    },
    VariantSpec {
        name: "lz4",
        block_size: 128 * 1024,
        args: &["-comp", "lz4"],
    },
    VariantSpec {
        name: "zstd",
        block_size: 128 * 1024,
        args: &["-comp", "zstd"],
    },
    VariantSpec {
        name: "zstd-4k",
        block_size: 4 * 1024,
        args: &["-comp", "zstd", "-b", "4K"],
    },
    VariantSpec {
        name: "gzip-1m",
        block_size: 1024 * 1024,
        args: &["-comp", "gzip", "-b", "1M"],
    },
    VariantSpec {
        name: "no-fragments",
        block_size: 128 * 1024,
        args: &["-comp", "zstd", "-no-fragments"],
    },
    VariantSpec {
        name: "always-fragments",
        block_size: 128 * 1024,
        args: &["-comp", "zstd", "-always-use-fragments"],
    },
    VariantSpec {
        name: "uncompressed",
        block_size: 128 * 1024,
        args: &["-noI", "-noD", "-noF", "-noX"],
    },
];

/// Builds the source tree (`dir/source`) and every variant under `dir` (`dir/<name>.squash`,
/// extracted to `dir/<name>.extracted`). Panics with a clear message (naming the missing tool) if
/// squashfs-tools is absent. Must run as root (device nodes, `lchown`, `trusted.*` xattrs).
///
/// Variants: `gzip-128k`, `xz`, `lzo`, `lz4`, `zstd` (all 128 KiB blocks), `zstd-4k`, `gzip-1m`,
/// `no-fragments` (zstd), `always-fragments` (zstd, `-always-use-fragments`) and `uncompressed`
/// (`-noI -noD -noF -noX`, gzip named in the superblock but nothing compressed). `lzma` (legacy,
/// not supported by the kernel) is not built.
///
/// Every image contains all fourteen inode types (basic and extended directory, file, symlink,
/// block and char device, fifo, socket), a directory with an index, sparse and hard-linked files,
/// out-of-line xattr values and a 4095-byte symlink target. Not covered: files over 4 GiB, `lzma`
/// (legacy) compression, images without an export table (`-no-exports`) or without xattrs.
///
/// Checked with squashfs-tools 4.5.1 as root: the extraction reproduces everything the tree
/// contains — file bytes, modes including setuid/setgid/sticky, uid/gid, device numbers (including
/// a large minor), fifos, **sockets**, symlink targets and mtimes, `user.*` and `trusted.*`
/// xattrs (also on symlinks, devices, fifos and sockets), hard links (one inode, nlink 3), names
/// with arbitrary bytes, mtimes of files and directories, and the root directory's mode, owner and
/// mtime. What it does **not** reproduce, so engine tests should compare against `source` (or not
/// at all) instead:
///
/// - **Sparse allocation**: compare contents, never `st_blocks`. `files/sparse` (holes on disk)
///   gets an extended file inode with a non-zero sparse count, and the extraction has holes only
///   for whole all-zero blocks of the image's block size. `files/zero-blocks` (not sparse on disk)
///   also gets zero-length ("sparse") block-list entries, but in a *basic* file inode, and is
///   extracted fully allocated.
/// - **atime / ctime, inode numbers, directory nlink**: the image stores none of these as on the
///   host (mtime only; squashfs inode numbers are its own).
pub fn build(dir: &Path) -> Corpus {
    crate::rings::require_root("the squashfs corpus (device nodes, owners, trusted.* xattrs)");
    require_tool("mksquashfs");
    require_tool("unsquashfs");
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let source = build_source_tree(dir);

    let jobs: Mutex<Vec<&VariantSpec>> = Mutex::new(VARIANTS.iter().rev().collect());
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, VARIANTS.len());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let job = jobs.lock().unwrap_or_else(|e| e.into_inner()).pop();
                    let Some(spec) = job else { break };
                    build_variant(&source, dir, spec);
                }
            });
        }
    });

    describe(dir)
}

/// The corpus [`build`] wrote into `dir`.
fn describe(dir: &Path) -> Corpus {
    let variants = VARIANTS
        .iter()
        .map(|spec| Variant {
            name: spec.name.to_owned(),
            image: dir.join(format!("{}.squash", spec.name)),
            extracted: dir.join(format!("{}.extracted", spec.name)),
            block_size: spec.block_size,
        })
        .collect();
    Corpus {
        source: dir.join("source"),
        variants,
    }
}

/// The corpus in `<dir>/corpus-<fingerprint>`, built once and shared by every test binary of
/// a run, and by later runs while this generator, squashfs-tools and the user stay the same
/// (they make the fingerprint). The first binary builds it under an exclusive lock; the others
/// wait for the lock and find it done. Pass the test target's `env!("CARGO_TARGET_TMPDIR")`.
/// Users must not change it.
pub fn shared(dir: &Path) -> Corpus {
    crate::rings::require_root("the squashfs corpus (device nodes, owners, trusted.* xattrs)");
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let lock_path = dir.join("corpus.lock");
    let lock = fs::File::create(&lock_path)
        .unwrap_or_else(|e| panic!("create {}: {e}", lock_path.display()));
    lock.lock()
        .unwrap_or_else(|e| panic!("lock {}: {e}", lock_path.display()));
    let name = format!("corpus-{:016x}", fingerprint());
    let built = dir.join(&name);
    let done = built.join("done");
    if !done.exists() {
        // Older fingerprints' corpora (and a build that died half way) go.
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let stale = entry.file_name().to_string_lossy().starts_with("corpus-");
            if stale && entry.path().is_dir() {
                fs::remove_dir_all(entry.path())
                    .unwrap_or_else(|e| panic!("remove {}: {e}", entry.path().display()));
            }
        }
        build(&built);
        fs::set_permissions(&built, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(&done, b"").unwrap_or_else(|e| panic!("write {}: {e}", done.display()));
    }
    describe(&built)
}

/// What the corpus depends on: this file's source, the squashfs-tools version, the user.
fn fingerprint() -> u64 {
    let tools = Command::new("mksquashfs")
        .arg("-version")
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    let euid = crate::rings::euid();
    // FNV-1a: stable across runs and Rust versions, unlike std's hashers.
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for bytes in [
        include_bytes!("corpus.rs").as_slice(),
        &tools,
        &euid.to_le_bytes(),
    ] {
        for &b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

fn build_variant(source: &Path, dir: &Path, spec: &VariantSpec) {
    let image = dir.join(format!("{}.squash", spec.name));
    let extracted = dir.join(format!("{}.extracted", spec.name));
    let mut args = vec!["-xattrs"];
    args.extend_from_slice(spec.args);
    mksquashfs(source, &image, &args);
    unsquashfs(&image, &extracted);
}

/// Runs `mksquashfs src image` with the common arguments (`-noappend -no-progress -quiet
/// -mkfs-time 1600000000 -exit-on-error`) followed by `args`. Panics with stderr on failure.
pub fn mksquashfs(src: &Path, image: &Path, args: &[&str]) {
    require_tool("mksquashfs");
    let mkfs_time = MKFS_TIME.to_string();
    let mut cmd = Command::new("mksquashfs");
    cmd.arg(src).arg(image).args([
        "-noappend",
        "-no-progress",
        "-quiet",
        "-exit-on-error",
        "-mkfs-time",
        &mkfs_time,
    ]);
    cmd.args(args);
    run(cmd, "mksquashfs");
}

/// Runs `unsquashfs -no-progress -quiet -d out image` (`out` must not exist). Panics with stderr
/// on failure.
pub fn unsquashfs(image: &Path, out: &Path) {
    require_tool("unsquashfs");
    assert!(
        fs::symlink_metadata(out).is_err(),
        "unsquashfs destination {} already exists",
        out.display()
    );
    let mut cmd = Command::new("unsquashfs");
    cmd.args(["-no-progress", "-quiet", "-d"])
        .arg(out)
        .arg(image);
    run(cmd, "unsquashfs");
}

fn run(mut cmd: Command, tool: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {tool} (is squashfs-tools installed? apt-get install squashfs-tools): {e}"
        )
    });
    if !out.status.success() {
        panic!(
            "{cmd:?} failed with {}\n--- stderr ---\n{}\n--- stdout ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    out
}

/// Panics with a message naming `tool` if it cannot be found in `PATH`.
fn require_tool(tool: &str) {
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/sbin:/usr/bin"));
    let found = std::env::split_paths(&path).any(|d| {
        fs::metadata(d.join(tool))
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    });
    assert!(
        found,
        "`{tool}` not found in PATH: the squashfs test corpus needs squashfs-tools \
         (Debian/Ubuntu: apt-get install squashfs-tools)"
    );
}

/// A deterministic pseudo-random byte generator (splitmix64) for incompressible file contents.
/// The same `seed` and `len` always give the same bytes, and a shorter output is a prefix of a
/// longer one.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Compressible text: numbered lines of a repeated sentence, exactly `len` bytes.
fn text_bytes(tag: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 128);
    let mut line = 0usize;
    while out.len() < len {
        out.extend_from_slice(
            format!("{tag} line {line:06}: the quick brown fox jumps over the lazy dog\n")
                .as_bytes(),
        );
        line += 1;
    }
    out.truncate(len);
    out
}

/// Builds only the source tree, at `dir/source` (which must not exist), and returns its path.
/// Must run as root.
///
/// Layout (relative to the returned root):
///
/// - `files/`: `empty`, `one-byte`, `4095`, `4096`, `131072`, `131073` (pseudo-random),
///   `random-3m` ([`RANDOM_3M_PATH`]), `text-2m` (compressible), `sparse` (holes, data at 0,
///   2 MiB and the end, [`SPARSE_LEN`] bytes), `zero-blocks` (random data with all-zero ranges
///   aligned to 4 KiB, 128 KiB and 1 MiB blocks), `dup-a`/`dup-b` (identical 300 KiB),
///   `small/` (48 small text files of 1 B to ~7 KiB, plus an identical pair).
/// - `big-dir/`: [`BIG_DIR_ENTRIES`] entries with names of varying length (files, a few
///   subdirectories and symlinks), large enough for directory indexes.
/// - `deep/d00/.../d39/leaf.txt` ([`DEEP_LEVELS`] levels).
/// - `links/`: `short` → `target`, `rel` → `../x`, `dangling` → `does/not/exist`,
///   `long` → a 4095-byte target (dangling), `chowned` → `target` (owned by 1000:1000).
/// - `dev/`: `block` (8,1), `char` (1,3), `fifo`, `socket`, and with a `trusted.*` xattr (so
///   extended inodes): `block-xattr` (259,65537), `char-xattr` (4,1), `socket-xattr`.
/// - `hardlinks/{a/one,b/two,c/three}`: one inode, nlink 3.
/// - `perms/`: `uid-1000` (1000:1000), `uid-12345` (12345:54321), `mode-0600`, `mode-0755`,
///   `mode-4755`, `mode-2755`, `mode-0000`, `sticky-dir/` (1777), `dir-0700/` (owned 1000:1000).
/// - `secret` (root, 0600), `setuid-bin` (root, 4755), `x` (target of `links/rel`).
/// - `xattrs/`: `file` (`user.empty` = "", `user.big` = 3000 bytes, `user.small`,
///   `trusted.overlay`), `dir/` (`user.dir`, `trusted.dir`), `shared-1`/`shared-2` (same
///   `user.big` value so it is stored out of line, different `user.n`), `same-1`/`same-2`
///   (identical xattr sets), `link` (symlink with `trusted.link`), `fifo` (with `user.*` refused
///   by Linux on special files, so only `trusted.fifo`).
/// - `names/`: entries named with a space, a newline, a tab, `é`, `日本語`, a 0xff byte, a
///   backslash, 255 bytes, a leading `-`, a leading `.`, and `..x`.
/// - `empty-dir/`.
///
/// All paths have distinct mtimes `MTIME_BASE + n`, set last, children before parents.
pub fn build_source_tree(dir: &Path) -> PathBuf {
    let root = dir.join("source");
    assert!(
        fs::symlink_metadata(&root).is_err(),
        "source tree {} already exists",
        root.display()
    );
    mkdir(&root);
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();

    make_files(&root.join("files"));
    make_big_dir(&root.join("big-dir"));
    make_deep(&root.join("deep"));
    make_links(&root);
    make_devices(&root.join("dev"));
    make_hardlinks(&root.join("hardlinks"));
    make_perms(&root);
    make_xattrs(&root.join("xattrs"));
    make_names(&root.join("names"));
    mkdir(&root.join("empty-dir"));

    let mut next = MTIME_BASE;
    set_mtimes(&root, &mut next);
    root
}

fn mkdir(path: &Path) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
}

fn write(path: &Path, data: &[u8]) {
    fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {:o} {}: {e}", mode, path.display()));
}

fn chown(path: &Path, uid: u32, gid: u32) {
    lchown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("lchown {uid}:{gid} {}: {e}", path.display()));
}

fn make_symlink(target: impl AsRef<Path>, link: &Path) {
    symlink(target.as_ref(), link).unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
}

fn make_files(d: &Path) {
    mkdir(d);
    write(&d.join("empty"), b"");
    write(&d.join("one-byte"), b"x");
    for (name, len, seed) in [
        ("4095", 4095, 1),
        ("4096", 4096, 2),
        ("131072", 131_072, 3),
        ("131073", 131_073, 4),
    ] {
        write(&d.join(name), &pseudo_random_bytes(seed, len));
    }
    write(
        &d.join("random-3m"),
        &pseudo_random_bytes(RANDOM_3M_SEED, RANDOM_3M_LEN),
    );
    write(&d.join("text-2m"), &text_bytes("text-2m", 2 * MIB));

    // Sparse: holes everywhere except at 0, 2 MiB and the last bytes.
    let sparse = d.join("sparse");
    let mut f = fs::File::create(&sparse).unwrap();
    f.set_len(SPARSE_LEN).unwrap();
    f.write_all(b"sparse file start\n").unwrap();
    f.seek(SeekFrom::Start(2 * MIB as u64)).unwrap();
    f.write_all(&pseudo_random_bytes(5, 4096)).unwrap();
    f.seek(SeekFrom::Start(SPARSE_LEN - 10)).unwrap();
    f.write_all(b"sparse end").unwrap();
    drop(f);

    // Random data with all-zero ranges that are whole blocks for 4K, 128K and 1M block sizes:
    // [0,128K) random, [128K,256K) zero, [256K,1M) random, [1M,2M) zero, [2M,2M+777) random.
    let mut zb = pseudo_random_bytes(6, 2 * MIB + 777);
    zb[128 * KIB..256 * KIB].fill(0);
    zb[MIB..2 * MIB].fill(0);
    write(&d.join("zero-blocks"), &zb);

    // Duplicate contents (mksquashfs shares blocks and fragments of identical files).
    let dup = pseudo_random_bytes(7, 300 * KIB);
    write(&d.join("dup-a"), &dup);
    write(&d.join("dup-b"), &dup);

    let small = d.join("small");
    mkdir(&small);
    for i in 0..48usize {
        let len = match i {
            0 => 1,
            1 => 2,
            _ => 17 + i * i * 3 + (i % 5) * 101,
        };
        write(
            &small.join(format!("small-{i:02}.txt")),
            &text_bytes(&format!("small {i}"), len),
        );
    }
    // An identical pair of small files (duplicate fragments).
    write(&small.join("same-a.txt"), &text_bytes("same", 999));
    write(&small.join("same-b.txt"), &text_bytes("same", 999));
}

fn make_big_dir(d: &Path) {
    mkdir(d);
    for i in 0..BIG_DIR_ENTRIES {
        let name = format!("entry-{i:04}-{}", &"abcdefghij".repeat(10)[..i % 97]);
        let p = d.join(&name);
        match i % 50 {
            0 => mkdir(&p),
            1 => make_symlink(format!("entry-{:04}", i - 1), &p),
            n if n % 7 == 0 => write(&p, &text_bytes(&name, 1 + i % 300)),
            _ => write(&p, b""),
        }
    }
}

fn make_deep(d: &Path) {
    let mut p = d.to_path_buf();
    for level in 0..DEEP_LEVELS {
        p.push(format!("d{level:02}"));
    }
    mkdir(&p);
    write(&p.join("leaf.txt"), b"deepest leaf\n");
}

fn long_symlink_target() -> Vec<u8> {
    // 4095 bytes (PATH_MAX - 1): repeated "segment/", cut to length; no NUL.
    let mut t = Vec::with_capacity(4095);
    while t.len() < 4095 {
        t.extend_from_slice(b"segment/");
    }
    t.truncate(4095);
    t
}

fn make_links(root: &Path) {
    write(&root.join("x"), b"x marks the spot\n");
    let d = root.join("links");
    mkdir(&d);
    write(&d.join("target"), b"symlink target\n");
    make_symlink("target", &d.join("short"));
    make_symlink("../x", &d.join("rel"));
    make_symlink("does/not/exist", &d.join("dangling"));
    make_symlink(OsStr::from_bytes(&long_symlink_target()), &d.join("long"));
    make_symlink("target", &d.join("chowned"));
    chown(&d.join("chowned"), 1000, 1000);
}

fn make_devices(d: &Path) {
    mkdir(d);
    mknod(&d.join("block"), libc::S_IFBLK | 0o660, libc::makedev(8, 1));
    mknod(&d.join("char"), libc::S_IFCHR | 0o666, libc::makedev(1, 3));
    mkfifo(&d.join("fifo"), 0o644);
    let sock = d.join("socket");
    let listener = std::os::unix::net::UnixListener::bind(&sock)
        .unwrap_or_else(|e| panic!("bind {}: {e}", sock.display()));
    drop(listener);
    chmod(&sock, 0o755);

    // With an xattr, device and IPC nodes get extended inodes (Linux refuses `user.*` on them).
    let block = d.join("block-xattr");
    mknod(&block, libc::S_IFBLK | 0o600, libc::makedev(259, 65537));
    set_xattr(&block, "trusted.dev", b"block");
    let chr = d.join("char-xattr");
    mknod(&chr, libc::S_IFCHR | 0o620, libc::makedev(4, 1));
    chown(&chr, 0, 5);
    set_xattr(&chr, "trusted.dev", b"char");
    let sock = d.join("socket-xattr");
    drop(
        std::os::unix::net::UnixListener::bind(&sock)
            .unwrap_or_else(|e| panic!("bind {}: {e}", sock.display())),
    );
    set_xattr(&sock, "trusted.sock", b"socket");
}

fn make_hardlinks(d: &Path) {
    for sub in ["a", "b", "c"] {
        mkdir(&d.join(sub));
    }
    let first = d.join("a/one");
    write(&first, &text_bytes("hard link", 5000));
    chown(&first, 1000, 1000);
    fs::hard_link(&first, d.join("b/two")).unwrap();
    fs::hard_link(&first, d.join("c/three")).unwrap();
}

fn make_perms(root: &Path) {
    let d = root.join("perms");
    mkdir(&d);
    let file = |name: &str, uid: u32, gid: u32, mode: u32| {
        let p = d.join(name);
        write(&p, format!("{name}\n").as_bytes());
        chown(&p, uid, gid); // before chmod: chown clears setuid/setgid
        chmod(&p, mode);
    };
    file("uid-1000", 1000, 1000, 0o644);
    file("uid-12345", 12345, 54321, 0o640);
    file("mode-0600", 0, 0, 0o600);
    file("mode-0755", 0, 0, 0o755);
    file("mode-4755", 0, 0, 0o4755);
    file("mode-2755", 0, 12345, 0o2755);
    file("mode-0000", 0, 0, 0o000);
    let sticky = d.join("sticky-dir");
    mkdir(&sticky);
    chmod(&sticky, 0o1777);
    let private = d.join("dir-0700");
    mkdir(&private);
    write(&private.join("inside"), b"inside a 0700 dir\n");
    chown(&private, 1000, 1000);
    chmod(&private, 0o700);

    let secret = root.join("secret");
    write(&secret, b"top secret\n");
    chown(&secret, 0, 0);
    chmod(&secret, 0o600);
    let setuid = root.join("setuid-bin");
    write(&setuid, b"#!/bin/sh\necho setuid\n");
    chown(&setuid, 0, 0);
    chmod(&setuid, 0o4755);
}

fn make_xattrs(d: &Path) {
    mkdir(d);
    let big = pseudo_random_bytes(8, 3000);

    let file = d.join("file");
    write(&file, b"a file with xattrs\n");
    set_xattr(&file, "user.empty", b"");
    set_xattr(&file, "user.big", &big);
    set_xattr(&file, "user.small", b"hello");
    set_xattr(&file, "trusted.overlay", b"y");

    let dir = d.join("dir");
    mkdir(&dir);
    write(&dir.join("child"), b"child of a dir with xattrs\n");
    set_xattr(&dir, "user.dir", b"directory value");
    set_xattr(&dir, "trusted.dir", b"");

    for (name, n) in [("shared-1", "1"), ("shared-2", "2")] {
        let p = d.join(name);
        write(&p, name.as_bytes());
        set_xattr(&p, "user.big", &big);
        set_xattr(&p, "user.n", n.as_bytes());
    }
    for name in ["same-1", "same-2"] {
        let p = d.join(name);
        write(&p, name.as_bytes());
        set_xattr(&p, "user.same", b"identical set");
        set_xattr(&p, "trusted.same", b"identical set");
    }

    let link = d.join("link");
    make_symlink("file", &link);
    set_xattr(&link, "trusted.link", b"on a symlink");

    let fifo = d.join("fifo");
    mkfifo(&fifo, 0o600);
    set_xattr(&fifo, "trusted.fifo", b"on a fifo");
}

fn make_names(d: &Path) {
    mkdir(d);
    let names: Vec<Vec<u8>> = vec![
        b"with space".to_vec(),
        b"new\nline".to_vec(),
        b"tab\there".to_vec(),
        "caf\u{e9}".as_bytes().to_vec(),
        "\u{65e5}\u{672c}\u{8a9e}".as_bytes().to_vec(),
        b"byte-\xff-ff".to_vec(),
        b"back\\slash".to_vec(),
        vec![b'n'; 255],
        b"-dash".to_vec(),
        b".hidden".to_vec(),
        b"..x".to_vec(),
    ];
    for name in names {
        let p = d.join(OsStr::from_bytes(&name));
        let mut content = b"name: ".to_vec();
        content.extend_from_slice(&name);
        write(&p, &content);
    }
    // A directory with a non-UTF-8, 255-byte name containing a file.
    let mut long_dir = vec![0xffu8; 1];
    long_dir.extend(std::iter::repeat_n(b'd', 254));
    let sub = d.join(OsStr::from_bytes(&long_dir));
    mkdir(&sub);
    write(&sub.join("inside"), b"inside\n");
}

/// Sets mtimes (and atimes) to `*next`, `*next + 1`, ... depth first, entries in byte order,
/// children before their parent, without following symlinks.
fn set_mtimes(path: &Path, next: &mut i64) {
    let meta = fs::symlink_metadata(path).unwrap();
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
        for e in entries {
            set_mtimes(&e, next);
        }
    }
    set_times_nofollow(path, *next);
    *next += 1;
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes())
        .unwrap_or_else(|_| panic!("path with NUL byte: {}", path.display()))
}

fn check(ret: libc::c_int, what: &str, path: &Path) {
    if ret != 0 {
        panic!(
            "{what} {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
}

#[allow(unsafe_code)]
fn mknod(path: &Path, mode: libc::mode_t, dev: libc::dev_t) {
    let p = c_path(path);
    // SAFETY: `p` is a valid NUL-terminated string that outlives the call.
    let ret = unsafe { libc::mknod(p.as_ptr(), mode, dev) };
    check(ret, "mknod", path);
    // mknod honours the umask; make the permission bits exact.
    chmod(path, mode & 0o7777);
}

#[allow(unsafe_code)]
fn mkfifo(path: &Path, mode: libc::mode_t) {
    let p = c_path(path);
    // SAFETY: `p` is a valid NUL-terminated string that outlives the call.
    let ret = unsafe { libc::mkfifo(p.as_ptr(), mode) };
    check(ret, "mkfifo", path);
    // mkfifo honours the umask; make the mode exact.
    chmod(path, mode);
}

/// Sets an extended attribute on `path` itself (never following a symlink).
#[allow(unsafe_code)]
fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let p = c_path(path);
    let n = CString::new(name).unwrap();
    // SAFETY: `p` and `n` are valid NUL-terminated strings and `value` is a valid buffer of
    // `value.len()` bytes; all outlive the call.
    let ret = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    check(ret, &format!("lsetxattr {name}"), path);
}

#[allow(unsafe_code)]
fn set_times_nofollow(path: &Path, secs: i64) {
    let p = c_path(path);
    let ts = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: 0,
    };
    let times = [ts, ts];
    // SAFETY: `p` is a valid NUL-terminated string and `times` points to two timespecs; both
    // outlive the call.
    let ret = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            p.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    check(ret, "utimensat", path);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_random_is_deterministic_and_prefix_stable() {
        let a = pseudo_random_bytes(42, 1000);
        assert_eq!(a, pseudo_random_bytes(42, 1000));
        assert_eq!(&a[..13], &pseudo_random_bytes(42, 13)[..]);
        assert_ne!(a, pseudo_random_bytes(43, 1000));
        assert_eq!(pseudo_random_bytes(0, 0).len(), 0);
    }

    #[test]
    #[cfg_attr(
        not(feature = "root-tests"),
        ignore = "root-tests ring, needs root: sudo bash tests/run"
    )]
    fn corpus_builds_and_extracts() {
        let tmp = tempfile::tempdir().unwrap();
        let corpus = build(tmp.path());
        assert_eq!(corpus.variants.len(), VARIANTS.len());
        let expected = fs::read(corpus.source.join(RANDOM_3M_PATH)).unwrap();
        assert_eq!(expected, pseudo_random_bytes(RANDOM_3M_SEED, RANDOM_3M_LEN));
        for v in &corpus.variants {
            let len = fs::metadata(&v.image)
                .unwrap_or_else(|e| panic!("{}: {}: {e}", v.name, v.image.display()))
                .len();
            assert!(len > 4096, "{}: image only {len} bytes", v.name);
            let got = fs::read(v.extracted.join(RANDOM_3M_PATH))
                .unwrap_or_else(|e| panic!("{}: extracted {RANDOM_3M_PATH}: {e}", v.name));
            assert!(got == expected, "{}: {RANDOM_3M_PATH} differs", v.name);
        }
    }
}
