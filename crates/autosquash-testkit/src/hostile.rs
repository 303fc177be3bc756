//! Hostile squashfs images, for testing that the engine fails cleanly (an error, never a panic,
//! a hang or an unbounded allocation) on anything an attacker can put in a bucket.
//!
//! [`crafted`] builds tiny trees, packs them with `mksquashfs` (mostly uncompressed, so metadata
//! can be found and patched in place), and patches one structure per image: superblock fields,
//! metadata block headers, inodes, directory listings, fragment entries, data blocks.
//! [`mutations`] derives seeded random corruptions of any image.
//!
//! The small squashfs 4.0 parser below only understands what `mksquashfs` writes for those trees;
//! it panics on anything unexpected, since a broken fixture must stop the test that built it.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

use flate2::read::ZlibDecoder;

/// One hostile image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hostile {
    /// Short unique name, e.g. `"sb-bytes-used-too-big"`.
    pub name: String,
    /// The whole image file.
    pub bytes: Vec<u8>,
    /// What is wrong with it.
    pub what: &'static str,
}

// ---------------------------------------------------------------------------------------------
// On-disk format constants (squashfs 4.0, little endian).

const SB_LEN: usize = 96;
const SB_MAGIC: usize = 0;
const SB_INODE_COUNT: usize = 4;
const SB_BLOCK_SIZE: usize = 12;
const SB_FRAG_COUNT: usize = 16;
const SB_COMPRESSOR: usize = 20;
const SB_BLOCK_LOG: usize = 22;
const SB_ID_COUNT: usize = 26;
const SB_VERSION_MAJOR: usize = 28;
const SB_VERSION_MINOR: usize = 30;
const SB_ROOT_INODE: usize = 32;
const SB_BYTES_USED: usize = 40;
const SB_ID_TABLE: usize = 48;
const SB_XATTR_TABLE: usize = 56;
const SB_INODE_TABLE: usize = 64;
const SB_DIR_TABLE: usize = 72;
const SB_FRAG_TABLE: usize = 80;
const SB_EXPORT_TABLE: usize = 88;

const MAGIC: &[u8; 4] = b"hsqs";
const NO_TABLE: u64 = u64::MAX;
const META_UNCOMPRESSED: u16 = 0x8000;
const META_SIZE_MASK: u16 = 0x7fff;
const META_BLOCK_MAX: usize = 8192;
const NO_FRAGMENT: u32 = 0xffff_ffff;
const MIB: usize = 1024 * 1024;

const T_DIR: u16 = 1;
const T_FILE: u16 = 2;
const T_SYMLINK: u16 = 3;
const T_BLKDEV: u16 = 4;
const T_CHRDEV: u16 = 5;
const T_FIFO: u16 = 6;
const T_SOCKET: u16 = 7;
const T_LDIR: u16 = 8;
const T_LFILE: u16 = 9;
const T_LSYMLINK: u16 = 10;
const T_LBLKDEV: u16 = 11;
const T_LCHRDEV: u16 = 12;
const T_LFIFO: u16 = 13;
const T_LSOCKET: u16 = 14;

// Field offsets inside inodes (after the 16-byte common header).
const I_TYPE: usize = 0;
const I_UID: usize = 4;
const I_NUMBER: usize = 12;
const DIR_START: usize = 16;
const DIR_FILE_SIZE: usize = 24; // u16
const DIR_OFFSET: usize = 26; // u16
const LDIR_FILE_SIZE: usize = 20; // u32
const LDIR_START: usize = 24;
const LDIR_INDEX_COUNT: usize = 32; // u16
const LDIR_OFFSET: usize = 34; // u16
const FILE_BLOCKS_START: usize = 16;
const FILE_FRAG: usize = 20;
const FILE_FRAG_OFFSET: usize = 24;
const FILE_SIZE: usize = 28;
const FILE_BLOCKS: usize = 32;
const LFILE_SIZE: usize = 24; // u64
const LFILE_FRAG: usize = 44;
const LFILE_XATTR: usize = 52;
const LFILE_BLOCKS: usize = 56;
const SYMLINK_SIZE: usize = 20;

// Directory listing layout.
const DIR_HEADER_LEN: usize = 12;
const DIR_ENTRY_LEN: usize = 8;
const DE_OFFSET: usize = 0;
const DE_INODE_OFFSET: usize = 2;
const DE_TYPE: usize = 4;
const DE_NAME_SIZE: usize = 6;

// ---------------------------------------------------------------------------------------------
// Little-endian helpers.

fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}

fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn get64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn usize_of(v: u64) -> usize {
    usize::try_from(v).expect("offset fits in usize")
}

/// LSB-first bit writer for a deflate stream.
struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u64, bits: u32) {
        self.acc |= value << self.n;
        self.n += bits;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// A Huffman code, sent most significant bit first.
    fn code(&mut self, code: u64, len: u32) {
        for i in (0..len).rev() {
            self.put((code >> i) & 1, 1);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

/// A zlib stream inflating to `len` zero bytes, written directly: one dynamic-Huffman block whose
/// literal/length code has only literal 0 (`10`), end of block (`11`) and length 258 (`0`), and
/// whose distance code has distances 1 (`0`) and 2 (`1`). After one literal zero, every 258
/// further zeros cost two bits, so 64 MiB takes about 64 KiB.
fn zlib_zeros(len: usize) -> Vec<u8> {
    let mut w = Bits {
        out: vec![0x78, 0x9c],
        acc: 0,
        n: 0,
    };
    w.put(1, 1); // BFINAL
    w.put(2, 2); // BTYPE = dynamic
    w.put(286 - 257, 5); // HLIT: literal/length codes 0..=285
    w.put(2 - 1, 5); // HDIST: distance codes 0 and 1
    w.put(18 - 4, 4); // HCLEN: code length codes up to symbol 1 in the permuted order
    // Code length code lengths, in the order 16 17 18 0 8 7 9 6 10 5 11 4 12 3 13 2 14 1:
    // symbol 18 (zero run of 11..=138) gets 1 bit, symbols 1 and 2 get 2 bits.
    for len in [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 2] {
        w.put(len, 3);
    }
    // Canonical codes: 18 -> 0, 1 -> 10, 2 -> 11.
    let len1 = |w: &mut Bits| w.code(0b10, 2);
    let len2 = |w: &mut Bits| w.code(0b11, 2);
    let zeros = |w: &mut Bits, n: u64| {
        w.code(0, 1);
        w.put(n - 11, 7);
    };
    len2(&mut w); // literal 0
    zeros(&mut w, 138); // literals 1..=138
    zeros(&mut w, 117); // literals 139..=255
    len2(&mut w); // end of block
    zeros(&mut w, 28); // lengths 257..=284
    len1(&mut w); // length 258 (symbol 285)
    len1(&mut w); // distance 1
    len1(&mut w); // distance 2
    if len > 0 {
        w.code(0b10, 2); // literal 0
        let rest = len - 1;
        for _ in 0..rest / 258 {
            w.code(0, 1); // length 258
            w.code(0, 1); // distance 1
        }
        for _ in 0..rest % 258 {
            w.code(0b10, 2);
        }
    }
    w.code(0b11, 2); // end of block
    let mut out = w.finish();
    let adler = ((len % 65521) as u32) << 16 | 1;
    out.extend_from_slice(&adler.to_be_bytes());
    out
}

// ---------------------------------------------------------------------------------------------
// A minimal reader for the metadata of images built by `mksquashfs`.

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
struct Meta {
    table_start: usize,
    data: Vec<u8>,
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
    fn file_pos(&self, stream_off: usize) -> usize {
        let b = self.block_of(stream_off);
        assert!(!b.compressed, "cannot patch a compressed metadata block");
        b.header_pos + 2 + (stream_off - b.stream_start)
    }

    /// Writes `bytes` at a stream offset, byte by byte (fields may straddle two blocks).
    fn patch(&self, img: &mut [u8], stream_off: usize, bytes: &[u8]) {
        for (i, &v) in bytes.iter().enumerate() {
            img[self.file_pos(stream_off + i)] = v;
        }
    }
}

#[derive(Debug)]
struct Inode {
    /// Offset in the inode table stream.
    pos: usize,
    kind: u16,
    number: u32,
    reference: u64,
}

#[derive(Debug)]
struct Entry {
    /// Path of the directory holding the entry (`""` for the root).
    dir: String,
    name: String,
    /// Offsets in the directory table stream.
    header_pos: usize,
    entry_pos: usize,
}

/// A parsed image: superblock fields are read from `bytes` directly.
#[derive(Debug)]
struct Image {
    bytes: Vec<u8>,
    inode_meta: Meta,
    dir_meta: Meta,
    inodes: Vec<Inode>,
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
    fn parse(bytes: Vec<u8>) -> Image {
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

    fn inode(&self, path: &str) -> &Inode {
        let idx = self
            .paths
            .get(path)
            .unwrap_or_else(|| panic!("no {path:?} in the image"));
        &self.inodes[*idx]
    }

    fn entry(&self, dir: &str, name: &str) -> &Entry {
        self.entries
            .iter()
            .find(|e| e.dir == dir && e.name == name)
            .unwrap_or_else(|| panic!("no entry {name:?} in {dir:?}"))
    }

    /// First directory header of a directory's listing.
    fn first_header(&self, dir: &str) -> usize {
        self.entries
            .iter()
            .filter(|e| e.dir == dir)
            .map(|e| e.header_pos)
            .min()
            .unwrap_or_else(|| panic!("{dir:?} has no entries"))
    }

    fn sb64(&self, at: usize) -> u64 {
        get64(&self.bytes, at)
    }

    /// Copy of the image with `f` applied.
    fn with(&self, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut b = self.bytes.clone();
        f(&mut b);
        b
    }

    /// Copy of the image with `bytes` written into the inode of `path` at field offset `off`.
    fn with_inode(&self, path: &str, off: usize, bytes: &[u8]) -> Vec<u8> {
        let pos = self.inode(path).pos + off;
        self.with(|b| self.inode_meta.patch(b, pos, bytes))
    }

    /// Copy of the image with `bytes` written at a directory table stream offset.
    fn with_dir(&self, stream_off: usize, bytes: &[u8]) -> Vec<u8> {
        self.with(|b| self.dir_meta.patch(b, stream_off, bytes))
    }

    /// Copy of the image where entry `dir/name` points at the inode of `target` (a directory).
    fn with_entry_to(&self, dir: &str, name: &str, target: &str) -> Vec<u8> {
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
    fn frag_entries(&self) -> Meta {
        assert!(
            get32(&self.bytes, SB_FRAG_COUNT) > 0,
            "fixture has fragments"
        );
        let index = usize_of(self.sb64(SB_FRAG_TABLE));
        let first = usize_of(get64(&self.bytes, index));
        Meta::read(&self.bytes, first, index)
    }
}

// ---------------------------------------------------------------------------------------------
// Fixture trees.

/// Deterministic pseudo-random generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-ish value in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.byte()).collect()
}

fn text(len: usize) -> Vec<u8> {
    b"a hostile image is still a squashfs image\n"
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

fn fresh_dir(path: &Path) {
    if path.exists() {
        fs::remove_dir_all(path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
    }
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    chmod(path, 0o755);
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn write_file(path: &Path, data: &[u8]) {
    fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    chmod(path, 0o644);
}

fn make_dir(path: &Path) {
    fs::create_dir(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    chmod(path, 0o755);
}

/// The small tree most patches start from. With `-b 4096`:
/// `a.txt` (fragment only), `big.bin` (3 blocks and a fragment tail), `dir/sub/{f,g}.txt`,
/// `hard1`/`hard2` (one extended file inode, nlink 2), `link -> a.txt`.
fn build_small_tree(root: &Path) {
    fresh_dir(root);
    write_file(&root.join("a.txt"), &text(100));
    write_file(&root.join("big.bin"), &random_bytes(1, 3 * 4096 + 500));
    make_dir(&root.join("dir"));
    make_dir(&root.join("dir/sub"));
    write_file(&root.join("dir/sub/f.txt"), &text(30));
    write_file(&root.join("dir/sub/g.txt"), &text(40));
    write_file(&root.join("hard1"), &text(50));
    fs::hard_link(root.join("hard1"), root.join("hard2")).expect("hard link");
    symlink("a.txt", root.join("link")).expect("symlink");
}

/// One file of exactly one incompressible 128 KiB block (stored uncompressed in the image).
fn build_bomb_tree(root: &Path) {
    fresh_dir(root);
    write_file(&root.join("block.bin"), &random_bytes(2, 128 * 1024));
}

fn mksquashfs(src: &Path, out: &Path, args: &[&str]) -> Vec<u8> {
    if out.exists() {
        fs::remove_file(out).expect("remove old image");
    }
    let output = Command::new("mksquashfs")
        .arg(src)
        .arg(out)
        .args([
            "-noappend",
            "-no-progress",
            "-quiet",
            "-processors",
            "1",
            "-mkfs-time",
            "1600000000",
            "-all-time",
            "1600000000",
            "-all-root",
            "-no-xattrs",
        ])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run mksquashfs (is squashfs-tools installed?): {e}"));
    assert!(
        output.status.success(),
        "mksquashfs {} {args:?} failed: {}{}",
        out.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    fs::read(out).unwrap_or_else(|e| panic!("read {}: {e}", out.display()))
}

/// A 3000-deep chain `d/d/.../d`, described by a pseudo file so no path on the host exceeds
/// PATH_MAX (mksquashfs stops scanning a real tree at PATH_MAX).
fn build_deep(work: &Path, depth: usize) -> Vec<u8> {
    let empty = work.join("deep-src");
    fresh_dir(&empty);
    let mut pf = String::new();
    let mut path = String::new();
    for _ in 0..depth {
        if !path.is_empty() {
            path.push('/');
        }
        path.push('d');
        pf.push_str(&path);
        pf.push_str(" d 755 0 0\n");
    }
    let pf_path = work.join("deep.pf");
    fs::write(&pf_path, pf).expect("write pseudo file");
    let pf_arg = pf_path.to_str().expect("UTF-8 work path");
    mksquashfs(
        &empty,
        &work.join("deep.squash"),
        &["-comp", "gzip", "-pf", pf_arg],
    )
}

// ---------------------------------------------------------------------------------------------
// The crafted images.

struct Crafted {
    bases: HashMap<&'static str, Vec<u8>>,
    /// Each image with the base it was patched from (`None` for images built as they are).
    items: Vec<(Hostile, Option<&'static str>)>,
}

impl Crafted {
    fn add(&mut self, base: Option<&'static str>, name: &str, what: &'static str, bytes: Vec<u8>) {
        self.items.push((
            Hostile {
                name: name.to_string(),
                bytes,
                what,
            },
            base,
        ));
    }
}

const PLAIN: &str = "plain (uncompressed metadata and data, 4 KiB blocks)";
const GZIP: &str = "gzip (compressed metadata and data, 4 KiB blocks)";
const BOMB: &str = "bomb base (gzip data, uncompressed metadata, one 128 KiB block)";

/// Crafted hostile images. `work` is a scratch directory for mksquashfs runs.
/// Images found outside the tests (the fuzzer's crash inputs), kept as regression cases:
/// `(name, bytes)`. Each must give an error, not a panic.
pub fn found() -> Vec<(&'static str, &'static [u8])> {
    vec![(
        "crash-shared-block",
        include_bytes!("../fixtures/crash-shared-block.squash"),
    )]
}

pub fn crafted(work: &Path) -> Vec<Hostile> {
    craft(work).items.into_iter().map(|(h, _)| h).collect()
}

fn craft(work: &Path) -> Crafted {
    let work = work.join("hostile");
    fresh_dir(&work);
    let small = work.join("small");
    build_small_tree(&small);
    let plain = Image::parse(mksquashfs(
        &small,
        &work.join("plain.squash"),
        &["-b", "4096", "-noI", "-noD", "-noF", "-noX"],
    ));
    let gzip = mksquashfs(
        &small,
        &work.join("gzip.squash"),
        &["-b", "4096", "-comp", "gzip"],
    );
    let bomb_src = work.join("bomb-src");
    build_bomb_tree(&bomb_src);
    let bomb = Image::parse(mksquashfs(
        &bomb_src,
        &work.join("bomb.squash"),
        &["-comp", "gzip", "-noI", "-noF", "-noX", "-no-fragments"],
    ));

    let mut c = Crafted {
        bases: HashMap::new(),
        items: Vec::new(),
    };
    truncations(&mut c, &gzip);
    superblock_lies(&mut c, &plain);
    metadata_damage(&mut c, &plain, &gzip);
    bombs(&mut c, &plain, &bomb);
    inode_lies(&mut c, &plain);
    directory_lies(&mut c, &plain);
    shared_structures(&mut c, &plain);
    c.add(
        None,
        "deep-3000",
        "3000-deep directories",
        build_deep(&work, 3000),
    );

    c.bases.insert(PLAIN, plain.bytes);
    c.bases.insert(GZIP, gzip);
    c.bases.insert(BOMB, bomb.bytes);
    // Best effort: the trees are small, but do not leave them behind.
    let _ = fs::remove_dir_all(&work);
    c
}

fn truncations(c: &mut Crafted, gzip: &[u8]) {
    let base = Some(GZIP);
    let at = |field| usize_of(get64(gzip, field));
    c.add(
        base,
        "truncated-half",
        "image cut to half its length",
        gzip[..gzip.len() / 2].to_vec(),
    );
    c.add(
        base,
        "truncated-95",
        "image cut to 95 bytes, one short of a superblock",
        gzip[..95].to_vec(),
    );
    c.add(base, "truncated-empty", "empty file", Vec::new());
    c.add(
        base,
        "truncated-before-tables",
        "image cut where the inode table starts: no metadata at all",
        gzip[..at(SB_INODE_TABLE)].to_vec(),
    );
    c.add(
        base,
        "truncated-in-dir-table",
        "image cut in the middle of the directory table",
        gzip[..at(SB_DIR_TABLE) + 3].to_vec(),
    );
    c.add(
        base,
        "truncated-before-id-index",
        "image cut just before the id table index",
        gzip[..at(SB_ID_TABLE)].to_vec(),
    );
    c.add(
        base,
        "truncated-last-byte",
        "last byte of the last table (bytes_used - 1) missing",
        gzip[..at(SB_BYTES_USED) - 1].to_vec(),
    );
}

fn superblock_lies(c: &mut Crafted, img: &Image) {
    let base = Some(PLAIN);
    let len = img.bytes.len() as u64;
    let sb64 = |name: &str, what, at: usize, v: u64, c: &mut Crafted| {
        c.add(base, name, what, img.with(|b| put64(b, at, v)));
    };
    sb64(
        "sb-bytes-used-too-big",
        "bytes_used 1 MiB larger than the file",
        SB_BYTES_USED,
        len + MIB as u64,
        c,
    );
    sb64(
        "sb-bytes-used-max",
        "bytes_used = u64::MAX",
        SB_BYTES_USED,
        u64::MAX,
        c,
    );
    sb64(
        "sb-inode-table-past-end",
        "inode_table offset past the end of the file",
        SB_INODE_TABLE,
        len + 4096,
        c,
    );
    sb64(
        "sb-dir-table-past-end",
        "directory_table offset past the end of the file",
        SB_DIR_TABLE,
        len + 4096,
        c,
    );
    sb64(
        "sb-frag-table-past-end",
        "fragment_table offset past the end of the file",
        SB_FRAG_TABLE,
        len + 4096,
        c,
    );
    sb64(
        "sb-id-table-past-end",
        "id_table offset past the end of the file",
        SB_ID_TABLE,
        len + 4096,
        c,
    );
    sb64(
        "sb-export-table-past-end",
        "export_table offset past the end of the file",
        SB_EXPORT_TABLE,
        len + 4096,
        c,
    );
    sb64(
        "sb-xattr-table-past-end",
        "xattr_table (absent in the image) set past the end of the file",
        SB_XATTR_TABLE,
        len + 4096,
        c,
    );
    sb64(
        "sb-id-table-u64-max-minus-7",
        "id_table offset near u64::MAX (offset + 8 overflows)",
        SB_ID_TABLE,
        u64::MAX - 7,
        c,
    );
    let (it, dt) = (img.sb64(SB_INODE_TABLE), img.sb64(SB_DIR_TABLE));
    c.add(
        base,
        "sb-inode-table-after-dir-table",
        "inode_table and directory_table swapped (inode_table > directory_table)",
        img.with(|b| {
            put64(b, SB_INODE_TABLE, dt);
            put64(b, SB_DIR_TABLE, it);
        }),
    );
    let block = |name, what, size: u32, log: u16, c: &mut Crafted| {
        c.add(
            base,
            name,
            what,
            img.with(|b| {
                put32(b, SB_BLOCK_SIZE, size);
                put16(b, SB_BLOCK_LOG, log);
            }),
        );
    };
    block(
        "sb-block-size-not-pow2",
        "block_size 100000, not a power of two (block_log 12)",
        100_000,
        12,
        c,
    );
    block(
        "sb-block-size-zero",
        "block_size 0 (block_log 12)",
        0,
        12,
        c,
    );
    block(
        "sb-block-size-2m",
        "block_size 2 MiB with block_log 21: above the 1 MiB maximum",
        2 * MIB as u32,
        21,
        c,
    );
    block(
        "sb-block-log-mismatch",
        "block_log 17 while block_size is 4096",
        4096,
        17,
        c,
    );
    c.add(
        base,
        "sb-compressor-99",
        "unknown compressor id 99",
        img.with(|b| put16(b, SB_COMPRESSOR, 99)),
    );
    c.add(
        base,
        "sb-version-3-0",
        "version 3.0",
        img.with(|b| {
            put16(b, SB_VERSION_MAJOR, 3);
            put16(b, SB_VERSION_MINOR, 0);
        }),
    );
    c.add(
        base,
        "sb-id-count-65535",
        "id_count 65535 while the id table holds one id (one index entry instead of 32)",
        img.with(|b| put16(b, SB_ID_COUNT, 65535)),
    );
    c.add(
        base,
        "sb-id-count-zero",
        "id_count 0 while inodes use id index 0",
        img.with(|b| put16(b, SB_ID_COUNT, 0)),
    );
    c.add(
        base,
        "sb-inode-count-max",
        "inode_count 0xffffffff",
        img.with(|b| put32(b, SB_INODE_COUNT, u32::MAX)),
    );
    c.add(
        base,
        "sb-frag-count-max",
        "fragment_entry_count 0xffffffff with a one-entry fragment table",
        img.with(|b| put32(b, SB_FRAG_COUNT, u32::MAX)),
    );
    let table_len = dt - it;
    c.add(
        base,
        "sb-root-inode-past-table",
        "root inode reference whose block lies past the inode table (in the directory table)",
        img.with(|b| put64(b, SB_ROOT_INODE, table_len << 16)),
    );
    let root = img.sb64(SB_ROOT_INODE);
    c.add(
        base,
        "sb-root-inode-offset-past-block",
        "root inode reference with an in-block offset of 0xfff0 (> 8 KiB)",
        img.with(|b| put64(b, SB_ROOT_INODE, (root & !0xffff) | 0xfff0)),
    );
    c.add(
        base,
        "sb-root-inode-not-dir",
        "root inode reference pointing at a regular file inode",
        img.with(|b| put64(b, SB_ROOT_INODE, img.inode("a.txt").reference)),
    );
    c.add(
        base,
        "sb-bad-magic",
        "magic \"hsqt\"",
        img.with(|b| b[SB_MAGIC + 3] = b't'),
    );
}

fn metadata_damage(c: &mut Crafted, plain: &Image, gzip: &[u8]) {
    let it = usize_of(get64(gzip, SB_INODE_TABLE));
    let header = get16(gzip, it);
    assert_eq!(
        header & META_UNCOMPRESSED,
        0,
        "gzip fixture compresses inodes"
    );
    let size = usize::from(header & META_SIZE_MASK);
    let mut flipped = gzip.to_vec();
    flipped[it + 2 + size / 2] ^= 0x10;
    c.add(
        Some(GZIP),
        "flip-gzip-inode-table",
        "one bit flipped in the middle of the compressed first inode table block",
        flipped,
    );
    let mut adler = gzip.to_vec();
    adler[it + 2 + size - 1] ^= 0x01;
    c.add(
        Some(GZIP),
        "flip-gzip-inode-adler",
        "one bit flipped in the zlib Adler-32 trailer of the first inode table block",
        adler,
    );
    let mut big = gzip.to_vec();
    put16(&mut big, it, 0x7fff);
    c.add(
        Some(GZIP),
        "meta-header-gzip-size-7fff",
        "first inode table block header says compressed, 32767 bytes",
        big,
    );

    let pit = usize_of(plain.sb64(SB_INODE_TABLE));
    let pdt = usize_of(plain.sb64(SB_DIR_TABLE));
    c.add(
        Some(PLAIN),
        "meta-header-size-7fff",
        "first inode table block header says uncompressed, 32767 bytes (> 8 KiB)",
        plain.with(|b| put16(b, pit, META_UNCOMPRESSED | 0x7fff)),
    );
    c.add(
        Some(PLAIN),
        "meta-header-size-0",
        "first inode table block header says uncompressed, 0 bytes",
        plain.with(|b| put16(b, pit, META_UNCOMPRESSED)),
    );
    c.add(
        Some(PLAIN),
        "meta-header-dir-size-0-compressed",
        "first directory table block header says compressed, 0 bytes",
        plain.with(|b| put16(b, pdt, 0)),
    );
    let h = plain.first_header("");
    c.add(
        Some(PLAIN),
        "dir-header-count-huge",
        "root directory header count 0xffffffff",
        plain.with_dir(h, &u32::MAX.to_le_bytes()),
    );
    c.add(
        Some(PLAIN),
        "dir-header-start-past-table",
        "root directory header's inode block start far past the inode table",
        plain.with_dir(h + 4, &0x00ff_0000u32.to_le_bytes()),
    );
}

fn bombs(c: &mut Crafted, plain: &Image, bomb: &Image) {
    // Data block bomb: the single 128 KiB block is stored uncompressed; put a zlib stream that
    // inflates to 64 MiB of zeros in its place and mark the block as compressed with that length.
    let stream = zlib_zeros(64 * MIB);
    let block_size = get32(&bomb.bytes, SB_BLOCK_SIZE) as usize;
    assert_eq!(block_size, 128 * 1024);
    let ino = bomb.inode("block.bin");
    assert_eq!(ino.kind, T_FILE);
    let d = &bomb.inode_meta.data;
    let start = get32(d, ino.pos + FILE_BLOCKS_START) as usize;
    let old = get32(d, ino.pos + FILE_BLOCKS);
    assert_eq!(
        old,
        (1 << 24) | block_size as u32,
        "fixture block stored raw"
    );
    // 64 MiB of zeros take about 64 KiB: the stream fits in place of the raw 128 KiB block, so
    // no table moves.
    assert!(stream.len() < block_size);
    let mut bytes = bomb.with_inode(
        "block.bin",
        FILE_BLOCKS,
        &(stream.len() as u32).to_le_bytes(),
    );
    bytes[start..start + stream.len()].copy_from_slice(&stream);
    c.add(
        Some(BOMB),
        "gzip-bomb",
        "a 128 KiB-block file whose one data block is a zlib stream inflating to 64 MiB of zeros",
        bytes,
    );

    // Metadata bomb: the id table's metadata block replaced by a zlib stream of 1 MiB of zeros
    // (a metadata block may hold at most 8 KiB), appended at bytes_used.
    let stream = zlib_zeros(MIB);
    assert!(stream.len() < usize::from(META_SIZE_MASK));
    let end = usize_of(plain.sb64(SB_BYTES_USED));
    let mut b = plain.bytes[..end].to_vec();
    b.extend_from_slice(&(stream.len() as u16).to_le_bytes());
    b.extend_from_slice(&stream);
    let new_end = b.len() as u64;
    put64(&mut b, SB_BYTES_USED, new_end);
    put64(&mut b, usize_of(plain.sb64(SB_ID_TABLE)), end as u64);
    c.add(
        Some(PLAIN),
        "meta-bomb-id-table",
        "id table metadata block is a zlib stream inflating to 1 MiB (limit 8 KiB)",
        b,
    );
}

fn inode_lies(c: &mut Crafted, img: &Image) {
    let base = Some(PLAIN);
    assert_eq!(
        img.inode("hard1").kind,
        T_LFILE,
        "hard links give an extended file"
    );
    assert_eq!(img.inode("big.bin").kind, T_FILE);
    assert_eq!(img.inode("link").kind, T_SYMLINK);
    assert_eq!(img.inode("dir").kind, T_DIR);
    let len = img.bytes.len() as u64;

    c.add(
        base,
        "file-size-2p63-extended",
        "extended file inode with file_size 2^63: the block list would be 2^51 entries",
        img.with_inode("hard1", LFILE_SIZE, &(1u64 << 63).to_le_bytes()),
    );
    c.add(
        base,
        "file-size-ffffffff-basic",
        "basic file inode with file_size 0xffffffff: the block list would be 1M entries",
        img.with_inode("big.bin", FILE_SIZE, &u32::MAX.to_le_bytes()),
    );
    c.add(
        base,
        "dir-size-60000",
        "directory inode file_size 60000 while its listing is a few dozen bytes",
        img.with_inode("dir", DIR_FILE_SIZE, &60000u16.to_le_bytes()),
    );
    c.add(
        base,
        "dir-start-past-table",
        "directory inode listing start block far past the directory table",
        img.with_inode("dir", DIR_START, &0x00ff_0000u32.to_le_bytes()),
    );
    c.add(
        base,
        "symlink-too-long",
        "symlink target_size 5000 (PATH_MAX is 4096; the inode table is shorter)",
        img.with_inode("link", SYMLINK_SIZE, &5000u32.to_le_bytes()),
    );
    c.add(
        base,
        "symlink-size-ffffffff",
        "symlink target_size 0xffffffff",
        img.with_inode("link", SYMLINK_SIZE, &u32::MAX.to_le_bytes()),
    );
    let frag_count = get32(&img.bytes, SB_FRAG_COUNT);
    c.add(
        base,
        "frag-index-past-count",
        "file fragment index equal to fragment_entry_count (one past the last)",
        img.with_inode("a.txt", FILE_FRAG, &frag_count.to_le_bytes()),
    );
    c.add(
        base,
        "data-block-size-ffffff",
        "first data block size field claims 0x00ffffff compressed bytes",
        img.with_inode("big.bin", FILE_BLOCKS, &0x00ff_ffffu32.to_le_bytes()),
    );
    c.add(
        base,
        "file-blocks-start-past-end",
        "file blocks_start past the end of the image",
        img.with_inode(
            "big.bin",
            FILE_BLOCKS_START,
            &u32::try_from(len + MIB as u64).unwrap().to_le_bytes(),
        ),
    );
    c.add(
        base,
        "inode-type-99",
        "inode type 99",
        img.with_inode("a.txt", I_TYPE, &99u16.to_le_bytes()),
    );
    c.add(
        base,
        "inode-uid-index-past-id-count",
        "inode uid index 0xffff with one id in the id table",
        img.with_inode("a.txt", I_UID, &u16::MAX.to_le_bytes()),
    );

    // Fragment entry 0: start u64 at 0, size u32 at 8.
    let meta = img.frag_entries();
    c.add(
        base,
        "frag-entry-size-huge",
        "fragment table entry whose size field claims 0x00ffffff compressed bytes",
        img.with(|b| meta.patch(b, 8, &0x00ff_ffffu32.to_le_bytes())),
    );
    c.add(
        base,
        "frag-entry-start-past-end",
        "fragment table entry starting past the end of the image",
        img.with(|b| meta.patch(b, 0, &(len + MIB as u64).to_le_bytes())),
    );
}

/// Structures that two inodes share but describe differently: each inode alone may look
/// fine, so the engine must check what it finds in its cache against what *this* inode
/// expects, and bound work that is multiplied by sharing.
fn shared_structures(c: &mut Crafted, img: &Image) {
    // a.txt and dir/sub/f.txt share fragment block 0 (a few hundred bytes of tails). f.txt
    // claims its 30 bytes start at offset 4000 of it: the fragment block is cached (by a.txt)
    // by the time f.txt is read.
    let f = img.inode("dir/sub/f.txt");
    assert_eq!(f.kind, T_FILE);
    assert_eq!(get32(&img.inode_meta.data, f.pos + FILE_FRAG), 0);
    c.add(
        Some(PLAIN),
        "shared-fragment-offset-past-end",
        "dir/sub/f.txt's tail lies at offset 4000 of the fragment block a.txt read first",
        img.with_inode("dir/sub/f.txt", FILE_FRAG_OFFSET, &4000u32.to_le_bytes()),
    );
    c.add(
        Some(PLAIN),
        "xattr-bomb-shared-value",
        "65536 xattrs on hard1, all out of line and pointing at one 64 KiB value (4 GiB decoded)",
        xattr_bomb(img),
    );
}

/// An xattr table appended to `img`: one 64 KiB value, then 65536 entries on one id, each an
/// out-of-line reference to that value; `hard1` (an extended inode) gets xattr id 0. The
/// metadata blocks are zlib-compressed, so the image stays small.
fn xattr_bomb(img: &Image) -> Vec<u8> {
    assert_eq!(img.inode("hard1").kind, T_LFILE);
    let mut b = img.with_inode("hard1", LFILE_XATTR, &0u32.to_le_bytes());
    b.truncate(usize_of(img.sb64(SB_BYTES_USED)));
    let mut kv = Vec::new();
    kv.extend_from_slice(&65536u32.to_le_bytes());
    kv.extend(std::iter::repeat_n(b'v', 65536));
    let first_entry = kv.len();
    for i in 0..65536u32 {
        let name = format!("{:04x}", i % 0x1_0000);
        kv.extend_from_slice(&0x100u16.to_le_bytes()); // user., value out of line
        kv.extend_from_slice(&(name.len() as u16).to_le_bytes());
        kv.extend_from_slice(name.as_bytes());
        kv.extend_from_slice(&8u32.to_le_bytes());
        kv.extend_from_slice(&0u64.to_le_bytes()); // the value at block 0, offset 0
    }
    let kv_start = b.len() as u64;
    let kv_blocks = append_meta_blocks(&mut b, &kv);
    let reference =
        |off: usize| (kv_blocks[off / META_BLOCK_MAX] << 16) | (off % META_BLOCK_MAX) as u64;
    let mut id = Vec::new();
    id.extend_from_slice(&reference(first_entry).to_le_bytes());
    id.extend_from_slice(&65536u32.to_le_bytes());
    id.extend_from_slice(&((kv.len() - first_entry) as u32).to_le_bytes());
    let id_start = b.len() as u64;
    append_meta_blocks(&mut b, &id);
    let header = b.len() as u64;
    b.extend_from_slice(&kv_start.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&id_start.to_le_bytes());
    let end = b.len() as u64;
    put64(&mut b, SB_XATTR_TABLE, header);
    put64(&mut b, SB_BYTES_USED, end);
    b
}

/// Appends `stream` as zlib-compressed metadata blocks; returns each block's position relative
/// to the first.
fn append_meta_blocks(b: &mut Vec<u8>, stream: &[u8]) -> Vec<u64> {
    use std::io::Write;
    let start = b.len();
    let mut positions = Vec::new();
    for block in stream.chunks(META_BLOCK_MAX) {
        positions.push((b.len() - start) as u64);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(block).expect("compress");
        let packed = z.finish().expect("compress");
        assert!(packed.len() < META_BLOCK_MAX);
        b.extend_from_slice(&(packed.len() as u16).to_le_bytes());
        b.extend_from_slice(&packed);
    }
    positions
}

fn directory_lies(c: &mut Crafted, img: &Image) {
    let base = Some(PLAIN);
    c.add(
        base,
        "dir-cycle-self",
        "entry dir/sub/g.txt points back at dir/sub itself",
        img.with_entry_to("dir/sub", "g.txt", "dir/sub"),
    );
    c.add(
        base,
        "dir-cycle-root",
        "entry dir/sub/f.txt points at the root directory",
        img.with_entry_to("dir/sub", "f.txt", ""),
    );
    c.add(
        base,
        "dir-cycle-parent",
        "entry dir/sub/g.txt points at its parent directory dir",
        img.with_entry_to("dir/sub", "g.txt", "dir"),
    );
    let a = img.entry("", "a.txt");
    c.add(
        base,
        "dir-entry-type-mismatch",
        "entry a.txt typed as a directory while its inode is a regular file",
        img.with_dir(a.entry_pos + DE_TYPE, &T_DIR.to_le_bytes()),
    );
    c.add(
        base,
        "dir-entry-name-size-max",
        "entry name_size 0xffff (65536-byte name; limit 256, listing much shorter)",
        img.with_dir(a.entry_pos + DE_NAME_SIZE, &u16::MAX.to_le_bytes()),
    );
    c.add(
        base,
        "dir-entry-name-slash",
        "entry name a.txt rewritten to a/txt (a path separator in a name)",
        img.with_dir(a.entry_pos + DIR_ENTRY_LEN + 1, b"/"),
    );
    c.add(
        base,
        "dir-entry-name-dotdot",
        "entry name dir rewritten to \"..\" (name_size 1)",
        {
            let e = img.entry("", "dir");
            assert_eq!(e.name.len(), 3);
            img.with(|b| {
                img.dir_meta.patch(b, e.entry_pos + DIR_ENTRY_LEN, b"..");
                img.dir_meta
                    .patch(b, e.entry_pos + DE_NAME_SIZE, &1u16.to_le_bytes());
            })
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Random mutations.

const INTERESTING: &[u64] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0x8000,
    0xffff,
    0x00ff_ffff,
    0x0100_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
];

/// A position biased towards the superblock: a third of picks land in its first 96 bytes.
fn pick_pos(rng: &mut Rng, len: usize) -> usize {
    if rng.below(3) == 0 {
        rng.below(len.min(SB_LEN))
    } else {
        rng.below(len)
    }
}

fn mutate(image: &[u8], rng: &mut Rng) -> Vec<u8> {
    if image.is_empty() {
        return vec![rng.byte()];
    }
    let mut out = image.to_vec();
    let ops = 1 + rng.below(3);
    for _ in 0..ops {
        let n = out.len();
        if n == 0 {
            break;
        }
        match rng.below(10) {
            // Bit flips.
            0..=2 => {
                for _ in 0..1 + rng.below(4) {
                    let p = pick_pos(rng, n);
                    out[p] ^= 1 << rng.below(8);
                }
            }
            // Overwrite a short run with 0x00, 0xff or random bytes.
            3..=5 => {
                let p = pick_pos(rng, n);
                let run = (1 + rng.below(16)).min(n - p);
                let mode = rng.below(3);
                for b in &mut out[p..p + run] {
                    *b = match mode {
                        0 => 0x00,
                        1 => 0xff,
                        _ => rng.byte(),
                    };
                }
            }
            // Truncation, often inside the first 128 bytes.
            6 => {
                let new_len = if rng.below(4) == 0 {
                    rng.below(n.min(128))
                } else {
                    rng.below(n)
                };
                out.truncate(new_len);
            }
            // Copy a range over another part of the image.
            7 | 8 => {
                let run = 1 + rng.below(n.min(512));
                let src = rng.below(n - run + 1);
                let dst = rng.below(n - run + 1);
                out.copy_within(src..src + run, dst);
            }
            // An interesting little-endian value in a 2/4/8-byte field.
            _ => {
                let width = [2, 4, 8][rng.below(3)];
                if n >= width {
                    let p = pick_pos(rng, n - width + 1);
                    let v = INTERESTING[rng.below(INTERESTING.len())];
                    out[p..p + width].copy_from_slice(&v.to_le_bytes()[..width]);
                }
            }
        }
    }
    if out == image {
        let p = pick_pos(rng, out.len());
        out[p] ^= 1 << rng.below(8);
    }
    out
}

/// `count` seeded mutations of `image` (bit flips, byte overwrites with 0x00/0xff/random,
/// truncations, copied ranges, interesting field values), deterministic for a seed. Mutation `i`
/// depends only on `seed` and `i`, so a longer run extends a shorter one. Every mutation differs
/// from `image`.
pub fn mutations(image: &[u8], seed: u64, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0xd1b5_4a32_d192_ed03));
            rng.next();
            mutate(image, &mut rng)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn hostile_crafted_images_are_distinct_and_patched() {
        let dir = tempfile::tempdir().unwrap();
        let c = craft(dir.path());
        assert!(c.items.len() >= 20, "only {} images", c.items.len());
        let mut names = HashSet::new();
        for (h, base) in &c.items {
            assert!(names.insert(h.name.clone()), "duplicate name {}", h.name);
            assert!(!h.what.is_empty());
            match base {
                Some(base) => assert_ne!(&h.bytes, &c.bases[base], "{} equals its base", h.name),
                None => assert_eq!(&h.bytes[..4], MAGIC, "{} is not squashfs", h.name),
            }
        }
        for required in [
            "truncated-half",
            "truncated-95",
            "truncated-empty",
            "truncated-before-tables",
            "sb-bytes-used-too-big",
            "sb-compressor-99",
            "sb-version-3-0",
            "gzip-bomb",
            "meta-bomb-id-table",
            "dir-cycle-self",
            "dir-cycle-root",
            "deep-3000",
            "symlink-too-long",
            "frag-index-past-count",
            "data-block-size-ffffff",
        ] {
            assert!(names.contains(required), "missing {required}");
        }
    }

    #[test]
    fn hostile_patches_land_where_intended() {
        let dir = tempfile::tempdir().unwrap();
        let c = craft(dir.path());
        let get = |name: &str| {
            &c.items
                .iter()
                .find(|(h, _)| h.name == name)
                .unwrap()
                .0
                .bytes
        };
        let plain = Image::parse(c.bases[PLAIN].clone());

        // Superblock patches only touch the superblock.
        let v3 = get("sb-version-3-0");
        assert_eq!(get16(v3, SB_VERSION_MAJOR), 3);
        assert_eq!(&v3[SB_LEN..], &plain.bytes[SB_LEN..]);

        // Inode patches re-parse to the patched value (inode table layout unchanged).
        let lying = Image::parse(get("sb-bytes-used-too-big").clone());
        assert_eq!(lying.inodes.len(), plain.inodes.len());
        let big = get("file-size-ffffffff-basic");
        let pos = plain
            .inode_meta
            .file_pos(plain.inode("big.bin").pos + FILE_SIZE);
        assert_eq!(get32(big, pos), u32::MAX);

        // The self cycle resolves dir/sub/g.txt to dir/sub's own inode.
        let cyc = get("dir-cycle-self").clone();
        let e = plain.entry("dir/sub", "g.txt");
        let dd_pos = |off| plain.dir_meta.file_pos(off);
        let block = u64::from(get32(&cyc, dd_pos(e.header_pos + 4)));
        let offset = u64::from(get16(&cyc, dd_pos(e.entry_pos + DE_OFFSET)));
        assert_eq!((block << 16) | offset, plain.inode("dir/sub").reference);

        // The gzip bomb's block really inflates to 64 MiB while claiming a 128 KiB block.
        let bomb_base = Image::parse(c.bases[BOMB].clone());
        let bomb = get("gzip-bomb");
        let ino = bomb_base.inode("block.bin");
        let start = get32(&bomb_base.inode_meta.data, ino.pos + FILE_BLOCKS_START) as usize;
        let size_pos = bomb_base.inode_meta.file_pos(ino.pos + FILE_BLOCKS);
        let size = get32(bomb, size_pos) as usize;
        assert_eq!(size & (1 << 24), 0, "bomb block marked compressed");
        let mut n = 0u64;
        let mut dec = ZlibDecoder::new(&bomb[start..start + size]);
        let mut buf = vec![0u8; MIB];
        loop {
            let got = dec.read(&mut buf).unwrap();
            if got == 0 {
                break;
            }
            n += got as u64;
        }
        assert_eq!(n, 64 * MIB as u64);

        // The deep image really has 3001 inodes.
        assert_eq!(get32(get("deep-3000"), SB_INODE_COUNT), 3001);
    }

    fn inflate(stream: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        ZlibDecoder::new(stream).read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn hostile_zlib_zeros_inflates() {
        for len in [0, 1, 2, 3, 258, 259, 260, 1000, 8193, 100_000] {
            assert_eq!(inflate(&zlib_zeros(len)), vec![0u8; len], "len {len}");
        }
        assert!(zlib_zeros(64 * MIB).len() < 70 * 1024);
    }

    #[test]
    fn hostile_crafted_is_deterministic() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        assert_eq!(crafted(a.path()), crafted(b.path()));
    }

    #[test]
    fn hostile_mutations_are_deterministic() {
        let image = random_bytes(7, 8192);
        let m1 = mutations(&image, 42, 200);
        let m2 = mutations(&image, 42, 200);
        assert_eq!(m1.len(), 200);
        assert_eq!(m1, m2);
        assert_eq!(&mutations(&image, 42, 50)[..], &m1[..50]);
        assert_ne!(mutations(&image, 43, 200), m1);
        assert!(m1.iter().all(|m| m != &image));
        assert!(mutations(&image, 1, 0).is_empty());
        assert_eq!(mutations(&[], 1, 5).len(), 5);
        assert_eq!(mutations(&[0x55], 9, 30).len(), 30);
        // Some of each kind: shorter (truncated) and same-length (overwritten) images.
        assert!(m1.iter().any(|m| m.len() < image.len()));
        assert!(m1.iter().any(|m| m.len() == image.len()));
    }
}
