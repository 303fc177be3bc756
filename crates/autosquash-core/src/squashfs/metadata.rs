//! Metadata blocks: the 8 KiB compressed units holding inodes, directories and lookup tables.
//!
//! All of them live in the image's tail, which is held in memory (compressed) from open on;
//! a block is decompressed on first use and kept in the shared cache. A [`MetaCursor`] reads a
//! structure that may span several consecutive blocks.

use super::Image;
use super::le::Le;
use crate::block_cache::{Key, Kind, Value};
use crate::error::{Error, Result};
use bytes::Bytes;

pub(crate) const BLOCK_SIZE: usize = 8192;

/// The compressed tail of an image: bytes `start..start + bytes.len()` of the object.
pub(crate) struct Tables {
    pub start: u64,
    pub bytes: Bytes,
}

impl Tables {
    /// `len` bytes at absolute position `pos`, which must lie inside the tail.
    pub fn slice(&self, pos: u64, len: usize) -> Result<&[u8]> {
        let end = self.start + self.bytes.len() as u64;
        let rel = pos
            .checked_sub(self.start)
            .filter(|_| pos.saturating_add(len as u64) <= end)
            .ok_or_else(|| Error::corrupt(format!("metadata at {pos} is outside the tables")))?;
        Ok(&self.bytes[rel as usize..rel as usize + len])
    }
}

impl Image {
    /// The decompressed metadata block at absolute `pos` and the position of the next block.
    pub(crate) fn metadata_block(&self, pos: u64) -> Result<(Bytes, u64)> {
        let header = u16::from_le_bytes(
            self.tables
                .slice(pos, 2)?
                .try_into()
                .map_err(|_| Error::corrupt("metadata header"))?,
        );
        let stored = usize::from(header & 0x7fff);
        if stored == 0 || stored > BLOCK_SIZE {
            return Err(Error::corrupt(format!(
                "metadata block at {pos} claims {stored} stored bytes"
            )));
        }
        let next = pos + 2 + stored as u64;
        let key = Key {
            image: self.id,
            kind: Kind::Metadata,
            pos,
            word: 0,
        };
        let value = self.cache.get_or_insert_with(&key, || {
            let raw = self.tables.slice(pos + 2, stored)?;
            let data = if header & 0x8000 != 0 {
                raw.to_vec()
            } else {
                self.codec.decompress(raw, BLOCK_SIZE)?
            };
            if data.is_empty() {
                return Err(Error::corrupt(format!("metadata block at {pos} is empty")));
            }
            Ok::<_, Error>(Value::Block(Bytes::from(data)))
        })?;
        match value {
            Value::Block(block) => Ok((block, next)),
            _ => Err(Error::corrupt("metadata cache entry of the wrong kind")),
        }
    }

    /// A cursor at `offset` inside the metadata block at absolute `block_pos`.
    pub(crate) fn cursor(&self, block_pos: u64, offset: usize) -> Result<MetaCursor<'_>> {
        let (block, next) = self.metadata_block(block_pos)?;
        if offset > block.len() {
            return Err(Error::corrupt(format!(
                "offset {offset} is past the end of the metadata block at {block_pos}"
            )));
        }
        Ok(MetaCursor {
            image: self,
            block,
            offset,
            next,
        })
    }

    /// Reads entry `index` of a lookup table (ids, fragments, xattr ids) made of `entry_size`
    /// entries in metadata blocks, whose block positions are listed at `index_pos`.
    pub(crate) fn table_entry(
        &self,
        index_pos: u64,
        entry_size: usize,
        index: u64,
    ) -> Result<MetaCursor<'_>> {
        let byte = index * entry_size as u64;
        let slot = index_pos + (byte / BLOCK_SIZE as u64) * 8;
        let pointer = u64::from_le_bytes(
            self.tables
                .slice(slot, 8)?
                .try_into()
                .map_err(|_| Error::corrupt("table index"))?,
        );
        self.cursor(pointer, (byte % BLOCK_SIZE as u64) as usize)
    }
}

/// Reads consecutive bytes of metadata, crossing block boundaries as needed. Cloning is cheap
/// (the block is shared), so a position can be kept and read from later.
#[derive(Clone)]
pub(crate) struct MetaCursor<'a> {
    image: &'a Image,
    block: Bytes,
    offset: usize,
    next: u64,
}

impl MetaCursor<'_> {
    /// Fills `out` completely.
    pub fn read(&mut self, out: &mut [u8]) -> Result<()> {
        let mut done = 0;
        while done < out.len() {
            if self.offset == self.block.len() {
                let (block, next) = self.image.metadata_block(self.next)?;
                self.block = block;
                self.next = next;
                self.offset = 0;
            }
            let n = (self.block.len() - self.offset).min(out.len() - done);
            out[done..done + n].copy_from_slice(&self.block[self.offset..self.offset + n]);
            done += n;
            self.offset += n;
        }
        Ok(())
    }

    /// Moves `n` bytes forward without copying them.
    pub fn skip(&mut self, mut n: usize) -> Result<()> {
        while n > 0 {
            if self.offset == self.block.len() {
                let (block, next) = self.image.metadata_block(self.next)?;
                self.block = block;
                self.next = next;
                self.offset = 0;
            }
            let step = (self.block.len() - self.offset).min(n);
            self.offset += step;
            n -= step;
        }
        Ok(())
    }

    /// Reads `n` bytes into a new vector; `n` must already be bounded by the caller.
    pub fn bytes(&mut self, n: usize) -> Result<Vec<u8>> {
        let mut out = vec![0; n];
        self.read(&mut out)?;
        Ok(out)
    }

    /// Reads a fixed-size structure and returns a cursor over it.
    pub fn fixed<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0; N];
        self.read(&mut out)?;
        Ok(out)
    }

    pub fn u16(&mut self) -> Result<u16> {
        Le::new(&self.fixed::<2>()?).u16()
    }

    pub fn u32(&mut self) -> Result<u32> {
        Le::new(&self.fixed::<4>()?).u32()
    }

    pub fn u64(&mut self) -> Result<u64> {
        Le::new(&self.fixed::<8>()?).u64()
    }
}
