//! A stand-in for the EC2 instance metadata service (IMDSv2), for the instance-role credential
//! path: `PUT /latest/api/token` hands out a session token, and with it
//! `GET /latest/meta-data/iam/security-credentials/` names the role ([`ROLE`]) and
//! `GET /latest/meta-data/iam/security-credentials/ROLE` hands out temporary credentials.
//! Everything else is a 404 (so SDKs that first try `security-credentials-extended/` fall back).
//!
//! What it hands out is set at runtime: a list of credential sets and when to move on to the next
//! ([`Rotation`]), the lifetime written into `Expiration`, and whether it is up at all (when down
//! it accepts connections and closes them at once). It counts what it was asked for.
//!
//! Point the AWS SDK at it with `AWS_EC2_METADATA_SERVICE_ENDPOINT` (see [`Imds::env`]). It
//! serves HTTP/1.1 with keep-alive on 127.0.0.1, on a thread of its own, until the process ends.

use crate::http::header;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpStream};

/// The name of the instance's role.
pub const ROLE: &str = "TrainingVM";

const CREDENTIALS_PATH: &str = "/latest/meta-data/iam/security-credentials/";

/// One set of temporary credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub token: String,
}

impl RoleCredentials {
    pub fn new(access_key_id: &str, secret_access_key: &str, token: &str) -> RoleCredentials {
        RoleCredentials {
            access_key_id: access_key_id.to_owned(),
            secret_access_key: secret_access_key.to_owned(),
            token: token.to_owned(),
        }
    }
}

/// When a credentials fetch hands out the next set of the list (never past the last).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// Only when [`Imds::rotate`] is called.
    Manual,
    /// Every fetch after the first hands out the next set.
    EachFetch,
    /// A fetch at least this long after the current set was first handed out hands out the next.
    After(Duration),
}

struct Handout {
    sets: Vec<RoleCredentials>,
    current: usize,
    /// When the current set was first handed out.
    since: Option<Instant>,
    rotation: Rotation,
    /// The access key id of every set handed out, in order.
    log: Vec<String>,
}

struct State {
    up: AtomicBool,
    lifetime_secs: AtomicU64,
    token_fetches: AtomicU64,
    role_fetches: AtomicU64,
    credential_fetches: AtomicU64,
    unauthorized: AtomicU64,
    refused: AtomicU64,
    /// Tokens handed out (each PUT gets a new one, as from the real service).
    tokens: Mutex<Vec<String>>,
    handout: Mutex<Handout>,
}

pub struct Imds {
    /// `http://127.0.0.1:PORT/`.
    pub endpoint: String,
    state: Arc<State>,
}

impl Imds {
    /// A service that is up and hands out `sets` (rotating by hand) valid for 6 hours.
    pub fn start(sets: Vec<RoleCredentials>) -> Imds {
        assert!(!sets.is_empty(), "no credentials to hand out");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let endpoint = format!("http://{}/", listener.local_addr().unwrap());
        let state = Arc::new(State {
            up: AtomicBool::new(true),
            lifetime_secs: AtomicU64::new(6 * 3600),
            token_fetches: AtomicU64::new(0),
            role_fetches: AtomicU64::new(0),
            credential_fetches: AtomicU64::new(0),
            unauthorized: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            tokens: Mutex::new(Vec::new()),
            handout: Mutex::new(Handout {
                sets,
                current: 0,
                since: None,
                rotation: Rotation::Manual,
                log: Vec::new(),
            }),
        });
        let s = state.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                while let Ok((conn, _)) = listener.accept().await {
                    if s.up.load(Ordering::SeqCst) {
                        tokio::spawn(serve(conn, s.clone()));
                    } else {
                        s.refused.fetch_add(1, Ordering::SeqCst);
                        drop(conn);
                    }
                }
            });
        });
        Imds { endpoint, state }
    }

    /// Environment that points the AWS SDK's IMDS client here.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("AWS_EC2_METADATA_SERVICE_ENDPOINT", self.endpoint.clone())]
    }

    /// Up: answers requests. Down: accepts connections and closes them at once (connections
    /// already open are closed at their next request).
    pub fn set_up(&self, up: bool) {
        self.state.up.store(up, Ordering::SeqCst);
    }

    /// The lifetime written into the `Expiration` of credentials handed out from now on.
    pub fn set_lifetime(&self, lifetime: Duration) {
        self.state
            .lifetime_secs
            .store(lifetime.as_secs(), Ordering::SeqCst);
    }

    /// Replaces the list of credential sets; the next fetch hands out the first.
    pub fn set_credentials(&self, sets: Vec<RoleCredentials>) {
        assert!(!sets.is_empty(), "no credentials to hand out");
        let mut h = self.state.handout.lock().unwrap();
        h.sets = sets;
        h.current = 0;
        h.since = None;
    }

    pub fn set_rotation(&self, rotation: Rotation) {
        self.state.handout.lock().unwrap().rotation = rotation;
    }

    /// Moves on to the next set now (stays on the last one).
    pub fn rotate(&self) {
        let mut h = self.state.handout.lock().unwrap();
        if h.current + 1 < h.sets.len() {
            h.current += 1;
            h.since = None;
        }
    }

    /// `PUT /latest/api/token` requests answered with a token.
    pub fn token_fetches(&self) -> u64 {
        self.state.token_fetches.load(Ordering::SeqCst)
    }

    /// Requests for the role's name answered.
    pub fn role_fetches(&self) -> u64 {
        self.state.role_fetches.load(Ordering::SeqCst)
    }

    /// Requests for the role's credentials answered.
    pub fn credential_fetches(&self) -> u64 {
        self.state.credential_fetches.load(Ordering::SeqCst)
    }

    /// Metadata requests refused with 401 (no token, or one not handed out here).
    pub fn unauthorized(&self) -> u64 {
        self.state.unauthorized.load(Ordering::SeqCst)
    }

    /// Connections closed unanswered because the service was down.
    pub fn refused_connections(&self) -> u64 {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// The access key id of each credentials fetch answered, in order.
    pub fn handed_out(&self) -> Vec<String> {
        self.state.handout.lock().unwrap().log.clone()
    }
}

/// One connection: requests one after another; while the service is down, each connection
/// is closed at its next request.
async fn serve(conn: TcpStream, state: Arc<State>) {
    crate::http::serve(conn, |head| {
        if !state.up.load(Ordering::SeqCst) {
            state.refused.fetch_add(1, Ordering::SeqCst);
            return None;
        }
        Some(answer(head, &state))
    })
    .await;
}

fn response(status: &str, headers: &[(&str, String)], body: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nServer: EC2ws\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

fn answer(head: &str, state: &State) -> Vec<u8> {
    let mut parts = head.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    // An endpoint given with a trailing slash may make a client send `//latest/...`.
    let path = format!("/{}", path.trim_start_matches('/'));
    if method == "PUT" && path == "/latest/api/token" {
        let Some(ttl) = header(head, "X-aws-ec2-metadata-token-ttl-seconds")
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|ttl| (1..=21_600).contains(ttl))
        else {
            return response("400 Bad Request", &[], "");
        };
        let n = state.token_fetches.fetch_add(1, Ordering::SeqCst) + 1;
        let token = format!("AQAEAstand-in-token-{n:04}==");
        state.tokens.lock().unwrap().push(token.clone());
        return response(
            "200 OK",
            &[("X-aws-ec2-metadata-token-ttl-seconds", ttl.to_string())],
            &token,
        );
    }
    if method != "GET" && method != "HEAD" {
        return response("405 Method Not Allowed", &[], "");
    }
    let authorized = header(head, "X-aws-ec2-metadata-token")
        .is_some_and(|t| state.tokens.lock().unwrap().iter().any(|ok| ok == t));
    if !authorized {
        state.unauthorized.fetch_add(1, Ordering::SeqCst);
        return response("401 Unauthorized", &[], "");
    }
    match path.strip_prefix(CREDENTIALS_PATH) {
        Some("") => {
            state.role_fetches.fetch_add(1, Ordering::SeqCst);
            response("200 OK", &[], ROLE)
        }
        Some(role) if role == ROLE => {
            let now = SystemTime::now();
            let lifetime = Duration::from_secs(state.lifetime_secs.load(Ordering::SeqCst));
            let set = {
                let mut h = state.handout.lock().unwrap();
                let next = match h.rotation {
                    Rotation::Manual => false,
                    Rotation::EachFetch => h.since.is_some(),
                    Rotation::After(d) => h.since.is_some_and(|s| s.elapsed() >= d),
                };
                if next && h.current + 1 < h.sets.len() {
                    h.current += 1;
                    h.since = None;
                }
                if h.since.is_none() {
                    h.since = Some(Instant::now());
                }
                let set = h.sets[h.current].clone();
                h.log.push(set.access_key_id.clone());
                set
            };
            state.credential_fetches.fetch_add(1, Ordering::SeqCst);
            let body = format!(
                "{{\n  \"Code\" : \"Success\",\n  \"LastUpdated\" : \"{}\",\n  \"Type\" : \"AWS-HMAC\",\n  \"AccessKeyId\" : \"{}\",\n  \"SecretAccessKey\" : \"{}\",\n  \"Token\" : \"{}\",\n  \"Expiration\" : \"{}\"\n}}",
                rfc3339(now),
                set.access_key_id,
                set.secret_access_key,
                set.token,
                rfc3339(now + lifetime),
            );
            response("200 OK", &[], &body)
        }
        _ => response("404 Not Found", &[], ""),
    }
}

/// `time` as `YYYY-MM-DDTHH:MM:SSZ` (UTC, whole seconds).
pub fn rfc3339(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Year, month, day of the day `days` after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March first
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_dates() {
        let at = |s: u64| rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_632_197_813), "2021-09-21T04:16:53Z");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z");
    }

    fn request(endpoint: &str, raw: &str) -> String {
        use std::io::{Read, Write};
        let addr = endpoint.trim_start_matches("http://").trim_end_matches('/');
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        // A service that is down closes the connection at once, maybe before the request is
        // written (EPIPE, ECONNRESET): what counts is that no answer comes.
        let _ = conn.write_all(raw.as_bytes());
        let _ = conn.shutdown(std::net::Shutdown::Write);
        let mut out = String::new();
        let _ = conn.read_to_string(&mut out);
        out
    }

    fn token(imds: &Imds) -> String {
        let out = request(
            &imds.endpoint,
            "PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        out.split("\r\n\r\n").nth(1).unwrap().to_owned()
    }

    fn get(imds: &Imds, path: &str, token: &str) -> String {
        request(
            &imds.endpoint,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token: {token}\r\n\r\n"),
        )
    }

    #[test]
    fn hands_out_a_role_and_rotating_credentials_with_a_token_only() {
        let imds = Imds::start(vec![
            RoleCredentials::new("A", "a", "ta"),
            RoleCredentials::new("B", "b", "tb"),
        ]);
        let no_ttl = request(
            &imds.endpoint,
            "PUT /latest/api/token HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert!(no_ttl.starts_with("HTTP/1.1 400"), "{no_ttl}");
        let t = token(&imds);
        assert!(get(&imds, CREDENTIALS_PATH, "wrong").starts_with("HTTP/1.1 401"));
        assert!(get(&imds, CREDENTIALS_PATH, &t).ends_with("\r\n\r\nTrainingVM"));
        let extended = "/latest/meta-data/iam/security-credentials-extended/";
        assert!(get(&imds, extended, &t).starts_with("HTTP/1.1 404"));
        imds.set_rotation(Rotation::EachFetch);
        let creds = format!("{CREDENTIALS_PATH}{ROLE}");
        let first = get(&imds, &creds, &t);
        assert!(first.contains("\"AccessKeyId\" : \"A\""), "{first}");
        assert!(first.contains("\"Expiration\" : \"2"), "{first}");
        assert!(get(&imds, &creds, &t).contains("\"AccessKeyId\" : \"B\""));
        assert!(get(&imds, &creds, &t).contains("\"AccessKeyId\" : \"B\""));
        assert_eq!(imds.handed_out(), ["A", "B", "B"]);
        assert_eq!(
            (
                imds.token_fetches(),
                imds.role_fetches(),
                imds.credential_fetches()
            ),
            (1, 1, 3)
        );
        imds.set_up(false);
        assert_eq!(get(&imds, &creds, &t), "");
        imds.set_up(true);
        assert!(get(&imds, &creds, &t).starts_with("HTTP/1.1 200"));
    }
}
