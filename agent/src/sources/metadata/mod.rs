//! Instance metadata: who this machine is on its cloud (instance id, region, zone, private IP,
//! host name, instance type), behind one interface with one module per provider.
//!
//! * [`aliyun`]: ECS metadata at 100.100.100.200, security-hardened mode first (PUT a token,
//!   then send it on every GET), normal mode as the fallback;
//! * [`aws`]: EC2 IMDSv2 at 169.254.169.254 (token required);
//! * `none`: nothing from the cloud; values come from flags.
//!
//! `--metadata auto` (the default) asks only when join needs something it was not given (the
//! values URL's `{region}`/`{instance_id}`, an ACK-style node name, an autoscaled node's
//! providerID), tries Alibaba Cloud then AWS with short timeouts, and never stalls a machine that
//! is on neither.

pub mod aliyun;
pub mod aws;

use crate::model::cause::Cause;
use serde::Serialize;
use std::time::{Duration, SystemTime};

/// What a provider knows about this instance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InstanceMetadata {
    /// Which provider answered.
    pub provider: &'static str,
    /// Instance id.
    pub instance_id: String,
    /// Region id.
    pub region: String,
    /// Zone id.
    pub zone: String,
    /// Private IPv4 address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_ipv4: Option<String>,
    /// Host name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Instance type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
}

impl InstanceMetadata {
    /// The providerID in the cloud's exact format: `<region-id>.<instance-id>` on Alibaba Cloud
    /// (what the cloud controller manager and the alicloud autoscaler read),
    /// `aws:///<zone>/<instance-id>` on AWS.
    pub fn provider_id(&self) -> String {
        match self.provider {
            "aws" => format!("aws:///{}/{}", self.zone, self.instance_id),
            _ => format!("{}.{}", self.region, self.instance_id),
        }
    }
}

/// Which provider to ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MetadataKind {
    /// Try Alibaba Cloud, then AWS, only when something is missing.
    Auto,
    /// Alibaba Cloud ECS.
    Aliyun,
    /// AWS EC2 (IMDSv2).
    Aws,
    /// No cloud metadata.
    None,
}

/// Why metadata could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// The service did not answer, or answered an error.
    #[error("{provider} instance metadata at {endpoint}: {detail}")]
    Unavailable {
        /// Provider.
        provider: &'static str,
        /// Base URL asked.
        endpoint: String,
        /// What happened.
        detail: String,
    },
    /// An answer failed validation.
    #[error("{provider} instance metadata: {field} {value:?} is not a valid value")]
    Invalid {
        /// Provider.
        provider: &'static str,
        /// Which item.
        field: &'static str,
        /// What came back (shortened).
        value: String,
    },
}

/// Timeouts of metadata calls.
#[derive(Clone, Copy, Debug)]
pub struct MetadataLimits {
    /// Connect timeout.
    pub connect: Duration,
    /// Whole-request timeout.
    pub request: Duration,
    /// How long a call is tried again after a failure that may heal (no connection, a dropped
    /// answer, 5xx, 429): zero for none.
    pub retry: Duration,
}

impl MetadataLimits {
    /// Short limits for auto-detection: a machine without the service answers within a second.
    pub fn probe() -> MetadataLimits {
        MetadataLimits {
            connect: Duration::from_millis(300),
            request: Duration::from_millis(1000),
            retry: Duration::ZERO,
        }
    }

    /// Limits for a provider named explicitly: the machine is on that cloud, so a failure is
    /// tried again for up to 15 s (a metadata service briefly unavailable, or throttling).
    pub fn explicit() -> MetadataLimits {
        MetadataLimits {
            connect: Duration::from_secs(2),
            request: Duration::from_secs(5),
            retry: Duration::from_secs(15),
        }
    }
}

/// A plain-http client for link-local metadata services: no proxy, no redirects, small bodies.
pub(crate) fn client(limits: MetadataLimits) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(limits.connect)
        .timeout(limits.request)
        .build()
        .map_err(|e| e.without_url().to_string())
}

/// A failed metadata call, and whether trying it again may succeed.
#[derive(Debug)]
pub(crate) struct CallFailure {
    detail: String,
    transient: bool,
    retry_after: Option<Duration>,
    cause: Cause,
}

impl CallFailure {
    fn of_request(e: reqwest::Error) -> CallFailure {
        // No connection, no answer in time, or an answer cut short.
        let transient = e.is_connect() || e.is_timeout() || e.is_body() || e.is_request();
        let cause = match () {
            _ if e.is_timeout() && e.is_connect() => Cause::TcpTimeout,
            _ if e.is_timeout() => Cause::NoAnswer,
            _ if e.is_connect() => Cause::of_connect_error(&e),
            _ if transient => Cause::TcpReset,
            _ => Cause::Other,
        };
        CallFailure {
            detail: e.without_url().to_string(),
            transient,
            retry_after: None,
            cause,
        }
    }

    fn refused(detail: String) -> CallFailure {
        CallFailure {
            detail,
            transient: false,
            retry_after: None,
            cause: Cause::Other,
        }
    }

    fn of_status(status: u16, headers: &reqwest::header::HeaderMap) -> CallFailure {
        CallFailure {
            detail: format!("HTTP {status}"),
            transient: status == 429 || status >= 500,
            retry_after: crate::client::http::parse_retry_after(headers, SystemTime::now()),
            cause: Cause::of_status(status),
        }
    }
}

impl std::fmt::Display for CallFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

impl crate::client::http::Retryable for CallFailure {
    fn is_transient(&self) -> bool {
        self.transient
    }
    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
    fn cause(&self) -> Cause {
        self.cause
    }
    fn out_of_time(what: &str, left: Duration) -> Self {
        CallFailure {
            detail: format!("{what}: no answer within the {left:?} left before its deadline"),
            transient: true,
            retry_after: None,
            cause: Cause::NoAnswer,
        }
    }
}

/// Reads a small text answer (≤ 4 KiB); `Ok(None)` on 404.
pub(crate) async fn get_text(
    client: &reqwest::Client,
    url: &str,
    header: Option<(&str, &str)>,
) -> Result<Option<String>, CallFailure> {
    let mut req = client.get(url);
    if let Some((k, v)) = header {
        let mut value = reqwest::header::HeaderValue::from_str(v)
            .map_err(|e| CallFailure::refused(e.to_string()))?;
        value.set_sensitive(true);
        req = req.header(k, value);
    }
    let mut resp = req.send().await.map_err(CallFailure::of_request)?;
    match resp.status().as_u16() {
        200 => {}
        404 => return Ok(None),
        s => return Err(CallFailure::of_status(s, resp.headers())),
    }
    read_capped(&mut resp, 4096).await.map(Some)
}

/// Reads a response body of at most `cap` bytes, trimmed; larger answers are refused unread.
async fn read_capped(resp: &mut reqwest::Response, cap: usize) -> Result<String, CallFailure> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(CallFailure::of_request)? {
        body.extend_from_slice(&chunk);
        if body.len() > cap {
            return Err(CallFailure::refused(format!(
                "answer larger than {cap} bytes"
            )));
        }
    }
    Ok(String::from_utf8_lossy(&body).trim().to_owned())
}

/// What a metadata service said to a session-token request (`PUT /latest/api/token`).
pub(crate) enum TokenAnswer {
    /// A usable token (kept only in memory).
    Token(String),
    /// A non-success status.
    Refused(u16),
    /// Success, but an empty, oversized or unreadable body.
    Unusable,
}

/// One conversation with a metadata service: a client, a base URL, and the session token
/// header when the service gave one.
pub(crate) struct Session<'a> {
    pub provider: &'static str,
    pub http: reqwest::Client,
    /// How long a failed call is tried again.
    pub retry: Duration,
    pub base: &'a str,
    pub header: Option<(&'static str, String)>,
}

impl<'a> Session<'a> {
    /// Starts a conversation with the service at `endpoint`, without a session token yet.
    pub(crate) fn open(
        provider: &'static str,
        endpoint: &'a str,
        limits: MetadataLimits,
    ) -> Result<Session<'a>, MetadataError> {
        let base = endpoint.trim_end_matches('/');
        let http = client(limits).map_err(|detail| MetadataError::Unavailable {
            provider,
            endpoint: base.to_owned(),
            detail,
        })?;
        Ok(Session {
            provider,
            http,
            retry: limits.retry,
            base,
            header: None,
        })
    }

    /// Asks for a session token valid for five minutes; `ttl_header` is the provider's name
    /// for the lifetime header. The body is read with a 1 KiB cap. No connection, or a 5xx or
    /// 429, is asked again for [`Session::retry`].
    pub(crate) async fn request_token(
        &self,
        ttl_header: &'static str,
    ) -> Result<TokenAnswer, reqwest::Error> {
        let deadline = std::time::Instant::now() + self.retry;
        let mut backoff = Duration::from_millis(250);
        loop {
            let answer = self.request_token_once(ttl_header).await;
            let transient = match &answer {
                Err(e) => e.is_connect() || e.is_timeout(),
                Ok(TokenAnswer::Refused(s)) => *s == 429 || *s >= 500,
                Ok(_) => false,
            };
            let pause = crate::client::http::jitter(backoff);
            let now = std::time::Instant::now();
            if !transient || now + pause >= deadline {
                return answer;
            }
            tracing::warn!(
                retry_in_ms = pause.as_millis() as u64,
                "{} instance metadata: no session token yet; asking again for {}s",
                self.provider,
                deadline.saturating_duration_since(now).as_secs()
            );
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(Duration::from_secs(4));
        }
    }

    async fn request_token_once(
        &self,
        ttl_header: &'static str,
    ) -> Result<TokenAnswer, reqwest::Error> {
        let mut resp = self
            .http
            .put(format!("{}/latest/api/token", self.base))
            .header(ttl_header, "300")
            .send()
            .await?;
        if !resp.status().is_success() {
            return Ok(TokenAnswer::Refused(resp.status().as_u16()));
        }
        Ok(match read_capped(&mut resp, 1024).await {
            Ok(t) if !t.is_empty() => TokenAnswer::Token(t),
            _ => TokenAnswer::Unusable,
        })
    }

    pub(crate) fn unavailable(&self, detail: String) -> MetadataError {
        MetadataError::Unavailable {
            provider: self.provider,
            endpoint: self.base.to_owned(),
            detail,
        }
    }

    /// An optional item under `/latest/`, tried again for [`Session::retry`] after a failure
    /// that may heal.
    pub(crate) async fn item(&self, path: &str) -> Result<Option<String>, MetadataError> {
        use crate::client::http::{retry, RetryError, RetryPolicy};
        let header = self.header.as_ref().map(|(k, v)| (*k, v.as_str()));
        let url = format!("{}/latest/{path}", self.base);
        let policy = match self.retry.is_zero() {
            true => RetryPolicy {
                max_attempts: 1,
                ..RetryPolicy::until(Duration::ZERO, Duration::ZERO)
            },
            false => RetryPolicy::until(self.retry, Duration::from_secs(4)),
        };
        let what = format!("reading {} instance metadata {path}", self.provider);
        retry(policy, &what, |_| get_text(&self.http, &url, header))
            .await
            .map_err(|e| match e {
                RetryError::Fatal(e) => self.unavailable(e.detail),
                RetryError::Exhausted { last, attempts, .. } if attempts > 1 => {
                    self.unavailable(format!("{} (after {attempts} tries)", last.detail))
                }
                RetryError::Exhausted { last, .. } => self.unavailable(last.detail),
            })
    }

    /// A required identifier item.
    pub(crate) async fn ident(
        &self,
        field: &'static str,
        path: &str,
    ) -> Result<String, MetadataError> {
        ident(self.provider, field, self.item(path).await?)
    }

    /// An IPv4 address item (dropped when it is not one).
    pub(crate) async fn ipv4(&self, path: &str) -> Result<Option<String>, MetadataError> {
        Ok(self
            .item(path)
            .await?
            .filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok()))
    }
}

/// Validates an identifier-like answer.
pub(crate) fn ident(
    provider: &'static str,
    field: &'static str,
    v: Option<String>,
) -> Result<String, MetadataError> {
    let v = v.unwrap_or_default();
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(v)
    } else {
        Err(MetadataError::Invalid {
            provider,
            field,
            value: v.chars().take(64).collect(),
        })
    }
}

/// Reads metadata from `kind` (for `Auto`, the first provider that answers). `endpoint`
/// overrides the provider's address (tests, proxies).
pub async fn fetch(
    kind: MetadataKind,
    endpoint: Option<&str>,
) -> Result<Option<InstanceMetadata>, MetadataError> {
    match kind {
        MetadataKind::None => Ok(None),
        MetadataKind::Aliyun => aliyun::fetch(
            endpoint.unwrap_or(aliyun::ENDPOINT),
            MetadataLimits::explicit(),
        )
        .await
        .map(Some),
        MetadataKind::Aws => aws::fetch(
            endpoint.unwrap_or(aws::ENDPOINT),
            MetadataLimits::explicit(),
        )
        .await
        .map(Some),
        MetadataKind::Auto => {
            let limits = MetadataLimits::probe();
            match aliyun::fetch(endpoint.unwrap_or(aliyun::ENDPOINT), limits).await {
                Ok(m) => return Ok(Some(m)),
                Err(e) => tracing::info!("no Alibaba Cloud metadata: {e}"),
            }
            match aws::fetch(endpoint.unwrap_or(aws::ENDPOINT), limits).await {
                Ok(m) => Ok(Some(m)),
                Err(e) => {
                    tracing::info!("no AWS metadata: {e}");
                    Ok(None)
                }
            }
        }
    }
}
