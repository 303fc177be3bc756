//! The lookup tables: fragments and ids (entries in metadata blocks, then an index of the
//! blocks' positions), and xattrs (key/value pairs, then ids pointing at runs of them, then a
//! header and the ids' index). The kernel wants each table's index to end exactly where the
//! next table starts, which writing them back to back in this order gives.

use super::compress::Compressor;
use super::inode::NO_XATTR;
use super::meta::{BLOCK, MetaWriter};
use super::output::Output;
use anyhow::{Result, bail};
use std::collections::HashMap;

/// Writes `entries` as a lookup table; returns the position of its index (where the
/// superblock points).
pub fn lookup<const N: usize>(
    o: &mut Output,
    c: &mut Compressor,
    entries: &[[u8; N]],
) -> Result<u64> {
    let mut w = MetaWriter::default();
    for e in entries {
        w.put(c, e)?;
    }
    let start = o.pos();
    let (bytes, starts) = w.finish(c)?;
    o.write(&bytes)?;
    let index = o.pos();
    for s in starts {
        o.write(&(start + s).to_le_bytes())?;
    }
    Ok(index)
}

/// The id table: every uid and gid, once.
#[derive(Default)]
pub struct Ids {
    pub list: Vec<u32>,
    index: HashMap<u32, u16>,
}

impl Ids {
    pub fn get(&mut self, id: u32) -> Result<u16> {
        if let Some(&i) = self.index.get(&id) {
            return Ok(i);
        }
        if self.list.len() > usize::from(u16::MAX) {
            bail!("more than 65536 distinct owners and groups (squashfs's limit)");
        }
        let i = self.list.len() as u16;
        self.list.push(id);
        self.index.insert(id, i);
        Ok(i)
    }
}

const PREFIXES: [&[u8]; 3] = [b"user.", b"trusted.", b"security."];

/// The xattr table: one id per distinct set of attributes (all of a tree's files labelled
/// alike share one), values stored in line.
#[derive(Default)]
pub struct Xattrs {
    pairs: MetaWriter,
    /// Per id: reference of its first pair, count, bytes.
    ids: Vec<(u64, u32, u32)>,
    known: HashMap<crate::cmd::pack::source::Xattrs, u32>,
}

impl Xattrs {
    /// The id of `set` (names already checked to have a known prefix).
    pub fn add(&mut self, set: &[(Vec<u8>, Vec<u8>)], c: &mut Compressor) -> Result<u32> {
        if set.is_empty() {
            return Ok(NO_XATTR);
        }
        if let Some(&id) = self.known.get(set) {
            return Ok(id);
        }
        let at = self.pairs.pos().reference();
        let mut size = 0u32;
        for (name, value) in set {
            let Some((kind, prefix)) = PREFIXES
                .iter()
                .enumerate()
                .find(|(_, p)| name.starts_with(p))
            else {
                bail!("xattr {} cannot be stored", String::from_utf8_lossy(name));
            };
            let short = &name[prefix.len()..];
            let mut b = Vec::with_capacity(8 + short.len() + value.len());
            b.extend((kind as u16).to_le_bytes());
            b.extend((short.len() as u16).to_le_bytes());
            b.extend_from_slice(short);
            b.extend((value.len() as u32).to_le_bytes());
            b.extend_from_slice(value);
            self.pairs.put(c, &b)?;
            size += (name.len() + 1 + value.len()) as u32;
        }
        let id = self.ids.len() as u32;
        self.ids.push((at, set.len() as u32, size));
        self.known.insert(set.to_vec(), id);
        Ok(id)
    }

    /// Writes the table; returns the position of its header, or `u64::MAX` without xattrs.
    pub fn write(self, o: &mut Output, c: &mut Compressor) -> Result<u64> {
        if self.ids.is_empty() {
            return Ok(u64::MAX);
        }
        let pairs_start = o.pos();
        let (bytes, _) = self.pairs.finish(c)?;
        o.write(&bytes)?;
        let mut w = MetaWriter::default();
        for &(reference, count, size) in &self.ids {
            let mut e = Vec::with_capacity(16);
            e.extend(reference.to_le_bytes());
            e.extend(count.to_le_bytes());
            e.extend(size.to_le_bytes());
            w.put(c, &e)?;
        }
        let ids_start = o.pos();
        let (bytes, starts) = w.finish(c)?;
        debug_assert_eq!(starts.len(), (self.ids.len() * 16).div_ceil(BLOCK));
        o.write(&bytes)?;
        let header = o.pos();
        o.write(&pairs_start.to_le_bytes())?;
        o.write(&(self.ids.len() as u32).to_le_bytes())?;
        o.write(&0u32.to_le_bytes())?;
        for s in starts {
            o.write(&(ids_start + s).to_le_bytes())?;
        }
        Ok(header)
    }
}
