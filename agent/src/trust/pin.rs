//! CA public-key pins, as `kubeadm join --discovery-token-ca-cert-hash` uses them.
//!
//! A pin is `sha256:` and the lowercase hex SHA-256 of a certificate's DER SubjectPublicKeyInfo
//! (the whole SEQUENCE, algorithm identifier included). Parsing follows kubeadm's
//! `pubkeypin.Allow` (kubernetes/kubernetes `cmd/kubeadm/app/util/pubkeypin/pubkeypin.go`):
//! exactly one `:`, the algorithm case-insensitive and only `sha256`, exactly 32 bytes of hex in
//! either case. A bundle passes when any of its certificates matches any pin.

use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;
use subtle::ConstantTimeEq;

/// Why a pin, or the certificates it was checked against, were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PinError {
    /// The pin text is not `sha256:<64 hex digits>`.
    #[error(
        "malformed CA certificate hash {shown:?}: {reason}; expected sha256:<64 hex digits>, \
         as printed by `openssl x509 -in ca.crt -pubkey -noout | openssl pkey -pubin -outform der \
         | openssl dgst -sha256`"
    )]
    Malformed {
        /// The offending text, shortened.
        shown: String,
        /// What was wrong.
        reason: &'static str,
    },
    /// No PEM certificate could be read from the CA data.
    #[error("the CA data holds no readable certificate: {0}")]
    NoCertificate(String),
    /// A certificate in the CA data could not be parsed.
    #[error("the CA data holds a certificate that cannot be parsed: {0}")]
    BadCertificate(String),
}

/// One `sha256:` SPKI pin.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CaPin([u8; 32]);

impl CaPin {
    /// The pin of a certificate given as DER.
    pub fn of_certificate_der(der: &[u8]) -> Result<CaPin, PinError> {
        Ok(CaPin::of_spki_der(spki_of_certificate(der)?))
    }

    /// The pin of a DER SubjectPublicKeyInfo.
    pub fn of_spki_der(spki: &[u8]) -> CaPin {
        CaPin(Sha256::digest(spki).into())
    }

    /// Whether the pin equals `other`, compared in constant time.
    pub fn matches(&self, other: &CaPin) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl FromStr for CaPin {
    type Err = PinError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let shown: String = s.chars().take(80).collect();
        let malformed = |reason| PinError::Malformed {
            shown: shown.clone(),
            reason,
        };
        let mut parts = s.trim().split(':');
        let (Some(alg), Some(hex), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(malformed("it must be <algorithm>:<hex>"));
        };
        if !alg.eq_ignore_ascii_case("sha256") {
            return Err(malformed("only the sha256 algorithm is known"));
        }
        if hex.len() != 64 {
            return Err(malformed("the hash is not 64 hex digits"));
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            let hi = hex_value(pair[0]).ok_or_else(|| malformed("the hash is not hex"))?;
            let lo = hex_value(pair[1]).ok_or_else(|| malformed("the hash is not hex"))?;
            out[i] = hi << 4 | lo;
        }
        Ok(CaPin(out))
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for CaPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CaPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaPin({self})")
    }
}

impl serde::Serialize for CaPin {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The pins a join accepts; a certificate passes when it matches any of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PinSet(Vec<CaPin>);

impl PinSet {
    /// A set of pins, duplicates removed.
    pub fn new(pins: impl IntoIterator<Item = CaPin>) -> PinSet {
        let mut set = PinSet::default();
        for pin in pins {
            set.insert(pin);
        }
        set
    }

    /// Adds a pin unless it is already present.
    pub fn insert(&mut self, pin: CaPin) {
        if !self.0.contains(&pin) {
            self.0.push(pin);
        }
    }

    /// Whether no pin was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The pins in the order given.
    pub fn pins(&self) -> &[CaPin] {
        &self.0
    }

    /// The first certificate (DER) whose SPKI matches any pin, with its pin. Every pair is
    /// compared, so timing does not reveal which one matched.
    pub fn first_match<'a>(
        &self,
        certificates: &'a [Vec<u8>],
    ) -> Result<Option<(&'a [u8], CaPin)>, PinError> {
        let mut found = None;
        for der in certificates {
            let pin = CaPin::of_certificate_der(der)?;
            let mut hit = false;
            for allowed in &self.0 {
                hit |= allowed.matches(&pin);
            }
            if hit && found.is_none() {
                found = Some((der.as_slice(), pin));
            }
        }
        Ok(found)
    }
}

impl PinSet {
    /// Every certificate whose SPKI some pin names, with its pin, in bundle order: the only
    /// ones node-attach trusts once a pin matched. Every pair is compared.
    pub fn pinned<'a>(
        &self,
        certificates: &'a [Vec<u8>],
    ) -> Result<Vec<(&'a [u8], CaPin)>, PinError> {
        let mut out = Vec::new();
        for der in certificates {
            let pin = CaPin::of_certificate_der(der)?;
            let mut hit = false;
            for allowed in &self.0 {
                hit |= allowed.matches(&pin);
            }
            if hit {
                out.push((der.as_slice(), pin));
            }
        }
        Ok(out)
    }
}

/// Why a pinned certificate cannot serve as the cluster CA.
pub fn unfit_as_ca(der: &[u8]) -> Option<String> {
    let (_, cert) = match x509_parser::parse_x509_certificate(der) {
        Ok(c) => c,
        Err(e) => return Some(format!("it does not parse: {e}")),
    };
    let validity = cert.validity();
    let now = x509_parser::time::ASN1Time::now();
    if validity.not_before > now {
        return Some(format!("it is not valid before {}", validity.not_before));
    }
    if validity.not_after < now {
        return Some(format!("it expired on {}", validity.not_after));
    }
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        Ok(_) => return Some("it is not a CA certificate (basic constraints lack CA:TRUE)".into()),
        Err(e) => return Some(format!("its basic constraints are malformed: {e}")),
    }
    match cert.key_usage() {
        Ok(Some(ku)) if !ku.value.key_cert_sign() => {
            Some("its key usage does not allow signing certificates (keyCertSign)".into())
        }
        Err(e) => Some(format!("its key usage is malformed: {e}")),
        _ => None,
    }
}

/// PEM `CERTIFICATE` blocks for DER certificates.
pub fn certificates_to_pem(ders: &[Vec<u8>]) -> Vec<u8> {
    use base64::Engine;
    let mut out = String::new();
    for der in ders {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out.into_bytes()
}

/// The DER SubjectPublicKeyInfo inside a DER certificate.
pub fn spki_of_certificate(der: &[u8]) -> Result<&[u8], PinError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PinError::BadCertificate(e.to_string()))?;
    Ok(cert.tbs_certificate.subject_pki.raw)
}

/// Every `CERTIFICATE` block of a PEM bundle, as DER. Anything that is not a certificate block,
/// or any bytes outside blocks other than whitespace, make the whole bundle invalid, so a
/// bundle with junk appended is refused as kubeadm refuses it.
pub fn certificates_from_pem(pem_text: &[u8]) -> Result<Vec<Vec<u8>>, PinError> {
    use rustls_pki_types::pem::{SectionKind, SliceIter};
    let mut out = Vec::new();
    let mut sections = SliceIter::<(SectionKind, Vec<u8>)>::new(pem_text);
    loop {
        let rest = trim_ascii_start(sections.remainder());
        if rest.is_empty() {
            break;
        }
        if !rest.starts_with(b"-----BEGIN ") {
            return Err(PinError::NoCertificate(
                "unexpected data outside a PEM block".into(),
            ));
        }
        match sections.next() {
            Some(Ok((SectionKind::Certificate, der))) => out.push(der),
            Some(Ok((kind, _))) => {
                return Err(PinError::NoCertificate(format!(
                    "a {kind:?} block where a certificate was expected"
                )))
            }
            Some(Err(e)) => return Err(PinError::NoCertificate(e.to_string())),
            None => break,
        }
    }
    if out.is_empty() {
        return Err(PinError::NoCertificate("no CERTIFICATE block".into()));
    }
    // Make sure each one parses, so later steps can rely on it.
    for der in &out {
        spki_of_certificate(der)?;
    }
    Ok(out)
}

fn trim_ascii_start(mut b: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = b {
        if first.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    // Upstream test vectors, from kubernetes/kubernetes
    // cmd/kubeadm/app/util/pubkeypin/pubkeypin_test.go (`testCertPEM`, `testCert2PEM`,
    // `expectedHash`) and cmd/kubeadm/app/discovery/token/testdata/ca-cert.pem with the hash
    // from token_test.go `TestRetrieveValidatedConfigInfo`.
    const PUBKEYPIN_CERT: &str =
        include_str!("../../tests/fixtures/upstream/pubkeypin-test-cert.pem");
    const PUBKEYPIN_CERT2: &str =
        include_str!("../../tests/fixtures/upstream/pubkeypin-test-cert2.pem");
    const PUBKEYPIN_HASH: &str =
        "sha256:345959acb2c3b2feb87d281961c893f62a314207ef02599f1cc4a5fb255480b3";
    const DISCOVERY_CA: &str = include_str!("../../tests/fixtures/upstream/discovery-ca-cert.pem");
    const DISCOVERY_CA_HASH: &str =
        "sha256:98be2e6d4d8a89aa308fb15de0c07e2531ce549c68dec1687cdd5c06f0826658";

    fn der(pem: &str) -> Vec<u8> {
        certificates_from_pem(pem.as_bytes())
            .expect("pem")
            .remove(0)
    }

    #[test]
    fn upstream_hash_vectors() {
        let pin = CaPin::of_certificate_der(&der(PUBKEYPIN_CERT)).expect("pin");
        assert_eq!(pin.to_string(), PUBKEYPIN_HASH);
        // The discovery CA has serial number 0, which strict parsers refuse.
        let pin = CaPin::of_certificate_der(&der(DISCOVERY_CA)).expect("pin");
        assert_eq!(pin.to_string(), DISCOVERY_CA_HASH);
    }

    #[test]
    fn upstream_set_behaviour() {
        // Mirrors pubkeypin_test.go TestSet.
        for junk in [
            "xyz",
            "0011223344",
            &format!("{PUBKEYPIN_HASH}{PUBKEYPIN_HASH}"),
        ] {
            assert!(junk.parse::<CaPin>().is_err(), "{junk}");
        }
        let certs = vec![der(PUBKEYPIN_CERT)];
        assert!(PinSet::default()
            .first_match(&certs)
            .expect("parse")
            .is_none());
        let set = PinSet::new([PUBKEYPIN_HASH
            .to_uppercase()
            .parse::<CaPin>()
            .expect("upper")]);
        assert!(set.first_match(&certs).expect("parse").is_some());
        assert!(set
            .first_match(&[der(PUBKEYPIN_CERT2)])
            .expect("parse")
            .is_none());
    }

    #[test]
    fn any_certificate_of_a_bundle_may_match() {
        let bundle = format!("{PUBKEYPIN_CERT2}\n{DISCOVERY_CA}\n");
        let certs = certificates_from_pem(bundle.as_bytes()).expect("bundle");
        assert_eq!(certs.len(), 2);
        let set = PinSet::new([DISCOVERY_CA_HASH.parse().expect("pin")]);
        let (hit, pin) = set.first_match(&certs).expect("parse").expect("match");
        assert_eq!(hit, certs[1].as_slice());
        assert_eq!(pin.to_string(), DISCOVERY_CA_HASH);
    }

    #[test]
    fn pem_bundles_with_junk_are_refused() {
        // Mirrors token_test.go TestParsePEMCert.
        assert!(certificates_from_pem(&[0]).is_err());
        assert!(certificates_from_pem(b"").is_err());
        assert!(certificates_from_pem(format!("{PUBKEYPIN_CERT}\nABC").as_bytes()).is_err());
        assert_eq!(
            certificates_from_pem(format!("{PUBKEYPIN_CERT}\n{PUBKEYPIN_CERT}").as_bytes())
                .expect("two")
                .len(),
            2
        );
    }

    #[test]
    fn pin_parsing_rules() {
        assert!("sha256:".parse::<CaPin>().is_err());
        assert!(format!("md5:{}", &DISCOVERY_CA_HASH[7..])
            .parse::<CaPin>()
            .is_err());
        assert!(format!("SHA256:{}", &DISCOVERY_CA_HASH[7..])
            .parse::<CaPin>()
            .is_ok());
        assert!(format!("sha256:sha256:{}", &DISCOVERY_CA_HASH[7..])
            .parse::<CaPin>()
            .is_err());
        assert!(format!("sha256:{}g", &DISCOVERY_CA_HASH[7..70])
            .parse::<CaPin>()
            .is_err());
        let lower: CaPin = DISCOVERY_CA_HASH.parse().expect("pin");
        assert_eq!(lower.to_string(), DISCOVERY_CA_HASH);
    }
}
