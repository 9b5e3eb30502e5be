//! The few Kubernetes API calls node-attach makes, over TLS that trusts only the discovered
//! cluster CA, as the bootstrap token or as the node itself.

pub mod objects;
pub mod paths;

use crate::client::http::{Http, HttpError, Limits, Request, RetryPolicy, Retryable, Target};
use crate::error::{Code, Failure};
use crate::model::secret::Secret;
use crate::model::version::KubeVersion;
use crate::trust::tls;

use serde_json::Value;
use std::time::{Duration, SystemTime};

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The HTTP layer failed (includes non-2xx answers).
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The answer is not the JSON expected.
    #[error("{path}: unexpected answer: {reason}")]
    Decode {
        /// API path.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// The client could not be built.
    #[error("cannot build an API client: {0}")]
    Setup(String),
    /// The TLS configuration could not be built (CA, client certificate).
    #[error("cannot build an API client: {0}")]
    Tls(#[source] tls::TlsError),
    /// The kubeconfig does not parse or names no cluster.
    #[error("cannot build an API client from the kubeconfig: {0}")]
    Kubeconfig(#[source] crate::model::kubeconfig::KubeconfigError),
    /// A 2xx answer whose JSON does not parse (cut short, or not JSON at all).
    #[error("{path}: the answer does not parse as JSON ({reason}); it may have been cut short")]
    Truncated {
        /// API path.
        path: String,
        /// The parser's message.
        reason: String,
    },
}

impl KubeError {
    /// The HTTP status, if the server answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            KubeError::Http(e) => e.status(),
            _ => None,
        }
    }

    /// Whether the TLS handshake failed: after discovery, the server's certificate no longer
    /// chains to the pinned CA.
    pub fn is_tls(&self) -> bool {
        matches!(self, KubeError::Http(HttpError::Tls { .. }))
    }

    /// The failure to report for an API call that failed this way: a TLS failure is a trust
    /// failure ([`Code::ServerChanged`]) whatever the call was, anything else `code`.
    pub fn failure(&self, code: Code, context: &str) -> Failure {
        let code = if self.is_tls() {
            Code::ServerChanged
        } else {
            code
        };
        Failure::new(code, format!("{context}: {}", crate::error::chain(self)))
    }

    /// Whether trying again later may succeed (connection failures, timeouts, 429, 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            KubeError::Http(e) => e.is_transient(),
            KubeError::Truncated { .. } => true,
            _ => false,
        }
    }
}

const JSON: &str = "application/json";

/// An API client. Every call is retried on transient failures (connection refused or reset,
/// a body cut short, 429, 500, 502, 503, 504, with `Retry-After` honoured) with bounded,
/// jittered backoff until its retry deadline; anything else fails at once.
pub struct Kube {
    http: Http,
    server: url::Url,
    bearer: Option<Secret>,
    /// What a server's message must never echo: the bearer, and a bootstrap token's secret
    /// half on its own.
    scrub: Vec<Secret>,
    retry: RetryPolicy,
}

/// How long a call keeps retrying by default.
pub const DEFAULT_RETRY_DEADLINE: Duration = Duration::from_secs(60);

impl Retryable for KubeError {
    fn is_transient(&self) -> bool {
        KubeError::is_transient(self)
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            KubeError::Http(e) => e.retry_after(),
            _ => None,
        }
    }
}

impl Kube {
    /// A client for `server`, trusting only `ca_ders`, authenticating with a bearer token.
    pub fn with_token(
        server: &str,
        ca_ders: &[Vec<u8>],
        token: Option<Secret>,
        limits: Limits,
    ) -> Result<Kube, KubeError> {
        let config = tls::trusting_only(ca_ders).map_err(KubeError::Tls)?;
        Kube::build(server, config, token, limits)
    }

    /// A client over an existing HTTP client (its TLS trust and its pooled connections, such
    /// as discovery's verified one), authenticating with a bearer token.
    pub fn with_http(server: &str, http: Http, token: Option<Secret>) -> Result<Kube, KubeError> {
        Kube::assemble(server, http, token)
    }

    /// A client authenticating with a client certificate (PEM chain and key).
    pub fn with_certificate(
        server: &str,
        ca_ders: &[Vec<u8>],
        cert_and_key_pem: &[u8],
        limits: Limits,
    ) -> Result<Kube, KubeError> {
        let identity = tls::ClientIdentity::from_pem(cert_and_key_pem).map_err(KubeError::Tls)?;
        let config =
            tls::trusting_only_with_identity(ca_ders, &identity).map_err(KubeError::Tls)?;
        Kube::build(server, config, None, limits)
    }

    /// A client from a kubeconfig (an admin's): inline CA data, and inline client certificate
    /// data or a token.
    pub fn from_kubeconfig(text: &str, limits: Limits) -> Result<Kube, KubeError> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let cfg =
            crate::model::kubeconfig::Kubeconfig::parse(text).map_err(KubeError::Kubeconfig)?;
        let info = cfg.current_cluster().map_err(KubeError::Kubeconfig)?;
        let ca = crate::trust::pin::certificates_from_pem(&info.ca_pem)
            .map_err(|e| KubeError::Setup(format!("the kubeconfig's CA: {e}")))?;
        let context = cfg.contexts.iter().find(|c| c.name == cfg.current_context);
        let user = context
            .and_then(|c| cfg.users.iter().find(|u| u.name == c.context.user))
            .or(cfg.users.first())
            .ok_or_else(|| KubeError::Setup("the kubeconfig has no user".into()))?;
        let decode = |field: &Option<String>, what: &str| -> Result<Vec<u8>, KubeError> {
            let text = field
                .as_deref()
                .ok_or_else(|| KubeError::Setup(format!("the kubeconfig's user has no {what}")))?;
            b64.decode(text.trim())
                .map_err(|_| KubeError::Setup(format!("the kubeconfig's {what} is not base64")))
        };
        if let Some(token) = &user.user.token {
            return Kube::with_token(&info.server, &ca, Some(Secret::new(token.clone())), limits);
        }
        let mut pair = decode(
            &user.user.client_certificate_data,
            "client-certificate-data",
        )?;
        pair.push(b'\n');
        pair.extend(decode(&user.user.client_key_data, "client-key-data")?);
        Kube::with_certificate(&info.server, &ca, &pair, limits)
    }

    fn build(
        server: &str,
        config: rustls::ClientConfig,
        bearer: Option<Secret>,
        limits: Limits,
    ) -> Result<Kube, KubeError> {
        let http = Http::new(config, limits).map_err(|e| KubeError::Setup(e.to_string()))?;
        Kube::assemble(server, http, bearer)
    }

    fn assemble(server: &str, http: Http, bearer: Option<Secret>) -> Result<Kube, KubeError> {
        let server = url::Url::parse(server)
            .map_err(|e| KubeError::Setup(format!("server URL {server:?}: {e}")))?;
        let mut scrub: Vec<Secret> = bearer.iter().cloned().collect();
        if let Some((_, secret)) = bearer.as_ref().and_then(|b| b.expose().split_once('.')) {
            if !secret.is_empty() {
                scrub.push(Secret::new(secret.to_owned()));
            }
        }
        Ok(Kube {
            http,
            server,
            bearer,
            scrub,
            retry: RetryPolicy::until(DEFAULT_RETRY_DEADLINE, Duration::from_secs(5)),
        })
    }

    /// The same client, retrying each call until `deadline` (zero: never retrying).
    pub fn with_retry_deadline(mut self, deadline: Duration) -> Kube {
        self.retry = RetryPolicy::until(deadline, Duration::from_secs(5));
        if deadline.is_zero() {
            self.retry.max_attempts = 1;
        }
        self
    }

    /// The HTTP client (for streams).
    pub fn http(&self) -> &Http {
        &self.http
    }

    /// The bearer token, if any.
    pub fn bearer(&self) -> Option<&Secret> {
        self.bearer.as_ref()
    }

    /// A target for an API path.
    pub fn target(&self, path: &str) -> Target {
        let mut url = self.server.clone();
        let (p, q) = path.split_once('?').unwrap_or((path, ""));
        url.set_path(p);
        url.set_query((!q.is_empty()).then_some(q));
        Target::public(url)
    }

    /// One request, once; `content_type` is the body's.
    async fn send_once(
        &self,
        method: &reqwest::Method,
        path: &str,
        body: &Option<Vec<u8>>,
        content_type: &'static str,
    ) -> Result<crate::client::http::Reply, KubeError> {
        let target = self.target(path);
        let mut req = Request::get(&target);
        req.method = method.clone();
        req.json = body.clone();
        req.content_type = content_type;
        req.bearer = self.bearer.as_ref();
        req.scrub = self.scrub.iter().collect();
        Ok(self.http.send(req).await?)
    }

    /// One request, retried on transient failures.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: &'static str,
    ) -> Result<crate::client::http::Reply, KubeError> {
        let what = format!("{method} {path}");
        crate::client::http::retry(self.retry, &what, |_| {
            self.send_once(&method, path, &body, content_type)
        })
        .await
        .map_err(crate::client::http::RetryError::into_inner)
    }

    /// A call whose answer must be JSON: an answer cut short (no Content-Length, connection
    /// closed early) does not parse, and is asked again within the same retry budget.
    async fn call_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: &'static str,
    ) -> Result<(Value, crate::client::http::Reply), KubeError> {
        let what = format!("{method} {path}");
        crate::client::http::retry(self.retry, &what, |_| async {
            let reply = self.send_once(&method, path, &body, content_type).await?;
            // Only an answer that does not parse may heal on a retry (a body cut short); one
            // that parses into something refused (a key twice, too deep, too large) is what
            // the server holds, and fails at once.
            let value = crate::model::strict::json(&reply.body).map_err(|e| {
                let (path, reason) = (path.to_owned(), e.to_string());
                match e {
                    crate::model::strict::StrictError::Syntax(_) => {
                        KubeError::Truncated { path, reason }
                    }
                    _ => KubeError::Decode { path, reason },
                }
            })?;
            Ok((value, reply))
        })
        .await
        .map_err(crate::client::http::RetryError::into_inner)
    }

    /// GET one object as its typed form; `None` on 404.
    pub async fn get_as<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<T>, KubeError> {
        match self.get(path).await? {
            Some(v) => serde_json::from_value(v)
                .map(Some)
                .map_err(|e| KubeError::Decode {
                    path: path.to_owned(),
                    reason: e.to_string(),
                }),
            None => Ok(None),
        }
    }

    /// One Node; `None` when there is none of that name.
    pub async fn node(&self, name: &str) -> Result<Option<objects::Node>, KubeError> {
        self.get_as(&paths::node(name)).await
    }

    /// GET; `None` on 404.
    pub async fn get(&self, path: &str) -> Result<Option<Value>, KubeError> {
        match self.call_json(reqwest::Method::GET, path, None, JSON).await {
            Ok((v, _)) => Ok(Some(v)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// POST a JSON object.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, KubeError> {
        let bytes = Some(body.to_string().into_bytes());
        Ok(self
            .call_json(reqwest::Method::POST, path, bytes, JSON)
            .await?
            .0)
    }

    /// PATCH with a JSON merge patch.
    pub async fn merge_patch(&self, path: &str, patch: &Value) -> Result<Value, KubeError> {
        let bytes = Some(patch.to_string().into_bytes());
        let ct = "application/merge-patch+json";
        Ok(self
            .call_json(reqwest::Method::PATCH, path, bytes, ct)
            .await?
            .0)
    }

    /// DELETE; `false` when it was already gone.
    pub async fn delete(&self, path: &str) -> Result<bool, KubeError> {
        match self.call(reqwest::Method::DELETE, path, None, JSON).await {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(404) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The server's version and its clock (the `Date` header).
    pub async fn version(&self) -> Result<(KubeVersion, Option<SystemTime>), KubeError> {
        let (v, r) = self
            .call_json(reqwest::Method::GET, paths::VERSION, None, JSON)
            .await?;
        let decode = |reason: String| KubeError::Decode {
            path: paths::VERSION.into(),
            reason,
        };
        let info: objects::Version =
            serde_json::from_value(v).map_err(|e| decode(e.to_string()))?;
        let version = info
            .git_version
            .parse::<KubeVersion>()
            .map_err(|e| decode(e.to_string()))?;
        let date = r
            .headers
            .get(reqwest::header::DATE)
            .and_then(|d| d.to_str().ok())
            .and_then(|d| httpdate::parse_http_date(d).ok());
        Ok((version, date))
    }

    /// Reads a watch stream of `T`, calling `on_event` with each event until it returns
    /// `Some`, the stream ends, or `timeout` passes.
    pub async fn watch<T, R>(
        &self,
        path: &str,
        timeout: Duration,
        mut on_event: impl FnMut(&objects::WatchEvent<T>) -> Option<R>,
    ) -> Result<Option<R>, KubeError>
    where
        T: serde::de::DeserializeOwned + Default,
    {
        let target = self.target(path);
        let mut response = self
            .http
            .open_stream(&target, self.bearer.as_ref(), timeout)
            .await?;
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let chunk = match self.http.next_chunk(&target.shown, &mut response).await {
                Ok(Some(c)) => c,
                Ok(None) | Err(HttpError::Timeout { .. }) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            buf.extend_from_slice(&chunk);
            if buf.len() > MAX_WATCH_EVENT {
                return Err(KubeError::Decode {
                    path: path.into(),
                    reason: "watch event larger than 4 MiB".into(),
                });
            }
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let event = crate::model::strict::json(&line).map_err(|e| KubeError::Decode {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })?;
                if let Some(out) = on_event(&event) {
                    return Ok(Some(out));
                }
            }
        }
    }
}

/// The largest watch event read.
const MAX_WATCH_EVENT: usize = 4 * 1024 * 1024;
