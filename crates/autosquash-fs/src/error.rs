//! Filesystem errors and their one mapping to errno.

use autosquash_core::Error as CoreError;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("read-only file system")]
    ReadOnly,
    #[error("stale file handle: {0}")]
    Stale(String),
    #[error("I/O error: {0}")]
    Io(String),
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("invalid argument")]
    Invalid,
    #[error("no such attribute")]
    NoXattr,
    #[error("result does not fit the buffer")]
    Range,
    #[error("bad file handle")]
    BadHandle,
}

impl FsError {
    /// The errno answered to the kernel: the only place this mapping is made.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::ReadOnly => libc::EROFS,
            FsError::Stale(_) => libc::ESTALE,
            FsError::Io(_) => libc::EIO,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::Invalid => libc::EINVAL,
            FsError::NoXattr => libc::ENODATA,
            FsError::Range => libc::ERANGE,
            FsError::BadHandle => libc::EBADF,
        }
    }
}

impl From<CoreError> for FsError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::NoEntry(_) => FsError::NotFound,
            CoreError::NoXattr => FsError::NoXattr,
            CoreError::WrongType(_) => FsError::Invalid,
            CoreError::Replaced(_) | CoreError::UnknownInode(_) | CoreError::ObjectNotFound(_) => {
                FsError::Stale(e.to_string())
            }
            CoreError::InvalidKey(_)
            | CoreError::Store { .. }
            | CoreError::Corrupt(_)
            | CoreError::Unsupported(_)
            | CoreError::Limit(_) => FsError::Io(e.to_string()),
        }
    }
}

pub type FsResult<T> = Result<T, FsError>;
