//! Each property of the disk cache, against an in-memory store that counts requests.

use autosquash_cache::{CHUNK, CachedStore};
use autosquash_core::{MemStore, ObjectMeta, Store};
use std::sync::Arc;
use std::time::Duration;

fn object(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 3) as u8).collect()
}

/// A cached store over a `MemStore` holding `len` bytes as "obj", with the version learned.
async fn setup(
    dir: &std::path::Path,
    cap: u64,
    len: usize,
) -> (Arc<CachedStore<Arc<MemStore>>>, Arc<MemStore>, ObjectMeta) {
    let mem = Arc::new(MemStore::new());
    mem.put("obj", object(len));
    let cached = Arc::new(CachedStore::new(mem.clone(), dir.to_path_buf(), cap));
    let meta = cached.head("obj").await.unwrap();
    mem.reset_stats();
    (cached, mem, meta)
}

#[tokio::test]
async fn reads_are_kept_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = object(5 << 20);
    let (cached, mem, meta) = setup(dir.path(), 1 << 30, data.len()).await;
    let got = cached.read(&meta, 1000..3_000_000).await.unwrap();
    assert_eq!(got[..], data[1000..3_000_000]);
    assert_eq!(mem.stats().reads, 1, "three missing chunks are one request");
    drop(cached);
    // A new daemon on the same directory: nothing is fetched again.
    let (cached, mem, meta2) = setup(dir.path(), 1 << 30, data.len()).await;
    assert_eq!(meta, meta2);
    let got = cached.read(&meta, 500_000..2_500_000).await.unwrap();
    assert_eq!(got[..], data[500_000..2_500_000]);
    assert_eq!(mem.stats().reads, 0);
    // The last chunk of the object is short, and cached as such.
    let tail = cached.read(&meta, (5 << 20) - 10..5 << 20).await.unwrap();
    assert_eq!(tail[..], data[data.len() - 10..]);
    assert_eq!(
        cached.read(&meta, (5 << 20) - 10..5 << 20).await.unwrap(),
        tail
    );
    assert_eq!(mem.stats().reads, 1);
}

/// The cache's files of one extension ("data" or "map").
fn files(dir: &std::path::Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for store in std::fs::read_dir(dir).unwrap().flatten() {
        for f in std::fs::read_dir(store.path()).unwrap().flatten() {
            if f.path().extension().is_some_and(|e| e == ext) {
                found.push(f.path());
            }
        }
    }
    found
}

/// Bytes the cache's files take on disk (holes take none).
fn allocated(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    ["data", "map"]
        .iter()
        .flat_map(|ext| files(dir, ext))
        .map(|f| std::fs::metadata(f).unwrap().blocks() * 512)
        .sum()
}

fn flip_byte(path: &std::path::Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    file.read_exact_at(&mut b, at).unwrap();
    file.write_all_at(&[b[0] ^ 0x40], at).unwrap();
}

#[tokio::test]
async fn a_damaged_chunk_is_dropped_and_fetched_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = object(2 << 20);
    let (cached, mem, meta) = setup(dir.path(), 1 << 30, data.len()).await;
    cached.read(&meta, 0..100).await.unwrap();
    let data_files = files(dir.path(), "data");
    assert_eq!(data_files.len(), 1, "one file per object version");
    flip_byte(&data_files[0], CHUNK / 2);
    let got = cached.read(&meta, 0..CHUNK).await.unwrap();
    assert_eq!(
        got[..],
        data[..CHUNK as usize],
        "a damaged chunk was served"
    );
    assert_eq!(mem.stats().reads, 2);
    // And the fresh copy is good again.
    cached.read(&meta, 0..CHUNK).await.unwrap();
    assert_eq!(mem.stats().reads, 2);
}

/// A crash between a chunk's data and its record, as a restart finds it: the record says
/// present, the bytes are not those. The chunk is fetched again, and its neighbours are not.
#[tokio::test]
async fn after_a_restart_a_torn_chunk_is_fetched_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = object((4 * CHUNK) as usize);
    let (cached, mem, meta) = setup(dir.path(), 1 << 30, data.len()).await;
    cached.read(&meta, 0..4 * CHUNK).await.unwrap();
    assert_eq!(mem.stats().reads, 1);
    drop(cached);
    flip_byte(&files(dir.path(), "data")[0], 2 * CHUNK + 7);
    let (cached, mem, _) = setup(dir.path(), 1 << 30, data.len()).await;
    let got = cached.read(&meta, 0..4 * CHUNK).await.unwrap();
    assert_eq!(got[..], data[..], "a torn chunk was served after a restart");
    assert_eq!(mem.stats().reads, 1);
    assert_eq!(
        mem.stats().bytes,
        CHUNK,
        "more than the torn chunk was fetched"
    );
}

/// A damaged map (its header, so nothing in it can be trusted) and the chunk directories of
/// an older release: both removed at start, and reads fetch again.
#[tokio::test]
async fn files_that_are_not_a_cached_version_are_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = object((2 * CHUNK) as usize);
    let (cached, _, meta) = setup(dir.path(), 1 << 30, data.len()).await;
    cached.read(&meta, 0..2 * CHUNK).await.unwrap();
    drop(cached);
    let map = files(dir.path(), "map").remove(0);
    flip_byte(&map, 1);
    let old = map.parent().unwrap().join("0123456789abcdef");
    std::fs::create_dir(&old).unwrap();
    std::fs::write(old.join("0"), b"a chunk file of before").unwrap();
    let (cached, mem, _) = setup(dir.path(), 1 << 30, data.len()).await;
    assert_eq!(cached.disk_usage().unwrap().0, 0);
    assert!(!old.exists(), "an old chunk directory was kept");
    assert!(
        files(dir.path(), "data").is_empty(),
        "a version with a bad map was kept"
    );
    let got = cached.read(&meta, 0..2 * CHUNK).await.unwrap();
    assert_eq!(got[..], data[..]);
    assert_eq!(mem.stats().reads, 1);
}

#[tokio::test]
async fn the_cache_stays_under_its_cap() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 3 * CHUNK + CHUNK / 2;
    let data = object((30 * CHUNK) as usize);
    let (cached, mem, meta) = setup(dir.path(), cap, data.len()).await;
    // Every third chunk: a random reader, so nothing is fetched ahead.
    for i in (0..10).map(|i| i * 3) {
        let got = cached.read(&meta, i * CHUNK..i * CHUNK + 10).await.unwrap();
        assert_eq!(
            got[..],
            data[(i * CHUNK) as usize..(i * CHUNK) as usize + 10]
        );
        assert!(
            cached.disk_usage().unwrap().0 <= cap,
            "{} bytes over a cap of {cap}",
            cached.disk_usage().unwrap().0
        );
        // What is evicted gives its space back (holes), headers and records aside.
        assert!(
            allocated(dir.path()) <= cap + (64 << 10),
            "{} bytes allocated for a cap of {cap}",
            allocated(dir.path())
        );
    }
    // The most recent chunk is still there; the oldest was evicted.
    let before = mem.stats().reads;
    cached
        .read(&meta, 27 * CHUNK..27 * CHUNK + 10)
        .await
        .unwrap();
    assert_eq!(mem.stats().reads, before);
    cached.read(&meta, 0..10).await.unwrap();
    assert_eq!(mem.stats().reads, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_readers_of_one_chunk_share_one_request() {
    let dir = tempfile::tempdir().unwrap();
    let (cached, mem, meta) = setup(dir.path(), 1 << 30, 3 << 20).await;
    mem.set_delay(Duration::from_millis(200));
    let readers: Vec<_> = (0..8)
        .map(|i| {
            let (cached, meta) = (cached.clone(), meta.clone());
            tokio::spawn(async move {
                cached
                    .read(&meta, CHUNK + i * 1000..CHUNK + i * 1000 + 100)
                    .await
            })
        })
        .collect();
    for r in readers {
        r.await.unwrap().unwrap();
    }
    assert_eq!(mem.stats().reads, 1);
}

#[tokio::test]
async fn a_version_the_cache_never_listed_is_cached_too() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemStore::new());
    mem.put("obj", object(100));
    let meta = mem.head("obj").await.unwrap();
    let cached = CachedStore::new(mem.clone(), dir.path().to_path_buf(), 1 << 30);
    assert_eq!(
        cached.read(&meta, 10..20).await.unwrap()[..],
        object(100)[10..20]
    );
    assert_eq!(
        cached.read(&meta, 10..20).await.unwrap()[..],
        object(100)[10..20]
    );
    // The version travels with the read (no side map of sizes that could forget it).
    assert_eq!(mem.stats().reads, 1);
    assert!(cached.disk_usage().unwrap().0 > 0);
}

/// Unmounts a test tmpfs even when the test fails.
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A full disk: a 1 MiB tmpfs. Reads keep working; the disk cache turns itself off.
#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
async fn a_full_disk_turns_the_cache_off_and_reads_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "mounting a tmpfs needs root (root-tests ring)"
    );
    let _tmpfs = Tmpfs(dir.path().to_path_buf());
    let data = object(16 << 20);
    let (cached, mem, meta) = setup(dir.path(), 1 << 30, data.len()).await;
    // Far apart, so no read looks sequential and nothing is fetched ahead.
    for i in [0, 8, 4, 12] {
        let range = i * CHUNK..(i + 1) * CHUNK;
        let got = cached.read(&meta, range.clone()).await.unwrap();
        assert_eq!(got[..], data[range.start as usize..range.end as usize]);
    }
    assert!(
        !cached.disk_usage().unwrap().1,
        "the disk cache is still on with a full disk"
    );
    // Off, a random reader fetches what is asked and nothing more (a whole chunk would be
    // thrown away).
    mem.reset_stats();
    for i in [20u64, 50, 30, 60, 40, 25, 4] {
        let range = i * CHUNK..i * CHUNK + 1000;
        let got = cached.read(&meta, range.clone()).await.unwrap();
        assert_eq!(got[..], data[range.start as usize..range.end as usize]);
    }
    assert_eq!(
        mem.stats().bytes,
        7 * 1000,
        "bytes fetched with the cache off"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_spans_fetch_each_chunk_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = object((16 * CHUNK) as usize);
    let (cached, mem, meta) = setup(dir.path(), 1 << 30, data.len()).await;
    mem.set_delay(Duration::from_millis(100));
    // A foreground reader and a readahead covering overlapping runs of chunks, at once.
    let ranges = [
        0..8 * CHUNK,
        4 * CHUNK..12 * CHUNK,
        2 * CHUNK + 5..14 * CHUNK,
        0..16 * CHUNK,
    ];
    let readers: Vec<_> = ranges
        .iter()
        .cloned()
        .map(|r| {
            let (cached, meta) = (cached.clone(), meta.clone());
            tokio::spawn(async move { (r.clone(), cached.read(&meta, r).await.unwrap()) })
        })
        .collect();
    for reader in readers {
        let (r, got) = reader.await.unwrap();
        assert!(got[..] == data[r.start as usize..r.end as usize]);
    }
    assert_eq!(
        mem.stats().bytes,
        16 * CHUNK,
        "chunks were fetched more than once"
    );
}

/// Regression: two writers of one chunk shared a temporary file name, and the loser's failed
/// rename turned the whole disk cache off.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_writers_of_one_chunk_keep_the_cache_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = object((4 * CHUNK) as usize);
    for round in 0..20 {
        // Separate caches over one directory race for the same chunk files.
        let caches: Vec<_> = (0..4)
            .map(|_| {
                let mem = Arc::new(MemStore::new());
                mem.put("obj", data.clone());
                Arc::new(CachedStore::new(
                    mem,
                    dir.path().join(format!("r{round}")),
                    1 << 30,
                ))
            })
            .collect();
        let mut tasks = Vec::new();
        for cache in &caches {
            let cache = cache.clone();
            tasks.push(tokio::spawn(async move {
                let meta = cache.head("obj").await.unwrap();
                cache.read(&meta, 0..4 * CHUNK).await.unwrap();
                cache.disk_usage().unwrap().1
            }));
        }
        for task in tasks {
            assert!(
                task.await.unwrap(),
                "a racing write turned the disk cache off"
            );
        }
    }
}

/// A reader walking forward through an object finds its chunks fetched ahead in parts (on a
/// single-threaded runtime, so which task claims a chunk first is the same on every run).
#[tokio::test]
async fn a_sequential_reader_gets_chunks_fetched_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let data = object((64 * CHUNK) as usize);
    let (cached, mem, meta) = setup(dir.path(), 1 << 30, data.len()).await;
    mem.set_delay(Duration::from_millis(20));
    // Small reads walking forward through the object, as `cat` of files in image order does.
    let mut offset = 0;
    while offset < data.len() as u64 {
        let got = cached.read(&meta, offset..offset + 1000).await.unwrap();
        assert_eq!(got[..], data[offset as usize..offset as usize + 1000]);
        offset += CHUNK / 2;
    }
    let reads = mem.stats().reads;
    assert!(reads <= 16, "{reads} requests for 64 chunks read in order");
    assert_eq!(
        mem.stats().bytes,
        data.len() as u64,
        "chunks fetched twice or beyond the end"
    );
}

/// The same with the disk cache off: what is fetched ahead waits in memory until read.
#[tokio::test]
async fn with_the_disk_cache_off_a_sequential_reader_still_gets_chunks_fetched_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let data = object((64 * CHUNK) as usize);
    let (cached, mem, meta) = setup(dir.path(), 0, data.len()).await;
    assert!(!cached.disk_usage().unwrap().1);
    mem.set_delay(Duration::from_millis(20));
    let mut offset = 0;
    while offset < data.len() as u64 {
        let end = (offset + (1 << 20)).min(data.len() as u64);
        let got = cached.read(&meta, offset..end).await.unwrap();
        assert!(got[..] == data[offset as usize..end as usize]);
        offset = end;
    }
    let reads = mem.stats().reads;
    assert!(reads <= 16, "{reads} requests for 16 reads in order");
    assert_eq!(
        mem.stats().bytes,
        data.len() as u64,
        "chunks fetched twice or thrown away"
    );
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "a cache that is off wrote to disk"
    );
}

/// Hydration fetches the whole object once, in parts, and a second one finds it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hydration_fetches_each_byte_once() {
    use autosquash_core::HydrationState;
    let dir = tempfile::tempdir().unwrap();
    let data = object((40 * CHUNK + 77) as usize);
    let (cached, mem, meta) = setup(dir.path(), 1 << 30, data.len()).await;
    mem.set_delay(Duration::from_millis(5));
    // A demand read in the middle while it runs.
    let hydration = cached.hydrate(&meta).expect("a small object is hydrated");
    let got = cached.read(&meta, 20 * CHUNK..21 * CHUNK).await.unwrap();
    assert!(got[..] == data[(20 * CHUNK) as usize..(21 * CHUNK) as usize]);
    let progress = hydration.progress();
    for _ in 0..500 {
        if progress.state() != HydrationState::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(progress.state(), HydrationState::Done);
    assert_eq!(
        progress.cached.load(std::sync::atomic::Ordering::Relaxed),
        meta.size
    );
    assert_eq!(mem.stats().bytes, meta.size, "bytes fetched more than once");
    assert!(mem.stats().reads <= 8, "{} requests", mem.stats().reads);
    // Everything is local now.
    mem.reset_stats();
    let all = cached.read(&meta, 0..meta.size).await.unwrap();
    assert!(all[..] == data[..]);
    assert_eq!(mem.stats().reads, 0);
    let again = cached.hydrate(&meta).unwrap();
    for _ in 0..500 {
        if again.progress().state() != HydrationState::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(again.progress().state(), HydrationState::Done);
    assert_eq!(mem.stats().reads, 0, "a whole object was hydrated again");
}

/// A hydration is not started where it would not fit, and stops when its handle is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hydration_stops_when_let_go_and_skips_what_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let data = object((400 * CHUNK) as usize);
    let (cached, mem, meta) = setup(dir.path(), 1 << 30, data.len()).await;
    mem.set_delay(Duration::from_millis(50));
    let hydration = cached.hydrate(&meta).unwrap();
    let progress = {
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(hydration);
        tokio::time::sleep(Duration::from_millis(200)).await;
        mem.stats().bytes
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        mem.stats().bytes,
        progress,
        "fetching went on after the handle was dropped"
    );
    assert!(progress < meta.size);
    // A cache smaller than twice the object takes no hydration.
    let small = tempfile::tempdir().unwrap();
    let (cached, _mem, meta) = setup(small.path(), 150 * CHUNK, data.len()).await;
    assert!(cached.hydrate(&meta).is_none());
}

/// A hydration goes where a demand read missed: a reader far into the image finds what
/// follows fetched long before the walk from the start would get there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hydration_goes_where_the_reader_is() {
    use autosquash_cache::{PART, PipelineConfig};
    let dir = tempfile::tempdir().unwrap();
    let data = object((400 * CHUNK) as usize);
    let mem = Arc::new(MemStore::new());
    mem.put("obj", data.clone());
    // Two parts in flight at 50 ms each: the walk from the start covers 16 chunks per 50 ms.
    let config = PipelineConfig {
        budget: 2 * PART,
        ..PipelineConfig::default()
    };
    let cached = CachedStore::with_config(mem.clone(), dir.path().to_path_buf(), 1 << 30, config);
    let meta = cached.head("obj").await.unwrap();
    mem.set_delay(Duration::from_millis(50));
    let _hydration = cached.hydrate(&meta).unwrap();
    cached
        .read(&meta, 390 * CHUNK..390 * CHUNK + 10)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    mem.set_failing(true);
    let tail = cached.read(&meta, 391 * CHUNK..400 * CHUNK).await;
    assert!(
        tail.is_ok_and(|t| t[..] == data[(391 * CHUNK) as usize..]),
        "the hydration did not follow the reader"
    );
}
