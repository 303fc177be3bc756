//! Pushing a directory's files into the kernel's page cache ahead of a reader that reads them
//! in order (`tar`, `cp -r`, `find | xargs cat`, a compiler reading its headers). Each such
//! file costs one READ request, and on small files the request's round trip costs more than
//! its data (the FUSE floor in bench/run: a tree held in memory is read no faster than the
//! kernel reads it from a squashfs image). Once a reader shows (the first file of a directory
//! read from its start, or two files one after the other in listing order) and the kernel
//! knows the directory's entries (listed with readdirplus, so their inodes exist in the
//! kernel), the next files' data are read here and handed to the kernel (FUSE_NOTIFY_STORE,
//! through the mount's [`PageSink`]): the reader's reads of them are page-cache hits, no
//! request.
//!
//! Bounded: at most [`AHEAD_FILES`] files and [`AHEAD_BYTES`] bytes ahead of the reader, only
//! files up to [`FILE_MAX`] (larger ones are read in large READs with the kernel's
//! readahead), and nothing for a directory read out of order. The data come through the
//! ordinary read path (memory, disk cache or store), in a task on the runtime.

use super::{AutoFs, Mounted, join};
use crate::fuse::PageSink;
use autosquash_core::{FileKind, Inode};
use std::sync::{Arc, PoisonError};

/// Files pushed ahead of the reader's position in its directory.
pub(super) const AHEAD_FILES: usize = 32;
/// Bytes pushed ahead of the reader's position.
pub(super) const AHEAD_BYTES: u64 = 4 << 20;
/// The largest file pushed.
pub(super) const FILE_MAX: u64 = 1 << 20;
/// A new batch is pushed once the reader is this close to the end of the last one.
const LOW_WATER: usize = AHEAD_FILES / 2;
/// How long a read that starts a batch waits for the batch's first file to be in the page
/// cache (the time to decompress and store one small file; a push that waits on the store
/// does not hold the read up longer).
pub(super) const FIRST_WAIT: std::time::Duration = std::time::Duration::from_millis(2);
/// Directories larger than this are not searched for a file read out of order.
const SEARCH_MAX: usize = 4096;

/// A directory's reader, as far as pushing goes.
#[derive(Default)]
pub(super) struct DirReader {
    /// Listed with readdirplus: the kernel holds its entries' inodes.
    pub listed: bool,
    /// The listing position of the file read last.
    last: Option<usize>,
    /// Files from `pushed.start` to `pushed.end` (listing positions) were pushed.
    pushed: std::ops::Range<usize>,
}

impl AutoFs {
    /// Where file data go ahead of the kernel's reads (set once, by the FUSE adapter).
    pub fn attach_pages(&self, pages: PageSink) {
        let _ = self.pages.set(pages);
    }

    /// Called on the read of `inode` at `offset`: pushes the files that follow it in its
    /// directory if a reader goes through the directory in order. The answer to this read
    /// should wait (briefly, [`FIRST_WAIT`]) for what it returns, the first of them in the
    /// page cache: the reader asks for that one right after the answer, before a push made
    /// meanwhile could be there.
    pub(super) fn push_ahead(
        &self,
        m: &Arc<Mounted>,
        inode: &Inode,
        offset: u64,
    ) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let pages = self.pages.get()?;
        if offset != 0 || inode.size > FILE_MAX {
            return None;
        }
        let parent = m.image.parent(inode.ino)?;
        let batch = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.next_batch(m, parent, inode.ino)
        }))
        .ok()?
        .ok()?;
        if batch.is_empty() {
            return None;
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (m, pages) = (m.clone(), pages.clone());
        let (first_stored, first) = tokio::sync::oneshot::channel();
        let mut first_stored = Some(first_stored);
        runtime.spawn(async move {
            for file in batch {
                // A file that cannot be read now is read (and its error answered) on demand.
                let read = m.image.read(&file, 0, file.size as usize);
                let Ok(Ok(data)) = super::lifecycle::guarded(&m, read).await else {
                    continue;
                };
                let ino = join(m.slot, file.ino);
                if !pages.store(ino, data, first_stored.take()).await {
                    return;
                }
            }
        });
        Some(first)
    }

    /// The files to push after the read of file `ino` in directory `parent`, updating the
    /// directory's reader; empty when there is nothing (more) to push.
    fn next_batch(
        &self,
        m: &Mounted,
        parent: u32,
        ino: u32,
    ) -> autosquash_core::Result<Vec<Arc<Inode>>> {
        let mut readers = m.readers.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(reader) = readers.get_mut(&parent).filter(|r| r.listed) else {
            return Ok(Vec::new());
        };
        let dir = m.image.inode(parent)?;
        let listing = m.image.listing(&dir)?;
        let at = |i: usize| listing.get(i).is_some_and(|e| e.ino == ino);
        let next = reader.last.map_or(0, |l| l + 1);
        // What was pushed and the file right after it, where the reader asks next.
        let pushed = reader.pushed.start..reader.pushed.end + 1;
        let position = if at(next) {
            Some(next)
        } else if let Some(i) = pushed.clone().find(|&i| at(i)) {
            Some(i)
        } else if listing.len() <= SEARCH_MAX {
            (0..listing.len()).find(|&i| at(i))
        } else {
            None
        };
        let Some(position) = position else {
            reader.last = None;
            return Ok(Vec::new());
        };
        // In order: the directory's first file read first, right after the last file read,
        // or within what was pushed (the reader went through pushed files without a request).
        let first_file = || {
            listing
                .iter()
                .take(position)
                .all(|e| e.kind != FileKind::File)
        };
        let in_order = match reader.last {
            None => first_file(),
            Some(last) => {
                last + 1 == position || (!reader.pushed.is_empty() && pushed.contains(&position))
            }
        };
        reader.last = Some(position);
        if !in_order || position + LOW_WATER < reader.pushed.end {
            return Ok(Vec::new());
        }
        let start = reader.pushed.end.max(position + 1);
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut end = start;
        for entry in listing.iter().skip(start).take(AHEAD_FILES) {
            if bytes >= AHEAD_BYTES {
                break;
            }
            end += 1;
            if entry.kind != FileKind::File {
                continue;
            }
            let file = m.image.entry_inode(&dir, entry)?;
            if file.size > FILE_MAX || file.size == 0 {
                continue;
            }
            bytes += file.size;
            batch.push(file);
        }
        reader.pushed = start..end;
        Ok(batch)
    }

    /// Records that directory `dir` of `m` was listed with readdirplus.
    pub(super) fn note_listed(&self, m: &Mounted, dir: u32) {
        if self.pages.get().is_none() {
            return;
        }
        let mut readers = m.readers.lock().unwrap_or_else(PoisonError::into_inner);
        if readers.len() > 65_536 {
            readers.clear();
        }
        readers.entry(dir).or_default().listed = true;
    }
}
