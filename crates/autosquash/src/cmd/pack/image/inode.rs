//! Inode encodings (squashfs_fs.h): the basic form where it suffices, the extended one for
//! hard links, xattrs, directory indexes and sizes past the basic fields, as mksquashfs does.

use super::data::DataLoc;
use super::dir::Listing;
use crate::cmd::pack::source::{Header, Kind};
use anyhow::{Context, Result};

pub const NO_XATTR: u32 = u32::MAX;
const NO_FRAGMENT: u32 = u32::MAX;

/// What an inode refers to besides its node: the ids' table indexes, its number, links,
/// xattr id, and its data or listing.
pub struct Ctx<'a> {
    pub uid: u16,
    pub gid: u16,
    pub ino: u32,
    pub nlink: u32,
    pub xattr: u32,
    pub data: Option<&'a DataLoc>,
    pub dir: Option<(&'a Listing, u32)>,
}

/// The basic inode type (1-7) of a kind, as directory entries name it.
pub fn basic_type(kind: &Kind) -> u16 {
    match kind {
        Kind::Dir => 1,
        Kind::File { .. } => 2,
        Kind::Symlink(_) => 3,
        Kind::BlockDevice(_) => 4,
        Kind::CharDevice(_) => 5,
        Kind::Fifo => 6,
        Kind::Socket => 7,
    }
}

pub fn encode(h: &Header, kind: &Kind, cx: &Ctx<'_>) -> Result<Vec<u8>> {
    let mut b = Vec::with_capacity(64);
    let has_xattr = cx.xattr != NO_XATTR;
    let header = |b: &mut Vec<u8>, extended: bool| {
        let t = basic_type(kind) + if extended { 7 } else { 0 };
        b.extend(t.to_le_bytes());
        // Permission bits only: the kernel refuses an inode whose mode has type bits.
        b.extend((h.perm & 0o7777).to_le_bytes());
        b.extend(cx.uid.to_le_bytes());
        b.extend(cx.gid.to_le_bytes());
        b.extend(h.mtime.to_le_bytes());
        b.extend(cx.ino.to_le_bytes());
    };
    match kind {
        Kind::Dir => {
            let (listing, parent) = cx.dir.context("a directory without its listing")?;
            let size = listing.len + 3;
            let start = listing.start.block as u32;
            if !has_xattr && listing.index.is_empty() && size <= u32::from(u16::MAX) {
                header(&mut b, false);
                b.extend(start.to_le_bytes());
                b.extend(cx.nlink.to_le_bytes());
                b.extend((size as u16).to_le_bytes());
                b.extend(listing.start.offset.to_le_bytes());
                b.extend(parent.to_le_bytes());
            } else {
                header(&mut b, true);
                b.extend(cx.nlink.to_le_bytes());
                b.extend(size.to_le_bytes());
                b.extend(start.to_le_bytes());
                b.extend(parent.to_le_bytes());
                b.extend((listing.index.len() as u16).to_le_bytes());
                b.extend(listing.start.offset.to_le_bytes());
                b.extend(cx.xattr.to_le_bytes());
                for i in &listing.index {
                    b.extend(i.index.to_le_bytes());
                    b.extend(i.block.to_le_bytes());
                    b.extend((i.name.len() as u32 - 1).to_le_bytes());
                    b.extend_from_slice(&i.name);
                }
            }
        }
        Kind::File { size, .. } => {
            let d = cx.data.context("a file without its data")?;
            let (frag, offset) = d.fragment.unwrap_or((NO_FRAGMENT, 0));
            let basic = !has_xattr
                && cx.nlink == 1
                && d.start <= u64::from(u32::MAX)
                && *size <= u64::from(u32::MAX)
                && d.sparse == 0;
            if basic {
                header(&mut b, false);
                b.extend((d.start as u32).to_le_bytes());
                b.extend(frag.to_le_bytes());
                b.extend(offset.to_le_bytes());
                b.extend((*size as u32).to_le_bytes());
            } else {
                header(&mut b, true);
                b.extend(d.start.to_le_bytes());
                b.extend(size.to_le_bytes());
                b.extend(d.sparse.to_le_bytes());
                b.extend(cx.nlink.to_le_bytes());
                b.extend(frag.to_le_bytes());
                b.extend(offset.to_le_bytes());
                b.extend(cx.xattr.to_le_bytes());
            }
            for w in &d.words {
                b.extend(w.to_le_bytes());
            }
        }
        Kind::Symlink(target) => {
            use std::os::unix::ffi::OsStrExt;
            let target = target.as_os_str().as_bytes();
            header(&mut b, has_xattr);
            b.extend(cx.nlink.to_le_bytes());
            b.extend((target.len() as u32).to_le_bytes());
            b.extend_from_slice(target);
            if has_xattr {
                b.extend(cx.xattr.to_le_bytes());
            }
        }
        Kind::BlockDevice(dev) | Kind::CharDevice(dev) => {
            header(&mut b, has_xattr);
            b.extend(cx.nlink.to_le_bytes());
            b.extend(dev.to_le_bytes());
            if has_xattr {
                b.extend(cx.xattr.to_le_bytes());
            }
        }
        Kind::Fifo | Kind::Socket => {
            header(&mut b, has_xattr);
            b.extend(cx.nlink.to_le_bytes());
            if has_xattr {
                b.extend(cx.xattr.to_le_bytes());
            }
        }
    }
    Ok(b)
}
