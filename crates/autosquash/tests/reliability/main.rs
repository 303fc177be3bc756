//! The reliability and security suite: does to a running daemon what production does to it
//! (faults, outages, replaced objects, a dying storage node, hostile images, a damaged or full
//! cache disk, kill -9, hours of load, attacks on permissions) and counts the outcome.
//!
//! Not part of `cargo test` (it takes minutes): `tests/reliability/run` runs it in full and
//! writes docs/reliability.md; CI runs `--quick`. Every check that fails makes it exit 1.
//!
//! Usage: reliability [--quick] [--report FILE] [--only NAME,...]

#[path = "../common/mod.rs"]
mod common;
mod load;
mod scenarios;
mod setup;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// How long and how hard: the full run is what the figures in docs/reliability.md come from.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    pub quick: bool,
}

impl Scale {
    /// `full` in the full run, `quick` in CI's.
    pub fn pick<T>(self, full: T, quick: T) -> T {
        if self.quick { quick } else { full }
    }
}

/// What one scenario found: figures for the report, and the checks that failed.
pub struct Outcome {
    pub name: &'static str,
    pub title: &'static str,
    pub figures: Vec<(String, String)>,
    pub failures: Vec<String>,
    pub took: Duration,
}

impl Outcome {
    pub fn new(name: &'static str, title: &'static str) -> Outcome {
        Outcome {
            name,
            title,
            figures: Vec::new(),
            failures: Vec::new(),
            took: Duration::ZERO,
        }
    }

    pub fn figure(&mut self, what: impl Into<String>, value: impl ToString) {
        let (what, value) = (what.into(), value.to_string());
        eprintln!("  {what}: {value}");
        self.figures.push((what, value));
    }

    /// Records a check; a failed one fails the run.
    pub fn check(&mut self, ok: bool, what: impl Into<String>) {
        let what = what.into();
        if ok {
            eprintln!("  ok: {what}");
        } else {
            eprintln!("  FAILED: {what}");
            self.failures.push(what);
        }
    }
}

type Scenario = fn(Scale, &mut Outcome);

const SCENARIOS: &[(&str, &str, Scenario)] = &[
    (
        "faults",
        "Throttling and connection resets under mixed reads",
        scenarios::faults::run,
    ),
    (
        "outage",
        "The store unreachable in the middle of reading",
        scenarios::outage::run,
    ),
    (
        "replace",
        "Images replaced and deleted while being read",
        scenarios::replace::run,
    ),
    (
        "cluster",
        "A node of a 3-node Garage cluster killed while reading",
        scenarios::cluster::run,
    ),
    (
        "hostile",
        "Hostile images served alongside good ones",
        scenarios::hostile::run,
    ),
    (
        "disk-cache",
        "A corrupted and a full disk cache",
        scenarios::disk_cache::run,
    ),
    (
        "crash",
        "kill -9 under load, then a restart",
        scenarios::crash::run,
    ),
    ("soak", "A soak with 64 readers", scenarios::soak::run),
    (
        "security",
        "Permissions, read-only, setuid, devices, hostile keys, secrets",
        scenarios::security::run,
    ),
];

fn main() {
    let mut scale = Scale { quick: false };
    let mut report = None;
    let mut only: Option<Vec<String>> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => scale.quick = true,
            "--report" => report = args.next(),
            "--only" => {
                only = args
                    .next()
                    .map(|s| s.split(',').map(String::from).collect())
            }
            // What cargo passes to every test binary.
            "--nocapture" | "--test-threads" => {}
            other if other.starts_with("--test-threads=") => {}
            other => {
                eprintln!("reliability: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    if let Some(names) = &only
        && let Some(bad) = names
            .iter()
            .find(|n| !SCENARIOS.iter().any(|(s, ..)| s == n))
    {
        eprintln!("reliability: no scenario {bad}");
        std::process::exit(2);
    }
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for &(name, title, run) in SCENARIOS {
        if only.as_ref().is_some_and(|o| !o.iter().any(|n| n == name)) {
            continue;
        }
        eprintln!("== {name}: {title}");
        let mut outcome = Outcome::new(name, title);
        let t = Instant::now();
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(scale, &mut outcome)));
        if let Err(panic) = result {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".into());
            outcome.check(false, format!("the scenario stopped: {msg}"));
        }
        outcome.took = t.elapsed();
        eprintln!(
            "== {name}: {} in {:.0} s",
            if outcome.failures.is_empty() {
                "passed"
            } else {
                "FAILED"
            },
            outcome.took.as_secs_f64()
        );
        outcomes.push(outcome);
    }
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.failures.is_empty()).collect();
    if let Some(path) = report {
        std::fs::write(&path, markdown(scale, &outcomes, started.elapsed())).unwrap();
        eprintln!("report written to {path}");
    }
    if failed.is_empty() {
        eprintln!(
            "reliability: {} scenarios passed in {:.0} s",
            outcomes.len(),
            started.elapsed().as_secs_f64()
        );
    } else {
        for o in &failed {
            for f in &o.failures {
                eprintln!("reliability: {} FAILED: {f}", o.name);
            }
        }
        std::process::exit(1);
    }
}

fn markdown(scale: Scale, outcomes: &[Outcome], took: Duration) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Reliability and security figures\n\n\
         Written by `tests/reliability/run` ({} run, {:.0} minutes, {}); every figure below is \
         measured on a running daemon on a real FUSE mount against a real Garage S3 server (or a local \
         directory of images), with faults injected by a proxy between them where a scenario \
         calls for it. Each scenario lists its figures and its \
         checks; a failed check fails the run (CI runs the `--quick` version).\n",
        if scale.quick { "quick" } else { "full" },
        took.as_secs_f64() / 60.0,
        machine()
    );
    let _ = writeln!(md, "| scenario | result | time |\n|---|---|---|");
    for o in outcomes {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} s |",
            o.title,
            if o.failures.is_empty() {
                "passed".to_string()
            } else {
                format!("**{} checks failed**", o.failures.len())
            },
            o.took.as_secs_f64()
        );
    }
    for o in outcomes {
        let _ = writeln!(md, "\n## {}\n", o.title);
        for (what, value) in &o.figures {
            let _ = writeln!(md, "- {what}: {value}");
        }
        for f in &o.failures {
            let _ = writeln!(md, "- **FAILED**: {f}");
        }
    }
    md
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, Linux {}", kernel.trim())
}
