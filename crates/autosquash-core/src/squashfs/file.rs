//! File data: any byte range is served from the blocks it covers, each fetched as a compressed
//! range, decompressed to its exact expected length and cached. Adjacent uncached blocks are
//! fetched in one ranged read; a lone block goes through the cache's single-flight.

use super::inode::{Body, FileBody, Inode};
use super::{FileKind, Image};
use crate::block_cache::{Key, Kind, Value};
use crate::error::{Error, Result};
use bytes::{Bytes, BytesMut};
use std::ops::Range;

/// Entries of a directory looked at for [`Image::neighbourhood`].
const MAX_NEIGHBOURS: usize = 4096;

/// Shared source of zeros for sparse blocks (a block is at most 1 MiB).
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// Where one block of a file comes from.
#[derive(Debug, Clone, Copy)]
struct Block {
    kind: Kind,
    pos: u64,
    stored: u32,
    raw: bool,
    /// Exact decompressed length (for fragments: the length of the whole fragment block is
    /// unknown, so this is the minimum it must have).
    len: usize,
    /// Whether the block is kept in the memory cache once decoded. A data block the read
    /// uses whole is not: the kernel's page cache keeps those bytes, and caching them again
    /// would only push out metadata and fragments, which serve many requests.
    keep: bool,
}

impl Image {
    /// Up to `size` bytes of `inode` from `offset`; short only at the end of the file.
    pub async fn read(&self, inode: &Inode, offset: u64, size: usize) -> Result<Bytes> {
        let Body::File(file) = &inode.body else {
            return Err(Error::WrongType("a regular file"));
        };
        let end = offset.saturating_add(size as u64).min(inode.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let bs = u64::from(self.sb.block_size);
        let (first, last) = (offset / bs, (end - 1) / bs);
        let mut blocks = Vec::with_capacity(usize::try_from(last - first + 1).unwrap_or(0));
        for i in first..=last {
            let mut block = self.locate(inode, file, i)?;
            let whole = offset <= i * bs && end >= (i * bs + block.len as u64);
            block.keep = block.kind != Kind::Data || !whole;
            blocks.push(block);
        }
        if let Some(range) = self.plain_range(&blocks, offset - first * bs, end - first * bs) {
            return self.fetch_range(range.start, range.end - range.start).await;
        }
        let data = self.fetch_blocks(&blocks).await?;
        // The part of each block that falls inside offset..end. Every block's length was
        // checked against what this inode expects, so the range is in bounds; it is checked
        // again rather than trusted, since a slice out of bounds would panic.
        let piece = |n: u64, block: &Block, data: &Bytes| -> Result<Bytes> {
            let block_start = (first + n) * bs;
            let from = offset.saturating_sub(block_start);
            let to = (end - block_start).min(bs);
            let base = match block.kind {
                Kind::Fragment => u64::from(self.fragment_offset(file)),
                _ => 0,
            };
            let range = (base + from) as usize..(base + to) as usize;
            if range.end > data.len() {
                return Err(Error::corrupt(format!(
                    "block at {} holds {} bytes, {} needed",
                    block.pos,
                    data.len(),
                    range.end
                )));
            }
            Ok(data.slice(range))
        };
        if let ([block], [data]) = (&blocks[..], &data[..]) {
            return piece(0, block, data);
        }
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for (n, (block, data)) in blocks.iter().zip(&data).enumerate() {
            out.extend_from_slice(&piece(n as u64, block, data)?);
        }
        Ok(out.freeze())
    }

    /// Where `from..to` of `blocks` (offsets from the first block's start) lies in the image,
    /// if they are raw data blocks stored one after another and none is cached: then the file's
    /// bytes are the image's bytes, read as one range without decoding or copying.
    fn plain_range(&self, blocks: &[Block], from: u64, to: u64) -> Option<Range<u64>> {
        let first = blocks.first()?;
        let mut pos = first.pos;
        for b in blocks {
            let plain = b.kind == Kind::Data && b.raw && b.stored as usize == b.len;
            if !plain || b.pos != pos || self.cache.get(&self.key(b)).is_some() {
                return None;
            }
            pos += u64::from(b.stored);
        }
        Some(first.pos + from..first.pos + to)
    }

    fn fragment_offset(&self, file: &FileBody) -> u32 {
        file.fragment.map_or(0, |(_, offset)| offset)
    }

    /// Where block `i` of a file is stored and how long it must decompress to.
    fn locate(&self, inode: &Inode, file: &FileBody, i: u64) -> Result<Block> {
        let bs = u64::from(self.sb.block_size);
        let remaining = (inode.size - i * bs).min(bs) as usize;
        if let Some(index) = usize::try_from(i).ok().filter(|&i| i < file.words.len()) {
            let (pos, stored, raw) = file.block(index);
            return Ok(Block {
                kind: Kind::Data,
                pos,
                stored,
                raw,
                len: remaining,
                keep: true,
            });
        }
        let (frag, offset) = file
            .fragment
            .ok_or_else(|| Error::corrupt("file has more data than blocks"))?;
        let (pos, word) = self.fragment_block(frag)?;
        Ok(Block {
            kind: Kind::Fragment,
            pos,
            stored: word & 0x00ff_ffff,
            raw: word & (1 << 24) != 0,
            len: offset as usize + remaining,
            keep: true,
        })
    }

    /// Position and size word of fragment block `frag`, checked to lie inside the image.
    fn fragment_block(&self, frag: u32) -> Result<(u64, u32)> {
        let mut entry = self.table_entry(self.sb.frag_table, 16, u64::from(frag))?;
        let pos = entry.u64()?;
        let word = entry.u32()?;
        let stored = word & 0x00ff_ffff;
        if word & !0x01ff_ffff != 0 || stored == 0 || stored > self.sb.block_size {
            return Err(Error::corrupt(format!(
                "fragment {frag} size word {word:#x}"
            )));
        }
        if pos
            .checked_add(u64::from(stored))
            .is_none_or(|e| e > self.sb.bytes_used)
        {
            return Err(Error::corrupt(format!(
                "fragment {frag} lies outside the image"
            )));
        }
        Ok((pos, word))
    }

    /// The stored bytes of a file's data: its blocks and its fragment block (either may be
    /// absent). Positions were checked against the image when the inode was parsed.
    fn stored_spans(&self, inode: &Inode) -> Result<[Option<Range<u64>>; 2]> {
        let Body::File(file) = &inode.body else {
            return Ok([None, None]);
        };
        let blocks = match (file.checkpoints.first(), file.words.len().checked_sub(1)) {
            (Some(&start), Some(last)) => {
                let (pos, stored, _) = file.block(last);
                Some(start..pos.saturating_add(u64::from(stored)))
            }
            _ => None,
        };
        let fragment = match file.fragment {
            Some((frag, _)) => {
                let (pos, word) = self.fragment_block(frag)?;
                Some(pos..pos + u64::from(word & 0x00ff_ffff))
            }
            None => None,
        };
        Ok([blocks, fragment])
    }

    /// Where the data of `inode`'s neighbours lies: the stored bytes of the files of the
    /// directory it was found in (mksquashfs writes a directory's files one after another,
    /// their tails packed into shared fragment blocks), at most `max` bytes around the
    /// file's own data. `None` if nothing is known.
    pub fn neighbourhood(&self, inode: &Inode, max: u64) -> Result<Option<Range<u64>>> {
        let Some(own) = self.stored_spans(inode)?.into_iter().flatten().next() else {
            return Ok(None);
        };
        let Some(parent) = self.parent(inode.ino).filter(|&p| p != inode.ino) else {
            return Ok(None);
        };
        let dir = self.inode(parent)?;
        let (lo, hi) = (
            own.start.saturating_sub(max / 2),
            own.end.saturating_add(max / 2),
        );
        let mut span = own;
        // A directory of many thousand entries: the first few thousand are neighbours enough.
        for entry in self.listing(&dir)?.iter().take(MAX_NEIGHBOURS) {
            if entry.kind != FileKind::File {
                continue;
            }
            let file = self.entry_inode(&dir, entry)?;
            for s in self.stored_spans(&file)?.into_iter().flatten() {
                if s.start >= lo && s.end <= hi {
                    span = span.start.min(s.start)..span.end.max(s.end);
                }
            }
        }
        Ok(Some(span))
    }

    /// The decompressed contents of `blocks`, in order. Whether a block comes from the
    /// cache, from a lone fetch or from a run, it passes [`Image::checked`].
    async fn fetch_blocks(&self, blocks: &[Block]) -> Result<Vec<Bytes>> {
        let mut out: Vec<Option<Bytes>> = Vec::with_capacity(blocks.len());
        for b in blocks {
            out.push(match b.stored {
                0 => Some(zeros(b.len)?),
                _ => match self.cache.get(&self.key(b)) {
                    Some(value) => Some(self.checked(b, value)?),
                    None => None,
                },
            });
        }
        // Runs of missing blocks that are contiguous in the image: one read each.
        let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
        for i in (0..blocks.len()).filter(|&i| out[i].is_none()) {
            match runs.last_mut() {
                Some(run)
                    if run.end == i && {
                        let prev = &blocks[i - 1];
                        prev.pos + u64::from(prev.stored) == blocks[i].pos
                    } =>
                {
                    run.end = i + 1
                }
                _ => runs.push(i..i + 1),
            }
        }
        let fetched = futures::future::try_join_all(
            runs.iter().map(|run| self.fetch_run(&blocks[run.clone()])),
        )
        .await?;
        for (run, data) in runs.into_iter().zip(fetched) {
            for (slot, block) in out[run].iter_mut().zip(data) {
                *slot = Some(block);
            }
        }
        out.into_iter()
            .map(|b| b.ok_or_else(|| Error::corrupt("block missing after fetch")))
            .collect()
    }

    /// The cache key of a block: its position and its stored size word, so that two inodes
    /// describing one position differently never share a decoded value.
    fn key(&self, block: &Block) -> Key {
        Key {
            image: self.id,
            kind: block.kind,
            pos: block.pos,
            word: block.stored | if block.raw { 1 << 24 } else { 0 },
        }
    }

    async fn fetch_run(&self, run: &[Block]) -> Result<Vec<Bytes>> {
        if let [block] = run
            && block.keep
        {
            let value = self
                .cache
                .get_or_insert_async(&self.key(block), async {
                    let raw = self.fetch_range(block.pos, u64::from(block.stored)).await?;
                    self.decode(block, raw).map(Value::Block)
                })
                .await?;
            return self.checked(block, value).map(|d| vec![d]);
        }
        let start = run[0].pos;
        let total: u64 = run.iter().map(|b| u64::from(b.stored)).sum();
        let raw = self.fetch_range(start, total).await?;
        run.iter()
            .map(|block| {
                let from = (block.pos - start) as usize;
                let stored = from..from + block.stored as usize;
                if stored.end > raw.len() {
                    return Err(Error::corrupt("block run shorter than its blocks"));
                }
                let data = self.decode(block, raw.slice(stored))?;
                if block.keep {
                    self.cache
                        .insert(self.key(block), Value::Block(data.clone()));
                }
                self.checked(block, Value::Block(data))
            })
            .collect()
    }

    async fn fetch_range(&self, pos: u64, len: u64) -> Result<Bytes> {
        let end = pos.saturating_add(len);
        if end > self.sb.bytes_used {
            return Err(Error::corrupt(format!(
                "data block at {pos} lies outside the image"
            )));
        }
        let data = self.store.read(&self.meta, pos..end).await?;
        if data.len() as u64 != len {
            return Err(Error::store(&self.meta.key, "store returned a short read"));
        }
        Ok(data)
    }

    /// Decompresses one block (at most a block size: the length this inode expects is
    /// checked by [`Image::checked`], which every path goes through).
    fn decode(&self, block: &Block, stored: Bytes) -> Result<Bytes> {
        // A raw block is its stored bytes: no copy, unless it is kept in the cache, where a
        // slice would keep the whole buffer of its run alive, unaccounted.
        if block.raw {
            return Ok(match block.keep {
                true => Bytes::copy_from_slice(&stored),
                false => stored,
            });
        }
        let bs = self.sb.block_size as usize;
        Ok(Bytes::from(self.codec.decompress(&stored, bs)?))
    }

    /// The one check between a decoded block and its use: the block must have the length this
    /// inode expects of it (exact for a data block; for a fragment block, at least the end of
    /// this file's tail). Cached blocks are checked too: another inode may have put a block of
    /// another length under the same key.
    fn checked(&self, block: &Block, value: Value) -> Result<Bytes> {
        let Value::Block(data) = value else {
            return Err(Error::corrupt("block cache entry of the wrong kind"));
        };
        let ok = match block.kind {
            Kind::Fragment => data.len() >= block.len,
            _ => data.len() == block.len,
        };
        if !ok {
            return Err(Error::corrupt(format!(
                "block at {} decompressed to {} bytes, expected {}",
                block.pos,
                data.len(),
                block.len
            )));
        }
        Ok(data)
    }
}

/// `len` zeros for a sparse block (at most a block size, which is at most 1 MiB).
fn zeros(len: usize) -> Result<Bytes> {
    ZEROS
        .get(..len)
        .map(Bytes::from_static)
        .ok_or_else(|| Error::corrupt(format!("sparse block of {len} bytes")))
}
