//! `autosquash doctor` against a real S3 server (Garage on 127.0.0.1), against a stand-in that
//! ignores If-Match or Range (LaxS3), with wrong credentials, and with nothing listening.

use autosquash_testkit::corpus::pseudo_random_bytes;
use autosquash_testkit::garage::{Garage, SECRET};
use autosquash_testkit::lax_s3::LaxS3;
use serde_json::Value;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const PREFIX: &str = "images/";

const CHECKS: [&str; 14] = [
    "credentials",
    "list",
    "list-paging",
    "list-encoding",
    "addressing",
    "clock",
    "tls",
    "head",
    "range",
    "suffix-range",
    "if-match",
    "latency",
    "throughput",
    "throughput-parallel",
];

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    /// The `--json` document's findings by check name.
    fn findings(&self) -> Vec<Value> {
        let doc: Value = serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("--json is not JSON ({e}): {}", self.stdout));
        doc.as_array().expect("an array of findings").clone()
    }

    fn finding(&self, check: &str) -> Value {
        self.findings()
            .into_iter()
            .find(|f| f["check"] == check)
            .unwrap_or_else(|| panic!("no {check} in {}", self.stdout))
    }

    fn status(&self, check: &str) -> String {
        self.finding(check)["status"].as_str().unwrap().to_owned()
    }

    /// The human line of `check`.
    fn line(&self, check: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(check))
            .unwrap_or_else(|| panic!("no {check} line in {}", self.stdout))
    }
}

fn doctor(url: &str, flags: &[&str], env: &[(&str, String)]) -> Run {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_autosquash"))
        .arg("doctor")
        .arg(url)
        .args(flags)
        // No shared config or credentials files of whoever runs the tests.
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let run = Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
    };
    eprintln!(
        "$ autosquash doctor {url} {flags:?} ({:?}, exit {})\n{}{}",
        run.elapsed,
        if run.ok { 0 } else { 1 },
        run.stdout,
        run.stderr
    );
    run
}

/// A bucket with three images (one of 3 MiB) and a text file under [`PREFIX`].
fn garage_with_images(bucket: &str) -> Garage {
    let garage = Garage::start(bucket);
    let dir = tempfile::tempdir().unwrap();
    for (name, len) in [
        ("a.squash", 3 << 20),
        ("b.squash", 100_000),
        ("notes.txt", 10),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, pseudo_random_bytes(len as u64, len)).unwrap();
        garage.put(&format!("{PREFIX}{name}"), &file);
    }
    garage
}

fn path_style(endpoint: &str) -> Vec<&str> {
    vec!["--endpoint-url", endpoint, "--force-path-style"]
}

#[test]
#[cfg_attr(
    not(feature = "s3-tests"),
    ignore = "s3-tests ring, needs Garage: sudo bash tests/run"
)]
fn garage_passes_every_check() {
    let garage = garage_with_images("doctor");
    let url = format!("s3://{}/{PREFIX}", garage.bucket);
    let human = doctor(&url, &path_style(&garage.endpoint), &garage.env());
    assert!(human.ok, "exit 1 against Garage: {}", human.stderr);
    assert_eq!(
        human.stdout.lines().count(),
        CHECKS.len(),
        "one line per check"
    );
    for line in human.stdout.lines() {
        assert!(
            line.starts_with("ok ") || line.starts_with("note "),
            "not ok: {line}"
        );
    }
    assert!(human.line("credentials").contains("EnvironmentVariable"));
    assert!(human.line("addressing").contains("path-style"));
    assert!(human.line("tls").contains("not encrypted"));
    assert!(!human.stdout.contains(SECRET), "the secret key was printed");

    let mut flags = path_style(&garage.endpoint);
    flags.push("--json");
    let json = doctor(&url, &flags, &garage.env());
    assert!(json.ok, "{}", json.stderr);
    let names: Vec<String> = json
        .findings()
        .iter()
        .map(|f| f["check"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, CHECKS, "every check, in order");
    for check in [
        "credentials",
        "list",
        "list-paging",
        "list-encoding",
        "addressing",
        "clock",
        "head",
        "range",
        "suffix-range",
        "if-match",
        "latency",
        "throughput",
        "throughput-parallel",
    ] {
        assert_eq!(json.status(check), "ok", "{check}: {}", json.finding(check));
    }
    assert!(
        json.finding("head")["detail"]
            .as_str()
            .unwrap()
            .contains("a.squash")
    );
    for f in json.findings() {
        assert!(f["detail"].is_string() && f.get("advice").is_some(), "{f}");
    }

    // An empty prefix: said so, and the object checks skipped with a note.
    let empty = doctor(
        &format!("s3://{}/nothing-here/", garage.bucket),
        &path_style(&garage.endpoint),
        &garage.env(),
    );
    assert!(empty.ok, "{}", empty.stderr);
    assert!(empty.line("head").starts_with("note") && empty.line("head").contains("no objects"));
    assert!(empty.line("list").starts_with("ok"));

    // Virtual-host addressing at a custom endpoint (images.localhost does not resolve):
    // the problem, and the flag that fixes it.
    let localhost = garage.endpoint.replace("127.0.0.1", "localhost");
    let vhost = doctor(&url, &["--endpoint-url", &localhost], &garage.env());
    assert!(!vhost.ok);
    let line = vhost.line("addressing");
    assert!(
        line.starts_with("problem") && line.contains("--force-path-style"),
        "{line}"
    );
    assert!(
        vhost.line("range").starts_with("ok"),
        "checks go on path-style"
    );
}

#[test]
fn a_store_that_ignores_if_match_is_named() {
    let lax = LaxS3::start("lax");
    lax.put(
        &format!("{PREFIX}a.squash"),
        pseudo_random_bytes(1, 1 << 20),
    );
    lax.put(&format!("{PREFIX}b.squash"), pseudo_random_bytes(2, 5000));
    let url = format!("s3://{}/{PREFIX}", lax.bucket);
    let mut flags = path_style(&lax.endpoint);
    flags.push("--no-sign-request");
    let human = doctor(&url, &flags, &[]);
    assert!(!human.ok, "exit 0 although the store ignores If-Match");
    let line = human.line("if-match");
    assert!(
        line.starts_with("problem") && line.contains("ignores If-Match") && line.contains("fix:"),
        "{line}"
    );
    assert!(human.line("range").starts_with("ok"), "{}", human.stdout);
    assert!(human.line("credentials").starts_with("note"));
    flags.push("--json");
    let json = doctor(&url, &flags, &[]);
    assert!(!json.ok);
    assert_eq!(json.status("if-match"), "problem");
    assert!(json.finding("if-match")["advice"].is_string());
    assert_eq!(json.status("range"), "ok");
    assert_eq!(json.findings().len(), CHECKS.len());

    // Honouring If-Match, it passes.
    lax.behaviour
        .honours_if_match
        .store(true, Ordering::Relaxed);
    let json = doctor(&url, &flags, &[]);
    assert_eq!(json.status("if-match"), "ok");
}

#[test]
fn a_store_that_ignores_range_is_named() {
    let lax = LaxS3::start("lax");
    lax.behaviour
        .honours_if_match
        .store(true, Ordering::Relaxed);
    lax.behaviour.honours_range.store(false, Ordering::Relaxed);
    lax.put(
        &format!("{PREFIX}a.squash"),
        pseudo_random_bytes(1, 1 << 20),
    );
    let url = format!("s3://{}/{PREFIX}", lax.bucket);
    let mut flags = path_style(&lax.endpoint);
    flags.push("--no-sign-request");
    let human = doctor(&url, &flags, &[]);
    assert!(!human.ok, "exit 0 although the store ignores Range");
    let line = human.line("range");
    assert!(
        line.starts_with("problem") && line.contains("ignores Range"),
        "{line}"
    );
    assert!(human.line("throughput").starts_with("note"));
}

#[test]
#[cfg_attr(
    not(feature = "s3-tests"),
    ignore = "s3-tests ring, needs Garage: sudo bash tests/run"
)]
fn wrong_credentials_are_a_clear_problem() {
    let garage = garage_with_images("creds");
    let url = format!("s3://{}/{PREFIX}", garage.bucket);
    let wrong_secret = "0".repeat(64);
    let mut env = garage.env();
    env[1].1 = wrong_secret.clone();
    let run = doctor(&url, &path_style(&garage.endpoint), &env);
    assert!(!run.ok);
    let line = run.line("credentials");
    assert!(
        line.starts_with("problem")
            && line.contains("refused the credentials")
            && line.contains("EnvironmentVariable")
            && (line.contains("AccessDenied") || line.contains("SignatureDoesNotMatch")),
        "{line}"
    );
    assert!(
        !run.stdout.contains(&wrong_secret),
        "the secret key was printed"
    );
    let mut env = garage.env();
    env[0].1 = "GK00000000000000000000000".into();
    let run = doctor(&url, &path_style(&garage.endpoint), &env);
    assert!(!run.ok);
    let line = run.line("credentials");
    assert!(
        line.starts_with("problem")
            && (line.contains("AccessDenied") || line.contains("InvalidAccessKeyId")),
        "{line}"
    );
}

#[test]
fn an_unreachable_endpoint_fails_quickly_and_clearly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let env = [
        ("AWS_ACCESS_KEY_ID", "x".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "y".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
    ];
    let run = doctor("s3://nowhere/p/", &path_style(&endpoint), &env);
    assert!(!run.ok);
    assert!(run.elapsed < Duration::from_secs(20), "{:?}", run.elapsed);
    let line = run.line("list");
    assert!(
        line.starts_with("problem") && line.contains("cannot reach") && line.contains(&endpoint),
        "{line}"
    );
    assert!(run.line("range").starts_with("note"));
}
