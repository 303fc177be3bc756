//! The 96-byte superblock, validated against the object's size before anything else is read.

use super::le::Le;
use super::limits::MAX_TABLES_BYTES;
use crate::error::{Error, Result};

pub(crate) const SIZE: usize = 96;
pub(crate) const NOT_SET: u64 = u64::MAX;
const MAGIC: u32 = 0x7371_7368; // "hsqs"

#[derive(Debug, Clone)]
pub(crate) struct Superblock {
    pub inode_count: u32,
    pub block_size: u32,
    pub frag_count: u32,
    pub compressor: u16,
    pub id_count: u16,
    pub root_inode: u64,
    pub bytes_used: u64,
    pub id_table: u64,
    pub xattr_table: u64,
    pub inode_table: u64,
    pub dir_table: u64,
    pub frag_table: u64,
}

impl Superblock {
    /// Parses and checks every field that later reads rely on. `object_size` is the size of
    /// the stored object, which may be larger than `bytes_used` (mksquashfs pads to 4 KiB).
    pub fn parse(bytes: &[u8], object_size: u64) -> Result<Self> {
        if bytes.len() < SIZE {
            return Err(Error::corrupt(format!(
                "image is {object_size} bytes, too small for a superblock"
            )));
        }
        let mut r = Le::new(bytes);
        let magic = r.u32()?;
        if magic != MAGIC {
            return Err(Error::corrupt("not a squashfs image (bad magic)"));
        }
        let inode_count = r.u32()?;
        let _mkfs_time = r.u32()?;
        let block_size = r.u32()?;
        let frag_count = r.u32()?;
        let compressor = r.u16()?;
        let block_log = r.u16()?;
        let _flags = r.u16()?;
        let id_count = r.u16()?;
        let (major, minor) = (r.u16()?, r.u16()?);
        let sb = Superblock {
            inode_count,
            block_size,
            frag_count,
            compressor,
            id_count,
            root_inode: r.u64()?,
            bytes_used: r.u64()?,
            id_table: r.u64()?,
            xattr_table: r.u64()?,
            inode_table: r.u64()?,
            dir_table: r.u64()?,
            frag_table: r.u64()?,
        };
        if (major, minor) != (4, 0) {
            return Err(Error::Unsupported(format!(
                "squashfs version {major}.{minor} (only 4.0 is supported)"
            )));
        }
        if !(4096..=1 << 20).contains(&block_size)
            || !block_size.is_power_of_two()
            || u32::from(block_log) != block_size.trailing_zeros()
        {
            return Err(Error::corrupt(format!(
                "invalid block size {block_size} (log {block_log})"
            )));
        }
        sb.check_layout(object_size)?;
        Ok(sb)
    }

    fn check_layout(&self, object_size: u64) -> Result<()> {
        let end = self.bytes_used;
        if end > object_size || end < SIZE as u64 {
            return Err(Error::corrupt(format!(
                "bytes_used {end} does not fit the {object_size}-byte object"
            )));
        }
        if self.inode_count == 0 || self.id_count == 0 {
            return Err(Error::corrupt("inode or id count is zero"));
        }
        // Every table must lie in the tail region [inode_table, bytes_used), which the engine
        // holds in memory; mksquashfs always writes them there.
        let start = self.inode_table;
        let in_tail = |pos: u64| (start..end).contains(&pos);
        let mut tables = vec![("directory", self.dir_table), ("id", self.id_table)];
        if self.frag_count > 0 {
            tables.push(("fragment", self.frag_table));
        }
        if self.xattr_table != NOT_SET {
            tables.push(("xattr", self.xattr_table));
        }
        if start < SIZE as u64 || start >= end {
            return Err(Error::corrupt(format!(
                "inode table at {start} is outside the image"
            )));
        }
        for (name, pos) in tables {
            if !in_tail(pos) {
                return Err(Error::corrupt(format!(
                    "{name} table at {pos} is outside the metadata region {start}..{end}"
                )));
            }
        }
        // The index arrays of the lookup tables (one u64 per 8 KiB metadata block) must fit
        // before the end, which also bounds the entry counts they cover.
        let index_len = |entries: u64, size: u64| (entries * size).div_ceil(8192) * 8;
        for (name, pos, len) in [
            ("id", self.id_table, index_len(u64::from(self.id_count), 4)),
            (
                "fragment",
                self.frag_table,
                index_len(u64::from(self.frag_count), 16),
            ),
        ] {
            if len > 0 && pos.checked_add(len).is_none_or(|e| e > end) {
                return Err(Error::corrupt(format!(
                    "{name} table index of {len} bytes at {pos} runs past the end"
                )));
            }
        }
        if self.dir_table <= start {
            return Err(Error::corrupt("directory table precedes the inode table"));
        }
        if end - start > MAX_TABLES_BYTES {
            return Err(Error::Limit(format!(
                "{} bytes of metadata (limit {MAX_TABLES_BYTES})",
                end - start
            )));
        }
        if (self.root_inode >> 16) >= self.dir_table - start {
            return Err(Error::corrupt("root inode is outside the inode table"));
        }
        Ok(())
    }
}
