//! Safety limits against hostile images. Each is far above what mksquashfs produces for real
//! trees, and each turns into [`crate::Error::Limit`] for that image only.

/// Compressed metadata held in memory per open image (inode, directory, lookup tables).
pub(crate) const MAX_TABLES_BYTES: u64 = 512 << 20;
/// Blocks in one file: 2^24 blocks is 2 TiB at the default 128 KiB block size.
pub(crate) const MAX_FILE_BLOCKS: u64 = 1 << 24;
/// Bytes in one directory listing (about a million entries).
pub(crate) const MAX_LISTING_BYTES: u64 = 64 << 20;
/// Directory depth below the image root; deeper paths could not be used on Linux anyway
/// (PATH_MAX is 4096 bytes, so at most 2048 levels of one-letter names).
pub(crate) const MAX_DEPTH: u32 = 2048;
/// Symlink target length: Linux's PATH_MAX minus the NUL.
pub(crate) const MAX_SYMLINK: usize = 4095;
/// Linux's own xattr limits.
pub(crate) const MAX_XATTR_VALUE: usize = 65536;
pub(crate) const MAX_XATTR_COUNT: u32 = 65536;
/// The names of one inode's xattrs, as listxattr returns them (Linux's XATTR_LIST_MAX).
pub(crate) const MAX_XATTR_NAMES: usize = 65536;
/// Bytes of xattr entries decoded or skipped for one inode in one call: far above any real
/// inode (a few capabilities and labels), and it stops entries that all share one large
/// out-of-line value from multiplying it.
pub(crate) const MAX_XATTR_BYTES: usize = 4 << 20;
/// The speculative read of an image's tail at open, which holds every table of a typical image.
pub(crate) const TAIL_READ: u64 = 1 << 20;
