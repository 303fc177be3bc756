//! The disk cache's files. Each object version has two, in `DIR/<store>/`:
//! - `<version>.data`, a sparse file of the object's size that holds the chunks cached so far
//!   at their own offsets, so a cached image is read like a local one: one `pread` per read,
//!   whatever its length, and no file to create, open or rename per chunk;
//! - `<version>.map`, a header naming the key, ETag and size (a hash collision of file names
//!   can never serve the wrong bytes), then one record per chunk: present or not, and the
//!   CRC32 of its bytes, checked on every read.
//!
//! Crash safety without renames: a chunk's data is written before its record and dropped
//! after it (its record cleared, then a hole punched), and a record whose CRC does not match
//! the data (a crash or power loss between the two writes) is a damaged chunk, dropped and
//! fetched again. An in-memory LRU index of chunks keeps the total under the cap; it is
//! rebuilt at start from the map files.

use autosquash_core::ObjectMeta;
use bytes::Bytes;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::hash::BuildHasher;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use tracing::{info, warn};

use crate::CHUNK;

const MAGIC: &[u8; 4] = b"ASM1";
/// Marks a record as present; an all-zero record is a missing chunk.
const PRESENT: u32 = 0x4b43_4331;
const RECORD: u64 = 8;
/// A map file larger than this (a 64 TiB object) is not ours.
const MAP_MAX: u64 = 2 << 30;

/// One chunk of one object version, as the in-memory tables know it. The version is a keyed
/// hash of key and ETag, random per process, so nobody can craft two objects that share one.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct ChunkId {
    version: u64,
    index: u64,
}

/// FNV-1a: a stable 64-bit hash for file names (std's hasher may change between releases).
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

/// A cached object version.
struct Version {
    key: String,
    etag: String,
    size: u64,
    /// Its files, without the extension.
    stem: PathBuf,
    /// CRC and last use of each chunk on disk.
    chunks: HashMap<u64, (u32, u64)>,
}

impl Version {
    fn is(&self, object: &ObjectMeta) -> bool {
        self.key == object.key && self.etag == object.etag && self.size == object.size
    }
}

#[derive(Default)]
struct Index {
    versions: HashMap<u64, Version>,
    /// Bytes of all chunks on disk.
    total: u64,
    clock: u64,
}

pub(crate) struct Disk {
    dir: PathBuf,
    cap: u64,
    enabled: AtomicBool,
    hasher: std::collections::hash_map::RandomState,
    index: Mutex<Index>,
    /// Held while a version's files are created or removed, so two writers of a new version
    /// never both create (and truncate) its files.
    files: Mutex<()>,
    /// Chunks evicted so far: a hydration stops when the cache starts evicting.
    evictions: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The bytes of chunk `index` of an object of `size` bytes.
fn chunk_len(size: u64, index: u64) -> u64 {
    size.saturating_sub(index * CHUNK).min(CHUNK)
}

fn crc(index: u64, data: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&index.to_le_bytes());
    hasher.update(data);
    hasher.finalize()
}

fn header(key: &str, etag: &str, size: u64) -> Vec<u8> {
    let body = format!("{key}\0{etag}\0{size}");
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
    h.extend_from_slice(body.as_bytes());
    h
}

fn data_path(stem: &std::path::Path) -> PathBuf {
    stem.with_extension("data")
}

fn map_path(stem: &std::path::Path) -> PathBuf {
    stem.with_extension("map")
}

/// The version a map file describes and its present chunks (with their CRCs); `None` if it
/// is not one.
fn parse_map(bytes: &[u8]) -> Option<(ObjectMeta, Vec<(u64, u32)>)> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let (len, rest) = rest.split_first_chunk::<4>()?;
    let (body, records) = rest.split_at_checked(usize::try_from(u32::from_le_bytes(*len)).ok()?)?;
    let mut fields = std::str::from_utf8(body).ok()?.split('\0');
    let (key, etag) = (fields.next()?.to_owned(), fields.next()?.to_owned());
    let size: u64 = fields.next()?.parse().ok()?;
    let count = size.div_ceil(CHUNK);
    if fields.next().is_some() || records.len() as u64 != count.checked_mul(RECORD)? {
        return None;
    }
    let present = records
        .chunks_exact(RECORD as usize)
        .zip(0u64..)
        .filter_map(|(record, i)| {
            let (crc, tag) = record.split_first_chunk::<4>()?;
            let tag = u32::from_le_bytes(tag.try_into().ok()?);
            (tag == PRESENT).then(|| (i, u32::from_le_bytes(*crc)))
        })
        .collect();
    Some((ObjectMeta { key, etag, size }, present))
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
            hasher: Default::default(),
            index: Mutex::default(),
            files: Mutex::default(),
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

    /// Rebuilds the index from the map files, the least recently written first; removes
    /// what is not a version's pair of files (and the chunk directories of older releases).
    fn scan(&self) -> std::io::Result<()> {
        let mut found = Vec::new();
        let mut dropped = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.is_dir() {
                dropped += 1;
                let _ = std::fs::remove_dir_all(&path);
                continue;
            }
            match path.extension().and_then(|e| e.to_str()) {
                Some("map") => {}
                Some("data") if map_path(&path).exists() => continue,
                _ => {
                    dropped += 1;
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
            }
            let stem = path.with_extension("");
            let parsed = std::fs::metadata(&path)
                .ok()
                .filter(|m| m.len() <= MAP_MAX && data_path(&stem).exists())
                .and_then(|m| Some((m, std::fs::read(&path).ok()?)))
                .and_then(|(m, bytes)| Some((m, parse_map(&bytes)?)));
            let Some((meta, (object, present))) = parsed else {
                dropped += 1;
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_file(data_path(&stem));
                continue;
            };
            let age = meta
                .modified()
                .ok()
                .and_then(|t| t.elapsed().ok())
                .map_or(0, |d| d.as_secs());
            found.push((age, object, stem, present));
        }
        if dropped > 0 {
            info!(dir = %self.dir.display(), dropped, "disk cache: removed files that are not a cached version");
        }
        found.sort_by_key(|f| std::cmp::Reverse(f.0));
        let mut index = lock(&self.index);
        for (_, ObjectMeta { key, etag, size }, stem, present) in found {
            index.clock += 1;
            let clock = index.clock;
            let mut chunks = HashMap::with_capacity(present.len());
            for (i, crc) in present {
                index.total += chunk_len(size, i);
                chunks.insert(i, (crc, clock));
            }
            let version = self.hasher.hash_one((&key, &etag));
            index.versions.insert(
                version,
                Version {
                    key,
                    etag,
                    size,
                    stem,
                    chunks,
                },
            );
        }
        drop(index);
        self.evict();
        Ok(())
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
        (lock(&self.index).total, self.enabled())
    }

    fn disable(&self, e: &std::io::Error) {
        if self.enabled.swap(false, Ordering::Relaxed) {
            warn!(dir = %self.dir.display(), error = %e, "disk cache turned off; reads go to the store");
        }
    }

    pub fn id(&self, object: &ObjectMeta, index: u64) -> ChunkId {
        ChunkId {
            version: self.hasher.hash_one((&object.key, &object.etag)),
            index,
        }
    }

    /// Whether the chunk is on disk (unless removed behind our back: its read then fails
    /// and drops it).
    pub fn contains(&self, object: &ObjectMeta, index: u64) -> bool {
        let id = self.id(object, index);
        self.enabled()
            && lock(&self.index)
                .versions
                .get(&id.version)
                .is_some_and(|v| v.is(object) && v.chunks.contains_key(&index))
    }

    /// Asks the kernel to read chunks of `object` into the page cache (it does so in the
    /// background), so a reader arriving there finds them in memory.
    pub fn read_ahead(&self, object: &ObjectMeta, indices: &[u64]) {
        let Some(stem) = self.stem(object) else {
            return;
        };
        let Ok(file) = File::open(data_path(&stem)) else {
            return;
        };
        let mut n = 0;
        while n < indices.len() {
            let mut end = n + 1;
            while end < indices.len() && indices[end] == indices[end - 1] + 1 {
                end += 1;
            }
            let len = (indices[end - 1] + 1 - indices[n]) * CHUNK;
            let _ = rustix::fs::fadvise(
                &file,
                indices[n] * CHUNK,
                std::num::NonZeroU64::new(len),
                rustix::fs::Advice::WillNeed,
            );
            n = end;
        }
    }

    fn stem(&self, object: &ObjectMeta) -> Option<PathBuf> {
        let id = self.id(object, 0);
        let index = lock(&self.index);
        let version = index.versions.get(&id.version).filter(|v| v.is(object))?;
        Some(version.stem.clone())
    }

    /// Chunks `chunks` of `object` as one run of bytes, if all of them are on disk and
    /// intact; a damaged one is dropped. The file is read inline when its pages are in
    /// memory, else on the blocking pool (never on an async worker), so concurrent callers
    /// read from disk in parallel.
    pub async fn get(&self, object: &ObjectMeta, chunks: std::ops::Range<u64>) -> Option<Bytes> {
        if !self.enabled() || chunks.is_empty() {
            return None;
        }
        let (stem, crcs) = {
            let id = self.id(object, chunks.start);
            let mut index = lock(&self.index);
            index.clock += 1;
            let clock = index.clock;
            let version = index
                .versions
                .get_mut(&id.version)
                .filter(|v| v.is(object))?;
            let mut crcs = Vec::with_capacity((chunks.end - chunks.start) as usize);
            for i in chunks.clone() {
                let entry = version.chunks.get_mut(&i)?;
                entry.1 = clock;
                crcs.push(entry.0);
            }
            (version.stem.clone(), crcs)
        };
        let offset = chunks.start * CHUNK;
        let len =
            usize::try_from((chunks.end * CHUNK).min(object.size).checked_sub(offset)?).ok()?;
        let path = data_path(&stem);
        let mut buf = vec![0; len];
        let inline = File::open(&path)
            .ok()
            .map_or(0, |file| read_if_cached(&file, offset, &mut buf));
        let buf = if inline == len {
            Some(buf)
        } else {
            // The rest from disk, on the blocking pool.
            tokio::task::spawn_blocking(move || {
                let rest = buf.get_mut(inline..).unwrap_or_default();
                File::open(path).and_then(|f| f.read_exact_at(rest, offset + inline as u64))?;
                Ok::<_, std::io::Error>(buf)
            })
            .await
            .ok()
            .and_then(Result::ok)
        };
        let damaged: Vec<u64> = match &buf {
            Some(buf) => chunks
                .clone()
                .zip(buf.chunks(CHUNK as usize))
                .zip(&crcs)
                .filter(|((i, data), want)| crc(*i, data) != **want)
                .map(|((i, _), _)| i)
                .collect(),
            None => chunks.clone().collect(),
        };
        if !damaged.is_empty() {
            warn!(key = %object.key, chunks = damaged.len(), "damaged or missing cache chunks dropped; fetching them again");
            self.drop_chunks(object, &damaged, Some(&crcs[..]), chunks.start);
            return None;
        }
        buf.map(Bytes::from)
    }

    /// Stores chunks of `object`; a failure turns the disk cache off.
    pub fn put(&self, object: &ObjectMeta, chunks: &[(u64, Bytes)]) {
        if !self.enabled() || chunks.is_empty() {
            return;
        }
        if let Err(e) = self.write(object, chunks) {
            self.disable(&e);
            return;
        }
        self.evict();
    }

    fn write(&self, object: &ObjectMeta, chunks: &[(u64, Bytes)]) -> std::io::Result<()> {
        let stem = self.create(object)?;
        let data = OpenOptions::new().write(true).open(data_path(&stem))?;
        let map = OpenOptions::new().write(true).open(map_path(&stem))?;
        let records_at = header(&object.key, &object.etag, object.size).len() as u64;
        let mut written = Vec::with_capacity(chunks.len());
        for (i, bytes) in chunks {
            if bytes.len() as u64 != chunk_len(object.size, *i) {
                continue;
            }
            let crc = crc(*i, bytes);
            data.write_all_at(bytes, i * CHUNK)?;
            let mut record = [0u8; RECORD as usize];
            record[..4].copy_from_slice(&crc.to_le_bytes());
            record[4..].copy_from_slice(&PRESENT.to_le_bytes());
            map.write_all_at(&record, records_at + i * RECORD)?;
            written.push((*i, crc));
        }
        let id = self.id(object, 0);
        let mut index = lock(&self.index);
        index.clock += 1;
        let clock = index.clock;
        let mut added = 0;
        // Evicted whole meanwhile: what was written went with its files.
        if let Some(version) = index.versions.get_mut(&id.version).filter(|v| v.is(object)) {
            for (i, crc) in written {
                if version.chunks.insert(i, (crc, clock)).is_none() {
                    added += chunk_len(object.size, i);
                }
            }
        }
        index.total += added;
        Ok(())
    }

    /// The files of `object`'s version, created if it has none yet.
    fn create(&self, object: &ObjectMeta) -> std::io::Result<PathBuf> {
        if let Some(stem) = self.stem(object) {
            return Ok(stem);
        }
        let _files = lock(&self.files);
        if let Some(stem) = self.stem(object) {
            return Ok(stem);
        }
        let name = fnv(&[object.key.as_bytes(), object.etag.as_bytes()]);
        let stem = self.dir.join(format!("{name:016x}"));
        // A version whose file names collide with this one's loses its files here; its
        // chunks then fail their CRC and are fetched again: never the wrong bytes.
        let id = self.id(object, 0);
        let collided = {
            let mut index = lock(&self.index);
            let stale: Vec<u64> = index
                .versions
                .iter()
                .filter(|(_, v)| v.stem == stem)
                .map(|(k, _)| *k)
                .collect();
            let mut freed = 0;
            for k in &stale {
                if let Some(v) = index.versions.remove(k) {
                    freed += v.chunks.keys().map(|&i| chunk_len(v.size, i)).sum::<u64>();
                }
            }
            index.total -= freed;
            !stale.is_empty()
        };
        if collided {
            warn!(key = %object.key, "disk cache: two versions share file names; the older one is dropped");
        }
        std::fs::create_dir_all(&self.dir)?;
        let data = File::create(data_path(&stem))?;
        data.set_len(object.size)?;
        let head = header(&object.key, &object.etag, object.size);
        let map = File::create(map_path(&stem))?;
        map.write_all_at(&head, 0)?;
        map.set_len(head.len() as u64 + object.size.div_ceil(CHUNK) * RECORD)?;
        lock(&self.index).versions.insert(
            id.version,
            Version {
                key: object.key.clone(),
                etag: object.etag.clone(),
                size: object.size,
                stem: stem.clone(),
                chunks: HashMap::new(),
            },
        );
        Ok(stem)
    }

    /// Drops chunks of `object` from disk: records cleared, then holes punched. With
    /// `expected` (the CRCs read, for chunks from `base` on), only chunks whose record is
    /// still that one: a chunk written again meanwhile stays.
    fn drop_chunks(
        &self,
        object: &ObjectMeta,
        indices: &[u64],
        expected: Option<&[u32]>,
        base: u64,
    ) {
        let id = self.id(object, 0);
        let (stem, gone, empty) = {
            let mut index = lock(&self.index);
            let Some(version) = index.versions.get_mut(&id.version).filter(|v| v.is(object)) else {
                return;
            };
            let mut gone = Vec::new();
            for &i in indices {
                let want =
                    expected.and_then(|e| e.get(usize::try_from(i.checked_sub(base)?).ok()?));
                let current = version.chunks.get(&i).map(|c| c.0);
                if current.is_some() && (want.is_none() || want == current.as_ref()) {
                    version.chunks.remove(&i);
                    gone.push(i);
                }
            }
            let (stem, empty, size) = (
                version.stem.clone(),
                version.chunks.is_empty(),
                version.size,
            );
            index.total -= gone.iter().map(|&i| chunk_len(size, i)).sum::<u64>();
            (stem, gone, empty)
        };
        self.clear(object, &stem, &gone, empty);
    }

    /// Removes chunks `gone` from the files at `stem`, or the files themselves if `empty`
    /// (or if a hole cannot be punched: the space must come back).
    fn clear(&self, object: &ObjectMeta, stem: &std::path::Path, gone: &[u64], empty: bool) {
        let records_at = header(&object.key, &object.etag, object.size).len() as u64;
        let cleared = !empty
            && (|| {
                let map = OpenOptions::new().write(true).open(map_path(stem))?;
                let data = OpenOptions::new().write(true).open(data_path(stem))?;
                for &i in gone {
                    map.write_all_at(&[0; RECORD as usize], records_at + i * RECORD)?;
                    rustix::fs::fallocate(
                        &data,
                        rustix::fs::FallocateFlags::PUNCH_HOLE
                            | rustix::fs::FallocateFlags::KEEP_SIZE,
                        i * CHUNK,
                        CHUNK,
                    )?;
                }
                Ok::<_, std::io::Error>(())
            })()
            .is_ok();
        if !cleared {
            self.remove_version(object, stem);
        }
    }

    /// Removes a version's files and its entry.
    fn remove_version(&self, object: &ObjectMeta, stem: &std::path::Path) {
        let _files = lock(&self.files);
        let id = self.id(object, 0);
        {
            let mut index = lock(&self.index);
            if let Some(v) = index.versions.remove(&id.version) {
                index.total -= v.chunks.keys().map(|&i| chunk_len(v.size, i)).sum::<u64>();
            }
        }
        let _ = std::fs::remove_file(map_path(stem));
        let _ = std::fs::remove_file(data_path(stem));
    }

    /// Drops least recently used chunks until the total is under 90% of the cap.
    fn evict(&self) {
        let victims: Vec<(ObjectMeta, PathBuf, Vec<u64>, bool)> = {
            let mut index = lock(&self.index);
            if index.total <= self.cap {
                return;
            }
            let mut by_age: Vec<(u64, u64, u64, u64)> = index
                .versions
                .iter()
                .flat_map(|(&v, version)| {
                    version
                        .chunks
                        .iter()
                        .map(move |(&i, &(_, used))| (used, v, i, chunk_len(version.size, i)))
                })
                .collect();
            by_age.sort_unstable_by_key(|e| e.0);
            let target = self.cap / 10 * 9;
            let mut total = index.total;
            let mut chosen: HashMap<u64, Vec<u64>> = HashMap::new();
            for (_, v, i, len) in by_age {
                if total <= target {
                    break;
                }
                total -= len;
                chosen.entry(v).or_default().push(i);
            }
            self.evictions.fetch_add(
                chosen.values().map(|c| c.len() as u64).sum(),
                Ordering::Relaxed,
            );
            index.total = total;
            chosen
                .into_iter()
                .filter_map(|(v, indices)| {
                    let version = index.versions.get_mut(&v)?;
                    for i in &indices {
                        version.chunks.remove(i);
                    }
                    let object = ObjectMeta {
                        key: version.key.clone(),
                        etag: version.etag.clone(),
                        size: version.size,
                    };
                    Some((
                        object,
                        version.stem.clone(),
                        indices,
                        version.chunks.is_empty(),
                    ))
                })
                .collect()
        };
        for (object, stem, gone, empty) in victims {
            self.clear(&object, &stem, &gone, empty);
        }
    }
}

/// Reads what of `buf` is in memory at `offset` of `file` without waiting for the disk
/// (`RWF_NOWAIT`, which stops at the first page that is not); the bytes read.
fn read_if_cached(file: &File, offset: u64, buf: &mut [u8]) -> usize {
    let mut done = 0;
    while done < buf.len() {
        let mut io = [std::io::IoSliceMut::new(&mut buf[done..])];
        let at = offset + done as u64;
        match rustix::io::preadv2(file, &mut io, at, rustix::io::ReadWriteFlags::NOWAIT) {
            Ok(n) if n > 0 => done += n,
            _ => break,
        }
    }
    done
}
