//! The cost of the FUSE protocol alone: a copy of a directory held in memory, served through
//! autosquash's own FUSE adapter (the same threads, zero-message open, readdirplus, TTLs and
//! readahead) with no engine behind it. `bench/run` times its scenarios on it as the floor
//! that no FUSE daemon on this machine can beat: what remains above it is autosquash's own.
//!
//! Usage: fuse_floor SOURCE_DIR MOUNTPOINT (serves until SIGTERM or SIGINT, then unmounts).

use async_trait::async_trait;
use autosquash_core::FileKind;
use autosquash_fs::error::{FsError, FsResult};
use autosquash_fs::fs::{Attr, DirItem, FsStat};
use autosquash_fs::fuse::{MountConfig, mount};
use autosquash_fs::tree::{Invalidation, Tree};
use bytes::Bytes;
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

struct Node {
    attr: Attr,
    /// Directories: (name, ino) in listing order.
    children: Vec<(Vec<u8>, u64)>,
    /// Files: the contents; symlinks: the target.
    data: Bytes,
}

struct MemoryTree {
    /// Indexed by inode number.
    nodes: Vec<Node>,
    names: HashMap<(u64, Vec<u8>), u64>,
}

impl MemoryTree {
    fn load(root: &Path) -> std::io::Result<Self> {
        let mut tree = MemoryTree {
            nodes: Vec::new(),
            names: HashMap::new(),
        };
        // Index 0 is a placeholder: the root, added first, is inode 1 as FUSE wants.
        tree.nodes.push(Node {
            attr: attr_of(0, FileKind::Directory, &std::fs::metadata(root)?),
            children: Vec::new(),
            data: Bytes::new(),
        });
        tree.add(root)?;
        Ok(tree)
    }

    /// Adds `path` and, for a directory, everything under it; returns its inode number.
    fn add(&mut self, path: &Path) -> std::io::Result<u64> {
        let meta = std::fs::symlink_metadata(path)?;
        let ino = self.nodes.len() as u64;
        let (kind, data) = if meta.is_dir() {
            (FileKind::Directory, Bytes::new())
        } else if meta.is_symlink() {
            let target = std::fs::read_link(path)?;
            (
                FileKind::Symlink,
                Bytes::copy_from_slice(target.as_os_str().as_bytes()),
            )
        } else {
            (FileKind::File, Bytes::from(std::fs::read(path)?))
        };
        let mut attr = attr_of(ino, kind, &meta);
        attr.size = if kind == FileKind::Directory {
            0
        } else {
            data.len() as u64
        };
        self.nodes.push(Node {
            attr,
            children: Vec::new(),
            data,
        });
        if kind == FileKind::Directory {
            let mut entries: Vec<_> = std::fs::read_dir(path)?.collect::<Result<_, _>>()?;
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                let child = self.add(&entry.path())?;
                let name = entry.file_name().as_bytes().to_vec();
                self.nodes[ino as usize]
                    .children
                    .push((name.clone(), child));
                self.names.insert((ino, name), child);
            }
        }
        Ok(ino)
    }

    fn node(&self, ino: u64) -> FsResult<&Node> {
        self.nodes.get(ino as usize).ok_or(FsError::NotFound)
    }
}

fn attr_of(ino: u64, kind: FileKind, meta: &std::fs::Metadata) -> Attr {
    Attr {
        ino,
        kind,
        perm: (meta.permissions().mode() & 0o7777) as u16,
        nlink: 1,
        uid: meta.uid(),
        gid: meta.gid(),
        size: 0,
        mtime: meta.mtime() as u32,
        rdev: 0,
        blksize: 4096,
    }
}

#[async_trait]
impl Tree for MemoryTree {
    async fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        self.lookup_now(parent, name)
            .unwrap_or(Err(FsError::NotFound))
    }
    fn lookup_now(&self, parent: u64, name: &[u8]) -> Option<FsResult<Attr>> {
        Some(match self.names.get(&(parent, name.to_vec())) {
            Some(&ino) => self.node(ino).map(|n| n.attr.clone()),
            None => Err(FsError::NotFound),
        })
    }
    fn forget(&self, _ino: u64, _n: u64) {}
    fn getattr(&self, ino: u64) -> FsResult<Attr> {
        self.node(ino).map(|n| n.attr.clone())
    }
    fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        Ok(self.node(ino)?.data.to_vec())
    }
    fn readdir(
        &self,
        ino: u64,
        offset: u64,
        plus: bool,
        add: &mut dyn FnMut(&DirItem, Option<&Attr>) -> bool,
    ) -> FsResult<()> {
        let node = self.node(ino)?;
        for (i, (name, child)) in node.children.iter().enumerate().skip(offset as usize) {
            let attr = self.node(*child)?.attr.clone();
            let item = DirItem {
                ino: *child,
                kind: attr.kind,
                name: name.clone(),
                next: i as u64 + 1,
            };
            if add(&item, plus.then_some(&attr)) {
                break;
            }
        }
        Ok(())
    }
    async fn read(&self, ino: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let data = &self.node(ino)?.data;
        let start = (offset as usize).min(data.len());
        let end = start.saturating_add(size as usize).min(data.len());
        Ok(data.slice(start..end))
    }
    fn getxattr(&self, _ino: u64, _name: &[u8]) -> FsResult<Vec<u8>> {
        Err(FsError::NoXattr)
    }
    fn listxattr(&self, _ino: u64) -> FsResult<Vec<u8>> {
        Ok(Vec::new())
    }
    fn statfs(&self, _ino: u64) -> FsResult<FsStat> {
        Ok(FsStat {
            blocks: 0,
            files: self.nodes.len() as u64,
            bsize: 4096,
        })
    }
    async fn refresh(&self) -> autosquash_core::Result<()> {
        Ok(())
    }
    fn expire(&self) -> Vec<Invalidation> {
        Vec::new()
    }
    fn describe(&self) -> String {
        "fuse-floor".to_owned()
    }
    fn status(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, source, mountpoint] = args.as_slice() else {
        return Err("usage: fuse_floor SOURCE_DIR MOUNTPOINT".into());
    };
    let tree = Arc::new(
        MemoryTree::load(Path::new(source)).map_err(|e| format!("loading {source}: {e}"))?,
    );
    let runtime = tokio::runtime::Runtime::new()?;
    let mounted = mount(
        tree,
        Path::new(mountpoint),
        &MountConfig::default(),
        runtime.handle().clone(),
        None,
    )?;
    println!("ready");
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok::<_, std::io::Error>(())
    })?;
    mounted.unmount()?;
    Ok(())
}
