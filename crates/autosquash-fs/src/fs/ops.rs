//! The requests: lookup, forget, attributes, listings (with readdirplus accounting), the read
//! path and extended attributes. Everything answerable from memory is answered without
//! waiting; only mounting an image and reading uncached data wait on the store.

use super::lifecycle::guarded;
use super::*;

/// The most fetched ahead for one directory's neighbours.
const NEIGHBOURHOOD: u64 = 8 << 20;

impl AutoFs {
    /// Looks `name` up in `parent`; on success the kernel holds one more reference. Only a
    /// lookup in the root may wait (to mount an image); see [`AutoFs::lookup_now`].
    pub async fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        if parent != ROOT_INO {
            return self.lookup_below(parent, name);
        }
        let name = std::str::from_utf8(name).map_err(|_| FsError::NotFound)?;
        let m = self.mount(name).await?;
        self.image_root_entry(m)
    }

    /// The lookup answered without waiting, where it can be: below the root (metadata is in
    /// memory or in the tables), and in the root for an image already mounted. `None`: the
    /// lookup may need the store; run [`AutoFs::lookup`] where waiting is fine.
    pub fn lookup_now(&self, parent: u64, name: &[u8]) -> Option<FsResult<Attr>> {
        if parent != ROOT_INO {
            return Some(self.lookup_below(parent, name));
        }
        let m = self.current(std::str::from_utf8(name).ok()?).ok()??;
        Some(self.image_root_entry(m))
    }

    /// The entry of a mounted image's root; `m` comes with the kernel's reference counted.
    fn image_root_entry(&self, m: Arc<Mounted>) -> FsResult<Attr> {
        match self.engine(&m, || m.image.root()) {
            Ok(root) => {
                self.touch(&m);
                Ok(self.attr_of(&m, &root))
            }
            Err(e) => {
                // The kernel takes no reference on a failed lookup.
                m.lookups.fetch_sub(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    fn lookup_below(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        let (m, dir) = self.resolve(parent)?;
        if !dir.is_dir() {
            return Err(FsError::NotDir);
        }
        let child = self.engine(&m, || m.image.lookup(&dir, name))?;
        let child = child.ok_or(FsError::NotFound)?;
        m.lookups.fetch_add(1, Ordering::Relaxed);
        Ok(self.attr_of(&m, &child))
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let state = self.state();
        if let Some(m) = state.slots.get(&split(ino).0) {
            // Saturating: a confused kernel count must not wrap into "referenced forever".
            let _ = m
                .lookups
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    Some(v.saturating_sub(n))
                });
        }
    }

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        if ino == ROOT_INO {
            return Ok(self.root_attr());
        }
        if split(ino).0 == 0 {
            // A root entry listed before its image was mounted (see `readdir`).
            return Ok(Attr {
                ino,
                ..self.root_attr()
            });
        }
        let (m, inode) = self.resolve(ino)?;
        Ok(self.attr_of(&m, &inode))
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let (m, inode) = self.resolve(ino)?;
        let target = m.image.readlink(&inode).map_err(|_| FsError::Invalid)?;
        Ok(target.to_vec())
    }

    /// Entries of directory `ino` from `offset` on (0 is `.`, 1 is `..`, then the entries),
    /// each handed to `add` until it answers that the kernel's buffer is full: O(1) per entry.
    ///
    /// With `plus` (readdirplus), entries come with their attributes and, once added, count as
    /// kernel references, as lookups do. `.` and `..` carry none (the kernel does not take them
    /// from a readdirplus), nor do root entries of images not mounted yet (mounting every
    /// image for `ls` would defeat the lazy mount): they are listed under a placeholder number
    /// (slot 0) that the kernel must look up before use.
    pub fn readdir(
        &self,
        ino: u64,
        offset: u64,
        plus: bool,
        add: &mut dyn FnMut(&DirItem, Option<&Attr>) -> bool,
    ) -> FsResult<()> {
        let dot = |ino, name: &[u8], next| DirItem {
            ino,
            kind: FileKind::Directory,
            name: name.to_vec(),
            next,
        };
        if ino == ROOT_INO {
            let mut state = self.state();
            let state = &mut *state;
            for item in [dot(ROOT_INO, b".", 1), dot(ROOT_INO, b"..", 2)] {
                if item.next > offset && add(&item, None) {
                    return Ok(());
                }
            }
            let skip = offset.saturating_sub(2) as usize;
            for (i, name) in state.images.keys().enumerate().skip(skip) {
                let mounted = state.mounted.get(name).and_then(|m| {
                    let root = m.image.root().ok()?;
                    Some((m, self.attr_of(m, &root)))
                });
                let ino = match &mounted {
                    Some((_, attr)) => attr.ino,
                    None => {
                        let next = state.placeholders.len() as u64 + 2;
                        match state.placeholders.get(name) {
                            Some(&ino) => ino,
                            None => {
                                state.placeholders.insert(name.clone(), next);
                                self.record(&super::restore::placeholder_line(name, next));
                                next
                            }
                        }
                    }
                };
                let item = DirItem {
                    ino,
                    kind: FileKind::Directory,
                    name: name.as_bytes().to_vec(),
                    next: 3 + i as u64,
                };
                let attr = mounted.as_ref().filter(|_| plus).map(|(_, a)| a);
                if add(&item, attr) {
                    break;
                }
                if let Some((m, _)) = mounted.filter(|_| plus) {
                    m.lookups.fetch_add(1, Ordering::Relaxed);
                }
            }
            return Ok(());
        }
        let (m, dir) = self.resolve(ino)?;
        if !dir.is_dir() {
            return Err(FsError::NotDir);
        }
        let parent = if dir.ino == m.image.root_ino() {
            ROOT_INO
        } else {
            join(m.slot, dir.parent().unwrap_or(dir.ino))
        };
        for item in [dot(ino, b".", 1), dot(parent, b"..", 2)] {
            if item.next > offset && add(&item, None) {
                return Ok(());
            }
        }
        let listing = self.engine(&m, || m.image.listing(&dir))?;
        if plus {
            self.note_listed(&m, dir.ino);
        }
        let skip = offset.saturating_sub(2) as usize;
        for (i, entry) in listing.iter().enumerate().skip(skip) {
            let item = DirItem {
                ino: join(m.slot, entry.ino),
                kind: entry.kind,
                name: entry.name.to_vec(),
                next: 3 + i as u64,
            };
            if !plus {
                if add(&item, None) {
                    break;
                }
                continue;
            }
            let inode = self.engine(&m, || m.image.entry_inode(&dir, entry))?;
            if add(&item, Some(&self.attr_of(&m, &inode))) {
                break;
            }
            m.lookups.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Up to `size` bytes of file `ino` from `offset`. Files are opened without a request,
    /// so reads name the inode. What comes next is fetched ahead by the store's pipeline
    /// (it sees the image's bytes read in order); this only hints at a file's neighbours.
    pub async fn read(&self, ino: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let (m, inode) = self.resolve(ino)?;
        if inode.kind != FileKind::File {
            return Err(FsError::Invalid);
        }
        if let Some(span) = self.neighbourhood(&m, &inode) {
            self.store.prefetch(m.image.meta(), span);
        }
        let data = guarded(&m, m.image.read(&inode, offset, size as usize))
            .await?
            .map_err(|e| self.fail(&m, e))?;
        if let Some(first) = self.push_ahead(&m, &inode, offset) {
            let _ = tokio::time::timeout(super::push::FIRST_WAIT, first).await;
        }
        Ok(data)
    }

    /// Locality for an image that is not being hydrated: on the second file read in one
    /// directory, the data of that directory's other files is fetched ahead (at most
    /// [`NEIGHBOURHOOD`] bytes), so reading many small files costs a few round trips while
    /// a lone read fetches only what it needs.
    fn neighbourhood(&self, m: &Mounted, inode: &Inode) -> Option<std::ops::Range<u64>> {
        // A local image (nothing to fetch ahead) or one being hydrated needs no hints.
        if !self.store.takes_hints() || m.hydrating() {
            return None;
        }
        let parent = m.image.parent(inode.ino)?;
        {
            let mut dirs = m.dirs_read.lock().unwrap_or_else(PoisonError::into_inner);
            if dirs.len() > 65_536 {
                dirs.clear();
            }
            let dir = dirs.entry(parent).or_default();
            if dir.fetched || dir.last == inode.ino {
                return None;
            }
            dir.files += 1;
            dir.last = inode.ino;
            if dir.files < 2 {
                return None;
            }
            dir.fetched = true;
        }
        // A neighbour that fails to decode is no reason to fail this read.
        self.engine(m, || {
            Ok(m.image.neighbourhood(inode, NEIGHBOURHOOD).ok().flatten())
        })
        .ok()
        .flatten()
    }

    /// The value of extended attribute `name` (only that value is decoded).
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        if ino == ROOT_INO {
            return Err(FsError::NoXattr);
        }
        let (m, inode) = self.resolve(ino)?;
        self.engine(&m, || m.image.xattr(&inode, name))?
            .ok_or(FsError::NoXattr)
    }

    /// Names of the extended attributes, each followed by a NUL (the listxattr format).
    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        if ino == ROOT_INO {
            return Ok(Vec::new());
        }
        let (m, inode) = self.resolve(ino)?;
        let mut out = Vec::new();
        for name in self.engine(&m, || m.image.xattr_names(&inode))? {
            out.extend_from_slice(&name);
            out.push(0);
        }
        Ok(out)
    }

    pub fn statfs(&self, ino: u64) -> FsResult<FsStat> {
        if ino == ROOT_INO {
            return Ok(FsStat {
                blocks: 0,
                files: self.state().images.len() as u64,
                bsize: 4096,
            });
        }
        let (m, _) = self.resolve(ino)?;
        let info = m.image.info();
        Ok(FsStat {
            blocks: info.bytes_used.div_ceil(u64::from(info.block_size)),
            files: u64::from(info.inode_count),
            bsize: info.block_size,
        })
    }
}
