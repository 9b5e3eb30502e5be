//! The check of the certificate a CSR comes back with (`join::csr::verify_issued`): whatever
//! the API server answers, it never panics, and it accepts a certificate only when it is for
//! the node's own key, names the node, and is signed by the pinned CA. Inputs are DER (wrapped
//! into a PEM block here, so the fuzzer works on the certificate itself) and, as they are,
//! PEM text. The CA and the node's key are fixed (made with openssl for the seeds).
#![no_main]

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use node_attach::join::csr::verify_issued;

const CA: &str = "MIIBkjCCATegAwIBAgIUdicCkcCRu6VK4HnoIzFvq64VCewwCgYIKoZIzj0EAwIwFTETMBEGA1UEAwwKa3ViZXJuZXRlczAgFw0yNjEyMDEyMTE5MDNaGA8yMTI2MTEwNzIxMTkwM1owFTETMBEGA1UEAwwKa3ViZXJuZXRlczBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABFih+AJ0m7DVaWDv+X0Edj2MEk0Ex6+MX8OQ7EkPwOwwDgb65ZkoTODRYGKDVrmyskUU8f6sI2Yv1hmciYcadHqjYzBhMB0GA1UdDgQWBBSWAuYQSLFTyXhWX6CZAmrxA2nU9TAfBgNVHSMEGDAWgBSWAuYQSLFTyXhWX6CZAmrxA2nU9TAPBgNVHRMBAf8EBTADAQH/MA4GA1UdDwEB/wQEAwIBBjAKBggqhkjOPQQDAgNJADBGAiEAlXO3uG3Z/frkUMApHQr1MXakS1qdBRMlMeVQDgXyx0ICIQDvkuYB7nTmq2QGHkbaUHy8JwmV3sTQqYjwiUFnYrDMsQ==";
/// The node's public key (SubjectPublicKeyInfo, base64 DER).
const SPKI: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE3znTh5VxXQwGuy3IM0hcYZEVG2kIAvPufpcokwVLn2l+UINELps0J6JOKreF3x9Qu0ZXERGLPD2HSRpMJ2p9nQ==";
const NODE: &str = "fuzz-node";

fn der(b64: &str) -> Vec<u8> {
    STANDARD.decode(b64.trim()).expect("embedded base64")
}

fn check(pem: &[u8], spki: &[u8], ca: &[Vec<u8>]) {
    if verify_issued(pem, spki, NODE, ca).is_ok() {
        let certs = node_attach::trust::pin::certificates_from_pem(pem).expect("accepted, so it parses");
        let (_, leaf) = x509_parser::parse_x509_certificate(&certs[0]).expect("leaf parses");
        assert_eq!(leaf.tbs_certificate.subject_pki.raw, spki, "another key accepted");
        let cn = leaf.subject().iter_common_name().next().and_then(|a| a.as_str().ok());
        assert_eq!(cn, Some("system:node:fuzz-node"), "another name accepted");
    }
}

fuzz_target!(|data: &[u8]| {
    let spki = der(SPKI);
    let ca = vec![der(CA)];
    let wrapped = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        STANDARD.encode(data)
    );
    check(wrapped.as_bytes(), &spki, &ca);
    check(data, &spki, &ca);
    // With no trusted CA, nothing is ever accepted.
    assert!(verify_issued(wrapped.as_bytes(), &spki, NODE, &[]).is_err());
});
