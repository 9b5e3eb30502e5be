//! The kubelet client CSR, exactly as the kubelet makes and waits for it
//! (kubernetes `pkg/kubelet/certificate/bootstrap/bootstrap.go`, client-go
//! `util/certificate/csr`): an ECDSA P-256 key, O=system:nodes, CN=system:node:<name> and no
//! SANs, signer `kubernetes.io/kube-apiserver-client-kubelet`, the deterministic
//! `node-csr-<digest>` name (so a retry reuses the same object), then a watch until it is
//! approved and signed, and checks that the certificate chains to the pinned CA, carries the key
//! and names the node.
//!
//! What depends on the cluster's version, as upstream does it
//! ([`crate::model::compat::csr_usages`], [`crate::model::compat::csr_api_version`]): before
//! 1.25 the approver and signer want `key encipherment` too (asked for through 1.25, which a
//! cluster mid-upgrade from 1.24 may be), and the digested name covers the same usages; `certificates.k8s.io/v1` from 1.19, `v1beta1` before (still tried on a 404).
//!
//! The wait is one watch to the deadline. A watch closed early is opened again from the last
//! resourceVersion (no read: the watch replays what it missed); a resourceVersion the server
//! no longer holds is followed by a read, as `UntilWithSync` relists (the object's UID must be
//! the one created). A timeout names its cause, asked of the API server.

use crate::client::kube::objects::{Csr, CsrSpec, ObjectMeta, WatchEvent};
use crate::client::kube::{paths, Kube};
use crate::error::{Code, Failure};
use crate::model::compat;
use crate::model::version::KubeVersion;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::json;
use sha2::{Digest, Sha512_256};
use std::time::{Duration, Instant};

/// The kubelet client signer.
pub const SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub use crate::model::compat::{LEGACY_USAGES, USAGES};

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
    let rcgen_fail = |e: rcgen::Error| {
        Failure::new(
            Code::Bootstrap,
            format!("cannot build the certificate request: {e}"),
        )
    };
    let key = match key_pem {
        Some(pem) => rcgen::KeyPair::from_pem(pem).map_err(rcgen_fail)?,
        None => rcgen::KeyPair::generate().map_err(rcgen_fail)?,
    };
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "system:nodes");
    dn.push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key).map_err(rcgen_fail)?;
    let csr_pem = csr.pem().map_err(rcgen_fail)?;
    let spki = spki_of_csr_pem(csr_pem.as_bytes())
        .ok_or_else(|| fail("the certificate request just built does not parse".into()))?;
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

fn fail(message: String) -> Failure {
    Failure::new(Code::Bootstrap, message)
}

fn csr_object(req: &Request, api_version: &str) -> serde_json::Value {
    let csr = Csr {
        metadata: ObjectMeta {
            name: req.name.clone(),
            ..ObjectMeta::default()
        },
        spec: CsrSpec {
            request: STANDARD.encode(&req.csr_pem),
            signer_name: Some(SIGNER.into()),
            usages: req.usages.iter().map(|u| (*u).to_owned()).collect(),
            username: String::new(),
        },
        ..Csr::default()
    };
    let mut obj = serde_json::to_value(csr).unwrap_or_default();
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!("CertificateSigningRequest");
    obj
}

/// A CSR as created (or found), with the API version it lives in.
#[derive(Clone, Debug)]
pub struct Created {
    /// The certificates.k8s.io version used.
    pub version: &'static str,
    /// The object as the API server returned it (an earlier run's may be issued already).
    pub csr: Csr,
}

fn typed(version: &'static str, obj: serde_json::Value) -> Result<Created, Failure> {
    let csr = serde_json::from_value(obj)
        .map_err(|e| fail(format!("the API server's CSR does not parse: {e}")))?;
    Ok(Created { version, csr })
}

/// Creates the CSR with the version's API (trying v1beta1 if v1 answers 404); reuses an
/// existing object of the same name when it asks for the same key and signer.
pub async fn create(kube: &Kube, req: &Request, server: &KubeVersion) -> Result<Created, Failure> {
    let versions: &[&'static str] = match compat::csr_api_version(server) {
        "v1" => &["v1", "v1beta1"],
        _ => &["v1beta1"],
    };
    for &version in versions {
        let object = csr_object(req, &format!("certificates.k8s.io/{version}"));
        match kube.post(&paths::csrs(version), &object).await {
            Ok(obj) => return typed(version, obj),
            Err(e) if e.status() == Some(404) && version == "v1" => continue,
            Err(e) if e.status() == Some(409) => return reuse(kube, req, version).await,
            Err(e) => {
                return Err(e.failure(Code::Bootstrap, &format!("creating the CSR {}", req.name)))
            }
        }
    }
    Err(fail("the cluster serves no certificates.k8s.io API".into()))
}

/// A CSR of our name exists (an earlier run): it is ours when it asks for our key and for the
/// kubelet signer (clusters before 1.18 store no signerName: absent counts as the kubelet's).
async fn reuse(kube: &Kube, req: &Request, version: &'static str) -> Result<Created, Failure> {
    let existing: Csr = kube
        .get_as(&paths::csr(version, &req.name))
        .await
        .map_err(|e| {
            e.failure(
                Code::Bootstrap,
                &format!("reading the existing CSR {}", req.name),
            )
        })?
        .ok_or_else(|| fail(format!("the CSR {} vanished", req.name)))?;
    let same_key = STANDARD
        .decode(&existing.spec.request)
        .ok()
        .and_then(|pem| spki_of_csr_pem(&pem))
        .is_some_and(|spki| spki == req.spki);
    let signer_ok = existing
        .spec
        .signer_name
        .as_deref()
        .is_none_or(|s| s == SIGNER);
    if !same_key || !signer_ok {
        return Err(fail(format!(
            "a CSR named {} exists for another key or signer; delete it (kubectl delete csr {}) and retry",
            req.name, req.name
        )));
    }
    Ok(Created {
        version,
        csr: existing,
    })
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

fn verdict(csr: &Csr) -> Verdict {
    let why = |kind: &str| {
        csr.condition(kind)
            .map(|c| format!("{}: {}", c.reason, c.message))
    };
    if let Some(w) = why("Denied") {
        return Verdict::Denied(w);
    }
    if let Some(w) = why("Failed") {
        return Verdict::Failed(w);
    }
    let cert = csr
        .status
        .certificate
        .as_deref()
        .and_then(|b| STANDARD.decode(b).ok())
        .filter(|c| !c.is_empty());
    match cert {
        Some(c) if csr.condition("Approved").is_some() => Verdict::Issued(c),
        _ => Verdict::Pending,
    }
}

fn deleted_while_waiting(name: &str) -> Failure {
    fail(format!(
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
        Verdict::Failed(why) => Some(Err(fail(format!(
            "the signer failed the certificate signing request {name} ({why})"
        )))),
        Verdict::Deleted => Some(Err(deleted_while_waiting(name))),
        Verdict::Resync | Verdict::Pending => None,
    }
}

/// Waits until the CSR is approved and signed; returns the certificate PEM. One watch runs to
/// `timeout` (the server's `timeoutSeconds` says so too); a watch the server or a proxy closes
/// early is opened again from the last resourceVersion seen, with no read in between (the watch
/// replays what happened meanwhile). Only a resourceVersion the server no longer holds (an
/// ERROR event, or 410) is followed by a fresh read, as `UntilWithSync` relists, and the
/// deadline by one last read.
pub async fn wait_for_certificate(
    kube: &Kube,
    created: &Created,
    timeout: Duration,
) -> Result<Vec<u8>, Failure> {
    let name = created.csr.metadata.name.as_str();
    // An earlier run's CSR may have been approved and signed while nobody watched.
    if let Some(done) = conclude(name, verdict(&created.csr)) {
        return done;
    }
    let deadline = Instant::now() + timeout;
    let mut rv = created.csr.metadata.resource_version.clone();
    let mut rewatch = crate::client::http::Rewatch::default();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let opened = Instant::now();
        match watch_once(kube, created, &mut rv, left).await? {
            Watched::Concluded(done) => return done,
            Watched::Ended => {}
            Watched::Expired => {
                if let Some(done) = resync(kube, created, &mut rv).await? {
                    return done;
                }
            }
        }
        let pause = rewatch.pause(opened.elapsed());
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
    // One read before giving up: a watch whose connection was dropped without a word (a NAT, a
    // load balancer) brings no event and no error before the deadline, while the certificate
    // may be there.
    if let Some(done) = resync(kube, created, &mut rv).await? {
        return done;
    }
    let cause = diagnose(kube, created).await;
    Err(Failure::new(
        Code::CsrTimeout,
        format!(
            "the certificate signing request {name} was not approved and signed within {timeout:?}: {cause}"
        ),
    ))
}

/// How one watch ended.
enum Watched {
    /// The CSR was issued, denied, failed or deleted.
    Concluded(Result<Vec<u8>, Failure>),
    /// The stream ended (the server's timeout, a proxy, a dropped connection) or could not be
    /// opened: watched again from the last resourceVersion.
    Ended,
    /// The server no longer holds that resourceVersion: read again, then watched.
    Expired,
}

/// One watch, until `period` passes or the stream ends.
async fn watch_once(
    kube: &Kube,
    created: &Created,
    rv: &mut String,
    period: Duration,
) -> Result<Watched, Failure> {
    let name = created.csr.metadata.name.as_str();
    let path = paths::csr_watch(created.version, name, rv, period.as_secs().max(1));
    let opened = Instant::now();
    let watched = kube
        .watch(&path, period, |e: &WatchEvent<Csr>| match e.kind.as_str() {
            "DELETED" => Some(Verdict::Deleted),
            "ERROR" => Some(Verdict::Resync),
            _ => {
                if !e.object.metadata.resource_version.is_empty() {
                    rv.clone_from(&e.object.metadata.resource_version);
                }
                match verdict(&e.object) {
                    Verdict::Pending => None,
                    v => Some(v),
                }
            }
        })
        .await;
    match watched {
        Ok(Some(Verdict::Resync)) => Ok(Watched::Expired),
        Ok(Some(v)) => Ok(conclude(name, v).map_or(Watched::Ended, Watched::Concluded)),
        Ok(None) => {
            let lasted = opened.elapsed();
            if lasted < period {
                tracing::info!(
                    lasted_ms = lasted.as_millis() as u64,
                    "the server ended the watch on the CSR {name} early; watching again"
                );
            }
            Ok(Watched::Ended)
        }
        Err(e) if e.is_tls() => {
            Err(e.failure(Code::Bootstrap, &format!("watching the CSR {name}")))
        }
        Err(e) if e.status() == Some(410) => Ok(Watched::Expired),
        Err(e) => {
            tracing::info!("the watch on the CSR {name} ended ({e}); watching again");
            Ok(Watched::Ended)
        }
    }
}

/// Reads the CSR again, as `UntilWithSync` does: still ours, and where it stands.
async fn resync(
    kube: &Kube,
    created: &Created,
    rv: &mut String,
) -> Result<Option<Result<Vec<u8>, Failure>>, Failure> {
    let name = created.csr.metadata.name.as_str();
    match kube.get_as::<Csr>(&paths::csr(created.version, name)).await {
        Ok(Some(csr)) => {
            let ours = &created.csr.metadata.uid;
            if !ours.is_empty() && csr.metadata.uid != *ours {
                return Err(fail(format!(
                    "the certificate signing request {name} was deleted and recreated by someone else while waiting"
                )));
            }
            rv.clone_from(&csr.metadata.resource_version);
            Ok(conclude(name, verdict(&csr)))
        }
        Ok(None) => Err(deleted_while_waiting(name)),
        Err(e) if e.is_transient() => {
            tracing::info!("reading the CSR {name}: {e}; retrying");
            Ok(None)
        }
        Err(e) => Err(e.failure(Code::Bootstrap, &format!("reading the CSR {name}"))),
    }
}

/// Why a CSR is still waiting, asked of the API server itself (one read of the CSR, and a
/// SelfSubjectAccessReview of the permission the csrapproving controller checks).
async fn diagnose(kube: &Kube, created: &Created) -> String {
    let name = created.csr.metadata.name.as_str();
    let path = paths::csr(created.version, name);
    if let Ok(Some(csr)) = kube.get_as::<Csr>(&path).await {
        if csr.condition("Approved").is_some() {
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
        .post(paths::SELF_SUBJECT_ACCESS_REVIEWS, &review)
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
        .map_err(|e| fail(format!("the issued certificate is unreadable: {e}")))?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&certs[0])
        .map_err(|e| fail(format!("the issued certificate does not parse: {e}")))?;
    if leaf.tbs_certificate.subject_pki.raw != spki {
        return Err(fail("the issued certificate is for another key".into()));
    }
    let cn = leaf
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or_default();
    if cn != format!("system:node:{node}") {
        return Err(fail(format!(
            "the issued certificate names {cn:?}, not system:node:{node}"
        )));
    }
    let chained = ca_ders.iter().any(|ca| {
        x509_parser::parse_x509_certificate(ca)
            .ok()
            .is_some_and(|(_, ca)| leaf.verify_signature(Some(ca.public_key())).is_ok())
    });
    if !chained {
        return Err(fail(
            "the issued certificate is not signed by the pinned cluster CA".into(),
        ));
    }
    if !leaf.validity().is_valid() {
        return Err(fail(
            "the issued certificate is not valid now (check the clock)".into(),
        ));
    }
    Ok(leaf.validity().not_after.timestamp())
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
}
