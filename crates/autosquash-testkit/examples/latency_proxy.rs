//! A latency-injecting HTTP proxy for benchmarks: `FaultProxy` with a fixed delay before each
//! request is forwarded, so every request costs one extra round trip of the given length.
//!
//! ```text
//! latency_proxy UPSTREAM LATENCY_MS [STATS_FILE]
//! ```
//!
//! Prints the proxy's endpoint (`http://127.0.0.1:PORT`) on the first line of stdout, then
//! runs until killed. With STATS_FILE, the number of requests seen so far is written there
//! (one number, replaced atomically) every 100 ms, for counting the requests of clients that
//! do not count their own.

use autosquash_testkit::fault_proxy::FaultProxy;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: latency_proxy UPSTREAM(http://host:port) LATENCY_MS [STATS_FILE]");
        std::process::exit(2);
    }
    let latency: u64 = args[2].parse().expect("LATENCY_MS must be a number");
    let stats = args.get(3).cloned();
    let proxy = FaultProxy::start(&args[1]);
    proxy.set_latency(Duration::from_millis(latency));
    println!("{}", proxy.endpoint);
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(path) = &stats {
            let tmp = format!("{path}.tmp");
            let n = proxy.faults.requests.load(Ordering::Relaxed);
            if std::fs::write(&tmp, format!("{n}\n")).is_ok() {
                let _ = std::fs::rename(&tmp, path);
            }
        }
    }
}
