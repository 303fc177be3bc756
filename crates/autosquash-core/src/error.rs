//! The one error type of the core crate: store failures and image failures.

use std::sync::Arc;

/// Everything that can go wrong reading an object store or a squashfs image.
///
/// `Clone` because one failed fetch is shared by every reader waiting on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The object does not exist (any more).
    #[error("object not found: {0}")]
    ObjectNotFound(String),
    /// The object changed since its version was pinned (an S3 412 or a new local file).
    #[error("object {0} was replaced since it was opened")]
    Replaced(String),
    /// An object key that could escape or confuse the store (`..`, absolute, NUL).
    #[error("invalid object key {0:?}")]
    InvalidKey(String),
    /// The store failed: I/O, network, permissions.
    #[error("store error for {key}: {message}")]
    Store { key: String, message: Arc<str> },
    /// The image is not a valid squashfs image, or is hostile.
    #[error("corrupt image: {0}")]
    Corrupt(String),
    /// A valid image using a feature this reader does not support.
    #[error("unsupported image: {0}")]
    Unsupported(String),
    /// The image exceeds a safety limit (metadata size, directory depth, ...).
    #[error("image exceeds a limit: {0}")]
    Limit(String),
    /// Asked for an inode of the wrong type (not a directory, not a symlink, ...).
    #[error("wrong inode type: expected {0}")]
    WrongType(&'static str),
    /// No such path inside an image.
    #[error("no such file or directory: {0}")]
    NoEntry(String),
    /// No such inode number known for this image.
    #[error("unknown inode {0}")]
    UnknownInode(u32),
    /// No such extended attribute.
    #[error("no such extended attribute")]
    NoXattr,
}

impl Error {
    pub(crate) fn corrupt(what: impl Into<String>) -> Self {
        Error::Corrupt(what.into())
    }

    /// A store failure for `key`, with a message for the log.
    pub fn store(key: &str, message: impl std::fmt::Display) -> Self {
        Error::Store {
            key: key.to_owned(),
            message: message.to_string().into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
