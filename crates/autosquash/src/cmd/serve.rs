//! `autosquash serve`: the daemon. Mounts the root, keeps the listing fresh, retires idle
//! images, and unmounts cleanly on SIGTERM or SIGINT.

use crate::mountpoint;
use crate::source::{S3Args, image_source};
use crate::units::{parse_duration, parse_size};
use anyhow::{Context, Result};
use autosquash_core::DirStore;
use autosquash_fs::fuse::{self, MountConfig};
use autosquash_fs::{AutoFs, FsConfig};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Where the images are: s3://bucket/prefix/ or a local directory of <name>.squash files.
    #[arg(long)]
    pub source: String,
    /// Where to show them.
    #[arg(long, default_value = "/mnt/autosquash")]
    pub mountpoint: PathBuf,
    /// Forget an image after this long without open files or activity (e.g. 300, 5m, 1h).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Re-list the source this often, besides change notifications.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub list_interval: Duration,
    /// Memory for decompressed data and metadata of all images (e.g. 256M, 1G).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub memory_limit: u64,
    /// Let users other than the daemon's see the mount (needs user_allow_other in
    /// /etc/fuse.conf when not running as root).
    #[arg(long)]
    pub allow_other: bool,
    /// Show every entry as owned by this uid.
    #[arg(long)]
    pub uid: Option<u32>,
    /// Show every entry as owned by this gid.
    #[arg(long)]
    pub gid: Option<u32>,
    /// How long a name missing from the listing is remembered as missing before the store is
    /// asked again.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub negative_ttl: Duration,
    /// At start, keep retrying an unreachable store instead of exiting (for boots where the
    /// network comes up late).
    #[arg(long)]
    pub wait_for_store: bool,
    #[command(flatten)]
    pub s3: S3Args,
}

pub async fn serve(args: ServeArgs) -> Result<()> {
    mountpoint::check_fuse_device()?;
    let mountpoint = mountpoint::prepare(&args.mountpoint)?;
    let source = image_source(&args.source, &args.s3).await?;
    // Local directories push changes; buckets are listed every --list-interval.
    let mut changes = source.dir.as_ref().and_then(|dir| {
        DirStore::new(dir)
            .watch()
            .map_err(|e| warn!(error = %e, "no change notifications; relying on periodic listing"))
            .ok()
    });
    let store = source.store.clone();
    let fs = AutoFs::new(
        store.clone(),
        FsConfig {
            prefix: source.prefix.clone(),
            idle_timeout: args.idle_timeout,
            uid: args.uid,
            gid: args.gid,
            memory_limit: args.memory_limit,
            negative_ttl: args.negative_ttl,
        },
    );
    let shown = format!("{}/{}", store.describe(), source.prefix);
    let mut delay = Duration::from_secs(1);
    while let Err(e) = fs.refresh().await {
        if !args.wait_for_store {
            return Err(e).with_context(|| format!("cannot list images in {shown}"));
        }
        warn!(source = %shown, error = %e, retry_in = ?delay, "store not reachable yet");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(60));
    }
    let mount = fuse::mount(
        fs.clone(),
        &mountpoint,
        &MountConfig {
            allow_other: args.allow_other,
        },
        tokio::runtime::Handle::current(),
    )
    .with_context(|| {
        format!(
            "cannot mount at {} (root, or fuse3's fusermount3, is needed; --allow-other needs \
             user_allow_other in /etc/fuse.conf)",
            mountpoint.display()
        )
    })?;
    info!(source = %shown, mountpoint = %mountpoint.display(), "serving");

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut expiry = tokio::time::interval(Duration::from_secs(1).min(args.idle_timeout));
    let mut relist = tokio::time::interval(args.list_interval);
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = expiry.tick() => {
                for name in fs.expire() {
                    mount.invalidate(&name);
                }
            }
            _ = relist.tick() => refresh(&fs).await,
            Some(()) = async { match changes.as_mut() { Some(rx) => rx.recv().await, None => None } } => {
                // Let a burst of events (a copy in progress) settle first.
                tokio::time::sleep(Duration::from_millis(200)).await;
                refresh(&fs).await;
            }
        }
    }
    info!(mountpoint = %mountpoint.display(), "unmounting");
    mount.unmount().context("unmount failed")?;
    Ok(())
}

async fn refresh(fs: &AutoFs) {
    if let Err(e) = fs.refresh().await {
        warn!(error = %e, "cannot refresh the image listing; keeping the previous one");
    }
}
