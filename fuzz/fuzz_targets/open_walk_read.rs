//! Open an arbitrary byte string as an image, walk every directory, stat every entry, read
//! every file, symlink and xattr list: any panic, hang or runaway allocation is a bug.
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
        let Ok(root) = image.root() else { return };
        let mut stack = vec![root];
        let mut budget = 10_000;
        while let Some(dir) = stack.pop() {
            let Ok(listing) = image.listing(&dir) else { continue };
            for entry in listing.iter() {
                budget -= 1;
                if budget == 0 {
                    return;
                }
                let Ok(inode) = image.entry_inode(&dir, entry) else { continue };
                let _ = image.xattrs(&inode);
                match inode.kind {
                    FileKind::Directory => stack.push(inode),
                    FileKind::Symlink => {
                        let _ = image.readlink(&inode);
                    }
                    FileKind::File => {
                        let mut offset = 0;
                        while offset < inode.size.min(64 << 20) {
                            match image.read(&inode, offset, 1 << 20).await {
                                Ok(d) if !d.is_empty() => offset += d.len() as u64,
                                _ => break,
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    });
});
