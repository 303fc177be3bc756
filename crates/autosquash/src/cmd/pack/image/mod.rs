//! Our squashfs 4.0 writer: one pass over the source tree writes the data (blocks, sparse
//! blocks, fragments, duplicates stored once), then the metadata tables in mksquashfs's order
//! (inodes, directories, fragments, ids, xattrs), then the superblock. Everything the engine
//! and the kernel read back is written: long symlinks, hard links (one inode, its nlink),
//! xattrs, the root's metadata, directory indexes.
//!
//! Inode numbers are given in the order inodes are written, children before their directory
//! and the root last, so a directory's parent number is known when it is written.

mod compress;
mod data;
mod dir;
mod inode;
mod meta;
mod output;
mod tables;

use super::BuildArgs;
use super::source::{Kind, Node, Tree};
use anyhow::{Context, Result, bail};
use compress::Compressor;
use data::{DataWriter, Written};
use indicatif::ProgressBar;
use meta::{MetaWriter, Pos};
use output::Output;
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const SUPERBLOCK: usize = 96;

pub fn write(tree: &Arc<Tree>, opts: &BuildArgs, out: &Path, bar: &ProgressBar) -> Result<()> {
    let mut c = Compressor::new(opts.compression, opts.level, opts.block_size)?;
    let mut o = Output::create(out)?;
    o.write(&[0; SUPERBLOCK])?;
    let options = c.options();
    if let Some(opt) = &options {
        // Stored raw, as mksquashfs does: the kernel reads it before it has a decompressor.
        o.write(&(opt.len() as u16 | 0x8000).to_le_bytes())?;
        o.write(opt)?;
    }

    // Node 0 is the root; the rest in path order.
    let mut nodes: Vec<(PathBuf, &Node)> = vec![(PathBuf::new(), &tree.root)];
    nodes.extend(tree.entries.iter().map(|(p, n)| (p.clone(), n)));
    let is_dir = |i: usize| matches!(nodes[i].1.kind, Kind::Dir);
    let mut dir_of: HashMap<&Path, usize> = HashMap::new();
    dir_of.insert(Path::new(""), 0);
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    // Hard links: every member of a group stands for its first.
    let mut first_of_group: HashMap<u32, usize> = HashMap::new();
    let mut rep: Vec<usize> = (0..nodes.len()).collect();
    let mut nlink = vec![1u32; nodes.len()];
    for i in 1..nodes.len() {
        let path = nodes[i].0.as_path();
        let parent = path.parent().unwrap_or(Path::new(""));
        let Some(&p) = dir_of.get(parent) else {
            bail!("{}: its directory is not in the source", path.display());
        };
        children[p].push(i);
        if is_dir(i) {
            dir_of.insert(path, i);
        }
        if let Some(g) = nodes[i].1.link {
            let first = *first_of_group.entry(g).or_insert(i);
            rep[i] = first;
            if first != i {
                nlink[first] += 1;
            }
        }
    }
    for i in 0..nodes.len() {
        if is_dir(i) {
            nlink[i] = 2 + children[i].iter().filter(|&&k| is_dir(k)).count() as u32;
        } else {
            nlink[i] = nlink[rep[i]];
        }
    }

    // File data, in path order (a directory's files lie together).
    let mut data = DataWriter::new(o, opts.block_size, || {
        Compressor::new(opts.compression, opts.level, opts.block_size)
    })?;
    for (i, (path, node)) in nodes.iter().enumerate() {
        if let Kind::File { size, data: src } = &node.kind
            && rep[i] == i
        {
            let name = match src {
                super::source::Data::Path(p) => p.clone(),
                super::source::Data::Spool(_) => path.clone(),
            };
            let mut reader = tree
                .open(src, *size)
                .with_context(|| format!("cannot open {}", name.display()))?;
            data.file(i, &mut reader, *size, &name, bar)?;
        }
    }
    let Written {
        out: mut o,
        locs,
        fragments,
    } = data.finish()?;

    // Directories in post order (every subdirectory before its parent, the root last).
    let mut post = Vec::new();
    let mut stack = vec![(0usize, false)];
    while let Some((d, expanded)) = stack.pop() {
        if expanded {
            post.push(d);
            continue;
        }
        stack.push((d, true));
        for &k in children[d].iter().rev() {
            if is_dir(k) {
                stack.push((k, false));
            }
        }
    }
    let mut number = vec![0u32; nodes.len()];
    let mut next = 0u32;
    for &d in &post {
        for &k in &children[d] {
            if !is_dir(k) && number[rep[k]] == 0 {
                next += 1;
                number[rep[k]] = next;
            }
        }
        next += 1;
        number[d] = next;
    }
    let inode_count = next;
    let mut parent = vec![inode_count + 1; nodes.len()];
    for d in 0..nodes.len() {
        for &k in &children[d] {
            parent[k] = number[d];
        }
    }

    let mut inodes = MetaWriter::default();
    let mut dirs = MetaWriter::default();
    let mut ids = tables::Ids::default();
    let mut xattrs = tables::Xattrs::default();
    let mut at: Vec<Option<Pos>> = vec![None; nodes.len()];
    let mut write_inode = |i: usize,
                           listing: Option<&dir::Listing>,
                           c: &mut Compressor,
                           inodes: &mut MetaWriter|
     -> Result<Pos> {
        let (path, node) = &nodes[i];
        let cx = inode::Ctx {
            uid: ids
                .get(node.header.uid)
                .with_context(|| path.display().to_string())?,
            gid: ids
                .get(node.header.gid)
                .with_context(|| path.display().to_string())?,
            ino: number[i],
            nlink: nlink[i],
            xattr: xattrs.add(&node.xattrs, c)?,
            data: locs.get(&i),
            dir: listing.map(|l| (l, parent[i])),
        };
        let pos = inodes.pos();
        let bytes = inode::encode(&node.header, &node.kind, &cx)
            .with_context(|| path.display().to_string())?;
        inodes.put(c, &bytes)?;
        Ok(pos)
    };
    for &d in &post {
        for &k in &children[d] {
            if !is_dir(k) && at[rep[k]].is_none() {
                at[rep[k]] = Some(write_inode(rep[k], None, &mut c, &mut inodes)?);
            }
        }
        let mut entries = Vec::with_capacity(children[d].len());
        for &k in &children[d] {
            let r = rep[k];
            let Some(pos) = at[r] else {
                bail!("{}: written out of order", nodes[k].0.display());
            };
            let name = nodes[k].0.file_name().unwrap_or_default().as_bytes();
            entries.push(dir::Entry {
                name,
                inode: pos,
                ino: number[r],
                kind: inode::basic_type(&nodes[k].1.kind),
            });
        }
        let listing = dir::write(&mut dirs, &mut c, &entries)?;
        at[d] = Some(write_inode(d, Some(&listing), &mut c, &mut inodes)?);
    }
    let root = at[0].context("the root was not written")?;

    let (inode_bytes, _) = inodes.finish(&mut c)?;
    let (dir_bytes, _) = dirs.finish(&mut c)?;
    let inode_table = o.pos();
    o.write(&inode_bytes)?;
    let dir_table = o.pos();
    o.write(&dir_bytes)?;
    let frag_entries: Vec<[u8; 16]> = fragments
        .iter()
        .map(|&(start, word)| {
            let mut e = [0u8; 16];
            e[..8].copy_from_slice(&start.to_le_bytes());
            e[8..12].copy_from_slice(&word.to_le_bytes());
            e
        })
        .collect();
    let frag_table = tables::lookup(&mut o, &mut c, &frag_entries)?;
    let id_entries: Vec<[u8; 4]> = ids.list.iter().map(|id| id.to_le_bytes()).collect();
    let id_table = tables::lookup(&mut o, &mut c, &id_entries)?;
    let xattr_table = xattrs.write(&mut o, &mut c)?;
    let bytes_used = o.pos();

    let mut flags: u16 = 0x40; // duplicates removed
    if opts.compression == super::Compression::None {
        flags |= 0x1 | 0x2 | 0x8 | 0x100; // inodes, data, fragments and xattrs stored raw
    }
    if xattr_table == u64::MAX {
        flags |= 0x200;
    }
    if options.is_some() {
        flags |= 0x400;
    }
    let mut sb = Vec::with_capacity(SUPERBLOCK);
    sb.extend(0x7371_7368u32.to_le_bytes());
    sb.extend(inode_count.to_le_bytes());
    // The root's mtime, not the clock: the same tree makes the same image.
    sb.extend(tree.root.header.mtime.to_le_bytes());
    sb.extend(opts.block_size.to_le_bytes());
    sb.extend((fragments.len() as u32).to_le_bytes());
    sb.extend(compress::id(opts.compression).to_le_bytes());
    sb.extend((opts.block_size.trailing_zeros() as u16).to_le_bytes());
    sb.extend(flags.to_le_bytes());
    sb.extend((ids.list.len() as u16).to_le_bytes());
    sb.extend(4u16.to_le_bytes());
    sb.extend(0u16.to_le_bytes());
    sb.extend(root.reference().to_le_bytes());
    sb.extend(bytes_used.to_le_bytes());
    sb.extend(id_table.to_le_bytes());
    sb.extend(xattr_table.to_le_bytes());
    sb.extend(inode_table.to_le_bytes());
    sb.extend(dir_table.to_le_bytes());
    sb.extend(frag_table.to_le_bytes());
    sb.extend(u64::MAX.to_le_bytes()); // no export table
    // Padded to 4 KiB like mksquashfs, for loop devices.
    let len = bytes_used.next_multiple_of(4096);
    o.write(&vec![0; (len - bytes_used) as usize])?;
    o.finish(0, &sb, len)
}
