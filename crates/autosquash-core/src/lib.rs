//! The heart of autosquash: the `Store` abstraction (S3, a local directory, memory) and a
//! squashfs engine that reads images lazily over ranged reads of such a store.
//!
//! The engine uses `backhand` as its codec (decompressors, writer for `pack`), but has its own
//! reader: an image opens in one or two requests (superblock plus a speculative read of the
//! tail, where mksquashfs puts every table), metadata is decoded only when looked up, file data
//! is read block by block at any offset, and every offset and length from the image is checked,
//! because images come from outside and may be hostile.

mod block_cache;
pub mod error;
pub mod histogram;
pub mod squashfs;
pub mod store;

pub use block_cache::BlockCache;
pub use error::{Error, Result};
pub use squashfs::{DirEntry, FileKind, Image, Inode, Walked};
pub use store::{
    CountingStore, DirStore, Hydration, HydrationProgress, HydrationState, ObjectMeta,
    RequestCounters, Store, StoreCounters,
};
/// An in-memory store that counts requests and can be slowed or made to fail: for tests of
/// this crate and the crates above it (feature `test-support`), never for the daemon.
#[cfg(any(test, feature = "test-support"))]
pub use store::{MemStore, StoreStats};
