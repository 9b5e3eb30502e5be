//! The detached JWS that the bootstrap signer puts beside cluster-info's kubeconfig.
//!
//! Computed exactly as kubernetes/cluster-bootstrap `token/jws/jws.go` does: the protected header
//! is the bytes `{"alg":"HS256","kid":"<token id>"}`, the payload is the kubeconfig string exactly
//! as stored in the ConfigMap, the MAC is HMAC-SHA256 keyed by the token *secret* only, and the
//! result is `<b64url header>..<b64url mac>` (RFC 7515 appendix F). Like kubeadm, we do not parse
//! the JWS we receive: we recompute the whole string and compare, in constant time, so a different
//! `alg`, another `kid`, appended bytes or a re-serialized payload all fail.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The detached JWS of `payload` signed with token `id` and `secret`.
pub fn detached_signature(payload: &[u8], id: &str, secret: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"HS256","kid":"{id}"}}"#));
    let body = URL_SAFE_NO_PAD.encode(payload);
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(header.as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{header}..{tag}")
}

/// Whether `presented` is exactly the detached JWS of `payload` for this token, compared in
/// constant time over the whole string.
pub fn verify_detached(presented: &str, payload: &[u8], id: &str, secret: &str) -> bool {
    let expected = detached_signature(payload, id, secret);
    // ct_eq on slices of different lengths returns false without leaking content.
    expected.as_bytes().ct_eq(presented.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors from kubernetes/kubernetes
    // staging/src/k8s.io/cluster-bootstrap/token/jws/jws_test.go.
    const CONTENT: &str = "Hello from the other side. I must have called a thousand times.";
    const SECRET: &str = "my voice is my passcode";
    const ID: &str = "joshua";

    #[test]
    fn upstream_compute_vectors() {
        assert_eq!(
            detached_signature(CONTENT.as_bytes(), ID, SECRET),
            "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..VShe2taLd-YTrmWuRkcL_8QTNDHYxQIEBsAYYiIj1_8"
        );
        assert_eq!(
            detached_signature(b"", ID, SECRET),
            "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..7Ui1ALizW4jXphVUB7xUqC9vLYLL9RZeOFfVLoB7Tgk"
        );
        assert_eq!(
            detached_signature(CONTENT.as_bytes(), ID, ""),
            "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..UfkqvDGiIFxrMnFseDj9LYJOLNrvjW8aHhF71mvvAs8"
        );
    }

    #[test]
    fn upstream_validity_vectors() {
        let sig =
            "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..VShe2taLd-YTrmWuRkcL_8QTNDHYxQIEBsAYYiIj1_8";
        assert!(verify_detached(sig, CONTENT.as_bytes(), ID, SECRET));
        assert!(!verify_detached(
            &format!("{sig}foo"),
            CONTENT.as_bytes(),
            ID,
            SECRET
        ));
    }

    #[test]
    fn header_is_the_exact_upstream_bytes() {
        let sig = detached_signature(b"x", ID, SECRET);
        let header = sig.split('.').next().expect("header");
        assert_eq!(header, "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9");
        let decoded = URL_SAFE_NO_PAD.decode(header).expect("b64");
        assert_eq!(decoded, br#"{"alg":"HS256","kid":"joshua"}"#);
    }

    #[test]
    fn forged_variants_fail() {
        let payload = include_bytes!("../../tests/fixtures/upstream/expected-kubeconfig.yaml");
        let good = detached_signature(payload, "123456", "abcdef1234567890");
        assert!(verify_detached(
            &good,
            payload,
            "123456",
            "abcdef1234567890"
        ));
        // alg none
        let none = format!(
            "{}..",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"123456"}"#)
        );
        assert!(!verify_detached(
            &none,
            payload,
            "123456",
            "abcdef1234567890"
        ));
        // signed for another kid
        let other = detached_signature(payload, "654321", "abcdef1234567890");
        assert!(!verify_detached(
            &other,
            payload,
            "123456",
            "abcdef1234567890"
        ));
        // the full token as key, as the website wrongly documents
        let full = detached_signature(payload, "123456", "123456.abcdef1234567890");
        assert!(!verify_detached(
            &full,
            payload,
            "123456",
            "abcdef1234567890"
        ));
        // a payload re-serialized with one more line
        let mut reserialized = payload.to_vec();
        reserialized.extend_from_slice(b"preferences: {}\n");
        assert!(!verify_detached(
            &good,
            &reserialized,
            "123456",
            "abcdef1234567890"
        ));
        // header with whitespace
        let spaced = URL_SAFE_NO_PAD.encode(r#"{"alg": "HS256","kid":"123456"}"#);
        let tag = good.rsplit('.').next().expect("tag");
        assert!(!verify_detached(
            &format!("{spaced}..{tag}"),
            payload,
            "123456",
            "abcdef1234567890"
        ));
        assert!(!verify_detached("", payload, "123456", "abcdef1234567890"));
    }
}
