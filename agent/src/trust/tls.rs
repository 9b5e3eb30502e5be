//! Every rustls client configuration node-attach uses, built in one place.
//!
//! * [`system_roots`]: the operating system's trust store (values URL, callbacks);
//! * [`trusting_only`]: only the given CA certificates (the pinned cluster CA);
//! * [`danger_unverified`]: no certificate verification at all, for the first, anonymous
//!   cluster-info read that kubeadm also makes without verification. Its answer is trusted only
//!   after the JWS and the CA pin check out, and every use is logged.
//!
//! One crypto provider (ring) is installed once at start-up.

use crate::effects::input;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// A configuration that accepts any server certificate. Only for the first cluster-info read,
/// whose answer is verified by other means before anything trusts it.
pub fn danger_unverified() -> ClientConfig {
    tracing::info!(
        "reading cluster-info without TLS verification, as kubeadm does; it is trusted only once \
         its JWS signature and CA pin check out"
    );
    builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCertificate(provider())))
        .with_no_client_auth()
}

/// Accepts any certificate chain but still checks that the handshake is signed by the key in
/// the presented certificate, so the session is at least bound to that key.
#[derive(Debug)]
struct AcceptAnyServerCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
