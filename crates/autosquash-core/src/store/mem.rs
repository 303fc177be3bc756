//! An in-memory store for tests: counts requests, can delay them, can be made to fail.

use super::{ObjectMeta, Store, check_range};
use crate::error::{Error, Result};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Request counters of a [`MemStore`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    pub reads: u64,
    pub bytes: u64,
    pub heads: u64,
    pub lists: u64,
}

#[derive(Default)]
pub struct MemStore {
    objects: Mutex<BTreeMap<String, (Bytes, u64)>>,
    generation: AtomicU64,
    reads: AtomicU64,
    bytes: AtomicU64,
    heads: AtomicU64,
    lists: AtomicU64,
    delay_ms: AtomicU64,
    failing: AtomicBool,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces an object; a replacement gets a new ETag.
    pub fn put(&self, key: &str, data: impl Into<Bytes>) {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .insert(key.to_owned(), (data.into(), generation));
    }

    pub fn remove(&self, key: &str) {
        self.lock().remove(key);
    }

    /// Every read then sleeps this long first (simulates network latency).
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// While set, every request fails with a store error.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Relaxed);
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            reads: self.reads.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            heads: self.heads.load(Ordering::Relaxed),
            lists: self.lists.load(Ordering::Relaxed),
        }
    }

    pub fn reset_stats(&self) {
        for counter in [&self.reads, &self.bytes, &self.heads, &self.lists] {
            counter.store(0, Ordering::Relaxed);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (Bytes, u64)>> {
        self.objects.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn meta(key: &str, data: &Bytes, generation: u64) -> ObjectMeta {
        ObjectMeta {
            key: key.to_owned(),
            size: data.len() as u64,
            etag: format!("\"mem-{generation}\""),
        }
    }

    async fn before_request(&self, key: &str) -> Result<()> {
        let delay = self.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if self.failing.load(Ordering::Relaxed) {
            return Err(Error::store(key, "injected failure"));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Store for MemStore {
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.lists.fetch_add(1, Ordering::Relaxed);
        self.before_request(prefix).await?;
        Ok(self
            .lock()
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (data, generation))| Self::meta(k, data, *generation))
            .collect())
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.heads.fetch_add(1, Ordering::Relaxed);
        self.before_request(key).await?;
        let objects = self.lock();
        let (data, generation) = objects
            .get(key)
            .ok_or_else(|| Error::ObjectNotFound(key.to_owned()))?;
        Ok(Self::meta(key, data, *generation))
    }

    async fn read(&self, object: &ObjectMeta, range: Range<u64>) -> Result<Bytes> {
        let (key, etag) = (object.key.as_str(), object.etag.as_str());
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.before_request(key).await?;
        let (data, generation) = self
            .lock()
            .get(key)
            .cloned()
            .ok_or_else(|| Error::ObjectNotFound(key.to_owned()))?;
        if Self::meta(key, &data, generation).etag != etag {
            return Err(Error::Replaced(key.to_owned()));
        }
        check_range(key, &range, data.len() as u64)?;
        self.bytes
            .fetch_add(range.end - range.start, Ordering::Relaxed);
        Ok(data.slice(range.start as usize..range.end as usize))
    }

    fn describe(&self) -> String {
        "mem".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_are_pinned_to_the_version() {
        let store = MemStore::new();
        store.put("a", &b"hello"[..]);
        let meta = store.head("a").await.unwrap();
        assert_eq!(&store.read(&meta, 1..4).await.unwrap()[..], b"ell");
        assert!(store.read(&meta, 3..6).await.is_err());
        store.put("a", &b"world"[..]);
        assert!(matches!(
            store.read(&meta, 0..1).await,
            Err(Error::Replaced(_))
        ));
        assert_eq!(store.stats().reads, 3);
        assert_eq!(store.list("").await.unwrap().len(), 1);
        assert!(store.list("b").await.unwrap().is_empty());
    }
}
