//! Extended attributes: the xattr id table maps an inode's xattr index to a run of key/value
//! pairs; long values are stored once out of line and referenced.
//!
//! A hostile image can make every entry of an inode point at one 64 KiB out-of-line value, so
//! decoding "all values" of a tiny image could allocate gigabytes. Hence one walker that reads
//! names and only *locates* values, a value decoded only when asked for, and one budget of
//! bytes per call ([`MAX_XATTR_BYTES`]) for everything decoded or skipped.

use super::Image;
use super::inode::{Inode, NO_INDEX};
use super::le::Le;
use super::limits::{MAX_XATTR_BYTES, MAX_XATTR_COUNT, MAX_XATTR_NAMES, MAX_XATTR_VALUE};
use super::metadata::MetaCursor;
use super::superblock::NOT_SET;
use crate::error::{Error, Result};

const PREFIXES: [&[u8]; 3] = [b"user.", b"trusted.", b"security."];
const OUT_OF_LINE: u16 = 0x100;

/// Where an entry's value is: right after its name, or out of line at a reference.
enum ValueAt<'a> {
    Inline(MetaCursor<'a>, usize),
    OutOfLine(u64),
}

/// One entry found by the walker: its full name and where its value lies.
struct Entry<'a> {
    name: Vec<u8>,
    value: ValueAt<'a>,
}

/// Bytes decoded or skipped by one call, against [`MAX_XATTR_BYTES`].
struct Budget(usize);

impl Budget {
    fn spend(&mut self, n: usize) -> Result<()> {
        self.0 = self.0.saturating_add(n);
        if self.0 > MAX_XATTR_BYTES {
            return Err(Error::Limit(format!(
                "over {MAX_XATTR_BYTES} bytes of xattrs on one inode"
            )));
        }
        Ok(())
    }
}

impl Image {
    /// Names of the extended attributes of `inode` (full names, in image order).
    pub fn xattr_names(&self, inode: &Inode) -> Result<Vec<Vec<u8>>> {
        let mut budget = Budget(0);
        let entries = self.xattr_entries(inode, &mut budget)?;
        let total: usize = entries.iter().map(|e| e.name.len() + 1).sum();
        if total > MAX_XATTR_NAMES {
            return Err(Error::Limit(format!("xattr names of {total} bytes")));
        }
        Ok(entries.into_iter().map(|e| e.name).collect())
    }

    /// The value of the extended attribute `name` of `inode`, if it has one; only that value
    /// is decoded.
    pub fn xattr(&self, inode: &Inode, name: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut budget = Budget(0);
        let entries = self.xattr_entries(inode, &mut budget)?;
        match entries.into_iter().find(|e| e.name == name) {
            Some(entry) => self.xattr_value(entry.value, &mut budget).map(Some),
            None => Ok(None),
        }
    }

    /// Every extended attribute of `inode` as (full name, value), in image order; at most
    /// [`MAX_XATTR_BYTES`] decoded in all.
    pub fn xattrs(&self, inode: &Inode) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut budget = Budget(0);
        let entries = self.xattr_entries(inode, &mut budget)?;
        entries
            .into_iter()
            .map(|e| Ok((e.name, self.xattr_value(e.value, &mut budget)?)))
            .collect()
    }

    /// The one walker over an inode's xattr entries: names decoded, values only located
    /// (in-line ones skipped over).
    fn xattr_entries(&self, inode: &Inode, budget: &mut Budget) -> Result<Vec<Entry<'_>>> {
        if inode.xattr == NO_INDEX || self.sb.xattr_table == NOT_SET {
            return Ok(Vec::new());
        }
        let (table_start, id_count) = self.xattr_table_start()?;
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
        let mut c = self.xattr_cursor(table_start, xattr_ref)?;
        let mut out = Vec::new();
        for _ in 0..count {
            let kind = c.u16()?;
            let name_len = usize::from(c.u16()?);
            let prefix = PREFIXES
                .get(usize::from(kind & 0xff))
                .ok_or_else(|| Error::corrupt(format!("xattr type {kind:#x}")))?;
            budget.spend(8 + name_len)?;
            let mut name = prefix.to_vec();
            name.extend(c.bytes(name_len)?);
            let value_len = c.u32()? as usize;
            let value = if kind & OUT_OF_LINE != 0 {
                if value_len != 8 {
                    return Err(Error::corrupt("out-of-line xattr reference is not 8 bytes"));
                }
                ValueAt::OutOfLine(c.u64()?)
            } else {
                check_value_len(value_len)?;
                budget.spend(value_len)?;
                let at = c.clone();
                c.skip(value_len)?;
                ValueAt::Inline(at, value_len)
            };
            out.push(Entry { name, value });
        }
        Ok(out)
    }

    /// Decodes one located value.
    fn xattr_value(&self, value: ValueAt<'_>, budget: &mut Budget) -> Result<Vec<u8>> {
        let (mut c, len) = match value {
            ValueAt::Inline(c, len) => (c, len),
            ValueAt::OutOfLine(reference) => {
                let (table_start, _) = self.xattr_table_start()?;
                let mut c = self.xattr_cursor(table_start, reference)?;
                let len = c.u32()? as usize;
                check_value_len(len)?;
                budget.spend(len)?;
                (c, len)
            }
        };
        c.bytes(len)
    }

    /// The start of the key/value table and the number of xattr ids, from the table header.
    fn xattr_table_start(&self) -> Result<(u64, u64)> {
        let mut header = Le::new(self.tables.slice(self.sb.xattr_table, 16)?);
        Ok((header.u64()?, u64::from(header.u32()?)))
    }

    /// A cursor at an xattr reference (metadata block offset in the high 48 bits, offset
    /// inside the block in the low 16), relative to the start of the xattr key/value table.
    fn xattr_cursor(&self, table_start: u64, reference: u64) -> Result<MetaCursor<'_>> {
        let block = table_start
            .checked_add(reference >> 16)
            .ok_or_else(|| Error::corrupt("xattr reference out of range"))?;
        self.cursor(block, (reference & 0xffff) as usize)
    }
}

fn check_value_len(len: usize) -> Result<()> {
    if len > MAX_XATTR_VALUE {
        return Err(Error::Limit(format!("xattr value of {len} bytes")));
    }
    Ok(())
}
