//! The autosquash filesystem: an automount root showing one directory per image of a store,
//! image lifecycle (mount on lookup, idle expiry, version changes) and the inode mapping.
//! `fs` (images) and `objects` (the plain object view) hold the logic with their own types,
//! behind the `Tree` trait; `fuse` is the only module that speaks FUSE; `clock` is the time
//! the image lifecycle runs on (injected, so tests move it instead of sleeping); `handover`
//! keeps a mount's connection for a successor (own mount(2), takeover, resend, state log);
//! `housekeeping` retires idle images and lists the source again (on tokio's clock).
//!
//! # Threads
//! - **FUSE threads**, one per CPU (at least 2). As root they all read the one `/dev/fuse`
//!   connection, which `handover` keeps alive across the death of the process (a cloned fd
//!   per thread would have its unanswered requests failed when it closes); through
//!   fusermount3 (not root) each reads its own cloned fd.
//!   A request is worked on right there as far as it goes without waiting: lookups, attributes,
//!   listings and xattrs from memory, reads whose blocks are cached or whose bytes are in the
//!   page cache (a local image; the disk cache). Decompression therefore runs on these
//!   threads, a pool bounded by the CPU count. A FUSE thread never waits on the network and
//!   never calls `block_on`.
//! - **The tokio runtime** takes over a request that must wait: mounting an image (reading its
//!   superblock and tables), a store read, a disk read that is not in the page cache (on the
//!   blocking pool, never on an async worker). Its future moves over as it is; nothing is
//!   done twice. Housekeeping (listing refreshes, idle expiry) runs there too, and so does the
//!   store's prefetch pipeline (autosquash-cache: parts fetched ahead, hydration).
//! - **Kernel notifications** (dentry and inode invalidations) are sent from the blocking pool:
//!   the kernel may hold a directory lock that a request being answered waits on.
//!
//! No lock is held across a store read or a kernel notification; the state lock is never held
//! while an image is dropped or a cache is scanned; each image has its own mount in flight, so
//! a slow image delays nobody else.

pub mod clock;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod handover;
pub mod housekeeping;
pub mod objects;
pub mod tree;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{FsError, FsResult};
pub use fs::{AutoFs, FsConfig};
pub use objects::{ObjectConfig, ObjectFs};
pub use tree::Tree;
