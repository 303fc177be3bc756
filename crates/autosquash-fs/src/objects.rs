//! The plain object view: a prefix's objects as a read-only tree of files, directories made
//! from the `/` in keys, the way users read single large files (reference genomes) without
//! putting them in an image. Reads are ranged reads pinned to the ETag, straight from the
//! store (the disk cache and its prefetch pipeline, for S3); the kernel's page cache keeps
//! what was read.
//!
//! Versions never mix: a file's inode number belongs to one (key, ETag), so a replaced object
//! is a new inode with no page cache, and the kernel is told to drop the old name's dentry.
//! A file still open on the old version keeps its inode and reads that version (pinned).
//!
//! Handover (see the handover module): every number is recorded in the state log when it is
//! first handed out, one line each (a file's with its version), so that a successor gives
//! the same objects the same numbers; files of versions gone from the listing are restored
//! too, and kept until the daemon stops (their kernel references are not recorded).

use crate::error::{FsError, FsResult};
use crate::fs::{Attr, DirItem, FsStat, ROOT_INO};
use crate::handover::StateLog;
use crate::tree::Invalidation;
use autosquash_core::{FileKind, ObjectMeta, Store};
use bytes::Bytes;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::warn;

/// The block size shown for objects (reads come in up to 1 MiB anyway).
const CHUNK: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct ObjectConfig {
    pub prefix: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

enum Node {
    Dir(BTreeMap<Vec<u8>, u64>),
    File(Arc<FileNode>),
}

/// One object version, as a file.
struct FileNode {
    meta: ObjectMeta,
}

#[derive(Default)]
struct State {
    /// The current tree, plus files of replaced versions the kernel still references.
    nodes: HashMap<u64, Node>,
    /// Directories keep their inode number across refreshes, files as long as their version
    /// does not change; numbers are never reused.
    inos: HashMap<String, u64>,
    next_ino: u64,
    /// Kernel references per inode (lookups and readdirplus entries minus forgets).
    refs: HashMap<u64, u64>,
    /// Files of replaced versions kept only because the kernel still references them.
    retired: std::collections::HashSet<u64>,
    /// Caches the kernel must drop after a refresh changed the tree (see `expire`).
    changed: Vec<Invalidation>,
    /// Every number below this one is in the state log.
    recorded_below: u64,
}

pub struct ObjectFs {
    store: Arc<dyn Store>,
    config: ObjectConfig,
    state: Mutex<State>,
    log: Mutex<Option<Arc<StateLog>>>,
    mtime: u32,
}

/// The kernel reference count of a file restored from a predecessor's log.
const UNKNOWN_REFS: u64 = 1 << 62;

impl ObjectFs {
    pub fn new(store: Arc<dyn Store>, config: ObjectConfig) -> Arc<Self> {
        let mut state = State {
            next_ino: ROOT_INO + 1,
            ..State::default()
        };
        state.nodes.insert(ROOT_INO, Node::Dir(BTreeMap::new()));
        Arc::new(Self {
            store,
            config,
            state: Mutex::new(state),
            log: Mutex::default(),
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
            Node::File(f) => (FileKind::File, 0o444, f.meta.size, 1),
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

/// Valid path components of a key under the prefix; `None` for keys that could confuse the
/// tree (empty components, `.`, `..`), which are skipped.
fn components(key: &str) -> Option<Vec<&str>> {
    let parts: Vec<&str> = key.split('/').collect();
    parts
        .iter()
        .all(|p| !p.is_empty() && *p != "." && *p != ".." && !p.contains('\0'))
        .then_some(parts)
}

impl ObjectFs {
    /// The kernel took one more reference to `ino`.
    fn referenced(state: &mut State, ino: u64) {
        *state.refs.entry(ino).or_default() += 1;
    }

    /// Appends the numbers handed out since the last call to the state log, if there is one.
    fn record_new(&self) {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(log) = log.as_ref() else {
            return;
        };
        let lines: Vec<String> = {
            let mut state = self.state();
            let below = state.recorded_below;
            state.recorded_below = state.next_ino;
            let mut new: Vec<(&String, u64)> = state
                .inos
                .iter()
                .filter(|(_, ino)| **ino >= below)
                .map(|(id, ino)| (id, *ino))
                .collect();
            new.sort_by_key(|(_, ino)| *ino);
            new.into_iter()
                .map(|(id, ino)| {
                    let mut line = json!({"object": id, "ino": ino});
                    if let Some(Node::File(f)) = state.nodes.get(&ino) {
                        line["key"] = json!(f.meta.key);
                        line["size"] = json!(f.meta.size);
                        line["etag"] = json!(f.meta.etag);
                    }
                    line.to_string()
                })
                .collect()
        };
        for line in lines {
            if let Err(e) = log.append(&line) {
                warn!(error = %e, "cannot record the mount's state for a successor");
                return;
            }
        }
    }
    /// Makes the tree that `objects` (a listing) shows, keeping the numbers of what was
    /// there (and the files of replaced versions the kernel still references).
    fn apply_listing(&self, objects: Vec<ObjectMeta>) {
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
                        state.changed.push(Invalidation::Entry(dir, name.to_vec()));
                    }
                }
                if is_file {
                    let node = match state.nodes.get(&ino) {
                        Some(Node::File(f)) => f.clone(),
                        _ => Arc::new(FileNode {
                            meta: object.clone(),
                        }),
                    };
                    nodes.entry(ino).or_insert(Node::File(node));
                } else {
                    nodes
                        .entry(ino)
                        .or_insert_with(|| Node::Dir(BTreeMap::new()));
                    dir = ino;
                }
            }
        }
        // Listings that changed are dropped from the kernel's cache; files of replaced
        // versions the kernel still references stay until forgotten.
        for (ino, node) in &nodes {
            if let (Node::Dir(new), Some(Node::Dir(old))) = (node, state.nodes.get(ino))
                && new != old
            {
                state.changed.push(Invalidation::Inode(*ino));
            }
        }
        for &ino in state.refs.keys() {
            if let Some(node @ Node::File(_)) = state.nodes.remove(&ino)
                && !nodes.contains_key(&ino)
            {
                nodes.insert(ino, node);
                state.retired.insert(ino);
            }
        }
        state.inos = inos;
        state.nodes = nodes;
    }
}

#[async_trait::async_trait]
impl crate::tree::Tree for ObjectFs {
    async fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        crate::tree::Tree::lookup_now(self, parent, name).unwrap_or(Err(FsError::NotFound))
    }

    fn lookup_now(&self, parent: u64, name: &[u8]) -> Option<FsResult<Attr>> {
        let mut state = self.state();
        let Some(Node::Dir(children)) = state.nodes.get(&parent) else {
            return Some(Err(FsError::NotDir));
        };
        let Some(&ino) = children.get(name) else {
            return Some(Err(FsError::NotFound));
        };
        let attr = self.attr(ino, state.nodes.get(&ino)?);
        Self::referenced(&mut state, ino);
        Some(Ok(attr))
    }

    fn forget(&self, ino: u64, n: u64) {
        let mut state = self.state();
        let left = match state.refs.get_mut(&ino) {
            Some(refs) => {
                *refs = refs.saturating_sub(n);
                *refs
            }
            None => return,
        };
        if left == 0 {
            state.refs.remove(&ino);
            // A replaced version nobody references any more.
            if state.retired.remove(&ino) {
                state.nodes.remove(&ino);
            }
        }
    }

    fn getattr(&self, ino: u64) -> FsResult<Attr> {
        self.with_node(ino, |node| Ok(self.attr(ino, node)))
    }

    fn readlink(&self, _ino: u64) -> FsResult<Vec<u8>> {
        Err(FsError::Invalid)
    }

    fn readdir(
        &self,
        ino: u64,
        offset: u64,
        plus: bool,
        add: &mut dyn FnMut(&DirItem, Option<&Attr>) -> bool,
    ) -> FsResult<()> {
        let mut state = self.state();
        let Some(Node::Dir(children)) = state.nodes.get(&ino) else {
            return Err(FsError::NotDir);
        };
        let dots = [(ino, b".".as_slice(), 1), (ROOT_INO, b"..".as_slice(), 2)];
        for (dot, name, next) in dots {
            let item = DirItem {
                ino: dot,
                kind: FileKind::Directory,
                name: name.to_vec(),
                next,
            };
            if next > offset && add(&item, None) {
                return Ok(());
            }
        }
        let mut referenced = Vec::new();
        let skip = offset.saturating_sub(2) as usize;
        for (i, (name, &child)) in children.iter().enumerate().skip(skip) {
            let Some(node) = state.nodes.get(&child) else {
                continue;
            };
            let attr = self.attr(child, node);
            let item = DirItem {
                ino: child,
                kind: attr.kind,
                name: name.clone(),
                next: 3 + i as u64,
            };
            if add(&item, plus.then_some(&attr)) {
                break;
            }
            if plus {
                referenced.push(child);
            }
        }
        for child in referenced {
            Self::referenced(&mut state, child);
        }
        Ok(())
    }

    async fn read(&self, ino: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let h = match self.state().nodes.get(&ino) {
            Some(Node::File(f)) => f.clone(),
            Some(Node::Dir(_)) => return Err(FsError::IsDir),
            None => return Err(FsError::Stale(format!("inode {ino}"))),
        };
        let end = (offset + u64::from(size)).min(h.meta.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        // Straight from the store: the kernel's page cache keeps what was read, the disk
        // cache the object's chunks, and the store's pipeline fetches ahead of a sequential
        // reader.
        self.store.read(&h.meta, offset..end).await.map_err(|e| {
            warn!(key = %h.meta.key, error = %e, "object read failed");
            e.into()
        })
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
        self.apply_listing(objects);
        self.record_new();
        Ok(())
    }

    fn record_to(&self, log: Arc<StateLog>) -> bool {
        *self.log.lock().unwrap_or_else(PoisonError::into_inner) = Some(log);
        self.record_new();
        true
    }

    /// Gives the objects of the first listing the numbers a predecessor gave them (new ones
    /// get new numbers), and brings back the files it recorded that are gone from the
    /// listing since.
    async fn restore(&self, lines: &[String]) -> usize {
        let mut inos = HashMap::new();
        let mut files = Vec::new();
        for line in lines {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                warn!(line, "a state line that does not parse; ignored");
                continue;
            };
            let (Some(id), Some(ino)) = (v["object"].as_str(), v["ino"].as_u64()) else {
                continue;
            };
            if ino <= ROOT_INO {
                continue;
            }
            inos.insert(id.to_owned(), ino);
            if let (Some(key), Some(size), Some(etag)) =
                (v["key"].as_str(), v["size"].as_u64(), v["etag"].as_str())
            {
                let meta = ObjectMeta {
                    key: key.to_owned(),
                    size,
                    etag: etag.to_owned(),
                };
                files.push((ino, meta));
            }
        }
        let restored = inos.len();
        let listing: Vec<ObjectMeta> = {
            let mut state = self.state();
            let listing = state
                .nodes
                .values()
                .filter_map(|n| match n {
                    Node::File(f) => Some(f.meta.clone()),
                    Node::Dir(_) => None,
                })
                .collect();
            let next = inos.values().max().map_or(ROOT_INO + 1, |m| m + 1);
            *state = State {
                next_ino: next,
                recorded_below: next,
                inos,
                ..State::default()
            };
            state.nodes.insert(ROOT_INO, Node::Dir(BTreeMap::new()));
            for (ino, meta) in files {
                state
                    .nodes
                    .insert(ino, Node::File(Arc::new(FileNode { meta })));
                state.refs.insert(ino, UNKNOWN_REFS);
            }
            listing
        };
        self.apply_listing(listing);
        restored
    }

    fn expire(&self) -> Vec<Invalidation> {
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
            "kernel_refs": state.refs.len(),
        })
    }
}
