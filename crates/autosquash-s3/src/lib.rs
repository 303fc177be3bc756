//! `S3Store`: the [`Store`] of autosquash on Amazon S3 and S3-compatible servers (Garage,
//! MinIO, Ceph RGW, OpenStack Swift's S3 API).
//!
//! Credentials come from the AWS SDK's default chain (environment, shared profile, web
//! identity, container credentials, EC2 instance role through IMDSv2) unless requests are
//! unsigned. Reads are ranged GETs pinned with `If-Match`: a replaced object answers 412,
//! which becomes [`Error::Replaced`]. The SDK's client sets TCP_NODELAY, reuses connections,
//! and retries throttling, 5xx, timeouts and resets with jittered exponential backoff; every
//! call has connect, read and total timeouts, so an unreachable store fails, never hangs.
//! The SDK's client-wide retry quota is off: it let a burst of throttling use up the retries
//! of other reads (one read failed at once, and with it the store counted as not answering:
//! the reliability suite's faults scenario saw 2584 failed reads in CI). What bounds retries
//! here is per call: [`S3Config::max_attempts`] within the total timeout.

use autosquash_core::{Error, ObjectMeta, Result, Store};
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::Region;
use aws_sdk_s3::config::interceptors::{
    BeforeSerializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::EncodingType;
use aws_smithy_runtime_api::box_error::BoxError;
use bytes::Bytes;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tracing::debug;

mod health;
mod upload;
/// The SDK, for requests beyond the [`Store`] trait (see [`client_config`]).
pub use aws_sdk_s3;
use health::Health;
pub use upload::*;

/// Where and how to reach a bucket. Field names follow the aws CLI's flags.
#[derive(Debug, Clone)]
pub struct S3Config {
    pub bucket: String,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub force_path_style: bool,
    pub no_sign_request: bool,
    pub profile: Option<String>,
    pub connect_timeout: Duration,
    /// Time to first byte and between bytes of a response.
    pub read_timeout: Duration,
    /// Total time for one call, retries included.
    pub operation_timeout: Duration,
    pub max_attempts: u32,
}

impl S3Config {
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            region: None,
            endpoint_url: None,
            force_path_style: false,
            no_sign_request: false,
            profile: None,
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(30),
            // At 12 % of requests failing (the reliability suite's faults), a call fails
            // after all attempts once in 2*10^7; with the backoff capped at 1 s, a store that
            // refuses connections still fails a read within about 3.5 s.
            max_attempts: 8,
        }
    }
}

/// Decodes a key of a listing asked with `encoding-type=url`: `%XX` escapes, and `+` for a
/// space (as S3 writes it; a literal `+` comes as `%2B`). `None` if it is not UTF-8.
pub fn url_decode(encoded: &str) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = encoded.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Splits `s3://bucket/prefix/` into the bucket and the key prefix (`prefix/`, or empty).
pub fn parse_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("s3://")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return None;
    }
    Some((bucket.to_owned(), prefix.to_owned()))
}

/// The S3 client configuration for `config` (region, credentials chain, endpoint,
/// addressing, timeouts, retries) that [`S3Store::new`] builds its client from; for tools
/// that need requests the store does not make (`autosquash doctor`). With it, the credentials
/// provider it signs with (`None` for unsigned requests).
pub async fn client_config(
    config: &S3Config,
) -> (
    aws_sdk_s3::config::Builder,
    Option<aws_sdk_s3::config::SharedCredentialsProvider>,
) {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(config.connect_timeout)
                .read_timeout(config.read_timeout)
                .operation_timeout(config.operation_timeout)
                .build(),
        )
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(config.max_attempts)
                .with_initial_backoff(Duration::from_millis(50))
                .with_max_backoff(Duration::from_secs(1)),
        );
    if let Some(region) = &config.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(profile) = &config.profile {
        loader = loader.profile_name(profile);
    }
    if config.no_sign_request {
        loader = loader.no_credentials();
    }
    let shared = loader.load().await;
    let unlimited = aws_sdk_s3::config::retry::RetryPartition::custom("autosquash")
        .token_bucket(aws_sdk_s3::config::retry::TokenBucket::unlimited())
        .build();
    let mut builder = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(config.force_path_style)
        .retry_partition(unlimited);
    if shared.region().is_none() {
        // S3-compatible servers rarely care; AWS itself redirects from us-east-1.
        builder = builder.region(Region::new("us-east-1"));
    }
    if let Some(endpoint) = &config.endpoint_url {
        builder = builder.endpoint_url(endpoint);
    }
    (builder, shared.credentials_provider())
}

pub struct S3Store {
    client: Client,
    bucket: String,
    attempts: Arc<Attempts>,
    /// Bound of one read, every retry included (the SDK's own bound covers one call).
    read_deadline: Duration,
    /// Whether the store is answering: reads fail fast during an outage.
    health: Health,
}

/// Counts the SDK's request attempts and operations: their difference is the retries.
#[derive(Debug, Default)]
struct Attempts {
    operations: AtomicU64,
    attempts: AtomicU64,
    /// Cut-off bodies retried by [`S3Store::read`] itself.
    body_retries: AtomicU64,
}

#[derive(Debug)]
struct CountAttempts(Arc<Attempts>);

impl Intercept for CountAttempts {
    fn name(&self) -> &'static str {
        "autosquash-count-attempts"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.operations.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.attempts.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Attempts at reading a response body that breaks off.
const BODY_ATTEMPTS: u32 = 4;

enum Attempt {
    Retry(Error),
    Final(Error),
}

/// Exponential backoff from 50 ms with up to 50% jitter.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(50) * 2u32.pow(attempt.min(6));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    base + base.mul_f64(f64::from(nanos % 1000) / 2000.0)
}

/// Whether a ranged GET's answer is the pinned version's bytes of the range asked for: its
/// ETag the pinned one (a store that ignores `If-Match` answers a replaced object's new
/// bytes: taken as replaced, like a 412) and its `Content-Range` the range asked for of an
/// object of the pinned size (a store that ignores `Range` answers the whole object).
fn answered_as_asked(
    object: &ObjectMeta,
    range: &Range<u64>,
    etag: Option<&str>,
    content_range: Option<&str>,
) -> Result<()> {
    let bare = |e: &str| e.trim_start_matches("W/").trim_matches('"').to_owned();
    if etag.is_some_and(|e| bare(e) != bare(&object.etag)) {
        return Err(Error::Replaced(object.key.clone()));
    }
    let wanted = format!("bytes {}-{}/", range.start, range.end - 1);
    match content_range {
        Some(answered) => match answered.strip_prefix(&wanted) {
            Some(size) if size == object.size.to_string() => Ok(()),
            // The range asked for, of an object of another size: another version.
            Some(_) => Err(Error::Replaced(object.key.clone())),
            None => Err(Error::store(
                &object.key,
                format!(
                    "asked the store for {wanted}{}, it answered {answered}",
                    object.size
                ),
            )),
        },
        // A 200: right only if the range asked for is the whole object.
        None if range.start == 0 && range.end == object.size => Ok(()),
        None => Err(Error::store(
            &object.key,
            "the store ignored the Range header (it answered the whole object); it cannot be served",
        )),
    }
}

impl S3Store {
    async fn get(&self, object: &ObjectMeta, range: &Range<u64>) -> Result<Bytes, Attempt> {
        let (key, etag) = (object.key.as_str(), object.etag.as_str());
        let started = tokio::time::Instant::now();
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .if_match(etag)
            .send()
            .await
            .map_err(|e| Attempt::Final(self.error(key, e, started)))?;
        // Not every S3-compatible store honours If-Match and Range: what it answered is
        // checked before its bytes are used.
        answered_as_asked(object, range, out.e_tag(), out.content_range())
            .map_err(Attempt::Final)?;
        let data = out
            .body
            .collect()
            .await
            .map_err(|e| Attempt::Retry(Error::store(key, format!("reading the response: {e}"))))?
            .into_bytes();
        let wanted = range.end - range.start;
        if data.len() as u64 != wanted {
            return Err(Attempt::Retry(Error::store(
                key,
                format!("asked for {wanted} bytes, got {}", data.len()),
            )));
        }
        Ok(data)
    }

    pub async fn new(config: &S3Config) -> Self {
        let (mut builder, _) = client_config(config).await;
        let attempts = Arc::new(Attempts::default());
        builder = builder.interceptor(CountAttempts(attempts.clone()));
        Self {
            client: Client::from_conf(builder.build()),
            bucket: config.bucket.clone(),
            attempts,
            read_deadline: config.operation_timeout,
            health: Health::default(),
        }
    }

    /// Turns an SDK error into a store error: 404 → not found, 412 → replaced, the rest with
    /// the service's code and message (never the request's credentials).
    fn error<E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        key: &str,
        err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
        started: tokio::time::Instant,
    ) -> Error {
        if let SdkError::ServiceError(service) = &err {
            self.health.answered(started);
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or("");
            let message = service.err().message().unwrap_or("");
            match (status, code) {
                (_, "NoSuchBucket") => {
                    return Error::store(
                        &self.describe(),
                        format!("bucket {} does not exist", self.bucket),
                    );
                }
                (404, _) | (_, "NoSuchKey") => return Error::ObjectNotFound(key.to_owned()),
                (412, _) => return Error::Replaced(key.to_owned()),
                _ => {
                    let what = format!("{code} (HTTP {status}): {message}");
                    return Error::store(&format!("s3://{}/{key}", self.bucket), what);
                }
            }
        }
        let what = match &err {
            SdkError::TimeoutError(_) => {
                self.health.unreachable(started);
                "timed out".to_owned()
            }
            SdkError::DispatchFailure(_) => {
                self.health.unreachable(started);
                format!("cannot reach the store: {}", DisplayErrorContext(&err))
            }
            _ => DisplayErrorContext(&err).to_string(),
        };
        Error::store(&format!("s3://{}/{key}", self.bucket), what)
    }
}

#[async_trait::async_trait]
impl Store for S3Store {
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let started = tokio::time::Instant::now();
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            // Keys come URL-encoded: a key with a character XML 1.0 cannot carry (ESC, most
            // control characters) would otherwise make the whole listing unreadable.
            .encoding_type(EncodingType::Url)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error(prefix, e, started))?;
            for object in page.contents() {
                let (Some(encoded), Some(etag)) = (object.key(), object.e_tag()) else {
                    continue;
                };
                let Some(key) = url_decode(encoded) else {
                    debug!(key = encoded, "skipping a key that is not UTF-8");
                    continue;
                };
                out.push(ObjectMeta {
                    key,
                    size: object.size().unwrap_or(0).max(0) as u64,
                    etag: etag.to_owned(),
                });
            }
        }
        Ok(out)
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let started = tokio::time::Instant::now();
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.error(key, e, started))?;
        Ok(ObjectMeta {
            key: key.to_owned(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            etag: out
                .e_tag()
                .ok_or_else(|| Error::store(key, "the store gave no ETag"))?
                .to_owned(),
        })
    }

    async fn read(&self, object: &ObjectMeta, range: Range<u64>) -> Result<Bytes> {
        let key = object.key.as_str();
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        // The SDK retries failed requests; a body cut short after the headers arrived is
        // retried here, a few times with jittered backoff, all within the configured bound.
        if !self.health.admit() {
            return Err(Error::store(
                &format!("s3://{}/{key}", self.bucket),
                "the store is not answering",
            ));
        }
        let started = tokio::time::Instant::now();
        let deadline = started + self.read_deadline;
        let mut attempt = 1;
        loop {
            let Ok(result) = tokio::time::timeout_at(deadline, self.get(object, &range)).await
            else {
                self.health.unreachable(started);
                return Err(Error::store(
                    &format!("s3://{}/{key}", self.bucket),
                    format!("timed out after {:?}", self.read_deadline),
                ));
            };
            match result {
                Ok(data) => {
                    self.health.answered(started);
                    return Ok(data);
                }
                Err(Attempt::Retry(e)) if attempt < BODY_ATTEMPTS => {
                    self.attempts.body_retries.fetch_add(1, Ordering::Relaxed);
                    debug!(key, attempt, error = %e, "retrying a cut-off response");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                Err(Attempt::Retry(e) | Attempt::Final(e)) => return Err(e),
            }
        }
    }

    fn describe(&self) -> String {
        format!("s3://{}", self.bucket)
    }

    fn retries(&self) -> u64 {
        let a = &self.attempts;
        let sdk = a
            .attempts
            .load(Ordering::Relaxed)
            .saturating_sub(a.operations.load(Ordering::Relaxed));
        sdk + a.body_retries.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(parse_url("s3://b/p/"), Some(("b".into(), "p/".into())));
        assert_eq!(parse_url("s3://b"), Some(("b".into(), "".into())));
        assert_eq!(
            parse_url("s3://b/a/x.squash"),
            Some(("b".into(), "a/x.squash".into()))
        );
        assert_eq!(parse_url("s3:///x"), None);
        assert_eq!(parse_url("/tmp"), None);
    }

    #[test]
    fn listed_keys_are_decoded() {
        assert_eq!(
            url_decode("a/b%1B%5B31m.squash").unwrap(),
            "a/b\x1b[31m.squash"
        );
        assert_eq!(url_decode("x+y%2Bz%20").unwrap(), "x y+z ");
        assert_eq!(url_decode("caf%C3%A9").unwrap(), "café");
        assert_eq!(url_decode("bad%FF"), None);
        assert_eq!(url_decode("cut%4"), None);
        assert_eq!(url_decode("%zz"), None);
    }
}
