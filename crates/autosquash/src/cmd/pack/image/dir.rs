//! Directory listings: entries sorted by name, in runs under headers (one header per run of
//! at most 256 entries whose inodes share one inode-table block and whose numbers lie within
//! ±32767 of the header's), and an index of the runs that start in each new metadata block, as
//! mksquashfs writes it, so the kernel's lookups in a large directory skip ahead.

use super::compress::Compressor;
use super::meta::{BLOCK, MetaWriter, Pos};
use anyhow::Result;

pub struct Entry<'a> {
    pub name: &'a [u8],
    /// The entry's inode in the inode table.
    pub inode: Pos,
    pub ino: u32,
    /// Basic inode type (1-7).
    pub kind: u16,
}

/// One entry of a directory's index: a header's offset in the listing, the directory-table
/// block holding it, and its first name.
pub struct IndexEntry {
    pub index: u32,
    pub block: u32,
    pub name: Vec<u8>,
}

pub struct Listing {
    pub start: Pos,
    /// Bytes of the listing (the inode's size is 3 more, for `.` and `..`).
    pub len: u32,
    pub index: Vec<IndexEntry>,
}

pub fn write(dirs: &mut MetaWriter, c: &mut Compressor, entries: &[Entry<'_>]) -> Result<Listing> {
    let start = dirs.pos();
    let mut len = 0u32;
    let mut index = Vec::new();
    let mut indexed_block = start.block;
    let mut i = 0;
    while i < entries.len() {
        let first = &entries[i];
        let pos = dirs.pos();
        if pos.block != indexed_block {
            index.push(IndexEntry {
                index: len,
                block: pos.block as u32,
                name: first.name.to_vec(),
            });
            indexed_block = pos.block;
        }
        // A run also ends where the metadata block does (after at least one entry), so each
        // block's first header is there for the index.
        let mut room = BLOCK.saturating_sub(usize::from(pos.offset) + 12);
        let count = entries[i..]
            .iter()
            .take(256)
            .enumerate()
            .take_while(|(k, n)| {
                let size = 8 + n.name.len();
                let ok = n.inode.block == first.inode.block
                    && (i64::from(n.ino) - i64::from(first.ino)).abs() <= 32767
                    && (*k == 0 || size <= room);
                room = room.saturating_sub(size);
                ok
            })
            .count();
        let mut b = Vec::with_capacity(12 + count * 24);
        b.extend((count as u32 - 1).to_le_bytes());
        b.extend((first.inode.block as u32).to_le_bytes());
        b.extend(first.ino.to_le_bytes());
        for n in &entries[i..i + count] {
            b.extend(n.inode.offset.to_le_bytes());
            b.extend(((i64::from(n.ino) - i64::from(first.ino)) as i16).to_le_bytes());
            b.extend(n.kind.to_le_bytes());
            b.extend((n.name.len() as u16 - 1).to_le_bytes());
            b.extend_from_slice(n.name);
        }
        dirs.put(c, &b)?;
        len += b.len() as u32;
        i += count;
    }
    Ok(Listing { start, len, index })
}
