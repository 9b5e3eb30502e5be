//! Ed25519 signatures over whole files (a manifest, node-attach's own binary), with ring — the
//! signature code rustls already links, so signing adds no dependency and almost no size.
//!
//! Three text forms, each one line:
//! - a public key: `ed25519:` and the standard base64 of its 32 bytes (what the one-liner, the
//!   values and `join --config` carry);
//! - a signature file `FILE.sig`: the standard base64 of the 64-byte signature of FILE's exact
//!   bytes (pure Ed25519, RFC 8032: no prehash, so `openssl pkeyutl -verify -rawin` checks the
//!   same signature, which is how `attach.sh` checks the binary it downloads);
//! - a private key: PKCS#8 in PEM (`-----BEGIN PRIVATE KEY-----`), as `node-attach artifacts
//!   keygen` and `openssl genpkey -algorithm ed25519` write it.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use std::fmt;

/// The public key's text prefix.
pub const KEY_PREFIX: &str = "ed25519:";
/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); 12 bytes, so its base64
/// (`MCowBQYDK2VwAyEA`) followed by the key's base64 is the SPKI's base64.
pub const SPKI_PREFIX_B64: &str = "MCowBQYDK2VwAyEA";

/// Why a key or signature was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// The public key text is malformed.
    #[error("{0:?} is not an Ed25519 public key (expected ed25519:<base64 of 32 bytes>)")]
    BadKey(String),
    /// The signature file is malformed.
    #[error("the signature is malformed (expected one line of base64 of 64 bytes)")]
    BadSignature,
    /// The signature does not verify with the key.
    #[error("the signature does not verify with the public key {0}")]
    Mismatch(String),
    /// The private key cannot be used.
    #[error("the private key is not an Ed25519 PKCS#8 key in PEM: {0}")]
    BadPrivateKey(String),
}

/// The DER before the seed in ring's PKCS#8 v2 Ed25519 document (its length byte aside).
const PKCS8_V2_PREFIX: [u8; 16] = [
    0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// The DER before the seed in a PKCS#8 v1 Ed25519 key (RFC 8410 section 10.3).
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// An Ed25519 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Parses `ed25519:<base64>`.
    pub fn parse(text: &str) -> Result<PublicKey, SignatureError> {
        let t = text.trim();
        let bad = || SignatureError::BadKey(t.chars().take(80).collect());
        let b64 = t.strip_prefix(KEY_PREFIX).ok_or_else(bad)?;
        let bytes = STANDARD.decode(b64).map_err(|_| bad())?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(PublicKey(key))
    }

    /// The raw key.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key as a PEM SubjectPublicKeyInfo (for `openssl pkeyutl -verify -pubin`).
    pub fn to_spki_pem(&self) -> String {
        format!(
            "-----BEGIN PUBLIC KEY-----\n{SPKI_PREFIX_B64}{}\n-----END PUBLIC KEY-----\n",
            STANDARD.encode(self.0)
        )
    }

    /// Verifies `signature_text` (a `.sig` file's contents) over `message`.
    pub fn verify(&self, message: &[u8], signature_text: &[u8]) -> Result<(), SignatureError> {
        let text = std::str::from_utf8(signature_text).map_err(|_| SignatureError::BadSignature)?;
        let line = text.trim();
        if line.len() > 100 || line.contains(char::is_whitespace) {
            return Err(SignatureError::BadSignature);
        }
        let sig = STANDARD
            .decode(line)
            .map_err(|_| SignatureError::BadSignature)?;
        if sig.len() != 64 {
            return Err(SignatureError::BadSignature);
        }
        UnparsedPublicKey::new(&ED25519, self.0)
            .verify(message, &sig)
            .map_err(|_| SignatureError::Mismatch(self.to_string()))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{KEY_PREFIX}{}", STANDARD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A signing key (held only by `node-attach artifacts`, never by join).
pub struct SigningKey(Ed25519KeyPair);

impl SigningKey {
    /// A fresh key; returns it with its PKCS#8 PEM (to be written 0600).
    pub fn generate() -> Result<(SigningKey, zeroize::Zeroizing<String>), SignatureError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| SignatureError::BadPrivateKey("no randomness".into()))?;
        // ring writes PKCS#8 v2 (RFC 5958, with the public key), which OpenSSL 3.0 cannot
        // read; the file gets v1 (RFC 8410: the 32-byte seed only), which both read.
        let v2 = pkcs8.as_ref();
        if v2.len() < 48 || v2[2..16] != PKCS8_V2_PREFIX[2..] {
            return Err(SignatureError::BadPrivateKey(
                "ring made an unexpected PKCS#8 document".into(),
            ));
        }
        let mut v1 = zeroize::Zeroizing::new(PKCS8_V1_PREFIX.to_vec());
        v1.extend_from_slice(&v2[16..48]);
        let pem = zeroize::Zeroizing::new(pem_encode("PRIVATE KEY", &v1));
        let key = Ed25519KeyPair::from_pkcs8(v2)
            .map_err(|e| SignatureError::BadPrivateKey(e.to_string()))?;
        Ok((SigningKey(key), pem))
    }

    /// Reads a PKCS#8 PEM private key (v1 as openssl writes it, or v2 with the public key).
    pub fn from_pem(pem: &[u8]) -> Result<SigningKey, SignatureError> {
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem)
            .map_err(|e| SignatureError::BadPrivateKey(e.to_string()))?;
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
            .map_err(|e| SignatureError::BadPrivateKey(e.to_string()))?;
        Ok(SigningKey(key))
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        let mut k = [0u8; 32];
        k.copy_from_slice(self.0.public_key().as_ref());
        PublicKey(k)
    }

    /// The `.sig` file for `message`: base64 of the signature and a newline.
    pub fn sign(&self, message: &[u8]) -> String {
        format!("{}\n", STANDARD.encode(self.0.sign(message).as_ref()))
    }
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 8032 section 7.1, TEST 2: the public key, a one-byte message and its signature.
    const RFC_KEY: &str = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c";
    const RFC_SIG: &str = "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn the_rfc_8032_vector_verifies() {
        let key =
            PublicKey::parse(&format!("ed25519:{}", STANDARD.encode(unhex(RFC_KEY)))).expect("key");
        let sig = STANDARD.encode(unhex(RFC_SIG));
        key.verify(&[0x72], sig.as_bytes()).expect("verifies");
        assert!(matches!(
            key.verify(&[0x73], sig.as_bytes()),
            Err(SignatureError::Mismatch(_))
        ));
    }

    #[test]
    fn sign_then_verify_and_reload_the_key() {
        let (key, pem) = SigningKey::generate().expect("keygen");
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let again = SigningKey::from_pem(pem.as_bytes()).expect("reload");
        assert_eq!(again.public_key(), key.public_key());
        let sig = key.sign(b"manifest");
        let public = PublicKey::parse(&key.public_key().to_string()).expect("round trip");
        public.verify(b"manifest", sig.as_bytes()).expect("ok");
        assert!(public.verify(b"manifest!", sig.as_bytes()).is_err());
        let (other, _) = SigningKey::generate().expect("keygen");
        assert!(other
            .public_key()
            .verify(b"manifest", sig.as_bytes())
            .is_err());
        assert!(key.public_key().to_spki_pem().contains("MCowBQYDK2VwAyEA"));
    }

    #[test]
    fn malformed_keys_and_signatures_are_refused() {
        for bad in ["", "ed25519:", "rsa:AAAA", "ed25519:AAAA", "ed25519:!!"] {
            assert!(PublicKey::parse(bad).is_err(), "{bad}");
        }
        let (key, _) = SigningKey::generate().expect("keygen");
        let k = key.public_key();
        for bad in [&b""[..], b"AAAA", b"not base64!", b"\xff\xfe"] {
            assert_eq!(k.verify(b"x", bad), Err(SignatureError::BadSignature));
        }
        assert!(SigningKey::from_pem(
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        )
        .is_err());
    }
}
