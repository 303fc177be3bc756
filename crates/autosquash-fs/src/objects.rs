//! The plain object view: a prefix's objects as a read-only tree of files, directories made
//! from the `/` in keys, the way users read single large files (reference genomes) without
//! putting them in an image. Reads are ranged GETs of 1 MiB chunks pinned to the ETag,
//! through the shared cache (single-flight), with sequential readahead.
//!
//! Versions never mix: a file's inode number belongs to one (key, ETag), so a replaced object
//! is a new inode with no page cache, and the kernel is told to drop the old name's dentry.
//! A file still open on the old version keeps its inode and reads that version (pinned).

use crate::error::{FsError, FsResult};
use crate::fs::{Attr, DirItem, FsStat, ROOT_INO};
use autosquash_core::{BlockCache, FileKind, ObjectMeta, Store};
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::warn;

const CHUNK: u64 = 1 << 20;
/// Chunks fetched ahead of a sequential reader.
const READAHEAD_CHUNKS: u64 = 8;

#[derive(Debug, Clone)]
pub struct ObjectConfig {
    pub prefix: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

enum Node {
    Dir(BTreeMap<Vec<u8>, u64>),
    File(ObjectMeta, u64),
}

struct Handle {
    ino: u64,
    meta: ObjectMeta,
    namespace: u64,
    /// Where the last read ended, to detect sequential access.
    next: AtomicU64,
}

#[derive(Default)]
struct State {
    nodes: HashMap<u64, Node>,
    /// Directories keep their inode number across refreshes, files as long as their version
    /// does not change; numbers are never reused.
    inos: HashMap<String, u64>,
    next_ino: u64,
    /// One cache namespace per object version.
    namespaces: HashMap<(String, String), u64>,
    handles: HashMap<u64, Arc<Handle>>,
    next_handle: u64,
    /// (parent, name) whose file changed version, for the kernel to drop (see `expire`).
    changed: Vec<(u64, Vec<u8>)>,
}

pub struct ObjectFs {
    store: Arc<dyn Store>,
    cache: Arc<BlockCache>,
    config: ObjectConfig,
    state: Mutex<State>,
    mtime: u32,
}

impl ObjectFs {
    pub fn new(store: Arc<dyn Store>, cache: Arc<BlockCache>, config: ObjectConfig) -> Arc<Self> {
        let mut state = State {
            next_ino: ROOT_INO + 1,
            next_handle: 1,
            ..State::default()
        };
        state.nodes.insert(ROOT_INO, Node::Dir(BTreeMap::new()));
        Arc::new(Self {
            store,
            cache,
            config,
            state: Mutex::new(state),
            mtime: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as u32),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn attr(&self, ino: u64, node: &Node) -> Attr {
        let (kind, perm, size, nlink) = match node {
            Node::Dir(_) => (FileKind::Directory, 0o555, 0, 2),
            Node::File(meta, _) => (FileKind::File, 0o444, meta.size, 1),
        };
        Attr {
            ino,
            kind,
            perm,
            nlink,
            uid: self.config.uid.unwrap_or(0),
            gid: self.config.gid.unwrap_or(0),
            size,
            mtime: self.mtime,
            rdev: 0,
            blksize: CHUNK as u32,
        }
    }

    fn with_node<T>(&self, ino: u64, f: impl FnOnce(&Node) -> FsResult<T>) -> FsResult<T> {
        let state = self.state();
        let node = state
            .nodes
            .get(&ino)
            .ok_or_else(|| FsError::Stale(format!("inode {ino}")))?;
        f(node)
    }
}

/// Chunk `index` of an object version, from the cache or the store.
async fn chunk(store: &dyn Store, cache: &BlockCache, h: &Handle, index: u64) -> FsResult<Bytes> {
    let start = index * CHUNK;
    let end = (start + CHUNK).min(h.meta.size);
    let fetch = store.read(&h.meta, start..end);
    cache
        .object_chunk(h.namespace, index, fetch)
        .await
        .map_err(|e| {
            warn!(key = %h.meta.key, error = %e, "object read failed");
            e.into()
        })
}

/// Valid path components of a key under the prefix; `None` for keys that could confuse the
/// tree (empty components, `.`, `..`), which are skipped.
fn components(key: &str) -> Option<Vec<&str>> {
    let parts: Vec<&str> = key.split('/').collect();
    parts
        .iter()
        .all(|p| !p.is_empty() && *p != "." && *p != ".." && !p.contains('\0'))
        .then_some(parts)
}

#[async_trait::async_trait]
impl crate::tree::Tree for ObjectFs {
    async fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        let state = self.state();
        let Some(Node::Dir(children)) = state.nodes.get(&parent) else {
            return Err(FsError::NotDir);
        };
        let ino = *children.get(name).ok_or(FsError::NotFound)?;
        let node = state.nodes.get(&ino).ok_or(FsError::NotFound)?;
        Ok(self.attr(ino, node))
    }

    fn lookup_may_block(&self, _parent: u64) -> bool {
        false
    }

    fn forget(&self, _ino: u64, _n: u64) {}

    fn getattr(&self, ino: u64) -> FsResult<Attr> {
        self.with_node(ino, |node| Ok(self.attr(ino, node)))
    }

    fn readlink(&self, _ino: u64) -> FsResult<Vec<u8>> {
        Err(FsError::Invalid)
    }

    fn readdir(&self, ino: u64, offset: u64) -> FsResult<Vec<DirItem>> {
        let state = self.state();
        let Some(Node::Dir(children)) = state.nodes.get(&ino) else {
            return Err(FsError::NotDir);
        };
        let mut items = vec![
            DirItem {
                ino,
                kind: FileKind::Directory,
                name: b".".to_vec(),
                next: 1,
            },
            DirItem {
                ino: ROOT_INO,
                kind: FileKind::Directory,
                name: b"..".to_vec(),
                next: 2,
            },
        ];
        for (i, (name, child)) in children.iter().enumerate() {
            let kind = match state.nodes.get(child) {
                Some(Node::Dir(_)) => FileKind::Directory,
                _ => FileKind::File,
            };
            items.push(DirItem {
                ino: *child,
                kind,
                name: name.clone(),
                next: 3 + i as u64,
            });
        }
        Ok(items
            .into_iter()
            .skip_while(|item| item.next <= offset)
            .collect())
    }

    fn open(&self, ino: u64, write: bool) -> FsResult<u64> {
        if write {
            return Err(FsError::ReadOnly);
        }
        let mut state = self.state();
        let (meta, namespace) = match state.nodes.get(&ino) {
            Some(Node::File(meta, namespace)) => (meta.clone(), *namespace),
            Some(Node::Dir(_)) => return Err(FsError::IsDir),
            None => return Err(FsError::Stale(format!("inode {ino}"))),
        };
        let fh = state.next_handle;
        state.next_handle += 1;
        state.handles.insert(
            fh,
            Arc::new(Handle {
                ino,
                meta,
                namespace,
                next: AtomicU64::new(0),
            }),
        );
        Ok(fh)
    }

    async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let h = self
            .state()
            .handles
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)?;
        let end = (offset + u64::from(size)).min(h.meta.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let (first, last) = (offset / CHUNK, (end - 1) / CHUNK);
        // Sequential reader: fetch the next chunks in the background. The kernel's own
        // readahead is slightly out of order, so "near the last end" counts as sequential.
        let previous = h.next.swap(end, Ordering::Relaxed);
        if offset.abs_diff(previous) <= CHUNK {
            let max = h.meta.size.div_ceil(CHUNK);
            for index in last + 1..(last + 1 + READAHEAD_CHUNKS).min(max) {
                let (store, cache, h) = (self.store.clone(), self.cache.clone(), h.clone());
                tokio::spawn(async move {
                    let _ = chunk(&*store, &cache, &h, index).await;
                });
            }
        }
        let store = &*self.store;
        let chunks =
            futures::future::try_join_all((first..=last).map(|i| chunk(store, &self.cache, &h, i)))
                .await?;
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for (i, chunk) in (first..=last).zip(chunks) {
            let base = i * CHUNK;
            let from = offset.saturating_sub(base) as usize;
            let to = ((end - base) as usize).min(chunk.len());
            if from > to {
                return Err(FsError::Io(format!("short chunk of {}", h.meta.key)));
            }
            out.extend_from_slice(&chunk[from..to]);
        }
        Ok(out.freeze())
    }

    fn release(&self, fh: u64) {
        self.state().handles.remove(&fh);
    }

    fn getxattr(&self, _ino: u64, _name: &[u8]) -> FsResult<Vec<u8>> {
        Err(FsError::NoXattr)
    }

    fn listxattr(&self, _ino: u64) -> FsResult<Vec<u8>> {
        Ok(Vec::new())
    }

    fn statfs(&self, _ino: u64) -> FsResult<FsStat> {
        let files = self.state().nodes.len() as u64;
        Ok(FsStat {
            blocks: 0,
            files,
            bsize: CHUNK as u32,
        })
    }

    async fn refresh(&self) -> autosquash_core::Result<()> {
        let objects = self.store.list(&self.config.prefix).await?;
        let mut state = self.state();
        let state = &mut *state;
        let mut nodes: HashMap<u64, Node> = HashMap::new();
        nodes.insert(ROOT_INO, Node::Dir(BTreeMap::new()));
        let mut inos = HashMap::new();
        for object in objects {
            let Some(rel) = object.key.strip_prefix(&self.config.prefix) else {
                continue;
            };
            let Some(parts) = components(rel) else {
                continue;
            };
            let mut dir = ROOT_INO;
            let mut path = String::new();
            for (i, part) in parts.iter().enumerate() {
                path.push('/');
                path.push_str(part);
                let is_file = i + 1 == parts.len();
                // A file's number is its version's: NUL cannot occur in a key.
                let id = match is_file {
                    true => format!("f{path}\0{}", object.etag),
                    false => format!("d{path}"),
                };
                let ino = *state.inos.entry(id.clone()).or_insert_with(|| {
                    state.next_ino += 1;
                    state.next_ino - 1
                });
                inos.insert(id, ino);
                if let Some(Node::Dir(children)) = nodes.get_mut(&dir) {
                    let name = part.as_bytes();
                    let shown = children.entry(name.to_vec()).or_insert(ino);
                    let before = match state.nodes.get(&dir) {
                        Some(Node::Dir(old)) => old.get(name).copied(),
                        _ => None,
                    };
                    if before.is_some_and(|b| b != *shown) {
                        state.changed.push((dir, name.to_vec()));
                    }
                }
                if is_file {
                    let version = (object.key.clone(), object.etag.clone());
                    let namespace = *state
                        .namespaces
                        .entry(version)
                        .or_insert_with(BlockCache::namespace);
                    nodes
                        .entry(ino)
                        .or_insert_with(|| Node::File(object.clone(), namespace));
                } else {
                    nodes
                        .entry(ino)
                        .or_insert_with(|| Node::Dir(BTreeMap::new()));
                    dir = ino;
                }
            }
        }
        // Files open on a version that is gone keep their inode (getattr on an open file).
        for h in state.handles.values() {
            nodes
                .entry(h.ino)
                .or_insert_with(|| Node::File(h.meta.clone(), h.namespace));
        }
        let versions: std::collections::HashSet<(String, String)> = nodes
            .values()
            .filter_map(|n| match n {
                Node::File(meta, _) => Some((meta.key.clone(), meta.etag.clone())),
                Node::Dir(_) => None,
            })
            .collect();
        state.namespaces.retain(|v, _| versions.contains(v));
        state.inos = inos;
        state.nodes = nodes;
        Ok(())
    }

    fn expire(&self) -> Vec<(u64, Vec<u8>)> {
        std::mem::take(&mut self.state().changed)
    }

    fn describe(&self) -> String {
        format!("{}/{}", self.store.describe(), self.config.prefix)
    }

    fn status(&self) -> serde_json::Value {
        let state = self.state();
        let files = state
            .nodes
            .values()
            .filter(|n| matches!(n, Node::File(..)))
            .count();
        serde_json::json!({
            "kind": "objects",
            "source": self.describe(),
            "objects": files,
            "open_files": state.handles.len(),
        })
    }
}
