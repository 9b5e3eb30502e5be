//! Who a caller is, from the client certificate it presented (optional: the values endpoints
//! stay anonymous). The service trusts the CAs the API server itself verifies client
//! certificates with, which the API server publishes in `kube-system/
//! extension-apiserver-authentication` (`client-ca-file`), as aggregated API servers do. A
//! kubelet's client certificate names the node: `CN=system:node:NAME`, `O=system:nodes`.

use crate::client::kube::{Kube, KubeError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use std::sync::Arc;

/// The ConfigMap the API server publishes its client CAs in.
pub const AUTHENTICATION_CONFIGMAP: &str =
    "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication";

/// Why client certificates cannot be verified.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The ConfigMap could not be read.
    #[error("cannot read kube-system/extension-apiserver-authentication: {0}")]
    Api(#[source] KubeError),
    /// It holds no usable CA.
    #[error("kube-system/extension-apiserver-authentication holds no usable client-ca-file")]
    NoClientCa,
    /// rustls refused the verifier.
    #[error("cannot build the client certificate verifier: {0}")]
    Verifier(String),
}

/// A verifier for the API server's client CAs that also lets anonymous clients in.
pub async fn client_verifier(kube: &Kube) -> Result<Arc<dyn ClientCertVerifier>, IdentityError> {
    let cm = kube
        .get(AUTHENTICATION_CONFIGMAP)
        .await
        .map_err(IdentityError::Api)?
        .ok_or(IdentityError::NoClientCa)?;
    let pem = cm["data"]["client-ca-file"]
        .as_str()
        .ok_or(IdentityError::NoClientCa)?;
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes()).filter_map(Result::ok);
    roots.add_parsable_certificates(certs);
    if roots.is_empty() {
        return Err(IdentityError::NoClientCa);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| IdentityError::Verifier(e.to_string()))
}

/// The node a verified client certificate names (`CN=system:node:NAME` in `O=system:nodes`).
pub fn node_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = cert.subject();
    let in_nodes = subject
        .iter_organization()
        .any(|o| o.as_str() == Ok("system:nodes"));
    let cn = subject.iter_common_name().next()?.as_str().ok()?;
    let name = cn.strip_prefix("system:node:")?;
    (in_nodes && crate::model::validate::check_node_name(name).is_ok()).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str, orgs: &[&str]) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::default();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, cn);
        for o in orgs {
            dn.push(rcgen::DnType::OrganizationName, *o);
        }
        params.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().clone()
    }

    #[test]
    fn only_a_kubelet_certificate_names_a_node() {
        let node = cert("system:node:worker-1", &["system:nodes"]);
        assert_eq!(node_of(&node).as_deref(), Some("worker-1"));
        assert_eq!(node_of(&cert("system:node:worker-1", &[])), None);
        let admin = cert("kubernetes-admin", &["system:masters"]);
        assert_eq!(node_of(&admin), None);
        let other_group = cert("system:node:worker-1", &["system:masters"]);
        assert_eq!(node_of(&other_group), None);
        assert_eq!(
            node_of(&cert("system:node:Bad_Name", &["system:nodes"])),
            None
        );
    }
}
