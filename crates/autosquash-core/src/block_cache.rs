//! One bounded memory cache, shared by every open image, for decompressed metadata blocks,
//! data blocks, fragment blocks, parsed inodes and directory listings.
//!
//! Bounded by bytes, not entries, so the daemon's memory does not grow with the number or size
//! of images. Concurrent loads of one key are single-flight (quick_cache's placeholder guards):
//! a fragment shared by hundreds of small files is fetched and decompressed once.

use crate::squashfs::{DirEntry, Inode};
use bytes::Bytes;
use quick_cache::Weighter;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a cached value is; part of the key so a hostile image cannot make a metadata block
/// be served as a data block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Metadata,
    Data,
    Fragment,
    Inode,
    Listing,
}

/// `image` is unique per opened image version, so versions never mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub image: u64,
    pub kind: Kind,
    pub pos: u64,
    /// For data and fragment blocks, the stored size word (length and raw flag): a hostile
    /// image may describe one position twice in different ways, and each description must
    /// get its own decoded value (0 for the other kinds).
    pub word: u32,
}

#[derive(Clone)]
pub(crate) enum Value {
    Block(Bytes),
    Inode(Arc<Inode>),
    Listing(Arc<[DirEntry]>),
}

#[derive(Clone)]
struct ByteWeighter;

impl Weighter<Key, Value> for ByteWeighter {
    fn weight(&self, _key: &Key, value: &Value) -> u64 {
        // A fixed overhead per entry keeps tiny entries from being free.
        64 + match value {
            Value::Block(b) => b.len() as u64,
            Value::Inode(i) => i.heap_size() as u64,
            // Each entry, plus its name's own allocation (the allocator's minimum is 32 bytes).
            Value::Listing(l) => l
                .iter()
                .map(|e| size_of::<crate::DirEntry>() as u64 + (e.name.len() as u64 + 16).max(32))
                .sum(),
        }
    }
}

/// The cache's hasher: random per process, except under the fuzzer, whose run must be the
/// same on every machine for CI to give the same verdict (the hash decides shards and
/// evictions, and with them which code runs).
#[cfg(not(fuzzing))]
pub(crate) type Hasher = std::collections::hash_map::RandomState;
#[cfg(fuzzing)]
pub(crate) type Hasher = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

/// The shared decompressed-data cache, bounded to a byte budget.
pub struct BlockCache {
    cache: quick_cache::sync::Cache<Key, Value, ByteWeighter, Hasher>,
    lookups: AtomicU64,
    misses: AtomicU64,
}

impl BlockCache {
    pub fn new(budget_bytes: u64) -> Arc<Self> {
        let estimated_items = (budget_bytes / 32768).clamp(64, 1 << 20) as usize;
        Arc::new(Self {
            cache: quick_cache::sync::Cache::with(
                estimated_items,
                budget_bytes,
                ByteWeighter,
                Hasher::default(),
                Default::default(),
            ),
            lookups: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// Bytes currently held.
    pub fn used_bytes(&self) -> u64 {
        self.cache.weight()
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.cache.capacity()
    }

    /// Lookups answered from memory, and all lookups.
    pub fn hits_and_lookups(&self) -> (u64, u64) {
        let lookups = self.lookups.load(Ordering::Relaxed);
        (
            lookups.saturating_sub(self.misses.load(Ordering::Relaxed)),
            lookups,
        )
    }

    pub(crate) fn get(&self, key: &Key) -> Option<Value> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let value = self.cache.get(key);
        if value.is_none() {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
        value
    }

    pub(crate) fn insert(&self, key: Key, value: Value) {
        self.cache.insert(key, value);
    }

    pub(crate) fn get_or_insert_with<E>(
        &self,
        key: &Key,
        with: impl FnOnce() -> Result<Value, E>,
    ) -> Result<Value, E> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        self.cache.get_or_insert_with(key, || {
            self.misses.fetch_add(1, Ordering::Relaxed);
            with()
        })
    }

    pub(crate) async fn get_or_insert_async<E>(
        &self,
        key: &Key,
        with: impl Future<Output = Result<Value, E>>,
    ) -> Result<Value, E> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        self.cache
            .get_or_insert_async(key, async {
                self.misses.fetch_add(1, Ordering::Relaxed);
                with.await
            })
            .await
    }

    /// Drops everything an image left behind (called when an image is forgotten): a scan of
    /// the whole cache, so never under a lock that requests need.
    pub fn forget_image(&self, image: u64) {
        self.cache.retain(|k, _| k.image != image);
    }

    /// A new namespace for cache keys: one per opened image or object version, so versions
    /// never mix.
    pub fn namespace() -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}
