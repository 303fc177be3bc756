//! `autosquash serve`: the daemon. Mounts every configured tree (the image root, the plain
//! object view) sharing one cache, keeps listings fresh, retires idle images, answers
//! `autosquash status` on a unix socket, and unmounts cleanly on SIGTERM or SIGINT (or, when
//! systemd restarts it, leaves the mounts to the next process).

use crate::config::{self, MountSection, MountSpec, View};
use crate::mountpoint;
use crate::notify;
use crate::source::{S3Args, image_source};
use crate::units::{parse_duration, parse_size};
use anyhow::{Context, Result, bail};
use autosquash_cache::{CachedStore, PipelineConfig};
use autosquash_core::{BlockCache, CountingStore, DirStore, Store, StoreCounters};
use autosquash_fs::fuse::{self, Mount, MountConfig};
use autosquash_fs::handover::StateLog;
use autosquash_fs::housekeeping::{self, Schedule};
use autosquash_fs::tree::Tuning;
use autosquash_fs::{AutoFs, FsConfig, ObjectConfig, ObjectFs, Tree};
use clap::Args;
use std::collections::HashMap;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{error, info, warn};

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
    /// As configured (a reload compares it), but with the mountpoint resolved.
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
    /// The mount as configured (a reload may retune it), and what its store was made with:
    /// a reload that changes neither leaves the mount alone.
    configured: std::sync::Mutex<MountSpec>,
    made_with: StoreSettings,
    mount: Mount,
    /// What the kernel references, for a successor (see autosquash-fs's handover module).
    log: Option<Arc<StateLog>>,
    /// The service manager keeps the connection and the log for the next process.
    kept: bool,
    housekeeping: tokio::task::JoinHandle<()>,
    schedule: watch::Sender<Schedule>,
}

impl Served {
    /// Tells the service manager not to keep this mount's connection any longer.
    fn release_kept(&self) {
        let key = kept_key(&self.configured().mountpoint);
        notify::remove_fds(&format!("fuse-{key}"));
        notify::remove_fds(&format!("state-{key}"));
    }

    fn configured(&self) -> MountSpec {
        self.configured
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Takes what `spec` changes of the settings a running mount can change (idle timeout,
    /// negative TTL, hydration, list interval); false if it changes anything else.
    fn retune(&self, spec: &MountSpec) -> bool {
        let mut configured = self
            .configured
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tuned = MountSpec {
            idle_timeout: spec.idle_timeout,
            negative_ttl: spec.negative_ttl,
            hydrate: spec.hydrate,
            list_interval: spec.list_interval,
            ..configured.clone()
        };
        if tuned != *spec {
            return false;
        }
        if *configured != *spec {
            self.tree.retune(Tuning {
                idle_timeout: spec.idle_timeout,
                negative_ttl: spec.negative_ttl,
                hydrate: spec.hydrate,
            });
            let _ = self.schedule.send(schedule_of(spec));
            info!(mountpoint = %self.spec.mountpoint.display(), "reload: settings changed in place");
            *configured = tuned;
        }
        true
    }
}

fn schedule_of(spec: &MountSpec) -> Schedule {
    Schedule {
        idle_timeout: spec.idle_timeout,
        list_interval: spec.list_interval,
    }
}

/// What a mount's store is made with besides its own section.
#[derive(Clone, PartialEq)]
struct StoreSettings {
    /// For S3 sources only (a local directory does not use them).
    s3: Option<S3Args>,
    cache_dir: PathBuf,
    cache_size: u64,
    hydrate_max: u64,
    hydrate_bandwidth: u64,
}

impl StoreSettings {
    fn of(spec: &MountSpec, settings: &Settings) -> Self {
        Self {
            s3: spec
                .source
                .starts_with("s3://")
                .then(|| settings.s3.clone()),
            cache_dir: settings.cache_dir.clone(),
            cache_size: settings.cache_size,
            hydrate_max: settings.hydrate_max,
            hydrate_bandwidth: settings.hydrate_bandwidth,
        }
    }
}

/// The mounts being served, shared with the status socket and the metrics; a reload
/// replaces them.
#[derive(Default)]
pub struct Mounts(std::sync::RwLock<Vec<Arc<Served>>>);

impl Mounts {
    pub fn snapshot(&self) -> Vec<Arc<Served>> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn replace(&self, mounts: Vec<Arc<Served>>) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = mounts;
    }
}

pub async fn serve(args: ServeArgs) -> Result<()> {
    let mut settings = settings(&args)?;
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
    let mounts = Arc::new(Mounts::default());
    let mut inherited = Inherited::take();
    let mut started = Vec::new();
    for spec in &settings.mounts {
        let adopt = inherited.for_mount(&spec.mountpoint);
        let prepared = prepare_mount(
            spec,
            &settings,
            &cache,
            settings.wait_for_store,
            adopt.is_some(),
        )
        .await?;
        started.push(Arc::new(attach(prepared, spec, adopt).await?));
    }
    inherited.drop_rest();
    mounts.replace(started);
    let status = crate::cmd::status::listen(
        &settings.control_socket,
        mounts.clone(),
        cache.clone(),
    )
    .map_err(|e| warn!(socket = %settings.control_socket.display(), error = %e, "no status socket"))
    .ok();
    let metrics = metrics_listener.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "serving metrics at /metrics");
        }
        crate::cmd::status::serve_metrics(listener, mounts.clone(), cache.clone())
    });
    // Every mount has listed its source and answers: units ordered after this one find
    // their images.
    notify::ready(&serving(&mounts));

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    // Handled from here on: what arrived while this program took the mounts over is delivered.
    crate::signals::release();
    // Whether the mounts systemd keeps are left to the next process instead of unmounted.
    let mut restarting = false;
    loop {
        tokio::select! {
            _ = sigterm.recv() => {
                let kept = mounts.snapshot().iter().filter(|m| m.kept).count();
                restarting = kept > 0 && notify::restart_keeps(2 * kept);
                break;
            }
            _ = sigint.recv() => break,
            _ = sighup.recv() => {
                notify::reloading();
                if let Some(program) = upgraded_program() {
                    // Only returns if the new program could not be started.
                    let e = hand_over_to(&program, &mounts);
                    error!(program = %program.display(), error = %e, "cannot start the upgraded program; this one goes on");
                }
                reload(&args, &mut settings, &mounts, &cache).await;
                notify::ready(&serving(&mounts));
            }
        }
    }
    notify::stopping();
    if let Some(task) = metrics {
        task.abort();
    }
    if let Some(status) = status {
        status.abort();
        let _ = std::fs::remove_file(&settings.control_socket);
    }
    let mut result = Ok(());
    for one in mounts.snapshot() {
        one.housekeeping.abort();
        if restarting && one.kept {
            // The next process takes it over as after a crash: requests this one read and
            // did not answer are sent to it again.
            info!(mountpoint = %one.spec.mountpoint.display(), "systemd restarts the service: the mount is handed over to the next process");
            continue;
        }
        info!(mountpoint = %one.spec.mountpoint.display(), "unmounting");
        one.release_kept();
        if let Err(e) = one.mount.unmount() {
            result =
                Err(e).with_context(|| format!("unmounting {}", one.spec.mountpoint.display()));
        }
    }
    result
}

/// The STATUS line for the service manager.
fn serving(mounts: &Mounts) -> String {
    let all = mounts.snapshot();
    let places: Vec<String> = all
        .iter()
        .map(|m| m.spec.mountpoint.display().to_string())
        .collect();
    format!("serving {}", places.join(", "))
}

/// Reads the configuration again and applies it: mounts that are new are mounted, mounts that
/// are gone are detached, mounts whose settings changed are replaced; the others are not
/// touched. A detached or replaced mount leaves its mountpoint at once, and what is open in
/// it keeps working until closed. A configuration that does not parse, or a mount that
/// cannot be made, is refused with the reason in the log, and what runs keeps running.
async fn reload(
    args: &ServeArgs,
    running: &mut Settings,
    mounts: &Mounts,
    cache: &Arc<BlockCache>,
) {
    let new = match settings(args) {
        Ok(new) => new,
        Err(e) => {
            error!(error = %format!("{e:#}"), "reload refused: keeping the running configuration");
            return;
        }
    };
    for (what, changed) in [
        ("memory_limit", new.memory_limit != running.memory_limit),
        (
            "control_socket",
            new.control_socket != running.control_socket,
        ),
        (
            "metrics_listen",
            new.metrics_listen != running.metrics_listen,
        ),
    ] {
        if changed {
            warn!(
                setting = what,
                "changed; it takes effect at the next restart"
            );
        }
    }
    let old = mounts.snapshot();
    let mut next = Vec::new();
    for spec in &new.mounts {
        let current = old
            .iter()
            .find(|m| m.configured().mountpoint == spec.mountpoint);
        if let Some(m) = current
            && m.made_with == StoreSettings::of(spec, &new)
            && m.retune(spec)
        {
            next.push(m.clone());
            continue;
        }
        // The new tree first (its store, its first listing): if that fails, the old mount
        // stays as it is.
        let prepared = match prepare_mount(spec, &new, cache, false, false).await {
            Ok(prepared) => prepared,
            Err(e) => {
                error!(mountpoint = %spec.mountpoint.display(), error = %format!("{e:#}"), "reload: cannot make this mount; keeping what serves there");
                next.extend(current.cloned());
                continue;
            }
        };
        if let Some(m) = current
            && let Err(e) = retire(m)
        {
            error!(mountpoint = %spec.mountpoint.display(), error = %e, "reload: cannot take the old mount off; keeping it");
            next.push(m.clone());
            continue;
        }
        match attach(prepared, spec, None).await {
            Ok(m) => {
                info!(mountpoint = %spec.mountpoint.display(), replaced = current.is_some(), "reload: mounted");
                next.push(Arc::new(m));
            }
            Err(e) => {
                error!(mountpoint = %spec.mountpoint.display(), error = %format!("{e:#}"), "reload: cannot mount")
            }
        }
    }
    for m in &old {
        if !new
            .mounts
            .iter()
            .any(|s| s.mountpoint == m.configured().mountpoint)
        {
            match retire(m) {
                Ok(()) => info!(mountpoint = %m.spec.mountpoint.display(), "reload: unmounted"),
                Err(e) => {
                    error!(mountpoint = %m.spec.mountpoint.display(), error = %e, "reload: cannot unmount; keeping it");
                    next.push(m.clone());
                }
            }
        }
    }
    mounts.replace(next);
    *running = new;
}

/// Takes a mount off its mountpoint (what is open in it keeps working) and stops its
/// housekeeping.
fn retire(m: &Served) -> std::io::Result<()> {
    m.release_kept();
    m.mount.detach()?;
    m.housekeeping.abort();
    Ok(())
}

/// A tree made and listed, not mounted yet.
struct Prepared {
    tree: Arc<dyn Tree>,
    counters: Arc<StoreCounters>,
    store: Arc<dyn Store>,
    cached: Arc<dyn Store>,
    prefix: String,
    changes: Option<tokio::sync::mpsc::Receiver<()>>,
    made_with: StoreSettings,
}

/// Makes the mount's store and tree and lists its source (retrying if `wait_for_store`).
async fn prepare_mount(
    spec: &MountSpec,
    settings: &Settings,
    cache: &Arc<BlockCache>,
    wait_for_store: bool,
    adopting: bool,
) -> Result<Prepared> {
    // A mount being taken over is alive and waits for us: a look at it would never return.
    if !adopting {
        mountpoint::must_exist(&spec.mountpoint)?;
    }
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
        if !wait_for_store {
            return Err(e).with_context(|| format!("cannot list {shown}"));
        }
        warn!(source = %shown, error = %e, retry_in = ?delay, "store not reachable yet");
        notify::status(&format!("waiting for {shown}: {e}"));
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
    Ok(Prepared {
        tree,
        counters,
        store: source.store,
        cached,
        prefix: source.prefix.clone(),
        changes,
        made_with: StoreSettings::of(spec, settings),
    })
}

/// Mounts a prepared tree at the spec's mountpoint, or takes over the mount a predecessor
/// left there (`adopt`), and starts its housekeeping.
async fn attach(prepared: Prepared, spec: &MountSpec, adopt: Option<Kept>) -> Result<Served> {
    let (mountpoint, log, connection) = match adopt {
        Some(kept) => {
            let (log, lines) =
                StateLog::adopt(kept.state).context("reading the predecessor's state")?;
            let restored = prepared.tree.restore(&lines).await;
            info!(mountpoint = %spec.mountpoint.display(), restored, "taking over the mount a predecessor served");
            (
                mountpoint::resolve_without_entering(&spec.mountpoint)?,
                Ok(log),
                Some(kept.connection),
            )
        }
        None => {
            let log = StateLog::create(&spec.mountpoint.display().to_string());
            (mountpoint::prepare(&spec.mountpoint)?, log, None)
        }
    };
    // Without a log the mount works, but does not survive the death of this process.
    let log = log
        .map_err(|e| warn!(mountpoint = %spec.mountpoint.display(), error = %e, "no state log; a crash will unmount"))
        .ok()
        .map(Arc::new);
    let Prepared {
        tree,
        counters,
        store,
        cached,
        prefix,
        changes,
        made_with,
    } = prepared;
    let mount = fuse::mount(
        tree.clone(),
        &mountpoint,
        &MountConfig {
            allow_other: spec.allow_other,
        },
        tokio::runtime::Handle::current(),
        connection,
    )
    .with_context(|| {
        format!(
            "cannot mount at {} (root, or fuse3's fusermount3, is needed; --allow-other needs \
             user_allow_other in /etc/fuse.conf)",
            mountpoint.display()
        )
    })?;
    info!(source = %tree.describe(), mountpoint = %mountpoint.display(), "serving");
    let key = kept_key(&spec.mountpoint);
    // Recorded whenever the connection is ours: a holder keeps it after a crash, and an
    // upgrade passes it on (see `hand_over_to`).
    let log = log.filter(|log| mount.connection().is_some() && tree.record_to(log.clone()));
    let mut kept = false;
    if let (Some(connection), Some(log)) = (mount.connection(), &log)
        && notify::has_manager()
    {
        let stored = log.fd().and_then(|state| {
            notify::store_fds(&format!("state-{key}"), &[state.as_fd()])?;
            notify::store_fds(&format!("fuse-{key}"), &[connection])
        });
        match stored {
            Ok(()) => kept = true,
            Err(e) => {
                warn!(mountpoint = %mountpoint.display(), error = %e, "cannot give the connection to the service manager; a crash will unmount");
            }
        }
    }
    let invalidator = mount.invalidator();
    let (schedule, schedule_rx) = watch::channel(schedule_of(spec));
    let housekeeping = tokio::spawn(housekeeping::run(
        tree.clone(),
        move |what| {
            let invalidator = invalidator.clone();
            async move { notify(&invalidator, what).await }
        },
        changes,
        schedule_rx,
    ));
    let mut resolved = spec.clone();
    resolved.mountpoint = mountpoint;
    Ok(Served {
        spec: resolved,
        tree,
        counters,
        store,
        cached,
        prefix,
        fuse: mount.stats().clone(),
        configured: std::sync::Mutex::new(spec.clone()),
        made_with,
        mount,
        log,
        kept,
        housekeeping,
        schedule,
    })
}

/// Sends kernel invalidations from a blocking thread (see [`fuse::Invalidator::apply`]).
async fn notify(invalidate: &fuse::Invalidator, what: Vec<autosquash_fs::tree::Invalidation>) {
    if what.is_empty() {
        return;
    }
    let invalidate = invalidate.clone();
    let _ = tokio::task::spawn_blocking(move || invalidate.apply(&what)).await;
}

/// The program's file at its path, if it was replaced since this process started (a package
/// upgrade): a reload then hands the mounts over to it.
fn upgraded_program() -> Option<PathBuf> {
    let exe = std::fs::read_link("/proc/self/exe").ok()?;
    let path = exe.to_str()?.strip_suffix(" (deleted)")?;
    Path::new(path).is_file().then(|| PathBuf::from(path))
}

/// Replaces this process by `program` (same pid, same arguments), which takes every mount
/// over as after a crash: the connections and state logs are passed open, named in
/// `AUTOSQUASH_FDS`, and requests this process had read are resent by the kernel at the
/// successor's request. A mount that cannot be handed on (the object view) ends, and the
/// successor replaces it. Returns only on failure.
#[allow(unsafe_code)]
fn hand_over_to(program: &Path, mounts: &Mounts) -> std::io::Error {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let mut passed: Vec<(String, OwnedFd)> = Vec::new();
    for one in mounts.snapshot() {
        let key = kept_key(&one.configured().mountpoint);
        let (Some(connection), Some(log)) = (one.mount.connection(), one.log.as_ref()) else {
            warn!(mountpoint = %one.spec.mountpoint.display(), "this mount cannot be handed over; it ends with the upgrade");
            continue;
        };
        match (connection.try_clone_to_owned(), log.fd()) {
            (Ok(c), Ok(l)) => {
                passed.push((format!("fuse-{key}"), c));
                passed.push((format!("state-{key}"), l));
            }
            (Err(e), _) | (_, Err(e)) => return e,
        }
    }
    let named: Vec<String> = passed
        .iter()
        .map(|(name, fd)| {
            // SAFETY: a descriptor this process owns; it is to stay open across exec.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) };
            format!("{name}={}", fd.as_raw_fd())
        })
        .collect();
    info!(program = %program.display(), mounts = passed.len() / 2, "upgraded: handing the mounts over to the new program");
    let mut command = std::process::Command::new(program);
    command
        .args(std::env::args_os().skip(1))
        .env("AUTOSQUASH_FDS", named.join(","));
    crate::signals::hold_for(&mut command);
    command.exec()
}

/// What a predecessor left with the service manager for one mount.
struct Kept {
    connection: OwnedFd,
    state: OwnedFd,
}

/// The descriptors passed on at startup (`LISTEN_FDS`), named `fuse-KEY` and `state-KEY` by
/// the mountpoint's [`kept_key`].
struct Inherited(HashMap<String, OwnedFd>);

impl Inherited {
    /// From the service manager (`LISTEN_FDS`), or from the program this one replaced
    /// (`AUTOSQUASH_FDS`, see [`hand_over_to`]).
    #[allow(unsafe_code)]
    fn take() -> Self {
        let mut all: HashMap<String, OwnedFd> = notify::take_listen_fds().into_iter().collect();
        if let Some(named) = std::env::var_os("AUTOSQUASH_FDS") {
            // SAFETY of remove_var: at startup, before other threads read the environment.
            unsafe { std::env::remove_var("AUTOSQUASH_FDS") };
            for one in named.to_string_lossy().split(',') {
                let Some((name, fd)) = one.split_once('=') else {
                    continue;
                };
                let Ok(fd) = fd.parse::<i32>() else { continue };
                // SAFETY: the predecessor left this descriptor open for us, and names it once;
                // fcntl checks that it is open before it is owned.
                if fd > 2 && unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == 0 {
                    all.insert(name.to_owned(), unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        Self(all)
    }

    /// The connection and state of the mount at `mountpoint`, if both were kept.
    fn for_mount(&mut self, mountpoint: &Path) -> Option<Kept> {
        let key = kept_key(mountpoint);
        let connection = self.0.remove(&format!("fuse-{key}"));
        let state = self.0.remove(&format!("state-{key}"));
        Some(Kept {
            connection: connection?,
            state: state?,
        })
    }

    /// Mounts no longer configured: their connections are let go (the kernel then ends them).
    fn drop_rest(self) {
        for name in self.0.keys() {
            warn!(
                name,
                "a kept connection for a mount no longer configured; letting it go"
            );
            notify::remove_fds(name);
        }
    }
}

/// A mountpoint's name in the file descriptor store: a hash of the path as configured (FDNAME
/// allows neither every byte of a path nor more than 255 of them).
fn kept_key(mountpoint: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    // FNV-1a: stable across builds, unlike std's hasher.
    let hash = mountpoint
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("{hash:016x}")
}
