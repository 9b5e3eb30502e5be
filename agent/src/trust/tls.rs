//! Every rustls client configuration node-attach uses, built in one place.
//!
//! * [`system_roots`]: the operating system's trust store (values URL, callbacks);
//! * [`trusting_only`]: only the given CA certificates (the pinned cluster CA);
//! * [`Deferred`]: for the first, anonymous cluster-info read that kubeadm also makes without
//!   verification: its answer is trusted only after the JWS and the CA pin check out, and then
//!   every certificate chain the connection saw is verified against the pinned CA (so kubeadm's
//!   second, pinned read is not needed). Every use is logged.
//!
//! One crypto provider (ring) is installed once at start-up.

use crate::effects::input;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The largest CA bundle read (Debian's whole bundle is about 220 KiB).
const MAX_BUNDLE: u64 = 8 * 1024 * 1024;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// None of the given CA certificates could be used as a trust anchor.
    #[error("no usable CA certificate: {0}")]
    NoTrustAnchor(String),
    /// The system trust store could not be found or read.
    #[error(
        "no system CA bundle found (looked at $SSL_CERT_FILE and {0}); install ca-certificates \
         or pass --values-ca-file"
    )]
    NoSystemRoots(String),
    /// A CA file could not be read.
    #[error("cannot read CA file {source}")]
    ReadCa {
        /// Why (names the file).
        #[source]
        source: input::InputError,
    },
    /// A client certificate or key was refused.
    #[error("the client certificate or key cannot be used: {0}")]
    ClientIdentity(String),
}

/// Installs ring as the process-wide rustls provider. Safe to call more than once.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn builder() -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| unreachable!("ring supports the default protocol versions: {e}"))
}

/// Bundle locations of the common distributions, in the order rustls-native-certs and Go try.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// A configuration trusting the operating system's CA bundle plus `extra` (a PEM file).
pub fn system_roots(extra: Option<&Path>) -> Result<ClientConfig, TlsError> {
    Ok(builder()
        .with_root_certificates(system_root_store(extra)?)
        .with_no_client_auth())
}

/// Like [`system_roots`], presenting a client certificate (the node's, to the values service).
pub fn system_roots_with_identity(
    extra: Option<&Path>,
    identity: &ClientIdentity,
) -> Result<ClientConfig, TlsError> {
    builder()
        .with_root_certificates(system_root_store(extra)?)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| TlsError::ClientIdentity(e.to_string()))
}

fn system_root_store(extra: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    let candidates = env
        .into_iter()
        .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from));
    for path in candidates {
        if let Ok(file) = input::read(&path, MAX_BUNDLE) {
            add_pem(&mut roots, &file.bytes);
            if !roots.is_empty() {
                break;
            }
        }
    }
    if let Some(path) = extra {
        let bytes = input::read(path, MAX_BUNDLE)
            .map_err(|source| TlsError::ReadCa { source })?
            .bytes;
        let before = roots.len();
        add_pem(&mut roots, &bytes);
        if roots.len() == before {
            return Err(TlsError::NoTrustAnchor(format!(
                "{} holds no certificate",
                path.display()
            )));
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoSystemRoots(SYSTEM_BUNDLES.join(", ")));
    }
    Ok(roots)
}

/// A client certificate chain and its private key, such as the kubelet's client pair
/// (`kubelet-client-current.pem` holds both).
pub struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl ClientIdentity {
    /// Reads a PEM holding the certificate chain and the key, in any order.
    pub fn from_pem(pem: &[u8]) -> Result<ClientIdentity, TlsError> {
        use rustls::pki_types::pem::PemObject;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::ClientIdentity(format!("client certificate: {e}")))?;
        if chain.is_empty() {
            return Err(TlsError::ClientIdentity("no client certificate".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(pem)
            .map_err(|e| TlsError::ClientIdentity(format!("client key: {e}")))?;
        Ok(ClientIdentity { chain, key })
    }
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

fn add_pem(roots: &mut RootCertStore, pem: &[u8]) {
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem).filter_map(Result::ok);
    roots.add_parsable_certificates(certs);
}

/// A configuration that trusts exactly these CA certificates (DER) and nothing else.
pub fn trusting_only(ca_ders: &[Vec<u8>]) -> Result<ClientConfig, TlsError> {
    Ok(builder()
        .with_root_certificates(root_store(ca_ders)?)
        .with_no_client_auth())
}

/// Like [`trusting_only`], presenting a client certificate chain and key.
pub fn trusting_only_with_identity(
    ca_ders: &[Vec<u8>],
    identity: &ClientIdentity,
) -> Result<ClientConfig, TlsError> {
    builder()
        .with_root_certificates(root_store(ca_ders)?)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| TlsError::ClientIdentity(e.to_string()))
}

fn root_store(ca_ders: &[Vec<u8>]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let mut last_error = String::from("no certificate given");
    for der in ca_ders {
        if let Err(e) = roots.add(CertificateDer::from(der.clone())) {
            last_error = e.to_string();
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoTrustAnchor(last_error));
    }
    Ok(roots)
}

/// A verifier for the first, anonymous cluster-info read that learns afterwards what to trust.
///
/// Until [`Deferred::trust`] it accepts any certificate chain (the handshake is still checked
/// to be signed by the presented certificate's key, so the session is bound to that key) and
/// keeps every chain with the name it was presented for. `trust` then verifies each kept chain
/// against the pinned CA exactly as a fresh connection trusting only that CA would (webpki:
/// the chain, validity, the server name), and from then on every handshake is verified so.
/// The connections made before are thus verified after the fact, on the very session that
/// carried cluster-info: what kubeadm's second, pinned read of cluster-info proves, without
/// the second request (and without a window between the two reads).
#[derive(Debug)]
pub struct Deferred {
    provider: Arc<CryptoProvider>,
    state: Mutex<DeferredState>,
}

#[derive(Debug)]
enum DeferredState {
    /// Chains seen so far, none verified yet.
    Recording(Vec<SeenChain>),
    /// Every handshake is verified against the pinned CA.
    Trusting(Arc<rustls::client::WebPkiServerVerifier>),
}

#[derive(Debug)]
struct SeenChain {
    end_entity: CertificateDer<'static>,
    intermediates: Vec<CertificateDer<'static>>,
    server_name: ServerName<'static>,
}

/// Why the chains a [`Deferred`] verifier saw are not trusted.
#[derive(Debug, thiserror::Error)]
pub enum DeferredError {
    /// No CA certificate could anchor a chain.
    #[error(transparent)]
    Roots(#[from] TlsError),
    /// A chain seen before does not verify against the CA.
    #[error("the certificate the API server presented does not verify against the pinned CA: {0}")]
    Chain(rustls::Error),
    /// Trust was already decided.
    #[error("the CA to trust was already decided")]
    Decided,
}

impl Deferred {
    /// A verifier in its recording state.
    pub fn new() -> Arc<Deferred> {
        Arc::new(Deferred {
            provider: provider(),
            state: Mutex::new(DeferredState::Recording(Vec::new())),
        })
    }

    /// A client configuration using this verifier (no client certificate).
    pub fn config(self: &Arc<Self>) -> ClientConfig {
        tracing::info!(
            "reading cluster-info before its CA is known, as kubeadm does; the connection's \
             certificate is verified once the JWS signature and the CA pin check out"
        );
        builder()
            .dangerous()
            .with_custom_certificate_verifier(self.clone())
            .with_no_client_auth()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DeferredState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Trusts exactly `ca_ders` from now on, after verifying every chain seen so far against
    /// them. On an error nothing seen is trusted: the connections this verifier made must
    /// not be used again.
    pub fn trust(&self, ca_ders: &[Vec<u8>]) -> Result<(), DeferredError> {
        let roots = Arc::new(root_store(ca_ders)?);
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots,
            self.provider.clone(),
        )
        .build()
        .map_err(|e| DeferredError::Roots(TlsError::NoTrustAnchor(e.to_string())))?;
        let mut state = self.lock();
        let DeferredState::Recording(seen) = &*state else {
            return Err(DeferredError::Decided);
        };
        let now = UnixTime::now();
        let checked = seen.iter().try_for_each(|c| {
            verifier
                .verify_server_cert(&c.end_entity, &c.intermediates, &c.server_name, &[], now)
                .map(drop)
                .map_err(DeferredError::Chain)
        });
        *state = DeferredState::Trusting(verifier);
        checked
    }
}

impl ServerCertVerifier for Deferred {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &mut *self.lock() {
            DeferredState::Recording(seen) => {
                seen.push(SeenChain {
                    end_entity: end_entity.clone().into_owned(),
                    intermediates: intermediates
                        .iter()
                        .map(|c| c.clone().into_owned())
                        .collect(),
                    server_name: server_name.to_owned(),
                });
                Ok(ServerCertVerified::assertion())
            }
            DeferredState::Trusting(v) => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    /// A CA (DER) and a server certificate it issued for `localhost` (DER).
    fn ca_and_server() -> (Vec<u8>, CertificateDer<'static>) {
        let ca_key = KeyPair::generate().expect("key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).expect("ca");
        let issuer = Issuer::new(ca, ca_key);
        let server_key = KeyPair::generate().expect("key");
        let server = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        let server = server.signed_by(&server_key, &issuer).expect("server");
        (ca_cert.der().to_vec(), server.der().clone())
    }

    fn present(v: &Deferred, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let name = ServerName::try_from("localhost").expect("name");
        v.verify_server_cert(cert, &[], &name, &[], UnixTime::now())
            .map(drop)
    }

    #[test]
    fn a_recorded_chain_is_verified_against_the_ca_trusted_later() {
        let (ca, server) = ca_and_server();
        let v = Deferred::new();
        present(&v, &server).expect("recorded, not yet verified");
        v.trust(std::slice::from_ref(&ca))
            .expect("chains to the CA");
        present(&v, &server).expect("verified from now on");
        assert!(matches!(v.trust(&[ca]), Err(DeferredError::Decided)));
    }

    #[test]
    fn a_recorded_chain_from_another_ca_is_refused_and_so_is_every_later_one() {
        let (_, server) = ca_and_server();
        let (other_ca, _) = ca_and_server();
        let v = Deferred::new();
        present(&v, &server).expect("recorded");
        assert!(matches!(v.trust(&[other_ca]), Err(DeferredError::Chain(_))));
        assert!(present(&v, &server).is_err(), "a new handshake is verified");
    }
}
