//! One benchmark run, in a fresh process: our engine or backhand's `FilesystemReader` on one
//! scenario of one local image. Prints one line of JSON. Driven by `bench/engine`.
//!
//! ```text
//! engine_bench <ours|backhand> <open|lookup|walk|readall> IMAGE [PATH]
//! ```
//!
//! - `open`: open the image and get its root.
//! - `lookup`: open, resolve `PATH` (relative to the image root) and read that whole file.
//! - `walk`: open, list every directory recursively and stat every entry.
//! - `readall`: open, then read every regular file fully.
//!
//! I/O is counted where it really happens: for ours, in a `Store` wrapped around `DirStore`
//! (each `read` is one ranged request, as it would be against S3); for backhand, in a
//! `Read + Seek` wrapper around the `File`, *below* the `BufReader` backhand is normally given.
//!
//! Both engines read files in `CHUNK`-byte reads (FUSE's default maximum read), one file at a
//! time, and fold what they read into the same content checksum (a wrapping sum of each file's
//! Adler-32), so the driver can check both against the source tree.

use anyhow::{Context, bail};
use autosquash_core::{BlockCache, DirStore, FileKind, Image, Inode, ObjectMeta, Store};
use bytes::Bytes;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Bytes asked for per read call, for both engines.
const CHUNK: usize = 128 << 10;
/// Our block cache budget: the daemon's default `memory_limit`.
const CACHE_BYTES: u64 = 256 << 20;

/// Shared I/O counters.
#[derive(Default)]
struct Io {
    /// Data reads issued: store reads (ours) or `read()` calls on the file (backhand).
    requests: AtomicU64,
    bytes: AtomicU64,
    /// Metadata requests (ours: `head`).
    heads: AtomicU64,
    /// Backhand: `seek()` calls reaching the file, and those that moved the position.
    seeks: AtomicU64,
    jumps: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// What a scenario did, to be checked against the source tree.
#[derive(Default)]
struct Outcome {
    /// Entries seen below the root (walk) or files read.
    entries: u64,
    files_read: u64,
    /// Bytes of file content read (readall, lookup) or sizes stat'ed (walk).
    file_bytes: u64,
    /// Wrapping sum of the Adler-32 of each file read.
    checksum: u64,
}

impl Outcome {
    fn file_done(&mut self, len: u64, adler: Adler) {
        self.files_read += 1;
        self.file_bytes += len;
        self.checksum = self.checksum.wrapping_add(u64::from(adler.value()));
    }
}

/// Adler-32, as Python's `zlib.adler32`.
#[derive(Clone, Copy)]
struct Adler {
    a: u32,
    b: u32,
}

impl Adler {
    const MOD: u32 = 65521;
    /// Bytes that can be summed before the 32-bit sums might overflow.
    const RUN: usize = 5552;

    fn new() -> Self {
        Self { a: 1, b: 0 }
    }

    fn update(&mut self, data: &[u8]) {
        for run in data.chunks(Self::RUN) {
            for &byte in run {
                self.a += u32::from(byte);
                self.b += self.a;
            }
            self.a %= Self::MOD;
            self.b %= Self::MOD;
        }
    }

    fn value(self) -> u32 {
        (self.b << 16) | self.a
    }
}

// ---------------------------------------------------------------------------------------------
// Ours

/// A store that counts what goes through it.
struct CountingStore {
    inner: DirStore,
    io: Arc<Io>,
}

#[async_trait::async_trait]
impl Store for CountingStore {
    async fn list(&self, prefix: &str) -> autosquash_core::Result<Vec<ObjectMeta>> {
        bump(&self.io.heads, 1);
        self.inner.list(prefix).await
    }

    async fn head(&self, key: &str) -> autosquash_core::Result<ObjectMeta> {
        bump(&self.io.heads, 1);
        self.inner.head(key).await
    }

    async fn read(&self, object: &ObjectMeta, range: Range<u64>) -> autosquash_core::Result<Bytes> {
        bump(&self.io.requests, 1);
        let data = self.inner.read(object, range).await?;
        bump(&self.io.bytes, data.len() as u64);
        Ok(data)
    }

    fn describe(&self) -> String {
        format!("counting {}", self.inner.describe())
    }
}

async fn ours(
    scenario: &str,
    image_path: &Path,
    arg: Option<&str>,
    io: Arc<Io>,
) -> anyhow::Result<Outcome> {
    let dir = image_path.parent().context("image path has no directory")?;
    let key = image_path
        .file_name()
        .and_then(|n| n.to_str())
        .context("image file name is not UTF-8")?;
    let store = Arc::new(CountingStore {
        inner: DirStore::new(dir),
        io,
    });
    let meta = store.head(key).await?;
    let image = Image::open(store, meta, BlockCache::new(CACHE_BYTES)).await?;
    std::hint::black_box(image.root()?);
    let mut out = Outcome::default();
    match scenario {
        "open" => {}
        "lookup" => {
            let path = arg.context("lookup needs a path")?;
            let inode = image.resolve(path.as_bytes())?;
            if inode.kind != FileKind::File {
                bail!("{path} is not a regular file");
            }
            read_ours(&image, &inode, &mut out).await?;
        }
        "walk" | "readall" => {
            let read = scenario == "readall";
            // Depth first in name order, the order of backhand's `files()`.
            for walked in image.walk(usize::MAX) {
                let inode = walked.inode?;
                out.entries += 1;
                // The fields `stat` reports.
                std::hint::black_box((inode.mode(), inode.uid, inode.gid, inode.mtime));
                match inode.kind {
                    FileKind::File if read => read_ours(&image, &inode, &mut out).await?,
                    FileKind::File => out.file_bytes += inode.size,
                    _ => {}
                }
            }
        }
        other => bail!("unknown scenario {other}"),
    }
    Ok(out)
}

async fn read_ours(image: &Image, inode: &Inode, out: &mut Outcome) -> anyhow::Result<()> {
    let mut adler = Adler::new();
    let mut offset = 0u64;
    loop {
        let data = image.read(inode, offset, CHUNK).await?;
        if data.is_empty() {
            break;
        }
        adler.update(&data);
        offset += data.len() as u64;
    }
    if offset != inode.size {
        bail!("read {offset} bytes of a {}-byte file", inode.size);
    }
    out.file_done(offset, adler);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Backhand

/// A file that counts the reads and seeks reaching it.
struct CountingFile {
    file: File,
    pos: u64,
    io: Arc<Io>,
}

impl Read for CountingFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        bump(&self.io.requests, 1);
        bump(&self.io.bytes, n as u64);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for CountingFile {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = self.file.seek(to)?;
        bump(&self.io.seeks, 1);
        if pos != self.pos {
            bump(&self.io.jumps, 1);
        }
        self.pos = pos;
        Ok(pos)
    }
}

fn backhand(
    scenario: &str,
    image_path: &Path,
    arg: Option<&str>,
    io: Arc<Io>,
) -> anyhow::Result<Outcome> {
    use backhand::{FilesystemReader, InnerNode};
    let file = CountingFile {
        file: File::open(image_path)?,
        pos: 0,
        io,
    };
    let fs = FilesystemReader::from_reader(BufReader::new(file))?;
    let root = fs.root.root();
    std::hint::black_box(&root.header);
    let mut out = Outcome::default();
    let read = |file, out: &mut Outcome| -> anyhow::Result<()> {
        let mut reader = fs.file(file).reader();
        let mut buf = vec![0u8; CHUNK];
        let mut adler = Adler::new();
        let mut len = 0u64;
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            adler.update(&buf[..n]);
            len += n as u64;
        }
        out.file_done(len, adler);
        Ok(())
    };
    match scenario {
        "open" => {}
        "lookup" => {
            let path = Path::new("/").join(arg.context("lookup needs a path")?);
            let nodes = &fs.root.nodes;
            let i = nodes
                .binary_search_by(|n| n.fullpath.as_path().cmp(&path))
                .map_err(|_| anyhow::anyhow!("{} not found", path.display()))?;
            let InnerNode::File(file) = &nodes[i].inner else {
                bail!("{} is not a regular file", path.display());
            };
            read(file, &mut out)?;
        }
        "walk" | "readall" => {
            for node in fs.files().skip(1) {
                out.entries += 1;
                let h = &node.header;
                std::hint::black_box((h.permissions, h.uid, h.gid, h.mtime));
                if let InnerNode::File(file) = &node.inner {
                    if scenario == "readall" {
                        read(file, &mut out)?;
                    } else {
                        out.file_bytes += file.file_len() as u64;
                    }
                }
            }
        }
        other => bail!("unknown scenario {other}"),
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 || args.len() > 5 {
        eprintln!("usage: engine_bench <ours|backhand> <open|lookup|walk|readall> IMAGE [PATH]");
        return std::process::ExitCode::from(2);
    }
    let (engine, scenario, image) = (args[1].as_str(), args[2].as_str(), Path::new(&args[3]));
    let arg = args.get(4).map(String::as_str);
    let io = Arc::new(Io::default());
    let start = Instant::now();
    let result = match engine {
        "ours" => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("tokio runtime")
            .and_then(|rt| rt.block_on(ours(scenario, image, arg, io.clone()))),
        "backhand" => backhand(scenario, image, arg, io.clone()),
        other => Err(anyhow::anyhow!("unknown engine {other}")),
    };
    let seconds = start.elapsed().as_secs_f64();
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut line = format!(
        "{{\"engine\":{},\"scenario\":{},\"seconds\":{seconds:.4},\"requests\":{},\"bytes_read\":{},\"peak_rss_kib\":{}",
        json_string(engine),
        json_string(scenario),
        get(&io.requests),
        get(&io.bytes),
        peak_rss_kib(),
    );
    line += &format!(
        ",\"heads\":{},\"seeks\":{},\"jumps\":{}",
        get(&io.heads),
        get(&io.seeks),
        get(&io.jumps)
    );
    let ok = match &result {
        Ok(out) => {
            line += &format!(
                ",\"files_read\":{},\"entries\":{},\"file_bytes\":{},\"checksum\":{},\"ok\":true}}",
                out.files_read, out.entries, out.file_bytes, out.checksum
            );
            true
        }
        Err(e) => {
            line += &format!(
                ",\"files_read\":null,\"ok\":false,\"error\":{}}}",
                json_string(&format!("{e:#}"))
            );
            false
        }
    };
    println!("{line}");
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
