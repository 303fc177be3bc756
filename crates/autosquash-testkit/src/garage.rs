//! A real S3 server for tests: Garage on 127.0.0.1, single node, one key and one bucket,
//! started on free ports in a temporary directory and killed on drop.
//!
//! The binary comes from `$AUTOSQUASH_GARAGE_BIN` or the cache of `tests/install-garage`,
//! which builds it once per machine.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub const KEY_ID: &str = "GK0123456789abcdef01234567";
pub const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
pub const REGION: &str = "garage";

pub struct Garage {
    child: Child,
    dir: tempfile::TempDir,
    config: PathBuf,
    bin: PathBuf,
    /// `http://127.0.0.1:PORT` of the S3 API.
    pub endpoint: String,
    pub bucket: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The garage binary: `$AUTOSQUASH_GARAGE_BIN`, the cache of `tests/install-garage`, or PATH.
/// Panics with how to get it when there is none: a test that needs Garage is in the `s3-tests`
/// ring, which is only compiled in when asked for, so a missing server is a failure, not a skip.
pub fn binary() -> PathBuf {
    let candidates = [
        std::env::var_os("AUTOSQUASH_GARAGE_BIN").map(PathBuf::from),
        Some(PathBuf::from(
            "/var/cache/autosquash-ci/garage-2.5.0/bin/garage",
        )),
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("garage"))
                .find(|p| p.exists())
        }),
    ];
    match candidates.into_iter().flatten().find(|p| p.exists()) {
        Some(bin) => bin,
        None => panic!(
            "this test needs Garage (the S3 server): install it with `bash tests/install-garage` \
             (about 15 minutes) or point AUTOSQUASH_GARAGE_BIN at a garage binary; without it, \
             leave out the s3-tests ring (plain `cargo test` does)"
        ),
    }
}

/// Writes `garage.toml` for a node whose metadata, data and log live in `dir`; returns its path.
/// Every node written by this function shares the same `rpc_secret`, so they can form a cluster.
pub(crate) fn write_config(
    dir: &Path,
    replication_factor: usize,
    rpc: u16,
    s3: u16,
    admin: u16,
) -> PathBuf {
    let config = dir.join("garage.toml");
    std::fs::write(
        &config,
        format!(
            r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = {replication_factor}
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
            meta = dir.join("meta").display(),
            data = dir.join("data").display(),
            secret = SECRET,
        ),
    )
    .unwrap();
    config
}

/// Starts `garage server` with `config`, appending its output to `dir/garage.log`.
pub(crate) fn spawn_server(bin: &Path, config: &Path, dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("garage.log"))
        .unwrap();
    Command::new(bin)
        .arg("-c")
        .arg(config)
        .arg("server")
        .env("RUST_LOG", "garage=warn")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start garage")
}

/// Environment for S3 clients of a server started here (the AWS SDK's standard variables).
pub(crate) fn client_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", KEY_ID.to_owned()),
        ("AWS_SECRET_ACCESS_KEY", SECRET.to_owned()),
        ("AWS_REGION", REGION.to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ]
}

/// Runs curl with SigV4 signing as [`KEY_ID`] (unsigned payload); `args` carry the URL(s).
pub(crate) fn curl_sigv4(args: &[&str]) -> std::process::Output {
    curl_sigv4_as(KEY_ID, SECRET, args)
}

/// [`curl_sigv4`], signing as key `id`.
fn curl_sigv4_as(id: &str, secret: &str, args: &[&str]) -> std::process::Output {
    let signing = format!("aws:amz:{REGION}:s3");
    let user = format!("{id}:{secret}");
    Command::new("curl")
        .args(["-sS", "-f", "--aws-sigv4", &signing, "--user", &user])
        .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
        .args(args)
        .output()
        .expect("curl")
}

impl Garage {
    /// Starts a server with bucket `bucket`. Panics when there is no binary (see [`binary`])
    /// and with Garage's log if it does not come up.
    pub fn start(bucket: &str) -> Garage {
        let bin = binary();
        let dir = tempfile::tempdir().unwrap();
        let (rpc, s3, admin) = (free_port(), free_port(), free_port());
        let config = write_config(dir.path(), 1, rpc, s3, admin);
        let child = spawn_server(&bin, &config, dir.path());
        let mut garage = Garage {
            child,
            dir,
            config,
            bin,
            endpoint: format!("http://127.0.0.1:{s3}"),
            bucket: bucket.to_owned(),
        };
        garage.setup(bucket);
        garage
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("garage.log")).unwrap_or_default()
    }

    /// Runs a garage admin command; returns stdout.
    pub fn admin(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn setup(&mut self, bucket: &str) {
        let start = Instant::now();
        let node = loop {
            match self.admin(&["node", "id", "-q"]) {
                Ok(id) => break id.trim().split('@').next().unwrap().to_owned(),
                Err(e) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        panic!("garage exited with {status}: {}", self.log());
                    }
                    assert!(
                        start.elapsed() < Duration::from_secs(30),
                        "garage did not start: {e}\n{}",
                        self.log()
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        let steps: [&[&str]; 5] = [
            &["layout", "assign", "-z", "dc1", "-c", "1G", &node],
            &["layout", "apply", "--version", "1"],
            &["key", "import", "--yes", "-n", "test", KEY_ID, SECRET],
            &["bucket", "create", bucket],
            &[
                "bucket", "allow", "--read", "--write", "--owner", bucket, "--key", KEY_ID,
            ],
        ];
        // `node id` reads the key on disk and answers before the server listens; the steps
        // need its RPC port, so each waits (bounded) until the server is up.
        for step in steps {
            loop {
                match self.admin(step) {
                    Ok(_) => break,
                    Err(e)
                        if e.contains("Connection refused")
                            && start.elapsed() < Duration::from_secs(60) =>
                    {
                        if let Ok(Some(status)) = self.child.try_wait() {
                            panic!("garage exited with {status}: {}", self.log());
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(e) => panic!("garage {step:?} failed: {e}"),
                }
            }
        }
    }

    /// Environment for clients of this server (the AWS SDK's standard variables).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        client_env()
    }

    /// Uploads an object (with curl's SigV4 signing, so tests need no S3 client of their own).
    pub fn put(&self, key: &str, file: &Path) {
        self.curl(&["-T", &file.display().to_string()], key);
    }

    /// Uploads `file` under every key, many transfers at once.
    pub fn put_many(&self, keys: &[String], file: &Path) {
        let config = self.dir.path().join("put-many.curl");
        let mut lines = String::new();
        for key in keys {
            lines.push_str(&format!(
                "upload-file = \"{}\"\nurl = \"{}/{}/{key}\"\n",
                file.display(),
                self.endpoint,
                self.bucket
            ));
        }
        std::fs::write(&config, lines).unwrap();
        self.curl_raw(&[
            "--parallel",
            "--parallel-max",
            "32",
            "-K",
            &config.display().to_string(),
        ]);
    }

    /// Imports one more key (`id` is `GK` and 24 hex digits, `secret` 64 hex digits) and lets it
    /// read the bucket.
    pub fn add_key(&self, name: &str, id: &str, secret: &str) {
        let steps: [&[&str]; 2] = [
            &["key", "import", "--yes", "-n", name, id, secret],
            &["bucket", "allow", "--read", &self.bucket, "--key", id],
        ];
        for step in steps {
            if let Err(e) = self.admin(step) {
                panic!("garage {step:?} failed: {e}");
            }
        }
    }

    /// Deletes key `id`: requests signed with it are refused from then on.
    pub fn delete_key(&self, id: &str) {
        if let Err(e) = self.admin(&["key", "delete", "--yes", id]) {
            panic!("garage key delete {id} failed: {e}");
        }
    }

    /// Whether a listing of the bucket signed with key `id` succeeds.
    pub fn key_can_list(&self, id: &str, secret: &str) -> bool {
        let url = format!("{}/{}?list-type=2", self.endpoint, self.bucket);
        curl_sigv4_as(id, secret, &["-o", "/dev/null", &url])
            .status
            .success()
    }

    pub fn delete(&self, key: &str) {
        self.curl(&["-X", "DELETE"], key);
    }

    fn curl(&self, args: &[&str], key: &str) {
        let url = format!("{}/{}/{key}", self.endpoint, self.bucket);
        let mut all = args.to_vec();
        all.push(&url);
        self.curl_raw(&all);
    }

    fn curl_raw(&self, args: &[&str]) {
        let out = curl_sigv4(args);
        assert!(
            out.status.success(),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
