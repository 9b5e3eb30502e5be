//! The one HTTP layer: timeouts, a body size cap, no redirects, error classes, and bounded,
//! jittered retries.
//!
//! Every request goes through [`Http::send`], which gives a connect timeout, a whole-request
//! timeout and a cap on the body read. Redirects are never followed: a 3xx is an error (a
//! redirect could downgrade to plain http or leave the host we pinned). [`retry`] wraps an
//! operation with exponential backoff, full jitter, `Retry-After` and an overall deadline, and
//! retries only errors that can succeed later (connection failures, timeouts, 429, 5xx).
//!
//! URLs in errors are the caller's *shown* form ([`Target::shown`]), so a URL carrying a token in
//! its path never reaches a message.

use crate::model::cause::Cause;
use crate::model::secret::Secret;
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, RETRY_AFTER};
use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

/// Per-request limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout, body included.
    pub request_timeout: Duration,
    /// Largest body read, in bytes.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            max_body: 1024 * 1024,
        }
    }
}

/// A URL with the form that may be shown in logs and errors.
#[derive(Clone, Debug)]
pub struct Target {
    /// The real URL.
    pub url: url::Url,
    /// What to print instead (secrets replaced).
    pub shown: String,
}

impl Target {
    /// A URL with nothing secret in it.
    pub fn public(url: url::Url) -> Target {
        let shown = url.to_string();
        Target { url, shown }
    }
}

/// An HTTP failure. Messages use the shown URL and never include response bodies unscrubbed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// TCP connection failed (refused, reset, unreachable, DNS).
    #[error("cannot connect to {url}: {cause}: {detail}")]
    Connect {
        /// Shown URL.
        url: String,
        /// Its class.
        cause: Cause,
        /// The OS's reason.
        detail: String,
    },
    /// No connection or no answer within the timeout.
    #[error("{} {url} within {timeout:?}", if *connecting { "could not connect to" } else { "no answer from" })]
    Timeout {
        /// Shown URL.
        url: String,
        /// The timeout that expired.
        timeout: Duration,
        /// Whether the TCP connect itself timed out.
        connecting: bool,
    },
    /// An attempt of a retried call was cut short: its deadline came ([`retry`]).
    #[error("{what}: no answer within the {left:?} left before its deadline")]
    Deadline {
        /// The call.
        what: String,
        /// The time the attempt was given.
        left: Duration,
    },
    /// The TLS handshake failed: an untrusted or mismatched certificate, usually.
    #[error("TLS handshake with {url} failed: {detail}")]
    Tls {
        /// Shown URL.
        url: String,
        /// rustls' reason.
        detail: String,
    },
    /// The server answered with an error status.
    #[error("{url} answered HTTP {status}{}", detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Status {
        /// Shown URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The server's message (a Kubernetes Status message, or the start of the body).
        detail: Option<String>,
        /// The server's `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// The server tried to redirect; redirects are refused.
    #[error("{url} answered with a redirect to {location:?}; redirects are refused (a redirect could downgrade to plain http or leave the trusted host): use the final URL directly")]
    Redirect {
        /// Shown URL.
        url: String,
        /// Where it pointed.
        location: String,
    },
    /// The body exceeded the size cap.
    #[error("the answer from {url} is larger than the {limit}-byte limit")]
    TooLarge {
        /// Shown URL.
        url: String,
        /// The cap.
        limit: usize,
    },
    /// Any other client-side failure.
    #[error("request to {url} failed: {detail}")]
    Other {
        /// Shown URL.
        url: String,
        /// What happened.
        detail: String,
    },
}

impl HttpError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            HttpError::Connect { .. } | HttpError::Timeout { .. } | HttpError::Deadline { .. } => {
                true
            }
            // As kube-rs and client-go: overload and gateway failures heal, 501 and 505 do
            // not; 500 often is etcd timing out (`etcdserver: request timed out`).
            HttpError::Status { status, .. } => matches!(status, 429 | 500 | 502 | 503 | 504),
            _ => false,
        }
    }

    /// The delay the server asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            HttpError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The failure's class.
    pub fn cause(&self) -> Cause {
        match self {
            HttpError::Connect { cause, .. } => *cause,
            HttpError::Timeout {
                connecting: true, ..
            } => Cause::TcpTimeout,
            HttpError::Timeout { .. } | HttpError::Deadline { .. } => Cause::NoAnswer,
            HttpError::Tls { .. } => Cause::Tls,
            HttpError::Status { status, .. } => Cause::of_status(*status),
            _ => Cause::Other,
        }
    }

    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A successful (2xx) answer with its body read in full.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

/// A server's clock as the `Date` of one answer gave it, and when that answer was read: later
/// checks compare the local clock with the server's as it is then, not as it was then (a join
/// may wait a minute on a loaded server between reading cluster-info and its clock check).
#[derive(Clone, Copy, Debug)]
pub struct ServerClock {
    date: SystemTime,
    read: Instant,
}

impl ServerClock {
    /// The server's clock `date` as read just now.
    pub fn read_now(date: SystemTime) -> ServerClock {
        ServerClock {
            date,
            read: Instant::now(),
        }
    }

    /// The server's clock now: its `Date`, plus the time since that answer was read.
    pub fn now(&self) -> SystemTime {
        self.date + self.read.elapsed()
    }
}

impl Reply {
    /// The server's clock when it answered (its `Date` header), if it sent a valid one.
    pub fn date(&self) -> Option<SystemTime> {
        let text = self.headers.get(reqwest::header::DATE)?.to_str().ok()?;
        httpdate::parse_http_date(text).ok()
    }

    /// The server's clock, as its `Date` says and from the moment this is called (right after
    /// the answer came).
    pub fn clock(&self) -> Option<ServerClock> {
        self.date().map(ServerClock::read_now)
    }

    /// The media type of the body, lowercased, without parameters.
    pub fn content_type(&self) -> Option<String> {
        let ct = self
            .headers
            .get(reqwest::header::CONTENT_TYPE)?
            .to_str()
            .ok()?;
        Some(ct.split(';').next()?.trim().to_ascii_lowercase())
    }
}

/// What to send.
#[derive(Debug)]
pub struct Request<'a> {
    /// Method.
    pub method: reqwest::Method,
    /// Where.
    pub target: &'a Target,
    /// Bearer token, sent as a sensitive header.
    pub bearer: Option<&'a Secret>,
    /// Accept header.
    pub accept: &'a str,
    /// JSON body.
    pub json: Option<Vec<u8>>,
    /// Content type of the body.
    pub content_type: &'static str,
    /// Text scrubbed from any server message copied into an error.
    pub scrub: Vec<&'a Secret>,
    /// The `X-Node-Attach-Request` header: one id for every attempt of one logical request,
    /// so a server can answer a retry as it answered the attempt whose answer was lost.
    pub request_id: Option<&'a str>,
}

/// The header naming a logical request across its attempts.
pub const REQUEST_ID_HEADER: &str = "x-node-attach-request";

impl<'a> Request<'a> {
    /// A GET accepting JSON.
    pub fn get(target: &'a Target) -> Request<'a> {
        Request {
            method: reqwest::Method::GET,
            target,
            bearer: None,
            accept: "application/json",
            json: None,
            content_type: "application/json",
            scrub: Vec::new(),
            request_id: None,
        }
    }
}

/// TCP keepalive on every connection: a watch that waits minutes for its event (a CSR's
/// signature, a Node's registration) sends nothing, and a NAT or load balancer that drops the
/// flow silently would leave it waiting to its deadline. Probed after 15 s idle (reqwest's
/// default too), then every 5 s, a peer gone is noticed within 30 s instead of the kernel's
/// default 75 s × 9 probes (`TCP_USER_TIMEOUT` bounds unacknowledged data the same way), and
/// the watch is opened again from its last resourceVersion. The probes also keep idle-timeouts
/// of load balancers from firing. client-go keeps its dialer's connections alive too (30 s),
/// and checks HTTP/2 ones with pings.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 3;

/// An HTTP client with fixed TLS configuration and limits.
#[derive(Clone, Debug)]
pub struct Http {
    client: reqwest::Client,
    limits: Limits,
}

impl Http {
    /// A client using `tls` and `limits`. Redirects are disabled.
    pub fn new(tls: rustls::ClientConfig, limits: Limits) -> Result<Http, HttpError> {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(limits.connect_timeout)
            .timeout(limits.request_timeout)
            .tcp_keepalive(KEEPALIVE_IDLE)
            .tcp_keepalive_interval(KEEPALIVE_INTERVAL)
            .tcp_keepalive_retries(KEEPALIVE_PROBES)
            .tcp_user_timeout(KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_PROBES)
            .user_agent(concat!("node-attach/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HttpError::Other {
                url: String::new(),
                detail: e.without_url().to_string(),
            })?;
        Ok(Http { client, limits })
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Sends one request and reads the whole body (up to the cap). Non-2xx answers are errors.
    pub async fn send(&self, req: Request<'_>) -> Result<Reply, HttpError> {
        let shown = req.target.shown.clone();
        let mut builder = self
            .client
            .request(req.method.clone(), req.target.url.clone())
            .header(reqwest::header::ACCEPT, req.accept);
        if let Some(token) = req.bearer {
            builder = builder.header(AUTHORIZATION, bearer_header(token, &shown)?);
        }
        if let Some(id) = req.request_id {
            builder = builder.header(REQUEST_ID_HEADER, id);
        }
        if let Some(body) = req.json.clone() {
            builder = builder
                .header(reqwest::header::CONTENT_TYPE, req.content_type)
                .body(body);
        }
        let mut response = builder.send().await.map_err(|e| self.classify(&shown, e))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        if (300..400).contains(&status) {
            return Err(redirect(&headers, &req, shown));
        }
        let body = self.read_body(&mut response, &headers, &shown).await?;
        if !(200..300).contains(&status) {
            let detail = server_message(&body, &req.scrub);
            return Err(HttpError::Status {
                url: shown,
                status,
                detail,
                retry_after: parse_retry_after(&headers, SystemTime::now()),
            });
        }
        Ok(Reply {
            status,
            headers,
            body: Bytes::from(body),
        })
    }

    /// The whole body, refused past the cap (by Content-Length first, then as it arrives).
    async fn read_body(
        &self,
        response: &mut reqwest::Response,
        headers: &HeaderMap,
        shown: &str,
    ) -> Result<Vec<u8>, HttpError> {
        let too_large = || HttpError::TooLarge {
            url: shown.to_owned(),
            limit: self.limits.max_body,
        };
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.limits.max_body as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.classify(shown, e))?
        {
            if body.len() + chunk.len() > self.limits.max_body {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Opens a streaming GET (a watch): returns the response once headers arrived; the caller
    /// reads chunks. `timeout` bounds the whole stream.
    pub async fn open_stream(
        &self,
        target: &Target,
        bearer: Option<&Secret>,
        timeout: Duration,
    ) -> Result<reqwest::Response, HttpError> {
        let mut builder = self
            .client
            .get(target.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(timeout);
        if let Some(token) = bearer {
            builder = builder.header(AUTHORIZATION, bearer_header(token, &target.shown)?);
        }
        let response = builder
            .send()
            .await
            .map_err(|e| self.classify(&target.shown, e))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(HttpError::Status {
                url: target.shown.clone(),
                status,
                detail: None,
                retry_after: None,
            });
        }
        Ok(response)
    }

    /// Reads the next chunk of a stream, with errors classified like [`Http::send`]'s.
    pub async fn next_chunk(
        &self,
        shown: &str,
        response: &mut reqwest::Response,
    ) -> Result<Option<Bytes>, HttpError> {
        response.chunk().await.map_err(|e| self.classify(shown, e))
    }

    fn classify(&self, shown: &str, err: reqwest::Error) -> HttpError {
        let url = shown.to_owned();
        if let Some(detail) = tls_cause(&err) {
            return HttpError::Tls { url, detail };
        }
        if err.is_timeout() {
            let connecting = err.is_connect();
            let limits = &self.limits;
            let timeout = if connecting {
                limits.connect_timeout
            } else {
                limits.request_timeout
            };
            return HttpError::Timeout {
                url,
                timeout,
                connecting,
            };
        }
        let err = err.without_url();
        let detail = root_cause(&err);
        if err.is_connect() {
            let cause = Cause::of_connect_error(&err);
            return HttpError::Connect { url, cause, detail };
        }
        if err.is_body() || err.is_request() {
            // A connection dropped mid-answer: worth another try.
            let cause = match Cause::of_connect_error(&err) {
                Cause::Other => Cause::TcpReset,
                known => known,
            };
            return HttpError::Connect { url, cause, detail };
        }
        HttpError::Other { url, detail }
    }
}

/// `Authorization: Bearer …`, marked sensitive so it is never logged.
fn bearer_header(token: &Secret, shown: &str) -> Result<HeaderValue, HttpError> {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
        HttpError::Other {
            url: shown.to_owned(),
            detail: "the bearer token is not a valid header value".into(),
        }
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// A 3xx answer as an error naming where it pointed (scrubbed); redirects are never followed.
fn redirect(headers: &HeaderMap, req: &Request<'_>, shown: String) -> HttpError {
    let location = headers
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Scrubbed before it is shortened: a secret cut in two would no longer match.
    let location = scrub_all(location, &req.scrub)
        .chars()
        .take(200)
        .collect::<String>();
    HttpError::Redirect {
        url: shown,
        location,
    }
}

/// `text` with every occurrence of each secret replaced.
fn scrub_all(text: &str, scrub: &[&Secret]) -> String {
    scrub.iter().fold(text.to_owned(), |t, s| s.scrub(&t))
}

/// The message of a Kubernetes `Status` body, or the start of a text body, with `scrub`'s
/// secrets replaced before it is shortened (a secret cut in two would no longer match).
fn server_message(body: &[u8], scrub: &[&Secret]) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(m) = v.get("message").and_then(|m| m.as_str()) {
            return Some(scrub_all(m, scrub).chars().take(300).collect());
        }
    }
    let text = scrub_all(&String::from_utf8_lossy(body), scrub);
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    (!text.trim().is_empty()).then(|| text.trim().to_owned())
}

fn tls_cause(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    // io::Error::source() skips the error it wraps, and hyper-rustls wraps rustls' error in an
    // io::Error inside another io::Error: look inside each io::Error explicitly.
    fn find(e: &(dyn std::error::Error + 'static), depth: u8) -> Option<String> {
        if depth > 16 {
            return None;
        }
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(found) = find(inner, depth + 1) {
                return Some(found);
            }
        }
        e.source().and_then(|s| find(s, depth + 1))
    }
    find(err, 0)
}

fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut last = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        last = e.to_string();
        source = e.source();
    }
    last
}

/// `Retry-After` as a delay: delta-seconds or an HTTP date.
pub fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// How long to keep trying, and how fast.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// First backoff.
    pub initial_backoff: Duration,
    /// Largest backoff.
    pub max_backoff: Duration,
    /// Most attempts in all (including the first).
    pub max_attempts: u32,
    /// Give up once this much time has passed since the first attempt.
    pub deadline: Duration,
}

impl RetryPolicy {
    /// A policy bounded by `deadline`, backing off from 250 ms to `max_backoff`.
    pub fn until(deadline: Duration, max_backoff: Duration) -> RetryPolicy {
        RetryPolicy {
            initial_backoff: Duration::from_millis(250),
            max_backoff,
            max_attempts: 1000,
            deadline,
        }
    }
}

/// A retried call's first failure: its class, and until when it is retried.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Stall {
    /// The call (`reading cluster-info from 10.0.0.10:6443`).
    pub what: String,
    /// The failure's class.
    pub cause: Cause,
    /// The failure.
    pub message: String,
    /// When the retries stop (RFC 3339).
    pub retry_until: String,
}

tokio::task_local! {
    /// Where a retried call's first failure is reported, while a join runs ([`reporting_stalls`]).
    static STALLS: tokio::sync::mpsc::UnboundedSender<Stall>;
}

/// Runs `work` with every retried call's first failure sent to `sink` as it happens, so the
/// cause of a stuck join is known (and reported) in seconds, not when its deadline passes.
pub async fn reporting_stalls<F: Future>(
    sink: tokio::sync::mpsc::UnboundedSender<Stall>,
    work: F,
) -> F::Output {
    STALLS.scope(sink, work).await
}

/// Says at once why a call failed and how long it is retried: on stderr, and to the
/// [`reporting_stalls`] sink if one listens.
fn first_failure(what: &str, err: &(impl Retryable + std::fmt::Display), remaining: Duration) {
    let cause = err.cause();
    let until = time::OffsetDateTime::now_utc() + remaining;
    let until = until
        .replace_nanosecond(0)
        .unwrap_or(until)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    tracing::warn!(cause = ?cause, retry_until = %until, "{what}: {cause}: {err}; retrying until {until} ({}s left)", remaining.as_secs());
    let stall = Stall {
        what: what.to_owned(),
        cause,
        message: err.to_string(),
        retry_until: until,
    };
    let _ = STALLS.try_with(|sink| sink.send(stall));
}

/// What made [`retry`] stop.
#[derive(Debug, thiserror::Error)]
pub enum RetryError<E> {
    /// The last error was not worth retrying.
    #[error(transparent)]
    Fatal(E),
    /// Transient errors until the deadline or attempt limit.
    #[error("gave up after {attempts} attempts over {elapsed:?}: {last}")]
    Exhausted {
        /// How many attempts were made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last error.
        last: E,
    },
}

impl<E> RetryError<E> {
    /// The underlying error, whichever way the retries ended.
    pub fn into_inner(self) -> E {
        match self {
            RetryError::Fatal(e) | RetryError::Exhausted { last: e, .. } => e,
        }
    }

    /// The underlying error.
    pub fn inner(&self) -> &E {
        match self {
            RetryError::Fatal(e) | RetryError::Exhausted { last: e, .. } => e,
        }
    }
}

/// An error that knows whether a retry may help.
pub trait Retryable {
    /// Whether trying again later may succeed.
    fn is_transient(&self) -> bool;
    /// The delay the other side asked for, if any.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
    /// The failure's class, for the first-failure report.
    fn cause(&self) -> Cause {
        Cause::Other
    }
    /// The error of an attempt of `what` cut short by the deadline, after `left`.
    fn out_of_time(what: &str, left: Duration) -> Self
    where
        Self: Sized;
}

impl Retryable for HttpError {
    fn is_transient(&self) -> bool {
        HttpError::is_transient(self)
    }
    fn retry_after(&self) -> Option<Duration> {
        HttpError::retry_after(self)
    }
    fn cause(&self) -> Cause {
        HttpError::cause(self)
    }
    fn out_of_time(what: &str, left: Duration) -> Self {
        HttpError::Deadline {
            what: what.to_owned(),
            left,
        }
    }
}

/// Runs `op` until it succeeds, fails fatally, or the policy runs out. Backoff doubles from
/// `initial_backoff` up to `max_backoff`, each sleep drawn uniformly from [backoff/2, backoff]
/// (so many nodes booting at once spread out), and never past the deadline. A `Retry-After` is
/// the least wait, with the jittered backoff on top: a thousand nodes an overloaded API server
/// told "1 second" (its 429) would otherwise all come back within the same second and most be
/// refused again (the real 1.20 API server at 1000 joins: 4.5 such answers per join).
/// Each attempt is given only the time left before the deadline (an attempt started just
/// before it would otherwise run its connect and request timeouts past it), except under a
/// zero deadline, which means one attempt bounded by its own timeouts.
pub async fn retry<T, E, F, Fut>(
    policy: RetryPolicy,
    what: &str,
    mut op: F,
) -> Result<T, RetryError<E>>
where
    E: Retryable + std::fmt::Display,
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    let mut backoff = policy.initial_backoff;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let outcome = match policy.deadline.is_zero() {
            true => op(attempt).await,
            false => {
                let left = policy.deadline.saturating_sub(start.elapsed());
                tokio::time::timeout(left, op(attempt))
                    .await
                    .unwrap_or_else(|_| Err(E::out_of_time(what, left)))
            }
        };
        let err = match outcome {
            Ok(v) => return Ok(v),
            Err(e) if !e.is_transient() => return Err(RetryError::Fatal(e)),
            Err(e) => e,
        };
        let elapsed = start.elapsed();
        let remaining = policy.deadline.saturating_sub(elapsed);
        // Saturating: a `Retry-After` near u64::MAX seconds (a broken or hostile server, or
        // anyone answering the unverified first read of cluster-info) would overflow.
        let sleep = err
            .retry_after()
            .unwrap_or_default()
            .saturating_add(jitter(backoff));
        if attempt >= policy.max_attempts || sleep >= remaining {
            return Err(RetryError::Exhausted {
                attempts: attempt,
                elapsed,
                last: err,
            });
        }
        if attempt == 1 {
            first_failure(what, &err, remaining);
        }
        tracing::info!(
            attempt,
            retry_in_ms = sleep.as_millis() as u64,
            "{what}: {err}; retrying"
        );
        tokio::time::sleep(sleep).await;
        backoff = (backoff * 2).min(policy.max_backoff);
    }
}

/// How long to wait before a watch is opened again. A watch that lasted (the server ended it
/// at its `timeoutSeconds`, a proxy at its idle limit) is reopened after a short jittered pause,
/// so that nodes whose watches a server closes at one instant do not all come back at once; one
/// that ended quickly (refused, reset, closed at once) backs off, doubling from 200 ms to 5 s,
/// jittered, so that a server or proxy that closes every watch is never asked in a loop.
#[derive(Debug)]
pub struct Rewatch {
    backoff: Duration,
}

impl Default for Rewatch {
    fn default() -> Rewatch {
        Rewatch {
            backoff: Rewatch::FIRST,
        }
    }
}

impl Rewatch {
    const FIRST: Duration = Duration::from_millis(200);
    const MOST: Duration = Duration::from_secs(5);
    /// A watch that lasted this long ended normally.
    const LASTED: Duration = Duration::from_secs(10);

    /// The pause before the next watch, after one that lasted `lasted`.
    pub fn pause(&mut self, lasted: Duration) -> Duration {
        if lasted >= Rewatch::LASTED {
            self.backoff = Rewatch::FIRST;
            return jitter(Rewatch::FIRST);
        }
        let pause = jitter(self.backoff);
        self.backoff = (self.backoff * 2).min(Rewatch::MOST);
        pause
    }
}

/// A delay drawn uniformly from [d/2, d].
pub fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 4];
    let r = match getrandom::fill(&mut b) {
        Ok(()) => u32::from_le_bytes(b),
        Err(_) => u32::MAX / 2,
    };
    let half = d / 2;
    half + half.mul_f64(f64::from(r) / f64::from(u32::MAX))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug)]
    struct E(bool, Option<Duration>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "e")
        }
    }
    impl Retryable for E {
        fn is_transient(&self) -> bool {
            self.0
        }
        fn retry_after(&self) -> Option<Duration> {
            self.1
        }
        fn out_of_time(_: &str, _: Duration) -> Self {
            E(true, None)
        }
    }

    fn fast(deadline_ms: u64) -> RetryPolicy {
        RetryPolicy {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
            max_attempts: 5,
            deadline: Duration::from_millis(deadline_ms),
        }
    }

    /// The kernel's timer on the local TCP socket with this port (`/proc/net/tcp`): which timer
    /// (2 is keepalive) and when it fires, in clock ticks.
    fn tcp_timer(local_port: u16) -> Option<(u32, u64)> {
        let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
        table.lines().skip(1).find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = f.get(1)?.rsplit(':').next()?;
            if u16::from_str_radix(port, 16).ok()? != local_port {
                return None;
            }
            let (timer, when) = f.get(5)?.split_once(':')?;
            Some((timer.parse().ok()?, u64::from_str_radix(when, 16).ok()?))
        })
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_waiting_connection_is_probed_after_at_most_fifteen_idle_seconds() {
        // The first probe's timer is visible in /proc/net/tcp; the probes' interval and count
        // are not (they are set through the same builder).
        crate::trust::tls::install_provider();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let http = Http::new(tls, Limits::default()).expect("client");
        // A request the server never answers, as a watch waits for its event.
        let waiting = tokio::spawn(async move {
            let target = Target::public(url::Url::parse(&format!("http://{addr}/")).expect("url"));
            http.send(Request::get(&target)).await
        });
        let (_conn, peer) = tokio::task::spawn_blocking(move || listener.accept())
            .await
            .expect("join")
            .expect("accept");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let timer = loop {
            match tcp_timer(peer.port()) {
                Some((2, when)) => break Some(when),
                _ if std::time::Instant::now() >= deadline => break None,
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        waiting.abort();
        let when = timer.expect("the client's socket has no keepalive timer");
        // /proc/net/tcp counts in USER_HZ, 100 per second on Linux (the system default idle
        // before a first probe is two hours).
        assert!(
            when <= KEEPALIVE_IDLE.as_secs() * 100,
            "the first probe is due in {when} ticks, not within 15 s"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn retries_transient_errors_then_succeeds() {
        let calls = AtomicU32::new(0);
        let out: Result<u32, _> = retry(fast(5000), "t", |n| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 3 {
                    Err(E(true, None))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(out.expect("ok"), 3);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn fatal_errors_stop_at_once() {
        let calls = AtomicU32::new(0);
        let out: Result<(), _> = retry(fast(5000), "t", |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(E(false, None)) }
        })
        .await;
        assert!(matches!(out, Err(RetryError::Fatal(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn attempts_are_bounded() {
        let out: Result<(), _> = retry(fast(5000), "t", |_| async { Err(E(true, None)) }).await;
        match out {
            Err(RetryError::Exhausted { attempts, .. }) => assert_eq!(attempts, 5),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn retry_after_is_the_least_wait_and_the_backoff_comes_on_top() {
        let policy = RetryPolicy {
            initial_backoff: Duration::from_millis(40),
            ..fast(5000)
        };
        let start = Instant::now();
        let out = retry(policy, "t", |attempt| async move {
            match attempt {
                1 => Err(E(true, Some(Duration::from_millis(50)))),
                _ => Ok(()),
            }
        })
        .await;
        assert!(out.is_ok());
        // 50 ms asked, and at least half the first backoff (20 ms) on top.
        assert!(
            start.elapsed() >= Duration::from_millis(70),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn retry_after_beyond_the_deadline_stops_early() {
        let start = Instant::now();
        let out: Result<(), _> = retry(fast(200), "t", |_| async {
            Err(E(true, Some(Duration::from_secs(60))))
        })
        .await;
        assert!(matches!(
            out,
            Err(RetryError::Exhausted { attempts: 1, .. })
        ));
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_attempt_is_cut_short_at_the_deadline() {
        // An attempt that never answers (a server that accepted and went quiet) under a
        // 300 ms deadline: the call ends near the deadline, not after the attempt's own
        // timeouts (here: never).
        let policy = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            ..fast(300)
        };
        let start = Instant::now();
        let calls = AtomicU32::new(0);
        let out: Result<(), _> = tokio::time::timeout(
            Duration::from_secs(10),
            retry(policy, "t", |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<Result<(), HttpError>>()
            }),
        )
        .await
        .expect("the attempt ran past the deadline");
        match out {
            Err(RetryError::Exhausted {
                last: e @ HttpError::Deadline { .. },
                ..
            }) => assert!(e.is_transient() && e.cause() == Cause::NoAnswer, "{e}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_zero_deadline_is_one_attempt_bounded_by_its_own_timeouts() {
        let policy = RetryPolicy {
            max_attempts: 1,
            ..fast(0)
        };
        let out = retry(policy, "t", |_| async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, E>(7)
        })
        .await;
        assert_eq!(out.expect("ok"), 7);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_absurd_retry_after_ends_the_retries_instead_of_panicking() {
        // `Retry-After: 18446744073709551615` parses to u64::MAX seconds; the jittered
        // backoff on top of it (seconds, once a few failures doubled it) must not overflow.
        let policy = RetryPolicy {
            initial_backoff: Duration::from_secs(4),
            ..fast(200)
        };
        let out: Result<(), _> = retry(policy, "t", |_| async {
            Err(E(true, Some(Duration::from_secs(u64::MAX))))
        })
        .await;
        assert!(matches!(
            out,
            Err(RetryError::Exhausted { attempts: 1, .. })
        ));
        let mut h = HeaderMap::new();
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("18446744073709551615"),
        );
        assert_eq!(
            parse_retry_after(&h, SystemTime::now()),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    /// A loopback server answering its first request with `response` (the request's headers
    /// read first), for the client's side of an exchange.
    pub(crate) fn answer_once(response: String) -> std::net::SocketAddr {
        answer_in_turn(vec![response])
    }

    /// Like [`answer_once`], one connection per response, in order (each response should
    /// say `connection: close`).
    pub(crate) fn answer_in_turn(responses: Vec<String>) -> std::net::SocketAddr {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for response in responses {
                let Ok((mut conn, _)) = listener.accept() else {
                    return;
                };
                let (mut seen, mut buf) = (Vec::new(), [0u8; 1024]);
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = conn.write_all(response.as_bytes());
            }
        });
        addr
    }

    async fn refused_with(response: String, secret: &Secret) -> String {
        crate::trust::tls::install_provider();
        let addr = answer_once(response);
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let http = Http::new(tls, Limits::default()).expect("client");
        let target = Target {
            url: url::Url::parse(&format!("http://{addr}/values/{}", secret.expose()))
                .expect("url"),
            shown: format!("http://{addr}/values/[redacted]"),
        };
        let mut req = Request::get(&target);
        req.scrub = vec![secret];
        http.send(req).await.expect_err("refused").to_string()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_secret_cut_by_the_message_limit_is_still_scrubbed() {
        let secret = Secret::new("tok-0123456789abcdefghijklmnopqrstuv");
        // A proxy's 404 echoing the path, the token straddling the 300-character cut.
        let message = format!("{} {} not found", "x".repeat(290), secret.expose());
        let body = serde_json::json!({ "message": message }).to_string();
        let response = format!(
            "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let err = refused_with(response, &secret).await;
        assert!(err.contains("HTTP 404"), "{err}");
        assert!(!err.contains(&secret.expose()[..8]), "{err}");
        // A plain text body, cut at 200 characters.
        let body = format!("{} {}", "y".repeat(190), secret.expose());
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let err = refused_with(response, &secret).await;
        assert!(err.contains("HTTP 503"), "{err}");
        assert!(!err.contains(&secret.expose()[..8]), "{err}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_secret_cut_by_the_location_limit_is_still_scrubbed() {
        let secret = Secret::new("tok-0123456789abcdefghijklmnopqrstuv");
        // An http-to-https or trailing-slash redirect repeating a long path with the token.
        let location = format!(
            "https://values.example.com/{}/{}/node_info/",
            "p".repeat(160),
            secret.expose()
        );
        let response = format!(
            "HTTP/1.1 308 Permanent Redirect\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        let err = refused_with(response, &secret).await;
        assert!(err.contains("redirect"), "{err}");
        assert!(!err.contains(&secret.expose()[..8]), "{err}");
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(parse_retry_after(&h, now), Some(Duration::from_secs(7)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:47 GMT"),
        );
        assert_eq!(parse_retry_after(&h, now), Some(Duration::from_secs(10)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(parse_retry_after(&h, now), None);
    }

    #[test]
    fn rewatch_backs_off_only_after_short_watches() {
        let mut r = Rewatch::default();
        let quick = Duration::from_millis(50);
        let pauses: Vec<Duration> = (0..8).map(|_| r.pause(quick)).collect();
        assert!(pauses[0] <= Duration::from_millis(200));
        assert!(pauses[2] >= Duration::from_millis(400), "{pauses:?}");
        assert!(pauses.iter().all(|p| *p <= Duration::from_secs(5)));
        assert!(pauses[7] >= Duration::from_millis(2500), "{pauses:?}");
        let after_long = r.pause(Duration::from_secs(30));
        assert!(after_long <= Duration::from_millis(200));
        assert!(r.pause(quick) <= Duration::from_millis(200), "reset");
    }

    #[test]
    fn a_server_clock_moves_on_with_the_local_one() {
        let date = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let clock = ServerClock {
            date,
            read: Instant::now() - Duration::from_secs(40),
        };
        let now = clock.now().duration_since(date).expect("later");
        assert!(
            now >= Duration::from_secs(40) && now < Duration::from_secs(41),
            "{now:?}"
        );
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(100));
            assert!(j >= Duration::from_millis(50) && j <= Duration::from_millis(100));
        }
    }

    #[test]
    fn status_classes() {
        let s = |status| HttpError::Status {
            url: "u".into(),
            status,
            detail: None,
            retry_after: None,
        };
        assert!(s(429).is_transient());
        assert!(s(503).is_transient());
        assert!(s(500).is_transient());
        assert!(!s(404).is_transient());
        assert!(!s(403).is_transient());
        assert!(!HttpError::TooLarge {
            url: "u".into(),
            limit: 1
        }
        .is_transient());
    }

    #[test]
    fn server_messages_are_extracted() {
        assert_eq!(
            server_message(
                br#"{"kind":"Status","message":"configmaps \"x\" not found"}"#,
                &[]
            )
            .as_deref(),
            Some("configmaps \"x\" not found")
        );
        assert_eq!(
            server_message(b"plain\ntext", &[]).as_deref(),
            Some("plain text")
        );
        assert_eq!(server_message(b"", &[]), None);
    }
}
