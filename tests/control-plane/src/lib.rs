//! A test stand-in for kube-apiserver (with the controllers node joining depends on) and for the
//! control plane's values-by-openapi-token service. It exists because no kube-apiserver binary
//! can be installed on these machines; it is never shipped in node-attach.
//!
//! It behaves like the real thing for every endpoint node-attach uses, and is checked against
//! the real `kubectl`:
//!
//! * HTTPS with its own CA (generated per run); client certificates (CN = user, O = groups),
//!   bootstrap tokens from `bootstrap-token-<id>` Secrets (expiry, usages, extra groups) and
//!   anonymous requests are authenticated as kube-apiserver does;
//! * authorization is the Node authorizer plus RBAC evaluated over the stored Roles and
//!   Bindings, seeded with the API server's bootstrap policy and what `kubeadm init` creates;
//! * `/version`, `/healthz`, discovery (`/api`, `/apis`, resource lists), ConfigMaps, Secrets,
//!   Nodes (with NodeRestriction), Namespaces, RBAC objects and CertificateSigningRequests
//!   (create, get, list, watch, approval) with `Status` errors and `Table` output for kubectl;
//! * the bootstrap signer keeps `jws-kubeconfig-<id>` in cluster-info for every valid signing
//!   token (after an optional delay), and the CSR approver and signer approve kubelet client
//!   CSRs exactly when a SubjectAccessReview on `certificatesigningrequests/nodeclient` (or
//!   `selfnodeclient`) allows it, then sign them with the cluster CA;
//! * faults can be switched on to test refusals (tampered or re-serialized cluster-info, wrong
//!   kid, `alg: none`, oversized bodies, a serving certificate from another CA, redirects,
//!   scripted failures of the values endpoint, API answers of exact bytes, crafted CSR
//!   replies).

pub mod api;
pub mod auth;
pub mod bench;
pub mod controllers;
pub mod ess;
#[cfg(test)]
mod gate_tests;
pub mod metadata;
pub mod pki;
pub mod seed;
pub mod server;
pub mod store;
pub mod version;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use store::{Key, Kind, Store};

/// How the stand-in starts.
#[derive(Clone, Debug)]
pub struct Options {
    /// The release played: `gitVersion` reported by `/version`, and everything that differs by
    /// version (APIs served, CSR approval and signing, kubeadm's seeded objects) follows it as
    /// upstream does; see [`version::Release`].
    pub kubernetes_version: String,
    /// Address to listen on (port 0 picks one).
    pub listen: SocketAddr,
    /// Extra names or IPs for the serving certificate, and the address put into cluster-info
    /// (the first one, when given).
    pub advertise: Vec<String>,
    /// How long a new signing token waits before the signer adds its JWS.
    pub signing_delay: Duration,
    /// Seed kubeadm's bootstrap RBAC bindings.
    pub kubeadm_rbac: bool,
    /// kubeadm feature gates written into the seeded ClusterConfiguration's `featureGates`
    /// (e.g. `UnversionedKubeletConfigMap`, which names the kubelet ConfigMap on 1.23 and 1.24).
    pub kubeadm_feature_gates: Vec<(String, bool)>,
    /// Cluster DNS in the seeded kubelet-config.
    pub cluster_dns: String,
    /// A directory served read-only at `/files/` (the e2e test's installer, binaries, digests).
    pub files_dir: Option<std::path::PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            kubernetes_version: "v1.31.2".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: Vec::new(),
            signing_delay: Duration::ZERO,
            kubeadm_rbac: true,
            kubeadm_feature_gates: Vec::new(),
            cluster_dns: "10.96.0.10".into(),
            files_dir: None,
        }
    }
}

impl Options {
    /// The release played.
    pub fn release(&self) -> version::Release {
        version::Release::parse(&self.kubernetes_version)
    }

    /// The `UnversionedKubeletConfigMap` value of [`Options::kubeadm_feature_gates`], if set.
    pub fn unversioned_kubelet_config_gate(&self) -> Option<bool> {
        self.kubeadm_feature_gates
            .iter()
            .find(|(name, _)| name == "UnversionedKubeletConfigMap")
            .map(|(_, on)| *on)
    }

    /// The kubelet ConfigMap (and, prefixed `kubeadm:`, its Role) the seeded cluster has.
    pub fn kubelet_config_name(&self) -> String {
        self.release()
            .kubelet_config_name(self.unversioned_kubelet_config_gate())
    }
}

/// How the CSR approver behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Approval {
    /// As kube-controller-manager: approve when the SubjectAccessReview allows.
    Auto,
    /// Never approve (nobody is approving).
    Pending,
    /// Deny every kubelet client CSR.
    Deny,
}

/// How cluster-info is served.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum ClusterInfoFault {
    /// As stored.
    #[default]
    None,
    /// The kubeconfig is altered after signing (another server URL).
    Tamper,
    /// The kubeconfig is re-serialized (a `preferences: {}` line added), signatures kept.
    Reserialize,
    /// Each signature is replaced by one made for another token id.
    WrongKid,
    /// Each signature is replaced by an unsigned `alg: none` JWS.
    AlgNone,
    /// A body of more than 2 MiB.
    Oversized,
    /// A 302 redirect to this URL.
    Redirect(String),
}

/// A canned answer of the values endpoint.
#[derive(Clone, Debug)]
pub struct Scripted {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After` header value.
    pub retry_after: Option<String>,
    /// Body.
    pub body: String,
}

/// How one API answer goes wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiFaultKind {
    /// This status (with `Retry-After` seconds, if given), before the request is handled.
    Status(u16, Option<u64>),
    /// This status with this message in its Status body (a server echoing what it was sent).
    Echo(u16, String),
    /// The request is handled, then the answer stops halfway though its Content-Length
    /// promised more (a connection reset mid-body).
    CutShort,
    /// The request is handled, then half its JSON is sent as a complete chunked answer.
    TruncatedJson,
    /// This status and exactly these bytes as a JSON answer, before the request is handled (a
    /// crafted or hostile answer: duplicate keys, deep nesting, a forged object).
    Body(u16, String),
    /// 200 and a stream that stays open and silent, before the request is handled: a watch
    /// whose connection a NAT or a load balancer dropped without a word.
    Stall,
}

/// A fault for the next request whose method and path match.
#[derive(Clone, Debug)]
pub struct ApiFault {
    /// Method, e.g. GET.
    pub method: String,
    /// A substring of the path.
    pub path_contains: String,
    /// A substring the query must contain (empty: any).
    pub query_contains: String,
    /// What goes wrong.
    pub kind: ApiFaultKind,
}

/// What the CSR signer puts into an approved kubelet client CSR (crafted replies for hostile
/// tests; the approver still decides as configured by [`Approval`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CsrReply {
    /// As kube-controller-manager: a certificate for the request, from the cluster CA.
    #[default]
    Sign,
    /// A `Failed` condition (`SignerValidationFailure`) instead of a certificate.
    Failed,
    /// A certificate from the cluster CA with the request's subject, for another key.
    OtherKey,
    /// A certificate from the cluster CA for the request's key, naming another node.
    OtherName,
    /// A certificate for the request, signed by a CA nobody trusts.
    OtherCa,
    /// `status.certificate` holds bytes that are no certificate.
    Garbage,
}

/// Switchable misbehaviour.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Faults for API requests, each used once, in order.
    pub api: VecDeque<ApiFault>,
    /// cluster-info.
    pub cluster_info: ClusterInfoFault,
    /// Serve TLS with a certificate from another CA.
    pub foreign_serving_cert: bool,
    /// Serve the foreign certificate from the handshake after this many (a certificate
    /// swapped mid-join: discovery's handshakes pass, later ones do not).
    pub foreign_serving_cert_after: Option<usize>,
    /// Close every connection after one response and offer no TLS session resumption (as a
    /// balancer that keeps no connection alive and spreads handshakes over backends): each
    /// request then makes a full handshake of its own.
    pub close_connections: bool,
    /// Shed load until this instant: each API request is answered, before it is handled,
    /// 429 with `Retry-After: 1` or 503, alternately (an overloaded control plane's first
    /// seconds). The values and callback endpoints are not shed.
    pub shed_until: Option<std::time::Instant>,
    /// How many requests were shed.
    pub shed: usize,
    /// Answers the values endpoint gives before answering normally.
    pub values_script: VecDeque<Scripted>,
    /// Redirect the values endpoint to this URL.
    pub values_redirect: Option<String>,
    /// What the CSR signer issues.
    pub csr_reply: CsrReply,
    /// Every answer's `Date` this many seconds from now (a control plane whose clock is off,
    /// or a node's): the join's clock check reads it.
    pub clock_offset: Option<i64>,
}

/// One openapi token's values.
#[derive(Clone, Debug)]
pub struct ValuesEntry {
    /// JSON values document (served at `/v1/values/{token}`).
    pub json: Value,
    /// ACK key=value text (served at `/token/{token}/instance/{id}/node_info`).
    pub ack_text: String,
}

/// A request, as logged.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// Method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Query string.
    pub query: String,
    /// Authenticated user name.
    pub user: String,
    /// Response status.
    pub status: u16,
    /// `User-Agent` header.
    pub user_agent: String,
    /// `Content-Type` header.
    pub content_type: String,
    /// Request body (UTF-8, lossy).
    pub body: String,
    /// Response body (UTF-8, lossy); empty for watch streams.
    pub response: String,
}

/// A callback a node posted.
#[derive(Clone, Debug)]
pub struct Callback {
    /// The path it was posted to.
    pub path: String,
    /// The body.
    pub body: String,
}

/// Mutable state.
pub struct State {
    /// API objects.
    pub store: Store,
    /// Faults in force.
    pub faults: Faults,
    /// CSR approver behaviour.
    pub approval: Approval,
    /// Request log.
    pub requests: Vec<RequestRecord>,
    /// Values by openapi token.
    pub values: BTreeMap<String, ValuesEntry>,
    /// Callbacks received.
    pub callbacks: Vec<Callback>,
    /// When each token id was first seen by the signer.
    pub token_seen: BTreeMap<String, std::time::Instant>,
}

/// Everything the server tasks share.
pub struct Shared {
    /// Mutable state.
    pub state: Mutex<State>,
    /// The cluster CA.
    pub ca: pki::Ca,
    /// A CA nobody trusts, for the foreign-certificate fault.
    pub foreign_ca: pki::Ca,
    /// Start-up options.
    pub options: Options,
    /// The release played, from `options.kubernetes_version`.
    pub release: version::Release,
    /// The URL clients use (`https://127.0.0.1:port` or the advertised address).
    pub url: String,
}

impl Shared {
    /// Locks the state.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running stand-in; stops when dropped.
pub struct TestControlPlane {
    shared: Arc<Shared>,
    addr: SocketAddr,
    admin: pki::Issued,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Decoded `data` (and `stringData`) of a Secret.
pub fn secret_data(obj: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(d) = obj["data"].as_object() {
        for (k, v) in d {
            if let Some(bytes) = v.as_str().and_then(|s| STANDARD.decode(s).ok()) {
                out.insert(k.clone(), String::from_utf8_lossy(&bytes).into_owned());
            }
        }
    }
    if let Some(d) = obj["stringData"].as_object() {
        for (k, v) in d {
            if let Some(s) = v.as_str() {
                out.insert(k.clone(), s.to_owned());
            }
        }
    }
    out
}

/// Whether a bootstrap token's `expiration` has passed (an unparsable value counts as expired).
pub fn token_expired(data: &BTreeMap<String, String>) -> bool {
    match data.get("expiration") {
        None => false,
        Some(text) => {
            match time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            {
                Ok(when) => when <= time::OffsetDateTime::now_utc(),
                Err(_) => true,
            }
        }
    }
}

/// A bootstrap token to create.
#[derive(Clone, Debug)]
pub struct TokenSpec {
    /// `id.secret`.
    pub token: String,
    /// Time to live (None: never expires).
    pub ttl: Option<Duration>,
    /// Usages (default: signing, authentication).
    pub usages: Vec<&'static str>,
    /// Extra groups (default: kubeadm's default-node-token group).
    pub groups: Vec<String>,
}

impl TokenSpec {
    /// A kubeadm-default token with this value.
    pub fn new(token: &str) -> TokenSpec {
        TokenSpec {
            token: token.into(),
            ttl: Some(Duration::from_secs(24 * 3600)),
            usages: vec!["signing", "authentication"],
            groups: vec![seed::BOOTSTRAP_GROUP.into()],
        }
    }
}

impl TestControlPlane {
    /// Starts the stand-in on a thread of its own.
    pub fn start(options: Options) -> TestControlPlane {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener =
            std::net::TcpListener::bind(options.listen).expect("bind the test control plane");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let host = options
            .advertise
            .first()
            .cloned()
            .unwrap_or_else(|| addr.ip().to_string());
        let host = match host.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => host,
        };
        let url = format!("https://{host}:{}", addr.port());
        let ca = pki::Ca::new("kubernetes");
        let foreign_ca = pki::Ca::new("kubernetes");
        let mut store = Store::new();
        seed::seed(&mut store, &options, &url, ca.cert_pem());
        let admin = ca.issue_client(
            "kubernetes-admin",
            &["system:masters"],
            time::Duration::days(365),
        );
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                store,
                faults: Faults::default(),
                approval: Approval::Auto,
                requests: Vec::new(),
                values: BTreeMap::new(),
                callbacks: Vec::new(),
                token_seen: BTreeMap::new(),
            }),
            ca,
            foreign_ca,
            release: options.release(),
            options,
            url,
        });
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("test-control-plane".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    controllers::spawn(thread_shared.clone());
                    server::serve(thread_shared, listener, rx).await;
                });
            })
            .expect("spawn the test control plane");
        TestControlPlane {
            shared,
            addr,
            admin,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// The shared state, for direct inspection.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// `https://host:port` as put in cluster-info.
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// `127.0.0.1:port`, for `--endpoint`.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The cluster CA, PEM.
    pub fn ca_pem(&self) -> String {
        self.shared.ca.cert_pem().to_owned()
    }

    /// The cluster CA's pin, `sha256:<hex>`.
    pub fn ca_pin(&self) -> String {
        self.shared.ca.pin()
    }

    /// The pin of a CA that is not this cluster's.
    pub fn foreign_pin(&self) -> String {
        self.shared.foreign_ca.pin()
    }

    /// An admin kubeconfig (client certificate in system:masters).
    pub fn admin_kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: {}\n  name: test\ncontexts:\n- context:\n    cluster: test\n    user: admin\n  name: admin@test\ncurrent-context: admin@test\nusers:\n- name: admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
            STANDARD.encode(self.shared.ca.cert_pem()),
            self.shared.url,
            STANDARD.encode(&self.admin.cert_pem),
            STANDARD.encode(&self.admin.key_pem),
        )
    }

    /// Issues a serving certificate signed by the cluster CA (for test services).
    pub fn issue_server(&self, names: &[String]) -> pki::Issued {
        self.shared.ca.issue_server(names)
    }

    /// Issues a client certificate signed by the cluster CA.
    pub fn issue_client(&self, user: &str, groups: &[&str]) -> pki::Issued {
        self.shared
            .ca
            .issue_client(user, groups, time::Duration::days(1))
    }

    /// Creates a bootstrap-token Secret exactly as kubeadm writes it.
    pub fn create_token(&self, spec: &TokenSpec) {
        let (id, secret) = spec.token.split_once('.').expect("token id.secret");
        let mut data = BTreeMap::new();
        data.insert("token-id".to_owned(), id.to_owned());
        data.insert("token-secret".to_owned(), secret.to_owned());
        if let Some(ttl) = spec.ttl {
            let when = time::OffsetDateTime::now_utc() + ttl;
            data.insert(
                "expiration".into(),
                when.replace_nanosecond(0)
                    .expect("seconds")
                    .format(&time::format_description::well_known::Rfc3339)
                    .expect("format"),
            );
        }
        for u in &spec.usages {
            data.insert(format!("usage-bootstrap-{u}"), "true".into());
        }
        if !spec.groups.is_empty() {
            data.insert("auth-extra-groups".into(), spec.groups.join(","));
        }
        let encoded: serde_json::Map<String, Value> = data
            .into_iter()
            .map(|(k, v)| (k, json!(STANDARD.encode(v))))
            .collect();
        let name = format!("bootstrap-token-{id}");
        self.shared.lock().store.put(
            Key::new(Kind::Secret, "kube-system", &name),
            json!({"metadata": {"name": name, "namespace": "kube-system"},
                   "type": "bootstrap.kubernetes.io/token", "data": encoded}),
        );
    }

    /// Waits until cluster-info carries a signature for `token_id`.
    pub fn wait_signed(&self, token_id: &str, timeout: Duration) -> bool {
        self.wait_signature(token_id, true, timeout)
    }

    /// Waits until the bootstrap signer has removed the token's signature (it does so
    /// asynchronously after the token Secret is deleted, as the real one does).
    pub fn wait_unsigned(&self, token_id: &str, timeout: Duration) -> bool {
        self.wait_signature(token_id, false, timeout)
    }

    fn wait_signature(&self, token_id: &str, present: bool, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let signed = self
                .get(Kind::ConfigMap, "kube-public", "cluster-info")
                .is_some_and(|cm| !cm["data"][format!("jws-kubeconfig-{token_id}")].is_null());
            if signed == present {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One stored object.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        self.shared
            .lock()
            .store
            .get(&Key::new(kind, namespace, name))
            .cloned()
    }

    /// All stored objects of a kind.
    pub fn list(&self, kind: Kind) -> Vec<Value> {
        self.shared
            .lock()
            .store
            .list(kind, None)
            .into_iter()
            .cloned()
            .collect()
    }

    /// Creates or replaces an object.
    pub fn put(&self, kind: Kind, namespace: &str, name: &str, obj: Value) {
        self.shared
            .lock()
            .store
            .put(Key::new(kind, namespace, name), obj);
    }

    /// Deletes an object, if present.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) {
        let _ = self
            .shared
            .lock()
            .store
            .delete(&Key::new(kind, namespace, name));
    }

    /// Changes the faults in force.
    pub fn set_faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.shared.lock().faults);
    }

    /// Changes how CSRs are approved.
    pub fn set_approval(&self, approval: Approval) {
        self.shared.lock().approval = approval;
    }

    /// Registers values under an openapi token.
    pub fn add_values(&self, openapi_token: &str, entry: ValuesEntry) {
        self.shared
            .lock()
            .values
            .insert(openapi_token.into(), entry);
    }

    /// The request log so far.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests.clone()
    }

    /// How many requests are logged so far.
    pub fn request_count(&self) -> usize {
        self.shared.lock().requests.len()
    }

    /// The requests logged after the first `skip`, without their bodies.
    pub fn requests_since(&self, skip: usize) -> Vec<RequestRecord> {
        let state = self.shared.lock();
        state.requests[skip.min(state.requests.len())..]
            .iter()
            .map(|r| RequestRecord {
                body: String::new(),
                response: String::new(),
                ..r.clone()
            })
            .collect()
    }

    /// Callbacks received so far.
    pub fn callbacks(&self) -> Vec<Callback> {
        self.shared.lock().callbacks.clone()
    }
}

impl Drop for TestControlPlane {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
