//! A stand-in S3 server that checks less than S3 does, for the faults a real server can't be
//! made to produce: it can ignore `If-Match` (s3s-fs 0.14 and s3rver 3.7 do: a ranged GET of
//! a replaced object answers the new bytes) and ignore `Range` (a 200 with the whole object).
//! It serves one bucket from memory (ListObjectsV2, HEAD, GET) on 127.0.0.1, over HTTP/1.1
//! with keep-alive, and accepts any credentials.

use crate::http::header;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
pub struct Behaviour {
    /// Answer 412 to a GET whose `If-Match` is not the object's ETag (what S3 does).
    pub honours_if_match: AtomicBool,
    /// Answer 206 with the range asked for (what S3 does); else 200 with the whole object.
    pub honours_range: AtomicBool,
    pub gets: AtomicU64,
}

struct Object {
    data: Vec<u8>,
    etag: String,
}

pub struct LaxS3 {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    pub bucket: String,
    pub behaviour: Arc<Behaviour>,
    objects: Arc<Mutex<BTreeMap<String, Object>>>,
}

impl LaxS3 {
    /// A server for `bucket` that ignores `If-Match` and honours `Range`. It runs on a thread
    /// of its own (so it can be started and dropped from async tests) until the process ends.
    pub fn start(bucket: &str) -> LaxS3 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let behaviour = Arc::new(Behaviour::default());
        behaviour.honours_range.store(true, Ordering::Relaxed);
        let objects: Arc<Mutex<BTreeMap<String, Object>>> = Arc::default();
        let (b, o, name) = (behaviour.clone(), objects.clone(), bucket.to_owned());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                while let Ok((conn, _)) = listener.accept().await {
                    tokio::spawn(serve(conn, name.clone(), b.clone(), o.clone()));
                }
            });
        });
        LaxS3 {
            endpoint,
            bucket: bucket.to_owned(),
            behaviour,
            objects,
        }
    }

    /// Creates or replaces an object; its ETag is a hash of its bytes, as S3's is.
    pub fn put(&self, key: &str, data: Vec<u8>) {
        let etag = format!("\"{:016x}{:08x}\"", fnv(&data), data.len());
        self.objects
            .lock()
            .unwrap()
            .insert(key.to_owned(), Object { data, etag });
    }

    /// Environment for a client of this server (any credentials pass).
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "lax"),
            ("AWS_SECRET_ACCESS_KEY", "lax"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// One connection: requests one after another.
async fn serve(
    conn: TcpStream,
    bucket: String,
    behaviour: Arc<Behaviour>,
    objects: Arc<Mutex<BTreeMap<String, Object>>>,
) {
    crate::http::serve(conn, |head| {
        Some(answer(head, &bucket, &behaviour, &objects))
    })
    .await;
}

fn response(status: &str, headers: &[(&str, String)], body: &[u8], send_body: bool) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if send_body {
        out.extend_from_slice(body);
    }
    out
}

fn error(status: &str, code: &str) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{code}</Message></Error>"
    );
    response(
        status,
        &[("Content-Type", "application/xml".into())],
        body.as_bytes(),
        true,
    )
}

fn answer(
    head: &str,
    bucket: &str,
    behaviour: &Behaviour,
    objects: &Mutex<BTreeMap<String, Object>>,
) -> Vec<u8> {
    let mut parts = head.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let Some(rest) = path.strip_prefix(&format!("/{bucket}")) else {
        return error("404 Not Found", "NoSuchBucket");
    };
    let key = percent_decode(rest.trim_start_matches('/'));
    let objects = objects.lock().unwrap();
    if key.is_empty() {
        // ListObjectsV2: everything under the prefix, in one page.
        let prefix = query
            .split('&')
            .find_map(|p| p.strip_prefix("prefix="))
            .map(percent_decode)
            .unwrap_or_default();
        let mut body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>{bucket}</Name><Prefix>{prefix}</Prefix><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>"
        );
        if query.contains("encoding-type=url") {
            body.push_str("<EncodingType>url</EncodingType>");
        }
        for (k, o) in objects.range(prefix.clone()..) {
            if !k.starts_with(&prefix) {
                break;
            }
            body.push_str(&format!(
                "<Contents><Key>{k}</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified><ETag>{}</ETag><Size>{}</Size><StorageClass>STANDARD</StorageClass></Contents>",
                o.etag.replace('"', "&quot;"),
                o.data.len()
            ));
        }
        body.push_str("</ListBucketResult>");
        return response(
            "200 OK",
            &[("Content-Type", "application/xml".into())],
            body.as_bytes(),
            true,
        );
    }
    let Some(object) = objects.get(&key) else {
        return error("404 Not Found", "NoSuchKey");
    };
    let etag = ("ETag", object.etag.clone());
    if method == "HEAD" {
        // The length of the body a GET would send, and no body.
        return response("200 OK", &[etag], &object.data, false);
    }
    behaviour.gets.fetch_add(1, Ordering::Relaxed);
    if behaviour.honours_if_match.load(Ordering::Relaxed)
        && header(head, "If-Match").is_some_and(|m| m != object.etag)
    {
        return error("412 Precondition Failed", "PreconditionFailed");
    }
    let size = object.data.len();
    let range = header(head, "Range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
    match range {
        Some((a, b)) if behaviour.honours_range.load(Ordering::Relaxed) => {
            if a >= size {
                return error("416 Range Not Satisfiable", "InvalidRange");
            }
            let b = b.min(size - 1);
            response(
                "206 Partial Content",
                &[etag, ("Content-Range", format!("bytes {a}-{b}/{size}"))],
                &object.data[a..=b],
                true,
            )
        }
        _ => response("200 OK", &[etag], &object.data, true),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1..i + 3)) {
            (b'%', Some(hex)) => match u8::from_str_radix(&String::from_utf8_lossy(hex), 16) {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                }
                Err(_) => {
                    out.push(b'%');
                    i += 1;
                }
            },
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
