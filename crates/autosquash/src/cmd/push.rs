//! `autosquash push`: puts an image where the daemon serves it from.
//!
//! SRC may be an image already (recognized by its `hsqs` magic; it is read through once with
//! our engine, so a broken file is never uploaded) or anything `pack` takes, which is packed
//! into a temporary directory first (`$TMPDIR`: it needs room for the image, and for a tar
//! source also for its unpacked files). The upload itself is in `autosquash_s3::upload_file`,
//! which also checks afterwards that the object has the size and ETag of what was sent.

use super::pack::{self, BuildArgs, progress_bar};
use crate::source::S3Args;
use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::HumanBytes;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct PushArgs {
    /// A squashfs image (uploaded as is: the build flags do not apply), or a directory or tar
    /// archive to pack first.
    src: PathBuf,
    /// Destination: s3://bucket/prefix/NAME.squash (or s3://bucket/prefix/ to use SRC's name).
    url: String,
    #[command(flatten)]
    build: BuildArgs,
    /// No progress bars and no summary.
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    s3: S3Args,
}

pub async fn push(args: PushArgs) -> Result<()> {
    let Some((bucket, mut key)) = autosquash_s3::parse_url(&args.url) else {
        bail!("{}: expected s3://bucket/prefix/NAME.squash", args.url);
    };
    if key.is_empty() || key.ends_with('/') {
        key.push_str(&pack::default_name(&args.src)?);
    }
    if !key.ends_with(".squash") {
        tracing::warn!("{key}: the daemon shows only objects named *.squash");
    }
    let url = format!("s3://{bucket}/{key}");
    let show = !args.quiet && std::io::stderr().is_terminal();

    // Kept until the upload is done.
    let mut _packed_dir = None;
    let image = if is_image(&args.src)? {
        let bar = progress_bar(None, "checking", show);
        pack::verify::image(&args.src, None, &bar)
            .await
            .with_context(|| format!("{} is not a valid image", args.src.display()))?;
        bar.finish_and_clear();
        args.src.clone()
    } else {
        let dir = tempfile::Builder::new()
            .prefix("autosquash-push-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let name = key.rsplit('/').next().unwrap_or("image.squash");
        let image = dir.path().join(name);
        let packed = pack::build(&args.src, &image, &args.build, args.quiet).await?;
        if !args.quiet {
            println!("packed {}: {packed}", args.src.display());
        }
        _packed_dir = Some(dir);
        image
    };

    let size = std::fs::metadata(&image)
        .with_context(|| format!("cannot read {}", image.display()))?
        .len();
    let bar = progress_bar(Some(size), "uploading", show);
    let etag = autosquash_s3::upload_file(&args.s3.config(bucket), &key, &image, |n| bar.inc(n))
        .await
        .with_context(|| format!("cannot upload to {url}"))?;
    bar.finish_and_clear();
    if !args.quiet {
        println!("{url}: {} uploaded, ETag {etag}", HumanBytes(size));
    }
    Ok(())
}

/// Whether `path` is a regular file starting with the squashfs magic.
fn is_image(path: &Path) -> Result<bool> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        return Ok(false);
    }
    let mut magic = [0u8; 4];
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(file.read_exact(&mut magic).is_ok() && &magic == b"hsqs")
}
