//! Turns an IMAGE argument into a store and a key: a local image file, or a directory of images.

use anyhow::{Context, Result, bail};
use autosquash_core::{BlockCache, DirStore, Image, ObjectMeta, Store};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Memory budget of the one-shot commands.
const CLI_CACHE_BYTES: u64 = 64 << 20;

pub enum Source {
    /// One image: its store and version.
    Image(Arc<dyn Store>, ObjectMeta),
    /// A directory of images.
    Directory(DirStore),
}

pub async fn resolve(arg: &str) -> Result<Source> {
    let path = PathBuf::from(arg);
    let meta = std::fs::metadata(&path).with_context(|| format!("cannot open {arg}"))?;
    if meta.is_dir() {
        return Ok(Source::Directory(DirStore::new(path)));
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
    else {
        bail!("{arg}: not a file name this tool can address");
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let store: Arc<dyn Store> = Arc::new(DirStore::new(parent));
    let meta = store
        .head(name)
        .await
        .with_context(|| format!("cannot open {arg}"))?;
    Ok(Source::Image(store, meta))
}

/// Opens IMAGE, which must name one image.
pub async fn open_image(arg: &str) -> Result<Arc<Image>> {
    match resolve(arg).await? {
        Source::Image(store, meta) => Image::open(store, meta, BlockCache::new(CLI_CACHE_BYTES))
            .await
            .with_context(|| arg.to_string()),
        Source::Directory(_) => bail!("{arg} is a directory, not an image"),
    }
}
