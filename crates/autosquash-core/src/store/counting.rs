//! A store wrapper that counts requests, bytes and errors, for `autosquash status`.

use super::{ObjectMeta, Store};
use crate::error::{Error, Result};
use bytes::Bytes;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct StoreCounters {
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
    pub replaced: AtomicU64,
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

    fn count<T>(&self, result: &Result<T>) {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        match result {
            Err(Error::Replaced(_)) => self.counters.replaced.fetch_add(1, Ordering::Relaxed),
            Err(Error::ObjectNotFound(_)) | Ok(_) => 0,
            Err(_) => self.counters.errors.fetch_add(1, Ordering::Relaxed),
        };
    }
}

#[async_trait::async_trait]
impl Store for CountingStore {
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let result = self.inner.list(prefix).await;
        self.count(&result);
        result
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let result = self.inner.head(key).await;
        self.count(&result);
        result
    }

    async fn read(&self, object: &ObjectMeta, range: Range<u64>) -> Result<Bytes> {
        let result = self.inner.read(object, range).await;
        self.count(&result);
        if let Ok(data) = &result {
            self.counters
                .bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
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
}
