//! TLS bootstrap done by node-attach itself, exactly as the kubelet does it
//! (kubernetes `pkg/kubelet/certificate/bootstrap/bootstrap.go`): an ECDSA P-256 key, a CSR with
//! O=system:nodes, CN=system:node:<name> and no SANs, usages digital signature + client auth,
//! signer `kubernetes.io/kube-apiserver-client-kubelet`, the deterministic `node-csr-<digest>`
//! name (so a retry reuses the same object), `v1` with a `v1beta1` fallback; then a watch until
//! it is approved and signed, checks that the certificate chains to the pinned CA and matches the
//! key, and the kubelet certificate store's layout (`kubelet-client-<timestamp>.pem` and the
//! `kubelet-client-current.pem` symlink) with `/etc/kubernetes/kubelet.conf` pointing at it.

use crate::error::{Code, Failure};
use crate::kube::Kube;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha512_256};
use std::time::Duration;

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
/// Usages for an ECDSA key, in the kubelet's order.
pub const USAGES: [&str; 2] = ["digital signature", "client auth"];

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

/// Builds the CSR for `node` with `key_pem` (generating a key when None).
pub fn build_request(node: &str, key_pem: Option<&str>) -> Result<Request, Failure> {
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
        &USAGES,
    );
    Ok(Request {
        key_pem: key.serialize_pem(),
        spki,
        csr_pem,
        name,
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
            "usages": USAGES,
        },
    })
}

fn bootstrap_fail(message: String) -> Failure {
    Failure::new(Code::Bootstrap, message)
}

/// Creates the CSR (v1, or v1beta1 on a cluster without v1); reuses an existing object of the
/// same name when it asks for the same key. Returns the API group-version used.
pub async fn create(kube: &Kube, req: &Request) -> Result<&'static str, Failure> {
    for version in ["v1", "v1beta1"] {
        let path = format!("/apis/certificates.k8s.io/{version}/certificatesigningrequests");
        match kube
            .post(
                &path,
                &csr_object(req, &format!("certificates.k8s.io/{version}")),
            )
            .await
        {
            Ok(_) => return Ok(version),
            Err(e) if e.status() == Some(404) && version == "v1" => continue,
            Err(e) if e.status() == Some(409) => {
                let existing = kube
                    .get(&format!("{path}/{}", req.name))
                    .await
                    .map_err(|e| {
                        bootstrap_fail(format!("reading the existing CSR {}: {e}", req.name))
                    })?
                    .ok_or_else(|| bootstrap_fail(format!("the CSR {} vanished", req.name)))?;
                let same_key = existing["spec"]["request"]
                    .as_str()
                    .and_then(|b| STANDARD.decode(b).ok())
                    .and_then(|pem| spki_of_csr_pem(&pem))
                    .is_some_and(|spki| spki == req.spki);
                if !same_key || existing["spec"]["signerName"] != SIGNER {
                    return Err(bootstrap_fail(format!(
                        "a CSR named {} exists for another key or signer; delete it (kubectl delete csr {}) and retry",
                        req.name, req.name
                    )));
                }
                return Ok(version);
            }
            Err(e) => {
                return Err(bootstrap_fail(format!(
                    "creating the CSR {}: {e}",
                    req.name
                )))
            }
        }
    }
    Err(bootstrap_fail(
        "the cluster serves no certificates.k8s.io API".into(),
    ))
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

/// Watches the CSR until it is approved and signed; returns the certificate PEM.
pub async fn wait_for_certificate(
    kube: &Kube,
    version: &str,
    name: &str,
    timeout: Duration,
) -> Result<Vec<u8>, Failure> {
    let path = format!(
        "/apis/certificates.k8s.io/{version}/certificatesigningrequests?watch=true&fieldSelector=metadata.name%3D{name}&timeoutSeconds={}",
        timeout.as_secs().max(1)
    );
    enum Outcome {
        Issued(Vec<u8>),
        Denied(String),
        Failed(String),
        Deleted,
    }
    let started = std::time::Instant::now();
    loop {
        let remaining = timeout.saturating_sub(started.elapsed());
        if remaining.is_zero() {
            break;
        }
        let result = kube
            .watch(&path, remaining, |kind, obj| {
                if kind == "DELETED" {
                    return Some(Outcome::Deleted);
                }
                let conditions = obj["status"]["conditions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                for c in &conditions {
                    let why = format!(
                        "{}: {}",
                        c["reason"].as_str().unwrap_or("no reason"),
                        c["message"].as_str().unwrap_or("")
                    );
                    match c["type"].as_str() {
                        Some("Denied") => return Some(Outcome::Denied(why)),
                        Some("Failed") => return Some(Outcome::Failed(why)),
                        _ => {}
                    }
                }
                let approved = conditions.iter().any(|c| c["type"] == "Approved");
                match obj["status"]["certificate"]
                    .as_str()
                    .and_then(|b| STANDARD.decode(b).ok())
                {
                    Some(cert) if approved && !cert.is_empty() => Some(Outcome::Issued(cert)),
                    _ => None,
                }
            })
            .await
            .map_err(|e| bootstrap_fail(format!("watching the CSR {name}: {e}")))?;
        match result {
            Some(Outcome::Issued(cert)) => return Ok(cert),
            Some(Outcome::Denied(why)) => {
                return Err(Failure::new(
                    Code::CsrDenied,
                    format!("the certificate signing request {name} was denied ({why})"),
                ))
            }
            Some(Outcome::Failed(why)) => {
                return Err(bootstrap_fail(format!(
                    "the signer failed the certificate signing request {name} ({why})"
                )))
            }
            Some(Outcome::Deleted) => {
                return Err(bootstrap_fail(format!(
                    "the certificate signing request {name} was deleted while waiting"
                )))
            }
            None => {
                // The stream ended early (server-side timeout): watch again until our deadline.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Err(Failure::new(
        Code::CsrTimeout,
        format!(
            "the certificate signing request {name} was not approved and signed within {timeout:?}. Nobody approved it: auto-approval needs the ClusterRoleBinding kubeadm:node-autoapprove-bootstrap (ClusterRole system:certificates.k8s.io:certificatesigningrequests:nodeclient bound to the token's group, system:bootstrappers:kubeadm:default-node-token for kubeadm tokens); or approve it by hand: kubectl certificate approve {name}"
        ),
    ))
}

/// Checks an issued certificate: parses, chains to one of `ca_ders`, carries our key, names the
/// node, and is currently valid. Returns its notAfter (Unix seconds).
pub fn verify_issued(
    cert_pem: &[u8],
    spki: &[u8],
    node: &str,
    ca_ders: &[Vec<u8>],
) -> Result<i64, Failure> {
    let certs = crate::pin::certificates_from_pem(cert_pem)
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
        let req = build_request("node-1", None).expect("csr");
        assert!(req.name.starts_with("node-csr-"));
        assert_eq!(req.name.len(), "node-csr-".len() + 43);
        let again = build_request("node-1", Some(&req.key_pem)).expect("same key");
        assert_eq!(
            again.name, req.name,
            "the same key gives the same object name"
        );
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
