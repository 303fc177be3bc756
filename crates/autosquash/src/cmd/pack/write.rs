//! Writing the image: backhand's writer, or the system's mksquashfs.

use super::source::{Data, Tree};
use super::*;

/// `--compression none`. Squashfs has no "uncompressed" compressor id (the kernel and
/// unsquashfs reject id 0), so like `mksquashfs -noI -noD -noF -noX` the image names gzip
/// and stores every block raw. backhand stores a block raw when compressing makes it larger,
/// so this "compressor" returns one byte more than it is given.
struct Stored;

static STORED: Stored = Stored;

impl CompressionAction for Stored {
    type Error = BackhandError;
    type Compressor = Compressor;
    type FilesystemCompressor = FilesystemCompressor;
    type SuperBlock = SuperBlock;

    fn decompress(&self, _: &[u8], _: &mut Vec<u8>, _: Compressor) -> Result<(), Self::Error> {
        Err(BackhandError::UnsupportedCompression(String::new()))
    }

    fn compress(
        &self,
        bytes: &[u8],
        _: FilesystemCompressor,
        _: u32,
    ) -> Result<Vec<u8>, Self::Error> {
        Ok(vec![0; bytes.len() + 1])
    }
}

/// A file's data, opened only when backhand reads it (one descriptor at a time), checked
/// against the size seen when scanning, and counted for the progress bar.
struct Lazy {
    tree: Arc<Tree>,
    data: Data,
    size: u64,
    left: u64,
    reader: Option<Box<dyn Read + Send>>,
    name: PathBuf,
    bar: ProgressBar,
}

impl Lazy {
    fn fail(&self, what: impl std::fmt::Display) -> io::Error {
        io::Error::other(format!("{}: {what}", self.name.display()))
    }
}

impl Read for Lazy {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.reader.is_none() {
            let reader = self.tree.open(&self.data, self.size);
            self.reader = Some(reader.map_err(|e| self.fail(e))?);
        }
        let reader = self.reader.as_mut().expect("opened");
        if self.left == 0 {
            // One more byte means the file grew since it was scanned.
            return match reader.read(&mut [0]) {
                Ok(0) => Ok(0),
                Ok(_) => Err(self.fail("changed while packing (it grew)")),
                Err(e) => Err(self.fail(e)),
            };
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        match reader.read(&mut buf[..want]) {
            Ok(0) => Err(self.fail("changed while packing (it shrank)")),
            Ok(n) => {
                self.left -= n as u64;
                self.bar.inc(n as u64);
                Ok(n)
            }
            Err(e) => Err(self.fail(e)),
        }
    }
}

pub fn with_backhand(
    tree: &Arc<Tree>,
    opts: &BuildArgs,
    out: &Path,
    bar: &ProgressBar,
) -> Result<()> {
    let mut writer = FilesystemWriter::default();
    writer.set_block_size(opts.block_size);
    writer.set_time(tree.root.mtime);
    writer.set_root_mode(tree.root.permissions);
    writer.set_root_uid(tree.root.uid);
    writer.set_root_gid(tree.root.gid);
    let (id, options) = match opts.compression {
        Compression::Zstd => (Compressor::Zstd, None),
        Compression::Gzip => (Compressor::Gzip, None),
        Compression::Xz => (Compressor::Xz, None),
        // Version 1 is the only LZ4 format the kernel reads.
        Compression::Lz4 => (
            Compressor::Lz4,
            Some(CompressionOptions::Lz4(Lz4 {
                version: 1,
                flags: 0,
            })),
        ),
        Compression::Lzo => (Compressor::Lzo, None),
        Compression::None => {
            writer.set_kind(backhand::kind::Kind::new_v4(&STORED));
            (Compressor::Gzip, None)
        }
    };
    let compressor = FilesystemCompressor::new(id, options)
        .map_err(|e| anyhow!("compression {:?}: {}", opts.compression, describe(&e)))?;
    writer.set_compressor(compressor);
    for (path, node) in &tree.entries {
        let h = node.header;
        let added = match &node.kind {
            source::Kind::Dir => writer.push_dir(path, h),
            source::Kind::File { size, data } => writer.push_file(
                Lazy {
                    tree: tree.clone(),
                    data: data.clone(),
                    size: *size,
                    left: *size,
                    reader: None,
                    name: match data {
                        Data::Path(p) => p.clone(),
                        Data::Spool(_) => path.clone(),
                    },
                    bar: bar.clone(),
                },
                path,
                h,
            ),
            source::Kind::Symlink(target) => {
                // backhand asserts (panics) on targets of 256 bytes or more; squashfs allows 4095.
                let len = target.as_os_str().len();
                if len > 255 {
                    bail!(
                        "{}: symlink target of {len} bytes (the built-in writer stores at most 255; \
                         --mksquashfs stores up to 4095)",
                        path.display()
                    );
                }
                writer.push_symlink(target, path, h)
            }
            source::Kind::CharDevice(dev) => writer.push_char_device(*dev, path, h),
            source::Kind::BlockDevice(dev) => writer.push_block_device(*dev, path, h),
            source::Kind::Fifo => writer.push_fifo(path, h),
            source::Kind::Socket => writer.push_socket(path, h),
        };
        added.map_err(|e| anyhow!("{}: {}", path.display(), describe(&e)))?;
    }
    let file = File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut file = BufWriter::with_capacity(1 << 20, file);
    // backhand asserts on inputs it cannot represent: a panic in it is an error here, not a
    // crash of the command.
    let written =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| writer.write(&mut file)));
    match written {
        Ok(result) => result.map_err(|e| anyhow!("writing {}: {}", out.display(), describe(&e)))?,
        Err(_) => bail!(
            "writing {}: the squashfs writer failed on an input it cannot represent",
            out.display()
        ),
    };
    file.flush()
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

pub fn with_mksquashfs(src: &Path, out: &Path, opts: &BuildArgs) -> Result<()> {
    let mut cmd = Command::new("mksquashfs");
    cmd.arg(src)
        .arg(out)
        .args(["-noappend", "-no-progress", "-quiet"])
        .args(["-b", &opts.block_size.to_string()]);
    match opts.compression {
        Compression::None => cmd.args(["-noI", "-noD", "-noF", "-noX"]),
        c => cmd.args(["-comp", c.name()]),
    };
    if let Some(uid) = opts.force_uid {
        cmd.args(["-force-uid", &uid.to_string()]);
    }
    if let Some(gid) = opts.force_gid {
        cmd.args(["-force-gid", &gid.to_string()]);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => anyhow!("mksquashfs is not installed (squashfs-tools)"),
            _ => anyhow!("cannot run mksquashfs: {e}"),
        })?;
    if !out.status.success() {
        bail!(
            "mksquashfs failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
