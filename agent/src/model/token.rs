//! Bootstrap tokens (`<id>.<secret>`) and openapi tokens, validated on the way in.
//!
//! The token format is the one the API server's bootstrap authenticator accepts
//! (kubernetes/cluster-bootstrap `token/api/types.go`: six characters of `[a-z0-9]`, a dot, sixteen
//! characters of `[a-z0-9]`). The id is public; the secret lives in a [`Secret`].

use crate::model::secret::Secret;
use std::fmt;
use std::str::FromStr;

/// Length of a bootstrap token id.
pub const TOKEN_ID_LEN: usize = 6;
/// Length of a bootstrap token secret.
pub const TOKEN_SECRET_LEN: usize = 16;

/// Why a token was refused. The messages never contain the secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// The bootstrap token does not have the `[a-z0-9]{6}.[a-z0-9]{16}` shape.
    #[error(
        "malformed bootstrap token: {reason}; expected the form ID.SECRET where ID is 6 and \
         SECRET is 16 characters of [a-z0-9] (for example abcdef.0123456789abcdef)"
    )]
    MalformedBootstrapToken {
        /// What was wrong, without the secret.
        reason: &'static str,
    },
    /// The openapi token has characters that cannot sit in a URL path segment, or a bad length.
    #[error("malformed openapi token: {reason}; expected 8 to 512 characters of [A-Za-z0-9._~-]")]
    MalformedOpenApiToken {
        /// What was wrong, without the token.
        reason: &'static str,
    },
}

fn is_token_char(c: u8) -> bool {
    c.is_ascii_digit() || c.is_ascii_lowercase()
}

/// A bootstrap token: a public id and a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    id: String,
    secret: Secret,
}

impl BootstrapToken {
    /// Builds a token from its parts, validating both.
    pub fn from_parts(id: &str, secret: &str) -> Result<Self, TokenError> {
        if id.len() != TOKEN_ID_LEN || !id.bytes().all(is_token_char) {
            return Err(TokenError::MalformedBootstrapToken {
                reason: "the id is not 6 characters of [a-z0-9]",
            });
        }
        // Check the whole secret without stopping at the first bad byte, like upstream's
        // IsValidBootstrapToken, so the time taken does not depend on where a typo is.
        let mut ok = secret.len() == TOKEN_SECRET_LEN;
        for c in secret.bytes() {
            ok &= is_token_char(c);
        }
        if !ok {
            return Err(TokenError::MalformedBootstrapToken {
                reason: "the secret is not 16 characters of [a-z0-9]",
            });
        }
        Ok(BootstrapToken {
            id: id.to_owned(),
            secret: Secret::new(secret),
        })
    }

    /// Generates a fresh random token from the operating system's random source.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let id = random_token_chars(TOKEN_ID_LEN)?;
        let secret = random_token_chars(TOKEN_SECRET_LEN)?;
        Ok(BootstrapToken {
            id,
            secret: Secret::new(secret),
        })
    }

    /// The public token id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The token secret.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// The whole `<id>.<secret>` string, for an `Authorization: Bearer` header or a 0600 file.
    pub fn expose_full(&self) -> Secret {
        Secret::new(format!("{}.{}", self.id, self.secret.expose()))
    }
}

/// `n` characters drawn uniformly from `[a-z0-9]`, as kubeadm's generator does.
pub fn random_token_chars(n: usize) -> Result<String, getrandom::Error> {
    const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(n);
    while out.len() < n {
        let mut buf = [0u8; 32];
        getrandom::fill(&mut buf)?;
        // Rejection sampling: 252 = 7 * 36 keeps the distribution uniform.
        for b in buf {
            if b < 252 && out.len() < n {
                out.push(ALPHABET[usize::from(b % 36)] as char);
            }
        }
    }
    Ok(out)
}

impl FromStr for BootstrapToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let mut parts = s.split('.');
        let (Some(id), Some(secret), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::MalformedBootstrapToken {
                reason: "it must have exactly one '.' between id and secret",
            });
        };
        BootstrapToken::from_parts(id, secret)
    }
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "BootstrapToken({}.{})",
            self.id,
            crate::model::secret::REDACTED
        )
    }
}

impl fmt::Display for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.id, crate::model::secret::REDACTED)
    }
}

/// An openapi token: the key under which the control plane keeps this cluster's values.
#[derive(Clone, PartialEq, Eq)]
pub struct OpenApiToken(Secret);

impl OpenApiToken {
    /// The token itself, for substitution into the values URL.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// The token as a [`Secret`], for scrubbing text that came from outside.
    pub fn secret(&self) -> &Secret {
        &self.0
    }
}

impl FromStr for OpenApiToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() < 8 || s.len() > 512 {
            return Err(TokenError::MalformedOpenApiToken {
                reason: "wrong length",
            });
        }
        if !s
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'~' | b'-'))
        {
            return Err(TokenError::MalformedOpenApiToken {
                reason: "it has a character outside [A-Za-z0-9._~-]",
            });
        }
        Ok(OpenApiToken(Secret::new(s)))
    }
}

impl fmt::Debug for OpenApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpenApiToken({})", crate::model::secret::REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_well_formed_tokens() {
        let t: BootstrapToken = "abcdef.0123456789abcdef".parse().expect("valid");
        assert_eq!(t.id(), "abcdef");
        assert_eq!(t.secret().expose(), "0123456789abcdef");
        assert_eq!(t.expose_full().expose(), "abcdef.0123456789abcdef");
        let t: BootstrapToken = "  123456.abcdef1234567890\n".parse().expect("trimmed");
        assert_eq!(t.id(), "123456");
    }

    #[test]
    fn refuses_malformed_tokens() {
        for bad in [
            "",
            "abcdef",
            "abcdef.",
            ".0123456789abcdef",
            "ABCDEF.0123456789abcdef",
            "abcdef.0123456789ABCDEF",
            "abcdef:0123456789abcdef",
            "abcdef.0123456789abcdef.x",
            "abcde.0123456789abcdef",
            "abcdef.0123456789abcde",
            "abcdef.0123456789abcdeff",
            "abc def.0123456789abcdef",
            "foo.bar",
        ] {
            assert!(bad.parse::<BootstrapToken>().is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn never_prints_the_secret() {
        let t: BootstrapToken = "abcdef.0123456789abcdef".parse().expect("valid");
        for text in [format!("{t}"), format!("{t:?}")] {
            assert!(!text.contains("0123456789abcdef"), "{text}");
            assert!(text.contains("abcdef"), "{text}");
        }
        let err = "abcdef.0123456789ABCDEF"
            .parse::<BootstrapToken>()
            .expect_err("bad");
        assert!(!err.to_string().contains("0123456789ABCDEF"));
        let o: OpenApiToken = "my-openapi-token-0001".parse().expect("valid");
        assert!(!format!("{o:?}").contains("my-openapi"));
    }

    #[test]
    fn generated_tokens_are_valid_and_distinct() {
        let a = BootstrapToken::generate().expect("random");
        let b = BootstrapToken::generate().expect("random");
        assert!(a.expose_full().expose().parse::<BootstrapToken>().is_ok());
        assert_ne!(a.expose_full(), b.expose_full());
    }

    #[test]
    fn openapi_token_charset() {
        assert!("abcdefgh".parse::<OpenApiToken>().is_ok());
        assert!("ab/cdefgh".parse::<OpenApiToken>().is_err());
        assert!("abc?defgh".parse::<OpenApiToken>().is_err());
        assert!("short".parse::<OpenApiToken>().is_err());
    }
}
