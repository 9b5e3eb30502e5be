//! The test cluster's PKI: a CA generated per run, serving and client certificates, and CSR
//! signing the way kube-controller-manager's `csrsigning` signs kubelet client certificates.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateSigningRequestDer;
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use time::{Duration, OffsetDateTime};

/// A certificate and its key, both PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    /// Certificate PEM.
    pub cert_pem: String,
    /// Private key PEM (PKCS#8).
    pub key_pem: String,
}

/// A certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: Vec<u8>,
}

fn serial() -> SerialNumber {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("random serial");
    b[0] &= 0x7f;
    SerialNumber::from_slice(&b)
}

impl Ca {
    /// A new self-signed CA named `cn`, valid ten years.
    pub fn new(cn: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        params.serial_number = Some(serial());
        let cert = params.self_signed(&key).expect("self-sign CA");
        let cert_pem = cert.pem();
        let cert_der = cert.der().to_vec();
        Ca {
            issuer: Issuer::new(params, key),
            cert_pem,
            cert_der,
        }
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// `sha256:<hex>` of the CA's SubjectPublicKeyInfo, as kubeadm prints it.
    pub fn pin(&self) -> String {
        let (_, cert) = x509_parser::parse_x509_certificate(&self.cert_der).expect("own CA parses");
        let digest = Sha256::digest(cert.tbs_certificate.subject_pki.raw);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }

    /// A serving certificate for the given DNS names and IP addresses.
    pub fn issue_server(&self, names: &[String]) -> Issued {
        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "kube-apiserver");
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.clone().try_into().expect("dns name")),
            })
            .collect();
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, key, Duration::days(365))
    }

    /// A client certificate with CN = user and O = groups (how the API server reads identity).
    pub fn issue_client(&self, user: &str, groups: &[&str], ttl: Duration) -> Issued {
        let key = KeyPair::generate().expect("client key");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        for g in groups {
            dn.push(DnType::OrganizationName, *g);
        }
        dn.push(DnType::CommonName, user);
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, key, ttl)
    }

    fn sign(&self, mut params: CertificateParams, key: KeyPair, ttl: Duration) -> Issued {
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + ttl;
        params.serial_number = Some(serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Signs a PKCS#10 request as a client certificate: the subject comes from the request, the
    /// usages from the CSR object (`digital signature`, `key encipherment`, `client auth`), no
    /// SANs, valid `ttl`. Fails when the request's own signature does not verify.
    pub fn sign_client_csr(
        &self,
        csr_der: &[u8],
        usages: &[String],
        ttl: Duration,
    ) -> Result<String, String> {
        self.sign_client_csr_crafted(csr_der, usages, ttl, None, false)
    }

    /// [`Ca::sign_client_csr`], crafted for hostile tests: the subject's CN replaced by `cn`,
    /// and with `other_key` the certificate is for a fresh key instead of the request's.
    pub fn sign_client_csr_crafted(
        &self,
        csr_der: &[u8],
        usages: &[String],
        ttl: Duration,
        cn: Option<&str>,
        other_key: bool,
    ) -> Result<String, String> {
        let der = CertificateSigningRequestDer::from(csr_der.to_vec());
        let mut req = CertificateSigningRequestParams::from_der(&der).map_err(|e| e.to_string())?;
        if let Some(cn) = cn {
            req.params
                .distinguished_name
                .push(DnType::CommonName, cn.to_owned());
        }
        let now = OffsetDateTime::now_utc();
        let p = &mut req.params;
        p.not_before = now - Duration::minutes(5);
        p.not_after = now + ttl;
        p.serial_number = Some(serial());
        p.subject_alt_names.clear();
        p.is_ca = IsCa::ExplicitNoCa;
        p.use_authority_key_identifier_extension = true;
        p.key_usages = Vec::new();
        p.extended_key_usages = Vec::new();
        for u in usages {
            match u.as_str() {
                "digital signature" => p.key_usages.push(KeyUsagePurpose::DigitalSignature),
                "key encipherment" => p.key_usages.push(KeyUsagePurpose::KeyEncipherment),
                "client auth" => p
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::ClientAuth),
                other => return Err(format!("usage {other:?} is not allowed for this signer")),
            }
        }
        if other_key {
            let key = KeyPair::generate().map_err(|e| e.to_string())?;
            let cert = req
                .params
                .signed_by(&key, &self.issuer)
                .map_err(|e| e.to_string())?;
            return Ok(cert.pem());
        }
        let cert = req.signed_by(&self.issuer).map_err(|e| e.to_string())?;
        Ok(cert.pem())
    }
}

/// Subject CN and O values of a DER certificate.
pub fn subject_of(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    let orgs = subject
        .iter_organization()
        .filter_map(|a| a.as_str().ok().map(str::to_owned))
        .collect();
    Some((cn, orgs))
}

/// Subject (CN, O) of a PEM certificate request, and whether it asks for any SAN.
pub fn csr_subject(csr_der: &[u8]) -> Result<(String, Vec<String>, bool), String> {
    use x509_parser::prelude::FromDer;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
        .map_err(|e| format!("cannot parse the certificate request: {e}"))?;
    csr.verify_signature()
        .map_err(|_| "the certificate request's signature does not verify".to_string())?;
    let info = &csr.certification_request_info;
    let cn = info
        .subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    let orgs = info
        .subject
        .iter_organization()
        .filter_map(|a| a.as_str().ok().map(str::to_owned))
        .collect();
    let has_sans = csr.requested_extensions().is_some_and(|mut exts| {
        exts.any(|e| {
            matches!(
                e,
                x509_parser::extensions::ParsedExtension::SubjectAlternativeName(_)
            )
        })
    });
    Ok((cn, orgs, has_sans))
}
