//! The filesystem logic without a kernel: root listing, mount on lookup, inode mapping,
//! readdir offsets, idle expiry, slot lifetime, replacement and broken images.
//!
//! Time-dependent behaviour (idle expiry, the negative TTL) runs on a [`ManualClock`]: a test
//! moves it to just before a deadline, checks nothing happened yet, moves it onto the deadline
//! and checks it happened. No lifecycle test sleeps or reads the wall clock.

use autosquash_core::{FileKind, MemStore};
use autosquash_fs::fs::ROOT_INO;
use autosquash_fs::housekeeping::{self, SETTLE, Schedule};
use autosquash_fs::tree::Invalidation;
use autosquash_fs::{AutoFs, FsConfig, FsError, ManualClock};
use autosquash_testkit::corpus::mksquashfs;
use std::sync::Arc;
use std::time::Duration;

/// A small image with a file, a directory of 50 entries and a symlink.
fn image(content: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("many")).unwrap();
    std::fs::write(src.join("file.txt"), content).unwrap();
    for i in 0..50 {
        std::fs::write(src.join("many").join(format!("e{i:02}")), format!("{i}")).unwrap();
    }
    std::os::unix::fs::symlink("file.txt", src.join("link")).unwrap();
    let out = dir.path().join("i.squash");
    mksquashfs(&src, &out, &["-comp", "gzip"]);
    std::fs::read(out).unwrap()
}

/// One millisecond: the clock's resolution for idle expiry.
const MS: Duration = Duration::from_millis(1);

/// A root over `store` whose lifecycle runs on the returned clock (standing at zero).
fn with_clock(
    store: Arc<dyn autosquash_core::Store>,
    config: FsConfig,
) -> (Arc<AutoFs>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    let cache = autosquash_core::BlockCache::new(config.memory_limit);
    let fs = AutoFs::with_clock(store, cache, config, clock.clone());
    (fs, clock)
}

async fn setup(idle: Duration) -> (Arc<MemStore>, Arc<AutoFs>, Arc<ManualClock>) {
    let store = Arc::new(MemStore::new());
    store.put("images/one.squash", image("version 1\n"));
    store.put("images/two.squash", image("two\n"));
    store.put("images/notes.txt", &b"not an image"[..]);
    store.put("images/.hidden.squash", image("x"));
    store.put("images/sub/deeper.squash", image("x"));
    let (fs, clock) = with_clock(
        store.clone(),
        FsConfig {
            prefix: "images/".into(),
            idle_timeout: idle,
            ..FsConfig::default()
        },
    );
    fs.refresh().await.unwrap();
    (store, fs, clock)
}

/// `status`'s idle seconds of the mounted image `name`.
fn idle_secs(fs: &AutoFs, name: &str) -> u64 {
    let status = autosquash_fs::Tree::status(fs);
    let images = status["images_mounted"].as_array().unwrap();
    let image = images.iter().find(|i| i["name"] == name).unwrap();
    image["idle_secs"].as_u64().unwrap()
}

/// Every entry of `ino` from `offset` on, as a plain readdir gives them.
fn list(fs: &AutoFs, ino: u64, offset: u64) -> Vec<autosquash_fs::fs::DirItem> {
    page(fs, ino, offset, usize::MAX)
}

/// At most `n` entries, as a kernel buffer with room for `n` would take them.
fn page(fs: &AutoFs, ino: u64, offset: u64, n: usize) -> Vec<autosquash_fs::fs::DirItem> {
    let mut out = Vec::new();
    fs.readdir(ino, offset, false, &mut |item, _| {
        if out.len() == n {
            return true;
        }
        out.push(item.clone());
        false
    })
    .unwrap();
    out
}

/// Names of the images `expire` retired (root dentries to invalidate), sorted: the order in
/// which they are retired is not part of the contract.
fn retired(fs: &AutoFs) -> Vec<String> {
    let mut names: Vec<String> = fs
        .expire()
        .into_iter()
        .filter_map(|i| match i {
            Invalidation::Entry(ROOT_INO, name) => Some(String::from_utf8(name).unwrap()),
            _ => None,
        })
        .collect();
    names.sort();
    names
}

fn names(items: &[autosquash_fs::fs::DirItem]) -> Vec<String> {
    items
        .iter()
        .map(|i| String::from_utf8_lossy(&i.name).into_owned())
        .collect()
}

#[tokio::test]
async fn root_lists_images_and_unknown_names_cost_one_head_per_ttl() {
    let (store, fs, clock) = setup(Duration::from_secs(300)).await;
    let ttl = FsConfig::default().negative_ttl;
    assert_eq!(names(&list(&fs, ROOT_INO, 0)), [".", "..", "one", "two"]);
    store.reset_stats();
    let strays = [&b"autorun.inf"[..], b"notes.txt", b"sub", b"one.squash"];
    let look_up_all = || async {
        for stray in strays.iter().chain([&&b".git"[..], &&b"\xff"[..]]) {
            assert!(matches!(
                fs.lookup(ROOT_INO, stray).await,
                Err(FsError::NotFound)
            ));
        }
    };
    for _ in 0..3 {
        look_up_all().await;
    }
    // Names that could be images are checked once; hidden and non-UTF-8 names never.
    assert_eq!(store.stats().heads, strays.len() as u64);
    // Up to the end of the negative TTL the misses are remembered...
    clock.advance(ttl - MS);
    look_up_all().await;
    assert_eq!(
        store.stats().heads,
        strays.len() as u64,
        "asked again within the TTL"
    );
    // ...and once it is over, each is asked about once more.
    clock.advance(MS);
    for _ in 0..3 {
        look_up_all().await;
    }
    assert_eq!(store.stats().heads, 2 * strays.len() as u64);
    assert_eq!(store.stats().reads + store.stats().lists, 0);
}

#[tokio::test]
async fn an_image_uploaded_after_the_listing_is_found_at_once() {
    let (store, fs, clock) = setup(Duration::from_secs(300)).await;
    let ttl = FsConfig::default().negative_ttl;
    assert!(fs.lookup(ROOT_INO, b"late").await.is_err());
    store.put("images/late.squash", image("late\n"));
    // Within the negative TTL the miss is remembered...
    clock.advance(ttl - MS);
    assert!(fs.lookup(ROOT_INO, b"late").await.is_err());
    // ...but a name never asked about is found with one HEAD, without waiting for a listing.
    store.put("images/later.squash", image("later\n"));
    let root = fs.lookup(ROOT_INO, b"later").await.unwrap();
    let file = fs.lookup(root.ino, b"file.txt").await.unwrap();
    assert_eq!(file.size, 6);
    assert!(names(&list(&fs, ROOT_INO, 0)).contains(&"later".to_owned()));
    // Once the TTL is over, the remembered miss is asked about again, and found.
    assert!(!names(&list(&fs, ROOT_INO, 0)).contains(&"late".to_owned()));
    clock.advance(MS);
    let late = fs.lookup(ROOT_INO, b"late").await.unwrap();
    let file = fs.lookup(late.ino, b"file.txt").await.unwrap();
    assert_eq!(&fs.read(file.ino, 0, 100).await.unwrap()[..], b"late\n");
}

#[tokio::test]
async fn lookup_mounts_once_and_inode_numbers_carry_the_slot() {
    let (store, fs, _clock) = setup(Duration::from_secs(300)).await;
    store.reset_stats();
    let one = fs.lookup(ROOT_INO, b"one").await.unwrap();
    let reads = store.stats().reads;
    assert!((1..=2).contains(&reads), "{reads} reads to mount");
    assert_eq!(fs.lookup(ROOT_INO, b"one").await.unwrap().ino, one.ino);
    assert_eq!(
        store.stats().reads,
        reads,
        "second lookup re-opened the image"
    );
    let two = fs.lookup(ROOT_INO, b"two").await.unwrap();
    assert_eq!(one.kind, FileKind::Directory);
    assert_ne!(one.ino >> 32, two.ino >> 32, "two images share a slot");
    let file = fs.lookup(one.ino, b"file.txt").await.unwrap();
    assert_eq!(file.ino >> 32, one.ino >> 32);
    let link = fs.lookup(one.ino, b"link").await.unwrap();
    assert_eq!(fs.readlink(link.ino).unwrap(), b"file.txt");
    assert_eq!(
        &fs.read(file.ino, 0, 100).await.unwrap()[..],
        b"version 1\n"
    );
    assert_eq!(&fs.read(file.ino, 8, 100).await.unwrap()[..], b"1\n");
    assert!(matches!(
        fs.read(one.ino, 0, 100).await,
        Err(FsError::Invalid)
    ));
    assert!(matches!(
        fs.lookup(file.ino, b"x").await,
        Err(FsError::NotDir)
    ));
    assert!(matches!(
        fs.lookup(one.ino, b"missing").await,
        Err(FsError::NotFound)
    ));
}

#[tokio::test]
async fn readdir_resumes_at_any_offset() {
    let (_store, fs, _clock) = setup(Duration::from_secs(300)).await;
    let one = fs.lookup(ROOT_INO, b"one").await.unwrap();
    let many = fs.lookup(one.ino, b"many").await.unwrap();
    let all = list(&fs, many.ino, 0);
    assert_eq!(all.len(), 52);
    assert_eq!(all[1].ino, one.ino, "'..' of a subdirectory is its parent");
    let mut resumed = Vec::new();
    let mut offset = 0;
    loop {
        // Take three entries at a time, as a small kernel buffer would.
        let page = page(&fs, many.ino, offset, 3);
        let Some(last) = page.last() else { break };
        offset = last.next;
        resumed.extend(page);
    }
    assert_eq!(names(&resumed), names(&all));
    let top = list(&fs, one.ino, 0);
    assert_eq!(top[1].ino, ROOT_INO, "'..' of an image root is the root");
}

#[tokio::test]
async fn idle_images_retire_and_slots_live_until_forgotten() {
    let idle = Duration::from_secs(300);
    let (_store, fs, clock) = setup(idle).await;
    let one = fs.lookup(ROOT_INO, b"one").await.unwrap();
    let file = fs.lookup(one.ino, b"file.txt").await.unwrap();
    // A request late in the idle timeout starts it again.
    clock.advance(idle - MS);
    assert_eq!(idle_secs(&fs, "one"), idle.as_secs() - 1);
    fs.read(file.ino, 0, 4).await.unwrap();
    assert_eq!(idle_secs(&fs, "one"), 0);
    clock.advance(idle - MS);
    assert!(retired(&fs).is_empty(), "retired before the idle timeout");
    assert_eq!(fs.mounted_count(), (1, 1));
    // Another image, used just now, is not retired with the idle one.
    fs.lookup(ROOT_INO, b"two").await.unwrap();
    clock.advance(MS);
    assert_eq!(retired(&fs), ["one"]);
    assert_eq!(fs.mounted_count(), (1, 2));
    fs.forget(fs.lookup(ROOT_INO, b"two").await.unwrap().ino, 2);
    clock.advance(idle);
    assert_eq!(retired(&fs), ["two"]);
    assert_eq!(
        fs.mounted_count(),
        (0, 1),
        "slot freed while the kernel holds inodes"
    );
    // The kernel may still use what it holds.
    assert_eq!(fs.getattr(file.ino).unwrap().size, 10);
    fs.forget(one.ino, 1);
    fs.forget(file.ino, 1);
    fs.expire();
    assert_eq!(fs.mounted_count(), (0, 0));
    assert!(matches!(fs.getattr(file.ino), Err(FsError::Stale(_))));
    // The next lookup mounts again, in a new slot.
    let again = fs.lookup(ROOT_INO, b"one").await.unwrap();
    assert_ne!(again.ino, one.ino);
}

#[tokio::test]
async fn images_beyond_the_memory_limit_are_released_early_and_serve_until_forgotten() {
    let store = Arc::new(MemStore::new());
    store.put("images/one.squash", image("one\n"));
    store.put("images/two.squash", image("two\n"));
    // A budget too small for even one image's tables: every idle image must go at once,
    // long before the idle timeout (the clock stands still); what the kernel still references
    // keeps working.
    let (fs, _clock) = with_clock(
        store.clone(),
        FsConfig {
            prefix: "images/".into(),
            idle_timeout: Duration::from_secs(300),
            memory_limit: 64,
            ..FsConfig::default()
        },
    );
    fs.refresh().await.unwrap();
    fs.lookup(ROOT_INO, b"one").await.unwrap();
    let two = fs.lookup(ROOT_INO, b"two").await.unwrap();
    let file = fs.lookup(two.ino, b"file.txt").await.unwrap();
    assert_eq!(retired(&fs), ["one", "two"]);
    assert_eq!(fs.mounted_count(), (0, 2));
    assert_eq!(&fs.read(file.ino, 0, 100).await.unwrap()[..], b"two\n");
}

#[tokio::test]
async fn a_replaced_image_keeps_serving_what_the_kernel_holds_then_switches() {
    let (store, fs, _clock) = setup(Duration::from_secs(300)).await;
    let one = fs.lookup(ROOT_INO, b"one").await.unwrap();
    let file = fs.lookup(one.ino, b"file.txt").await.unwrap();
    assert_eq!(&fs.read(file.ino, 0, 4).await.unwrap()[..], b"vers");
    store.put("images/one.squash", image("version 2, longer\n"));
    fs.refresh().await.unwrap();
    assert_eq!(retired(&fs), ["one"], "outdated image not retired at once");
    // An open file (its inode still referenced) reads its version from the cache.
    assert_eq!(
        &fs.read(file.ino, 0, 100).await.unwrap()[..],
        b"version 1\n"
    );
    let new_root = fs.lookup(ROOT_INO, b"one").await.unwrap();
    let new_file = fs.lookup(new_root.ino, b"file.txt").await.unwrap();
    assert_eq!(
        &fs.read(new_file.ino, 0, 100).await.unwrap()[..],
        b"version 2, longer\n"
    );
}

/// Housekeeping lists the source again once per list interval and shortly after a change
/// notification, and not in between. On tokio's paused clock: `sleep` moves it, nothing waits.
#[tokio::test(start_paused = true)]
async fn housekeeping_lists_again_every_interval_and_after_a_change() {
    let (store, fs, _clock) = setup(Duration::from_secs(300)).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let interval = Duration::from_secs(60);
    let schedule = Schedule {
        idle_timeout: Duration::from_secs(300),
        list_interval: interval,
    };
    let (retune, schedule) = tokio::sync::watch::channel(schedule);
    let task = tokio::spawn(housekeeping::run(
        fs.clone(),
        |_| async {},
        Some(rx),
        schedule,
    ));
    let listed = |fs: &AutoFs| names(&list(fs, ROOT_INO, 0));
    let until = |at: Duration| tokio::time::sleep_until(tokio::time::Instant::now() + at);
    let start = tokio::time::Instant::now();
    let at = |t: Duration| tokio::time::sleep_until(start + t);

    store.put("images/three.squash", image("3"));
    at(interval - Duration::from_millis(1)).await;
    assert_eq!(
        listed(&fs),
        [".", "..", "one", "two"],
        "listed before the interval"
    );
    at(interval + Duration::from_millis(1)).await;
    assert_eq!(listed(&fs), [".", "..", "one", "three", "two"]);

    // A change is listed once it settled, long before the next interval.
    store.put("images/four.squash", image("4"));
    at(interval + Duration::from_secs(5)).await;
    tx.send(()).await.unwrap();
    until(SETTLE - Duration::from_millis(1)).await;
    assert_eq!(
        listed(&fs),
        [".", "..", "one", "three", "two"],
        "listed before settling"
    );
    until(Duration::from_millis(2)).await;
    assert_eq!(listed(&fs), [".", "..", "four", "one", "three", "two"]);

    // The interval counts from that listing: nothing new until it has passed again.
    store.put("images/five.squash", image("5"));
    let listed_at = interval + Duration::from_secs(5) + SETTLE;
    at(listed_at + interval - Duration::from_secs(1)).await;
    assert!(!listed(&fs).contains(&"five".to_owned()));
    at(listed_at + interval + Duration::from_secs(1)).await;
    assert!(listed(&fs).contains(&"five".to_owned()));

    // A reload shortens the interval in place: it holds from the next tick.
    retune
        .send(Schedule {
            idle_timeout: Duration::from_secs(300),
            list_interval: Duration::from_secs(5),
        })
        .unwrap();
    store.put("images/six.squash", image("6"));
    until(Duration::from_secs(6)).await;
    assert!(listed(&fs).contains(&"six".to_owned()));
    task.abort();
}

#[tokio::test]
async fn removed_images_leave_the_listing() {
    let (store, fs, _clock) = setup(Duration::from_secs(300)).await;
    fs.lookup(ROOT_INO, b"two").await.unwrap();
    store.remove("images/two.squash");
    store.put("images/three.squash", image("3"));
    fs.refresh().await.unwrap();
    assert_eq!(names(&list(&fs, ROOT_INO, 0)), [".", "..", "one", "three"]);
    assert_eq!(retired(&fs), ["two"]);
    assert!(fs.lookup(ROOT_INO, b"three").await.is_ok());
}

#[tokio::test]
async fn a_broken_image_is_eio_once_and_others_keep_serving() {
    let (store, fs, _clock) = setup(Duration::from_secs(300)).await;
    let mut bad = image("x");
    bad[0] ^= 0xff;
    store.put("images/bad.squash", bad);
    fs.refresh().await.unwrap();
    assert!(matches!(
        fs.lookup(ROOT_INO, b"bad").await,
        Err(FsError::Io(_))
    ));
    store.reset_stats();
    assert!(matches!(
        fs.lookup(ROOT_INO, b"bad").await,
        Err(FsError::Io(_))
    ));
    assert_eq!(
        store.stats().reads,
        0,
        "a known-broken version was opened again"
    );
    assert!(fs.lookup(ROOT_INO, b"one").await.is_ok());
    // A new version is tried again.
    store.put("images/bad.squash", image("fixed"));
    fs.refresh().await.unwrap();
    assert!(fs.lookup(ROOT_INO, b"bad").await.is_ok());
}

#[tokio::test]
async fn an_unreachable_store_fails_mounts_with_eio_not_a_hang() {
    let (store, fs, _clock) = setup(Duration::from_secs(300)).await;
    store.set_failing(true);
    assert!(matches!(
        fs.lookup(ROOT_INO, b"one").await,
        Err(FsError::Io(_))
    ));
    store.set_failing(false);
    assert!(
        fs.lookup(ROOT_INO, b"one").await.is_ok(),
        "a transient failure was remembered"
    );
}

/// An image of one 8 MiB file of random bytes, in a disk-cached store over `MemStore`.
fn cached_big_image(
    dir: &std::path::Path,
) -> (
    Vec<u8>,
    Arc<MemStore>,
    Arc<autosquash_cache::CachedStore<Arc<MemStore>>>,
) {
    let src = dir.join("src");
    std::fs::create_dir(&src).unwrap();
    let data = autosquash_testkit::corpus::pseudo_random_bytes(4, 8 << 20);
    std::fs::write(src.join("big"), &data).unwrap();
    mksquashfs(&src, &dir.join("i.squash"), &["-comp", "zstd"]);
    let mem = Arc::new(MemStore::new());
    mem.put("big.squash", std::fs::read(dir.join("i.squash")).unwrap());
    let cached = Arc::new(autosquash_cache::CachedStore::new(
        mem.clone(),
        dir.join("cache"),
        1 << 30,
    ));
    (data, mem, cached)
}

/// The store's pipeline sees an image file read in order and fetches ahead of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_reads_are_served_from_what_was_fetched_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let (data, store, cached) = cached_big_image(dir.path());
    let config = FsConfig {
        hydrate: false,
        ..FsConfig::default()
    };
    let fs = AutoFs::new(cached.clone(), config);
    fs.refresh().await.unwrap();
    let root = fs.lookup(ROOT_INO, b"big").await.unwrap();
    let file = fs.lookup(root.ino, b"big").await.unwrap();
    let fh = file.ino;
    let chunk = 128 << 10;
    let mut offset = 0;
    for _ in 0..2 {
        let got = fs.read(fh, offset, chunk).await.unwrap();
        assert!(got[..] == data[offset as usize..offset as usize + chunk as usize]);
        offset += u64::from(chunk);
    }
    // Once the prefetch landed, the next megabyte is read with the store down: it must all
    // come from what was fetched ahead.
    cached.settled().await;
    store.set_failing(true);
    for _ in 0..8 {
        let got = fs
            .read(fh, offset, chunk)
            .await
            .expect("sequential read missed what was fetched ahead");
        assert!(got[..] == data[offset as usize..offset as usize + chunk as usize]);
        offset += u64::from(chunk);
    }
    store.set_failing(false);
    // Reading on to the end returns the right bytes all the way.
    while offset < data.len() as u64 {
        let got = fs.read(fh, offset, 1 << 20).await.unwrap();
        assert!(got[..] == data[offset as usize..offset as usize + got.len()]);
        offset += got.len() as u64;
    }
    assert!(
        store.stats().bytes
            <= std::fs::metadata(dir.path().join("i.squash"))
                .unwrap()
                .len()
                * 11
                / 10,
        "bytes fetched more than once"
    );
}

/// Mounting an image starts its hydration (shown by `status`); once done, every file reads
/// with the store down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mounted_image_is_hydrated_and_then_reads_without_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (data, store, cached) = cached_big_image(dir.path());
    let fs = AutoFs::new(cached, FsConfig::default());
    fs.refresh().await.unwrap();
    let root = fs.lookup(ROOT_INO, b"big").await.unwrap();
    let file = fs.lookup(root.ino, b"big").await.unwrap();
    let state = || {
        let status = autosquash_fs::Tree::status(&*fs);
        status["images_mounted"][0]["hydration"]["state"]
            .as_str()
            .unwrap_or("none")
            .to_owned()
    };
    for _ in 0..500 {
        if state() != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(state(), "done");
    let size = std::fs::metadata(dir.path().join("i.squash"))
        .unwrap()
        .len();
    assert!(
        store.stats().bytes <= size * 105 / 100,
        "hydration fetched bytes twice"
    );
    store.set_failing(true);
    let mut offset = 0;
    while offset < data.len() as u64 {
        let got = fs
            .read(file.ino, offset, 1 << 20)
            .await
            .expect("not hydrated");
        assert!(got[..] == data[offset as usize..offset as usize + got.len()]);
        offset += got.len() as u64;
    }
}

/// Without hydration, reading a second file of a directory fetches the rest of that
/// directory's data ahead; a lone file read elsewhere fetches about what it needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_read_file_by_file_has_its_neighbours_fetched_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    for d in ["many", "other"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
        for i in 0..200u64 {
            let len = 2000 + (i as usize * 37) % 9000;
            let data = autosquash_testkit::corpus::pseudo_random_bytes(i + 7, len);
            std::fs::write(src.join(d).join(format!("f{i:03}")), data).unwrap();
        }
    }
    // Written after them, so the tables the image's open fetches lie far from their data.
    std::fs::create_dir(src.join("zbig")).unwrap();
    let big = autosquash_testkit::corpus::pseudo_random_bytes(3, 16 << 20);
    std::fs::write(src.join("zbig").join("big"), big).unwrap();
    mksquashfs(&src, &dir.path().join("i.squash"), &["-comp", "zstd"]);
    let mem = Arc::new(MemStore::new());
    mem.put(
        "d.squash",
        std::fs::read(dir.path().join("i.squash")).unwrap(),
    );
    let cached = Arc::new(autosquash_cache::CachedStore::new(
        mem.clone(),
        dir.path().join("cache"),
        1 << 30,
    ));
    let config = FsConfig {
        hydrate: false,
        ..FsConfig::default()
    };
    let fs = AutoFs::new(cached.clone(), config);
    fs.refresh().await.unwrap();
    let root = fs.lookup(ROOT_INO, b"d").await.unwrap();
    let many = fs.lookup(root.ino, b"many").await.unwrap();
    let read = |name: String| {
        let fs = fs.clone();
        async move {
            let file = fs.lookup(many.ino, name.as_bytes()).await.unwrap();
            fs.read(file.ino, 0, 1 << 20).await
        }
    };
    read("f150".into()).await.unwrap();
    read("f020".into()).await.unwrap();
    cached.settled().await;
    mem.set_failing(true);
    for i in 0..200u64 {
        let got = read(format!("f{i:03}"))
            .await
            .unwrap_or_else(|e| panic!("f{i:03} was not fetched ahead: {e:?}"));
        let len = 2000 + (i as usize * 37) % 9000;
        assert!(got[..] == autosquash_testkit::corpus::pseudo_random_bytes(i + 7, len)[..]);
    }
    mem.set_failing(false);
    // One file of the other directory: no neighbours fetched on a first read.
    mem.reset_stats();
    let other = fs.lookup(root.ino, b"other").await.unwrap();
    let file = fs.lookup(other.ino, b"f100").await.unwrap();
    fs.read(file.ino, 0, 1 << 20).await.unwrap();
    cached.settled().await;
    assert!(
        mem.stats().bytes <= 2 * autosquash_cache::CHUNK,
        "a lone read fetched {} bytes",
        mem.stats().bytes
    );
}

/// Readdirplus entries count as kernel references, as lookups do, but only the entries that
/// fit the kernel's buffer (and never `.` or `..`): the slot lives until each one is
/// forgotten, and no longer.
#[tokio::test]
async fn readdirplus_entries_are_references_until_forgotten() {
    let idle = Duration::from_secs(300);
    let (_store, fs, clock) = setup(idle).await;
    let one = fs.lookup(ROOT_INO, b"one").await.unwrap();
    let many = fs.lookup(one.ino, b"many").await.unwrap();
    let mut given = Vec::new();
    let mut offset = 0;
    loop {
        // A buffer with room for 7 entries, as a small kernel buffer would be.
        let mut page = Vec::new();
        fs.readdir(many.ino, offset, true, &mut |item, attr| {
            if page.len() == 7 {
                return true;
            }
            page.push((item.clone(), attr.cloned()));
            false
        })
        .unwrap();
        let Some((last, _)) = page.last() else { break };
        offset = last.next;
        given.extend(page);
    }
    let counted: Vec<u64> = given
        .iter()
        .filter_map(|(item, attr)| attr.as_ref().map(|a| (item.ino, a.ino)))
        .map(|(ino, attr_ino)| {
            assert_eq!(ino, attr_ino);
            ino
        })
        .collect();
    assert_eq!(
        counted.len(),
        50,
        "every entry but . and .. carries attributes"
    );
    assert!(given.iter().take(2).all(|(_, attr)| attr.is_none()));
    clock.advance(idle - MS);
    assert!(retired(&fs).is_empty(), "retired before the idle timeout");
    clock.advance(MS);
    assert_eq!(retired(&fs), ["one"]);
    fs.forget(one.ino, 1);
    fs.forget(many.ino, 1);
    for (i, ino) in counted.iter().enumerate() {
        fs.expire();
        assert_eq!(
            fs.mounted_count(),
            (0, 1),
            "slot freed with {i} entries forgotten"
        );
        fs.forget(*ino, 1);
    }
    fs.expire();
    assert_eq!(
        fs.mounted_count(),
        (0, 0),
        "slot kept after every reference was forgotten"
    );
}

/// A store whose reads panic once `armed`: stands in for a bug anywhere below a request.
struct PanickingStore {
    inner: Arc<MemStore>,
    armed: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl autosquash_core::Store for PanickingStore {
    async fn list(
        &self,
        prefix: &str,
    ) -> autosquash_core::Result<Vec<autosquash_core::ObjectMeta>> {
        self.inner.list(prefix).await
    }
    async fn head(&self, key: &str) -> autosquash_core::Result<autosquash_core::ObjectMeta> {
        self.inner.head(key).await
    }
    async fn read(
        &self,
        object: &autosquash_core::ObjectMeta,
        range: std::ops::Range<u64>,
    ) -> autosquash_core::Result<bytes::Bytes> {
        if self.armed.load(std::sync::atomic::Ordering::Relaxed) {
            panic!("a bug below a request");
        }
        self.inner.read(object, range).await
    }
    fn describe(&self) -> String {
        "panicking".into()
    }
}

/// A panic in a request is an EIO for that request, counted (for `status`), and the image
/// keeps serving what does not panic.
#[tokio::test]
async fn a_panic_in_a_request_is_eio_and_counted() {
    let inner = Arc::new(MemStore::new());
    inner.put("one.squash", image("version 1\n"));
    let store = Arc::new(PanickingStore {
        inner,
        armed: false.into(),
    });
    let fs = AutoFs::new(store.clone(), FsConfig::default());
    fs.refresh().await.unwrap();
    let one = fs.lookup(ROOT_INO, b"one").await.unwrap();
    let file = fs.lookup(one.ino, b"file.txt").await.unwrap();
    let before = autosquash_fs::fs::panics();
    store
        .armed
        .store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(matches!(
        fs.read(file.ino, 0, 100).await,
        Err(FsError::Io(_))
    ));
    assert!(
        autosquash_fs::fs::panics() > before,
        "the panic was not counted"
    );
    assert_eq!(
        fs.getattr(file.ino).unwrap().size,
        10,
        "the image stopped serving"
    );
}

/// After a takeover the kernel asks about numbers the new process never looked up: every one
/// must resolve, also when many arrive at once while the image is being walked to learn them
/// (requests that came during the walk were answered ESTALE).
#[tokio::test]
async fn a_restored_image_resolves_numbers_it_never_looked_up_under_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    for d in 0..40 {
        let sub = src.join(format!("d{d:02}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..50 {
            std::fs::write(sub.join(format!("f{f:02}")), format!("{d}/{f}")).unwrap();
        }
    }
    let out = dir.path().join("i.squash");
    mksquashfs(&src, &out, &["-comp", "gzip"]);
    let store = Arc::new(MemStore::new());
    store.put("big.squash", std::fs::read(out).unwrap());

    let before = AutoFs::new(store.clone(), FsConfig::default());
    before.refresh().await.unwrap();
    let root = before.lookup(ROOT_INO, b"big").await.unwrap();
    let mut files = Vec::new();
    for d in (0..40).step_by(5) {
        let sub = before
            .lookup(root.ino, format!("d{d:02}").as_bytes())
            .await
            .unwrap();
        let file = before.lookup(sub.ino, b"f49").await.unwrap();
        files.push((file.ino, format!("{d}/49")));
    }
    let meta = autosquash_core::Store::head(&*store, "big.squash")
        .await
        .unwrap();
    let line = serde_json::json!({"slot": root.ino >> 32, "name": "big", "key": meta.key,
        "size": meta.size, "etag": meta.etag})
    .to_string();

    let after = AutoFs::new(store.clone(), FsConfig::default());
    after.refresh().await.unwrap();
    assert_eq!(after.restore(&[line]).await, 1);
    let barrier = std::sync::Barrier::new(files.len());
    std::thread::scope(|s| {
        for (ino, content) in &files {
            let (after, barrier) = (&after, &barrier);
            s.spawn(move || {
                barrier.wait();
                let attr = after
                    .getattr(*ino)
                    .unwrap_or_else(|e| panic!("ino {ino}: {e}"));
                assert_eq!(attr.size, content.len() as u64);
            });
        }
    });
    for (ino, content) in &files {
        assert_eq!(
            &after.read(*ino, 0, 100).await.unwrap()[..],
            content.as_bytes()
        );
    }
}

/// The object view's numbers survive a takeover: a successor that reads the predecessor's
/// state log gives every object and directory the same number, new objects new ones, and
/// still answers for a replaced version the kernel may hold.
#[tokio::test]
async fn the_object_view_keeps_its_numbers_across_a_takeover() {
    use autosquash_fs::handover::StateLog;
    use autosquash_fs::{ObjectConfig, ObjectFs, Tree};
    let store = Arc::new(MemStore::new());
    store.put("data/a/one.txt", &b"one"[..]);
    store.put("data/a/two.txt", &b"two"[..]);
    store.put("data/three.txt", &b"three"[..]);
    let config = ObjectConfig {
        prefix: "data/".into(),
        uid: None,
        gid: None,
    };
    let before = ObjectFs::new(store.clone(), config.clone());
    before.refresh().await.unwrap();
    let log = Arc::new(StateLog::create("objects").unwrap());
    assert!(before.record_to(log.clone()));
    let a = before.lookup(ROOT_INO, b"a").await.unwrap();
    let two = before.lookup(a.ino, b"two.txt").await.unwrap();
    let three = before.lookup(ROOT_INO, b"three.txt").await.unwrap();
    // Replaced while the kernel holds it: a new number, the old one kept.
    store.put("data/three.txt", &b"three, again"[..]);
    before.refresh().await.unwrap();
    let three_again = before.lookup(ROOT_INO, b"three.txt").await.unwrap();
    assert_ne!(three_again.ino, three.ino);

    let (adopted, lines) = StateLog::adopt(log.fd().unwrap()).unwrap();
    store.put("data/four.txt", &b"four"[..]);
    let after = ObjectFs::new(store.clone(), config);
    after.refresh().await.unwrap();
    assert!(after.restore(&lines).await >= 5, "{lines:?}");
    assert!(after.record_to(Arc::new(adopted)));
    assert_eq!(after.lookup(ROOT_INO, b"a").await.unwrap().ino, a.ino);
    assert_eq!(after.lookup(a.ino, b"two.txt").await.unwrap().ino, two.ino);
    assert_eq!(&after.read(two.ino, 0, 10).await.unwrap()[..], b"two");
    let now = after.lookup(ROOT_INO, b"three.txt").await.unwrap();
    assert_eq!(now.ino, three_again.ino);
    assert_eq!(
        after.getattr(three.ino).unwrap().size,
        5,
        "the old version is gone"
    );
    let four = after.lookup(ROOT_INO, b"four.txt").await.unwrap();
    for known in [a.ino, two.ino, three.ino, three_again.ino] {
        assert_ne!(four.ino, known, "a new object got a number in use");
    }
    // What the successor handed out is recorded for its own successor.
    let (_, again) = StateLog::adopt(log.fd().unwrap()).unwrap();
    assert!(again.iter().any(|l| l.contains("four.txt")), "{again:?}");
}

/// A directory read file by file in listing order, once listed with readdirplus (so the
/// kernel knows its inodes), has its next files handed to the page cache ahead of the reader,
/// byte for byte, in order and in batches; not before it is listed, not for a reader going
/// out of order, and never a file larger than the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_read_in_order_has_its_next_files_pushed_to_the_page_cache() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src/many");
    std::fs::create_dir_all(&src).unwrap();
    let content = |i: u64| {
        let len = if i == 10 {
            2 << 20
        } else {
            2000 + (i as usize * 37) % 9000
        };
        autosquash_testkit::corpus::pseudo_random_bytes(i + 7, len)
    };
    for i in 0..100u64 {
        std::fs::write(src.join(format!("f{i:03}")), content(i)).unwrap();
    }
    let other = dir.path().join("src/other");
    std::fs::create_dir_all(other.join("a-directory-first")).unwrap();
    for i in 0..2u64 {
        std::fs::write(other.join(format!("f{i:03}")), content(i)).unwrap();
    }
    mksquashfs(
        &dir.path().join("src"),
        &dir.path().join("i.squash"),
        &["-comp", "zstd"],
    );
    let mem = Arc::new(MemStore::new());
    mem.put(
        "d.squash",
        std::fs::read(dir.path().join("i.squash")).unwrap(),
    );
    let fs = AutoFs::new(
        mem,
        FsConfig {
            hydrate: false,
            ..FsConfig::default()
        },
    );
    let (tx, rx) = std::sync::mpsc::channel();
    fs.attach_pages(autosquash_fs::fuse::PageSink::for_test(move |ino, data| {
        let _ = tx.send((ino, data));
    }));
    fs.refresh().await.unwrap();
    let root = fs.lookup(ROOT_INO, b"d").await.unwrap();
    let many = fs.lookup(root.ino, b"many").await.unwrap();
    let mut ino_of = std::collections::HashMap::new();
    for i in 0..100u64 {
        let file = fs
            .lookup(many.ino, format!("f{i:03}").as_bytes())
            .await
            .unwrap();
        ino_of.insert(file.ino, i);
    }
    let ino = |i: u64| *ino_of.iter().find(|(_, n)| **n == i).unwrap().0;
    let read = |i: u64| {
        let fs = fs.clone();
        let ino = ino(i);
        async move {
            let got = fs.read(ino, 0, 1 << 20).await.unwrap();
            assert!(got[..] == content(i)[..got.len()]);
        }
    };
    let pushed = |n: usize| -> Vec<u64> {
        (0..n)
            .map(|_| {
                let (ino, data) = rx
                    .recv_timeout(Duration::from_secs(10))
                    .expect("fewer files pushed than expected");
                let i = ino_of[&ino];
                assert!(
                    data[..] == content(i)[..],
                    "f{i:03} pushed with other bytes"
                );
                i
            })
            .collect()
    };
    let nothing_more = || {
        std::thread::sleep(Duration::from_millis(200));
        assert!(rx.try_recv().is_err(), "pushed more than expected");
    };
    // Not listed with readdirplus yet: the kernel may not know the next files.
    read(0).await;
    read(1).await;
    nothing_more();
    let mut add = |_: &autosquash_fs::fs::DirItem, _: Option<&autosquash_fs::fs::Attr>| false;
    fs.readdir(many.ino, 0, true, &mut add).unwrap();
    // After the listing, a file that is not the first one starts nothing; the next one in
    // order shows the reader.
    read(2).await;
    nothing_more();
    read(3).await;
    let expected: Vec<u64> = (4..36).filter(|&i| i != 10).collect();
    assert_eq!(
        pushed(expected.len()),
        expected,
        "the next batch, without the big file"
    );
    nothing_more();
    // Files of the batch are read from the page cache; the first one after it asks again.
    read(36).await;
    assert_eq!(pushed(32), (37..69).collect::<Vec<_>>());
    nothing_more();
    // Out of order: nothing.
    read(90).await;
    read(20).await;
    read(75).await;
    nothing_more();
    // A directory whose first file is read first: pushed at once.
    let other = fs.lookup(root.ino, b"other").await.unwrap();
    fs.readdir(other.ino, 0, true, &mut add).unwrap();
    let first = fs.lookup(other.ino, b"f000").await.unwrap();
    let second = fs.lookup(other.ino, b"f001").await.unwrap();
    fs.read(first.ino, 0, 1 << 20).await.unwrap();
    let (ino, data) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(ino, second.ino);
    assert!(data[..] == content(1)[..]);
}
