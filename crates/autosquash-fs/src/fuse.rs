//! The FUSE adapter: the only module that imports `fuser`. It translates kernel requests to
//! [`Tree`] calls, and uses the protocol as the kernel allows for immutable trees, because a
//! FUSE request is the unit of cost:
//! - files are opened without a request (`open` answers ENOSYS once, the kernel then opens
//!   every file itself and keeps its page cache), so a hot file costs no request at all; no
//!   FLUSH either (ENOSYS once); reads name the inode;
//! - directories too are opened without a request, and their listings cached by the kernel
//!   (the ones that change are invalidated when they do); readdirplus hands out attributes
//!   with the listing (no LOOKUP per entry of a `find`);
//! - reads are up to 1 MiB (the mount's readahead is raised after mounting: FUSE_INIT caps
//!   it at 128 KiB), and entries inside pinned images live practically forever;
//! - the next files of a directory read in order are stored in the page cache before the
//!   kernel asks (FUSE_NOTIFY_STORE, see [`PageSink`]), so reading them costs no request.
//!
//! Threads: the session runs one FUSE thread per CPU (at least 2), each with its own cloned
//! `/dev/fuse` fd. They answer what is in memory at once and never wait on the store: calls
//! that may (mounting an image, reading data) run on the tokio runtime and reply from there.
//! Kernel notifications are sent by the caller of [`Invalidator`] from a blocking thread, and
//! pages by the mount's page thread, never from a FUSE thread or an async worker (the kernel
//! may hold a lock a request waits on).

use crate::error::FsError;
use crate::fs::{Attr, DirItem, ROOT_INO};
use crate::tree::{Invalidation, Tree};
use autosquash_core::FileKind;
use autosquash_core::histogram::Histogram;
use fuser::{
    AccessFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, SessionACL, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::runtime::Handle;
use tracing::{debug, warn};

/// Images are immutable while pinned, and changes are pushed to the kernel by invalidation,
/// so the kernel may cache entries and attributes practically forever.
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Root entries listed before their image is mounted: looked up before any use.
const NO_TTL: Duration = Duration::ZERO;
/// The root listing changes under us; its own attributes are cached briefly.
const ROOT_TTL: Duration = Duration::from_secs(1);

/// How the filesystem is mounted.
#[derive(Debug, Clone, Default)]
pub struct MountConfig {
    pub allow_other: bool,
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::Directory => FileType::Directory,
        FileKind::File => FileType::RegularFile,
        FileKind::Symlink => FileType::Symlink,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    let mtime = UNIX_EPOCH + Duration::from_secs(u64::from(a.mtime));
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: mtime,
        mtime,
        ctime: mtime,
        crtime: mtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

/// Attributes for a readdirplus entry the tree gave none for (see [`Tree::readdir`]).
fn placeholder_attr(item: &DirItem) -> FileAttr {
    file_attr(&Attr {
        ino: item.ino,
        kind: item.kind,
        perm: 0o555,
        nlink: 1,
        uid: 0,
        gid: 0,
        size: 0,
        mtime: 0,
        rdev: 0,
        blksize: 4096,
    })
}

fn ttl_for(ino: u64) -> &'static Duration {
    if ino == ROOT_INO { &ROOT_TTL } else { &TTL }
}

/// Requests of one mount by operation, and the latency of reads, for the metrics. Counting is
/// one relaxed atomic add per request (two and a clock read for a read): no lock anywhere.
#[derive(Default)]
pub struct FuseStats {
    requests: [AtomicU64; OPS.len()],
    /// From the request's arrival to its reply (inline or from the runtime).
    pub read_latency: Histogram,
    /// Files stored in the kernel's page cache ahead of their reads, and their bytes.
    pub pushed: AtomicU64,
    pub pushed_bytes: AtomicU64,
    /// Files the kernel had forgotten when their data came.
    pub push_unknown: AtomicU64,
}

/// The operations counted, by their FUSE names (`op` label values); `refused` gathers every
/// request that would change the tree (answered EROFS).
pub const OPS: [&str; 18] = [
    "lookup",
    "forget",
    "getattr",
    "readlink",
    "open",
    "read",
    "flush",
    "fsync",
    "fsyncdir",
    "ioctl",
    "opendir",
    "readdir",
    "readdirplus",
    "statfs",
    "getxattr",
    "listxattr",
    "access",
    "refused",
];

#[derive(Clone, Copy)]
enum Op {
    Lookup,
    Forget,
    Getattr,
    Readlink,
    Open,
    Read,
    Flush,
    Fsync,
    Fsyncdir,
    Ioctl,
    Opendir,
    Readdir,
    Readdirplus,
    Statfs,
    Getxattr,
    Listxattr,
    Access,
    Refused,
}

impl FuseStats {
    fn count(&self, op: Op) {
        self.requests[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests so far per operation, in the order of [`OPS`].
    pub fn requests(&self) -> Vec<(&'static str, u64)> {
        OPS.iter()
            .zip(&self.requests)
            .map(|(name, n)| (*name, n.load(Ordering::Relaxed)))
            .collect()
    }
}

struct FuseFs {
    fs: Arc<dyn Tree>,
    runtime: Handle,
    stats: Arc<FuseStats>,
}

impl FuseFs {
    /// Runs a request's work on this FUSE thread as far as it goes without waiting: data in
    /// memory or in the page cache (a local image, the disk cache) is answered here, with no
    /// hop to another thread. Work that must wait (on the store, on disk) moves to the
    /// runtime as it is, nothing done twice.
    fn run_here_or_spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        let _runtime = self.runtime.enter();
        let mut work = Box::pin(work);
        let waker = futures::task::noop_waker();
        let mut context = std::task::Context::from_waker(&waker);
        if work.as_mut().poll(&mut context).is_pending() {
            self.runtime.spawn(work);
        }
    }
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Big reads and many requests in flight: data comes from a high-latency store.
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        let _ = config.add_capabilities(
            InitFlags::FUSE_PARALLEL_DIROPS
                | InitFlags::FUSE_CACHE_SYMLINKS
                | InitFlags::FUSE_DO_READDIRPLUS
                | InitFlags::FUSE_READDIRPLUS_AUTO,
        );
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.stats.count(Op::Lookup);
        let answer = |result: Result<Attr, FsError>, reply: ReplyEntry| match result {
            Ok(attr) => reply.entry(&TTL, &file_attr(&attr), Generation(0)),
            Err(e) => reply.error(errno(&e)),
        };
        let name = name.as_bytes();
        match self.fs.lookup_now(parent.0, name) {
            Some(result) => answer(result, reply),
            None => {
                let (fs, name) = (self.fs.clone(), name.to_vec());
                self.runtime
                    .spawn(async move { answer(fs.lookup(parent.0, &name).await, reply) });
            }
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.stats.count(Op::Forget);
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.stats.count(Op::Getattr);
        match self.fs.getattr(ino.0) {
            Ok(attr) => reply.attr(ttl_for(ino.0), &file_attr(&attr)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.stats.count(Op::Readlink);
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.stats.count(Op::Open);
        // Zero-message open: after this one ENOSYS the kernel opens files without asking
        // (keeping their page cache) and sends neither FLUSH nor RELEASE. Write access is
        // refused by the VFS itself: the mount is read-only.
        reply.error(Errno::from_i32(libc::ENOSYS));
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.stats.count(Op::Read);
        let (fs, stats, start) = (self.fs.clone(), self.stats.clone(), Instant::now());
        self.run_here_or_spawn(async move {
            match fs.read(ino.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(&e)),
            }
            stats.read_latency.observe(start.elapsed());
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.stats.count(Op::Flush);
        // Nothing is ever written: ENOSYS once, and the kernel stops sending FLUSH.
        reply.error(Errno::from_i32(libc::ENOSYS));
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.stats.count(Op::Fsync);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.stats.count(Op::Fsyncdir);
        reply.ok();
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        self.stats.count(Op::Ioctl);
        // Terminal probes (isatty) and the like: not a device.
        reply.error(Errno::from_i32(libc::ENOTTY));
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.stats.count(Op::Opendir);
        // Zero-message opendir, as for files: after one ENOSYS the kernel opens directories
        // itself (no OPENDIR and RELEASEDIR per directory) and caches their listings. The
        // listings that change (the root, object view directories) are invalidated by the
        // tree when they do (`Tree::expire`).
        reply.error(Errno::from_i32(libc::ENOSYS));
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.stats.count(Op::Readdir);
        let mut add = |item: &DirItem, _: Option<&Attr>| {
            reply.add(
                INodeNo(item.ino),
                item.next,
                file_type(item.kind),
                OsStr::from_bytes(&item.name),
            )
        };
        match self.fs.readdir(ino.0, offset, false, &mut add) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.stats.count(Op::Readdirplus);
        let mut add = |item: &DirItem, attr: Option<&Attr>| match attr {
            Some(attr) => reply.add(
                INodeNo(item.ino),
                item.next,
                OsStr::from_bytes(&item.name),
                &TTL,
                &file_attr(attr),
                Generation(0),
            ),
            // Not counted by the kernel (`.`/`..`) or to be looked up first: a TTL of zero.
            None => reply.add(
                INodeNo(item.ino),
                item.next,
                OsStr::from_bytes(&item.name),
                &NO_TTL,
                &placeholder_attr(item),
                Generation(0),
            ),
        };
        match self.fs.readdir(ino.0, offset, true, &mut add) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        self.stats.count(Op::Statfs);
        match self.fs.statfs(ino.0) {
            Ok(s) => reply.statfs(s.blocks, 0, 0, s.files, 0, s.bsize, 255, s.bsize),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.stats.count(Op::Getxattr);
        xattr_reply(self.fs.getxattr(ino.0, name.as_bytes()), size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.stats.count(Op::Listxattr);
        xattr_reply(self.fs.listxattr(ino.0), size, reply);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        self.stats.count(Op::Access);
        if mask.contains(AccessFlags::W_OK) {
            return reply.error(Errno::EROFS);
        }
        // Read and execute permissions are checked by the kernel (default_permissions).
        match self.fs.getattr(ino.0) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    // Everything that would change the tree is refused: the mount is read-only.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.stats.count(Op::Refused);
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        self.stats.count(Op::Refused);
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.stats.count(Op::Refused);
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        self.stats.count(Op::Refused);
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        self.stats.count(Op::Refused);
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        self.stats.count(Op::Refused);
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.stats.count(Op::Refused);
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.stats.count(Op::Refused);
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.stats.count(Op::Refused);
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        self.stats.count(Op::Refused);
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.stats.count(Op::Refused);
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        self.stats.count(Op::Refused);
        reply.error(Errno::EROFS);
    }
}

/// The getxattr/listxattr size protocol: size 0 asks for the length only.
fn xattr_reply(value: Result<Vec<u8>, FsError>, size: u32, reply: ReplyXattr) {
    match value {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() <= size as usize => reply.data(&v),
        Ok(_) => reply.error(Errno::from_i32(libc::ERANGE)),
        Err(e) => reply.error(errno(&e)),
    }
}

/// A mounted filesystem; unmounts when dropped or by [`Mount::unmount`].
pub struct Mount {
    session: std::sync::Mutex<Option<fuser::BackgroundSession>>,
    notifier: fuser::Notifier,
    stats: Arc<FuseStats>,
    pub mountpoint: PathBuf,
    /// The `/dev/fuse` connection, when this process mounted it itself or took it over (as
    /// root): what a holder keeps for a successor (see the handover module). `None` for a
    /// mount made through fusermount3, which ends with this process.
    connection: Option<std::os::fd::OwnedFd>,
}

/// Hands file data to the kernel's page cache before the kernel asks for it
/// (FUSE_NOTIFY_STORE; see the fs module's `push`): a file read from there costs no request.
/// The data go to the mount's page thread, the only one that stores them: the kernel may wait
/// there on a page that a READ holds locked, which a FUSE thread answers meanwhile.
#[derive(Clone)]
pub struct PageSink {
    pages: tokio::sync::mpsc::Sender<Page>,
}

/// The whole data of one file, and who waits for them to be in the page cache.
struct Page {
    ino: u64,
    data: bytes::Bytes,
    stored: Option<tokio::sync::oneshot::Sender<()>>,
}

impl PageSink {
    /// Queues the whole data of file `ino` (from offset 0); waits while the page thread is
    /// behind. With `stored`, says when they are in the page cache. False once the mount
    /// is gone.
    pub async fn store(
        &self,
        ino: u64,
        data: bytes::Bytes,
        stored: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> bool {
        let page = Page { ino, data, stored };
        self.pages.send(page).await.is_ok()
    }

    /// A sink whose pages are handed to `receive` instead (for tests without a kernel).
    pub fn for_test(receive: impl Fn(u64, bytes::Bytes) + Send + 'static) -> PageSink {
        let (pages, mut queue) = tokio::sync::mpsc::channel::<Page>(PAGES_QUEUED);
        tokio::spawn(async move {
            while let Some(page) = queue.recv().await {
                receive(page.ino, page.data);
                if let Some(stored) = page.stored {
                    let _ = stored.send(());
                }
            }
        });
        PageSink { pages }
    }
}

/// Files queued for the page thread: a few, so what is pushed stays just ahead of the reader.
const PAGES_QUEUED: usize = 8;

/// The page thread of a mount: stores what the sink hands it until the tree drops the sink.
fn page_thread(notifier: fuser::Notifier, stats: Arc<FuseStats>) -> PageSink {
    let (pages, mut queue) = tokio::sync::mpsc::channel::<Page>(PAGES_QUEUED);
    let spawned = std::thread::Builder::new()
        .name("fuse-pages".to_owned())
        .spawn(move || {
            while let Some(Page { ino, data, stored }) = queue.blocking_recv() {
                let result = notifier.store(INodeNo(ino), 0, &data);
                if let Some(stored) = stored {
                    let _ = stored.send(());
                }
                match result {
                    Ok(()) => {
                        stats.pushed.fetch_add(1, Ordering::Relaxed);
                        stats
                            .pushed_bytes
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                    // The kernel has forgotten the inode: nothing to fill.
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                        stats.push_unknown.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => debug!(ino, error = %e, "cannot store pages in the kernel's cache"),
                }
            }
        });
    if let Err(e) = spawned {
        warn!(error = %e, "no page thread: files are not pushed ahead of their reads");
    }
    PageSink { pages }
}

/// Tells the kernel to forget entries of a mount.
#[derive(Clone)]
pub struct Invalidator {
    notifier: fuser::Notifier,
}

impl Invalidator {
    /// Tells the kernel what no longer holds. Blocks (the kernel may wait on a lock that a
    /// request holds): call it from a blocking thread, never from a FUSE thread or an async
    /// worker.
    pub fn apply(&self, what: &[Invalidation]) {
        for one in what {
            let result = match one {
                Invalidation::Entry(parent, name) => self
                    .notifier
                    .inval_entry(INodeNo(*parent), OsStr::from_bytes(name)),
                Invalidation::Inode(ino) => self.notifier.inval_inode(INodeNo(*ino), 0, 0),
            };
            match result {
                Ok(()) => debug!(?one, "kernel cache invalidated"),
                // ENOENT: the kernel had no such entry or inode; nothing to do.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => warn!(?one, error = %e, "cannot invalidate a kernel cache entry"),
            }
        }
    }
}

impl Mount {
    pub fn invalidator(&self) -> Invalidator {
        Invalidator {
            notifier: self.notifier.clone(),
        }
    }

    /// The mount's request counters (for the metrics).
    pub fn stats(&self) -> &Arc<FuseStats> {
        &self.stats
    }

    /// Takes the mount off its mountpoint at once (a lazy unmount) while what is open in it
    /// keeps working: its session is served, in a thread of its own, until the last file in it
    /// is closed and the kernel ends the connection. A new mount can take the mountpoint
    /// meanwhile.
    pub fn detach(&self) -> std::io::Result<()> {
        let session = self.take_session();
        let Some(session) = session else {
            return Ok(());
        };
        if let Err(e) = lazy_unmount(&self.mountpoint) {
            // Still mounted: keep serving it as before.
            *self
                .session
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(session);
            return Err(e);
        }
        // The session ends once the last file in it is closed. It must then not be dropped:
        // fuser's Mount unmounts by path when dropped, and would take off whatever is
        // mounted there by then (the replacing mount). So the finished session is leaked:
        // one /dev/fuse fd of a dead connection per detached mount.
        std::thread::spawn(move || {
            while !session.guard.is_finished() {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            std::mem::forget(session);
        });
        Ok(())
    }

    fn take_session(&self) -> Option<fuser::BackgroundSession> {
        self.session
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    pub fn unmount(&self) -> std::io::Result<()> {
        let session = self.take_session();
        match session {
            // Ours: fuser does not know the mount; the session ends once the kernel ends
            // the connection.
            Some(session) if self.connection.is_some() => {
                lazy_unmount(&self.mountpoint)?;
                session.join()
            }
            Some(session) => session.umount_and_join(),
            None => Ok(()),
        }
    }

    /// The connection for a holder to keep (see [`Mount::connection`]).
    pub fn connection(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.connection.as_ref().map(|fd| fd.as_fd())
    }
}

/// Mounts `fs` read-only, nosuid, nodev with kernel permission checks, or serves it on
/// `adopt`, the connection of a mount a predecessor served there (see the handover module).
/// As root the mount is made here and its connection kept for a holder; otherwise through
/// fusermount3.
pub fn mount(
    fs: Arc<dyn Tree>,
    mountpoint: &Path,
    options: &MountConfig,
    runtime: Handle,
    adopt: Option<std::os::fd::OwnedFd>,
) -> std::io::Result<Mount> {
    let mut config = Config::default();
    config.n_threads = Some(fuse_threads());
    // Threads share the one connection where it may be handed on: see the handover module.
    #[allow(unsafe_code)]
    // SAFETY: geteuid cannot fail.
    let own = adopt.is_some() || unsafe { libc::geteuid() } == 0;
    config.clone_fd = !own;
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::DefaultPermissions,
        MountOption::FSName(format!("autosquash:{}", fs.describe())),
        // As a kernel option, so the type reads fuse.autosquash (updatedb PRUNEFS, findmnt -t):
        // fuser passes its Subtype option to fusermount only.
        MountOption::CUSTOM("subtype=autosquash".to_owned()),
    ];
    config.acl = if options.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    let stats = Arc::<FuseStats>::default();
    let describe = fs.describe();
    let pages_for = fs.clone();
    let fuse_fs = FuseFs {
        fs,
        runtime,
        stats: stats.clone(),
    };
    let acl = config.acl;
    let (session, connection, adopted) = match adopt {
        Some(fd) => {
            let session = crate::handover::takeover(fuse_fs, fd.try_clone()?, acl, config)?;
            (session, Some(fd), true)
        }
        None if own => {
            let fd = crate::handover::mount(mountpoint, &describe, options.allow_other)?;
            // The kernel sent FUSE_INIT when it mounted: the handshake reads it.
            let session = fuser::Session::from_fd(fuse_fs, fd.try_clone()?, acl, config)?;
            (session, Some(fd), false)
        }
        None => (
            fuser::Session::new(fuse_fs, mountpoint, &config)?,
            None,
            false,
        ),
    };
    let notifier = session.notifier();
    pages_for.attach_pages(page_thread(notifier.clone(), stats.clone()));
    let session = session.spawn()?;
    if let (true, Some(fd)) = (adopted, &connection) {
        use std::os::fd::AsFd;
        match crate::handover::resend(fd.as_fd()) {
            Ok(()) => {
                debug!(mountpoint = %mountpoint.display(), "asked the kernel to resend unanswered requests")
            }
            Err(e) => {
                warn!(mountpoint = %mountpoint.display(), error = %e, "cannot have the kernel resend unanswered requests (Linux 6.9 or later does)")
            }
        }
    } else {
        raise_readahead(mountpoint);
    }
    Ok(Mount {
        session: std::sync::Mutex::new(Some(session)),
        notifier,
        stats,
        mountpoint: mountpoint.to_path_buf(),
        connection,
    })
}

/// `umount2(path, MNT_DETACH)`, or `fusermount3 -u -z` where that is not allowed (not root).
#[allow(unsafe_code)]
fn lazy_unmount(path: &Path) -> std::io::Result<()> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a valid NUL-terminated path; umount2 reads it and nothing else.
    if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EPERM) {
        return Err(e);
    }
    let out = std::process::Command::new("fusermount3")
        .args(["-u", "-z", "--"])
        .arg(path)
        .output()?;
    match out.status.success() {
        true => Ok(()),
        false => Err(std::io::Error::other(format!(
            "fusermount3 -u -z: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

/// FUSE threads: one per CPU, at least 2 (one slow request must not hold up the others).
fn fuse_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

/// Raises the mount's readahead to 1 MiB, so sequential reads come as 1 MiB READs (FUSE_INIT
/// caps it at 128 KiB: 8 times the requests). Best effort: without it reads still work.
fn raise_readahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(mountpoint) else {
        return;
    };
    let dev = meta.dev();
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    if let Err(e) = std::fs::write(&path, "1024") {
        debug!(path, error = %e, "cannot raise the mount's readahead");
    }
}
