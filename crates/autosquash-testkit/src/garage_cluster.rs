//! A real multi-node S3 store for reliability tests: several Garage servers on 127.0.0.1, one
//! zone each, replicating every object on every node (`replication_factor = nodes`), with the
//! key and bucket of [`crate::garage`]. Any node can be killed ([`GarageCluster::kill`]) and
//! started again ([`GarageCluster::restart`]); all are killed on drop.
//!
//! With 3 nodes Garage's default consistency mode needs 2 of 3 nodes for a read or a write, so
//! the cluster keeps serving through any surviving node while one node is down.
//!
//! Garage quirk worth knowing in a test: a surviving node only notices that a SIGKILLed peer is
//! gone when a write to it fails, which happens on its own within seconds (status exchange every
//! 10 s, table sync, pings every 15 s). Until then a request it routes to the dead node (a
//! quorum read picks self plus one peer) simply waits, so the first requests after a kill may
//! stall for several seconds before completing correctly through the other nodes.
//! [`GarageCluster::settle_after_kill`] makes the survivors notice at once.

use crate::garage::{self, KEY_ID, SECRET};
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Bound on one admin command (`garage -c ... <command>`).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on each phase of bringing the cluster (or a restarted node) up.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on one curl transfer (`--max-time`, seconds).
const CURL_MAX_TIME: &str = "60";
/// Object written and read back to prove the S3 API works; deleted afterwards.
const PROBE_KEY: &str = ".autosquash-cluster-probe";

struct Node {
    /// `None` while killed. A mutex so that a test can kill a node from another thread while
    /// it reads through the others.
    child: Mutex<Option<Child>>,
    dir: tempfile::TempDir,
    config: PathBuf,
    /// Full node id (hex public key).
    id: String,
    rpc: u16,
    s3: u16,
}

impl Node {
    fn rpc_addr(&self) -> String {
        format!("{}@127.0.0.1:{}", self.id, self.rpc)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("garage.log")).unwrap_or_default()
    }

    /// The server process, ignoring poisoning (a panicking test must still kill it on drop).
    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Panics (with its log) if the server process has exited by itself.
    fn check_running(&self, index: usize) {
        let exited = match &mut *self.child() {
            Some(child) => child.try_wait().ok().flatten(),
            None => None,
        };
        if let Some(status) = exited {
            panic!(
                "garage node {index} exited with {status}:\n{}",
                tail(&self.log())
            );
        }
    }
}

pub struct GarageCluster {
    nodes: Vec<Node>,
    bin: PathBuf,
    pub bucket: String,
}

/// `n` distinct free ports on 127.0.0.1 (all listeners are held until every port is chosen, so
/// the OS cannot hand out one port twice).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// The last lines of a log, enough to diagnose without flooding a panic message.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// Runs `cmd` to completion, killing it after `limit`.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<Output, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{cmd:?} did not finish within {limit:?}"));
            }
        }
    };
    Ok(Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    })
}

/// A field of `garage health`'s output, e.g. `Cluster health` or `Connected nodes`.
fn health_field<'a>(health: &'a str, name: &str) -> Option<&'a str> {
    health.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim())
    })
}

impl GarageCluster {
    /// Starts `nodes` Garage servers forming one cluster with bucket `bucket`, every object
    /// replicated on every node. Panics when there is no binary (see [`garage::binary`]) and
    /// with the nodes' logs if the cluster does not come up within about a minute.
    pub fn start(bucket: &str, nodes: usize) -> GarageCluster {
        assert!(nodes >= 1, "a cluster needs at least one node");
        let bin = garage::binary();
        let ports = free_ports(3 * nodes);
        let mut cluster = GarageCluster {
            nodes: ports
                .chunks(3)
                .map(|p| {
                    let dir = tempfile::tempdir().unwrap();
                    let config = garage::write_config(dir.path(), nodes, p[0], p[1], p[2]);
                    let child = garage::spawn_server(&bin, &config, dir.path());
                    Node {
                        child: Mutex::new(Some(child)),
                        dir,
                        config,
                        id: String::new(),
                        rpc: p[0],
                        s3: p[1],
                    }
                })
                .collect(),
            bin,
            bucket: bucket.to_owned(),
        };
        cluster.setup();
        cluster
    }

    fn setup(&mut self) {
        // Node ids: each server writes its key on first start; then wait until it answers RPC.
        for i in 0..self.nodes.len() {
            let id = self.retry(&format!("node {i} did not start"), |c| {
                c.nodes[i].check_running(i);
                let id = c.admin(i, &["node", "id", "-q"])?;
                Ok(id.trim().split('@').next().unwrap_or_default().to_owned())
            });
            self.nodes[i].id = id;
            self.wait_rpc(i);
        }
        // Node 0 alone would do (peers are gossiped), but connecting every pair spares waiting
        // for the gossip.
        for i in 0..self.nodes.len() {
            for j in i + 1..self.nodes.len() {
                self.connect(i, j);
            }
        }
        for (i, node) in self.nodes.iter().enumerate() {
            let zone = format!("dc{}", i + 1);
            let id = node.id.clone();
            self.admin_ok(0, &["layout", "assign", "-z", &zone, "-c", "1G", &id]);
        }
        self.admin_ok(0, &["layout", "apply", "--version", "1"]);
        self.wait_connected();
        self.admin_ok(0, &["key", "import", "--yes", "-n", "test", KEY_ID, SECRET]);
        let bucket = self.bucket.clone();
        self.admin_ok(0, &["bucket", "create", &bucket]);
        self.admin_ok(
            0,
            &[
                "bucket", "allow", "--read", "--write", "--owner", &bucket, "--key", KEY_ID,
            ],
        );
        self.probe_s3();
    }

    /// Retries `f` every 100 ms until it succeeds; panics after [`SETUP_TIMEOUT`] with `what`,
    /// the last error and every node's log.
    fn retry<T>(&self, what: &str, mut f: impl FnMut(&Self) -> Result<T, String>) -> T {
        let start = Instant::now();
        loop {
            match f(self) {
                Ok(value) => return value,
                Err(e) if start.elapsed() > SETUP_TIMEOUT => {
                    panic!(
                        "garage cluster: {what} within {SETUP_TIMEOUT:?}: {e}\n{}",
                        self.logs()
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Waits until node `i`'s daemon answers admin RPC.
    fn wait_rpc(&self, i: usize) {
        self.retry(&format!("node {i} did not answer RPC"), |c| {
            c.nodes[i].check_running(i);
            c.admin(i, &["status"]).map(drop)
        });
    }

    /// Has node `from` connect to node `to`.
    fn connect(&self, from: usize, to: usize) {
        let addr = self.nodes[to].rpc_addr();
        self.retry(
            &format!("node {from} could not connect to node {to}"),
            |c| c.admin(from, &["node", "connect", &addr]).map(drop),
        );
    }

    /// Waits until every live node sees every live node, and, when all nodes are alive, reports
    /// the cluster healthy.
    fn wait_connected(&self) {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.is_alive(i))
            .collect();
        let all_alive = live.len() == self.nodes.len();
        let want = live.len().to_string();
        self.retry("the cluster did not become healthy", |c| {
            for &i in &live {
                c.nodes[i].check_running(i);
                let health = c.admin(i, &["health"])?;
                let connected = health_field(&health, "Connected nodes");
                let status = health_field(&health, "Cluster health");
                if connected != Some(want.as_str()) || (all_alive && status != Some("HEALTHY")) {
                    return Err(format!("node {i}: {health}"));
                }
            }
            Ok(())
        });
    }

    /// PUTs a small object through the first live node and GETs it back through every live node.
    fn probe_s3(&self) {
        let file = self.nodes[0].dir.path().join("probe");
        std::fs::write(&file, b"autosquash garage cluster probe").unwrap();
        self.retry("S3 PUT + GET did not work", |c| {
            c.try_put(PROBE_KEY, &file)?;
            for i in 0..c.nodes.len() {
                if c.is_alive(i) {
                    let got = c.get(i, PROBE_KEY)?;
                    if got != b"autosquash garage cluster probe" {
                        return Err(format!("node {i} returned {} wrong bytes", got.len()));
                    }
                }
            }
            Ok(())
        });
        self.delete(PROBE_KEY);
    }

    /// Runs a garage admin command against node `node`; returns stdout. Bounded by 30 s.
    pub fn admin(&self, node: usize, args: &[&str]) -> Result<String, String> {
        self.admin_within(node, args, ADMIN_TIMEOUT)
    }

    fn admin_within(&self, node: usize, args: &[&str], limit: Duration) -> Result<String, String> {
        let out = run_bounded(
            Command::new(&self.bin)
                .arg("-c")
                .arg(&self.nodes[node].config)
                .args(args),
            limit,
        )?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "garage {args:?} on node {node}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn admin_ok(&self, node: usize, args: &[&str]) {
        if let Err(e) = self.admin(node, args) {
            panic!("garage cluster: {e}\n{}", self.logs());
        }
    }

    /// Number of nodes (alive or killed).
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// `http://127.0.0.1:PORT` of node `node`'s S3 API.
    pub fn endpoint(&self, node: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[node].s3)
    }

    /// Whether node `node` is running (not killed, not exited).
    pub fn is_alive(&self, node: usize) -> bool {
        match &mut *self.nodes[node].child() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Node `node`'s log.
    pub fn log(&self, node: usize) -> String {
        self.nodes[node].log()
    }

    /// The tail of every node's log.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("--- garage node {i} log (tail) ---\n{}\n", tail(&n.log())))
            .collect()
    }

    /// Environment for clients of this cluster (the AWS SDK's standard variables); the
    /// endpoint is chosen per node with [`GarageCluster::endpoint`].
    pub fn env(&self) -> Vec<(&'static str, String)> {
        garage::client_env()
    }

    fn url(&self, node: usize, key: &str) -> String {
        format!("{}/{}/{key}", self.endpoint(node), self.bucket)
    }

    /// curl with SigV4 against node `node`, bounded; returns the body.
    fn curl(&self, node: usize, key: &str, args: &[&str]) -> Result<Vec<u8>, String> {
        let url = self.url(node, key);
        let mut all = vec!["--connect-timeout", "5", "--max-time", CURL_MAX_TIME];
        all.extend_from_slice(args);
        all.push(&url);
        let out = garage::curl_sigv4(&all);
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(format!(
                "curl {all:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// The first node that is alive (writes go there).
    fn first_alive(&self) -> Result<usize, String> {
        (0..self.nodes.len())
            .find(|&i| self.is_alive(i))
            .ok_or_else(|| "every node is down".to_owned())
    }

    fn try_put(&self, key: &str, file: &Path) -> Result<(), String> {
        let node = self.first_alive()?;
        self.curl(node, key, &["-T", &file.display().to_string()])
            .map(drop)
    }

    /// Uploads an object through node 0 (or the first live node if node 0 was killed), with
    /// curl's SigV4 signing. Panics if the upload fails.
    pub fn put(&self, key: &str, file: &Path) {
        if let Err(e) = self.try_put(key, file) {
            panic!("garage cluster put {key}: {e}");
        }
    }

    /// Deletes an object through the first live node. Panics if that fails.
    pub fn delete(&self, key: &str) {
        let result = self
            .first_alive()
            .and_then(|node| self.curl(node, key, &["-X", "DELETE"]));
        if let Err(e) = result {
            panic!("garage cluster delete {key}: {e}");
        }
    }

    /// GETs a whole object through node `node` (curl, SigV4, bounded to 60 s).
    pub fn get(&self, node: usize, key: &str) -> Result<Vec<u8>, String> {
        self.curl(node, key, &[])
    }

    /// GETs bytes `start..=end` of an object through node `node` (an HTTP `Range` request).
    pub fn get_range(
        &self,
        node: usize,
        key: &str,
        start: u64,
        end: u64,
    ) -> Result<Vec<u8>, String> {
        self.curl(node, key, &["-r", &format!("{start}-{end}")])
    }

    /// SIGKILLs node `node` and reaps it (no-op if it is already down). Returns at once: the
    /// surviving nodes have not noticed yet, and until they do a request they route to the dead
    /// node waits (see the module documentation and [`GarageCluster::settle_after_kill`]).
    pub fn kill(&self, node: usize) {
        let child = self.nodes[node].child().take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Makes every live node notice that the killed node `node` is gone, so that requests stop
    /// waiting on it; typically takes well under a second per node. Panics with the logs after
    /// a minute.
    ///
    /// Garage 2.5 drops its connection to a dead peer only when a write to it fails, which
    /// takes two writes after the peer's socket closed; on its own it writes every few
    /// seconds (status exchange, table sync, pings). Here each survivor is asked, repeatedly,
    /// for the dead node's info, which it forwards over that connection, until it answers
    /// "Not connected".
    pub fn settle_after_kill(&self, node: usize) {
        assert!(!self.is_alive(node), "node {node} is not dead");
        let request = format!(r#"{{"node":"{}","body":null}}"#, self.nodes[node].id);
        for other in 0..self.nodes.len() {
            if other == node || !self.is_alive(other) {
                continue;
            }
            self.retry(
                &format!("node {other} did not notice that node {node} is dead"),
                |c| {
                    // The first request may hang on the dead connection: give up on it soon, the
                    // next one finds the connection broken.
                    let answer = c
                        .admin_within(
                            other,
                            &["json-api", "GetNodeInfo", &request],
                            Duration::from_millis(300),
                        )
                        .unwrap_or_else(|e| e);
                    if answer.contains("Not connected") {
                        Ok(())
                    } else {
                        Err(answer)
                    }
                },
            );
        }
    }

    /// Starts a killed node again (killing it first if needed) with its data and identity,
    /// reconnects it with the other live nodes and waits until they all see each other (about
    /// 1 to 2 s). Panics with the logs if
    /// that takes more than a minute.
    pub fn restart(&self, node: usize) {
        self.kill(node);
        // A survivor still holding a stale connection would take `node connect` as done.
        self.settle_after_kill(node);
        let n = &self.nodes[node];
        *n.child() = Some(garage::spawn_server(&self.bin, &n.config, n.dir.path()));
        self.wait_rpc(node);
        // Garage reconnects by itself, but the surviving nodes back off between attempts and
        // only count a peer as connected once their own connection is up: ask them explicitly.
        for other in 0..self.nodes.len() {
            if other != node && self.is_alive(other) {
                self.connect(other, node);
            }
        }
        self.wait_connected();
    }
}

/// Each node kills its server when dropped, so a cluster that fails half-way through starting
/// leaves no process behind either.
impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
