//! Metadata blocks: 8 KiB of inodes, directories or table entries, each compressed on its
//! own behind a 16-bit header (bit 15: stored raw).

use super::compress::Compressor;
use anyhow::Result;

pub const BLOCK: usize = 8192;

/// One table's metadata blocks, kept in memory (compressed) until the table is placed.
#[derive(Default)]
pub struct MetaWriter {
    /// Finished blocks, headers included.
    done: Vec<u8>,
    /// Start of each finished block in `done`.
    starts: Vec<u64>,
    cur: Vec<u8>,
}

/// A position in a table: the start of its metadata block (relative to the table) and the
/// offset inside the block's data; squashfs references are `block << 16 | offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    pub block: u64,
    pub offset: u16,
}

impl Pos {
    pub fn reference(self) -> u64 {
        (self.block << 16) | u64::from(self.offset)
    }
}

impl MetaWriter {
    /// Where the next byte goes.
    pub fn pos(&self) -> Pos {
        Pos {
            block: self.done.len() as u64,
            offset: self.cur.len() as u16,
        }
    }

    pub fn put(&mut self, c: &mut Compressor, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let n = bytes.len().min(BLOCK - self.cur.len());
            self.cur.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.cur.len() == BLOCK {
                self.flush(c)?;
            }
        }
        Ok(())
    }

    fn flush(&mut self, c: &mut Compressor) -> Result<()> {
        self.starts.push(self.done.len() as u64);
        match c.compress(&self.cur)? {
            Some(packed) => {
                self.done
                    .extend_from_slice(&(packed.len() as u16).to_le_bytes());
                self.done.extend_from_slice(&packed);
            }
            None => {
                self.done
                    .extend_from_slice(&(self.cur.len() as u16 | 0x8000).to_le_bytes());
                self.done.extend_from_slice(&self.cur);
            }
        }
        self.cur.clear();
        Ok(())
    }

    /// The table's bytes and the start of each of its blocks (relative to the table).
    pub fn finish(mut self, c: &mut Compressor) -> Result<(Vec<u8>, Vec<u64>)> {
        if !self.cur.is_empty() {
            self.flush(c)?;
        }
        Ok((self.done, self.starts))
    }
}
