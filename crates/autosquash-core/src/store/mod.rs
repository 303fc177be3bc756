//! The object store abstraction: everything the engine needs from S3 or a local directory.
//!
//! Reads are pinned to a version (ETag), so an image opened at one version never silently
//! mixes bytes of another: a store answers [`Error::Replaced`] instead.

mod counting;
mod dir;
mod hydration;
#[cfg(any(test, feature = "test-support"))]
mod mem;

pub use counting::{CountingStore, RequestCounters, StoreCounters};
pub use dir::DirStore;
pub use hydration::{Hydration, HydrationProgress, HydrationState};
#[cfg(any(test, feature = "test-support"))]
pub use mem::{MemStore, StoreStats};

use crate::error::{Error, Result};
use bytes::Bytes;
use std::ops::Range;

/// What a store knows about one object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectMeta {
    /// Key relative to the store's root or prefix, `/`-separated.
    pub key: String,
    pub size: u64,
    /// Opaque version tag; changes whenever the content may have changed.
    pub etag: String,
}

/// A ranged-read object store.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Every object whose key starts with `prefix`.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;
    /// Metadata of one object; [`Error::ObjectNotFound`] if absent.
    async fn head(&self, key: &str) -> Result<ObjectMeta>;
    /// Bytes `range` of version `object.etag` of `object.key` (`object` as listed or HEADed, so
    /// every layer knows the version's size without a side map). A range past the end is an
    /// error, never a short read; a different current version is [`Error::Replaced`].
    async fn read(&self, object: &ObjectMeta, range: Range<u64>) -> Result<Bytes>;
    /// A short name for logs ("dir:/srv/images", "s3://bucket/prefix/").
    fn describe(&self) -> String;
    /// Requests retried so far after a transient failure (for `status`).
    fn retries(&self) -> u64 {
        0
    }
    /// A hint that `range` of `object` will likely be read soon: a store with a local copy
    /// fetches it ahead, below demand reads. No-op by default.
    fn prefetch(&self, _object: &ObjectMeta, _range: Range<u64>) {}
    /// Whether [`Store::prefetch`] does anything (callers skip working out hints otherwise).
    fn takes_hints(&self) -> bool {
        false
    }
    /// Starts fetching the whole of `object` into the store's local copy in the background,
    /// below demand reads; `None` for a store that keeps no copy or will not take this
    /// object (too large, cache off). Dropping the handle stops it.
    fn hydrate(&self, _object: &ObjectMeta) -> Option<Hydration> {
        None
    }
    /// Bytes kept in the store's local copy on disk, and whether that copy works; `None` for
    /// a store that keeps none (for `status`).
    fn disk_usage(&self) -> Option<(u64, bool)> {
        None
    }
}

/// A shared store is a store, so wrappers can hold `Arc<dyn Store>` or `Arc<MemStore>`.
#[async_trait::async_trait]
impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        (**self).list(prefix).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        (**self).head(key).await
    }
    async fn read(&self, object: &ObjectMeta, range: Range<u64>) -> Result<Bytes> {
        (**self).read(object, range).await
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn retries(&self) -> u64 {
        (**self).retries()
    }
    fn prefetch(&self, object: &ObjectMeta, range: Range<u64>) {
        (**self).prefetch(object, range)
    }
    fn takes_hints(&self) -> bool {
        (**self).takes_hints()
    }
    fn hydrate(&self, object: &ObjectMeta) -> Option<Hydration> {
        (**self).hydrate(object)
    }
    fn disk_usage(&self) -> Option<(u64, bool)> {
        (**self).disk_usage()
    }
}

/// Rejects keys that could escape a store's root: empty, absolute, `.`/`..` components, NUL.
pub fn check_key(key: &str) -> Result<()> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.contains('\0')
        || key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        Err(Error::InvalidKey(key.to_owned()))
    } else {
        Ok(())
    }
}

/// Checks a requested range against an object's size.
pub(crate) fn check_range(key: &str, range: &Range<u64>, size: u64) -> Result<()> {
    if range.start > range.end || range.end > size {
        return Err(Error::corrupt(format!(
            "read {}..{} past the end of {key} ({size} bytes)",
            range.start, range.end
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_escape_are_rejected() {
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "..",
            "./a",
            "a//b",
            "a/",
            "a\0b",
        ] {
            assert!(check_key(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a.squash", "dir/a.squash", "..a", "a..b/c"] {
            assert!(check_key(good).is_ok(), "{good:?} rejected");
        }
    }
}
