//! The source as a sorted tree of entries, from a directory or a tar archive.
//!
//! Everything squashfs cannot store is refused here, naming the path, so the writer meets
//! only representable input: names over 256 bytes, symlink targets over 4095 bytes, xattrs
//! outside the `user.`, `trusted.` and `security.` namespaces (the only ones squashfs and the
//! kernel's reader know).

use super::*;

/// Entries keyed by path relative to the root; `BTreeMap` order puts every directory before
/// its children, and a directory's children in byte order of their names, squashfs's order.
pub struct Tree {
    pub root: Node,
    pub entries: BTreeMap<PathBuf, Node>,
    /// File data of a tar source.
    pub spool: Option<Arc<File>>,
}

/// An inode's metadata: permission bits (with setuid, setgid, sticky), owner, mtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
}

/// Extended attributes as (full name, value), sorted by name.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

pub struct Node {
    pub header: Header,
    pub kind: Kind,
    pub xattrs: Xattrs,
    /// Hard links: entries with the same group are one inode.
    pub link: Option<u32>,
}

/// Longest name and symlink target squashfs (and Linux) store.
const MAX_NAME: usize = 256;
const MAX_SYMLINK: usize = 4095;
const XATTR_PREFIXES: [&[u8]; 3] = [b"user.", b"trusted.", b"security."];

/// Refuses what squashfs cannot store, with the reason; `path` names the entry.
fn check(path: &Path, node: &Node) -> Result<()> {
    if let Some(name) = path.file_name()
        && name.len() > MAX_NAME
    {
        bail!(
            "{}: a name of {} bytes (squashfs stores at most {MAX_NAME})",
            path.display(),
            name.len()
        );
    }
    if let Kind::Symlink(target) = &node.kind {
        let len = target.as_os_str().len();
        if len == 0 || len > MAX_SYMLINK {
            bail!(
                "{}: a symlink target of {len} bytes (squashfs stores 1 to {MAX_SYMLINK})",
                path.display()
            );
        }
    }
    for (name, value) in &node.xattrs {
        let known = XATTR_PREFIXES
            .iter()
            .any(|p| name.starts_with(p) && name.len() > p.len());
        if !known {
            bail!(
                "{}: xattr {} cannot be stored (squashfs keeps only user., trusted. and \
                 security. attributes)",
                path.display(),
                String::from_utf8_lossy(name)
            );
        }
        if name.len() > 255 || value.len() > 65536 {
            bail!(
                "{}: xattr {} is too large",
                path.display(),
                String::from_utf8_lossy(name)
            );
        }
    }
    Ok(())
}

/// The xattrs of `path` itself (not of a symlink's target).
fn read_xattrs(path: &Path) -> Result<Xattrs> {
    let fail = |e: io::Error| anyhow!("{}: cannot read its xattrs: {e}", path.display());
    let names = match xattr::list(path) {
        Ok(names) => names,
        // A filesystem without xattrs has none to keep.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(fail(e)),
    };
    let mut out = Vec::new();
    for name in names {
        // Gone since it was listed: nothing to keep.
        if let Some(value) = xattr::get(path, &name).map_err(fail)? {
            out.push((name.as_bytes().to_vec(), value));
        }
    }
    out.sort();
    Ok(out)
}

#[derive(Clone)]
pub enum Kind {
    Dir,
    File {
        size: u64,
        data: Data,
    },
    Symlink(PathBuf),
    /// Device numbers in squashfs's (the kernel's 32-bit) encoding.
    CharDevice(u32),
    BlockDevice(u32),
    Fifo,
    Socket,
}

#[derive(Clone)]
pub enum Data {
    Path(PathBuf),
    /// Offset in the spool file.
    Spool(u64),
}

impl Tree {
    /// Bytes of file data.
    pub fn bytes(&self) -> u64 {
        let size = |n: &Node| match n.kind {
            Kind::File { size, .. } => size,
            _ => 0,
        };
        self.entries.values().map(size).sum()
    }

    /// A reader of a file's data.
    pub fn open(&self, data: &Data, size: u64) -> io::Result<Box<dyn Read + Send>> {
        Ok(match data {
            Data::Path(path) => Box::new(File::open(path)?),
            Data::Spool(offset) => Box::new(SpoolSlice {
                file: self.spool.clone().expect("spooled data has a spool"),
                pos: *offset,
                end: offset + size,
            }),
        })
    }
}

struct SpoolSlice {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

impl Read for SpoolSlice {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.pos) as usize);
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Linux `dev_t` (as lstat gives it) to squashfs's 32-bit encoding.
pub(super) fn encode_dev(dev: u64) -> u32 {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
    encode_major_minor(major as u32, minor as u32)
}

fn encode_major_minor(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// Walks `src` without following symlinks. `skip` is the (dev, ino) of the output, which
/// may lie inside the source.
pub fn scan_dir(src: &Path, owner: Owner, skip: Option<(u64, u64)>) -> Result<Tree> {
    let meta = std::fs::metadata(src).with_context(|| format!("cannot read {}", src.display()))?;
    let root = Node {
        header: owner.header(meta.mode(), meta.uid(), meta.gid(), meta.mtime()),
        kind: Kind::Dir,
        xattrs: read_xattrs(src)?,
        link: None,
    };
    check(src, &root)?;
    let mut entries = BTreeMap::new();
    // (dev, ino) of files with more than one link, to their group.
    let mut groups: HashMap<(u64, u64), u32> = HashMap::new();
    let mut dirs = vec![PathBuf::new()];
    while let Some(rel) = dirs.pop() {
        let dir = src.join(&rel);
        let read =
            std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?;
        for entry in read {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if skip == Some((meta.dev(), meta.ino())) {
                continue;
            }
            let ft = meta.file_type();
            let kind = if ft.is_dir() {
                Kind::Dir
            } else if ft.is_file() {
                Kind::File {
                    size: meta.len(),
                    data: Data::Path(path.clone()),
                }
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path)
                    .with_context(|| format!("cannot read the link {}", path.display()))?;
                Kind::Symlink(target)
            } else if ft.is_char_device() {
                Kind::CharDevice(encode_dev(meta.rdev()))
            } else if ft.is_block_device() {
                Kind::BlockDevice(encode_dev(meta.rdev()))
            } else if ft.is_fifo() {
                Kind::Fifo
            } else if ft.is_socket() {
                Kind::Socket
            } else {
                bail!("{}: unknown file type", path.display());
            };
            let rel = rel.join(entry.file_name());
            if let Kind::Dir = kind {
                dirs.push(rel.clone());
            }
            let header = owner.header(meta.mode(), meta.uid(), meta.gid(), meta.mtime());
            let link = if !ft.is_dir() && meta.nlink() > 1 {
                let next = groups.len() as u32;
                Some(*groups.entry((meta.dev(), meta.ino())).or_insert(next))
            } else {
                None
            };
            let node = Node {
                header,
                kind,
                xattrs: read_xattrs(&path)?,
                link,
            };
            check(&path, &node)?;
            entries.insert(rel, node);
        }
    }
    Ok(Tree {
        root,
        entries,
        spool: None,
    })
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Format {
    Tar,
    Gzip,
    Xz,
    Zstd,
}

/// The format of a file from its first bytes; the name does not matter.
pub(super) fn sniff(head: &[u8]) -> Result<Format> {
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Format::Gzip
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Format::Xz
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Format::Zstd
    } else if is_tar_header(head) {
        Format::Tar
    } else if head.starts_with(b"hsqs") {
        bail!("it is already a squashfs image (`autosquash push` uploads it as is)")
    } else if head.starts_with(b"BZh") {
        bail!("bzip2 archives are not supported: recompress with gzip, xz or zstd")
    } else {
        bail!("not a directory nor a tar archive (plain, gzip, xz or zstd)")
    })
}

/// A ustar header, an old-style header with a valid checksum, or the zero block that ends
/// (or is all of) an empty archive.
fn is_tar_header(block: &[u8]) -> bool {
    if block.len() < 512 {
        return false;
    }
    if &block[257..262] == b"ustar" || block[..512].iter().all(|&b| b == 0) {
        return true;
    }
    let stored = std::str::from_utf8(&block[148..156])
        .ok()
        .map(|s| s.trim_matches(|c: char| c == '\0' || c == ' '))
        .and_then(|s| u32::from_str_radix(s, 8).ok());
    let sum: u32 = block[..512]
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum();
    stored == Some(sum)
}

/// Reads up to `buf.len()` bytes, fewer only at the end of the stream.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Counts the compressed bytes read, for the progress bar.
struct Counted<R> {
    inner: R,
    bar: ProgressBar,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

/// The archive decompressed, checked to start with a tar header.
fn open_archive(src: &Path, bar: ProgressBar) -> Result<Box<dyn Read>> {
    let file = File::open(src).with_context(|| format!("cannot open {}", src.display()))?;
    let mut head = [0u8; 512];
    let n = read_full(&mut &file, &mut head)
        .with_context(|| format!("cannot read {}", src.display()))?;
    let format = sniff(&head[..n]).with_context(|| format!("{}", src.display()))?;
    let raw = BufReader::with_capacity(
        1 << 20,
        Counted {
            inner: io::Cursor::new(head[..n].to_vec()).chain(file),
            bar,
        },
    );
    let mut reader: Box<dyn Read> = match format {
        Format::Tar => Box::new(raw),
        Format::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
        Format::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(raw)),
        Format::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(raw)?),
    };
    if format != Format::Tar {
        let n = read_full(&mut reader, &mut head)
            .with_context(|| format!("{}: cannot decompress ({format:?})", src.display()))?;
        if !is_tar_header(&head[..n]) {
            bail!(
                "{}: the {format:?} stream does not hold a tar archive",
                src.display()
            );
        }
        reader = Box::new(io::Cursor::new(head[..n].to_vec()).chain(reader));
    }
    Ok(reader)
}

/// A path inside the archive, relative to its root (`None`: the root itself).
pub(super) fn archive_path(path: &Path) -> Result<Option<PathBuf>> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(c) => out.push(c),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                bail!("unsafe path {} in the archive", path.display())
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

fn link_target<R: Read>(entry: &tar::Entry<R>) -> Result<PathBuf> {
    Ok(entry
        .link_name()?
        .context("the link has no target")?
        .into_owned())
}

fn device<R: Read>(entry: &tar::Entry<R>) -> Result<u32> {
    let h = entry.header();
    let major = h.device_major()?.unwrap_or(0);
    let minor = h.device_minor()?.unwrap_or(0);
    Ok(encode_major_minor(major, minor))
}

/// Reads a tar archive into a tree; file data goes to an unnamed spool file in `spool_dir`.
/// Later entries replace earlier ones of the same path, as when extracting.
pub fn scan_tar(src: &Path, owner: Owner, spool_dir: &Path, show: bool) -> Result<Tree> {
    let size = std::fs::metadata(src)?.len();
    let bar = progress_bar(Some(size), "reading", show);
    let mut archive = tar::Archive::new(open_archive(src, bar.clone())?);
    let spool = tempfile::tempfile_in(spool_dir)
        .with_context(|| format!("cannot create a temporary file in {}", spool_dir.display()))?;
    let mut spool = BufWriter::with_capacity(1 << 20, spool);
    let mut spooled = 0u64;
    let mut entries: BTreeMap<PathBuf, Node> = BTreeMap::new();
    let mut root = None;
    let mut newest = 0;
    let mut groups = 0u32;
    let fail = |e: io::Error| anyhow!("{}: {e}", src.display());
    for entry in archive.entries().map_err(fail)? {
        let mut entry = entry.map_err(fail)?;
        let name = entry.path().map_err(fail)?.into_owned();
        let path = archive_path(&name).with_context(|| src.display().to_string())?;
        let h = entry.header();
        let entry_type = h.entry_type();
        let field = |v: io::Result<u64>| {
            v.map_err(|e| anyhow!("{}: {}: {e}", src.display(), name.display()))
        };
        let (mode, uid, gid) = (h.mode().map_err(fail)?, field(h.uid())?, field(h.gid())?);
        let mtime = field(h.mtime())?;
        newest = newest.max(mtime);
        let id = |v: u64| {
            u32::try_from(v).with_context(|| {
                format!(
                    "{}: {}: owner {v} is too large",
                    src.display(),
                    name.display()
                )
            })
        };
        let header = owner.header(mode, id(uid)?, id(gid)?, mtime.min(u32::MAX.into()) as i64);
        let at = || format!("{}: {}", src.display(), name.display());
        let xattrs = tar_xattrs(&mut entry).with_context(at)?;
        use tar::EntryType as T;
        let kind = match entry_type {
            T::Directory => Kind::Dir,
            T::Symlink => Kind::Symlink(link_target(&entry).with_context(at)?),
            T::Char => Kind::CharDevice(device(&entry).with_context(at)?),
            T::Block => Kind::BlockDevice(device(&entry).with_context(at)?),
            T::Fifo => Kind::Fifo,
            T::Link => {
                let target = link_target(&entry).with_context(at)?;
                let found = archive_path(&target)?.and_then(|t| entries.get_mut(&t));
                match found {
                    // One inode: the link takes the target's metadata, as extracting does.
                    Some(node) if !matches!(node.kind, Kind::Dir) => {
                        let group = *node.link.get_or_insert_with(|| {
                            groups += 1;
                            groups - 1
                        });
                        let node = Node {
                            header: node.header,
                            kind: node.kind.clone(),
                            xattrs: node.xattrs.clone(),
                            link: Some(group),
                        };
                        insert(src, &mut entries, &mut root, path, node)?;
                        continue;
                    }
                    Some(_) => bail!(
                        "{}: {} is a hard link to the directory {}",
                        src.display(),
                        name.display(),
                        target.display()
                    ),
                    None => bail!(
                        "{}: {} is a hard link to {}, which is not earlier in the archive",
                        src.display(),
                        name.display(),
                        target.display()
                    ),
                }
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                let n = io::copy(&mut entry, &mut spool)
                    .with_context(|| format!("{}: reading {}", src.display(), name.display()))?;
                let kind = Kind::File {
                    size: n,
                    data: Data::Spool(spooled),
                };
                spooled += n;
                kind
            }
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => continue,
            other => {
                tracing::warn!(
                    "{}: skipping {} (tar entry type {other:?})",
                    src.display(),
                    name.display()
                );
                continue;
            }
        };
        let node = Node {
            header,
            kind,
            xattrs,
            link: None,
        };
        insert(src, &mut entries, &mut root, path, node)?;
    }
    bar.finish_and_clear();
    let spool = spool
        .into_inner()
        .map_err(|e| e.into_error())
        .context("cannot write the temporary file")?;
    // Directories the archive implies but does not list.
    let implied = owner.header(0o755, 0, 0, newest.min(u32::MAX.into()) as i64);
    let implied_node = || Node {
        header: implied,
        kind: Kind::Dir,
        xattrs: Vec::new(),
        link: None,
    };
    let mut missing = Vec::new();
    for path in entries.keys() {
        for parent in path.ancestors().skip(1) {
            if parent.as_os_str().is_empty() {
                break;
            }
            match entries.get(parent) {
                None => missing.push(parent.to_path_buf()),
                Some(Node {
                    kind: Kind::Dir, ..
                }) => {}
                Some(_) => bail!(
                    "{}: {} is inside {}, which is not a directory",
                    src.display(),
                    path.display(),
                    parent.display()
                ),
            }
        }
    }
    for path in missing {
        entries.entry(path).or_insert_with(implied_node);
    }
    Ok(Tree {
        root: root.unwrap_or_else(implied_node),
        entries,
        spool: Some(Arc::new(spool)),
    })
}

/// Puts an archive entry in place (the root, or a path), checked.
fn insert(
    src: &Path,
    entries: &mut BTreeMap<PathBuf, Node>,
    root: &mut Option<Node>,
    path: Option<PathBuf>,
    node: Node,
) -> Result<()> {
    match path {
        None if matches!(node.kind, Kind::Dir) => {
            check(src, &node)?;
            *root = Some(node);
        }
        None => bail!("{}: the archive's root is not a directory", src.display()),
        Some(path) => {
            check(&src.join(&path), &node)?;
            entries.insert(path, node);
        }
    }
    Ok(())
}

/// Xattrs of a tar entry: GNU tar's and star's `SCHILY.xattr.NAME` pax records.
fn tar_xattrs<R: Read>(entry: &mut tar::Entry<R>) -> Result<Xattrs> {
    let mut out = Vec::new();
    if let Some(pax) = entry.pax_extensions()? {
        for ext in pax {
            let ext = ext?;
            if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                out.push((name.to_vec(), ext.value_bytes().to_vec()));
            }
        }
    }
    out.sort();
    Ok(out)
}
