//! The autosquash filesystem: an automount root showing one directory per image of a store,
//! image lifecycle (mount on lookup, idle expiry, version changes) and the inode mapping.
//! `fs` (images) and `objects` (the plain object view) hold the logic with their own types,
//! behind the `Tree` trait; `fuse` is the only module that speaks FUSE.

pub mod error;
pub mod fs;
pub mod fuse;
pub mod objects;
pub mod tree;

pub use error::{FsError, FsResult};
pub use fs::{AutoFs, FsConfig};
pub use objects::{ObjectConfig, ObjectFs};
pub use tree::Tree;
