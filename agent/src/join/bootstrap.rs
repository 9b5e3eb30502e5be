//! TLS bootstrap done by node-attach itself, exactly as the kubelet does it
//! (kubernetes `pkg/kubelet/certificate/bootstrap/bootstrap.go`): an ECDSA P-256 key, a CSR with
//! O=system:nodes, CN=system:node:<name> and no SANs, signer
//! `kubernetes.io/kube-apiserver-client-kubelet`, the deterministic `node-csr-<digest>` name (so
//! a retry reuses the same object), then a watch until it is approved and signed, checks that the
//! certificate chains to the pinned CA and matches the key, and the kubelet certificate store's
//! layout (`kubelet-client-<timestamp>.pem` and the `kubelet-client-current.pem` symlink) with
//! `/etc/kubernetes/kubelet.conf` pointing at it.
//!
//! What depends on the API server's version, as upstream does it:
//! - **usages**: before 1.25 the csrapproving controller and the kubelet-client signer want
//!   `key encipherment` besides `digital signature` and `client auth`
//!   (`pkg/apis/certificates/helpers.go` `IsKubeletClientCSR` at v1.20.2; relaxed by
//!   kubernetes#111061 for 1.25), so older clusters get the three usages the kubelet of that era
//!   sent, and the digested name covers the same list;
//! - **API version**: `certificates.k8s.io/v1` from 1.19, `v1beta1` before it (still tried on a
//!   404, for servers that misreport their version).
//!
//! The wait survives a dropped watch as client-go's `util/certificate/csr` does with
//! `UntilWithSync`: on a stream error or end, the object is read again (its UID must be the one
//! created) and watched again from its resourceVersion, until the deadline.

use crate::client::kube::Kube;
use crate::error::{Code, Failure};
use crate::model::compat;
use crate::model::version::KubeVersion;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha512_256};
use std::time::{Duration, Instant};

/// The kubelet's client certificate store.
pub const PKI_DIR: &str = "/var/lib/kubelet/pki";
/// The current pair, as the kubelet's store names it.
pub const CURRENT: &str = "/var/lib/kubelet/pki/kubelet-client-current.pem";
/// The key kept across retries until a certificate is issued.
pub const TMP_KEY: &str = "/var/lib/kubelet/pki/kubelet-client.key.tmp";
/// The kubelet's kubeconfig.
pub const KUBELET_CONF: &str = "/etc/kubernetes/kubelet.conf";
/// kubeadm's bootstrap kubeconfig (only with `--tls-bootstrap=kubelet`).
pub const BOOTSTRAP_CONF: &str = "/etc/kubernetes/bootstrap-kubelet.conf";
/// The kubelet client signer.
pub const SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// Usages for an ECDSA key from 1.25, in the kubelet's order.
pub const USAGES: [&str; 2] = ["digital signature", "client auth"];
/// Usages before 1.25, when the approver and the signer also wanted `key encipherment`.
pub const LEGACY_USAGES: [&str; 3] = ["digital signature", "key encipherment", "client auth"];

/// A key and its CSR.
pub struct Request {
    /// The private key, PEM (PKCS#8).
    pub key_pem: String,
    /// DER SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
    /// The CSR, PEM.
    pub csr_pem: String,
    /// The deterministic object name.
    pub name: String,
    /// The usages asked for (and digested into the name).
    pub usages: &'static [&'static str],
}

/// The kubelet's `digestedName`: base64url(SHA-512/256(enc(spki)|enc(CN)|enc(O)…|enc(usage)…|)).
pub fn digested_name(spki: &[u8], cn: &str, orgs: &[&str], usages: &[&str]) -> String {
    let mut h = Sha512_256::new();
    let mut write = |data: &[u8]| {
        h.update(URL_SAFE_NO_PAD.encode(data).as_bytes());
        h.update(b"|");
    };
    write(spki);
    write(cn.as_bytes());
    for o in orgs {
        write(o.as_bytes());
    }
    for u in usages {
        write(u.as_bytes());
    }
    format!("node-csr-{}", URL_SAFE_NO_PAD.encode(h.finalize()))
}

/// Builds the CSR for `node` with `key_pem` (generating a key when None), asking for `usages`.
pub fn build_request(
    node: &str,
    key_pem: Option<&str>,
    usages: &'static [&'static str],
) -> Result<Request, Failure> {
    let fail = |e: rcgen::Error| {
        Failure::new(
            Code::Bootstrap,
            format!("cannot build the certificate request: {e}"),
        )
    };
    let key = match key_pem {
        Some(pem) => rcgen::KeyPair::from_pem(pem).map_err(fail)?,
        None => rcgen::KeyPair::generate().map_err(fail)?,
    };
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "system:nodes");
    dn.push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key).map_err(fail)?;
    let csr_pem = csr.pem().map_err(fail)?;
    let spki = spki_of_csr_pem(csr_pem.as_bytes()).ok_or_else(|| {
        bootstrap_fail("the certificate request just built does not parse".into())
    })?;
    let name = digested_name(
        &spki,
        &format!("system:node:{node}"),
        &["system:nodes"],
        usages,
    );
    Ok(Request {
        key_pem: key.serialize_pem(),
        spki,
        csr_pem,
        name,
        usages,
    })
}

fn csr_object(req: &Request, api_version: &str) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": "CertificateSigningRequest",
        "metadata": {"name": req.name},
        "spec": {
            "request": STANDARD.encode(&req.csr_pem),
            "signerName": SIGNER,
            "usages": req.usages,
        },
    })
}

fn bootstrap_fail(message: String) -> Failure {
    Failure::new(Code::Bootstrap, message)
}

/// A CSR as created (or found): where it lives and which object it is.
#[derive(Clone, Debug)]
pub struct Created {
    /// The certificates.k8s.io version used.
    pub version: &'static str,
    /// The object's UID: a CSR of the same name recreated by someone else is not ours.
    pub uid: String,
    /// Where a watch starts.
    pub resource_version: String,
    /// The object as the API server returned it (an earlier run's may be issued already).
    object: Value,
}

impl Created {
    fn from_object(version: &'static str, obj: Value) -> Created {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        Created {
            version,
            uid: text(&obj["metadata"]["uid"]),
            resource_version: text(&obj["metadata"]["resourceVersion"]),
            object: obj,
        }
    }
}

fn csr_collection(version: &str) -> String {
    format!("/apis/certificates.k8s.io/{version}/certificatesigningrequests")
}

/// Creates the CSR with the version's API (trying v1beta1 if v1 answers 404); reuses an
/// existing object of the same name when it asks for the same key and signer.
pub async fn create(kube: &Kube, req: &Request, server: &KubeVersion) -> Result<Created, Failure> {
    let versions: &[&'static str] = match compat::csr_api_version(server) {
        "v1" => &["v1", "v1beta1"],
        _ => &["v1beta1"],
    };
    for &version in versions {
        let path = csr_collection(version);
        let object = csr_object(req, &format!("certificates.k8s.io/{version}"));
        match kube.post(&path, &object).await {
            Ok(obj) => return Ok(Created::from_object(version, obj)),
            Err(e) if e.status() == Some(404) && version == "v1" => continue,
            Err(e) if e.status() == Some(409) => return reuse(kube, req, version).await,
            Err(e) => {
                return Err(e.failure(Code::Bootstrap, &format!("creating the CSR {}", req.name)))
            }
        }
    }
    Err(bootstrap_fail(
        "the cluster serves no certificates.k8s.io API".into(),
    ))
}

/// A CSR of our name exists (an earlier run): it is ours when it asks for our key and for the
/// kubelet signer (clusters before 1.18 store no signerName: absent counts as the kubelet's).
async fn reuse(kube: &Kube, req: &Request, version: &'static str) -> Result<Created, Failure> {
    let existing = kube
        .get(&format!("{}/{}", csr_collection(version), req.name))
        .await
        .map_err(|e| {
            e.failure(
                Code::Bootstrap,
                &format!("reading the existing CSR {}", req.name),
            )
        })?
        .ok_or_else(|| bootstrap_fail(format!("the CSR {} vanished", req.name)))?;
    let same_key = existing["spec"]["request"]
        .as_str()
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|pem| spki_of_csr_pem(&pem))
        .is_some_and(|spki| spki == req.spki);
    let signer = &existing["spec"]["signerName"];
    if !same_key || !(signer.is_null() || signer == SIGNER) {
        return Err(bootstrap_fail(format!(
            "a CSR named {} exists for another key or signer; delete it (kubectl delete csr {}) and retry",
            req.name, req.name
        )));
    }
    Ok(Created::from_object(version, existing))
}

fn spki_of_csr_pem(pem: &[u8]) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    use x509_parser::prelude::FromDer;
    let der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(pem).ok()?;
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
            .ok()?;
    Some(csr.certification_request_info.subject_pki.raw.to_vec())
}

/// The longest one watch runs before the CSR is read again.
const WATCH_PERIOD: Duration = Duration::from_secs(30);

/// Where a CSR stands.
enum Verdict {
    Issued(Vec<u8>),
    Denied(String),
    Failed(String),
    Deleted,
    /// The watch must be restarted from a fresh read (410 Gone and other ERROR events).
    Resync,
    Pending,
}

fn verdict(obj: &Value) -> Verdict {
    let conditions = obj["status"]["conditions"].as_array();
    for c in conditions.into_iter().flatten() {
        let why = format!(
            "{}: {}",
            c["reason"].as_str().unwrap_or("no reason"),
            c["message"].as_str().unwrap_or("")
        );
        match c["type"].as_str() {
            Some("Denied") => return Verdict::Denied(why),
            Some("Failed") => return Verdict::Failed(why),
            _ => {}
        }
    }
    let approved = conditions.is_some_and(|c| c.iter().any(|c| c["type"] == "Approved"));
    match obj["status"]["certificate"]
        .as_str()
        .and_then(|b| STANDARD.decode(b).ok())
    {
        Some(cert) if approved && !cert.is_empty() => Verdict::Issued(cert),
        _ => Verdict::Pending,
    }
}

fn deleted_while_waiting(name: &str) -> Failure {
    bootstrap_fail(format!(
        "the certificate signing request {name} was deleted while waiting"
    ))
}

fn conclude(name: &str, v: Verdict) -> Option<Result<Vec<u8>, Failure>> {
    match v {
        Verdict::Issued(cert) => Some(Ok(cert)),
        Verdict::Denied(why) => Some(Err(Failure::new(
            Code::CsrDenied,
            format!("the certificate signing request {name} was denied ({why})"),
        ))),
        Verdict::Failed(why) => Some(Err(bootstrap_fail(format!(
            "the signer failed the certificate signing request {name} ({why})"
        )))),
        Verdict::Deleted => Some(Err(deleted_while_waiting(name))),
        Verdict::Resync | Verdict::Pending => None,
    }
}

/// Waits until the CSR is approved and signed; returns the certificate PEM. A dropped or
/// expired watch is followed by a fresh read and a new watch, until `timeout`.
pub async fn wait_for_certificate(
    kube: &Kube,
    created: &Created,
    name: &str,
    timeout: Duration,
) -> Result<Vec<u8>, Failure> {
    // An earlier run's CSR may have been approved and signed while nobody watched.
    if let Some(done) = conclude(name, verdict(&created.object)) {
        return done;
    }
    let deadline = Instant::now() + timeout;
    let object_path = format!("{}/{name}", csr_collection(created.version));
    let mut resource_version = created.resource_version.clone();
    let mut backoff = Duration::from_millis(200);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        // Bounded, so a watch that silently misses an event costs at most one period.
        let remaining = left.min(WATCH_PERIOD);
        let mut path = format!(
            "{}?watch=true&fieldSelector=metadata.name%3D{name}&timeoutSeconds={}",
            csr_collection(created.version),
            remaining.as_secs().max(1)
        );
        if !resource_version.is_empty() {
            path.push_str(&format!("&resourceVersion={resource_version}"));
        }
        let watched = kube
            .watch(&path, remaining, |kind, obj| match kind {
                "DELETED" => Some(Verdict::Deleted),
                "ERROR" => Some(Verdict::Resync),
                _ => {
                    if let Some(rv) = obj["metadata"]["resourceVersion"].as_str() {
                        resource_version = rv.to_owned();
                    }
                    match verdict(obj) {
                        Verdict::Pending => None,
                        v => Some(v),
                    }
                }
            })
            .await;
        match watched {
            Ok(Some(v)) => {
                if let Some(done) = conclude(name, v) {
                    return done;
                }
            }
            Ok(None) => {}
            Err(e) if e.is_tls() => {
                return Err(e.failure(Code::Bootstrap, &format!("watching the CSR {name}")))
            }
            Err(e) => tracing::info!("the watch on the CSR {name} ended ({e}); reading it again"),
        }
        // Resync, as UntilWithSync does: read the object, check it is still ours, go on.
        match kube.get(&object_path).await {
            Ok(Some(obj)) => {
                let uid = obj["metadata"]["uid"].as_str().unwrap_or_default();
                if !created.uid.is_empty() && uid != created.uid {
                    return Err(bootstrap_fail(format!(
                        "the certificate signing request {name} was deleted and recreated by someone else while waiting"
                    )));
                }
                if let Some(done) = conclude(name, verdict(&obj)) {
                    return done;
                }
                resource_version = obj["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
            }
            Ok(None) => return Err(deleted_while_waiting(name)),
            Err(e) if e.is_transient() => {
                tracing::info!("reading the CSR {name}: {e}; retrying")
            }
            Err(e) => return Err(e.failure(Code::Bootstrap, &format!("reading the CSR {name}"))),
        }
        let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
        tokio::time::sleep(pause).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    let cause = diagnose(kube, &object_path).await;
    Err(Failure::new(
        Code::CsrTimeout,
        format!(
            "the certificate signing request {name} was not approved and signed within {timeout:?}: {cause}"
        ),
    ))
}

/// Why a CSR is still waiting, asked of the API server itself (one read of the CSR, and a
/// SelfSubjectAccessReview of the permission the csrapproving controller checks).
async fn diagnose(kube: &Kube, object_path: &str) -> String {
    let name = object_path.rsplit('/').next().unwrap_or_default();
    if let Ok(Some(obj)) = kube.get(object_path).await {
        let approved = obj["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Approved"));
        if approved {
            return "it was approved, but no certificate was issued: the kube-controller-manager's csrsigning controller is not running or has no signing key (--cluster-signing-cert-file, --cluster-signing-key-file)".into();
        }
    }
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {
            "group": "certificates.k8s.io",
            "resource": "certificatesigningrequests",
            "subresource": "nodeclient",
            "verb": "create",
        }},
    });
    let allowed = kube
        .post(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            &review,
        )
        .await
        .ok()
        .and_then(|r| r["status"]["allowed"].as_bool());
    match allowed {
        Some(true) => format!("the token may have its node CSRs auto-approved (RBAC is in place), but nobody approved this one: the kube-controller-manager's csrapproving controller is not running or not enabled (--controllers), or it rejected the request; approve it by hand to proceed: kubectl certificate approve {name}"),
        Some(false) => format!("the token's groups may not have node CSRs auto-approved: bind the ClusterRole system:certificates.k8s.io:certificatesigningrequests:nodeclient to the token's group (kubeadm's ClusterRoleBinding kubeadm:node-autoapprove-bootstrap, group system:bootstrappers:kubeadm:default-node-token; node-attach token create makes it), or approve it by hand: kubectl certificate approve {name}"),
        None => format!("nobody approved it; approve it by hand (kubectl certificate approve {name}) or check that auto-approval is set up (kubeadm:node-autoapprove-bootstrap)"),
    }
}

/// Checks an issued certificate: parses, chains to one of `ca_ders`, carries our key, names the
/// node, and is currently valid. Returns its notAfter (Unix seconds).
pub fn verify_issued(
    cert_pem: &[u8],
    spki: &[u8],
    node: &str,
    ca_ders: &[Vec<u8>],
) -> Result<i64, Failure> {
    let certs = crate::trust::pin::certificates_from_pem(cert_pem)
        .map_err(|e| bootstrap_fail(format!("the issued certificate is unreadable: {e}")))?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&certs[0])
        .map_err(|e| bootstrap_fail(format!("the issued certificate does not parse: {e}")))?;
    if leaf.tbs_certificate.subject_pki.raw != spki {
        return Err(bootstrap_fail(
            "the issued certificate is for another key".into(),
        ));
    }
    let cn = leaf
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or_default();
    if cn != format!("system:node:{node}") {
        return Err(bootstrap_fail(format!(
            "the issued certificate names {cn:?}, not system:node:{node}"
        )));
    }
    let chained = ca_ders.iter().any(|ca| {
        x509_parser::parse_x509_certificate(ca)
            .ok()
            .is_some_and(|(_, ca)| leaf.verify_signature(Some(ca.public_key())).is_ok())
    });
    if !chained {
        return Err(bootstrap_fail(
            "the issued certificate is not signed by the pinned cluster CA".into(),
        ));
    }
    if !leaf.validity().is_valid() {
        return Err(bootstrap_fail(
            "the issued certificate is not valid now (check the clock)".into(),
        ));
    }
    Ok(leaf.validity().not_after.timestamp())
}

/// The kubelet certificate store's file name for a pair issued now:
/// `kubelet-client-YYYY-MM-DD-HH-MM-SS.pem`.
pub fn pair_file_name(now: time::OffsetDateTime) -> String {
    format!(
        "kubelet-client-{:04}-{:02}-{:02}-{:02}-{:02}-{:02}.pem",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

/// When the current client certificate expires, if one is there and readable.
pub fn current_expiry(root: &crate::effects::fs::Root) -> Option<i64> {
    let link = match root.inspect(std::path::Path::new(CURRENT)).ok()? {
        crate::effects::fs::Existing::Symlink(t) => t,
        _ => return None,
    };
    let bytes = root.read(&link).ok()??;
    use rustls::pki_types::pem::PemObject;
    let first = rustls::pki_types::CertificateDer::pem_slice_iter(&bytes)
        .next()?
        .ok()?;
    let (_, leaf) = x509_parser::parse_x509_certificate(first.as_ref()).ok()?;
    Some(leaf.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_has_the_kubelet_shape() {
        let req = build_request("node-1", None, &USAGES).expect("csr");
        assert!(req.name.starts_with("node-csr-"));
        assert_eq!(req.name.len(), "node-csr-".len() + 43);
        let again = build_request("node-1", Some(&req.key_pem), &USAGES).expect("same key");
        assert_eq!(
            again.name, req.name,
            "the same key gives the same object name"
        );
        let legacy = build_request("node-1", Some(&req.key_pem), &LEGACY_USAGES).expect("legacy");
        assert_ne!(legacy.name, req.name, "the name digests the usages");
        assert_eq!(
            spki_of_csr_pem(req.csr_pem.as_bytes()).expect("spki"),
            req.spki
        );
        use rustls::pki_types::pem::PemObject;
        use x509_parser::prelude::FromDer;
        let der =
            rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(req.csr_pem.as_bytes())
                .expect("pem");
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
                .expect("der");
        let subject = &csr.certification_request_info.subject;
        assert_eq!(
            subject
                .iter_common_name()
                .next()
                .and_then(|a| a.as_str().ok()),
            Some("system:node:node-1")
        );
        assert_eq!(
            subject
                .iter_organization()
                .next()
                .and_then(|a| a.as_str().ok()),
            Some("system:nodes")
        );
        assert!(
            csr.requested_extensions()
                .is_none_or(|mut e| e.next().is_none()),
            "no SANs or other extensions"
        );
    }

    #[test]
    fn file_name_matches_the_kubelet_store() {
        let t = time::macros::datetime!(2026-11-26 09:05:03 UTC);
        assert_eq!(pair_file_name(t), "kubelet-client-2026-11-26-09-05-03.pem");
    }
}
