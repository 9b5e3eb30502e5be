//! A string that never prints itself.
//!
//! Bootstrap-token secrets, openapi tokens and private keys travel through node-attach inside
//! [`Secret`]. Its `Debug` and `Display` print `[redacted]`, so a secret cannot reach a log line
//! or an error message by accident; reading it needs an explicit [`Secret::expose`]. The bytes are
//! zeroed when the value is dropped.

use std::fmt;
use zeroize::Zeroize;

/// The text every redacted value prints instead of itself.
pub const REDACTED: &str = "[redacted]";

/// A secret string: redacted in `Debug` and `Display`, zeroed on drop.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself. Call this only where the value must leave the process (an HTTP header,
    /// an HMAC key, a file with mode 0600), never to format a message.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Replaces every occurrence of this secret in `text` with [`REDACTED`]: a last line of
    /// defence for text that came from outside (a server's error body, a child's stderr).
    pub fn scrub(&self, text: &str) -> String {
        if self.0.is_empty() {
            return text.to_owned();
        }
        text.replace(&self.0, REDACTED)
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

impl serde::Serialize for Secret {
    /// Serializes as [`REDACTED`]: a secret written to JSON output or a plan stays hidden.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

/// A URL with its path and query hidden: callback URLs usually carry a token in the path.
pub fn redact_url_path(u: &url::Url) -> String {
    let mut shown = format!("{}://{}", u.scheme(), u.host_str().unwrap_or_default());
    if let Some(port) = u.port() {
        shown.push_str(&format!(":{port}"));
    }
    if u.path() != "/" || u.query().is_some() {
        shown.push_str("/…");
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_display_and_serialize_never_show_the_value() {
        let secret = Secret::new("0123456789abcdef");
        assert_eq!(format!("{secret}"), REDACTED);
        assert_eq!(format!("{secret:?}"), REDACTED);
        assert_eq!(format!("{:?}", Some(&secret)), format!("Some({REDACTED})"));
        assert_eq!(
            serde_json::to_string(&secret).expect("serialize"),
            format!("\"{REDACTED}\"")
        );
        assert_eq!(secret.expose(), "0123456789abcdef");
    }

    #[test]
    fn scrub_removes_every_occurrence() {
        let secret = Secret::new("s3cr3t");
        assert_eq!(
            secret.scrub("a s3cr3t b s3cr3t"),
            format!("a {REDACTED} b {REDACTED}")
        );
        assert_eq!(Secret::default().scrub("unchanged"), "unchanged");
    }
}
