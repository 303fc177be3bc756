//! A store wrapper that counts requests, bytes and errors, for `autosquash status` and its
//! metrics: per store and per object, with the latency of every request in a histogram per
//! operation. It wraps the store itself (below any cache), so what it counts is what went to
//! S3 or the local directory.

use super::{ObjectMeta, Store};
use crate::error::{Error, Result};
use crate::histogram::Histogram;
use bytes::Bytes;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

/// Requests, bytes read, errors and answers "replaced" (the version changed).
#[derive(Default)]
pub struct RequestCounters {
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
    pub replaced: AtomicU64,
}

impl RequestCounters {
    fn count<T>(&self, result: &Result<T>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match result {
            Err(Error::Replaced(_)) => self.replaced.fetch_add(1, Ordering::Relaxed),
            Err(Error::ObjectNotFound(_)) | Ok(_) => 0,
            Err(_) => self.errors.fetch_add(1, Ordering::Relaxed),
        };
    }
}

#[derive(Default)]
pub struct StoreCounters {
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
    pub replaced: AtomicU64,
    /// Latency of `list`, `head` and `read` requests (successful or not).
    pub list_latency: Histogram,
    pub head_latency: Histogram,
    pub read_latency: Histogram,
    /// The same counts per object key (`head` and `read`; a listing names no object). The
    /// map is written once per key ever seen, read-locked otherwise: a store request costs
    /// far more than the lock.
    objects: RwLock<HashMap<String, Arc<RequestCounters>>>,
}

impl StoreCounters {
    /// Counters of every object requested so far, by key.
    pub fn objects(&self) -> Vec<(String, Arc<RequestCounters>)> {
        let map = self.objects.read().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<_> = map.iter().map(|(k, c)| (k.clone(), c.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    fn object(&self, key: &str) -> Arc<RequestCounters> {
        if let Some(c) = self
            .objects
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            return c.clone();
        }
        self.objects
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.to_owned())
            .or_default()
            .clone()
    }

    fn count<T>(&self, result: &Result<T>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match result {
            Err(Error::Replaced(_)) => self.replaced.fetch_add(1, Ordering::Relaxed),
            Err(Error::ObjectNotFound(_)) | Ok(_) => 0,
            Err(_) => self.errors.fetch_add(1, Ordering::Relaxed),
        };
    }
}

pub struct CountingStore {
    inner: Arc<dyn Store>,
    pub counters: Arc<StoreCounters>,
}

impl CountingStore {
    /// The wrapped store (for figures only it knows, such as retries).
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }
}

impl CountingStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            counters: Arc::default(),
        }
    }
}

#[async_trait::async_trait]
impl Store for CountingStore {
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let start = Instant::now();
        let result = self.inner.list(prefix).await;
        self.counters.list_latency.observe(start.elapsed());
        self.counters.count(&result);
        result
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let start = Instant::now();
        let result = self.inner.head(key).await;
        self.counters.head_latency.observe(start.elapsed());
        self.counters.count(&result);
        self.counters.object(key).count(&result);
        result
    }

    async fn read(&self, object: &ObjectMeta, range: Range<u64>) -> Result<Bytes> {
        let start = Instant::now();
        let result = self.inner.read(object, range).await;
        self.counters.read_latency.observe(start.elapsed());
        self.counters.count(&result);
        let per_object = self.counters.object(&object.key);
        per_object.count(&result);
        if let Ok(data) = &result {
            let n = data.len() as u64;
            self.counters.bytes.fetch_add(n, Ordering::Relaxed);
            per_object.bytes.fetch_add(n, Ordering::Relaxed);
        }
        result
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn retries(&self) -> u64 {
        self.inner.retries()
    }

    fn prefetch(&self, object: &ObjectMeta, range: Range<u64>) {
        self.inner.prefetch(object, range)
    }

    fn takes_hints(&self) -> bool {
        self.inner.takes_hints()
    }

    fn hydrate(&self, object: &ObjectMeta) -> Option<super::Hydration> {
        self.inner.hydrate(object)
    }

    fn disk_usage(&self) -> Option<(u64, bool)> {
        self.inner.disk_usage()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    #[tokio::test]
    async fn requests_are_counted_per_store_and_per_object_with_latency() {
        let mem = Arc::new(MemStore::new());
        mem.put("a.squash", vec![7u8; 100]);
        let store = CountingStore::new(mem);
        let meta = store.head("a.squash").await.unwrap();
        store.read(&meta, 0..10).await.unwrap();
        store.read(&meta, 10..30).await.unwrap();
        assert!(store.head("missing").await.is_err());
        store.list("").await.unwrap();
        let c = &store.counters;
        assert_eq!(c.requests.load(Ordering::Relaxed), 5);
        assert_eq!(c.bytes.load(Ordering::Relaxed), 30);
        assert_eq!(c.read_latency.snapshot().count(), 2);
        assert_eq!(c.head_latency.snapshot().count(), 2);
        assert_eq!(c.list_latency.snapshot().count(), 1);
        let objects = c.objects();
        let keys: Vec<&str> = objects.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a.squash", "missing"]);
        assert_eq!(objects[0].1.requests.load(Ordering::Relaxed), 3);
        assert_eq!(objects[0].1.bytes.load(Ordering::Relaxed), 30);
    }
}
