//! What the FUSE adapter needs from a mounted tree. Two trees implement it: the automount
//! root of images ([`crate::AutoFs`]) and the plain object view ([`crate::ObjectFs`]).

use crate::error::FsResult;
use crate::fs::{Attr, DirItem, FsStat};
use bytes::Bytes;

#[async_trait::async_trait]
pub trait Tree: Send + Sync + 'static {
    /// Looks `name` up in `parent`; on success the kernel holds one more reference.
    async fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr>;
    /// Whether a lookup under `parent` may wait on the network (and so must not run on the
    /// FUSE thread).
    fn lookup_may_block(&self, parent: u64) -> bool;
    fn forget(&self, ino: u64, n: u64);
    fn getattr(&self, ino: u64) -> FsResult<Attr>;
    fn readlink(&self, ino: u64) -> FsResult<Vec<u8>>;
    fn readdir(&self, ino: u64, offset: u64) -> FsResult<Vec<DirItem>>;
    fn open(&self, ino: u64, write: bool) -> FsResult<u64>;
    async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes>;
    fn release(&self, fh: u64);
    fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>>;
    fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>>;
    fn statfs(&self, ino: u64) -> FsResult<FsStat>;
    /// Re-lists the store.
    async fn refresh(&self) -> autosquash_core::Result<()>;
    /// Periodic housekeeping; returns the (parent inode, name) entries whose dentries the
    /// kernel should drop.
    fn expire(&self) -> Vec<(u64, Vec<u8>)>;
    /// For the mount's fsname and logs.
    fn describe(&self) -> String;
    /// A JSON-ready snapshot for `autosquash status`.
    fn status(&self) -> serde_json::Value;
}
