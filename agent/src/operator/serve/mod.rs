//! `node-attach serve`: the control plane's values service.
//!
//! Nodes `GET /v1/values/{token}` (node-attach's JSON) or
//! `GET /token/{token}/instance/{id}/node_info` (ACK's key=value text) anonymously with an
//! openapi token. Each use mints a fresh, short-lived bootstrap token (so no long-lived token sits
//! in userdata), counted against the openapi token's uses and TTL. Nodes report back with
//! `POST /v1/callback/{token}`; once a node that used the token has registered (its kubelet CSR
//! was made with the bootstrap token minted for that use, and its Node's name and providerID
//! match), the service applies the token's restricted labels (such as
//! `k8s.io/cluster-autoscaler=true`, which a kubelet may not set) to exactly that Node.
//!
//! All state lives in the cluster ([`store`]), so replicas share it and a restart loses nothing.
//! Per-address rate limits and body limits guard the anonymous endpoints; tokens are compared by
//! hash in constant time; every use is logged without the token.
//!
//! With `--files DIR` it also serves DIR read-only at `/files/...` ([`files`]): the installer,
//! the static binary and its digest, over the same HTTPS listener.

pub mod files;
pub mod identity;
pub mod metrics;
pub mod signatures;
pub mod store;

use crate::client::kube::Kube;
use crate::model::token::{BootstrapToken, OpenApiToken};
use crate::model::validate::Labels;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::{token_hash, Store, StoreError};

/// The service's configuration.
pub struct ServeConfig {
    /// Admin client.
    pub kube: Kube,
    /// Namespace of the token Secrets.
    pub namespace: String,
    /// API server endpoint nodes use (`host:port`).
    pub endpoint: String,
    /// The cluster CA's pin.
    pub ca_pin: String,
    /// This service's public base URL (for callback URLs).
    pub public_url: String,
    /// TTL of minted bootstrap tokens.
    pub bootstrap_ttl: Duration,
    /// Requests per minute per client address on the anonymous endpoints.
    pub rate_per_minute: u32,
    /// The directory served read-only at `/files/...`, if any.
    pub files: Option<files::Files>,
    /// Delete the Node of a node whose reset reports its removal, authenticated with its
    /// client certificate (nodes may not delete their own Node).
    pub delete_removed_nodes: bool,
    /// Connections served at once; beyond, one waits [`CONNECTION_WAIT`] for a free slot,
    /// then is closed.
    pub max_connections: usize,
}

/// A response body: a small buffer, or a file streamed from disk.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// The largest report a node may send (reset's carries part of its audit of the paths).
pub const MAX_REPORT: usize = 64 * 1024;

/// How long one connection may live, however busy (bounds a slow download too).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(600);

/// How long a request's headers may take to arrive (and a kept-alive connection may idle).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a report's body may take to arrive, once its headers have.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a connection beyond [`ServeConfig::max_connections`] waits for a free slot.
pub const CONNECTION_WAIT: Duration = Duration::from_secs(5);

/// Per-client token buckets: an IPv4 address, or an IPv6 address's /64 ([`client_key`]).
/// At most `capacity` buckets are kept; beyond, the least recently used goes (a client that
/// idled long enough has a full bucket, which a new bucket never exceeds).
struct Limiter {
    buckets: Mutex<Buckets>,
    per_minute: f64,
    capacity: usize,
}

/// The buckets (tokens, last use, use number) and the keys by use number, oldest first.
#[derive(Default)]
struct Buckets {
    by_key: HashMap<IpAddr, (f64, Instant, u64)>,
    by_use: std::collections::BTreeMap<u64, IpAddr>,
    uses: u64,
}

/// How many client buckets the rate limit keeps.
const MAX_BUCKETS: usize = 100_000;

/// The key a client is limited by: its IPv4 address (also when it comes IPv4-mapped, on a
/// dual-stack listener), or its IPv6 address's /64, which one host usually holds whole.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Limiter {
    fn new(per_minute: f64, capacity: usize) -> Limiter {
        Limiter {
            buckets: Mutex::new(Buckets::default()),
            per_minute,
            capacity,
        }
    }

    fn allow(&self, ip: IpAddr) -> bool {
        self.allow_at(ip, Instant::now())
    }

    fn allow_at(&self, ip: IpAddr, now: Instant) -> bool {
        let key = client_key(ip);
        let mut guard = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = &mut *guard;
        b.uses += 1;
        let fresh = (self.per_minute.clamp(1.0, 10.0), now, b.uses);
        let (mut tokens, last, previous) = b.by_key.get(&key).copied().unwrap_or(fresh);
        b.by_use.remove(&previous);
        while b.by_key.len() >= self.capacity && !b.by_key.contains_key(&key) {
            let Some((_, oldest)) = b.by_use.pop_first() else {
                break;
            };
            b.by_key.remove(&oldest);
        }
        tokens = (tokens
            + now.saturating_duration_since(last).as_secs_f64() * self.per_minute / 60.0)
            .min(self.per_minute.max(1.0));
        let allowed = tokens >= 1.0;
        if allowed {
            tokens -= 1.0;
        }
        b.by_key.insert(key, (tokens, now, b.uses));
        b.by_use.insert(b.uses, key);
        allowed
    }
}

struct Service {
    cfg: ServeConfig,
    limiter: Limiter,
    metrics: metrics::Metrics,
    /// The certificates.k8s.io version of the cluster's release (v1beta1 before 1.19).
    csr_api: &'static str,
    /// What this replica knows of the openapi tokens' use slots.
    slots: store::Slots,
    /// Values answers by token and request id ([`Service::values_once`]).
    answers: Mutex<Answers>,
    /// The token ids cluster-info is signed for ([`signatures`]).
    signatures: signatures::Signatures,
}

/// A values answer being made or made: the content type and body.
type Answer = Arc<tokio::sync::OnceCell<(Option<hyper::header::HeaderValue>, Bytes)>>;

/// How long a values answer is given again to a retry of its request.
const ANSWER_TTL: Duration = Duration::from_secs(600);

/// Values answers by token and request id, each with when it was first asked: one older than
/// [`ANSWER_TTL`] is never given again, and is dropped (all such, at most once a minute).
#[derive(Default)]
struct Answers {
    by_key: HashMap<String, (Instant, Answer)>,
    swept: Option<Instant>,
}

impl Answers {
    /// The answer for `key` as of `now`: the one being made or made, unless expired, else a
    /// new one.
    fn get(&mut self, key: String, now: Instant) -> Answer {
        let fresh = |at: &Instant| now.saturating_duration_since(*at) < ANSWER_TTL;
        if self
            .swept
            .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(60))
        {
            self.by_key.retain(|_, (at, _)| fresh(at));
            self.swept = Some(now);
        }
        let entry = self
            .by_key
            .entry(key)
            .or_insert_with(|| (now, Answer::default()));
        if !fresh(&entry.0) {
            *entry = (now, Answer::default());
        }
        entry.1.clone()
    }
}

/// A values request: the openapi token, the instance id (ACK's form) and which form.
struct Ask {
    token: String,
    instance: String,
    ack: bool,
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).map_err(|e| match e {}).boxed()
}

fn reply(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .body(full(body))
        .unwrap_or_else(|_| Response::new(full(Bytes::new())))
}

fn error(status: u16, message: &str) -> Response<Body> {
    reply(
        status,
        "application/json",
        json!({"kind": "Status", "status": "Failure", "code": status, "message": message})
            .to_string(),
    )
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// What a join's report claims: the node, its providerID, the CSR its certificate came from,
/// and the use (slot) its values were given for, named by the callback URL those values
/// carried (each checked against the cluster before anything is done for it).
struct Claims<'a> {
    node: &'a str,
    provider_id: Option<&'a str>,
    csr: Option<&'a str>,
    slot: Option<u32>,
}

/// A report's body, read up to [`MAX_REPORT`] within `within`; else the refusal to answer
/// (413, or 408 for a body that did not arrive in time: a client sending it slowly would tie
/// up the connection until its lifetime ends).
async fn report_body<B>(body: B, within: Duration) -> Result<Bytes, Response<Body>>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let read = http_body_util::Limited::new(body, MAX_REPORT).collect();
    match tokio::time::timeout(within, read).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(_)) => Err(error(413, "body too large")),
        Err(_) => {
            let mut r = error(408, "the request's body did not arrive in time");
            r.headers_mut().insert(
                "connection",
                hyper::header::HeaderValue::from_static("close"),
            );
            Err(r)
        }
    }
}

/// Whether `name` can be a CSR's name (a path segment: the kubelet's digested names are
/// base64url, so upper case and `_` occur), at most 253 characters.
fn check_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

impl Service {
    async fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        caller: Option<&str>,
    ) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        if !self.limiter.allow(peer.ip()) {
            tracing::warn!(peer = %peer.ip(), "rate limit exceeded");
            let mut r = error(429, "too many requests");
            r.headers_mut()
                .insert("retry-after", hyper::header::HeaderValue::from_static("10"));
            return r;
        }
        let request_id = req
            .headers()
            .get(crate::client::http::REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_owned);
        match (req.method().as_str(), segs.as_slice()) {
            ("GET", ["v1", "values", token]) => {
                let ask = Ask {
                    token: (*token).to_owned(),
                    instance: String::new(),
                    ack: false,
                };
                self.values_once(ask, request_id, peer).await
            }
            ("GET", ["token", token, "instance", instance, "node_info"]) => {
                let ask = Ask {
                    token: (*token).to_owned(),
                    instance: (*instance).to_owned(),
                    ack: true,
                };
                self.values_once(ask, request_id, peer).await
            }
            ("POST", ["v1", "callback", token]) => {
                let token = (*token).to_owned();
                let body = match report_body(req.into_body(), BODY_READ_TIMEOUT).await {
                    Ok(b) => b,
                    Err(refused) => return refused,
                };
                self.callback(token, None, &body, peer, caller).await
            }
            ("POST", ["v1", "callback", token, "uses", slot]) => {
                let (token, slot) = ((*token).to_owned(), slot.parse::<u32>().ok());
                if slot.is_none() {
                    return error(404, "not found");
                }
                let body = match report_body(req.into_body(), BODY_READ_TIMEOUT).await {
                    Ok(b) => b,
                    Err(refused) => return refused,
                };
                self.callback(token, slot, &body, peer, caller).await
            }
            (method, ["files", ..]) => self.file(method, &path, peer).await,
            _ => error(404, "not found"),
        }
    }

    /// `GET`/`HEAD /files/...`: see [`files`].
    async fn file(&self, method: &str, path: &str, peer: SocketAddr) -> Response<Body> {
        let Some(files) = &self.cfg.files else {
            return error(404, "not found");
        };
        let head = match method {
            "GET" => false,
            "HEAD" => true,
            _ => {
                let mut r = error(405, "method not allowed");
                r.headers_mut().insert(
                    "allow",
                    hyper::header::HeaderValue::from_static("GET, HEAD"),
                );
                return r;
            }
        };
        let rel = path.strip_prefix("/files/").unwrap_or_default();
        let opened = match files.get(rel).await {
            Ok(o) => o,
            Err(files::Refusal::BadPath) => return error(400, "bad file path"),
            Err(files::Refusal::NotFound) => return error(404, "not found"),
            Err(files::Refusal::Busy) => {
                let mut r = error(503, "too many transfers");
                r.headers_mut()
                    .insert("retry-after", hyper::header::HeaderValue::from_static("5"));
                return r;
            }
        };
        tracing::info!(peer = %peer.ip(), path = ?rel, bytes = opened.len, head, "file served");
        let mut b = Response::builder()
            .status(200)
            .header("content-type", "application/octet-stream")
            .header("content-length", opened.len)
            .header("cache-control", "no-cache")
            .header("x-content-type-options", "nosniff");
        if let Some(m) = opened.modified {
            b = b.header("last-modified", httpdate::fmt_http_date(m));
        }
        let body = if head {
            Empty::new().map_err(|e| match e {}).boxed()
        } else {
            opened.body.boxed()
        };
        b.body(body)
            .unwrap_or_else(|_| error(500, "cannot build the response"))
    }

    /// [`Service::values`] at most once per logical request: a retry naming the same request
    /// id (`X-Node-Attach-Request`, with the same token) while the first attempt runs waits for
    /// it, and after it succeeded gets its answer again instead of taking another use. (A
    /// timeout under load would otherwise spend one use per attempt and starve later nodes.)
    /// Successful answers are kept 10 minutes from the first attempt ([`ANSWER_TTL`]), in this
    /// replica only.
    async fn values_once(
        &self,
        ask: Ask,
        request_id: Option<String>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let Some(id) = request_id else {
            return self.values(ask.token, ask.instance, ask.ack, peer).await;
        };
        let key = format!("{}:{id}", token_hash(&ask.token));
        let cell = self
            .answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key, Instant::now());
        let answer = cell
            .get_or_try_init(|| async {
                let r = self
                    .values(ask.token.clone(), ask.instance.clone(), ask.ack, peer)
                    .await;
                if r.status() != 200 {
                    return Err(r);
                }
                let ct = r.headers().get("content-type").cloned();
                let body = r.into_body().collect().await.map(|b| b.to_bytes());
                Ok((ct, body.unwrap_or_default()))
            })
            .await;
        match answer {
            Ok((ct, body)) => {
                let ct = ct
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("application/json");
                reply(200, ct, body.clone())
            }
            Err(refused) => refused,
        }
    }

    /// `GET /v1/values/{token}` (JSON) or ACK's `node_info` (`ack`: key=value text): takes one
    /// use of the openapi token and mints a fresh bootstrap token for it.
    async fn values(
        &self,
        token: String,
        instance: String,
        ack: bool,
        peer: SocketAddr,
    ) -> Response<Body> {
        let Ok(parsed) = token.parse::<OpenApiToken>() else {
            return error(404, "unknown or expired openapi token");
        };
        let hash = token_hash(parsed.expose());
        let short = &hash[..12];
        if !instance.is_empty()
            && crate::sources::values::check_identifier("instance", &instance).is_err()
        {
            return error(400, "invalid instance id");
        }
        let store = Store {
            kube: &self.cfg.kube,
            namespace: self.cfg.namespace.clone(),
            slots: &self.slots,
        };
        let Ok(minted) = BootstrapToken::generate() else {
            return error(500, "no randomness");
        };
        let taken = match store
            .take_use(parsed.expose(), minted.id(), &instance, now())
            .await
        {
            Ok(t) => t,
            Err(e) => {
                self.metrics.token_use(metrics::Use::of(&e));
                return refusal(short, peer, &e);
            }
        };
        if let Err(e) = self.mint(&minted, short, taken.slot + 1).await {
            self.metrics.mint_failure();
            self.metrics.token_use(metrics::Use::Failed);
            tracing::warn!(token = short, "minting a bootstrap token failed: {e}");
            if let Err(e) = store
                .give_back(parsed.expose(), minted.id(), taken.slot)
                .await
            {
                tracing::warn!(token = short, "the use stays counted: {e}");
            }
            return error(503, "the values service cannot reach the cluster");
        }
        // The node's first read of cluster-info then finds the token's signature.
        if !self
            .signatures
            .wait_for(minted.id(), signatures::SIGNATURE_WAIT)
            .await
        {
            tracing::info!(
                token = short,
                bootstrap_id = minted.id(),
                "cluster-info not yet signed for the minted token; answering anyway"
            );
        }
        self.metrics.token_use(metrics::Use::Served);
        tracing::info!(token = short, peer = %peer.ip(), instance = %instance, bootstrap_id = minted.id(), slot = taken.slot, free = taken.free, "openapi token used");
        // The use is named in the URL the node reports to, so its report reads that one slot
        // (checked against the CSR the node's certificate came from) instead of listing them.
        let callback = format!(
            "{}/v1/callback/{}/uses/{}",
            self.cfg.public_url.trim_end_matches('/'),
            parsed.expose(),
            taken.slot
        );
        let values = self.answer(taken.record.values, &minted, &callback);
        if ack {
            return reply(200, "text/plain", ack_text(&values, &minted, &callback));
        }
        reply(200, "application/json", values.to_string())
    }

    /// Creates the bootstrap token Secret for one use.
    async fn mint(
        &self,
        minted: &BootstrapToken,
        short: &str,
        use_number: u32,
    ) -> Result<(), crate::client::kube::KubeError> {
        use crate::operator::bootstrap_tokens::{create_token, NewToken, DEFAULT_GROUP};
        create_token(
            &self.cfg.kube,
            &NewToken {
                token: minted.clone(),
                ttl: Some(self.cfg.bootstrap_ttl),
                usages: vec!["signing".into(), "authentication".into()],
                groups: vec![DEFAULT_GROUP.into()],
                description: Some(format!(
                    "node-attach serve: openapi token {short}, use {use_number}"
                )),
            },
            time::OffsetDateTime::now_utc(),
        )
        .await
    }

    /// The values a node gets: the token's template with the minted bootstrap token, the
    /// callback, and the service's endpoint and CA pin where the template names none.
    fn answer(&self, mut values: Value, minted: &BootstrapToken, callback: &str) -> Value {
        use crate::sources::values::schema::{API_VERSION, KIND};
        values["apiVersion"] = json!(API_VERSION);
        values["kind"] = json!(KIND);
        values["bootstrapToken"] = json!(minted.expose_full().expose());
        values["callbackURL"] = json!(callback);
        let empty = |v: &Value| v.as_array().is_none_or(|a| a.is_empty());
        if empty(&values["apiServerEndpoints"]) {
            values["apiServerEndpoints"] = json!([self.cfg.endpoint]);
        }
        if empty(&values["caCertHashes"]) {
            values["caCertHashes"] = json!([self.cfg.ca_pin]);
        }
        values
    }

    /// `POST /v1/callback/{token}[/uses/{slot}]`: join's report (restricted labels applied
    /// once the node is proven to have joined through this token) and reset's (the Node
    /// deleted, when the report is authenticated with the node's own client certificate).
    /// `slot` is the use the values were given for (callback URLs name it since values
    /// answers do; without it, the token's uses are searched).
    async fn callback(
        &self,
        token: String,
        slot: Option<u32>,
        body: &[u8],
        peer: SocketAddr,
        caller: Option<&str>,
    ) -> Response<Body> {
        let Ok(parsed) = token.parse::<OpenApiToken>() else {
            return error(404, "unknown openapi token");
        };
        let short = token_hash(parsed.expose())[..12].to_owned();
        let report: Value = crate::model::strict::json(body).unwrap_or(Value::Null);
        let status = report["status"].as_str().unwrap_or("unknown").to_owned();
        let node = report["node"].as_str().unwrap_or_default().to_owned();
        self.metrics
            .callback(&status, report["code"].as_str().unwrap_or_default());
        tracing::info!(token = %short, peer = %peer.ip(), status = ?status, node = ?node, code = ?report["code"].as_str().unwrap_or(""), authenticated = caller.is_some(), "node reported");
        let store = Store {
            kube: &self.cfg.kube,
            namespace: self.cfg.namespace.clone(),
            slots: &self.slots,
        };
        let valid_name = crate::model::validate::check_node_name(&node).is_ok();
        let answer = match status.as_str() {
            "success" if valid_name => {
                let claims = Claims {
                    node: &node,
                    provider_id: report["provider_id"].as_str(),
                    csr: report["csr"].as_str(),
                    slot,
                };
                self.joined(&store, parsed.expose(), &claims).await
            }
            "removed" | "reset-incomplete" if valid_name && report["delete_node"] == true => {
                let removal = self.remove_node(&store, parsed.expose(), &node, slot, caller);
                removal.await
            }
            _ => json!({"recorded": true}),
        };
        reply(200, "application/json", answer.to_string())
    }

    /// Join succeeded: applies the restricted labels and remembers the node for this use.
    async fn joined(&self, store: &Store<'_>, token: &str, claims: &Claims<'_>) -> Value {
        match self.apply_labels(store, token, claims).await {
            Ok(applied) => json!({"recorded": true, "labels_applied": applied}),
            Err(e) => {
                tracing::warn!(node = %claims.node, "restricted labels not applied: {e}");
                json!({"recorded": true, "labels_applied": false, "reason": e})
            }
        }
    }

    /// Reset's report: deletes `node`'s Node if the caller proved to be that node (its client
    /// certificate, verified against the API server's client CAs) and the node joined through
    /// this openapi token.
    async fn remove_node(
        &self,
        store: &Store<'_>,
        token: &str,
        node: &str,
        slot: Option<u32>,
        caller: Option<&str>,
    ) -> Value {
        let refused = |reason: &str| {
            self.metrics.removal("refused");
            tracing::warn!(node = %node, "Node not deleted: {reason}");
            json!({"recorded": true, "node": "refused", "reason": reason})
        };
        if !self.cfg.delete_removed_nodes {
            return refused("this values service keeps removed nodes (--keep-removed-nodes)");
        }
        if caller != Some(node) {
            return refused("the report is not authenticated with this node's client certificate");
        }
        match store.became(token, node, slot).await {
            Ok(true) => {}
            Ok(false) => return refused("this node did not join through this openapi token"),
            Err(e) => return refused(&format!("the token's uses: {e}")),
        }
        match self
            .cfg
            .kube
            .delete(&crate::client::kube::paths::node(node))
            .await
        {
            Ok(true) => {
                self.metrics.removal("deleted");
                tracing::info!(node = %node, "deleted the Node of a removed node");
                json!({"recorded": true, "node": "deleted"})
            }
            Ok(false) => {
                self.metrics.removal("absent");
                json!({"recorded": true, "node": "absent"})
            }
            Err(e) => refused(&format!("the API server refused: {e}")),
        }
    }

    /// The use `node` came from, with its slot: its kubelet CSR was made with the bootstrap
    /// token minted for that use of this openapi token (CSRs in the API version of the
    /// cluster's release). The CSR the report names is read (one GET), then the slot the
    /// callback URL names (one GET by name); a report naming no CSR (the kubelet made its own)
    /// has the CSRs listed, and one naming no slot (values given before slots were named) has
    /// the token's uses listed instead.
    async fn joined_through(
        &self,
        store: &Store<'_>,
        token: &str,
        claims: &Claims<'_>,
    ) -> Result<(u32, store::Use), String> {
        let node = claims.node;
        let not_found = || {
            format!(
                "no kubelet CSR for {node} was made with a bootstrap token of this openapi token"
            )
        };
        let requester = match claims.csr.filter(|n| check_object_name(n)) {
            Some(name) => Some(
                self.csr_requester(name, node)
                    .await?
                    .ok_or_else(not_found)?,
            ),
            None => None,
        };
        let found = match (claims.slot, &requester) {
            (Some(slot), _) => store.use_at(token, slot).await.map_err(|e| e.to_string())?,
            (None, Some(id)) => store.use_of(token, id).await.map_err(|e| e.to_string())?,
            (None, None) => None,
        };
        let found = match (found, requester) {
            (Some(found), Some(id)) => (found.1.bootstrap_id == id).then_some(found),
            // The kubelet made its own CSR: one made by this use's token, for this node.
            (Some(found), None) => {
                let ids = std::slice::from_ref(&found.1.bootstrap_id);
                let made = self.csr_made_by(ids, node).await?;
                made.is_some().then_some(found)
            }
            (None, Some(_)) => None,
            (None, None) => return self.search_uses(store, token, node).await,
        };
        match found {
            Some((slot, u)) if u.node.as_deref().is_none_or(|n| n == node) => Ok((slot, u)),
            _ => Err(not_found()),
        }
    }

    /// The bootstrap token id that made the CSR `name`, if it is a kubelet client CSR for
    /// `node` made with a bootstrap token; `Ok(None)` when it is absent or not so.
    async fn csr_requester(&self, name: &str, node: &str) -> Result<Option<String>, String> {
        use crate::client::kube::objects::Csr;
        let path = crate::client::kube::paths::csr(self.csr_api, name);
        let csr: Option<Csr> = self
            .cfg
            .kube
            .get_as(&path)
            .await
            .map_err(|e| e.to_string())?;
        let subject = format!("system:node:{node}");
        Ok(csr
            .filter(|c| csr_common_name(&c.spec.request).as_deref() == Some(&subject))
            .and_then(|c| {
                let id = c.spec.username.strip_prefix("system:bootstrap:")?;
                Some(id.to_owned())
            }))
    }

    /// Whether a kubelet client CSR for `node` was made by one of these bootstrap token ids
    /// (one list of the CSRs): the id that made it.
    async fn csr_made_by(&self, ids: &[String], node: &str) -> Result<Option<String>, String> {
        use crate::client::kube::objects::{Csr, List};
        let path = crate::client::kube::paths::csrs(self.csr_api);
        let csrs: Option<List<Csr>> = self
            .cfg
            .kube
            .get_as(&path)
            .await
            .map_err(|e| e.to_string())?;
        let subject = format!("system:node:{node}");
        let users: Vec<String> = ids
            .iter()
            .map(|i| format!("system:bootstrap:{i}"))
            .collect();
        Ok(csrs
            .into_iter()
            .flat_map(|l| l.items)
            .find(|c| {
                users.contains(&c.spec.username)
                    && csr_common_name(&c.spec.request).as_deref() == Some(&subject)
            })
            .map(|c| {
                c.spec
                    .username
                    .trim_start_matches("system:bootstrap:")
                    .to_owned()
            }))
    }

    /// Neither a CSR nor a slot named: the token's unreported uses, and a CSR for `node` made
    /// by one of their tokens.
    async fn search_uses(
        &self,
        store: &Store<'_>,
        token: &str,
        node: &str,
    ) -> Result<(u32, store::Use), String> {
        let unreported = store
            .unreported_uses(token)
            .await
            .map_err(|e| e.to_string())?;
        let ids: Vec<String> = unreported
            .iter()
            .map(|(_, u)| u.bootstrap_id.clone())
            .collect();
        let made = self.csr_made_by(&ids, node).await?;
        unreported
            .into_iter()
            .find(|(_, u)| made.as_deref() == Some(u.bootstrap_id.as_str()))
            .ok_or_else(|| {
                format!(
                    "no kubelet CSR for {node} was made with a bootstrap token of this openapi token"
                )
            })
    }

    /// Applies the token's restricted labels to `node` if, and only if, that node's kubelet
    /// certificate was requested with a bootstrap token minted for a use of this openapi token.
    async fn apply_labels(
        &self,
        store: &Store<'_>,
        token: &str,
        claims: &Claims<'_>,
    ) -> Result<bool, String> {
        let (node, provider_id) = (claims.node, claims.provider_id);
        let (record, _) = store.load(token).await.map_err(|e| e.to_string())?;
        let labels = Labels(
            record.values["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default(),
        );
        let (_, restricted) = labels.split_by_class();
        let (slot, used) = self.joined_through(store, token, claims).await?;
        let registered = self.cfg.kube.node(node).await.map_err(|e| e.to_string())?;
        let registered = registered.ok_or("the Node is not registered yet")?;
        if provider_id.is_some() && registered.spec.provider_id.as_deref() != provider_id {
            return Err("the Node's providerID does not match the report".into());
        }
        let ops = label_and_untaint_ops(&restricted, &registered.spec.taints);
        if !ops.is_empty() {
            let path = crate::client::kube::paths::node(node);
            self.cfg
                .kube
                .json_patch(&path, &Value::Array(ops))
                .await
                .map_err(|e| e.to_string())?;
            self.metrics.labels_applied(restricted.0.len());
            tracing::info!(node = %node, labels = %restricted.to_flag_value(), "applied restricted labels");
        }
        store
            .record_node(token, slot, used, node)
            .await
            .map_err(|e| format!("recording the node: {e}"))?;
        Ok(!restricted.is_empty())
    }
}

/// The answer to a token that cannot be used (404 unknown, 410 expired or used up, 503 when
/// the cluster cannot be asked).
fn refusal(short: &str, peer: SocketAddr, e: &StoreError) -> Response<Body> {
    match e {
        StoreError::Unknown | StoreError::Expired | StoreError::UsedUp => {
            tracing::info!(token = short, peer = %peer.ip(), "openapi token refused: {e}");
            let status = if matches!(e, StoreError::Unknown) {
                404
            } else {
                410
            };
            error(status, &e.to_string())
        }
        _ => {
            tracing::warn!(token = short, "openapi token lookup failed: {e}");
            error(503, "the values service cannot reach the cluster")
        }
    }
}

/// ACK's `node_info` text form of the values.
fn ack_text(values: &Value, minted: &BootstrapToken, callback: &str) -> String {
    let mut text = format!(
        "token={}\nendpoint={}\ncallback_url={callback}\n",
        minted.expose_full().expose(),
        values["apiServerEndpoints"][0].as_str().unwrap_or_default()
    );
    if let Some(dns) = values["clusterDNS"][0].as_str() {
        text.push_str(&format!("cluster_dns={dns}\n"));
    }
    if let Some(mode) = values["nodeNameMode"].as_str() {
        text.push_str(&format!("name_mode={mode}\n"));
    }
    if values["runtime"]["name"] == "docker" {
        if let Some(v) = values["runtime"]["version"].as_str() {
            text.push_str(&format!("docker_version={v}\n"));
        }
    }
    text
}

/// One JSON Patch: the restricted labels added and the startup taint removed together, so no
/// pod is scheduled on the node between the two. The taint's removal is guarded by a `test`
/// of the taint at its index (the list may have changed since it was read: the patch then
/// fails and the callback's caller may report again).
fn label_and_untaint_ops(
    labels: &Labels,
    taints: &[crate::client::kube::objects::NodeTaint],
) -> Vec<Value> {
    let pointer = |key: &str| key.replace('~', "~0").replace('/', "~1");
    let mut ops: Vec<Value> = labels
        .0
        .iter()
        .map(|(k, v)| json!({"op": "add", "path": format!("/metadata/labels/{}", pointer(k)), "value": v}))
        .collect();
    let startup = crate::model::validate::STARTUP_TAINT_KEY;
    if let Some(i) = taints.iter().position(|t| t.key == startup) {
        let at = format!("/spec/taints/{i}");
        ops.push(json!({"op": "test", "path": format!("{at}/key"), "value": startup}));
        ops.push(json!({"op": "remove", "path": at}));
    }
    ops
}

/// The subject CN of a CSR's request (PEM, base64).
fn csr_common_name(request: &str) -> Option<String> {
    use base64::Engine;
    use rustls::pki_types::pem::PemObject;
    use x509_parser::prelude::FromDer;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(request)
        .ok()?;
    let der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(&pem).ok()?;
    let (_, req) =
        x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
            .ok()?;
    let cn = req
        .certification_request_info
        .subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(cn)
}

/// Serves until SIGTERM/SIGINT. Prints `listening on ADDR` on stdout once bound.
pub async fn run(
    cfg: ServeConfig,
    listen: SocketAddr,
    tls: rustls::ServerConfig,
) -> Result<(), String> {
    let changes = crate::operator::bootstrap_tokens::ensure_cluster_rbac(
        &cfg.kube,
        &[crate::operator::bootstrap_tokens::DEFAULT_GROUP.into()],
    )
    .await
    .map_err(|e| e.to_string())?;
    for c in changes {
        tracing::info!("RBAC: {c}");
    }
    let (version, _) = cfg.kube.version().await.map_err(|e| e.to_string())?;
    let csr_api = crate::model::compat::csr_api_version(&version);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("listen on {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening on {addr}");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let per_minute = f64::from(cfg.rate_per_minute.max(1));
    let connections = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections.max(1)));
    let service = Arc::new(Service {
        csr_api,
        cfg,
        limiter: Limiter::new(per_minute, MAX_BUCKETS),
        metrics: metrics::Metrics::default(),
        slots: store::Slots::default(),
        answers: Mutex::new(Answers::default()),
        signatures: signatures::Signatures::default(),
    });
    let follower = service.clone();
    tokio::spawn(async move { follower.signatures.follow(&follower.cfg.kube).await });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    loop {
        let (tcp, peer) = tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
            a = listener.accept() => match a {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors (EMFILE) or memory: accepting again at once
                    // would spin on the same error.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
        };
        // Taken here, in the order connections came; one beyond the bound waits in its task.
        let permit = connections.clone().try_acquire_owned().ok();
        let (acceptor, service) = (acceptor.clone(), service.clone());
        let connections = connections.clone();
        tokio::spawn(async move {
            let _permit = match permit {
                Some(p) => p,
                None => {
                    match tokio::time::timeout(CONNECTION_WAIT, connections.acquire_owned()).await {
                        Ok(Ok(p)) => p,
                        _ => {
                            tracing::warn!(peer = %peer.ip(), "too many connections: closed one");
                            return;
                        }
                    }
                }
            };
            connection(service, &acceptor, tcp, peer).await;
        });
    }
}

/// The pause after a failed accept (hyper's own server pauses a second on EMFILE).
const ACCEPT_PAUSE: Duration = Duration::from_millis(200);

/// Serves one connection: its TLS handshake (10 s at most), then its requests, for at most
/// [`CONNECTION_LIFETIME`].
async fn connection(
    service: Arc<Service>,
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
    else {
        return;
    };
    let caller: Option<Arc<str>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(identity::node_of)
        .map(Arc::from);
    let io = hyper_util::rt::TokioIo::new(tls);
    let svc = hyper::service::service_fn(move |req| {
        let (service, caller) = (service.clone(), caller.clone());
        async move {
            // In a task of its own: a caller that stops waiting (a client timeout under
            // load) does not cancel work half done, such as a use taken whose answer a
            // retry of the same request then gets.
            let work =
                tokio::spawn(
                    async move { service.serve_counted(req, peer, caller.as_deref()).await },
                );
            let answer = work
                .await
                .unwrap_or_else(|_| error(500, "the request's handler failed"));
            Ok::<_, std::convert::Infallible>(answer)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(io, svc);
    let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn the_rate_limit_keys_ipv6_by_its_64_and_ipv4_mapped_by_its_address() {
        let limiter = Limiter::new(2.0, MAX_BUCKETS);
        let now = Instant::now();
        assert!(limiter.allow_at(ip("2001:db8:1:2::1"), now));
        assert!(limiter.allow_at(ip("2001:db8:1:2::2"), now));
        assert!(
            !limiter.allow_at(ip("2001:db8:1:2:ffff::3"), now),
            "a fresh bucket for another address of the same /64"
        );
        assert!(limiter.allow_at(ip("2001:db8:1:3::1"), now));
        assert!(limiter.allow_at(ip("::ffff:10.0.0.1"), now));
        assert!(limiter.allow_at(ip("::ffff:10.0.0.1"), now));
        assert!(
            !limiter.allow_at(ip("10.0.0.1"), now),
            "mapped and plain IPv4 differ"
        );
        assert!(limiter.allow_at(ip("::ffff:10.0.0.2"), now));
    }

    /// A body whose next frame never comes (a client that stopped sending).
    struct Stalled;

    impl hyper::body::Body for Stalled {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
            std::task::Poll::Pending
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_report_body_that_does_not_arrive_in_time_is_refused() {
        let read = report_body(Stalled, Duration::from_millis(50));
        let refused = tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the body's read has no deadline")
            .expect_err("no body came");
        assert_eq!(refused.status(), 408);
        assert_eq!(refused.headers()["connection"], "close");
        let whole = report_body(Full::new(Bytes::from_static(b"{}")), BODY_READ_TIMEOUT);
        assert_eq!(whole.await.expect("read"), Bytes::from_static(b"{}"));
    }

    #[test]
    fn a_values_answer_expires_after_ten_minutes() {
        let mut answers = Answers::default();
        let t0 = Instant::now();
        let first = answers.get("t:a".into(), t0);
        first
            .set((None, Bytes::from_static(b"values")))
            .expect("set");
        let again = answers.get("t:a".into(), t0 + Duration::from_secs(599));
        assert!(Arc::ptr_eq(&first, &again), "a retry within 10 minutes");
        let later = answers.get("t:a".into(), t0 + ANSWER_TTL);
        assert!(
            later.get().is_none(),
            "an answer older than 10 minutes was given"
        );
        // Others that old are dropped, not kept until the map is large.
        answers.get("t:b".into(), t0 + Duration::from_secs(60));
        answers.get("t:c".into(), t0 + ANSWER_TTL + Duration::from_secs(120));
        assert_eq!(answers.by_key.len(), 2, "t:b expired and was kept");
    }

    #[test]
    fn a_full_rate_limit_forgets_its_least_recently_used_client_only() {
        let limiter = Limiter::new(1.0, 3);
        let now = Instant::now();
        for c in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
            assert!(limiter.allow_at(ip(c), now));
        }
        // 10.0.0.1 asks again (refused): 10.0.0.2 is now the least recently used.
        assert!(!limiter.allow_at(ip("10.0.0.1"), now));
        assert!(limiter.allow_at(ip("10.0.0.4"), now));
        assert!(!limiter.allow_at(ip("10.0.0.1"), now), "everyone was reset");
        assert!(!limiter.allow_at(ip("10.0.0.3"), now), "everyone was reset");
        assert!(!limiter.allow_at(ip("10.0.0.4"), now));
        assert_eq!(limiter.buckets.lock().expect("lock").by_key.len(), 3);
        // The evicted client starts again with a fresh bucket (as after a minute idle).
        assert!(limiter.allow_at(ip("10.0.0.2"), now));
    }
}
