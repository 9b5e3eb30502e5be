//! Trusted discovery of the API server, exactly as `kubeadm join` token discovery does it
//! (kubernetes/kubernetes `cmd/kubeadm/app/discovery/token/token.go`).
//!
//! 1. Read `kube-public/cluster-info` anonymously over TLS that verifies nothing, polling
//!    (bounded) while the `jws-kubeconfig-<token id>` key is missing, since the bootstrap signer
//!    adds it some time after the token appears.
//! 2. Verify the detached JWS over the stored kubeconfig bytes, never re-serialized, with the
//!    token secret ([`crate::trust::jws`]).
//! 3. Pin the CA: some certificate in the kubeconfig's CA bundle must match a
//!    `--discovery-token-ca-cert-hash` ([`crate::trust::pin`]). Without pins, refuse unless the caller
//!    explicitly chose to skip CA verification.
//! 4. Verify the certificate chain of the connection that carried cluster-info against the
//!    pinned CA, as a connection trusting only that CA would ([`tls::Deferred`]). kubeadm reads
//!    cluster-info a second time over such a connection and requires the same bytes; checking
//!    the first connection after the fact proves the same (the server holds a key the pinned CA
//!    certified, and served these bytes) in one request, and on the very session that carried
//!    them. When that chain does not verify (a balancer whose backends differ, say), cluster-info
//!    is read again over a new pinned connection and must be the same bytes, as kubeadm does.
//!
//! Only then is the API server (the `server:` inside cluster-info) trusted. The verified client
//! is handed on ([`Discovered::http`]), so the join's next requests reuse its connection.
//!
//! **Beyond kubeadm, on purpose.** kubeadm trusts the whole CA bundle of cluster-info once one
//! certificate in it matches a pin. Anyone holding a bootstrap token can publish a cluster-info
//! signed with it, so a bundle of the real CA plus one of their own would pass and their CA would
//! be trusted for every later call and written for the kubelet. node-attach trusts only the
//! certificates whose public key a pin names: for the pinned re-fetch, every API call after it,
//! and the `ca.crt` the kubelet gets. It refuses a pinned certificate that is expired, not yet
//! valid or not a CA ([`DiscoveryError::PinnedCaInvalid`]), and a `server:` URL that is not
//! https or carries credentials. A serving certificate that stops chaining to the pinned CA
//! later in the join is reported as a trust failure (`trust.server-changed`), never as
//! "unreachable".

use crate::client::http::{
    retry, Http, HttpError, Limits, Request, RetryError, RetryPolicy, Retryable, ServerClock,
    Target,
};
use crate::error::{Code, Coded};
use crate::model::kubeconfig::Kubeconfig;
use crate::model::token::BootstrapToken;
use crate::model::validate::Endpoint;
use crate::trust::jws;
use crate::trust::pin::{certificates_from_pem, CaPin, PinSet};
use crate::trust::tls;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// The path of cluster-info on any API server.
pub const CLUSTER_INFO_PATH: &str = "/api/v1/namespaces/kube-public/configmaps/cluster-info";
/// The ConfigMap key holding the kubeconfig.
pub const KUBECONFIG_KEY: &str = "kubeconfig";
/// The prefix of the per-token signature keys.
pub const JWS_KEY_PREFIX: &str = "jws-kubeconfig-";

/// What discovery needs.
#[derive(Clone, Debug)]
pub struct DiscoveryRequest {
    /// The endpoint to read cluster-info from.
    pub endpoint: Endpoint,
    /// The bootstrap token.
    pub token: BootstrapToken,
    /// Accepted CA pins.
    pub pins: PinSet,
    /// `--discovery-token-unsafe-skip-ca-verification`.
    pub unsafe_skip_ca_verification: bool,
    /// How long to keep polling (kubeadm's default is 5 minutes).
    pub timeout: Duration,
    /// Per-request limits.
    pub limits: Limits,
}

/// The outcome of a successful discovery.
#[derive(Clone, Debug, Serialize)]
pub struct Discovered {
    /// The endpoint that was queried.
    pub endpoint: Endpoint,
    /// The API server URL from inside cluster-info (what the kubelet will use).
    pub api_server: String,
    /// The pin of the CA certificate that matched (absent when verification was skipped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_pin: Option<CaPin>,
    /// The pins of every certificate in the CA bundle.
    pub ca_bundle_pins: Vec<CaPin>,
    /// Whether the CA was pinned and the TLS re-fetch succeeded.
    pub ca_verified: bool,
    /// The trusted CA certificates (PEM: only the pinned ones), to write as
    /// `/etc/kubernetes/pki/ca.crt`.
    #[serde(skip)]
    pub ca_pem: Vec<u8>,
    /// The trusted CA certificates (DER), for TLS configurations.
    #[serde(skip)]
    pub ca_ders: Vec<Vec<u8>>,
    /// An HTTP client that trusts exactly [`Discovered::ca_ders`], whose pool may hold the
    /// verified connection discovery used (None when that connection could not be verified).
    #[serde(skip)]
    pub http: Option<Http>,
    /// The API server's clock from its answer to cluster-info (its `Date`), only when the
    /// connection that carried the answer verified against the trusted CA: the join's clock
    /// check needs no request of its own.
    #[serde(skip)]
    pub server_clock: Option<ServerClock>,
}

/// Why discovery failed. Each has its own code and exit status.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// No pins and no explicit opt-out.
    #[error("refusing to trust the API server without a CA pin: no --discovery-token-ca-cert-hash was given")]
    NoPins,
    /// The endpoint could not be reached before the timeout.
    #[error("cannot reach the API server at {endpoint} to read cluster-info: {source}")]
    Unreachable {
        /// The endpoint.
        endpoint: Endpoint,
        /// The last error.
        source: Box<RetryError<HttpError>>,
    },
    /// cluster-info is missing or not readable anonymously.
    #[error("cluster-info is not available from {endpoint}: {source}")]
    NoClusterInfo {
        /// The endpoint.
        endpoint: Endpoint,
        /// The last error.
        source: Box<RetryError<HttpError>>,
    },
    /// No JWS for this token id appeared before the timeout.
    #[error("token id {token_id:?} is invalid for this cluster or it has expired: cluster-info carries no signature {JWS_KEY_PREFIX}{token_id} (waited {waited:?})")]
    TokenNotSigning {
        /// The token id (public).
        token_id: String,
        /// How long we waited.
        waited: Duration,
    },
    /// The JWS does not verify.
    #[error("failed to verify the JWS signature of cluster-info for token id {token_id:?}: can't trust this API server")]
    SignatureMismatch {
        /// The token id.
        token_id: String,
    },
    /// cluster-info or its kubeconfig is malformed.
    #[error("cluster-info from {endpoint} is malformed: {reason}")]
    Malformed {
        /// The endpoint.
        endpoint: Endpoint,
        /// What is wrong.
        reason: String,
    },
    /// No CA certificate matches the pins.
    #[error("none of the cluster's CA certificates matches the given pins: the CA bundle pins to {found}, expected one of {expected}")]
    PinMismatch {
        /// Pins of the certificates found.
        found: PinList,
        /// Pins given.
        expected: PinList,
    },
    /// The certificate a pin names cannot serve as the cluster CA.
    #[error("the pinned CA certificate ({pin}) cannot be trusted: {reason}")]
    PinnedCaInvalid {
        /// Its pin.
        pin: CaPin,
        /// Why.
        reason: String,
    },
    /// The TLS re-fetch that trusts only the pinned CA failed.
    #[error("the API server at {endpoint} does not present a certificate issued by the pinned cluster CA: {source}")]
    PinnedTls {
        /// The endpoint.
        endpoint: Endpoint,
        /// The TLS error.
        source: HttpError,
    },
    /// The pinned re-fetch returned different bytes.
    #[error("cluster-info changed between the unverified and the pinned fetch from {endpoint}")]
    Changed {
        /// The endpoint.
        endpoint: Endpoint,
    },
}

/// Pins, printed comma-separated.
#[derive(Debug)]
pub struct PinList(pub Vec<CaPin>);

impl fmt::Display for PinList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&text.join(", "))
    }
}

impl Coded for DiscoveryError {
    fn code(&self) -> Code {
        match self {
            DiscoveryError::NoPins => Code::DiscoveryNoPins,
            DiscoveryError::Unreachable { .. } => Code::DiscoveryUnreachable,
            DiscoveryError::NoClusterInfo { .. } => Code::DiscoveryNoClusterInfo,
            DiscoveryError::TokenNotSigning { .. } => Code::DiscoveryTokenNotSigning,
            DiscoveryError::SignatureMismatch { .. } => Code::DiscoverySignatureMismatch,
            DiscoveryError::Malformed { .. } => Code::DiscoveryMalformed,
            DiscoveryError::PinMismatch { .. } => Code::DiscoveryPinMismatch,
            DiscoveryError::PinnedCaInvalid { .. } => Code::DiscoveryPinnedCaInvalid,
            DiscoveryError::PinnedTls { .. } => Code::DiscoveryPinnedTls,
            DiscoveryError::Changed { .. } => Code::DiscoveryChanged,
        }
    }

    fn network_cause(&self) -> Option<crate::model::cause::Cause> {
        match self {
            DiscoveryError::Unreachable { source, .. }
            | DiscoveryError::NoClusterInfo { source, .. } => Some(source.inner().cause()),
            DiscoveryError::PinnedTls { .. } | DiscoveryError::Changed { .. } => {
                Some(crate::model::cause::Cause::Tls)
            }
            DiscoveryError::TokenNotSigning { .. } => {
                Some(crate::model::cause::Cause::Unauthorized)
            }
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct ConfigMap {
    #[serde(default)]
    data: BTreeMap<String, String>,
}

/// One poll's failure.
#[derive(Debug)]
enum PollError {
    Http(HttpError),
    MissingSignature,
    Malformed(String),
}

impl fmt::Display for PollError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PollError::Http(e) => e.fmt(f),
            PollError::MissingSignature => {
                f.write_str("cluster-info has no signature for this token yet")
            }
            PollError::Malformed(r) => f.write_str(r),
        }
    }
}

impl Retryable for PollError {
    fn is_transient(&self) -> bool {
        match self {
            // kubeadm keeps polling through any error; we stop on what cannot heal (TLS, size,
            // redirects) but wait out a cluster-info that is not there or not readable yet.
            PollError::Http(e) => e.is_transient() || matches!(e.status(), Some(401 | 403 | 404)),
            PollError::MissingSignature => true,
            PollError::Malformed(_) => false,
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            PollError::Http(e) => e.retry_after(),
            _ => None,
        }
    }
    fn out_of_time(what: &str, left: Duration) -> Self {
        PollError::Http(HttpError::out_of_time(what, left))
    }
    fn cause(&self) -> crate::model::cause::Cause {
        match self {
            PollError::Http(e) => e.cause(),
            // Reachable, but the token's signature is not there (yet): unknown or expired.
            PollError::MissingSignature => crate::model::cause::Cause::Unauthorized,
            PollError::Malformed(_) => crate::model::cause::Cause::Other,
        }
    }
}

/// cluster-info as served: the kubeconfig, the token's JWS, and the server's `Date`.
struct Signed {
    kubeconfig: String,
    signature: String,
    date: Option<ServerClock>,
}

/// Polls cluster-info until it carries a signature for `token_id`.
async fn fetch_signed(
    http: &Http,
    target: &Target,
    token_id: &str,
    timeout: Duration,
) -> Result<Signed, RetryError<PollError>> {
    let key = format!("{JWS_KEY_PREFIX}{token_id}");
    let policy = RetryPolicy::until(timeout, Duration::from_secs(5));
    retry(policy, "reading cluster-info", |_| {
        let key = key.clone();
        async move {
            let reply = http
                .send(Request::get(target))
                .await
                .map_err(PollError::Http)?;
            let cm: ConfigMap = crate::model::strict::json(&reply.body)
                .map_err(|e| PollError::Malformed(format!("not a ConfigMap: {e}")))?;
            let kubeconfig = cm
                .data
                .get(KUBECONFIG_KEY)
                .filter(|k| !k.is_empty())
                .cloned()
                .ok_or_else(|| PollError::Malformed("it has no kubeconfig key".into()))?;
            match cm.data.get(&key).filter(|s| !s.is_empty()) {
                Some(sig) => Ok(Signed {
                    kubeconfig,
                    signature: sig.clone(),
                    date: reply.clock(),
                }),
                None => Err(PollError::MissingSignature),
            }
        }
    })
    .await
}

fn cluster_info_target(endpoint: &Endpoint) -> Result<Target, url::ParseError> {
    Ok(Target::public(url::Url::parse(&format!(
        "{}{CLUSTER_INFO_PATH}",
        endpoint.https_url()
    ))?))
}

/// Runs token discovery.
pub async fn discover(req: &DiscoveryRequest) -> Result<Discovered, DiscoveryError> {
    if req.pins.is_empty() && !req.unsafe_skip_ca_verification {
        return Err(DiscoveryError::NoPins);
    }
    let endpoint = req.endpoint.clone();
    let malformed = |reason: String| DiscoveryError::Malformed {
        endpoint: endpoint.clone(),
        reason,
    };
    let target = cluster_info_target(&endpoint).map_err(|e| malformed(e.to_string()))?;
    let token_id = req.token.id().to_owned();
    // 1. A read before the CA is known, polled while the signature is missing.
    tracing::info!(endpoint = %endpoint, token_id = %token_id, "reading cluster-info");
    let deferred = tls::Deferred::new();
    let http = Http::new(deferred.config(), req.limits).map_err(|e| malformed(e.to_string()))?;
    let started = std::time::Instant::now();
    let Signed {
        kubeconfig,
        signature,
        date,
    } = fetch_signed(&http, &target, &token_id, req.timeout)
        .await
        .map_err(|e| poll_failure(e, &endpoint, &token_id, started.elapsed()))?;
    // 2. The detached JWS over the bytes as served.
    let secret = req.token.secret().expose();
    if !jws::verify_detached(&signature, kubeconfig.as_bytes(), &token_id, secret) {
        return Err(DiscoveryError::SignatureMismatch { token_id });
    }
    tracing::info!("cluster-info signature verified with the bootstrap token");
    let info = Kubeconfig::parse(&kubeconfig)
        .and_then(|k| k.current_cluster())
        .map_err(|e| malformed(e.to_string()))?;
    check_server_url(&info.server).map_err(&malformed)?;
    let ca_ders = certificates_from_pem(&info.ca_pem).map_err(|e| malformed(e.to_string()))?;
    let ca_bundle_pins = ca_ders
        .iter()
        .map(|d| CaPin::of_certificate_der(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| malformed(e.to_string()))?;
    if req.pins.is_empty() {
        let served = Served { http, date };
        return Ok(unpinned(
            endpoint,
            info,
            ca_ders,
            ca_bundle_pins,
            &deferred,
            served,
        ));
    }
    // 3. The pin, and only what it names.
    let (matched, trusted) = pin_ca(req, &ca_ders, ca_bundle_pins.clone(), &malformed)?;
    // 4. The connection that carried cluster-info, verified against the pinned CA; else a
    //    pinned re-read.
    let (http, server_clock) = match deferred.trust(&trusted) {
        Ok(()) => (http, date),
        Err(e) => {
            tracing::info!(
                "{e}; reading cluster-info again over a connection trusting only the pinned CA"
            );
            let remaining = req
                .timeout
                .saturating_sub(started.elapsed())
                .max(Duration::from_secs(1));
            refetch_pinned(req, &target, &trusted, &kubeconfig, remaining, &malformed).await?
        }
    };
    tracing::info!(api_server = %info.server, "API server trusted: signature, CA pin and the server's certificate chain all hold");
    Ok(Discovered {
        endpoint,
        api_server: info.server,
        ca_pin: Some(matched),
        ca_bundle_pins,
        ca_verified: true,
        ca_pem: crate::trust::pin::certificates_to_pem(&trusted),
        ca_ders: trusted,
        http: Some(http),
        server_clock,
    })
}

/// The client that read cluster-info, and the server's `Date` on its answer.
struct Served {
    http: Http,
    date: Option<ServerClock>,
}

/// `--discovery-token-unsafe-skip-ca-verification`: the API server trusted on the token's
/// signature alone, with cluster-info's whole CA bundle. The connection (and its `Date`) is
/// kept only if its chain verifies against that bundle.
fn unpinned(
    endpoint: Endpoint,
    info: crate::model::kubeconfig::ClusterInfo,
    ca_ders: Vec<Vec<u8>>,
    ca_bundle_pins: Vec<CaPin>,
    deferred: &tls::Deferred,
    served: Served,
) -> Discovered {
    tracing::warn!(
        "--discovery-token-unsafe-skip-ca-verification: trusting the API server on the \
         token's signature alone; anyone holding the token can impersonate it"
    );
    let verified = deferred.trust(&ca_ders).is_ok();
    Discovered {
        endpoint,
        api_server: info.server,
        ca_pin: None,
        ca_bundle_pins,
        ca_verified: false,
        ca_pem: info.ca_pem,
        ca_ders,
        http: verified.then_some(served.http),
        server_clock: served.date.filter(|_| verified),
    }
}

/// The certificates a pin names (each fit to be a CA), and the pin that matched first; the
/// rest of the bundle is not trusted.
fn pin_ca(
    req: &DiscoveryRequest,
    ca_ders: &[Vec<u8>],
    ca_bundle_pins: Vec<CaPin>,
    malformed: &impl Fn(String) -> DiscoveryError,
) -> Result<(CaPin, Vec<Vec<u8>>), DiscoveryError> {
    let pinned = req
        .pins
        .pinned(ca_ders)
        .map_err(|e| malformed(e.to_string()))?;
    let Some((_, matched)) = pinned.first().cloned() else {
        return Err(DiscoveryError::PinMismatch {
            found: PinList(ca_bundle_pins),
            expected: PinList(req.pins.pins().to_vec()),
        });
    };
    for (der, pin) in &pinned {
        if let Some(reason) = crate::trust::pin::unfit_as_ca(der) {
            return Err(DiscoveryError::PinnedCaInvalid {
                pin: pin.clone(),
                reason,
            });
        }
    }
    let trusted: Vec<Vec<u8>> = pinned.iter().map(|(der, _)| der.to_vec()).collect();
    if trusted.len() < ca_ders.len() {
        tracing::warn!(
            unpinned = ca_ders.len() - trusted.len(),
            "cluster-info's CA bundle holds certificates no pin names; they are not trusted"
        );
    }
    tracing::info!(pin = %matched, "cluster CA matches the pin");
    Ok((matched, trusted))
}

/// cluster-info read again over TLS that trusts only the pinned CA: the same bytes, or no
/// trust. Returns the pinned client and the server's `Date` on that answer.
async fn refetch_pinned(
    req: &DiscoveryRequest,
    target: &Target,
    trusted: &[Vec<u8>],
    kubeconfig: &str,
    remaining: Duration,
    malformed: &impl Fn(String) -> DiscoveryError,
) -> Result<(Http, Option<ServerClock>), DiscoveryError> {
    let endpoint = req.endpoint.clone();
    let token_id = req.token.id();
    let pinned_tls = tls::trusting_only(trusted).map_err(|e| malformed(e.to_string()))?;
    let pinned = Http::new(pinned_tls, req.limits).map_err(|e| malformed(e.to_string()))?;
    let started = std::time::Instant::now();
    let again = match fetch_signed(&pinned, target, token_id, remaining).await {
        Ok(v) => v,
        Err(RetryError::Fatal(PollError::Http(e @ HttpError::Tls { .. }))) => {
            return Err(DiscoveryError::PinnedTls {
                endpoint,
                source: e,
            })
        }
        Err(e) => return Err(poll_failure(e, &endpoint, token_id, started.elapsed())),
    };
    if again.kubeconfig.as_bytes() != kubeconfig.as_bytes() {
        return Err(DiscoveryError::Changed { endpoint });
    }
    Ok((pinned, again.date))
}

/// The API server URL cluster-info names must be https, and carry no credentials (which would
/// otherwise reach logs, kubeconfigs and the kubelet).
fn check_server_url(server: &str) -> Result<(), String> {
    let url = url::Url::parse(server).map_err(|e| format!("its server URL does not parse: {e}"))?;
    if url.scheme() != "https" {
        return Err(format!("its server URL is not https ({})", url.scheme()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("its server URL carries credentials (user:password@); refused".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("its server URL names no host".into());
    }
    Ok(())
}

fn poll_failure(
    err: RetryError<PollError>,
    endpoint: &Endpoint,
    token_id: &str,
    waited: Duration,
) -> DiscoveryError {
    let endpoint = endpoint.clone();
    let rewrap = |e: HttpError, exhausted: Option<(u32, Duration)>| match exhausted {
        Some((attempts, elapsed)) => RetryError::Exhausted {
            attempts,
            elapsed,
            last: e,
        },
        None => RetryError::Fatal(e),
    };
    let (inner, exhausted) = match err {
        RetryError::Fatal(e) => (e, None),
        RetryError::Exhausted {
            attempts,
            elapsed,
            last,
        } => (last, Some((attempts, elapsed))),
    };
    match inner {
        PollError::MissingSignature => DiscoveryError::TokenNotSigning {
            token_id: token_id.to_owned(),
            waited,
        },
        PollError::Malformed(reason) => DiscoveryError::Malformed { endpoint, reason },
        PollError::Http(e @ HttpError::TooLarge { .. }) => DiscoveryError::Malformed {
            endpoint,
            reason: e.to_string(),
        },
        PollError::Http(e) if matches!(e.status(), Some(401 | 403 | 404)) => {
            DiscoveryError::NoClusterInfo {
                endpoint,
                source: Box::new(rewrap(e, exhausted)),
            }
        }
        PollError::Http(e) => DiscoveryError::Unreachable {
            endpoint,
            source: Box::new(rewrap(e, exhausted)),
        },
    }
}
