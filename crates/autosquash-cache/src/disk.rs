//! The chunk files: `DIR/<store>/<object version>/<chunk index>`, each holding a header that
//! names its key, ETag and index (so a hash collision can never serve the wrong bytes), the
//! data, and a CRC32 of both. An in-memory LRU index keeps the total under the cap.

use bytes::Bytes;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use tracing::{info, warn};

const MAGIC: &[u8; 4] = b"ASC1";

/// FNV-1a: a stable 64-bit hash for directory names (std's hasher may change between releases).
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

#[derive(Default)]
struct Index {
    /// Size and last use of every chunk file.
    entries: HashMap<PathBuf, (u64, u64)>,
    total: u64,
    clock: u64,
}

pub(crate) struct Disk {
    dir: PathBuf,
    cap: u64,
    enabled: AtomicBool,
    index: Mutex<Index>,
    /// Chunks evicted so far: a hydration stops when the cache starts evicting.
    evictions: AtomicU64,
}

impl Disk {
    /// Opens (and indexes) the cache for one store under `root`; a cap of 0 is a cache
    /// that is off from the start.
    pub fn open(root: PathBuf, cap: u64, store: &str) -> Self {
        let dir = root.join(format!("{:016x}", fnv(&[store.as_bytes()])));
        let disk = Disk {
            dir,
            cap,
            enabled: AtomicBool::new(cap > 0),
            index: Mutex::default(),
            evictions: AtomicU64::new(0),
        };
        if cap == 0 {
            return disk;
        }
        match std::fs::create_dir_all(&disk.dir).and_then(|()| disk.scan()) {
            Ok(()) => {
                let (total, _) = disk.usage();
                info!(dir = %disk.dir.display(), bytes = total, "disk cache ready");
            }
            Err(e) => disk.disable(&e),
        }
        disk
    }

    /// Rebuilds the index from the files, oldest modification first.
    fn scan(&self) -> std::io::Result<()> {
        let mut found = Vec::new();
        for version in std::fs::read_dir(&self.dir)? {
            let version = version?.path();
            let Ok(chunks) = std::fs::read_dir(&version) else {
                continue;
            };
            for chunk in chunks.flatten() {
                let path = chunk.path();
                let Ok(meta) = chunk.metadata() else { continue };
                if path.extension().is_some() {
                    // A temporary file of a write that never finished.
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                let age = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .map_or(0, |d| d.as_secs());
                found.push((age, path, meta.len()));
            }
        }
        found.sort_by_key(|f| std::cmp::Reverse(f.0));
        let mut index = self.lock();
        for (_, path, size) in found {
            index.clock += 1;
            let clock = index.clock;
            index.total += size;
            index.entries.insert(path, (size, clock));
        }
        drop(index);
        self.evict();
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the disk cache is working (a full or failing disk turns it off).
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub fn cap(&self) -> u64 {
        self.cap
    }

    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    pub fn usage(&self) -> (u64, bool) {
        (self.lock().total, self.enabled.load(Ordering::Relaxed))
    }

    fn disable(&self, e: &std::io::Error) {
        if self.enabled.swap(false, Ordering::Relaxed) {
            warn!(dir = %self.dir.display(), error = %e, "disk cache turned off; reads go to the store");
        }
    }

    pub fn path(&self, key: &str, etag: &str, index: u64) -> PathBuf {
        let version = fnv(&[key.as_bytes(), etag.as_bytes()]);
        self.dir
            .join(format!("{version:016x}"))
            .join(index.to_string())
    }

    /// Whether the chunk file is indexed (present unless removed behind our back).
    pub fn contains(&self, path: &Path) -> bool {
        self.enabled.load(Ordering::Relaxed) && self.lock().entries.contains_key(path)
    }

    /// Asks the kernel to read chunk files into the page cache (it does so in the
    /// background), so a reader arriving there finds them in memory.
    pub fn read_ahead(&self, paths: &[PathBuf]) {
        for path in paths {
            if let Ok(file) = std::fs::File::open(path) {
                let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::WillNeed);
            }
        }
    }

    fn header(key: &str, etag: &str, index: u64) -> Vec<u8> {
        let mut h = MAGIC.to_vec();
        let body = format!("{key}\0{etag}\0{index}");
        h.extend_from_slice(&(body.len() as u32).to_le_bytes());
        h.extend_from_slice(body.as_bytes());
        h
    }

    /// The chunk if it is on disk and intact; a damaged file is removed. The file is read
    /// inline when its pages are in memory, else on the blocking pool (never on an async
    /// worker), so concurrent callers read from disk in parallel.
    pub async fn get(&self, key: &str, etag: &str, index: u64) -> Option<Bytes> {
        if !self.enabled.load(Ordering::Relaxed) {
            return None;
        }
        let path = self.path(key, etag, index);
        {
            let mut idx = self.lock();
            idx.clock += 1;
            let clock = idx.clock;
            idx.entries.get_mut(&path)?.1 = clock;
        }
        let bytes = match read_if_cached(&path) {
            Some(bytes) => Some(bytes),
            None => {
                let owned = path.clone();
                tokio::task::spawn_blocking(move || std::fs::read(owned).ok())
                    .await
                    .ok()
                    .flatten()
            }
        };
        let header = Self::header(key, etag, index);
        let valid = bytes.as_ref().and_then(|b| {
            let body = b.strip_prefix(header.as_slice())?;
            let (data, crc) = body.split_at_checked(body.len().checked_sub(4)?)?;
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&header);
            hasher.update(data);
            (hasher.finalize().to_le_bytes() == crc).then_some(data.len())
        });
        match (bytes, valid) {
            (Some(b), Some(len)) => Some(Bytes::from(b).slice(header.len()..header.len() + len)),
            _ => {
                warn!(path = %path.display(), "damaged or missing cache chunk dropped; fetching it again");
                self.remove(&path);
                None
            }
        }
    }

    /// Stores a chunk; a failure turns the disk cache off.
    pub fn put(&self, key: &str, etag: &str, index: u64, data: &[u8]) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        let path = self.path(key, etag, index);
        let header = Self::header(key, etag, index);
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&header);
        hasher.update(data);
        let crc = hasher.finalize().to_le_bytes();
        let size = (header.len() + data.len() + 4) as u64;
        if let Err(e) = write_atomically(&path, &[&header, data, &crc]) {
            self.disable(&e);
            return;
        }
        {
            let mut idx = self.lock();
            idx.clock += 1;
            let clock = idx.clock;
            if let Some((old, _)) = idx.entries.insert(path, (size, clock)) {
                idx.total -= old;
            }
            idx.total += size;
        }
        self.evict();
    }

    fn remove(&self, path: &Path) {
        let _ = std::fs::remove_file(path);
        let mut idx = self.lock();
        if let Some((size, _)) = idx.entries.remove(path) {
            idx.total -= size;
        }
    }

    /// Deletes least recently used chunks until the total is under 90% of the cap.
    fn evict(&self) {
        let victims: Vec<PathBuf> = {
            let idx = self.lock();
            if idx.total <= self.cap {
                return;
            }
            let mut by_age: Vec<_> = idx
                .entries
                .iter()
                .map(|(p, (s, t))| (*t, *s, p.clone()))
                .collect();
            by_age.sort_unstable_by_key(|e| e.0);
            let target = self.cap / 10 * 9;
            let mut total = idx.total;
            by_age
                .into_iter()
                .take_while(|(_, size, _)| {
                    let over = total > target;
                    total -= size;
                    over
                })
                .map(|(_, _, p)| p)
                .collect()
        };
        self.evictions
            .fetch_add(victims.len() as u64, Ordering::Relaxed);
        for path in victims {
            self.remove(&path);
        }
    }
}

/// The whole file, if every page of it is in memory (`RWF_NOWAIT`); `None` to read it from
/// disk elsewhere (or if it cannot be opened: the blocking read reports that).
fn read_if_cached(path: &Path) -> Option<Vec<u8>> {
    let file = std::fs::File::open(path).ok()?;
    // A chunk file is a chunk plus a short header: anything larger is damaged (the blocking
    // read and the CRC check then drop it), never a reason for a large allocation here.
    let len = usize::try_from(file.metadata().ok()?.len())
        .ok()
        .filter(|&n| n <= 2 * crate::CHUNK as usize)?;
    let mut buf = vec![0; len];
    let mut io = [std::io::IoSliceMut::new(&mut buf)];
    let n = rustix::io::preadv2(&file, &mut io, 0, rustix::io::ReadWriteFlags::NOWAIT).ok()?;
    (n == len).then_some(buf)
}

fn write_atomically(path: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    // Unique per write: two writers of one chunk must not share a temporary file (the second
    // rename would fail and, taken for a failing disk, turn the cache off).
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        for part in parts {
            file.write_all(part)?;
        }
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
