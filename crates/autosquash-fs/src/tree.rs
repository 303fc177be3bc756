//! What the FUSE adapter needs from a mounted tree. Two trees implement it: the automount
//! root of images ([`crate::AutoFs`]) and the plain object view ([`crate::ObjectFs`]).

use crate::error::FsResult;
use crate::fs::{Attr, DirItem, FsStat};
use bytes::Bytes;
use std::sync::Arc;

#[async_trait::async_trait]
pub trait Tree: Send + Sync + 'static {
    /// Looks `name` up in `parent`; on success the kernel holds one more reference. May wait
    /// on the store.
    async fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr>;
    /// The lookup answered at once if it needs no waiting, else `None` (then [`Tree::lookup`]
    /// runs on the runtime): FUSE threads never wait on the network.
    fn lookup_now(&self, parent: u64, name: &[u8]) -> Option<FsResult<Attr>>;
    fn forget(&self, ino: u64, n: u64);
    fn getattr(&self, ino: u64) -> FsResult<Attr>;
    fn readlink(&self, ino: u64) -> FsResult<Vec<u8>>;
    /// Entries from `offset` on, handed to `add` until it returns true (buffer full); with
    /// `plus`, with attributes where known, and each added entry with attributes counts as a
    /// kernel reference (forgotten like a lookup).
    fn readdir(
        &self,
        ino: u64,
        offset: u64,
        plus: bool,
        add: &mut dyn FnMut(&DirItem, Option<&Attr>) -> bool,
    ) -> FsResult<()>;
    /// Reads file `ino` (files are opened without a request, so reads name the inode).
    async fn read(&self, ino: u64, offset: u64, size: u32) -> FsResult<Bytes>;
    fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>>;
    fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>>;
    fn statfs(&self, ino: u64) -> FsResult<FsStat>;
    /// Re-lists the store.
    async fn refresh(&self) -> autosquash_core::Result<()>;
    /// Periodic housekeeping; returns what the kernel should drop from its caches.
    fn expire(&self) -> Vec<Invalidation>;
    /// Applies what a reload may change in place (trees without these settings ignore it).
    fn retune(&self, _tuning: Tuning) {}
    /// Records in `log` what a successor needs to answer for the kernel's references (see
    /// the handover module); `false` for a tree that cannot be taken over.
    fn record_to(&self, _log: Arc<crate::handover::StateLog>) -> bool {
        false
    }
    /// Restores what a predecessor recorded; how many of its versions are back.
    async fn restore(&self, _lines: &[String]) -> usize {
        0
    }
    /// Where to hand file data ahead of the kernel's reads (trees that do not push ignore it).
    fn attach_pages(&self, _pages: crate::fuse::PageSink) {}
    /// For the mount's fsname and logs.
    fn describe(&self) -> String;
    /// A JSON-ready snapshot for `autosquash status`.
    fn status(&self) -> serde_json::Value;
}

/// A kernel cache entry that no longer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// The dentry of `name` in directory `parent`.
    Entry(u64, Vec<u8>),
    /// The cached pages (file data or directory listing) and attributes of an inode.
    Inode(u64),
}

/// The settings of a tree that a reload changes in place, without a new mount.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tuning {
    pub idle_timeout: std::time::Duration,
    pub negative_ttl: std::time::Duration,
    pub hydrate: bool,
}
