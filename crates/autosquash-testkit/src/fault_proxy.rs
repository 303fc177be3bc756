//! A fault-injecting HTTP proxy for tests, between a client and a real S3 server: adds latency,
//! answers 503 SlowDown or 500, resets connections and truncates bodies, on a deterministic
//! schedule, so a test can say exactly what the client must survive.
//!
//! Each request is forwarded on its own upstream connection (with `Connection: close`, which
//! is not part of the SigV4 signature), so the proxy needs no HTTP parsing beyond framing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 503 with S3's SlowDown error code (throttling).
    SlowDown,
    /// 500 InternalError.
    InternalError,
    /// The connection is reset (RST) instead of answered.
    Reset,
    /// The response is cut in the middle of its body, then the connection closed.
    Truncate,
    /// The request is read and never answered (a store that stopped responding); the
    /// connection stays open until the client gives up.
    Blackhole,
}

/// What the proxy does to requests; change it at any time.
#[derive(Default)]
pub struct Faults {
    /// Delay before each request is forwarded.
    pub latency_ms: AtomicU64,
    /// Every n-th request fails (0: none), cycling through `kinds`.
    pub fail_every: AtomicU64,
    pub kinds: Mutex<Vec<Fault>>,
    /// Every request fails with `kinds[0]` (a store that is down).
    pub fail_all: AtomicBool,
    /// Each request independently fails with one of these, with the given probability.
    pub random: Mutex<Vec<(Fault, f64)>>,
    pub requests: AtomicU64,
    pub injected: AtomicU64,
}

impl Faults {
    fn pick(&self) -> Option<Fault> {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let random = self.random.lock().unwrap().clone();
        if !random.is_empty() && !self.fail_all.load(Ordering::Relaxed) {
            let mut roll = unit_random(n);
            for (fault, p) in random {
                if roll < p {
                    return Some(fault);
                }
                roll -= p;
            }
            return None;
        }
        let kinds = self.kinds.lock().unwrap().clone();
        let first = *kinds.first()?;
        if self.fail_all.load(Ordering::Relaxed) {
            return Some(first);
        }
        let every = self.fail_every.load(Ordering::Relaxed);
        (every > 0 && n.is_multiple_of(every)).then(|| kinds[((n / every) as usize) % kinds.len()])
    }
}

pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`, to be used as the client's endpoint.
    pub endpoint: String,
    pub faults: Arc<Faults>,
    _runtime: tokio::runtime::Runtime,
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream` (`http://host:port`).
    pub fn start(upstream: &str) -> FaultProxy {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .parse()
            .expect("upstream address");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let faults = Arc::new(Faults::default());
        let shared = faults.clone();
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(serve(client, upstream, shared.clone()));
            }
        });
        FaultProxy {
            endpoint,
            faults,
            _runtime: runtime,
        }
    }

    /// Fails every `every`-th request with the given kinds in turn (0: no faults).
    pub fn fail_every(&self, every: u64, kinds: &[Fault]) {
        *self.faults.kinds.lock().unwrap() = kinds.to_vec();
        self.faults.fail_every.store(every, Ordering::Relaxed);
    }

    pub fn set_latency(&self, latency: Duration) {
        self.faults
            .latency_ms
            .store(latency.as_millis() as u64, Ordering::Relaxed);
    }

    /// Fails each request with probability `p` per fault kind, e.g. 10% SlowDown and 2% resets
    /// (an empty list: no faults).
    pub fn fail_randomly(&self, faults: &[(Fault, f64)]) {
        *self.faults.random.lock().unwrap() = faults.to_vec();
    }

    /// While set, every request fails with `fault`.
    pub fn fail_all(&self, fault: Option<Fault>) {
        if let Some(fault) = fault {
            *self.faults.kinds.lock().unwrap() = vec![fault];
        }
        self.faults
            .fail_all
            .store(fault.is_some(), Ordering::Relaxed);
    }
}

/// A uniform number in [0, 1) derived from `n` (splitmix64): a fixed schedule per run.
fn unit_random(n: u64) -> f64 {
    let mut z = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

fn error_response(status: &str, code: &str) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>"
    );
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    faults: Arc<Faults>,
) -> std::io::Result<()> {
    let _ = client.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if client.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        let total = head_end + content_length(&buf[..head_end]);
        while buf.len() < total {
            if client.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
        let request: Vec<u8> = buf.drain(..total).collect();
        let latency = faults.latency_ms.load(Ordering::Relaxed);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let fault = faults.pick();
        if fault.is_some() {
            faults.injected.fetch_add(1, Ordering::Relaxed);
        }
        match fault {
            Some(Fault::SlowDown) => {
                client
                    .write_all(&error_response("503 Slow Down", "SlowDown"))
                    .await?
            }
            Some(Fault::InternalError) => {
                client
                    .write_all(&error_response(
                        "500 Internal Server Error",
                        "InternalError",
                    ))
                    .await?
            }
            Some(Fault::Reset) => {
                #[allow(deprecated)]
                let _ = client.set_linger(Some(Duration::ZERO));
                return Ok(());
            }
            Some(Fault::Blackhole) => {
                // Hold the connection until the client closes it.
                let mut sink = [0u8; 4096];
                while client.read(&mut sink).await? > 0 {}
                return Ok(());
            }
            Some(Fault::Truncate) => {
                let response = forward(&request, upstream).await?;
                let cut = find(&response, b"\r\n\r\n")
                    .map_or(0, |h| h + 4 + (response.len() - h - 4) / 2);
                client.write_all(&response[..cut]).await?;
                return Ok(());
            }
            None => {
                let response = forward(&request, upstream).await?;
                client.write_all(&response).await?;
            }
        }
    }
}

/// Sends one request upstream on a fresh connection and returns the whole response.
async fn forward(request: &[u8], upstream: SocketAddr) -> std::io::Result<Vec<u8>> {
    let head_end = find(request, b"\r\n\r\n").unwrap_or(request.len());
    let head = String::from_utf8_lossy(&request[..head_end]);
    let mut rewritten: Vec<u8> = head
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect::<Vec<_>>()
        .join("\r\n")
        .into_bytes();
    rewritten.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    rewritten.extend_from_slice(&request[(head_end + 4).min(request.len())..]);
    let mut server = TcpStream::connect(upstream).await?;
    server.write_all(&rewritten).await?;
    let mut response = Vec::new();
    server.read_to_end(&mut response).await?;
    Ok(response)
}
