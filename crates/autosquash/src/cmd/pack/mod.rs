//! `autosquash pack`: builds a squashfs image from a directory or a tar archive, without root.
//!
//! Owners, modes, times, hard links and xattrs come from the source (lstat and getxattr, or
//! the tar headers), never from the user running the command, so no root or fakeroot is
//! needed. The image is written by our own squashfs writer ([`image`]; or, with
//! `--mksquashfs`, by the system's mksquashfs) to `OUTPUT.tmp`, read back in full with our
//! engine and compared with the source, and only then renamed into place: an image that exists
//! is one the daemon can serve.
//!
//! Input squashfs cannot store (a name over 256 bytes, a symlink target over 4095, an xattr
//! outside `user.`, `trusted.` and `security.`) is an error naming the path, found while
//! scanning, before anything is written.
//!
//! A tar archive is read once, front to back, and the data of its files spooled to one unnamed
//! temporary file beside the output (the writer stores files in path order), so memory stays
//! bounded whatever the archive's size or order.

use anyhow::{Context, Result, anyhow, bail};
use autosquash_core::{BlockCache, DirStore, FileKind, Image, Inode, Store};
use clap::{Args, ValueEnum};
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, IsTerminal, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

/// How to build an image; shared with `push`, which packs before uploading.
#[derive(Args, Clone, Debug)]
pub struct BuildArgs {
    /// Compression of data and metadata blocks.
    #[arg(long, value_enum, default_value_t = Compression::Zstd)]
    pub compression: Compression,
    /// Compression level: zstd 1-22 (default 3), gzip 1-9 (default 9), xz 0-9 (default 6).
    /// Higher levels make smaller images and pack more slowly; reading them costs the same.
    /// zstd 3 packs several times faster than mksquashfs's default of 15, for images about
    /// 10% larger.
    #[arg(long)]
    pub level: Option<u32>,
    /// Data block size: a power of two from 4K to 1M.
    #[arg(long, default_value = "128K", value_parser = parse_block_size)]
    pub block_size: u32,
    /// Owner of every file in the image, instead of the source's.
    #[arg(long, value_name = "UID")]
    pub force_uid: Option<u32>,
    /// Group of every file in the image, instead of the source's.
    #[arg(long, value_name = "GID")]
    pub force_gid: Option<u32>,
    /// Every file owned by root (uid and gid 0), like mksquashfs -all-root.
    #[arg(long, conflicts_with_all = ["force_uid", "force_gid"])]
    pub all_root: bool,
    /// Build with the system's mksquashfs (directory sources only) instead of the built-in
    /// writer.
    #[arg(long)]
    pub mksquashfs: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Compression {
    Zstd,
    Gzip,
    Xz,
    Lz4,
    Lzo,
    /// Every block stored as is.
    None,
}

impl Compression {
    fn name(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Lz4 => "lz4",
            Compression::Lzo => "lzo",
            Compression::None => "none",
        }
    }
}

fn parse_block_size(s: &str) -> Result<u32, String> {
    let n = crate::units::parse_size(s)?;
    if !(4096..=1 << 20).contains(&n) || !n.is_power_of_two() {
        return Err(format!(
            "block size {s} is not a power of two from 4K to 1M"
        ));
    }
    Ok(n as u32)
}

#[derive(Args)]
pub struct PackArgs {
    /// A directory, or a tar archive (plain, gzip, xz or zstd; recognized by content).
    src: PathBuf,
    /// The image to write (default: SRC's name with .squash, in the current directory).
    #[arg(short, long)]
    output: Option<PathBuf>,
    #[command(flatten)]
    build: BuildArgs,
    /// No progress bar and no summary.
    #[arg(short, long)]
    quiet: bool,
}

pub async fn pack(args: PackArgs) -> Result<()> {
    let output = match args.output {
        Some(o) => o,
        None => PathBuf::from(default_name(&args.src)?),
    };
    let packed = build(&args.src, &output, &args.build, args.quiet).await?;
    if !args.quiet {
        println!("{}: {packed}", output.display());
    }
    Ok(())
}

/// `NAME.squash` for SRC `.../NAME`, `NAME.tar.gz`, `NAME.tgz` and the like.
pub fn default_name(src: &Path) -> Result<String> {
    let name = match src.file_name() {
        Some(name) => name.to_string_lossy().into_owned(),
        // `.` or `..`: the directory's own name.
        None => src
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .with_context(|| format!("cannot derive an image name from {}", src.display()))?,
    };
    let suffixes = [
        ".tar.gz",
        ".tgz",
        ".tar.xz",
        ".txz",
        ".tar.zst",
        ".tzst",
        ".tar.zstd",
        ".tar",
    ];
    let stem = suffixes
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(&name);
    Ok(format!("{stem}.squash"))
}

/// What a pack did, for the one-line summary.
pub struct Packed {
    pub files: u64,
    pub bytes: u64,
    pub image_size: u64,
    pub compression: &'static str,
}

impl std::fmt::Display for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} files, {} of data, image {}",
            self.files,
            HumanBytes(self.bytes),
            HumanBytes(self.image_size),
        )?;
        if self.bytes > 0 {
            let ratio = self.image_size as f64 * 100.0 / self.bytes as f64;
            write!(f, " ({ratio:.1}% of the data, {})", self.compression)
        } else {
            write!(f, " ({})", self.compression)
        }
    }
}

/// Packs `src` into `output` (through `output.tmp`), verified. Used by `pack` and `push`.
pub async fn build(src: &Path, output: &Path, opts: &BuildArgs, quiet: bool) -> Result<Packed> {
    let show = !quiet && io::stderr().is_terminal();
    let meta = std::fs::metadata(src).with_context(|| format!("cannot read {}", src.display()))?;
    let dir_source = meta.is_dir();
    if opts.mksquashfs && !dir_source {
        bail!("--mksquashfs needs a directory source (this mksquashfs reads no tar archives)");
    }
    let tmp = tmp_path(output);
    // A stale temporary file of an earlier run could otherwise be packed into the image.
    let _ = std::fs::remove_file(&tmp);
    let mut cleanup = RemoveOnDrop(Some(tmp.clone()));
    let owner = match opts.all_root {
        true => Owner {
            uid: Some(0),
            gid: Some(0),
        },
        false => Owner {
            uid: opts.force_uid,
            gid: opts.force_gid,
        },
    };

    let (src_owned, out_dir) = (src.to_path_buf(), parent_dir(output));
    let skip = std::fs::metadata(output).ok().map(|m| (m.dev(), m.ino()));
    let tree = tokio::task::spawn_blocking(move || {
        if dir_source {
            source::scan_dir(&src_owned, owner, skip)
        } else {
            source::scan_tar(&src_owned, owner, &out_dir, show)
        }
    })
    .await??;
    let tree = Arc::new(tree);

    let (opts_owned, src_owned, tmp_owned) = (opts.clone(), src.to_path_buf(), tmp.clone());
    let tree_owned = tree.clone();
    tokio::task::spawn_blocking(move || -> Result<()> {
        let tree = tree_owned;
        if opts_owned.mksquashfs {
            write::with_mksquashfs(&src_owned, &tmp_owned, &opts_owned)?;
        } else {
            let bar = progress_bar(Some(tree.bytes()), "packing", show);
            image::write(&tree, &opts_owned, &tmp_owned, &bar)?;
            bar.finish_and_clear();
        }
        File::open(&tmp_owned)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot sync {}", tmp_owned.display()))
    })
    .await??;

    let bar = progress_bar(Some(tree.bytes()), "verifying", show);
    let stats = verify::image(&tmp, Some(&tree), &bar)
        .await
        .with_context(|| {
            format!(
                "the image built from {} does not read back right (kept as {})",
                src.display(),
                tmp.display()
            )
        })
        .inspect_err(|_| cleanup.0 = None)?;
    bar.finish_and_clear();
    std::fs::rename(&tmp, output)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), output.display()))?;
    cleanup.0 = None;
    Ok(Packed {
        files: stats.files,
        bytes: stats.bytes,
        image_size: stats.image_size,
        compression: opts.compression.name(),
    })
}

fn tmp_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Removes a half-written image on any early return.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A byte progress bar on stderr, or a hidden one.
pub fn progress_bar(total: Option<u64>, message: &'static str, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let (bar, template) = match total {
        Some(total) => (
            ProgressBar::new(total),
            "{msg:>9} [{bar:32}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
        ),
        None => (
            ProgressBar::new_spinner(),
            "{msg:>9} {spinner} {binary_bytes} {binary_bytes_per_sec}",
        ),
    };
    let style = ProgressStyle::with_template(template)
        .expect("valid template")
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(message);
    bar
}

/// `--force-uid` and `--force-gid`.
#[derive(Clone, Copy)]
struct Owner {
    uid: Option<u32>,
    gid: Option<u32>,
}

impl Owner {
    fn header(self, mode: u32, uid: u32, gid: u32, mtime: i64) -> source::Header {
        source::Header {
            perm: (mode & 0o7777) as u16,
            uid: self.uid.unwrap_or(uid),
            gid: self.gid.unwrap_or(gid),
            mtime: mtime.clamp(0, i64::from(u32::MAX)) as u32,
        }
    }
}

mod image;

mod source;

mod write;

/// Reading an image back with our own engine.
pub(crate) mod verify {
    use super::source::{Kind, Node, Tree};
    use super::*;

    pub struct Stats {
        pub files: u64,
        pub bytes: u64,
        pub image_size: u64,
    }

    /// Opens the image at `path`, walks every directory and reads every file; with a `tree`,
    /// checks that the image holds exactly its entries, with the same metadata, links, xattrs
    /// and bytes.
    pub async fn image(path: &Path, tree: Option<&Tree>, bar: &ProgressBar) -> Result<Stats> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .context("the image name is not UTF-8")?;
        let store = DirStore::new(parent_dir(path));
        let meta = store.head(name).await?;
        let image_size = meta.size;
        let image = Arc::new(Image::open(Arc::new(store), meta, BlockCache::new(64 << 20)).await?);
        let root = image.root()?;
        // Files are read back on every core: decompressing and comparing is a third of pack's
        // work, and one file after another left a core idle.
        let parallel = std::thread::available_parallelism().map_or(1, |n| n.get()) * 2;
        let mut reads = tokio::task::JoinSet::new();
        let mut links = Links::default();
        if let Some(tree) = tree {
            compare(Path::new("/"), &image, &root, &tree.root, &mut links)?;
        }
        let mut stats = Stats {
            files: 0,
            bytes: 0,
            image_size,
        };
        let mut seen = 0usize;
        // Every entry once, depth first; more than the source has is a difference, so the
        // walk stops one past it.
        let limit = tree.map_or(usize::MAX, |t| t.entries.len() + 1);
        for walked in image.walk(limit) {
            let path = PathBuf::from(OsStr::from_bytes(&walked.path));
            let inode = walked
                .inode
                .with_context(|| format!("/{}", path.display()))?;
            let node = match tree {
                Some(tree) => Some(tree.entries.get(&path).with_context(|| {
                    format!("{} is in the image but not in the source", path.display())
                })?),
                None => None,
            };
            if let Some(node) = node {
                compare(&path, &image, &inode, node, &mut links)?;
            }
            seen += 1;
            if inode.kind == FileKind::File {
                let source = match (tree, node.map(|n| &n.kind)) {
                    (Some(tree), Some(Kind::File { size, data })) => {
                        Some(tree.open(data, *size).with_context(|| {
                            format!("cannot reopen the source of {}", path.display())
                        })?)
                    }
                    _ => None,
                };
                stats.files += 1;
                stats.bytes += inode.size;
                if reads.len() >= parallel {
                    joined(reads.join_next().await)?;
                }
                let (image, bar) = (image.clone(), bar.clone());
                reads.spawn(async move {
                    read_file(&image, &inode, source, &bar)
                        .await
                        .with_context(|| path.display().to_string())
                });
            }
        }
        while let Some(read) = reads.join_next().await {
            joined(Some(read))?;
        }
        if let Some(tree) = tree {
            if seen != tree.entries.len() {
                let missing = tree
                    .entries
                    .keys()
                    .find(|p| image.resolve(p.as_os_str().as_bytes()).is_err());
                match missing {
                    Some(p) => bail!("{} is missing from the image", p.display()),
                    None => bail!(
                        "the image has {seen} entries, the source {}",
                        tree.entries.len()
                    ),
                }
            }
            links.check(tree)?;
        }
        Ok(stats)
    }

    /// The outcome of a file's read-back task.
    fn joined(read: Option<Result<Result<()>, tokio::task::JoinError>>) -> Result<()> {
        match read {
            Some(Ok(result)) => result,
            Some(Err(e)) => Err(anyhow!("reading back a file failed: {e}")),
            None => Ok(()),
        }
    }

    /// Inode numbers seen: a hard-link group must be one inode, anything else its own.
    #[derive(Default)]
    struct Links {
        group_ino: HashMap<u32, u32>,
        ino_owner: HashMap<u32, (Option<u32>, PathBuf)>,
        members: HashMap<u32, u32>,
        nlink: HashMap<u32, (u32, PathBuf)>,
    }

    impl Links {
        fn see(&mut self, path: &Path, inode: &Inode, node: &Node) -> Result<()> {
            if let Some((group, other)) = self.ino_owner.get(&inode.ino)
                && (node.link.is_none() || *group != node.link)
            {
                bail!(
                    "{} and {} are one inode in the image, not in the source",
                    other.display(),
                    path.display()
                );
            }
            self.ino_owner
                .insert(inode.ino, (node.link, path.to_path_buf()));
            if let Some(group) = node.link {
                let ino = *self.group_ino.entry(group).or_insert(inode.ino);
                if ino != inode.ino {
                    bail!(
                        "{}: a hard link in the source, a separate inode in the image",
                        path.display()
                    );
                }
                *self.members.entry(group).or_default() += 1;
                self.nlink.insert(group, (inode.nlink, path.to_path_buf()));
            } else if inode.kind != FileKind::Directory && inode.nlink != 1 {
                bail!(
                    "{}: nlink is {} in the image, 1 in the source",
                    path.display(),
                    inode.nlink
                );
            }
            Ok(())
        }

        fn check(&self, _tree: &Tree) -> Result<()> {
            for (group, (nlink, path)) in &self.nlink {
                let members = self.members.get(group).copied().unwrap_or(0);
                if *nlink != members {
                    bail!(
                        "{}: nlink is {nlink} in the image, {members} links in the source",
                        path.display()
                    );
                }
            }
            Ok(())
        }
    }

    fn compare(
        path: &Path,
        image: &Image,
        inode: &Inode,
        want: &Node,
        links: &mut Links,
    ) -> Result<()> {
        let h = &want.header;
        let kind = match &want.kind {
            Kind::Dir => FileKind::Directory,
            Kind::File { .. } => FileKind::File,
            Kind::Symlink(_) => FileKind::Symlink,
            Kind::CharDevice(_) => FileKind::CharDevice,
            Kind::BlockDevice(_) => FileKind::BlockDevice,
            Kind::Fifo => FileKind::Fifo,
            Kind::Socket => FileKind::Socket,
        };
        let differs = |what: &str, got: String, want: String| {
            anyhow!(
                "{}: {what} is {got} in the image, {want} in the source",
                path.display()
            )
        };
        if inode.kind != kind {
            return Err(differs(
                "the type",
                format!("{:?}", inode.kind),
                format!("{kind:?}"),
            ));
        }
        let fields = [
            ("the mode", u32::from(inode.perm), u32::from(h.perm)),
            ("the owner", inode.uid, h.uid),
            ("the group", inode.gid, h.gid),
            ("the mtime", inode.mtime, h.mtime),
        ];
        for (what, got, want) in fields {
            if got != want {
                return Err(differs(what, format!("{got:o}"), format!("{want:o}")));
            }
        }
        let xattrs = {
            let mut x = image.xattrs(inode)?;
            x.sort();
            x
        };
        if xattrs != want.xattrs {
            let names = |x: &[(Vec<u8>, Vec<u8>)]| {
                x.iter()
                    .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(differs(
                "the xattrs",
                format!("[{}]", names(&xattrs)),
                format!("[{}]", names(&want.xattrs)),
            ));
        }
        links.see(path, inode, want)?;
        match &want.kind {
            Kind::File { size, .. } if inode.size != *size => Err(differs(
                "the size",
                inode.size.to_string(),
                size.to_string(),
            )),
            Kind::Symlink(target) if image.readlink(inode)? != target.as_os_str().as_bytes() => {
                Err(differs(
                    "the link target",
                    String::from_utf8_lossy(image.readlink(inode)?).into_owned(),
                    target.display().to_string(),
                ))
            }
            Kind::CharDevice(dev) | Kind::BlockDevice(dev) if inode.rdev != *dev => Err(differs(
                "the device number",
                format!("{:x}", inode.rdev),
                format!("{dev:x}"),
            )),
            _ => Ok(()),
        }
    }

    /// Reads a whole file from the image; with a source, compares the bytes.
    async fn read_file(
        image: &Image,
        inode: &Inode,
        mut source: Option<Box<dyn Read + Send>>,
        bar: &ProgressBar,
    ) -> Result<()> {
        const CHUNK: usize = 1 << 20;
        let mut offset = 0;
        // Sized to the file: most are small, and zeroing 1 MiB for each cost more than reading.
        let mut expected = vec![0u8; CHUNK.min(usize::try_from(inode.size).unwrap_or(CHUNK))];
        while offset < inode.size {
            let data = image.read(inode, offset, CHUNK).await?;
            if data.is_empty() {
                bail!("the image ends early, at byte {offset}");
            }
            if let Some(source) = &mut source {
                let want = &mut expected[..data.len()];
                source
                    .read_exact(want)
                    .context("the source changed while packing")?;
                if let Some(i) = data.iter().zip(want.iter()).position(|(a, b)| a != b) {
                    bail!("differs from the source at byte {}", offset + i as u64);
                }
            }
            offset += data.len() as u64;
            bar.inc(data.len() as u64);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::source::{Format, archive_path, encode_dev, sniff};
    use super::*;

    #[test]
    fn formats_by_content() {
        let mut ustar = vec![0u8; 512];
        ustar[257..262].copy_from_slice(b"ustar");
        assert_eq!(sniff(&ustar).unwrap(), Format::Tar);
        assert_eq!(sniff(&[0; 1024]).unwrap(), Format::Tar);
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0]).unwrap(), Format::Gzip);
        assert_eq!(sniff(b"\xfd7zXZ\0rest").unwrap(), Format::Xz);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]).unwrap(), Format::Zstd);
        let err = |head: &[u8]| sniff(head).unwrap_err().to_string();
        assert!(err(b"hsqs....").contains("already a squashfs image"));
        assert!(err(b"BZh91AY").contains("bzip2"));
        assert!(err(b"hello").contains("not a directory nor a tar archive"));
    }

    #[test]
    fn archive_paths() {
        let p = |s: &str| archive_path(Path::new(s)).unwrap();
        assert_eq!(p("./a/b/"), Some(PathBuf::from("a/b")));
        assert_eq!(p("/etc/passwd"), Some(PathBuf::from("etc/passwd")));
        assert_eq!(p("./"), None);
        assert!(archive_path(Path::new("a/../../b")).is_err());
    }

    #[test]
    fn devices_and_names() {
        // glibc's makedev: minor bits 0-7 and 20-31, major bits 8-19 and 32-43.
        let makedev = |major: u64, minor: u64| {
            (minor & 0xff)
                | ((major & 0xfff) << 8)
                | ((minor & !0xff) << 12)
                | ((major & !0xfff) << 32)
        };
        assert_eq!(encode_dev(makedev(1, 3)), 0x103);
        // Squashfs keeps the kernel's 32-bit encoding: the minor's high bits from bit 20.
        assert_eq!(encode_dev(makedev(4, 0x12345)), 0x45 | 4 << 8 | 0x123 << 20);
        assert_eq!(encode_dev(makedev(0x1234, 1)), 0x1234 << 8 | 1);
        assert_eq!(
            default_name(Path::new("/x/base.tar.gz")).unwrap(),
            "base.squash"
        );
        assert_eq!(default_name(Path::new("dir/")).unwrap(), "dir.squash");
        assert_eq!(parse_block_size("128K").unwrap(), 128 << 10);
        assert!(parse_block_size("2M").is_err());
        assert!(parse_block_size("6K").is_err());
    }

    /// The read-back check notices a changed byte and a missing file.
    #[tokio::test]
    async fn verify_catches_differences() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let file = src.join("a");
        std::fs::write(&file, vec![1u8; 200_000]).unwrap();
        let image = dir.path().join("a.squash");
        let opts = BuildArgs {
            compression: Compression::Zstd,
            level: None,
            block_size: 4096,
            force_uid: None,
            force_gid: None,
            all_root: false,
            mksquashfs: false,
        };
        build(&src, &image, &opts, true).await.unwrap();
        let check = || async {
            let owner = Owner {
                uid: None,
                gid: None,
            };
            let tree = source::scan_dir(&src, owner, None).unwrap();
            let err = verify::image(&image, Some(&tree), &ProgressBar::hidden()).await;
            format!("{:#}", err.err().expect("a difference"))
        };

        // Rewritten with its old mtime, so only the bytes differ.
        let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
        let rewrite = |data: Vec<u8>| {
            std::fs::write(&file, data).unwrap();
            let f = std::fs::File::options().write(true).open(&file).unwrap();
            f.set_modified(mtime).unwrap();
        };
        let mut changed = vec![1u8; 200_000];
        changed[150_000] = 2;
        rewrite(changed);
        let err = check().await;
        assert!(
            err.contains("a: differs from the source at byte 150000"),
            "{err}"
        );
        rewrite(vec![1u8; 200_000]);

        std::fs::write(src.join("b"), b"new").unwrap();
        let err = check().await;
        assert!(err.contains("b is missing from the image"), "{err}");
    }
}
