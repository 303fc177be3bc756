//! A minimal reader for the metadata of images built by `mksquashfs`: the inode and directory
//! tables as streams mapped back to file positions, every inode and directory entry by path,
//! and copy-with-patch helpers that write a field in place.
//!
//! It only understands what `mksquashfs` writes for the fixture trees and panics on anything
//! unexpected, since a broken fixture must stop the test that built it.

use std::collections::HashMap;
use std::io::Read;

use flate2::read::ZlibDecoder;

use super::format::*;

/// One metadata block of a table: where its header is in the file and where its (uncompressed)
/// payload sits in the table's concatenated stream.
#[derive(Debug)]
struct MetaBlock {
    header_pos: usize,
    stream_start: usize,
    len: usize,
    compressed: bool,
}

/// A metadata table (inode or directory table) read as one stream, with the mapping back to file
/// positions so uncompressed blocks can be patched in place.
#[derive(Debug)]
pub(super) struct Meta {
    table_start: usize,
    pub(super) data: Vec<u8>,
    blocks: Vec<MetaBlock>,
}

impl Meta {
    /// Reads consecutive metadata blocks from `start` up to `end`.
    fn read(img: &[u8], start: usize, end: usize) -> Meta {
        let mut data = Vec::new();
        let mut blocks = Vec::new();
        let mut pos = start;
        while pos < end {
            let header = get16(img, pos);
            let size = usize::from(header & META_SIZE_MASK);
            let compressed = header & META_UNCOMPRESSED == 0;
            let payload = &img[pos + 2..pos + 2 + size];
            let stream_start = data.len();
            if compressed {
                ZlibDecoder::new(payload)
                    .read_to_end(&mut data)
                    .expect("metadata block inflates");
            } else {
                data.extend_from_slice(payload);
            }
            let len = data.len() - stream_start;
            assert!(len <= META_BLOCK_MAX, "metadata block at {pos} too long");
            blocks.push(MetaBlock {
                header_pos: pos,
                stream_start,
                len,
                compressed,
            });
            pos += 2 + size;
        }
        assert_eq!(pos, end, "metadata table does not end at {end}");
        Meta {
            table_start: start,
            data,
            blocks,
        }
    }

    /// Stream offset of a squashfs reference (`block start << 16 | offset`).
    fn offset_of(&self, reference: u64) -> usize {
        let block = usize_of(reference >> 16);
        let offset = usize_of(reference & 0xffff);
        let b = self
            .blocks
            .iter()
            .find(|b| b.header_pos - self.table_start == block)
            .unwrap_or_else(|| panic!("no metadata block at relative offset {block}"));
        b.stream_start + offset
    }

    fn block_of(&self, stream_off: usize) -> &MetaBlock {
        self.blocks
            .iter()
            .find(|b| b.stream_start <= stream_off && stream_off < b.stream_start + b.len)
            .unwrap_or_else(|| panic!("stream offset {stream_off} outside the table"))
    }

    /// The squashfs reference of a stream offset.
    fn reference_of(&self, stream_off: usize) -> u64 {
        let b = self.block_of(stream_off);
        (((b.header_pos - self.table_start) as u64) << 16) | (stream_off - b.stream_start) as u64
    }

    /// File position of a stream byte (only for uncompressed blocks).
    pub(super) fn file_pos(&self, stream_off: usize) -> usize {
        let b = self.block_of(stream_off);
        assert!(!b.compressed, "cannot patch a compressed metadata block");
        b.header_pos + 2 + (stream_off - b.stream_start)
    }

    /// Writes `bytes` at a stream offset, byte by byte (fields may straddle two blocks).
    pub(super) fn patch(&self, img: &mut [u8], stream_off: usize, bytes: &[u8]) {
        for (i, &v) in bytes.iter().enumerate() {
            img[self.file_pos(stream_off + i)] = v;
        }
    }
}

#[derive(Debug)]
pub(super) struct Inode {
    /// Offset in the inode table stream.
    pub(super) pos: usize,
    pub(super) kind: u16,
    number: u32,
    pub(super) reference: u64,
}

#[derive(Debug)]
pub(super) struct Entry {
    /// Path of the directory holding the entry (`""` for the root).
    dir: String,
    pub(super) name: String,
    /// Offsets in the directory table stream.
    pub(super) header_pos: usize,
    pub(super) entry_pos: usize,
}

/// A parsed image: superblock fields are read from `bytes` directly.
#[derive(Debug)]
pub(super) struct Image {
    pub(super) bytes: Vec<u8>,
    pub(super) inode_meta: Meta,
    pub(super) dir_meta: Meta,
    pub(super) inodes: Vec<Inode>,
    paths: HashMap<String, usize>,
    entries: Vec<Entry>,
}

fn block_count(file_size: u64, frag: u32, block_size: u32) -> usize {
    let bs = u64::from(block_size);
    let n = if frag == NO_FRAGMENT {
        file_size.div_ceil(bs)
    } else {
        file_size / bs
    };
    usize_of(n)
}

fn parse_inodes(meta: &Meta, count: u32, block_size: u32) -> Vec<Inode> {
    let d = &meta.data;
    let mut pos = 0;
    let mut out = Vec::new();
    for _ in 0..count {
        let kind = get16(d, pos + I_TYPE);
        let len = match kind {
            T_DIR => 32,
            T_LDIR => {
                let mut len = 40;
                for _ in 0..get16(d, pos + LDIR_INDEX_COUNT) {
                    len += 12 + get32(d, pos + len + 8) as usize + 1;
                }
                len
            }
            T_FILE => {
                let n = block_count(
                    u64::from(get32(d, pos + FILE_SIZE)),
                    get32(d, pos + FILE_FRAG),
                    block_size,
                );
                FILE_BLOCKS + 4 * n
            }
            T_LFILE => {
                let n = block_count(
                    get64(d, pos + LFILE_SIZE),
                    get32(d, pos + LFILE_FRAG),
                    block_size,
                );
                LFILE_BLOCKS + 4 * n
            }
            T_SYMLINK => 24 + get32(d, pos + SYMLINK_SIZE) as usize,
            T_LSYMLINK => 28 + get32(d, pos + SYMLINK_SIZE) as usize,
            T_BLKDEV | T_CHRDEV => 24,
            T_LBLKDEV | T_LCHRDEV => 28,
            T_FIFO | T_SOCKET => 20,
            T_LFIFO | T_LSOCKET => 24,
            other => panic!("unknown inode type {other} at stream offset {pos}"),
        };
        out.push(Inode {
            pos,
            kind,
            number: get32(d, pos + I_NUMBER),
            reference: meta.reference_of(pos),
        });
        pos += len;
    }
    assert_eq!(pos, d.len(), "inode table has trailing bytes");
    out
}

impl Image {
    pub(super) fn parse(bytes: Vec<u8>) -> Image {
        assert_eq!(&bytes[..4], MAGIC, "not a squashfs image");
        let sb64 = |at| usize_of(get64(&bytes, at));
        let inode_table = sb64(SB_INODE_TABLE);
        let dir_table = sb64(SB_DIR_TABLE);
        // The directory table ends where the next table's first metadata block (or index) starts.
        let mut next = vec![
            sb64(SB_ID_TABLE),
            usize_of(get64(&bytes, sb64(SB_ID_TABLE))),
        ];
        for at in [SB_FRAG_TABLE, SB_EXPORT_TABLE, SB_XATTR_TABLE] {
            let t = get64(&bytes, at);
            if t != NO_TABLE {
                next.push(usize_of(t));
                if at != SB_FRAG_TABLE || get32(&bytes, SB_FRAG_COUNT) > 0 {
                    next.push(usize_of(get64(&bytes, usize_of(t))));
                }
            }
        }
        let dir_end = next
            .into_iter()
            .filter(|&p| p >= dir_table)
            .min()
            .expect("a table follows the directory table");
        let inode_meta = Meta::read(&bytes, inode_table, dir_table);
        let dir_meta = Meta::read(&bytes, dir_table, dir_end);
        let inodes = parse_inodes(
            &inode_meta,
            get32(&bytes, SB_INODE_COUNT),
            get32(&bytes, SB_BLOCK_SIZE),
        );
        let by_ref: HashMap<u64, usize> = inodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.reference, i))
            .collect();

        let mut paths = HashMap::new();
        let mut entries = Vec::new();
        let root = by_ref[&get64(&bytes, SB_ROOT_INODE)];
        let mut todo = vec![(String::new(), root)];
        while let Some((path, idx)) = todo.pop() {
            paths.insert(path.clone(), idx);
            let ino = &inodes[idx];
            let d = &inode_meta.data;
            let (start, offset, size) = match ino.kind {
                T_DIR => (
                    get32(d, ino.pos + DIR_START),
                    get16(d, ino.pos + DIR_OFFSET),
                    u32::from(get16(d, ino.pos + DIR_FILE_SIZE)),
                ),
                T_LDIR => (
                    get32(d, ino.pos + LDIR_START),
                    get16(d, ino.pos + LDIR_OFFSET),
                    get32(d, ino.pos + LDIR_FILE_SIZE),
                ),
                _ => continue,
            };
            if size <= 3 {
                continue;
            }
            let mut pos = dir_meta.offset_of((u64::from(start) << 16) | u64::from(offset));
            let end = pos + size as usize - 3;
            let dd = &dir_meta.data;
            while pos < end {
                let header_pos = pos;
                let count = get32(dd, pos) as usize + 1;
                let block = u64::from(get32(dd, pos + 4));
                pos += DIR_HEADER_LEN;
                for _ in 0..count {
                    let name_len = usize::from(get16(dd, pos + DE_NAME_SIZE)) + 1;
                    let name_at = pos + DIR_ENTRY_LEN;
                    let name = String::from_utf8(dd[name_at..name_at + name_len].to_vec())
                        .expect("fixture names are UTF-8");
                    let target = (block << 16) | u64::from(get16(dd, pos + DE_OFFSET));
                    let child = if path.is_empty() {
                        name.clone()
                    } else {
                        format!("{path}/{name}")
                    };
                    todo.push((child, by_ref[&target]));
                    entries.push(Entry {
                        dir: path.clone(),
                        name,
                        header_pos,
                        entry_pos: pos,
                    });
                    pos = name_at + name_len;
                }
            }
            assert_eq!(pos, end, "directory listing of {path:?} overruns");
        }
        Image {
            bytes,
            inode_meta,
            dir_meta,
            inodes,
            paths,
            entries,
        }
    }

    pub(super) fn inode(&self, path: &str) -> &Inode {
        let idx = self
            .paths
            .get(path)
            .unwrap_or_else(|| panic!("no {path:?} in the image"));
        &self.inodes[*idx]
    }

    pub(super) fn entry(&self, dir: &str, name: &str) -> &Entry {
        self.entries
            .iter()
            .find(|e| e.dir == dir && e.name == name)
            .unwrap_or_else(|| panic!("no entry {name:?} in {dir:?}"))
    }

    /// First directory header of a directory's listing.
    pub(super) fn first_header(&self, dir: &str) -> usize {
        self.entries
            .iter()
            .filter(|e| e.dir == dir)
            .map(|e| e.header_pos)
            .min()
            .unwrap_or_else(|| panic!("{dir:?} has no entries"))
    }

    pub(super) fn sb64(&self, at: usize) -> u64 {
        get64(&self.bytes, at)
    }

    /// Copy of the image with `f` applied.
    pub(super) fn with(&self, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut b = self.bytes.clone();
        f(&mut b);
        b
    }

    /// Copy of the image with `bytes` written into the inode of `path` at field offset `off`.
    pub(super) fn with_inode(&self, path: &str, off: usize, bytes: &[u8]) -> Vec<u8> {
        let pos = self.inode(path).pos + off;
        self.with(|b| self.inode_meta.patch(b, pos, bytes))
    }

    /// Copy of the image with `bytes` written at a directory table stream offset.
    pub(super) fn with_dir(&self, stream_off: usize, bytes: &[u8]) -> Vec<u8> {
        self.with(|b| self.dir_meta.patch(b, stream_off, bytes))
    }

    /// Copy of the image where entry `dir/name` points at the inode of `target` (a directory).
    pub(super) fn with_entry_to(&self, dir: &str, name: &str, target: &str) -> Vec<u8> {
        let e = self.entry(dir, name);
        let t = self.inode(target);
        let header_block = get32(&self.dir_meta.data, e.header_pos + 4);
        let header_number = get32(&self.dir_meta.data, e.header_pos + 8);
        assert_eq!(
            u64::from(header_block),
            t.reference >> 16,
            "fixture: {target:?} must share the header's inode block"
        );
        let delta = i16::try_from(i64::from(t.number) - i64::from(header_number))
            .expect("inode number delta fits");
        assert!(t.kind == T_DIR || t.kind == T_LDIR);
        self.with(|b| {
            let m = &self.dir_meta;
            m.patch(
                b,
                e.entry_pos + DE_OFFSET,
                &((t.reference & 0xffff) as u16).to_le_bytes(),
            );
            m.patch(b, e.entry_pos + DE_INODE_OFFSET, &delta.to_le_bytes());
            m.patch(b, e.entry_pos + DE_TYPE, &T_DIR.to_le_bytes());
        })
    }

    /// The fragment table's entries (16 bytes each: start u64, size u32, unused u32), read from
    /// its metadata blocks, which sit just before the fragment index the superblock points at.
    pub(super) fn frag_entries(&self) -> Meta {
        assert!(
            get32(&self.bytes, SB_FRAG_COUNT) > 0,
            "fixture has fragments"
        );
        let index = usize_of(self.sb64(SB_FRAG_TABLE));
        let first = usize_of(get64(&self.bytes, index));
        Meta::read(&self.bytes, first, index)
    }
}
