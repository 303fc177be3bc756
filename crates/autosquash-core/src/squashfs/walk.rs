//! The one walk of an image's tree, shared by everything that visits every entry: the fuzz
//! target, the tests, pack's read-back verification, the engine benchmark.
//!
//! Metadata only (synchronous): callers read file data themselves. An entry that cannot be
//! decoded, or a directory that cannot be listed, is yielded with its error and the walk goes
//! on with the rest, so one bad entry of a hostile image does not hide the others.

use super::{DirEntry, Image, Inode};
use crate::error::Result;
use std::sync::Arc;

/// One entry met by [`Image::walk`]: its path below the image root (components joined by
/// `/`) and its inode, or why it could not be decoded or listed.
pub struct Walked {
    pub path: Vec<u8>,
    pub inode: Result<Arc<Inode>>,
}

/// A directory being walked: its path, inode, entries and the next one to visit.
struct Open {
    path: Vec<u8>,
    dir: Arc<Inode>,
    entries: Arc<[DirEntry]>,
    next: usize,
}

/// Depth-first iterator over an image's entries (see [`Image::walk`]).
pub struct Walk<'a> {
    image: &'a Image,
    stack: Vec<Open>,
    left: usize,
    /// Why the root could not be listed, yielded first.
    root_error: Option<crate::Error>,
}

impl Image {
    /// Every entry below the root, depth first, at most `limit` of them (a hostile image may
    /// claim millions). The root itself is not yielded; a root that cannot be listed is.
    pub fn walk(&self, limit: usize) -> Walk<'_> {
        let mut walk = Walk {
            image: self,
            stack: Vec::new(),
            left: limit,
            root_error: None,
        };
        if let Err(e) = self.root().and_then(|root| walk.enter(Vec::new(), root)) {
            walk.stack.clear();
            walk.root_error = Some(e);
        }
        walk
    }
}

impl Walk<'_> {
    fn enter(&mut self, path: Vec<u8>, dir: Arc<Inode>) -> Result<()> {
        let entries = self.image.listing(&dir)?;
        self.stack.push(Open {
            path,
            dir,
            entries,
            next: 0,
        });
        Ok(())
    }
}

impl Iterator for Walk<'_> {
    type Item = Walked;

    fn next(&mut self) -> Option<Walked> {
        if let Some(e) = self.root_error.take() {
            return Some(Walked {
                path: Vec::new(),
                inode: Err(e),
            });
        }
        loop {
            if self.left == 0 {
                return None;
            }
            let top = self.stack.last_mut()?;
            let Some(entry) = top.entries.get(top.next) else {
                self.stack.pop();
                continue;
            };
            top.next += 1;
            self.left -= 1;
            let mut path = top.path.clone();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&entry.name);
            let dir = top.dir.clone();
            let inode = self.image.entry_inode(&dir, entry);
            let inode = match inode {
                Ok(inode) if inode.is_dir() => {
                    self.enter(path.clone(), inode.clone()).map(|()| inode)
                }
                other => other,
            };
            return Some(Walked { path, inode });
        }
    }
}
