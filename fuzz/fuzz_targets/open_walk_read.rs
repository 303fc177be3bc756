//! Open an arbitrary byte string as an image, walk every entry ([`Image::walk`]), list and read
//! every xattr, read every symlink and every file twice (the second time from the cache, where
//! a block cached for another inode must be checked again): any panic, hang or runaway
//! allocation is a bug.
#![no_main]

use autosquash_core::{BlockCache, FileKind, Image, MemStore, Store};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        let store = Arc::new(MemStore::new());
        store.put("img", data.to_vec());
        let meta = store.head("img").await.unwrap();
        let Ok(image) = Image::open(store, meta, BlockCache::new(16 << 20)).await else { return };
        for walked in image.walk(10_000) {
            let Ok(inode) = walked.inode else { continue };
            if let Ok(names) = image.xattr_names(&inode) {
                for name in names {
                    let _ = image.xattr(&inode, &name);
                }
            }
            let _ = image.xattrs(&inode);
            match inode.kind {
                FileKind::Symlink => {
                    let _ = image.readlink(&inode);
                }
                FileKind::File => {
                    for _ in 0..2 {
                        let mut offset = 0;
                        while offset < inode.size.min(64 << 20) {
                            match image.read(&inode, offset, 1 << 20).await {
                                Ok(d) if !d.is_empty() => offset += d.len() as u64,
                                _ => break,
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    });
});
