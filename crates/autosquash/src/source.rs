//! Turns a SOURCE or IMAGE argument into a store: a local directory, a local image file, or an
//! `s3://bucket/prefix/` URL with the flags that say how to reach the bucket.

use anyhow::{Context, Result, bail};
use autosquash_core::{BlockCache, DirStore, Image, ObjectMeta, Store};
use autosquash_s3::{S3Config, S3Store};
use clap::Args;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Memory budget of the one-shot commands.
const CLI_CACHE_BYTES: u64 = 64 << 20;

/// How to reach an S3 bucket; names follow the aws CLI and mountpoint-s3.
#[derive(Args, Debug, Clone, Default, PartialEq)]
pub struct S3Args {
    /// AWS region of the bucket (default: from the environment or profile).
    #[arg(long)]
    pub region: Option<String>,
    /// Endpoint of an S3-compatible store (Garage, MinIO, Ceph, Swift), e.g. http://10.0.0.5:3900.
    #[arg(long)]
    pub endpoint_url: Option<String>,
    /// Address buckets as endpoint/bucket instead of bucket.endpoint.
    #[arg(long)]
    pub force_path_style: bool,
    /// Send unsigned requests (public buckets); no credentials are looked up.
    #[arg(long)]
    pub no_sign_request: bool,
    /// Shared credentials/config profile to use.
    #[arg(long)]
    pub profile: Option<String>,
    /// Longest time one S3 request may take, retries included; a read that needs the store
    /// fails with EIO after it (e.g. 30s, 2m) [default: 30s].
    #[arg(long = "s3-timeout", value_parser = positive_duration)]
    pub timeout: Option<Duration>,
}

pub fn positive_duration(s: &str) -> Result<Duration, String> {
    match crate::units::parse_duration(s)? {
        d if d.is_zero() => Err(format!("{s:?}: the timeout must be above zero")),
        d => Ok(d),
    }
}

impl S3Args {
    pub fn config(&self, bucket: String) -> S3Config {
        let mut c = S3Config::new(bucket);
        c.region = self.region.clone();
        c.endpoint_url = self.endpoint_url.clone();
        c.force_path_style = self.force_path_style;
        c.no_sign_request = self.no_sign_request;
        c.profile = self.profile.clone();
        if let Some(total) = self.timeout {
            c.operation_timeout = total;
            c.read_timeout = c.read_timeout.min(total);
            c.connect_timeout = c.connect_timeout.min(total);
        }
        c
    }
}

/// A source of images: a store and the key prefix under which images live.
pub struct ImageSource {
    pub store: Arc<dyn Store>,
    pub prefix: String,
    /// Set for local directories, which can be watched with inotify.
    pub dir: Option<PathBuf>,
}

pub async fn image_source(source: &str, s3: &S3Args) -> Result<ImageSource> {
    if let Some((bucket, mut prefix)) = autosquash_s3::parse_url(source) {
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        let store = S3Store::new(&s3.config(bucket)).await;
        return Ok(ImageSource {
            store: Arc::new(store),
            prefix,
            dir: None,
        });
    }
    if source.starts_with("s3://") {
        bail!("{source}: expected s3://bucket/prefix/");
    }
    let dir = PathBuf::from(source);
    if !dir.is_dir() {
        bail!("source {source} is not a directory (nor an s3:// URL)");
    }
    Ok(ImageSource {
        store: Arc::new(DirStore::new(&dir)),
        prefix: String::new(),
        dir: Some(dir),
    })
}

pub enum Target {
    /// One image: its store and version.
    Image(Arc<dyn Store>, ObjectMeta),
    /// A directory or prefix of images.
    Images(ImageSource),
}

/// IMAGE as given to `ls` and `cat`: a local image file or directory, or an s3:// URL of an
/// image (`s3://bucket/prefix/name.squash`) or of a prefix.
pub async fn resolve(arg: &str, s3: &S3Args) -> Result<Target> {
    if let Some((bucket, key)) = autosquash_s3::parse_url(arg) {
        if key.is_empty() || key.ends_with('/') {
            return Ok(Target::Images(image_source(arg, s3).await?));
        }
        let store: Arc<dyn Store> = Arc::new(S3Store::new(&s3.config(bucket)).await);
        let meta = store
            .head(&key)
            .await
            .with_context(|| format!("cannot open {arg}"))?;
        return Ok(Target::Image(store, meta));
    }
    let path = PathBuf::from(arg);
    let meta = std::fs::metadata(&path).with_context(|| format!("cannot open {arg}"))?;
    if meta.is_dir() {
        return Ok(Target::Images(image_source(arg, s3).await?));
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
    Ok(Target::Image(store, meta))
}

/// Opens IMAGE, which must name one image.
pub async fn open_image(arg: &str, s3: &S3Args) -> Result<Arc<Image>> {
    match resolve(arg, s3).await? {
        Target::Image(store, meta) => Image::open(store, meta, BlockCache::new(CLI_CACHE_BYTES))
            .await
            .with_context(|| arg.to_string()),
        Target::Images(_) => bail!("{arg} is a directory of images, not an image"),
    }
}
