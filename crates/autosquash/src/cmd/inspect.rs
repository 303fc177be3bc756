//! `ls` and `cat`: look inside an image without mounting it.

use crate::source::{self, S3Args, Target};
use anyhow::{Context, Result, bail};
use autosquash_core::{FileKind, Image, Inode};
use clap::Args;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;

#[derive(Args)]
pub struct LsArgs {
    /// An image: a file or s3://bucket/prefix/name.squash; or a directory or s3:// prefix of images.
    image: String,
    /// Path inside the image (default: its root).
    path: Option<String>,
    /// Long listing: mode, links, owner, size, mtime.
    #[arg(short, long)]
    long: bool,
    #[command(flatten)]
    s3: S3Args,
}

#[derive(Args)]
pub struct CatArgs {
    /// An image: a file or s3://bucket/prefix/name.squash.
    image: String,
    /// Path of a regular file inside the image.
    path: String,
    #[command(flatten)]
    s3: S3Args,
}

pub async fn ls(args: LsArgs) -> Result<()> {
    if let Target::Images(source) = source::resolve(&args.image, &args.s3).await? {
        for object in source.store.list(&source.prefix).await? {
            if let Some(name) = autosquash_fs::fs::image_name(&source.prefix, &object.key) {
                if args.long {
                    println!("{:>12} {} {name}", object.size, object.etag);
                } else {
                    println!("{name}");
                }
            }
        }
        return Ok(());
    }
    let image = source::open_image(&args.image, &args.s3).await?;
    let path = args.path.unwrap_or_default();
    let inode = image
        .resolve(path.as_bytes())
        .with_context(|| format!("{}:{path}", args.image))?;
    let mut out = std::io::stdout().lock();
    if !inode.is_dir() {
        let name = path.rsplit('/').next().unwrap_or_default().as_bytes();
        return print_entry(&mut out, &image, &inode, name, args.long);
    }
    for entry in image.listing(&inode)?.iter() {
        let child = image.entry_inode(&inode, entry)?;
        print_entry(&mut out, &image, &child, &entry.name, args.long)?;
    }
    Ok(())
}

fn print_entry(
    out: &mut impl Write,
    image: &Image,
    inode: &Inode,
    name: &[u8],
    long: bool,
) -> Result<()> {
    let name = std::ffi::OsStr::from_bytes(name).to_string_lossy();
    if !long {
        writeln!(out, "{name}")?;
        return Ok(());
    }
    let size = match inode.kind {
        FileKind::BlockDevice | FileKind::CharDevice => {
            let (major, minor) = inode.device();
            format!("{major},{minor}")
        }
        _ => inode.size.to_string(),
    };
    let target = match inode.kind {
        FileKind::Symlink => format!(" -> {}", String::from_utf8_lossy(image.readlink(inode)?)),
        _ => String::new(),
    };
    writeln!(
        out,
        "{} {:>3} {:>5} {:>5} {:>10} {:>10} {name}{target}",
        mode_string(inode),
        inode.nlink,
        inode.uid,
        inode.gid,
        size,
        inode.mtime,
    )?;
    Ok(())
}

/// `ls -l` style mode string, with setuid, setgid and sticky bits.
fn mode_string(inode: &Inode) -> String {
    let kind = match inode.kind {
        FileKind::Directory => 'd',
        FileKind::File => '-',
        FileKind::Symlink => 'l',
        FileKind::BlockDevice => 'b',
        FileKind::CharDevice => 'c',
        FileKind::Fifo => 'p',
        FileKind::Socket => 's',
    };
    let p = inode.perm;
    let bit = |mask: u16, c: char| if p & mask != 0 { c } else { '-' };
    let exec = |x: u16, special: u16, set: char| match (p & x != 0, p & special != 0) {
        (true, true) => set,
        (false, true) => set.to_ascii_uppercase(),
        (true, false) => 'x',
        (false, false) => '-',
    };
    [
        kind,
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        exec(0o100, 0o4000, 's'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        exec(0o010, 0o2000, 's'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        exec(0o001, 0o1000, 't'),
    ]
    .iter()
    .collect()
}

pub async fn cat(args: CatArgs) -> Result<()> {
    let image = source::open_image(&args.image, &args.s3).await?;
    let inode = image
        .resolve(args.path.as_bytes())
        .with_context(|| format!("{}:{}", args.image, args.path))?;
    if inode.kind != FileKind::File {
        bail!("{}:{}: not a regular file", args.image, args.path);
    }
    let mut out = std::io::stdout().lock();
    let chunk = 1 << 20;
    let mut offset = 0;
    while offset < inode.size {
        let data = image
            .read(&inode, offset, chunk)
            .await
            .with_context(|| format!("{}:{} at offset {offset}", args.image, args.path))?;
        if data.is_empty() {
            bail!(
                "{}:{}: image ended early at offset {offset}",
                args.image,
                args.path
            );
        }
        out.write_all(&data)?;
        offset += data.len() as u64;
    }
    out.flush()?;
    Ok(())
}
