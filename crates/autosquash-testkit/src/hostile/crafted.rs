//! The crafted images: each base image with one structure patched to lie (truncations,
//! superblock fields, metadata block headers, bombs, inodes, directory listings, structures two
//! inodes share), plus images built hostile as they are.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use super::Hostile;
use super::bits::zlib_zeros;
use super::fixtures::{build_bomb_tree, build_deep, build_small_tree, fresh_dir, mksquashfs};
use super::format::*;
use super::reader::Image;

pub(super) struct Crafted {
    bases: HashMap<&'static str, Vec<u8>>,
    /// Each image with the base it was patched from (`None` for images built as they are).
    pub(super) items: Vec<(Hostile, Option<&'static str>)>,
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

pub(super) fn craft(work: &Path) -> Crafted {
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

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::ZlibDecoder;
    use std::collections::HashSet;
    use std::io::Read;

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
}
