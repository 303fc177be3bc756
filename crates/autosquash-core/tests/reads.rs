//! What the engine asks of the store: how many requests an open and a read cost, and that
//! concurrent readers overlap their store reads instead of queueing behind a lock.

mod common;

use autosquash_core::{FileKind, Image, MemStore, Store};
use autosquash_testkit::corpus::{mksquashfs, pseudo_random_bytes};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An image of `files` incompressible files of `size` bytes each, plus its bytes.
fn image_of_random_files(files: usize, size: usize) -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..files {
        std::fs::write(
            src.join(format!("f{i:02}")),
            pseudo_random_bytes(i as u64 + 1, size),
        )
        .unwrap();
    }
    let image = dir.path().join("img.squash");
    mksquashfs(&src, &image, &["-comp", "zstd"]);
    let bytes = std::fs::read(&image).unwrap();
    (dir, bytes)
}

#[tokio::test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
async fn opening_a_typical_image_takes_at_most_two_reads() {
    let corpus = common::corpus();
    for variant in &corpus.variants {
        let (store, image) = common::open_mem(std::fs::read(&variant.image).unwrap()).await;
        let image = image.unwrap();
        assert!(
            store.stats().reads <= 2,
            "{}: {} reads",
            variant.name,
            store.stats().reads
        );
        // Metadata is all in memory now: lookups and listings cost no request.
        let root = image.root().unwrap();
        for entry in image.listing(&root).unwrap().iter() {
            image.entry_inode(&root, entry).unwrap();
        }
        assert!(
            store.stats().reads <= 2,
            "{}: listing read the store",
            variant.name
        );
    }
}

#[tokio::test]
async fn one_block_at_a_random_offset_fetches_about_one_block() {
    let (_dir, bytes) = image_of_random_files(1, 8 << 20);
    let (store, image) = common::open_mem(bytes).await;
    let image = image.unwrap();
    let file = image.resolve(b"f00").unwrap();
    let expected = pseudo_random_bytes(1, 8 << 20);
    for offset in [5 * 131072 + 1000, 3 * 131072, 60 * 131072 + 77] {
        store.reset_stats();
        let got = image.read(&file, offset, 131072).await.unwrap();
        assert_eq!(got[..], expected[offset as usize..offset as usize + 131072]);
        let stats = store.stats();
        // Incompressible data is stored raw: the file's bytes are the image's, so even an
        // unaligned read across two blocks is one ranged read of exactly the bytes asked for.
        assert_eq!(stats.reads, 1, "at {offset}");
        assert_eq!(stats.bytes, 131072, "at {offset}");
        // Raw data is not kept in the memory cache (the kernel's page cache and the disk
        // cache keep plain bytes): the same range again is read again.
        image.read(&file, offset, 131072).await.unwrap();
        assert_eq!(store.stats().reads, 2, "re-read at {offset}");
    }
}

#[tokio::test]
async fn large_tables_take_one_more_read() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    // Incompressible long names make a directory table larger than the 1 MiB tail read.
    let noise = pseudo_random_bytes(9, 30_000 * 100);
    for i in 0..30_000 {
        let name: String = noise[i * 100..i * 100 + 100]
            .iter()
            .map(|b| char::from(b'a' + b % 26))
            .collect();
        std::fs::write(src.join(format!("{name}{i}")), []).unwrap();
    }
    let image_path = dir.path().join("img.squash");
    mksquashfs(&src, &image_path, &["-comp", "zstd"]);
    let bytes = std::fs::read(&image_path).unwrap();
    assert!(
        bytes.len() > 2 << 20,
        "image of {} bytes is too small for this test",
        bytes.len()
    );
    let (store, image) = common::open_mem(bytes).await;
    let image = image.unwrap();
    assert_eq!(store.stats().reads, 3);
    let root = image.root().unwrap();
    assert_eq!(image.listing(&root).unwrap().len(), 30_000);
    assert_eq!(store.stats().reads, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_readers_overlap_their_store_reads() {
    let (_dir, bytes) = image_of_random_files(16, 300_000);
    let (store, image) = common::open_mem(bytes).await;
    let image: Arc<Image> = image.unwrap();
    let delay = Duration::from_millis(200);
    store.set_delay(delay);
    let start = Instant::now();
    let readers: Vec<_> = (0..16)
        .map(|i| {
            let image = image.clone();
            tokio::spawn(async move {
                let inode = image.resolve(format!("f{i:02}").as_bytes()).unwrap();
                assert_eq!(inode.kind, FileKind::File);
                let data = common::read_all(&image, &inode, 1 << 20).await.unwrap();
                assert!(
                    data == pseudo_random_bytes(i as u64 + 1, 300_000),
                    "file {i}"
                );
            })
        })
        .collect();
    for reader in readers {
        reader.await.unwrap();
    }
    let elapsed = start.elapsed();
    // 16 files, one ranged read each: serialized that would be 16 delays.
    assert_eq!(store.stats().reads, 16 + 2);
    assert!(
        elapsed < delay * 6,
        "16 readers took {elapsed:?} with a {delay:?} store"
    );
}

#[tokio::test]
async fn a_failing_store_is_an_error_and_cached_data_still_serves() {
    // Compressible files: decoded blocks are what the memory cache keeps.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let text = |seed: u64| -> Vec<u8> {
        (0..200_000u64)
            .map(|i| b"abcdefgh"[((i / 100 + seed) % 8) as usize])
            .collect()
    };
    std::fs::write(src.join("f00"), text(1)).unwrap();
    std::fs::write(src.join("f01"), text(2)).unwrap();
    mksquashfs(&src, &dir.path().join("i.squash"), &["-comp", "zstd"]);
    let (store, image) =
        common::open_mem(std::fs::read(dir.path().join("i.squash")).unwrap()).await;
    let image = image.unwrap();
    let a = image.resolve(b"f00").unwrap();
    let b = image.resolve(b"f01").unwrap();
    // Small reads (blocks read in part are what the memory cache keeps).
    common::read_all(&image, &a, 4096).await.unwrap();
    store.set_failing(true);
    assert!(image.read(&b, 0, 4096).await.is_err());
    assert_eq!(common::read_all(&image, &a, 4096).await.unwrap(), text(1));
    store.set_failing(false);
    assert!(image.read(&b, 0, 4096).await.is_ok());
}

#[tokio::test]
async fn a_replaced_object_fails_uncached_reads_as_replaced() {
    let (_dir, bytes) = image_of_random_files(1, 500_000);
    let store = Arc::new(MemStore::new());
    store.put("img", bytes.clone());
    let meta = store.head("img").await.unwrap();
    let image = Image::open(store.clone(), meta, common::cache())
        .await
        .unwrap();
    let file = image.resolve(b"f00").unwrap();
    store.put("img", bytes);
    let err = image.read(&file, 0, 4096).await.unwrap_err();
    assert!(matches!(err, autosquash_core::Error::Replaced(_)), "{err}");
}
