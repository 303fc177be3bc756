//! The Prometheus text exposition (format 0.0.4) of a status document: written by hand (the
//! format is simple), for `autosquash status --prometheus` and the daemon's `GET /metrics`.
//! Every metric is documented in docs/CONFIGURATION.md ("Metrics"); keep the two in step.

use serde_json::Value;
use std::fmt::Write;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A label value as the text format wants it: backslash, double quote and newline escaped.
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// Metric families in the order first seen, each with its samples together (the format
/// requires one block per family).
#[derive(Default)]
struct Families {
    families: Vec<Family>,
}

struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: String,
}

impl Families {
    fn family(
        &mut self,
        name: &'static str,
        kind: &'static str,
        help: &'static str,
    ) -> &mut String {
        let i = match self.families.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.families.push(Family {
                    name,
                    kind,
                    help,
                    samples: String::new(),
                });
                self.families.len() - 1
            }
        };
        &mut self.families[i].samples
    }

    fn sample(
        &mut self,
        name: &'static str,
        kind: &'static str,
        help: &'static str,
        pairs: &[(&str, &str)],
        value: impl std::fmt::Display,
    ) {
        let samples = self.family(name, kind, help);
        let _ = writeln!(samples, "{name}{} {value}", labels(pairs));
    }

    /// A histogram from the document's form (see `status::histogram`): cumulative buckets
    /// with `le` in seconds, `+Inf` equal to the count, the sum in seconds.
    fn histogram(
        &mut self,
        name: &'static str,
        help: &'static str,
        pairs: &[(&str, &str)],
        h: &Value,
    ) {
        let bounds: Vec<u64> = numbers(&h["bounds_us"]);
        let buckets: Vec<u64> = numbers(&h["buckets"]);
        let samples = self.family(name, "histogram", help);
        let mut cumulative = 0u64;
        for (i, n) in buckets.iter().enumerate() {
            cumulative += n;
            let le = match bounds.get(i) {
                Some(us) => (*us as f64 / 1e6).to_string(),
                None => "+Inf".to_owned(),
            };
            let mut with_le = pairs.to_vec();
            with_le.push(("le", &le));
            let _ = writeln!(samples, "{name}_bucket{} {cumulative}", labels(&with_le));
        }
        let sum = h["sum_us"].as_u64().unwrap_or(0) as f64 / 1e6;
        let _ = writeln!(samples, "{name}_sum{} {sum}", labels(pairs));
        let _ = writeln!(samples, "{name}_count{} {cumulative}", labels(pairs));
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for f in &self.families {
            let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
            out.push_str(&f.samples);
        }
        out
    }
}

fn numbers(v: &Value) -> Vec<u64> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|n| n.as_u64().unwrap_or(0))
        .collect()
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

const COUNTER: &str = "counter";
const GAUGE: &str = "gauge";

/// The exposition of a status document.
pub fn render(doc: &Value) -> String {
    let mut m = Families::default();
    let version = doc["version"].as_str().unwrap_or("");
    m.sample(
        "autosquash_info",
        GAUGE,
        "Always 1; the daemon's version as a label.",
        &[("version", version)],
        1,
    );
    m.sample(
        "autosquash_panics_total",
        COUNTER,
        "Requests that panicked (each one a bug, answered EIO).",
        &[],
        num(&doc["panics"]),
    );
    let memory = &doc["memory"];
    m.sample(
        "autosquash_process_resident_memory_bytes",
        GAUGE,
        "Resident memory of the daemon (VmRSS).",
        &[],
        num(&memory["rss_kib"]) * 1024,
    );
    m.sample(
        "autosquash_process_resident_memory_peak_bytes",
        GAUGE,
        "Peak resident memory of the daemon (VmHWM).",
        &[],
        num(&memory["peak_rss_kib"]) * 1024,
    );
    let cache = &doc["cache"];
    m.sample(
        "autosquash_memory_cache_bytes",
        GAUGE,
        "Bytes held by the shared memory cache of decompressed blocks and metadata.",
        &[],
        num(&cache["memory_bytes"]),
    );
    m.sample(
        "autosquash_memory_cache_limit_bytes",
        GAUGE,
        "Capacity of the shared memory cache (memory_limit).",
        &[],
        num(&cache["memory_limit"]),
    );
    let (hits, lookups) = (num(&cache["hits"]), num(&cache["lookups"]));
    m.sample(
        "autosquash_memory_cache_hits_total",
        COUNTER,
        "Memory cache lookups answered from memory.",
        &[],
        hits,
    );
    m.sample(
        "autosquash_memory_cache_misses_total",
        COUNTER,
        "Memory cache lookups not answered from memory.",
        &[],
        lookups.saturating_sub(hits),
    );
    for mount in doc["mounts"].as_array().into_iter().flatten() {
        mount_metrics(&mut m, mount);
    }
    m.text()
}

fn mount_metrics(m: &mut Families, mount: &Value) {
    let mountpoint = mount["mountpoint"].as_str().unwrap_or("");
    let source = mount["source"].as_str().unwrap_or("");
    let mp = [("mountpoint", mountpoint)];
    let ms = [("mountpoint", mountpoint), ("store", source)];
    let store = &mount["store"];
    for (name, help, field) in [
        (
            "autosquash_store_requests_total",
            "Requests to the store (list, head, read), below the caches.",
            "requests",
        ),
        (
            "autosquash_store_bytes_total",
            "Bytes read from the store.",
            "bytes",
        ),
        (
            "autosquash_store_errors_total",
            "Store requests that failed (not counting missing objects and replaced versions).",
            "errors",
        ),
        (
            "autosquash_store_retries_total",
            "Store requests retried after a transient failure.",
            "retries",
        ),
        (
            "autosquash_store_replaced_total",
            "Store reads answered \"replaced\": the object changed since it was mounted.",
            "replaced",
        ),
    ] {
        m.sample(name, COUNTER, help, &ms, num(&store[field]));
    }
    let disk = &mount["disk_cache"];
    if disk.is_object() {
        m.sample(
            "autosquash_disk_cache_bytes",
            GAUGE,
            "Bytes of the mount's store kept in the disk cache.",
            &ms,
            num(&disk["bytes"]),
        );
        m.sample(
            "autosquash_disk_cache_enabled",
            GAUGE,
            "1 while the disk cache works (a full or failing disk turns it off).",
            &ms,
            u64::from(disk["enabled"].as_bool() == Some(true)),
        );
    }
    for op in ["list", "head", "read"] {
        let mut pairs = ms.to_vec();
        pairs.push(("op", op));
        m.histogram(
            "autosquash_store_request_duration_seconds",
            "Latency of store requests by operation (successful or not).",
            &pairs,
            &store["latency"][op],
        );
    }
    for object in store["objects"].as_array().into_iter().flatten() {
        let key = object["key"].as_str().unwrap_or("");
        let image = object["image"].as_str().unwrap_or(key);
        let pairs = [
            ("mountpoint", mountpoint),
            ("store", source),
            ("image", image),
        ];
        for (name, help, field) in [
            (
                "autosquash_image_store_requests_total",
                "Store requests (head, read) for one image (or object).",
                "requests",
            ),
            (
                "autosquash_image_store_bytes_total",
                "Bytes read from the store for one image (or object).",
                "bytes",
            ),
            (
                "autosquash_image_store_errors_total",
                "Failed store requests for one image (or object).",
                "errors",
            ),
            (
                "autosquash_image_store_replaced_total",
                "Store reads for one image answered \"replaced\".",
                "replaced",
            ),
        ] {
            m.sample(name, COUNTER, help, &pairs, num(&object[field]));
        }
    }
    let fuse = &mount["fuse"];
    if let Some(requests) = fuse["requests"].as_object() {
        for (op, n) in requests {
            let pairs = [("mountpoint", mountpoint), ("op", op.as_str())];
            m.sample(
                "autosquash_fuse_requests_total",
                COUNTER,
                "FUSE requests from the kernel by operation (refused: writes, answered EROFS).",
                &pairs,
                num(n),
            );
        }
    }
    if !fuse["pushed"].is_null() {
        m.sample(
            "autosquash_fuse_pushed_files_total",
            COUNTER,
            "Files stored in the kernel's page cache ahead of their reads (no READ request).",
            &mp,
            num(&fuse["pushed"]["files"]),
        );
        m.sample(
            "autosquash_fuse_pushed_bytes_total",
            COUNTER,
            "Bytes stored in the kernel's page cache ahead of their reads.",
            &mp,
            num(&fuse["pushed"]["bytes"]),
        );
    }
    if !fuse["read_latency"].is_null() {
        m.histogram(
            "autosquash_fuse_read_duration_seconds",
            "Time from a FUSE read request to its reply.",
            &mp,
            &fuse["read_latency"],
        );
    }
    match mount["kind"].as_str() {
        Some("images") => image_metrics(m, mount, mountpoint),
        Some("objects") => {
            m.sample(
                "autosquash_objects_listed",
                GAUGE,
                "Objects shown by an object view mount.",
                &mp,
                num(&mount["objects"]),
            );
            m.sample(
                "autosquash_kernel_references",
                GAUGE,
                "Inodes of an object view mount the kernel holds references to.",
                &mp,
                num(&mount["kernel_refs"]),
            );
        }
        _ => {}
    }
}

fn image_metrics(m: &mut Families, mount: &Value, mountpoint: &str) {
    let mp = [("mountpoint", mountpoint)];
    let images = mount["images_mounted"].as_array().map_or(&[][..], |v| v);
    m.sample(
        "autosquash_images_listed",
        GAUGE,
        "Images in the root listing of a mount.",
        &mp,
        num(&mount["images_listed"]),
    );
    m.sample(
        "autosquash_images_mounted",
        GAUGE,
        "Images mounted now (opened, not yet released).",
        &mp,
        images.len(),
    );
    m.sample(
        "autosquash_slots",
        GAUGE,
        "Image slots alive: mounted images plus released ones the kernel still references.",
        &mp,
        num(&mount["slots"]),
    );
    m.sample(
        "autosquash_image_mounts_total",
        COUNTER,
        "Images mounted (opened) since the start.",
        &mp,
        num(&mount["mounts_total"]),
    );
    m.sample(
        "autosquash_image_expiries_total",
        COUNTER,
        "Images released (idle, outdated, or early to stay within the memory limit).",
        &mp,
        num(&mount["expiries_total"]),
    );
    for image in images {
        let name = image["name"].as_str().unwrap_or("");
        let pairs = [("mountpoint", mountpoint), ("image", name)];
        m.sample(
            "autosquash_image_size_bytes",
            GAUGE,
            "Size of a mounted image.",
            &pairs,
            num(&image["size"]),
        );
        m.sample(
            "autosquash_image_kernel_references",
            GAUGE,
            "Kernel references to inodes of a mounted image (what keeps open files' version).",
            &pairs,
            num(&image["kernel_refs"]),
        );
        m.sample(
            "autosquash_image_idle_seconds",
            GAUGE,
            "Seconds since a mounted image was last used.",
            &pairs,
            num(&image["idle_secs"]),
        );
        m.sample(
            "autosquash_image_outdated",
            GAUGE,
            "1 if the mounted image's object changed or vanished (released once idle).",
            &pairs,
            u8::from(image["outdated"].as_bool() == Some(true)),
        );
        let h = &image["hydration"];
        if h.is_object() {
            m.sample(
                "autosquash_image_hydration_cached_bytes",
                GAUGE,
                "Bytes of a mounted image in the disk cache, as hydration found or fetched them.",
                &pairs,
                num(&h["cached"]),
            );
            m.sample(
                "autosquash_image_hydration_fetched_bytes",
                GAUGE,
                "Bytes hydration fetched from the store for a mounted image.",
                &pairs,
                num(&h["fetched"]),
            );
            m.sample(
                "autosquash_image_hydration_requests",
                GAUGE,
                "Store requests made by hydration for a mounted image.",
                &pairs,
                num(&h["requests"]),
            );
            m.sample(
                "autosquash_image_hydration_done",
                GAUGE,
                "1 once the whole image is in the disk cache.",
                &pairs,
                u8::from(h["state"].as_str() == Some("done")),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label("two\nlines"), "two\\nlines");
        assert_eq!(escape_label("plain/ünïcode"), "plain/ünïcode");
        assert_eq!(
            labels(&[("mountpoint", "/mnt/\"x\""), ("op", "read")]),
            r#"{mountpoint="/mnt/\"x\"",op="read"}"#
        );
    }

    #[test]
    fn histograms_are_cumulative_with_inf_equal_to_count() {
        let mut m = Families::default();
        let h = json!({"bounds_us": [1000, 10000], "buckets": [2, 0, 3], "sum_us": 1_500_000});
        m.histogram("x_seconds", "help", &[("op", "read")], &h);
        assert_eq!(
            m.text(),
            "# HELP x_seconds help\n# TYPE x_seconds histogram\n\
             x_seconds_bucket{op=\"read\",le=\"0.001\"} 2\n\
             x_seconds_bucket{op=\"read\",le=\"0.01\"} 2\n\
             x_seconds_bucket{op=\"read\",le=\"+Inf\"} 5\n\
             x_seconds_sum{op=\"read\"} 1.5\n\
             x_seconds_count{op=\"read\"} 5\n"
        );
    }

    #[test]
    fn samples_of_one_family_stay_together() {
        let doc = json!({
            "version": "1.0", "panics": 0, "memory": {}, "cache": {},
            "mounts": [
                {"mountpoint": "/a", "source": "dir:/x", "kind": "images", "store": {},
                 "fuse": {"requests": {"read": 3}}, "images_mounted": []},
                {"mountpoint": "/b", "source": "dir:/y", "kind": "images", "store": {},
                 "fuse": {"requests": {"read": 4}}, "images_mounted": []},
            ],
        });
        let text = render(&doc);
        let types = text
            .matches("# TYPE autosquash_fuse_requests_total ")
            .count();
        assert_eq!(types, 1, "{text}");
        let a = text
            .find("autosquash_fuse_requests_total{mountpoint=\"/a\"")
            .unwrap();
        let b = text
            .find("autosquash_fuse_requests_total{mountpoint=\"/b\"")
            .unwrap();
        let between = &text[a..b];
        assert!(!between.contains("# TYPE"), "{between}");
    }
}
