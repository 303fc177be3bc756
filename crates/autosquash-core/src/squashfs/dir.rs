//! Directory listings: decoded whole on first lookup or readdir, then cached (byte-budgeted)
//! and binary-searched, since mksquashfs writes entries sorted by name.

use super::Image;
use super::inode::{FileKind, Inode};
use super::limits::MAX_LISTING_BYTES;
use crate::block_cache::{Key, Kind, Value};
use crate::error::{Error, Result};
use std::sync::Arc;

/// One directory entry. Names are raw bytes: squashfs allows anything but `/` and NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Box<[u8]>,
    pub ino: u32,
    pub kind: FileKind,
    pub(crate) inode_ref: u64,
}

impl Image {
    /// The entries of directory `dir`, without `.` and `..`.
    pub fn listing(&self, dir: &Inode) -> Result<Arc<[DirEntry]>> {
        let key = Key {
            image: self.id,
            kind: Kind::Listing,
            pos: u64::from(dir.ino),
            word: 0,
        };
        match self
            .cache
            .get_or_insert_with(&key, || self.decode_listing(dir).map(Value::Listing))?
        {
            Value::Listing(entries) => Ok(entries),
            _ => Err(Error::corrupt("listing cache entry of the wrong kind")),
        }
    }

    fn decode_listing(&self, dir: &Inode) -> Result<Arc<[DirEntry]>> {
        let body = dir.dir()?;
        let len = u64::from(body.listing_len);
        if len > MAX_LISTING_BYTES {
            return Err(Error::Limit(format!("directory listing of {len} bytes")));
        }
        if len == 0 {
            return Ok(Arc::from(Vec::new()));
        }
        let block = self.sb.dir_table + u64::from(body.block);
        let mut c = self.cursor(block, usize::from(body.offset))?;
        let mut entries = Vec::new();
        let mut consumed = 0u64;
        while consumed < len {
            let count = c.u32()?;
            let start = c.u32()?;
            let base = c.u32()?;
            consumed += 12;
            if count >= 256 {
                return Err(Error::corrupt(format!(
                    "directory header counts {count} entries"
                )));
            }
            for _ in 0..=count {
                let offset = c.u16()?;
                let delta = c.u16()? as i16;
                let kind_type = c.u16()?;
                let name_len = usize::from(c.u16()?) + 1;
                if name_len > 256 {
                    return Err(Error::corrupt(format!(
                        "directory entry name of {name_len} bytes"
                    )));
                }
                let name = c.bytes(name_len)?;
                consumed += 8 + name_len as u64;
                if consumed > len {
                    return Err(Error::corrupt(
                        "directory entries run past the listing size",
                    ));
                }
                check_name(&name)?;
                let ino = base
                    .checked_add_signed(i32::from(delta))
                    .filter(|&ino| ino != 0 && ino <= self.sb.inode_count)
                    .ok_or_else(|| Error::corrupt("directory entry inode number out of range"))?;
                let (kind, _) = FileKind::from_type(kind_type)?;
                entries.push(DirEntry {
                    name: name.into(),
                    ino,
                    kind,
                    inode_ref: (u64::from(start) << 16) | u64::from(offset),
                });
            }
        }
        Ok(entries.into())
    }
}

/// Names that could confuse a path walk are corrupt: empty, `.`, `..`, or containing `/` or NUL.
fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() || name == b"." || name == b".." || name.iter().any(|&b| b == b'/' || b == 0)
    {
        return Err(Error::corrupt(format!(
            "invalid directory entry name {:?}",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(())
}
