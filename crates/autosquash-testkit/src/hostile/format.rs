//! The squashfs 4.0 on-disk vocabulary the other modules share: superblock field offsets,
//! inode types, inode field offsets, the directory listing layout, and little-endian field
//! accessors.

// On-disk format constants (squashfs 4.0, little endian).

pub(super) const SB_LEN: usize = 96;
pub(super) const SB_MAGIC: usize = 0;
pub(super) const SB_INODE_COUNT: usize = 4;
pub(super) const SB_BLOCK_SIZE: usize = 12;
pub(super) const SB_FRAG_COUNT: usize = 16;
pub(super) const SB_COMPRESSOR: usize = 20;
pub(super) const SB_BLOCK_LOG: usize = 22;
pub(super) const SB_ID_COUNT: usize = 26;
pub(super) const SB_VERSION_MAJOR: usize = 28;
pub(super) const SB_VERSION_MINOR: usize = 30;
pub(super) const SB_ROOT_INODE: usize = 32;
pub(super) const SB_BYTES_USED: usize = 40;
pub(super) const SB_ID_TABLE: usize = 48;
pub(super) const SB_XATTR_TABLE: usize = 56;
pub(super) const SB_INODE_TABLE: usize = 64;
pub(super) const SB_DIR_TABLE: usize = 72;
pub(super) const SB_FRAG_TABLE: usize = 80;
pub(super) const SB_EXPORT_TABLE: usize = 88;

pub(super) const MAGIC: &[u8; 4] = b"hsqs";
pub(super) const NO_TABLE: u64 = u64::MAX;
pub(super) const META_UNCOMPRESSED: u16 = 0x8000;
pub(super) const META_SIZE_MASK: u16 = 0x7fff;
pub(super) const META_BLOCK_MAX: usize = 8192;
pub(super) const NO_FRAGMENT: u32 = 0xffff_ffff;
pub(super) const MIB: usize = 1024 * 1024;

pub(super) const T_DIR: u16 = 1;
pub(super) const T_FILE: u16 = 2;
pub(super) const T_SYMLINK: u16 = 3;
pub(super) const T_BLKDEV: u16 = 4;
pub(super) const T_CHRDEV: u16 = 5;
pub(super) const T_FIFO: u16 = 6;
pub(super) const T_SOCKET: u16 = 7;
pub(super) const T_LDIR: u16 = 8;
pub(super) const T_LFILE: u16 = 9;
pub(super) const T_LSYMLINK: u16 = 10;
pub(super) const T_LBLKDEV: u16 = 11;
pub(super) const T_LCHRDEV: u16 = 12;
pub(super) const T_LFIFO: u16 = 13;
pub(super) const T_LSOCKET: u16 = 14;

// Field offsets inside inodes (after the 16-byte common header).
pub(super) const I_TYPE: usize = 0;
pub(super) const I_UID: usize = 4;
pub(super) const I_NUMBER: usize = 12;
pub(super) const DIR_START: usize = 16;
pub(super) const DIR_FILE_SIZE: usize = 24; // u16
pub(super) const DIR_OFFSET: usize = 26; // u16
pub(super) const LDIR_FILE_SIZE: usize = 20; // u32
pub(super) const LDIR_START: usize = 24;
pub(super) const LDIR_INDEX_COUNT: usize = 32; // u16
pub(super) const LDIR_OFFSET: usize = 34; // u16
pub(super) const FILE_BLOCKS_START: usize = 16;
pub(super) const FILE_FRAG: usize = 20;
pub(super) const FILE_FRAG_OFFSET: usize = 24;
pub(super) const FILE_SIZE: usize = 28;
pub(super) const FILE_BLOCKS: usize = 32;
pub(super) const LFILE_SIZE: usize = 24; // u64
pub(super) const LFILE_FRAG: usize = 44;
pub(super) const LFILE_XATTR: usize = 52;
pub(super) const LFILE_BLOCKS: usize = 56;
pub(super) const SYMLINK_SIZE: usize = 20;

// Directory listing layout.
pub(super) const DIR_HEADER_LEN: usize = 12;
pub(super) const DIR_ENTRY_LEN: usize = 8;
pub(super) const DE_OFFSET: usize = 0;
pub(super) const DE_INODE_OFFSET: usize = 2;
pub(super) const DE_TYPE: usize = 4;
pub(super) const DE_NAME_SIZE: usize = 6;

// Little-endian helpers.

pub(super) fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}

pub(super) fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

pub(super) fn get64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

pub(super) fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

pub(super) fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub(super) fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

pub(super) fn usize_of(v: u64) -> usize {
    usize::try_from(v).expect("offset fits in usize")
}
