//! Shared helpers of the engine's integration tests: the corpus (built once per test run)
//! and a walker that opens images through a store.
#![allow(dead_code)]

use autosquash_core::{BlockCache, DirStore, Image, Inode, MemStore, Store};
use autosquash_testkit::corpus::{self, Corpus};
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// The corpus, built once per test run and shared by the test binaries.
pub fn corpus() -> &'static Corpus {
    static CORPUS: OnceLock<Corpus> = OnceLock::new();
    CORPUS.get_or_init(|| corpus::shared(Path::new(env!("CARGO_TARGET_TMPDIR"))))
}

pub fn cache() -> Arc<BlockCache> {
    BlockCache::new(64 << 20)
}

/// Opens an image file through a `DirStore` of its directory.
pub async fn open_file(path: &Path) -> autosquash_core::Result<Arc<Image>> {
    let store: Arc<dyn Store> = Arc::new(DirStore::new(path.parent().unwrap()));
    let meta = store
        .head(path.file_name().unwrap().to_str().unwrap())
        .await?;
    Image::open(store, meta, cache()).await
}

/// Puts `bytes` into a fresh `MemStore` as "img" and opens it.
pub async fn open_mem(bytes: Vec<u8>) -> (Arc<MemStore>, autosquash_core::Result<Arc<Image>>) {
    let store = Arc::new(MemStore::new());
    store.put("img", bytes);
    let meta = store.head("img").await.unwrap();
    let image = Image::open(store.clone(), meta, cache()).await;
    (store, image)
}

/// Reads a whole file in chunks of `chunk` bytes.
pub async fn read_all(
    image: &Image,
    inode: &Inode,
    chunk: usize,
) -> autosquash_core::Result<Vec<u8>> {
    let mut out = Vec::new();
    while (out.len() as u64) < inode.size {
        let data = image.read(inode, out.len() as u64, chunk).await?;
        if data.is_empty() {
            break;
        }
        out.extend_from_slice(&data);
    }
    Ok(out)
}

/// Visits every entry of an image ([`Image::walk`], at most `limit`), reading every file twice
/// (the second time from the cache, where a block another inode cached must still be checked),
/// every symlink, xattr list and value. Goes on past errors and returns the first one, so a
/// bad entry does not hide a panic behind it.
pub async fn walk_everything(image: &Image, limit: usize) -> autosquash_core::Result<usize> {
    let mut first_error = None;
    let mut seen = 0;
    for walked in image.walk(limit) {
        seen += 1;
        let visited = match walked.inode {
            Ok(inode) => visit(image, &inode).await,
            Err(e) => Err(e),
        };
        if let Err(e) = visited {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(seen), Err)
}

async fn visit(image: &Image, inode: &Inode) -> autosquash_core::Result<()> {
    for name in image.xattr_names(inode)? {
        image.xattr(inode, &name)?;
    }
    image.xattrs(inode)?;
    match inode.kind {
        autosquash_core::FileKind::File => {
            let first = read_all(image, inode, 1 << 20).await?;
            let again = read_all(image, inode, 1 << 20).await?;
            assert!(first == again, "a cached re-read gave other bytes");
        }
        autosquash_core::FileKind::Symlink => {
            image.readlink(inode)?;
        }
        _ => {}
    }
    Ok(())
}
