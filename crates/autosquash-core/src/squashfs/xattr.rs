//! Extended attributes: the xattr id table maps an inode's xattr index to a run of key/value
//! pairs; long values are stored once out of line and referenced.

use super::Image;
use super::inode::{Inode, NO_INDEX};
use super::le::Le;
use super::limits::{MAX_XATTR_COUNT, MAX_XATTR_VALUE};
use super::superblock::NOT_SET;
use crate::error::{Error, Result};

const PREFIXES: [&[u8]; 3] = [b"user.", b"trusted.", b"security."];
const OUT_OF_LINE: u16 = 0x100;

impl Image {
    /// Every extended attribute of `inode` as (full name, value), in image order.
    pub fn xattrs(&self, inode: &Inode) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if inode.xattr == NO_INDEX || self.sb.xattr_table == NOT_SET {
            return Ok(Vec::new());
        }
        let mut header = Le::new(self.tables.slice(self.sb.xattr_table, 16)?);
        let table_start = header.u64()?;
        let id_count = u64::from(header.u32()?);
        if u64::from(inode.xattr) >= id_count {
            return Err(Error::corrupt(format!(
                "xattr index {} out of range",
                inode.xattr
            )));
        }
        let mut id = self.table_entry(self.sb.xattr_table + 16, 16, u64::from(inode.xattr))?;
        let xattr_ref = id.u64()?;
        let count = id.u32()?;
        if count > MAX_XATTR_COUNT {
            return Err(Error::Limit(format!("{count} xattrs on one inode")));
        }
        let at = |r: u64| self.cursor(table_start + (r >> 16), (r & 0xffff) as usize);
        let mut c = at(xattr_ref)?;
        let mut out = Vec::new();
        for _ in 0..count {
            let kind = c.u16()?;
            let name_len = usize::from(c.u16()?);
            let prefix = PREFIXES
                .get(usize::from(kind & 0xff))
                .ok_or_else(|| Error::corrupt(format!("xattr type {kind:#x}")))?;
            let mut name = prefix.to_vec();
            name.extend(c.bytes(name_len)?);
            let value_len = c.u32()? as usize;
            let value = if kind & OUT_OF_LINE != 0 {
                if value_len != 8 {
                    return Err(Error::corrupt("out-of-line xattr reference is not 8 bytes"));
                }
                let mut v = at(c.u64()?)?;
                let len = v.u32()? as usize;
                bounded_value(&mut v, len)?
            } else {
                bounded_value(&mut c, value_len)?
            };
            out.push((name, value));
        }
        Ok(out)
    }
}

fn bounded_value(c: &mut super::metadata::MetaCursor<'_>, len: usize) -> Result<Vec<u8>> {
    if len > MAX_XATTR_VALUE {
        return Err(Error::Limit(format!("xattr value of {len} bytes")));
    }
    c.bytes(len)
}
