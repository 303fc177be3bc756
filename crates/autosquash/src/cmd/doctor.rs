//! `doctor`: checks, in a few seconds and with read-only requests, that an S3 prefix can be
//! served: credentials, listing, addressing, clock, TLS, HEAD, Range and If-Match, latency
//! and throughput. One line per check (`ok`, `problem` or `note`); exit 1 if any problem.

use crate::source::S3Args;
use anyhow::{Result, bail};
use autosquash_s3::aws_sdk_s3::config::http::HttpResponse;
use autosquash_s3::aws_sdk_s3::config::interceptors::{
    BeforeDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use autosquash_s3::aws_sdk_s3::config::{
    ConfigBag, Intercept, ProvideCredentials, RuntimeComponents,
};
use autosquash_s3::aws_sdk_s3::error::{
    BoxError, DisplayErrorContext, ProvideErrorMetadata, SdkError,
};
use autosquash_s3::aws_sdk_s3::primitives::{ByteStream, DateTime, DateTimeFormat};
use autosquash_s3::aws_sdk_s3::types::EncodingType;
use autosquash_s3::aws_sdk_s3::{self as s3, Client};
use autosquash_s3::{S3Config, client_config, parse_url, url_decode};
use clap::Args;
use serde::Serialize;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

#[derive(Args)]
pub struct DoctorArgs {
    /// The prefix to check: s3://bucket/prefix/.
    url: String,
    /// Print one JSON document: an array of {check, status, detail, advice}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    s3: S3Args,
}

#[derive(Serialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Problem,
    Note,
}

#[derive(Serialize, Debug)]
struct Finding {
    check: &'static str,
    status: Status,
    detail: String,
    advice: Option<String>,
}

/// Every check, in the order they are printed. A check that could not run is a note.
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

/// Longest time the doctor spends on one request unless `--s3-timeout` says otherwise.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);
/// Clock skew that is reported as a problem (SigV4 refuses requests 15 minutes off).
const MAX_SKEW: Duration = Duration::from_secs(5 * 60);
/// Size of the small ranged GETs (range check and latency).
const SMALL: u64 = 4096;
/// Size of each throughput GET, and how many run in parallel.
const CHUNK: u64 = 8 << 20;
const PARALLEL: u64 = 8;
/// Time bound of each throughput measurement.
const THROUGHPUT_TIME: Duration = Duration::from_secs(8);

#[derive(Default)]
struct Report(Vec<Finding>);

impl Report {
    fn add(&mut self, check: &'static str, status: Status, detail: String, advice: Option<String>) {
        self.0.retain(|f| f.check != check);
        self.0.push(Finding {
            check,
            status,
            detail,
            advice,
        });
    }
    fn ok(&mut self, check: &'static str, detail: impl Into<String>) {
        self.add(check, Status::Ok, detail.into(), None);
    }
    fn note(&mut self, check: &'static str, detail: impl Into<String>) {
        self.add(check, Status::Note, detail.into(), None);
    }
    fn problem(
        &mut self,
        check: &'static str,
        detail: impl Into<String>,
        advice: impl Into<String>,
    ) {
        self.add(check, Status::Problem, detail.into(), Some(advice.into()));
    }
    fn has(&self, check: &str) -> bool {
        self.0.iter().any(|f| f.check == check)
    }
    /// Notes every check not reported yet as skipped, and sorts the findings.
    fn finish(mut self, why: &str) -> Vec<Finding> {
        for check in CHECKS {
            if !self.has(check) {
                self.note(check, format!("skipped: {why}"));
            }
        }
        self.0
            .sort_by_key(|f| CHECKS.iter().position(|c| *c == f.check));
        self.0
    }
}

/// What the last request and response looked like, as the SDK's interceptor saw them.
#[derive(Debug, Default, Clone)]
struct Seen {
    uri: Option<String>,
    status: Option<u16>,
    date: Option<String>,
    received: Option<SystemTime>,
    bucket_region: Option<String>,
}

#[derive(Debug, Default, Clone)]
struct Recorder(Arc<Mutex<Seen>>);

impl Recorder {
    fn last(&self) -> Seen {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Intercept for Recorder {
    fn name(&self) -> &'static str {
        "autosquash-doctor"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        seen.uri = Some(context.request().uri().to_owned());
        Ok(())
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let response = context.response();
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        seen.status = Some(response.status().as_u16());
        if let Some(date) = response.headers().get("date") {
            seen.date = Some(date.to_owned());
            seen.received = Some(SystemTime::now());
        }
        if let Some(region) = response.headers().get("x-amz-bucket-region") {
            seen.bucket_region = Some(region.to_owned());
        }
        Ok(())
    }
}

/// A failed request, described without its credentials.
#[derive(Debug)]
struct Failure {
    /// HTTP status and service error code, when the store answered.
    status: Option<u16>,
    code: String,
    /// No answer at all: refused, unresolvable, timed out.
    unreachable: bool,
    text: String,
}

impl Failure {
    fn from_sdk<E: ProvideErrorMetadata + std::error::Error + 'static>(
        err: SdkError<E, HttpResponse>,
    ) -> Failure {
        match &err {
            SdkError::ServiceError(service) => {
                let status = service.raw().status().as_u16();
                let code = service.err().code().unwrap_or("").to_owned();
                let message = service.err().message().unwrap_or("");
                let text = match (code.as_str(), message) {
                    ("", _) => format!("HTTP {status}"),
                    (code, "") => format!("{code} (HTTP {status})"),
                    (code, message) => format!("{code} (HTTP {status}): {message}"),
                };
                Failure {
                    status: Some(status),
                    code,
                    unreachable: false,
                    text,
                }
            }
            SdkError::TimeoutError(_) => Failure::timeout(),
            SdkError::DispatchFailure(_) => Failure {
                status: None,
                code: String::new(),
                unreachable: true,
                text: chain(&err),
            },
            _ => Failure {
                status: None,
                code: String::new(),
                unreachable: false,
                text: chain(&err),
            },
        }
    }

    fn timeout() -> Failure {
        Failure {
            status: None,
            code: String::new(),
            unreachable: true,
            text: "timed out".to_owned(),
        }
    }

    fn credentials_refused(&self) -> bool {
        matches!(
            self.code.as_str(),
            "AccessDenied"
                | "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "ExpiredToken"
                | "InvalidToken"
                | "TokenRefreshRequired"
                | "InvalidSecurity"
        ) || (self.code.is_empty() && matches!(self.status, Some(401 | 403)))
    }

    fn wrong_region(&self) -> bool {
        matches!(
            self.code.as_str(),
            "PermanentRedirect"
                | "AuthorizationHeaderMalformed"
                | "IllegalLocationConstraintException"
        ) || self.status == Some(301)
    }
}

/// The error's chain of causes, without the SDK's Debug dump of it that follows.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let text = DisplayErrorContext(err).to_string();
    match text
        .find(" (DispatchFailure(")
        .or_else(|| text.find(" (ConstructionFailure("))
        .or_else(|| text.find(" (ResponseError("))
        .or_else(|| text.find(" (TimeoutError("))
    {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// Runs `request` within `bound`, so no step outlives it even if the SDK's own timeouts
/// do not cover it (credential look-ups, bodies).
async fn bounded<T, F>(bound: Duration, request: F) -> Result<T, Failure>
where
    F: Future<Output = Result<T, Failure>>,
{
    tokio::time::timeout(bound, request)
        .await
        .unwrap_or_else(|_| Err(Failure::timeout()))
}

/// A GET's answer: its headers, and its body still unread.
struct Got {
    status: Option<u16>,
    content_range: Option<String>,
    length: Option<u64>,
    etag: Option<String>,
    body: ByteStream,
}

/// Reads up to `limit` bytes of a body (more means the store sent more than was asked),
/// stopping at `deadline`. Returns the bytes read and whether the body ended.
async fn drain(
    body: &mut ByteStream,
    limit: u64,
    deadline: Instant,
) -> Result<(u64, bool), String> {
    let mut n = 0u64;
    loop {
        match tokio::time::timeout_at(deadline, body.next()).await {
            Err(_) => return Ok((n, false)),
            Ok(None) => return Ok((n, true)),
            Ok(Some(Ok(chunk))) => {
                n += chunk.len() as u64;
                if n > limit {
                    return Ok((n, false));
                }
            }
            Ok(Some(Err(e))) => return Err(format!("reading the response: {e}")),
        }
    }
}

fn bare(etag: &str) -> &str {
    etag.trim_start_matches("W/").trim_matches('"')
}

fn mib_per_s(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-6);
    format!("{:.1} MiB/s", bytes as f64 / secs / f64::from(1 << 20))
}

fn describe_provider(name: &str) -> &'static str {
    let n = name.to_ascii_lowercase();
    if n.contains("environment") {
        "environment variables AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
    } else if n.contains("webidentity") {
        "a web identity token (AWS_WEB_IDENTITY_TOKEN_FILE)"
    } else if n.contains("ecs") || n.contains("container") {
        "container credentials (ECS/EKS)"
    } else if n.contains("imds") || n.contains("ec2") {
        "the EC2 instance role (IMDS)"
    } else if n.contains("sso") {
        "SSO"
    } else if n.contains("process") {
        "a credential_process"
    } else if n.contains("profile") || n.contains("assumerole") {
        "the shared config/credentials profile"
    } else {
        "the default credentials chain"
    }
}

/// `provider_name: "X"` of a `Credentials`' Debug output (the only place the SDK shows it);
/// nothing else of that output is used: it holds the access key id.
fn provider_name(debug: &str) -> String {
    debug
        .split_once("provider_name: \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map_or_else(|| "unknown".to_owned(), |(name, _)| name.to_owned())
}

struct Doctor {
    client: Client,
    recorder: Recorder,
    bucket: String,
    prefix: String,
    bound: Duration,
}

struct Listed {
    key: String,
    size: u64,
    etag: String,
}

impl Doctor {
    fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    async fn list_page(
        &self,
        max_keys: i32,
        token: Option<String>,
    ) -> Result<s3::operation::list_objects_v2::ListObjectsV2Output, Failure> {
        bounded(self.bound, async {
            self.client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&self.prefix)
                .encoding_type(EncodingType::Url)
                .max_keys(max_keys)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(Failure::from_sdk)
        })
        .await
    }

    async fn get(&self, key: &str, range: &str, if_match: Option<&str>) -> Result<Got, Failure> {
        bounded(self.bound, async {
            let out = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .range(range)
                .set_if_match(if_match.map(str::to_owned))
                .send()
                .await
                .map_err(Failure::from_sdk)?;
            Ok(Got {
                status: self.recorder.last().status,
                content_range: out.content_range().map(str::to_owned),
                length: out.content_length().map(|l| l.max(0) as u64),
                etag: out.e_tag().map(str::to_owned),
                body: out.body,
            })
        })
        .await
    }

    /// One ranged GET of `range` read to its end within `deadline`; the bytes read.
    async fn fetch(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
        deadline: Instant,
    ) -> Result<u64, String> {
        let wanted = range.end - range.start;
        let mut got = self
            .get(
                key,
                &format!("bytes={}-{}", range.start, range.end - 1),
                None,
            )
            .await
            .map_err(|f| f.text)?;
        let (n, _) = drain(&mut got.body, wanted, deadline).await?;
        Ok(n)
    }
}

pub async fn doctor(args: DoctorArgs) -> Result<()> {
    let Some((bucket, mut prefix)) = parse_url(&args.url) else {
        bail!("{}: expected s3://bucket/prefix/", args.url);
    };
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    let mut config = args.s3.config(bucket);
    // Probes: one attempt each, short timeouts, so an unreachable store fails fast.
    config.max_attempts = 1;
    if args.s3.timeout.is_none() {
        config.operation_timeout = OPERATION_TIMEOUT;
    }
    config.read_timeout = config.read_timeout.min(config.operation_timeout);
    config.connect_timeout = config.connect_timeout.min(config.operation_timeout);
    let findings = check(&config, prefix).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&findings)?);
    } else {
        for f in &findings {
            let status = match f.status {
                Status::Ok => "ok",
                Status::Problem => "problem",
                Status::Note => "note",
            };
            let advice = f
                .advice
                .as_ref()
                .map(|a| format!(" -- fix: {a}"))
                .unwrap_or_default();
            println!("{status:<7} {:<19} {}{advice}", f.check, f.detail);
        }
    }
    let problems = findings
        .iter()
        .filter(|f| f.status == Status::Problem)
        .count();
    if problems > 0 {
        bail!(
            "{problems} problem{} found: serving from this store would break (see above)",
            if problems == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

async fn check(config: &S3Config, prefix: String) -> Vec<Finding> {
    let mut report = Report::default();
    let bound = config.operation_timeout + Duration::from_secs(2);
    let Ok((builder, provider)) = tokio::time::timeout(bound + bound, client_config(config)).await
    else {
        report.problem(
            "credentials",
            "loading the AWS configuration (profile, region) timed out",
            "check ~/.aws/config and the --profile and --region flags",
        );
        return report.finish("the AWS configuration could not be loaded");
    };
    let recorder = Recorder::default();
    let conf = builder.interceptor(recorder.clone()).build();
    let region = conf
        .region()
        .map_or_else(|| "none".to_owned(), ToString::to_string);
    let base = conf.to_builder();
    let mut doctor = Doctor {
        client: Client::from_conf(conf),
        recorder,
        bucket: config.bucket.clone(),
        prefix,
        bound,
    };

    // Credentials: where they come from (never what they are).
    let mut source = "none".to_owned();
    if config.no_sign_request {
        report.note(
            "credentials",
            "unsigned requests (--no-sign-request): no credentials are looked up",
        );
    } else {
        let found = match &provider {
            None => Err("no credentials provider is configured".to_owned()),
            Some(p) => match tokio::time::timeout(bound, p.provide_credentials()).await {
                Err(_) => Err(format!("looking up credentials timed out after {bound:?}")),
                Ok(Err(e)) => Err(format!("no credentials found: {}", DisplayErrorContext(&e))),
                Ok(Ok(creds)) => Ok(creds),
            },
        };
        match found {
            Ok(creds) => {
                let name = provider_name(&format!("{creds:?}"));
                let expiry = creds
                    .expiry()
                    .and_then(|t| DateTime::from(t).fmt(DateTimeFormat::DateTime).ok())
                    .map(|t| format!(", expiring {t}"))
                    .unwrap_or_default();
                source = format!("{name} ({})", describe_provider(&name));
                report.ok("credentials", format!("from {source}{expiry}"));
            }
            Err(e) => report.problem(
                "credentials",
                e,
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, --profile, or an instance or \
                 container role; --no-sign-request for a public bucket",
            ),
        }
    }

    // Listing: reachability, credentials, addressing, paging, key encoding.
    let mut first = doctor.list_page(1, None).await;
    let seen = doctor.recorder.last();
    let uri = seen.uri.clone().unwrap_or_default();
    let virtual_host = host_of(&uri).starts_with(&format!("{}.", doctor.bucket));
    let style = |vh: bool| if vh { "virtual-host" } else { "path-style" };
    clock(&mut report, &doctor.recorder);
    if let Err(failure) = &first
        && virtual_host
        && config.endpoint_url.is_some()
        && !config.force_path_style
    {
        let path_style = Doctor {
            client: Client::from_conf(base.clone().force_path_style(true).build()),
            recorder: doctor.recorder.clone(),
            bucket: doctor.bucket.clone(),
            prefix: doctor.prefix.clone(),
            bound,
        };
        if let Ok(page) = path_style.list_page(1, None).await {
            report.problem(
                "addressing",
                format!(
                    "virtual-host addressing ({}) fails at this endpoint ({}); path-style works",
                    host_of(&uri),
                    failure.text
                ),
                "add --force-path-style (force_path_style = true in the config file)",
            );
            doctor = path_style;
            first = Ok(page);
        }
    }
    let endpoint = endpoint_of(&doctor.recorder.last().uri.unwrap_or(uri.clone()));
    if let Some(tls) = tls_finding(&endpoint, &first) {
        match tls {
            (Status::Problem, detail) => report.problem(
                "tls",
                detail,
                "check the endpoint's certificate, or the system's CA bundle (SSL_CERT_FILE)",
            ),
            (status, detail) => report.add("tls", status, detail, None),
        }
    }
    let page = match first {
        Ok(page) => page,
        Err(failure) => {
            list_failed(&mut report, &failure, &doctor, config, &seen, &source);
            if !report.has("addressing") {
                report.note(
                    "addressing",
                    format!("{} ({endpoint}, region {region})", style(virtual_host)),
                );
            }
            return report.finish("the listing failed");
        }
    };
    if !report.has("addressing") {
        let how = if virtual_host {
            "the bucket in the host name"
        } else {
            "the bucket in the path"
        };
        report.ok(
            "addressing",
            format!(
                "{} ({how}: {endpoint}, region {region})",
                style(virtual_host)
            ),
        );
    }
    if report
        .0
        .iter()
        .any(|f| f.check == "credentials" && f.status == Status::Ok)
    {
        report.ok(
            "credentials",
            format!("from {source}; accepted by the store"),
        );
    }
    let objects = list(&mut report, &doctor, page).await;
    clock(&mut report, &doctor.recorder);
    if !report.has("clock") {
        report.note(
            "clock",
            "the store's answers carry no Date header: skew not checked",
        );
    }
    let Some(objects) = objects else {
        return report.finish("the listing failed");
    };
    if objects.is_empty() {
        let why = format!(
            "no objects under {} (upload an image to check reads)",
            doctor.url()
        );
        return report.finish(&why);
    }
    objects_checks(&mut report, &doctor, &objects).await;
    report.finish("an earlier check failed")
}

fn host_of(uri: &str) -> &str {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or("")
}

/// `scheme://host` of a request, or `(none)` when no request was sent.
fn endpoint_of(uri: &str) -> String {
    match uri.split_once("://") {
        Some((scheme, _)) => format!("{scheme}://{}", host_of(uri)),
        None => "(no request was sent)".to_owned(),
    }
}

fn tls_finding<T>(endpoint: &str, first: &Result<T, Failure>) -> Option<(Status, String)> {
    if endpoint.starts_with("http://") {
        return Some((
            Status::Note,
            format!(
                "{endpoint} is plain http: requests are signed but not encrypted (data and metadata \
                 travel in clear)"
            ),
        ));
    }
    if !endpoint.starts_with("https://") {
        return None;
    }
    match first {
        Ok(_) => Some((
            Status::Ok,
            format!("https: the TLS handshake with {endpoint} succeeded (certificate verified)"),
        )),
        Err(f) => {
            let t = f.text.to_ascii_lowercase();
            if t.contains("certificate")
                || t.contains("tls")
                || t.contains("handshake")
                || t.contains("ssl")
            {
                Some((
                    Status::Problem,
                    format!("TLS with {endpoint} failed: {}", f.text),
                ))
            } else if f.status.is_some() {
                Some((
                    Status::Ok,
                    format!("https: the TLS handshake with {endpoint} succeeded"),
                ))
            } else {
                None
            }
        }
    }
}

/// Compares the last response's `Date` with the local clock.
fn clock(report: &mut Report, recorder: &Recorder) {
    let seen = recorder.last();
    let (Some(date), Some(received)) = (seen.date, seen.received) else {
        return;
    };
    let Ok(theirs) = DateTime::from_str(&date, DateTimeFormat::HttpDate) else {
        report.note(
            "clock",
            format!("the store's Date header {date:?} is not an HTTP date"),
        );
        return;
    };
    let theirs = theirs.as_secs_f64();
    let ours = received
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let skew = theirs - ours;
    let (ahead, secs) = if skew >= 0.0 {
        ("behind", skew)
    } else {
        ("ahead of", -skew)
    };
    let detail = format!("the local clock is {secs:.0}s {ahead} the store's (Date: {date})");
    if secs > MAX_SKEW.as_secs_f64() {
        report.problem(
            "clock",
            detail,
            "synchronise the clock (chrony, systemd-timesyncd): signed requests fail when it is \
             over 15 minutes off",
        );
    } else {
        report.ok("clock", detail);
    }
}

fn list_failed(
    report: &mut Report,
    failure: &Failure,
    doctor: &Doctor,
    config: &S3Config,
    seen: &Seen,
    source: &str,
) {
    let what = format!("cannot list {}: {}", doctor.url(), failure.text);
    if failure.code == "RequestTimeTooSkewed" {
        report.problem(
            "clock",
            format!("the store refused the request's time: {}", failure.text),
            "synchronise the clock (chrony, systemd-timesyncd)",
        );
    }
    if failure.credentials_refused() && !config.no_sign_request {
        report.problem(
            "credentials",
            format!(
                "the store refused the credentials from {source}: {}",
                failure.text
            ),
            "check the access key and secret (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or \
             --profile) and that the key may read the bucket",
        );
        report.problem("list", what, "see credentials");
    } else if failure.credentials_refused() {
        report.problem(
            "list",
            what,
            "the bucket does not allow anonymous listing: drop --no-sign-request and use credentials",
        );
    } else if failure.code == "NoSuchBucket" {
        report.problem(
            "list",
            format!("bucket {} does not exist ({})", doctor.bucket, failure.text),
            "check the bucket name, --endpoint-url and --region",
        );
    } else if failure.wrong_region() {
        let region = seen
            .bucket_region
            .as_ref()
            .map_or_else(|| "the bucket's region".to_owned(), |r| r.clone());
        report.problem("list", what, format!("use --region {region}"));
    } else if failure.unreachable {
        let endpoint = config
            .endpoint_url
            .clone()
            .unwrap_or_else(|| endpoint_of(seen.uri.as_deref().unwrap_or("")));
        report.problem(
            "list",
            format!("cannot reach {endpoint}: {}", failure.text),
            "check --endpoint-url (scheme, host and port), the network and any firewall or proxy",
        );
    } else {
        report.problem(
            "list",
            what,
            "check --endpoint-url, --region and --force-path-style",
        );
    }
}

/// Paging and key encoding from the first page (of one key), then the listing (bounded):
/// `None` if a later page failed.
async fn list(
    report: &mut Report,
    doctor: &Doctor,
    first: s3::operation::list_objects_v2::ListObjectsV2Output,
) -> Option<Vec<Listed>> {
    let keys = |page: &s3::operation::list_objects_v2::ListObjectsV2Output| -> Vec<String> {
        page.contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect()
    };
    let page1 = keys(&first);
    let truncated = first.is_truncated().unwrap_or(false);
    match (page1.len(), truncated, first.next_continuation_token()) {
        (0, _, _) => report.note(
            "list-paging",
            format!("no objects under {}: paging not exercised", doctor.url()),
        ),
        (1, false, _) => report.note(
            "list-paging",
            "one object under the prefix: paging not exercised",
        ),
        (n, false, _) => report.note(
            "list-paging",
            format!("the store ignored max-keys=1 ({n} keys in one page): harmless"),
        ),
        (_, true, None) => report.problem(
            "list-paging",
            "a truncated page came without a continuation token: listings would stop at the \
             first page",
            "use a store that implements ListObjectsV2 paging",
        ),
        (_, true, Some(token)) => match doctor.list_page(1, Some(token.to_owned())).await {
            Err(f) => report.problem(
                "list-paging",
                format!("the second page failed: {}", f.text),
                "use a store that implements ListObjectsV2 continuation tokens",
            ),
            Ok(page) => {
                let page2 = keys(&page);
                match page2.first() {
                    Some(k) if *k > page1[0] => report.ok(
                        "list-paging",
                        "pages follow (max-keys=1, then the continuation token)",
                    ),
                    Some(k) => report.problem(
                        "list-paging",
                        format!(
                            "the second page starts at {k:?}, not after {:?}: listings would \
                             repeat or loop",
                            page1[0]
                        ),
                        "use a store that implements ListObjectsV2 continuation tokens",
                    ),
                    None => report.problem(
                        "list-paging",
                        "the page after the continuation token is empty although the first said \
                         there was more",
                        "use a store that implements ListObjectsV2 continuation tokens",
                    ),
                }
            }
        },
    }
    let encoded = first.encoding_type() == Some(&EncodingType::Url);
    let awkward = page1.iter().any(|k| k.contains('%') || k.contains('+'));
    match (encoded, awkward) {
        (true, _) => report.ok("list-encoding", "keys come URL-encoded (encoding-type=url)"),
        (false, true) => report.problem(
            "list-encoding",
            "the store ignored encoding-type=url and keys hold '%' or '+': they would be misread",
            "rename the keys without '%' and '+', or use a store that implements encoding-type=url",
        ),
        (false, false) => report.note(
            "list-encoding",
            "the store did not say it URL-encoded the keys (encoding-type=url): keys with '%' or \
             '+' would be misread",
        ),
    }

    // The listing itself, at most a few pages.
    let decode = |k: &str| {
        if encoded {
            url_decode(k)
        } else {
            Some(k.to_owned())
        }
    };
    let mut out = Vec::new();
    let mut token = None;
    let mut pages = 0;
    loop {
        let page = match doctor.list_page(1000, token).await {
            Ok(page) => page,
            Err(f) => {
                report.problem(
                    "list",
                    format!("listing {} failed: {}", doctor.url(), f.text),
                    "check the store's health and the key's permissions",
                );
                return None;
            }
        };
        pages += 1;
        for o in page.contents() {
            if let (Some(key), Some(etag)) = (o.key().and_then(decode), o.e_tag()) {
                out.push(Listed {
                    key,
                    size: o.size().unwrap_or(0).max(0) as u64,
                    etag: etag.to_owned(),
                });
            }
        }
        token = page.next_continuation_token().map(str::to_owned);
        if !page.is_truncated().unwrap_or(false) || token.is_none() || pages == 5 {
            break;
        }
    }
    let images = out.iter().filter(|o| o.key.ends_with(".squash")).count();
    let more = if token.is_some() {
        " (first 5 pages)"
    } else {
        ""
    };
    report.ok(
        "list",
        format!(
            "{} object{}{more}, {images} of them .squash images, under {}",
            out.len(),
            if out.len() == 1 { "" } else { "s" },
            doctor.url()
        ),
    );
    Some(out)
}

async fn objects_checks(report: &mut Report, doctor: &Doctor, objects: &[Listed]) {
    let object = objects
        .iter()
        .filter(|o| o.size > 0)
        .max_by_key(|o| (o.key.ends_with(".squash"), o.size))
        .unwrap_or(&objects[0]);
    let key = object.key.as_str();

    // HEAD.
    let head = bounded(doctor.bound, async {
        doctor
            .client
            .head_object()
            .bucket(&doctor.bucket)
            .key(key)
            .send()
            .await
            .map_err(Failure::from_sdk)
    })
    .await;
    let size = match head {
        Err(f) => {
            report.problem(
                "head",
                format!("HEAD {key:?} failed: {}", f.text),
                "the key needs s3:GetObject on the bucket",
            );
            return;
        }
        Ok(out) => {
            let size = out.content_length().unwrap_or(-1);
            match out.e_tag() {
                None => report.problem(
                    "head",
                    format!("HEAD {key:?} answered no ETag"),
                    "use a store that gives ETags: the daemon pins every read to one",
                ),
                Some(etag) if bare(etag) != bare(&object.etag) => report.problem(
                    "head",
                    format!(
                        "HEAD {key:?} answered ETag {etag}, the listing {}",
                        object.etag
                    ),
                    "use a store whose HEAD and listing agree (or the object was just replaced: \
                     run again)",
                ),
                Some(_) if size != object.size as i64 => report.problem(
                    "head",
                    format!(
                        "HEAD {key:?} answered {size} bytes, the listing {}",
                        object.size
                    ),
                    "use a store whose HEAD and listing agree (or the object was just replaced: \
                     run again)",
                ),
                Some(etag) => report.ok("head", format!("{key:?}: {size} bytes, ETag {etag}")),
            }
            object.size
        }
    };
    if size == 0 {
        let why = format!("{key:?} is empty: no range to read");
        for c in [
            "range",
            "suffix-range",
            "if-match",
            "latency",
            "throughput",
            "throughput-parallel",
        ] {
            report.note(c, format!("skipped: {why}"));
        }
        return;
    }

    // A ranged GET, pinned with the right ETag, as the daemon reads.
    let n = if size >= 2 { SMALL.min(size / 2) } else { size };
    let range_ok = range_check(report, doctor, object, n).await;

    // A suffix range.
    let tail = SMALL.min(size);
    match doctor.get(key, &format!("bytes=-{tail}"), None).await {
        Err(f) => report.note(
            "suffix-range",
            format!(
                "bytes=-{tail} failed: {} (the daemon does not use suffix ranges)",
                f.text
            ),
        ),
        Ok(mut got) => {
            let wanted = format!("bytes {}-{}/{size}", size - tail, size - 1);
            let deadline = Instant::now() + doctor.bound;
            let read = if got.length == Some(tail) {
                drain(&mut got.body, tail, deadline)
                    .await
                    .ok()
                    .map(|(r, _)| r)
            } else {
                None
            };
            if got.content_range.as_deref() == Some(wanted.as_str()) && read == Some(tail) {
                report.ok("suffix-range", format!("bytes=-{tail}: 206, {wanted}"));
            } else {
                report.note(
                    "suffix-range",
                    format!(
                        "bytes=-{tail} answered HTTP {}, Content-Range {}, {} bytes, not \
                         {wanted} (the daemon does not use suffix ranges)",
                        got.status.unwrap_or(0),
                        got.content_range.as_deref().unwrap_or("none"),
                        got.length.unwrap_or(0)
                    ),
                );
            }
        }
    }

    // If-Match with a wrong ETag must answer 412.
    let wrong = "\"autosquash-doctor-not-the-etag\"";
    match doctor
        .get(key, &format!("bytes=0-{}", n - 1), Some(wrong))
        .await
    {
        Err(f) if f.status == Some(412) => report.ok(
            "if-match",
            "a ranged GET with a wrong If-Match answered 412 Precondition Failed",
        ),
        Err(f) if f.unreachable => report.problem(
            "if-match",
            format!("the ranged GET with a wrong If-Match failed: {}", f.text),
            "check the store's health and run again",
        ),
        Err(f) => report.problem(
            "if-match",
            format!(
                "a ranged GET with a wrong If-Match answered {}, not 412: the store is not \
                 S3-compliant",
                f.text
            ),
            "use a store that honours If-Match; the daemon's own ETag/Content-Range check \
             still keeps a replaced image's new bytes out",
        ),
        Ok(got) => report.problem(
            "if-match",
            format!(
                "the store ignores If-Match: a ranged GET with a wrong ETag answered HTTP {} \
                 instead of 412, so replaced images are not refused by the store (the daemon's \
                 own ETag/Content-Range check protects reads); the store is not S3-compliant",
                got.status.unwrap_or(0)
            ),
            "use a store that honours If-Match (S3, Garage, MinIO, Ceph RGW); until then, \
             replace images under new names rather than in place",
        ),
    }

    if !range_ok {
        for c in ["latency", "throughput", "throughput-parallel"] {
            report.note(c, "skipped: ranged GETs do not work");
        }
        return;
    }
    performance(report, doctor, objects, object, n).await;
}

/// `bytes=0-(n-1)` with `If-Match` set to the listed ETag: a 206 with the right Content-Range,
/// length and ETag. False if ranges cannot be served.
async fn range_check(report: &mut Report, doctor: &Doctor, object: &Listed, n: u64) -> bool {
    let (key, size) = (object.key.as_str(), object.size);
    let asked = format!("bytes=0-{}", n - 1);
    let fix = "use a store that honours Range: the daemon reads images in ranges and cannot \
               serve from this one";
    let mut got = match doctor.get(key, &asked, Some(&object.etag)).await {
        Ok(got) => got,
        Err(f) if f.status == Some(412) => {
            report.problem(
                "range",
                format!(
                    "{asked} with If-Match {} (the listed ETag) answered 412: every read \
                     would fail",
                    object.etag
                ),
                "use a store whose If-Match accepts the ETags it lists",
            );
            return false;
        }
        Err(f) => {
            report.problem(
                "range",
                format!("{asked} of {key:?} failed: {}", f.text),
                fix,
            );
            return false;
        }
    };
    let wanted = format!("bytes 0-{}/{size}", n - 1);
    if got.content_range.is_none() && got.length == Some(size) && size > n {
        report.problem(
            "range",
            format!(
                "the store ignores Range: {asked} answered HTTP {} with the whole object ({size} \
                 bytes)",
                got.status.unwrap_or(200)
            ),
            fix,
        );
        return false;
    }
    if got.content_range.as_deref() != Some(wanted.as_str()) {
        report.problem(
            "range",
            format!(
                "{asked} answered HTTP {}, Content-Range {}, not {wanted}",
                got.status.unwrap_or(0),
                got.content_range.as_deref().unwrap_or("none")
            ),
            fix,
        );
        return false;
    }
    if let Some(etag) = &got.etag
        && bare(etag) != bare(&object.etag)
    {
        report.problem(
            "range",
            format!("{asked} answered ETag {etag}, the listing {}", object.etag),
            "use a store whose GET and listing ETags agree (or the object was just replaced: run \
             again)",
        );
        return false;
    }
    let deadline = Instant::now() + doctor.bound;
    match drain(&mut got.body, n, deadline).await {
        Ok((read, true)) if read == n => {
            report.ok(
                "range",
                format!(
                    "{asked} answered HTTP {}, {wanted}, {n} bytes",
                    got.status.unwrap_or(206)
                ),
            );
            true
        }
        Ok((read, _)) => {
            report.problem(
                "range",
                format!("{asked} answered {read} bytes, not {n}"),
                fix,
            );
            false
        }
        Err(e) => {
            report.problem(
                "range",
                format!("{asked}: {e}"),
                "check the store's health and run again",
            );
            false
        }
    }
}

async fn performance(
    report: &mut Report,
    doctor: &Doctor,
    objects: &[Listed],
    object: &Listed,
    n: u64,
) {
    // Latency: the median of a few small ranged GETs.
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        match doctor
            .fetch(&object.key, 0..n, started + doctor.bound)
            .await
        {
            Ok(_) => times.push(started.elapsed()),
            Err(e) => {
                report.problem(
                    "latency",
                    format!("a small ranged GET failed: {e}"),
                    "check the store's health and run again",
                );
                return;
            }
        }
    }
    times.sort();
    report.ok(
        "latency",
        format!(
            "median {:.1} ms of {} GETs of {n} bytes (min {:.1}, max {:.1})",
            times[times.len() / 2].as_secs_f64() * 1e3,
            times.len(),
            times[0].as_secs_f64() * 1e3,
            times[times.len() - 1].as_secs_f64() * 1e3
        ),
    );

    // Throughput: one GET of up to 8 MiB of the largest object, then 8 in parallel.
    let largest = objects.iter().max_by_key(|o| o.size).unwrap_or(object);
    let size = largest.size;
    let one = CHUNK.min(size);
    let started = Instant::now();
    match doctor
        .fetch(&largest.key, 0..one, started + THROUGHPUT_TIME)
        .await
    {
        Ok(read) => {
            let cut = if read < one {
                " (stopped at the time bound)"
            } else {
                ""
            };
            report.ok(
                "throughput",
                format!(
                    "{} in one ranged GET of {read} bytes of {:?}{cut}",
                    mib_per_s(read, started.elapsed()),
                    largest.key
                ),
            );
        }
        Err(e) => {
            report.problem(
                "throughput",
                format!("a ranged GET failed: {e}"),
                "check the store's health and run again",
            );
            return;
        }
    }
    let each = CHUNK.min(size.div_ceil(PARALLEL)).max(1);
    let started = Instant::now();
    let deadline = started + THROUGHPUT_TIME;
    let gets = (0..PARALLEL).map(|i| {
        let start = (i * each) % (size - each + 1);
        doctor.fetch(&largest.key, start..start + each, deadline)
    });
    let results = futures::future::join_all(gets).await;
    let elapsed = started.elapsed();
    let mut total = 0;
    for r in results {
        match r {
            Ok(read) => total += read,
            Err(e) => {
                report.problem(
                    "throughput-parallel",
                    format!("one of {PARALLEL} parallel ranged GETs failed: {e}"),
                    "check the store's limits on concurrent requests",
                );
                return;
            }
        }
    }
    let cut = if total < each * PARALLEL {
        " (stopped at the time bound)"
    } else {
        ""
    };
    report.ok(
        "throughput-parallel",
        format!(
            "{} in {PARALLEL} parallel ranged GETs of {each} bytes ({total} bytes){cut}",
            mib_per_s(total, elapsed)
        ),
    );
}
