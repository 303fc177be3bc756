//! `autosquash demo`: builds a few small images with backhand's writer (no root, no
//! squashfs-tools) into a temporary directory and serves them in the foreground.

use super::serve::{ServeArgs, serve};
use anyhow::{Context, Result};
use backhand::compression::Compressor;
use backhand::{FilesystemCompressor, FilesystemWriter, NodeHeader};
use clap::Args;
use std::io::Cursor;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct DemoArgs {
    /// Where to show the demo images (default: autosquash-demo in the temporary directory).
    #[arg(long)]
    mountpoint: Option<PathBuf>,
}

/// One entry of a demo image.
enum Item {
    Dir(&'static str),
    File(&'static str, Vec<u8>, u16),
    Symlink(&'static str, &'static str),
}

fn demo_images() -> Vec<(&'static str, Vec<Item>)> {
    let numbers: String = (1..=200_000).map(|n| format!("{n}\n")).collect();
    let mut noise = Vec::with_capacity(3 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while noise.len() < 3 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.extend_from_slice(&x.to_le_bytes());
    }
    vec![
        (
            "hello",
            vec![
                Item::File(
                    "README.txt",
                    b"Hello from a squashfs image served by autosquash!\n".to_vec(),
                    0o644,
                ),
                Item::Dir("bin"),
                Item::File(
                    "bin/hello.sh",
                    b"#!/bin/sh\necho hello from inside the image\n".to_vec(),
                    0o755,
                ),
                Item::Symlink("readme-link", "README.txt"),
            ],
        ),
        (
            "numbers",
            vec![
                Item::File("numbers.txt", numbers.into_bytes(), 0o644),
                Item::File("noise.bin", noise, 0o644),
            ],
        ),
        (
            "python-demo",
            vec![
                Item::Dir("greeting"),
                Item::File("greeting/__init__.py", b"".to_vec(), 0o644),
                Item::File(
                    "greeting/hello.py",
                    b"def hello():\n    return \"hello from a python package in squashfs\"\n"
                        .to_vec(),
                    0o644,
                ),
            ],
        ),
    ]
}

fn write_image(path: &Path, items: Vec<Item>) -> Result<()> {
    let mtime = 1_700_000_000;
    let mut writer = FilesystemWriter::default();
    writer.set_time(mtime);
    writer.set_root_mode(0o755);
    writer.set_compressor(FilesystemCompressor::new(Compressor::Zstd, None)?);
    for item in items {
        match item {
            Item::Dir(p) => writer.push_dir(p, NodeHeader::new(0o755, 0, 0, mtime))?,
            Item::File(p, data, mode) => {
                writer.push_file(Cursor::new(data), p, NodeHeader::new(mode, 0, 0, mtime))?
            }
            Item::Symlink(p, target) => {
                writer.push_symlink(target, p, NodeHeader::new(0o777, 0, 0, mtime))?
            }
        }
    }
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    writer.write(std::io::BufWriter::new(file))?;
    Ok(())
}

pub async fn demo(args: DemoArgs) -> Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    for (name, items) in demo_images() {
        write_image(&dir.path().join(format!("{name}.squash")), items)?;
    }
    let mountpoint = args
        .mountpoint
        .unwrap_or_else(|| std::env::temp_dir().join("autosquash-demo"));
    // A stale mount of an earlier demo answers ENOTCONN: leave it for serve to clean up.
    if std::fs::symlink_metadata(&mountpoint)
        .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
    {
        std::fs::create_dir_all(&mountpoint)
            .with_context(|| format!("cannot create {}", mountpoint.display()))?;
    }
    let shown = mountpoint.display();
    println!(
        "autosquash demo: serving 3 images from {} at {shown}",
        dir.path().display()
    );
    println!("  try:  ls -l {shown}/hello   cat {shown}/hello/README.txt");
    println!(
        "        PYTHONPATH={shown}/python-demo python3 -c 'import greeting.hello as h; print(h.hello())'"
    );
    println!("  stop with Ctrl-C (the mount is removed).");
    serve(ServeArgs {
        source: Some(dir.path().to_string_lossy().into_owned()),
        mountpoint: Some(mountpoint),
        memory_limit: Some(64 << 20),
        ignore_config: true,
        control_socket: Some(dir.path().join("control.sock")),
        ..ServeArgs::default()
    })
    .await
}
