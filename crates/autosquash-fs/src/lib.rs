//! The autosquash filesystem: an automount root showing one directory per image of a store,
//! image lifecycle (mount on lookup, idle expiry, version changes) and the inode mapping.
//! `fs` holds the logic with its own types; `fuse` is the only module that speaks FUSE.

pub mod error;
pub mod fs;
pub mod fuse;

pub use error::{FsError, FsResult};
pub use fs::{AutoFs, FsConfig};
