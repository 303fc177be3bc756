//! `autosquash serve`: the daemon. Mounts every configured tree (the image root, the plain
//! object view) sharing one cache, keeps listings fresh, retires idle images, answers
//! `autosquash status` on a unix socket, and unmounts cleanly on SIGTERM or SIGINT.

use crate::config::{self, MountSection, MountSpec, View};
use crate::mountpoint;
use crate::source::{S3Args, image_source};
use crate::units::{parse_duration, parse_size};
use anyhow::{Context, Result, bail};
use autosquash_cache::{CachedStore, PipelineConfig};
use autosquash_core::{BlockCache, CountingStore, DirStore, Store, StoreCounters};
use autosquash_fs::fuse::{self, Mount, MountConfig};
use autosquash_fs::housekeeping::{self, Schedule};
use autosquash_fs::{AutoFs, FsConfig, ObjectConfig, ObjectFs, Tree};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

#[derive(Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// Configuration file (default: /etc/autosquash/config.toml, if it exists). Flags given
    /// here override it; --source replaces its mounts with one.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where the images are: s3://bucket/prefix/ or a local directory of <name>.squash files.
    #[arg(long)]
    pub source: Option<String>,
    /// Where to show them [default: /mnt/autosquash].
    #[arg(long)]
    pub mountpoint: Option<PathBuf>,
    /// What to show: a directory per image, or the objects themselves [default: images].
    #[arg(long, value_enum)]
    pub view: Option<View>,
    /// Forget an image after this long without open files or activity (e.g. 300, 5m, 1h)
    /// [default: 5m].
    #[arg(long, value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Re-list the source this often, besides change notifications [default: 60s].
    #[arg(long, value_parser = parse_duration)]
    pub list_interval: Option<Duration>,
    /// How long a name missing from the listing is remembered as missing before the store is
    /// asked again [default: 60s].
    #[arg(long, value_parser = parse_duration)]
    pub negative_ttl: Option<Duration>,
    /// Memory for decompressed metadata, fragments and partly read blocks of all mounts (e.g.
    /// 64M, 1G); file data read whole is left to the kernel's page cache [default: 64M].
    #[arg(long, value_parser = parse_size)]
    pub memory_limit: Option<u64>,
    /// Let users other than the daemon's see the mounts (needs user_allow_other in
    /// /etc/fuse.conf when not running as root).
    #[arg(long)]
    pub allow_other: bool,
    /// Show every entry as owned by this uid.
    #[arg(long)]
    pub uid: Option<u32>,
    /// Show every entry as owned by this gid.
    #[arg(long)]
    pub gid: Option<u32>,
    /// At start, keep retrying an unreachable store instead of exiting (for boots where the
    /// network comes up late).
    #[arg(long)]
    pub wait_for_store: bool,
    /// Directory of the persistent disk cache of S3 data [default: /var/cache/autosquash].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Size cap of the disk cache; 0 turns it off (e.g. 10G) [default: 10G].
    #[arg(long, value_parser = parse_size)]
    pub cache_size: Option<u64>,
    /// Largest image fetched whole into the disk cache in the background once it is used;
    /// 0: never (images are also never hydrated into a cache under twice their size)
    /// [default: 4G].
    #[arg(long, value_parser = parse_size)]
    pub hydrate_max: Option<u64>,
    /// Bytes per second one image's hydration may fetch; 0: no limit (demand reads always
    /// go first) [default: 0].
    #[arg(long, value_parser = parse_size)]
    pub hydrate_bandwidth: Option<u64>,
    /// Never hydrate images (for every mount; per mount: `hydrate = false`).
    #[arg(long)]
    pub no_hydrate: bool,
    /// Unix socket answering `autosquash status` [default: /run/autosquash/control.sock].
    #[arg(long)]
    pub control_socket: Option<PathBuf>,
    /// Serve the metrics (Prometheus text format) as `GET /metrics` over plain HTTP on this
    /// address, e.g. 127.0.0.1:9753 [default: off].
    #[arg(long)]
    pub metrics_listen: Option<String>,
    #[command(flatten)]
    pub s3: S3Args,
    /// Read no configuration file at all (the demo must not pick up a system's).
    #[arg(skip)]
    pub ignore_config: bool,
}

/// Everything serve needs, from the file and the flags.
struct Settings {
    mounts: Vec<MountSpec>,
    memory_limit: u64,
    s3: S3Args,
    wait_for_store: bool,
    control_socket: PathBuf,
    metrics_listen: Option<String>,
    cache_dir: PathBuf,
    cache_size: u64,
    hydrate_max: u64,
    hydrate_bandwidth: u64,
}

fn settings(args: &ServeArgs) -> Result<Settings> {
    let file = match args.ignore_config {
        true => None,
        false => config::load(args.config.as_deref())?,
    }
    .unwrap_or_default();
    let mut mounts: Vec<MountSpec> = match &args.source {
        Some(source) => vec![
            MountSection {
                source: source.clone(),
                mountpoint: args
                    .mountpoint
                    .clone()
                    .unwrap_or_else(|| "/mnt/autosquash".into()),
                ..MountSection::default()
            }
            .resolve()?,
        ],
        None => file
            .mounts
            .iter()
            .map(MountSection::resolve)
            .collect::<Result<_>>()?,
    };
    if mounts.is_empty() {
        bail!(
            "nothing to serve: give --source, or [[mount]] sections in {}",
            config::DEFAULT_PATH
        );
    }
    for m in &mut mounts {
        m.view = args.view.unwrap_or(m.view);
        m.idle_timeout = args.idle_timeout.unwrap_or(m.idle_timeout);
        m.list_interval = args.list_interval.unwrap_or(m.list_interval);
        m.negative_ttl = args.negative_ttl.unwrap_or(m.negative_ttl);
        m.allow_other |= args.allow_other;
        m.uid = args.uid.or(m.uid);
        m.gid = args.gid.or(m.gid);
        m.hydrate &= !args.no_hydrate;
    }
    Ok(Settings {
        mounts,
        memory_limit: args
            .memory_limit
            .or(file.memory_limit()?)
            .unwrap_or(64 << 20),
        s3: file.s3_with(&args.s3)?,
        wait_for_store: args.wait_for_store || file.daemon.wait_for_store.unwrap_or(false),
        cache_dir: args
            .cache_dir
            .clone()
            .or(file.daemon.cache_dir.clone())
            .unwrap_or_else(|| config::DEFAULT_CACHE_DIR.into()),
        cache_size: args.cache_size.or(file.cache_size()?).unwrap_or(10 << 30),
        hydrate_max: args.hydrate_max.or(file.hydrate_max()?).unwrap_or(4 << 30),
        hydrate_bandwidth: args
            .hydrate_bandwidth
            .or(file.hydrate_bandwidth()?)
            .unwrap_or(0),
        control_socket: args
            .control_socket
            .clone()
            .or(file.daemon.control_socket.clone())
            .unwrap_or_else(|| config::DEFAULT_SOCKET.into()),
        metrics_listen: args
            .metrics_listen
            .clone()
            .or(file.daemon.metrics_listen.clone()),
    })
}

/// One served tree and what the daemon keeps of it.
pub struct Served {
    pub spec: MountSpec,
    pub tree: Arc<dyn Tree>,
    pub counters: Arc<StoreCounters>,
    /// The store itself, for what only it counts (retries).
    pub store: Arc<dyn Store>,
    /// The store the mount reads through (with the disk cache, for remote sources).
    pub cached: Arc<dyn Store>,
    /// The source's key prefix (image names in the metrics are keys without it).
    pub prefix: String,
    /// FUSE requests by operation and read latency (for the metrics).
    pub fuse: Arc<fuse::FuseStats>,
    mount: Mount,
}

pub async fn serve(args: ServeArgs) -> Result<()> {
    let settings = settings(&args)?;
    mountpoint::check_fuse_device()?;
    // Bound before anything is mounted: an address in use is a startup error, not a
    // half-started daemon.
    let metrics_listener = match &settings.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr.as_str())
                .await
                .with_context(|| format!("cannot listen for metrics on {addr} (metrics_listen)"))?,
        ),
        None => None,
    };
    let cache = BlockCache::new(settings.memory_limit);
    let mut served = Vec::new();
    let mut tasks = Vec::new();
    for spec in &settings.mounts {
        let (one, task) = start_mount(spec, &settings, &cache).await?;
        served.push(one);
        tasks.push(task);
    }
    let served = Arc::new(served);
    let status = crate::cmd::status::listen(
        &settings.control_socket,
        served.clone(),
        cache.clone(),
    )
    .map_err(|e| warn!(socket = %settings.control_socket.display(), error = %e, "no status socket"))
    .ok();
    let metrics = metrics_listener.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "serving metrics at /metrics");
        }
        crate::cmd::status::serve_metrics(listener, served.clone(), cache.clone())
    });

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = sigterm.recv() => {}
        _ = sigint.recv() => {}
    }
    for task in tasks.into_iter().chain(metrics) {
        task.abort();
    }
    if let Some(status) = status {
        status.abort();
        let _ = std::fs::remove_file(&settings.control_socket);
    }
    let mut result = Ok(());
    for one in served.iter() {
        info!(mountpoint = %one.spec.mountpoint.display(), "unmounting");
        if let Err(e) = one.mount.unmount() {
            result =
                Err(e).with_context(|| format!("unmounting {}", one.spec.mountpoint.display()));
        }
    }
    result
}

/// Lists the source (retrying if asked to), mounts it, and starts its housekeeping task.
async fn start_mount(
    spec: &MountSpec,
    settings: &Settings,
    cache: &Arc<BlockCache>,
) -> Result<(Served, tokio::task::JoinHandle<()>)> {
    let mountpoint = mountpoint::prepare(&spec.mountpoint)?;
    let source = image_source(&spec.source, &settings.s3).await?;
    let counting = CountingStore::new(source.store.clone());
    let counters = counting.counters.clone();
    // Remote data goes through the prefetch pipeline and is kept on local disk across
    // restarts (unless the cache size is 0); a local directory needs neither.
    let store: Arc<dyn Store> = if source.dir.is_none() {
        Arc::new(CachedStore::with_config(
            counting,
            settings.cache_dir.clone(),
            settings.cache_size,
            PipelineConfig {
                hydrate_max: settings.hydrate_max,
                hydrate_bandwidth: settings.hydrate_bandwidth,
                ..PipelineConfig::default()
            },
        ))
    } else {
        Arc::new(counting)
    };
    let cached = store.clone();
    let tree: Arc<dyn Tree> = match spec.view {
        View::Images => AutoFs::with_cache(
            store,
            cache.clone(),
            FsConfig {
                prefix: source.prefix.clone(),
                idle_timeout: spec.idle_timeout,
                uid: spec.uid,
                gid: spec.gid,
                memory_limit: settings.memory_limit,
                negative_ttl: spec.negative_ttl,
                hydrate: spec.hydrate,
            },
        ),
        View::Objects => ObjectFs::new(
            store,
            ObjectConfig {
                prefix: source.prefix.clone(),
                uid: spec.uid,
                gid: spec.gid,
            },
        ),
    };
    let shown = tree.describe();
    let mut delay = Duration::from_secs(1);
    while let Err(e) = tree.refresh().await {
        if !settings.wait_for_store {
            return Err(e).with_context(|| format!("cannot list {shown}"));
        }
        warn!(source = %shown, error = %e, retry_in = ?delay, "store not reachable yet");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(60));
    }
    // Local directories push changes; buckets are listed every --list-interval.
    let changes = source.dir.as_ref().and_then(|dir| {
        DirStore::new(dir)
            .watch()
            .map_err(|e| warn!(error = %e, "no change notifications; relying on periodic listing"))
            .ok()
    });
    let mount = fuse::mount(
        tree.clone(),
        &mountpoint,
        &MountConfig {
            allow_other: spec.allow_other,
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
    let invalidator = mount.invalidator();
    let task = tokio::spawn(housekeeping::run(
        tree.clone(),
        move |what| {
            let invalidator = invalidator.clone();
            async move { notify(&invalidator, what).await }
        },
        changes,
        Schedule {
            idle_timeout: spec.idle_timeout,
            list_interval: spec.list_interval,
        },
    ));
    let mut spec = spec.clone();
    spec.mountpoint = mountpoint;
    Ok((
        Served {
            spec,
            tree,
            counters,
            store: source.store,
            cached,
            prefix: source.prefix.clone(),
            fuse: mount.stats().clone(),
            mount,
        },
        task,
    ))
}

/// Sends kernel invalidations from a blocking thread (see [`fuse::Invalidator::apply`]).
async fn notify(invalidate: &fuse::Invalidator, what: Vec<autosquash_fs::tree::Invalidation>) {
    if what.is_empty() {
        return;
    }
    let invalidate = invalidate.clone();
    let _ = tokio::task::spawn_blocking(move || invalidate.apply(&what)).await;
}
