//! The metrics: a daemon on a local directory serves a known workload, then
//! `autosquash status --prometheus` and `GET /metrics` (metrics_listen) are parsed with a real
//! Prometheus text-format parser and checked against the workload and `status --json`.

mod common;

use autosquash_testkit::corpus::{mksquashfs, pseudo_random_bytes};
use common::{Daemon, open_tempdir, wait_for};
use prometheus_parse::{Sample, Scrape, Value};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const FILES: usize = 6;

fn parse(text: &str) -> Scrape {
    strict_checks(text);
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// What the (lenient) parser does not check: one HELP and TYPE per family, given before its
/// samples, every sample belonging to the family declared last, names prefixed autosquash_.
fn strict_checks(text: &str) {
    let mut declared = HashSet::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(name.starts_with("autosquash_"), "{line}");
            assert!(
                declared.insert(name.to_owned()),
                "family declared twice: {line}"
            );
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            current = Some((name.to_owned(), kind.to_owned()));
        } else if line.starts_with("# HELP ") {
        } else {
            let (name, kind) = current.as_ref().expect("a sample before any TYPE");
            let sample = line.split(['{', ' ']).next().unwrap();
            let ok = match kind.as_str() {
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| sample == format!("{name}{s}")),
                _ => sample == name,
            };
            assert!(ok, "sample {sample} outside its family {name}: {line}");
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad value: {line}");
        }
    }
}

fn value(s: &Sample) -> f64 {
    match &s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{} is not a number: {other:?}", s.metric),
    }
}

/// The one sample of `metric` whose labels include `labels`.
fn get(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .collect();
    assert_eq!(found.len(), 1, "{metric} {labels:?}: {found:?}");
    value(found[0])
}

/// Every histogram: cumulative buckets, `+Inf` equal to `_count`, a sum that is a number.
fn check_histograms(scrape: &Scrape) -> usize {
    let mut n = 0;
    for s in &scrape.samples {
        let Value::Histogram(buckets) = &s.value else {
            continue;
        };
        n += 1;
        assert!(buckets.len() >= 2, "{s:?}");
        let mut sorted = buckets.clone();
        sorted.sort_by(|a, b| a.less_than.total_cmp(&b.less_than));
        for pair in sorted.windows(2) {
            assert!(pair[0].count <= pair[1].count, "not cumulative: {s:?}");
        }
        let inf = sorted.last().unwrap();
        assert!(inf.less_than.is_infinite(), "no +Inf bucket: {s:?}");
        let labels: Vec<(&str, &str)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let count = get(scrape, &format!("{}_count", s.metric), &labels);
        assert_eq!(inf.count, count, "+Inf bucket != count: {s:?}");
        get(scrape, &format!("{}_sum", s.metric), &labels);
    }
    n
}

fn histogram_count(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    get(scrape, &format!("{metric}_count"), labels)
}

fn prometheus(daemon: &Daemon) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_autosquash"))
        .args(["status", "--prometheus", "--control-socket"])
        .arg(daemon.control_socket())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "status --prometheus: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn http_get(port: u16, path: &str) -> (String, String) {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(conn, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn make_image(source: &Path) {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..FILES {
        std::fs::write(
            src.join(format!("f{i}.bin")),
            pseudo_random_bytes(i as u64, 300 << 10),
        )
        .unwrap();
    }
    mksquashfs(&src, &source.join("data.squash"), &["-comp", "zstd"]);
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
fn status_prometheus_and_metrics_listen_report_a_known_workload() {
    let dir = open_tempdir();
    let (source, mnt) = (dir.path().join("source"), dir.path().join("mnt"));
    std::fs::create_dir(&source).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    make_image(&source);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(&source, &mnt, &["--metrics-listen", &listen]);

    for i in 0..FILES {
        let data = std::fs::read(mnt.join("data").join(format!("f{i}.bin"))).unwrap();
        assert_eq!(data, pseudo_random_bytes(i as u64, 300 << 10));
    }
    let before = daemon.status();
    let text = prometheus(&daemon);
    let after = daemon.status();
    let scrape = parse(&text);
    let mp = mnt.to_str().unwrap();
    let m = [("mountpoint", mp)];

    // The workload: FILES files read, each at least one READ (a fresh mount, cold page cache).
    let reads = get(
        &scrape,
        "autosquash_fuse_requests_total",
        &[("mountpoint", mp), ("op", "read")],
    );
    assert!(
        reads >= FILES as f64,
        "{reads} reads for {FILES} files\n{text}"
    );
    assert!(
        get(
            &scrape,
            "autosquash_fuse_requests_total",
            &[("mountpoint", mp), ("op", "lookup")]
        ) >= 1.0
    );
    // Every read answered is in the latency histogram (the daemon is idle by now).
    assert_eq!(
        histogram_count(&scrape, "autosquash_fuse_read_duration_seconds", &m),
        reads
    );
    assert_eq!(get(&scrape, "autosquash_images_mounted", &m), 1.0);
    assert_eq!(get(&scrape, "autosquash_image_mounts_total", &m), 1.0);
    assert_eq!(get(&scrape, "autosquash_images_listed", &m), 1.0);
    assert_eq!(
        get(
            &scrape,
            "autosquash_image_size_bytes",
            &[("mountpoint", mp), ("image", "data")]
        ),
        std::fs::metadata(source.join("data.squash")).unwrap().len() as f64
    );
    assert_eq!(get(&scrape, "autosquash_panics_total", &[]), 0.0);
    assert!(get(&scrape, "autosquash_process_resident_memory_bytes", &[]) > 1e6);
    assert!(
        get(
            &scrape,
            "autosquash_process_resident_memory_peak_bytes",
            &[]
        ) >= get(&scrape, "autosquash_process_resident_memory_bytes", &[])
    );

    // Store counters match status --json, taken just before and after.
    let json_store = |doc: &serde_json::Value, field: &str| {
        doc["mounts"][0]["store"][field].as_u64().unwrap() as f64
    };
    for (metric, field) in [
        ("autosquash_store_requests_total", "requests"),
        ("autosquash_store_bytes_total", "bytes"),
        ("autosquash_store_errors_total", "errors"),
    ] {
        let v = get(&scrape, metric, &m);
        assert!(
            json_store(&before, field) <= v && v <= json_store(&after, field),
            "{metric} {v} vs status --json {before} / {after}"
        );
    }
    let requests = get(&scrape, "autosquash_store_requests_total", &m);
    assert!(requests >= 2.0, "the image was read from the store");
    // Every store request has its latency recorded, by operation.
    let timed: f64 = ["list", "head", "read"]
        .iter()
        .map(|op| {
            histogram_count(
                &scrape,
                "autosquash_store_request_duration_seconds",
                &[("mountpoint", mp), ("op", op)],
            )
        })
        .sum();
    assert_eq!(timed, requests);
    // Per image, the store bytes are all of the mount's (one image).
    assert_eq!(
        get(
            &scrape,
            "autosquash_image_store_bytes_total",
            &[("mountpoint", mp), ("image", "data")]
        ),
        get(&scrape, "autosquash_store_bytes_total", &m)
    );
    // Memory cache figures agree with status --json.
    let lookups = after["cache"]["lookups"].as_u64().unwrap() as f64;
    let hits = get(&scrape, "autosquash_memory_cache_hits_total", &[]);
    let misses = get(&scrape, "autosquash_memory_cache_misses_total", &[]);
    assert!(
        hits + misses <= lookups && misses > 0.0,
        "{hits} {misses} {lookups}"
    );
    assert!(check_histograms(&scrape) >= 4);

    // The same over HTTP.
    let (head, body) = http_get(port, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let http = parse(&body);
    check_histograms(&http);
    let names =
        |s: &Scrape| -> HashSet<String> { s.samples.iter().map(|s| s.metric.clone()).collect() };
    assert_eq!(names(&http), names(&scrape));
    let http_reads = get(
        &http,
        "autosquash_fuse_requests_total",
        &[("mountpoint", mp), ("op", "read")],
    );
    assert_eq!(http_reads, reads, "nothing was read in between");
    assert_eq!(get(&http, "autosquash_images_mounted", &m), 1.0);
    let (head, _) = http_get(port, "/other");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    // An address in use is a clear startup error.
    let mnt2 = dir.path().join("mnt2");
    std::fs::create_dir(&mnt2).unwrap();
    let mut second = Daemon::spawn(&source, &mnt2, &["--metrics-listen", &listen], &[]);
    let mut exit = None;
    wait_for(Duration::from_secs(20), "the second daemon to exit", || {
        exit = second.child.try_wait().unwrap();
        exit.is_some()
    });
    assert!(!exit.unwrap().success());
    let log = second.log_text();
    assert!(log.contains("cannot listen for metrics on"), "{log}");
    assert!(!common::is_mounted(&mnt2));

    // Label sets are unique per family (no sample exported twice).
    let mut seen = HashMap::new();
    for s in &scrape.samples {
        let mut labels: Vec<_> = s.labels.iter().collect();
        labels.sort();
        let key = format!("{}{labels:?}", s.metric);
        assert!(seen.insert(key.clone(), ()).is_none(), "duplicate {key}");
    }
    drop(daemon);
}
