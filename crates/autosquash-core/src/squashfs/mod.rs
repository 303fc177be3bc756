//! The squashfs engine: an [`Image`] is one version of one object, opened lazily.
//!
//! Opening reads the superblock and the tail (inode, directory, fragment, id and xattr tables)
//! in parallel; everything else is decoded on demand. All methods take `&self`: an image is
//! shared by every thread, and no lock is held across a store read.

mod codec;
mod dir;
mod file;
mod inode;
mod le;
mod limits;
mod metadata;
mod superblock;
mod walk;
mod xattr;

pub use dir::DirEntry;
pub use inode::{FileKind, Inode};
pub use walk::{Walk, Walked};

use crate::block_cache::{BlockCache, Key, Kind, Value};
use crate::error::{Error, Result};
use crate::store::{ObjectMeta, Store};
use bytes::{Bytes, BytesMut};
use codec::Codec;
use limits::{MAX_DEPTH, TAIL_READ};
use metadata::{BLOCK_SIZE, Tables};
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use superblock::Superblock;

/// Where an inode number was seen, so it can be decoded again by number alone.
#[derive(Debug, Clone, Copy)]
struct Known {
    inode_ref: u64,
    depth: u32,
    /// The directory it was first found in (the root: itself).
    parent: u32,
}

/// One opened image version. Cheap to share (`Arc`), `Send + Sync`.
pub struct Image {
    /// Unique per opened image; namespaces this image's entries in the shared cache.
    pub(crate) id: u64,
    store: Arc<dyn Store>,
    meta: ObjectMeta,
    pub(crate) sb: Superblock,
    pub(crate) codec: Codec,
    pub(crate) tables: Tables,
    pub(crate) ids: Vec<u32>,
    pub(crate) cache: Arc<BlockCache>,
    /// Inode numbers handed out so far (the kernel may ask for any of them later).
    known: RwLock<HashMap<u32, Known, crate::block_cache::Hasher>>,
    root_ino: u32,
}

/// Figures for `statfs` and status displays.
#[derive(Debug, Clone, Copy)]
pub struct ImageInfo {
    pub inode_count: u32,
    pub block_size: u32,
    pub bytes_used: u64,
    pub compression: &'static str,
}

impl Image {
    /// Opens version `meta` of an image: at most two store reads when the tables fit in the
    /// speculative tail read, one more when they don't.
    pub async fn open(
        store: Arc<dyn Store>,
        meta: ObjectMeta,
        cache: Arc<BlockCache>,
    ) -> Result<Arc<Image>> {
        let size = meta.size;
        if size < superblock::SIZE as u64 {
            return Err(Error::corrupt(format!("image is only {size} bytes")));
        }
        let read = |range: std::ops::Range<u64>| store.read(&meta, range);
        let tail_start = size.saturating_sub(TAIL_READ);
        let (head, tail) = if tail_start <= superblock::SIZE as u64 {
            let all = read(0..size).await?;
            if all.len() < superblock::SIZE {
                return Err(Error::store(&meta.key, "store returned a short read"));
            }
            (all.slice(..superblock::SIZE), all)
        } else {
            tokio::try_join!(read(0..superblock::SIZE as u64), read(tail_start..size))?
        };
        let tail_start = size
            .checked_sub(tail.len() as u64)
            .ok_or_else(|| Error::store(&meta.key, "store returned a long read"))?;
        let sb = Superblock::parse(&head, size)?;
        // The tables are start..bytes_used: from the tail read where it covers them, the rest
        // in one more read (an image may also end in padding past bytes_used).
        let (start, end) = (sb.inode_table, sb.bytes_used);
        let from_tail = |from: u64| {
            tail.get((from - tail_start) as usize..(end - tail_start) as usize)
                .ok_or_else(|| Error::corrupt("tables outside the image"))
        };
        let tables = if start >= tail_start {
            // A copy: a slice would keep the whole 1 MiB tail (mostly file data) alive for as
            // long as the image is mounted.
            Bytes::copy_from_slice(from_tail(start)?)
        } else {
            let rest = read(start..end.min(tail_start)).await?;
            let mut all = BytesMut::with_capacity((end - start) as usize);
            all.extend_from_slice(&rest);
            if end > tail_start {
                all.extend_from_slice(from_tail(tail_start)?);
            }
            all.freeze()
        };
        if tables.len() as u64 != end - start {
            return Err(Error::store(&meta.key, "store returned a short read"));
        }
        let mut image = Image {
            id: BlockCache::namespace(),
            codec: Codec::from_id(sb.compressor)?,
            tables: Tables {
                start,
                bytes: tables,
            },
            ids: Vec::new(),
            cache,
            known: RwLock::default(),
            root_ino: 0,
            store,
            meta,
            sb,
        };
        image.ids = image.read_ids()?;
        let root = image.decode_inode(image.sb.root_inode)?;
        if !root.is_dir() {
            return Err(Error::corrupt("root inode is not a directory"));
        }
        image.root_ino = root.ino;
        image.remember(root.ino, image.sb.root_inode, 0, root.ino)?;
        Ok(Arc::new(image))
    }

    /// Drops this image's entries from the shared cache (a scan of the whole cache).
    pub fn forget(&self) {
        self.cache.forget_image(self.id);
    }

    /// Bytes this image keeps while open (its compressed tables), outside the shared cache.
    pub fn resident_bytes(&self) -> u64 {
        self.tables.bytes.len() as u64
    }

    /// The object version this image was opened at.
    pub fn meta(&self) -> &ObjectMeta {
        &self.meta
    }

    pub fn root_ino(&self) -> u32 {
        self.root_ino
    }

    pub fn info(&self) -> ImageInfo {
        ImageInfo {
            inode_count: self.sb.inode_count,
            block_size: self.sb.block_size,
            bytes_used: self.sb.bytes_used,
            compression: self.codec.name(),
        }
    }

    pub fn root(&self) -> Result<Arc<Inode>> {
        self.inode(self.root_ino)
    }

    /// The inode with number `ino`, which must have been returned by [`Image::lookup`] or
    /// [`Image::entry_inode`] (or be the root) before.
    pub fn inode(&self, ino: u32) -> Result<Arc<Inode>> {
        let known = self.known_get(ino).ok_or(Error::UnknownInode(ino))?;
        self.inode_at(ino, known.inode_ref)
    }

    /// Looks `name` up in directory `dir`; `None` if absent.
    pub fn lookup(&self, dir: &Inode, name: &[u8]) -> Result<Option<Arc<Inode>>> {
        let listing = self.listing(dir)?;
        match listing.binary_search_by(|e| (*e.name).cmp(name)) {
            Ok(i) => self.entry_inode(dir, &listing[i]).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Decodes the inode an entry of `dir` points to, checking that the tree stays a tree:
    /// a directory's parent field must name `dir`, the root is never a child, and depth is
    /// capped. With those checks a walk from the root can never loop.
    pub fn entry_inode(&self, dir: &Inode, entry: &DirEntry) -> Result<Arc<Inode>> {
        let parent = self
            .known_get(dir.ino)
            .ok_or(Error::UnknownInode(dir.ino))?;
        let inode = self.inode_at(entry.ino, entry.inode_ref)?;
        if inode.ino != entry.ino || inode.kind != entry.kind {
            return Err(Error::corrupt(format!(
                "entry {:?} disagrees with its inode",
                String::from_utf8_lossy(&entry.name)
            )));
        }
        let depth = parent.depth + 1;
        if inode.is_dir() {
            if inode.ino == self.root_ino || inode.dir()?.parent != dir.ino {
                return Err(Error::corrupt(format!(
                    "directory cycle at {:?}",
                    String::from_utf8_lossy(&entry.name)
                )));
            }
            if depth > MAX_DEPTH {
                return Err(Error::Limit(format!("directory depth over {MAX_DEPTH}")));
            }
        }
        self.remember(inode.ino, entry.inode_ref, depth, dir.ino)?;
        Ok(inode)
    }

    /// The inode at `path` (components separated by `/`, relative to the image root), without
    /// following symlinks.
    pub fn resolve(&self, path: &[u8]) -> Result<Arc<Inode>> {
        let mut inode = self.root()?;
        for name in path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
        {
            let shown = || String::from_utf8_lossy(path).into_owned();
            if !inode.is_dir() {
                return Err(Error::NoEntry(shown()));
            }
            inode = self
                .lookup(&inode, name)?
                .ok_or_else(|| Error::NoEntry(shown()))?;
        }
        Ok(inode)
    }

    /// The target of a symlink.
    pub fn readlink<'a>(&self, inode: &'a Inode) -> Result<&'a [u8]> {
        match &inode.body {
            inode::Body::Symlink(target) => Ok(target),
            _ => Err(Error::WrongType("a symlink")),
        }
    }

    fn inode_at(&self, ino: u32, inode_ref: u64) -> Result<Arc<Inode>> {
        let key = Key {
            image: self.id,
            kind: Kind::Inode,
            pos: u64::from(ino),
            word: 0,
        };
        let value = self.cache.get_or_insert_with(&key, || {
            let inode = self.decode_inode(inode_ref)?;
            if inode.ino != ino {
                return Err(Error::corrupt(format!(
                    "inode reference for {ino} leads to inode {}",
                    inode.ino
                )));
            }
            Ok::<_, Error>(Value::Inode(Arc::new(inode)))
        })?;
        match value {
            Value::Inode(inode) => Ok(inode),
            _ => Err(Error::corrupt("inode cache entry of the wrong kind")),
        }
    }

    /// The directory `ino` was found in (a hard-linked file: the first one).
    pub fn parent(&self, ino: u32) -> Option<u32> {
        self.known_get(ino).map(|k| k.parent)
    }

    fn known_get(&self, ino: u32) -> Option<Known> {
        let known = self.known.read().unwrap_or_else(PoisonError::into_inner);
        known.get(&ino).copied()
    }

    fn remember(&self, ino: u32, inode_ref: u64, depth: u32, parent: u32) -> Result<()> {
        let mut known = self.known.write().unwrap_or_else(PoisonError::into_inner);
        let entry = known.entry(ino).or_insert(Known {
            inode_ref,
            depth,
            parent,
        });
        if entry.inode_ref != inode_ref {
            return Err(Error::corrupt(format!("two inodes claim number {ino}")));
        }
        Ok(())
    }

    /// The id table (uids and gids), read whole at open: at most 65535 entries.
    fn read_ids(&self) -> Result<Vec<u32>> {
        let count = usize::from(self.sb.id_count);
        let per_block = BLOCK_SIZE / 4;
        let mut ids = Vec::with_capacity(count);
        for block in 0..count.div_ceil(per_block) {
            let mut c = self.table_entry(self.sb.id_table, 4, (block * per_block) as u64)?;
            for _ in 0..per_block.min(count - ids.len()) {
                ids.push(c.u32()?);
            }
        }
        Ok(ids)
    }
}
