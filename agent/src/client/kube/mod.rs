//! The few Kubernetes API calls node-attach makes, over TLS that trusts only the discovered
//! cluster CA, as the bootstrap token or as the node itself.

pub mod kubeconfig;
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
        let cause = match self {
            KubeError::Http(e) => Some(e.cause()),
            _ => None,
        };
        Failure::new(code, format!("{context}: {}", crate::error::chain(self))).with_cause(cause)
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
    /// A token file read again while the client runs (its last good content wins over
    /// `bearer`, as in client-go).
    token_file: Option<TokenFile>,
    /// What a server's message must never echo: the bearer, and a bootstrap token's secret
    /// half on its own.
    scrub: Vec<Secret>,
    retry: RetryPolicy,
}

/// How long a token file's content is used before the file is read again (client-go's period).
pub const TOKEN_FILE_PERIOD: Duration = Duration::from_secs(60);

/// A bearer token kept in a file that may be rotated (a projected service account token).
struct TokenFile {
    path: std::path::PathBuf,
    cached: std::sync::Mutex<(std::time::Instant, Secret)>,
}

impl TokenFile {
    /// The token: the cached one, or the file read again once [`TOKEN_FILE_PERIOD`] has passed
    /// (an unreadable file keeps the last good token).
    fn current(&self) -> Secret {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if cached.0.elapsed() >= TOKEN_FILE_PERIOD {
            match kubeconfig::read_token_file(&self.path) {
                Ok(t) => *cached = (std::time::Instant::now(), t),
                Err(e) => tracing::warn!("keeping the last token read: {e}"),
            }
        }
        cached.1.clone()
    }
}

/// How long a call keeps retrying by default.
pub const DEFAULT_RETRY_DEADLINE: Duration = Duration::from_secs(60);

impl Retryable for KubeError {
    fn is_transient(&self) -> bool {
        KubeError::is_transient(self)
    }
    fn cause(&self) -> crate::model::cause::Cause {
        match self {
            KubeError::Http(e) => e.cause(),
            KubeError::Truncated { .. } => crate::model::cause::Cause::TcpReset,
            _ => crate::model::cause::Cause::Other,
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            KubeError::Http(e) => e.retry_after(),
            _ => None,
        }
    }
    fn out_of_time(what: &str, left: Duration) -> Self {
        KubeError::Http(HttpError::out_of_time(what, left))
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

    /// A client from an admin kubeconfig ([`kubeconfig::load`]): its CA, and its client
    /// certificate, token or token file (a certificate and a token together are both sent, as
    /// kubectl sends them).
    pub fn from_admin(
        admin: &kubeconfig::AdminKubeconfig,
        limits: Limits,
    ) -> Result<Kube, KubeError> {
        let ca = crate::trust::pin::certificates_from_pem(&admin.ca_pem).map_err(|e| {
            KubeError::Setup(format!(
                "{}: certificate-authority: {e}",
                admin.files_shown()
            ))
        })?;
        let mut kube = match &admin.client_pair {
            Some(pair) => {
                let mut k =
                    Kube::with_certificate(&admin.server, &ca, pair.expose().as_bytes(), limits)?;
                k.set_bearer(admin.token.clone());
                k
            }
            None => Kube::with_token(&admin.server, &ca, admin.token.clone(), limits)?,
        };
        if let Some(path) = &admin.token_file {
            let first = admin.token.clone().unwrap_or_default();
            kube.token_file = Some(TokenFile {
                path: path.clone(),
                cached: std::sync::Mutex::new((std::time::Instant::now(), first)),
            });
        }
        Ok(kube)
    }

    fn set_bearer(&mut self, bearer: Option<Secret>) {
        if let Some(b) = &bearer {
            self.scrub.push(b.clone());
        }
        self.bearer = bearer;
    }

    /// The bearer token to send now: the token file's, else the inline one.
    fn current_bearer(&self) -> Option<Secret> {
        match &self.token_file {
            Some(f) => Some(f.current()).filter(|t| !t.is_empty()),
            None => self.bearer.clone(),
        }
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
            token_file: None,
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

    /// A target for an API path, under the server URL's own path if it has one (a proxy's
    /// prefix, as client-go keeps it).
    pub fn target(&self, path: &str) -> Target {
        let mut url = self.server.clone();
        let (p, q) = path.split_once('?').unwrap_or((path, ""));
        let prefix = self.server.path().trim_end_matches('/');
        url.set_path(&format!("{prefix}{p}"));
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
        let bearer = self.current_bearer();
        req.bearer = bearer.as_ref();
        req.scrub = self.scrub.iter().chain(bearer.as_ref()).collect();
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

    /// PATCH with a JSON Patch (RFC 6902): its `test` operations make it apply only to the
    /// object as read.
    pub async fn json_patch(&self, path: &str, ops: &Value) -> Result<Value, KubeError> {
        let bytes = Some(ops.to_string().into_bytes());
        let ct = "application/json-patch+json";
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

    /// Whether the API server answers now: one `GET /version`, not retried, within `timeout`.
    pub async fn reachable(&self, timeout: Duration) -> Result<KubeVersion, KubeError> {
        let path = paths::VERSION;
        let once = self.send_once(&reqwest::Method::GET, path, &None, JSON);
        let reply = tokio::time::timeout(timeout, once)
            .await
            .map_err(|_| KubeError::Setup(format!("GET {path}: no answer within {timeout:?}")))??;
        let v: Value = crate::model::strict::json(&reply.body).map_err(|e| KubeError::Decode {
            path: path.into(),
            reason: e.to_string(),
        })?;
        v["gitVersion"]
            .as_str()
            .unwrap_or_default()
            .parse::<KubeVersion>()
            .map_err(|e| KubeError::Decode {
                path: path.into(),
                reason: e.to_string(),
            })
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
        Ok((version, r.date()))
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
            .open_stream(&target, self.current_bearer().as_ref(), timeout)
            .await?;
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let chunk = match self.http.next_chunk(&target.shown, &mut response).await {
                Ok(Some(c)) => c,
                Ok(None) => {
                    tracing::debug!(path, "the server ended the watch");
                    return Ok(None);
                }
                Err(HttpError::Timeout { .. }) => {
                    tracing::debug!(path, "the watch reached its deadline");
                    return Ok(None);
                }
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
                let event = watch_event(&line).map_err(|reason| KubeError::Decode {
                    path: path.to_owned(),
                    reason,
                })?;
                if let Some(out) = on_event(&event) {
                    return Ok(Some(out));
                }
            }
        }
    }
}

/// One line of a watch stream. An ERROR event carries a Status, not the watched kind (410
/// Expired when the resourceVersion is too old): it is handed on with a default object, so
/// that the caller sees it as an ERROR rather than as a stream it cannot read.
fn watch_event<T>(line: &[u8]) -> Result<objects::WatchEvent<T>, String>
where
    T: serde::de::DeserializeOwned + Default,
{
    let raw: Value = crate::model::strict::json(line).map_err(|e| e.to_string())?;
    let kind = raw["type"].as_str().unwrap_or_default().to_owned();
    if kind == "ERROR" {
        return Ok(objects::WatchEvent {
            kind,
            object: T::default(),
        });
    }
    serde_json::from_value(raw).map_err(|e| e.to_string())
}

/// The largest watch event read.
const MAX_WATCH_EVENT: usize = 4 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_url_with_a_path_keeps_it_before_every_api_path() {
        // As client-go: a server behind a path prefix (Rancher's
        // https://rancher.example.com/k8s/clusters/ID, `kubectl proxy --api-prefix`).
        crate::trust::tls::install_provider();
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let http = Http::new(tls, Limits::default()).expect("client");
        let target = |server: &str, path: &str| {
            let kube = Kube::with_http(server, http.clone(), None).expect("kube");
            kube.target(path).url.to_string()
        };
        assert_eq!(
            target(
                "https://rancher.example.com/k8s/clusters/c-m-1",
                "/api/v1/nodes/a"
            ),
            "https://rancher.example.com/k8s/clusters/c-m-1/api/v1/nodes/a"
        );
        assert_eq!(
            target(
                "https://h/prefix/",
                "/api/v1/nodes?watch=true&timeoutSeconds=5"
            ),
            "https://h/prefix/api/v1/nodes?watch=true&timeoutSeconds=5"
        );
        assert_eq!(
            target("https://10.0.0.1:6443", "/version"),
            "https://10.0.0.1:6443/version"
        );
    }

    #[test]
    fn an_error_event_is_read_as_such_whatever_the_watched_kind() {
        let expired = br#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 5","reason":"Expired","code":410}}"#;
        let e: objects::WatchEvent<objects::Csr> = watch_event(expired).expect("error event");
        assert_eq!(e.kind, "ERROR");
        let modified = br#"{"type":"MODIFIED","object":{"metadata":{"name":"node-csr-a","resourceVersion":"7"},"spec":{"request":"","usages":[]}}}"#;
        let e: objects::WatchEvent<objects::Csr> = watch_event(modified).expect("csr event");
        assert_eq!(
            (e.kind.as_str(), e.object.metadata.resource_version.as_str()),
            ("MODIFIED", "7")
        );
        assert!(
            watch_event::<objects::Csr>(br#"{"type":"MODIFIED","object":{"status":"x"}}"#).is_err()
        );
    }
}
