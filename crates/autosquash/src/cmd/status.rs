//! `autosquash status`: the daemon answers on a unix socket with one JSON document (mounts,
//! images, cache, store counters, FUSE requests, latency histograms, memory); the command
//! prints it as a table, as JSON, or as a Prometheus text exposition (rendered here, in the
//! client, from the same document: the socket protocol stays one document per connection).
//! With `metrics_listen`, the daemon also serves that exposition as `GET /metrics`.

mod prometheus;

use super::serve::{Mounts, Served};
use crate::config;
use anyhow::{Context, Result};
use autosquash_core::BlockCache;
use autosquash_core::histogram::{BOUNDS_US, Histogram};
use clap::Args;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Args)]
pub struct StatusArgs {
    /// Print the daemon's JSON document as it is.
    #[arg(long, conflicts_with = "prometheus")]
    json: bool,
    /// Print the metrics in the Prometheus text format (0.0.4), e.g. for node_exporter's
    /// textfile collector.
    #[arg(long)]
    prometheus: bool,
    /// The daemon's control socket.
    #[arg(long, default_value = config::DEFAULT_SOCKET)]
    control_socket: PathBuf,
}

/// Peak and current resident memory of this process, in KiB.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A histogram as the document carries it: bucket bounds, counts per bucket (not cumulative,
/// `+Inf` last) and the sum.
fn histogram(h: &Histogram) -> Value {
    let s = h.snapshot();
    json!({
        "bounds_us": BOUNDS_US,
        "buckets": s.buckets,
        "count": s.count(),
        "sum_us": s.sum_us,
    })
}

fn document(served: &[Arc<Served>], cache: &BlockCache) -> Value {
    let (hits, lookups) = cache.hits_and_lookups();
    let (rss, peak) = memory_kib();
    let mounts: Vec<Value> = served
        .iter()
        .map(|s| {
            let c = &s.counters;
            let mut tree = s.tree.status();
            tree["mountpoint"] = json!(s.spec.mountpoint);
            tree["store"] = json!({
                "requests": c.requests.load(Ordering::Relaxed),
                "bytes": c.bytes.load(Ordering::Relaxed),
                "errors": c.errors.load(Ordering::Relaxed),
                "retries": s.store.retries(),
                "replaced": c.replaced.load(Ordering::Relaxed),
                "latency": {
                    "list": histogram(&c.list_latency),
                    "head": histogram(&c.head_latency),
                    "read": histogram(&c.read_latency),
                },
                "objects": c.objects().iter().map(|(key, o)| json!({
                    "key": key,
                    "image": autosquash_fs::fs::image_name(&s.prefix, key),
                    "requests": o.requests.load(Ordering::Relaxed),
                    "bytes": o.bytes.load(Ordering::Relaxed),
                    "errors": o.errors.load(Ordering::Relaxed),
                    "replaced": o.replaced.load(Ordering::Relaxed),
                })).collect::<Vec<_>>(),
            });
            let requests: serde_json::Map<String, Value> = s
                .fuse
                .requests()
                .into_iter()
                .map(|(op, n)| (op.to_owned(), json!(n)))
                .collect();
            tree["fuse"] = json!({
                "requests": requests,
                "read_latency": histogram(&s.fuse.read_latency),
                "pushed": {
                    "files": s.fuse.pushed.load(Ordering::Relaxed),
                    "bytes": s.fuse.pushed_bytes.load(Ordering::Relaxed),
                    "forgotten": s.fuse.push_unknown.load(Ordering::Relaxed),
                },
            });
            if let Some((bytes, enabled)) = s.cached.disk_usage() {
                tree["disk_cache"] = json!({ "bytes": bytes, "enabled": enabled });
            }
            tree
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        // Requests that panicked (each one a bug, answered EIO): 0 on a healthy daemon.
        "panics": autosquash_fs::fs::panics(),
        "mounts": mounts,
        "cache": {
            "memory_bytes": cache.used_bytes(),
            "memory_limit": cache.capacity_bytes(),
            "lookups": lookups,
            "hits": hits,
            "hit_ratio": if lookups == 0 { 0.0 } else { hits as f64 / lookups as f64 },
        },
        "memory": { "rss_kib": rss, "peak_rss_kib": peak },
    })
}

/// Serves status documents on `path` until the returned task is aborted.
pub fn listen(
    path: &Path,
    served: Arc<Mounts>,
    cache: Arc<BlockCache>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A socket left by a daemon that died is in the way: nothing can be listening on it, as
    // the mountpoint checks already made sure no other daemon runs with this configuration.
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    Ok(tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let body = document(&served.snapshot(), &cache).to_string();
            tokio::spawn(async move {
                let _ = conn.write_all(body.as_bytes()).await;
            });
        }
    }))
}

/// Serves `GET /metrics` (the Prometheus exposition) over plain HTTP on `listener` until the
/// returned task is aborted. A minimal responder: one request per connection, then close.
pub fn serve_metrics(
    listener: tokio::net::TcpListener,
    served: Arc<Mounts>,
    cache: Arc<BlockCache>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                // Out of file descriptors and the like: try again shortly.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            let (served, cache) = (served.clone(), cache.clone());
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    answer_http(conn, &served, &cache),
                )
                .await;
            });
        }
    })
}

async fn answer_http(
    mut conn: tokio::net::TcpStream,
    served: &Mounts,
    cache: &BlockCache,
) -> std::io::Result<()> {
    // The request head, up to its blank line (bodies are not expected; 8 KiB at most).
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = conn.read(&mut buf).await?;
        if n == 0 || head.len() > 8192 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            prometheus::CONTENT_TYPE,
            prometheus::render(&document(&served.snapshot(), cache)),
        ),
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "try /metrics\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_owned(),
        ),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        response.push_str(&body);
    }
    conn.write_all(response.as_bytes()).await?;
    conn.shutdown().await
}

pub async fn status(args: StatusArgs) -> Result<()> {
    let mut conn = tokio::net::UnixStream::connect(&args.control_socket)
        .await
        .with_context(|| {
            format!(
                "cannot reach the daemon at {} (is autosquash serve running?)",
                args.control_socket.display()
            )
        })?;
    let mut text = String::new();
    conn.read_to_string(&mut text).await?;
    let doc: Value = serde_json::from_str(&text).context("the daemon sent invalid status")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    if args.prometheus {
        print!("{}", prometheus::render(&doc));
        return Ok(());
    }
    let cache = &doc["cache"];
    println!(
        "autosquash {} (pid {}): memory {} KiB (peak {} KiB), cache {} of {} bytes, hit ratio {:.1}%",
        doc["version"].as_str().unwrap_or("?"),
        doc["pid"],
        doc["memory"]["rss_kib"],
        doc["memory"]["peak_rss_kib"],
        cache["memory_bytes"],
        cache["memory_limit"],
        cache["hit_ratio"].as_f64().unwrap_or(0.0) * 100.0
    );
    if doc["panics"].as_u64().unwrap_or(0) > 0 {
        println!(
            "{} requests panicked (a bug: see the daemon's log and report it)",
            doc["panics"]
        );
    }
    for m in doc["mounts"].as_array().into_iter().flatten() {
        let s = &m["store"];
        println!(
            "\n{} <- {} ({}): store requests {}, bytes {}, retries {}, errors {}, replaced {}",
            m["mountpoint"].as_str().unwrap_or("?"),
            m["source"].as_str().unwrap_or("?"),
            m["kind"].as_str().unwrap_or("?"),
            s["requests"],
            s["bytes"],
            s["retries"],
            s["errors"],
            s["replaced"]
        );
        for image in m["images_mounted"].as_array().into_iter().flatten() {
            println!(
                "  {:<30} etag {} mounted {}s ago, idle {}s, {} kernel references{}",
                image["name"].as_str().unwrap_or("?"),
                image["etag"].as_str().unwrap_or("?"),
                image["mounted_secs_ago"],
                image["idle_secs"],
                image["kernel_refs"],
                if image["outdated"].as_bool() == Some(true) {
                    ", outdated"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}
