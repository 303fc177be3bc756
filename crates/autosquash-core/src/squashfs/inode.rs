//! Inodes, decoded one at a time when looked up.

use super::Image;
use super::limits::{MAX_FILE_BLOCKS, MAX_SYMLINK};
use crate::error::{Error, Result};

pub(crate) const NO_INDEX: u32 = u32::MAX;
/// Blocks are indexed with a checkpoint of their position every this many blocks, so a block's
/// position costs a short sum and the index costs ~4 bytes per block.
const CHECKPOINT_EVERY: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    Directory,
    File,
    Symlink,
    BlockDevice,
    CharDevice,
    Fifo,
    Socket,
}

impl FileKind {
    /// From the squashfs inode type (basic 1-7 or extended 8-14).
    pub(crate) fn from_type(t: u16) -> Result<(Self, bool)> {
        let kind = match t {
            1 | 8 => FileKind::Directory,
            2 | 9 => FileKind::File,
            3 | 10 => FileKind::Symlink,
            4 | 11 => FileKind::BlockDevice,
            5 | 12 => FileKind::CharDevice,
            6 | 13 => FileKind::Fifo,
            7 | 14 => FileKind::Socket,
            other => return Err(Error::corrupt(format!("unknown inode type {other}"))),
        };
        Ok((kind, t >= 8))
    }

    /// The `S_IFMT` bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::Directory => 0o040000,
            FileKind::File => 0o100000,
            FileKind::Symlink => 0o120000,
            FileKind::BlockDevice => 0o060000,
            FileKind::CharDevice => 0o020000,
            FileKind::Fifo => 0o010000,
            FileKind::Socket => 0o140000,
        }
    }
}

/// One decoded inode. `ino` is the squashfs inode number: hard links share it.
#[derive(Debug, Clone)]
pub struct Inode {
    pub ino: u32,
    pub kind: FileKind,
    /// Permission bits, including setuid, setgid and sticky.
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
    pub nlink: u32,
    pub size: u64,
    /// Device number (Linux encoding) for block and character devices.
    pub rdev: u32,
    pub(crate) xattr: u32,
    pub(crate) body: Body,
}

#[derive(Debug, Clone)]
pub(crate) enum Body {
    Directory(DirBody),
    File(FileBody),
    Symlink(Box<[u8]>),
    Special,
}

#[derive(Debug, Clone)]
pub(crate) struct DirBody {
    /// Start of the listing's metadata block, relative to the directory table.
    pub block: u32,
    pub offset: u16,
    /// Listing length in bytes (the inode's size minus the 3 bytes for `.` and `..`).
    pub listing_len: u32,
    pub parent: u32,
}

#[derive(Debug, Clone)]
pub(crate) struct FileBody {
    /// Block size words: low 24 bits the stored length (0 = sparse), bit 24 = stored raw.
    pub words: Box<[u32]>,
    /// Position of block `i * CHECKPOINT_EVERY`.
    pub checkpoints: Box<[u64]>,
    /// Fragment index and offset of the file's tail, if it has one.
    pub fragment: Option<(u32, u32)>,
}

impl FileBody {
    /// Stored position and length of block `i` (`i < words.len()`, checked by the caller; the
    /// checkpoints cover every 64th block by construction), and whether it is stored raw.
    pub fn block(&self, i: usize) -> (u64, u32, bool) {
        let chunk = i / CHECKPOINT_EVERY;
        let pos = self.checkpoints[chunk]
            + self.words[chunk * CHECKPOINT_EVERY..i]
                .iter()
                .map(|w| u64::from(w & 0x00ff_ffff))
                .sum::<u64>();
        let word = self.words[i];
        (pos, word & 0x00ff_ffff, word & (1 << 24) != 0)
    }
}

impl Inode {
    pub fn mode(&self) -> u32 {
        self.kind.mode_bits() | u32::from(self.perm)
    }

    /// Major and minor device numbers of a device node (squashfs keeps Linux's 32-bit
    /// `new_encode_dev` format).
    pub fn device(&self) -> (u32, u32) {
        let major = (self.rdev >> 8) & 0xfff;
        let minor = (self.rdev & 0xff) | ((self.rdev >> 12) & 0xfff00);
        (major, minor)
    }

    /// The inode number of a directory's parent (for the root: a number past the last inode).
    pub fn parent(&self) -> Option<u32> {
        match &self.body {
            Body::Directory(d) => Some(d.parent),
            _ => None,
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == FileKind::Directory
    }

    /// Approximate heap bytes held, for the cache budget.
    pub(crate) fn heap_size(&self) -> usize {
        std::mem::size_of::<Self>()
            + match &self.body {
                Body::File(f) => f.words.len() * 4 + f.checkpoints.len() * 8,
                Body::Symlink(t) => t.len(),
                _ => 0,
            }
    }

    pub(crate) fn dir(&self) -> Result<&DirBody> {
        match &self.body {
            Body::Directory(d) => Ok(d),
            _ => Err(Error::WrongType("a directory")),
        }
    }
}

impl Image {
    /// Decodes the inode at `inode_ref` (metadata block offset relative to the inode table in
    /// the high 48 bits, offset inside the block in the low 16).
    pub(crate) fn decode_inode(&self, inode_ref: u64) -> Result<Inode> {
        let block = self.sb.inode_table + (inode_ref >> 16);
        if block >= self.sb.dir_table {
            return Err(Error::corrupt(format!(
                "inode reference {inode_ref:#x} is outside the inode table"
            )));
        }
        let mut c = self.cursor(block, (inode_ref & 0xffff) as usize)?;
        let (kind, extended) = FileKind::from_type(c.u16()?)?;
        let perm = c.u16()? & 0o7777;
        let uid = self.id(c.u16()?)?;
        let gid = self.id(c.u16()?)?;
        let mtime = c.u32()?;
        let ino = c.u32()?;
        if ino == 0 || ino > self.sb.inode_count {
            return Err(Error::corrupt(format!("inode number {ino} out of range")));
        }
        let mut inode = Inode {
            ino,
            kind,
            perm,
            uid,
            gid,
            mtime,
            nlink: 1,
            size: 0,
            rdev: 0,
            xattr: NO_INDEX,
            body: Body::Special,
        };
        match (kind, extended) {
            (FileKind::Directory, false) => {
                let block = c.u32()?;
                inode.nlink = c.u32()?;
                let size = c.u16()?;
                let offset = c.u16()?;
                let parent = c.u32()?;
                inode.size = u64::from(size);
                inode.body = dir_body(block, offset, u32::from(size), parent)?;
            }
            (FileKind::Directory, true) => {
                inode.nlink = c.u32()?;
                let size = c.u32()?;
                let block = c.u32()?;
                let parent = c.u32()?;
                let _index_count = c.u16()?;
                let offset = c.u16()?;
                inode.xattr = c.u32()?;
                inode.size = u64::from(size);
                // The directory index that follows only speeds up lookups in huge listings;
                // lookups here binary-search the cached listing instead.
                inode.body = dir_body(block, offset, size, parent)?;
            }
            (FileKind::File, false) => {
                let start = u64::from(c.u32()?);
                let frag = c.u32()?;
                let frag_offset = c.u32()?;
                inode.size = u64::from(c.u32()?);
                inode.body =
                    Body::File(self.file_body(&mut c, start, frag, frag_offset, inode.size)?);
            }
            (FileKind::File, true) => {
                let start = c.u64()?;
                inode.size = c.u64()?;
                let _sparse = c.u64()?;
                inode.nlink = c.u32()?;
                let frag = c.u32()?;
                let frag_offset = c.u32()?;
                inode.xattr = c.u32()?;
                inode.body =
                    Body::File(self.file_body(&mut c, start, frag, frag_offset, inode.size)?);
            }
            (FileKind::Symlink, _) => {
                inode.nlink = c.u32()?;
                let len = c.u32()? as usize;
                if len == 0 || len > MAX_SYMLINK {
                    return Err(Error::corrupt(format!("symlink target of {len} bytes")));
                }
                let target = c.bytes(len)?;
                if target.contains(&0) {
                    return Err(Error::corrupt("symlink target contains NUL"));
                }
                inode.size = len as u64;
                inode.body = Body::Symlink(target.into());
                if extended {
                    inode.xattr = c.u32()?;
                }
            }
            (FileKind::BlockDevice | FileKind::CharDevice, _) => {
                inode.nlink = c.u32()?;
                inode.rdev = c.u32()?;
                if extended {
                    inode.xattr = c.u32()?;
                }
            }
            (FileKind::Fifo | FileKind::Socket, _) => {
                inode.nlink = c.u32()?;
                if extended {
                    inode.xattr = c.u32()?;
                }
            }
        }
        Ok(inode)
    }

    fn file_body(
        &self,
        c: &mut super::metadata::MetaCursor<'_>,
        start: u64,
        frag: u32,
        frag_offset: u32,
        size: u64,
    ) -> Result<FileBody> {
        let bs = u64::from(self.sb.block_size);
        let has_fragment = frag != NO_INDEX;
        let count = if has_fragment {
            size / bs
        } else {
            size.div_ceil(bs)
        };
        if count > MAX_FILE_BLOCKS {
            return Err(Error::Limit(format!(
                "file of {size} bytes has {count} blocks (limit {MAX_FILE_BLOCKS})"
            )));
        }
        if has_fragment {
            if frag >= self.sb.frag_count {
                return Err(Error::corrupt(format!(
                    "fragment {frag} of {} out of range",
                    self.sb.frag_count
                )));
            }
            if u64::from(frag_offset) + size % bs > bs {
                return Err(Error::corrupt("file tail runs past its fragment block"));
            }
        }
        // Grown as words are read (not preallocated from the untrusted count), so a lying
        // size costs no more memory than the metadata actually present.
        let mut words = Vec::new();
        let mut checkpoints = Vec::new();
        let mut pos = start;
        for i in 0..count as usize {
            if i % CHECKPOINT_EVERY == 0 {
                checkpoints.push(pos);
            }
            let word = c.u32()?;
            if word & !0x01ff_ffff != 0 || (word & 0x00ff_ffff) > self.sb.block_size {
                return Err(Error::corrupt(format!("block size word {word:#x}")));
            }
            pos = pos
                .checked_add(u64::from(word & 0x00ff_ffff))
                .filter(|&end| end <= self.sb.bytes_used)
                .ok_or_else(|| Error::corrupt("file blocks run past the end of the image"))?;
            words.push(word);
        }
        if pos > self.sb.bytes_used {
            return Err(Error::corrupt("file blocks run past the end of the image"));
        }
        Ok(FileBody {
            words: words.into(),
            checkpoints: checkpoints.into(),
            fragment: has_fragment.then_some((frag, frag_offset)),
        })
    }

    /// Looks up entry `index` of the id table (uids and gids).
    fn id(&self, index: u16) -> Result<u32> {
        self.ids
            .get(usize::from(index))
            .copied()
            .ok_or_else(|| Error::corrupt(format!("id index {index} out of range")))
    }
}

fn dir_body(block: u32, offset: u16, size: u32, parent: u32) -> Result<Body> {
    // An empty directory has size 3; anything smaller is corrupt.
    let listing_len = size
        .checked_sub(3)
        .ok_or_else(|| Error::corrupt(format!("directory size {size}")))?;
    Ok(Body::Directory(DirBody {
        block,
        offset,
        listing_len,
        parent,
    }))
}
