//! Readers that put load on a mount and check every byte against the unsquashfs extraction,
//! and the process figures (RSS, descriptors) the scenarios watch.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A file in a mount and the same file extracted by unsquashfs.
#[derive(Clone, Debug)]
pub struct Sample {
    pub mounted: PathBuf,
    pub reference: PathBuf,
    pub size: u64,
    /// Which image it belongs to (the n-th `add_image` call).
    pub image: usize,
}

/// Every regular file of an extracted image, as seen under `mounted`.
pub fn samples(mounted: &Path, extracted: &Path, image: usize) -> Vec<Sample> {
    let mut out = Vec::new();
    for e in autosquash_testkit::tree::walk(extracted, usize::MAX) {
        let m = e
            .meta
            .unwrap_or_else(|err| panic!("{}: {err}", e.path.display()));
        // Root-only files are for the permission checks, not for load.
        if m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o004 != 0 {
            out.push(Sample {
                mounted: mounted.join(&e.rel),
                reference: e.path,
                size: m.len(),
                image,
            });
        }
    }
    out.sort_by(|a, b| a.mounted.cmp(&b.mounted));
    out
}

/// A small deterministic generator (splitmix64): runs are repeatable per seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

/// What the readers did.
#[derive(Default)]
pub struct Counts {
    pub reads: AtomicU64,
    pub failed: AtomicU64,
    pub wrong: AtomicU64,
    pub bytes: AtomicU64,
    /// Longest single operation (open + read + check), in microseconds.
    pub slowest_us: AtomicU64,
    /// Longest failed operation, in microseconds.
    pub slowest_failure_us: AtomicU64,
    /// Failures by errno name, and the first few wrong-byte reports.
    pub errors: Mutex<BTreeMap<String, u64>>,
    pub wrong_examples: Mutex<Vec<String>>,
}

impl Counts {
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
    pub fn wrong(&self) -> u64 {
        self.wrong.load(Ordering::Relaxed)
    }
    pub fn mib(&self) -> f64 {
        self.bytes.load(Ordering::Relaxed) as f64 / (1u64 << 20) as f64
    }
    pub fn slowest(&self) -> Duration {
        Duration::from_micros(self.slowest_us.load(Ordering::Relaxed))
    }
    pub fn slowest_failure(&self) -> Duration {
        Duration::from_micros(self.slowest_failure_us.load(Ordering::Relaxed))
    }
    pub fn error_summary(&self) -> String {
        let errors = self.errors.lock().unwrap();
        if errors.is_empty() {
            return "none".into();
        }
        errors
            .iter()
            .map(|(k, v)| format!("{k} ×{v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
    /// "reads / failed / wrong bytes" for the report.
    pub fn line(&self) -> String {
        format!(
            "{} reads ({:.0} MiB), {} failed, {} with wrong bytes",
            self.reads(),
            self.mib(),
            self.failed(),
            self.wrong()
        )
    }

    fn record(&self, took: Duration, result: Result<u64, Failure>) {
        let us = took.as_micros() as u64;
        self.slowest_us.fetch_max(us, Ordering::Relaxed);
        self.reads.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(n) => {
                self.bytes.fetch_add(n, Ordering::Relaxed);
            }
            Err(Failure::Io(e)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.slowest_failure_us.fetch_max(us, Ordering::Relaxed);
                *self
                    .errors
                    .lock()
                    .unwrap()
                    .entry(errno_name(&e))
                    .or_default() += 1;
            }
            Err(Failure::Wrong(what)) => {
                self.wrong.fetch_add(1, Ordering::Relaxed);
                let mut ex = self.wrong_examples.lock().unwrap();
                if ex.len() < 5 {
                    ex.push(what);
                }
            }
        }
    }
}

pub use autosquash_testkit::tree::errno_name;

enum Failure {
    Io(std::io::Error),
    Wrong(String),
}

/// Drops the kernel's page cache of a file, so the next read reaches the daemon again.
#[allow(unsafe_code)]
pub fn forget_pages(f: &File) {
    // SAFETY: a valid descriptor; fadvise only gives the kernel advice.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// One check: a whole small file, or a random range of up to 256 KiB of any file.
fn check_one(s: &Sample, rng: &mut Rng) -> Result<u64, Failure> {
    let f = File::open(&s.mounted).map_err(Failure::Io)?;
    let result = if s.size <= 1 << 20 && rng.below(2) == 0 {
        let mut got = Vec::with_capacity(s.size as usize);
        (&f).read_to_end(&mut got).map_err(Failure::Io)?;
        let want = std::fs::read(&s.reference).unwrap();
        if got != want {
            return Err(Failure::Wrong(format!(
                "{}: {} bytes read, {} expected, first difference at {:?}",
                s.mounted.display(),
                got.len(),
                want.len(),
                got.iter().zip(&want).position(|(a, b)| a != b)
            )));
        }
        Ok(got.len() as u64)
    } else {
        let offset = rng.below(s.size.max(1));
        let len = (1 + rng.below(256 << 10)).min(s.size - offset.min(s.size)) as usize;
        let mut got = vec![0; len];
        f.read_exact_at(&mut got, offset).map_err(Failure::Io)?;
        let mut want = vec![0; len];
        File::open(&s.reference)
            .unwrap()
            .read_exact_at(&mut want, offset)
            .unwrap();
        if got != want {
            return Err(Failure::Wrong(format!(
                "{} at {offset}+{len}: bytes differ",
                s.mounted.display()
            )));
        }
        Ok(len as u64)
    };
    forget_pages(&f);
    result
}

/// Indices of the picked samples, larger files repeated (up to 32 times, once per 64 KiB) so
/// that the load is not only the corpus's thousands of tiny files.
fn weighted(samples: &[Sample], pick: impl Fn(&Sample) -> bool) -> Vec<usize> {
    samples
        .iter()
        .enumerate()
        .filter(|(_, s)| pick(s))
        .flat_map(|(i, s)| std::iter::repeat_n(i, (1 + s.size / (64 << 10)).min(32) as usize))
        .collect()
}

/// Reader threads running until stopped; each picks a random file among the `active` ones.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub counts: Arc<Counts>,
    /// Indices into the samples the readers pick from (change it to move the load).
    pub active: Arc<RwLock<Vec<usize>>>,
}

impl Load {
    pub fn start(samples: &[Sample], readers: usize, seed: u64) -> Load {
        let samples: Arc<Vec<Sample>> = Arc::new(samples.to_vec());
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let active = Arc::new(RwLock::new(weighted(&samples, |_| true)));
        let threads = (0..readers)
            .map(|i| {
                let (samples, stop, counts, active) = (
                    samples.clone(),
                    stop.clone(),
                    counts.clone(),
                    active.clone(),
                );
                std::thread::spawn(move || {
                    let mut rng = Rng::new(seed ^ (i as u64) << 32);
                    while !stop.load(Ordering::Relaxed) {
                        let pick = {
                            let a = active.read().unwrap();
                            if a.is_empty() {
                                None
                            } else {
                                Some(a[rng.below(a.len() as u64) as usize])
                            }
                        };
                        let Some(pick) = pick else {
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        };
                        let started = Instant::now();
                        let result = check_one(&samples[pick], &mut rng);
                        counts.record(started.elapsed(), result);
                    }
                })
            })
            .collect();
        Load {
            stop,
            threads,
            counts,
            active,
        }
    }

    pub fn set_active(&self, pick: impl Fn(&Sample) -> bool, samples: &[Sample]) {
        *self.active.write().unwrap() = weighted(samples, pick);
    }

    /// Stops the readers and waits for the operations in flight.
    pub fn stop(self) -> Arc<Counts> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        self.counts
    }
}

/// Resident memory of a process in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Open file descriptors of a process.
pub fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Samples RSS and descriptors of a process every `every` until stopped.
pub struct Watch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<(f64, f64, usize)>>>,
}

impl Watch {
    pub fn start(pid: u32, every: Duration) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let mut out = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                out.push((start.elapsed().as_secs_f64(), rss_mib(pid), fds(pid)));
                let next = Instant::now() + every;
                while Instant::now() < next && !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            out
        });
        Watch {
            stop,
            thread: Some(thread),
        }
    }

    /// (seconds since start, RSS MiB, descriptors) samples.
    pub fn stop(mut self) -> Vec<(f64, f64, usize)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}
