//! Kubernetes versions (`v1.31.2`, `1.20.11-aliyun.1`) and the kubelet skew rule.

use serde::Serialize;
use std::fmt;
use std::str::FromStr;

/// A Kubernetes release version; pre-release and build suffixes are kept only for display.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct KubeVersion {
    /// Major (always 1 so far).
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch.
    pub patch: u32,
    /// Anything after the patch number (`-aliyun.1`, `+k3s1`).
    pub suffix: String,
}

/// A version string that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid Kubernetes version {0:?}: expected MAJOR.MINOR[.PATCH], optionally with a leading v (for example v1.31.2)")]
pub struct VersionError(pub String);

impl FromStr for KubeVersion {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || VersionError(s.chars().take(64).collect());
        let t = s.trim();
        let t = t.strip_prefix('v').unwrap_or(t);
        let split = t.find(['-', '+']).unwrap_or(t.len());
        let (core, suffix) = t.split_at(split);
        let mut nums = core.split('.');
        let mut next = |required: bool| -> Result<u32, VersionError> {
            match nums.next() {
                Some(n)
                    if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && n.len() < 6 =>
                {
                    n.parse().map_err(|_| err())
                }
                None if !required => Ok(0),
                _ => Err(err()),
            }
        };
        let major = next(true)?;
        let minor = next(true)?;
        let patch = next(false)?;
        if nums.next().is_some()
            || !suffix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.'))
        {
            return Err(err());
        }
        Ok(KubeVersion {
            major,
            minor,
            patch,
            suffix: suffix.into(),
        })
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "v{}.{}.{}{}",
            self.major, self.minor, self.patch, self.suffix
        )
    }
}

impl From<KubeVersion> for String {
    fn from(v: KubeVersion) -> String {
        v.to_string()
    }
}

impl KubeVersion {
    /// `(major, minor)`, for comparisons that ignore the patch level.
    pub fn minor_key(&self) -> (u32, u32) {
        (self.major, self.minor)
    }

    /// Whether a kubelet of version `self` may talk to an API server of version `server`:
    /// never newer than the server, and at most three minor versions older (the policy since
    /// Kubernetes 1.28; two before that).
    pub fn kubelet_skew_ok(&self, server: &KubeVersion) -> Result<(), String> {
        if self.major != server.major {
            return Err(format!(
                "kubelet {self} and API server {server} have different major versions"
            ));
        }
        if self.minor > server.minor {
            return Err(format!(
                "kubelet {self} is newer than the API server {server}; the kubelet must not be \
                 newer than the API server"
            ));
        }
        // Three minors from API server 1.28 (KEP-3935), but never a kubelet older than 1.25.
        let allowed = if server.minor >= 28 { 3 } else { 2 };
        if server.minor - self.minor > allowed || (server.minor >= 28 && self.minor < 25) {
            return Err(format!(
                "kubelet {self} is too old for the API server {server}: the skew policy allows \
                 kubelets up to {allowed} minor versions older (and from API server 1.28, none \
                 older than 1.25), never newer"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_versions() {
        let v: KubeVersion = "v1.31.2".parse().expect("v");
        assert_eq!((v.major, v.minor, v.patch), (1, 31, 2));
        let v: KubeVersion = "1.20.11-aliyun.1".parse().expect("aliyun");
        assert_eq!(v.to_string(), "v1.20.11-aliyun.1");
        assert_eq!("1.18".parse::<KubeVersion>().expect("short").patch, 0);
        for bad in ["", "v", "1", "1.x", "1.2.3.4", "1.2.3 ; rm", "1..2"] {
            assert!(bad.parse::<KubeVersion>().is_err(), "{bad}");
        }
    }

    #[test]
    fn skew_rule() {
        let v = |s: &str| s.parse::<KubeVersion>().expect("v");
        assert!(v("1.31.0").kubelet_skew_ok(&v("1.31.5")).is_ok());
        assert!(v("1.28.0").kubelet_skew_ok(&v("1.31.5")).is_ok());
        assert!(v("1.27.0").kubelet_skew_ok(&v("1.31.5")).is_err());
        assert!(v("1.32.0").kubelet_skew_ok(&v("1.31.5")).is_err());
        assert!(v("1.18.0").kubelet_skew_ok(&v("1.20.0")).is_ok());
        assert!(v("1.17.0").kubelet_skew_ok(&v("1.20.0")).is_err());
        assert!(
            v("1.24.9").kubelet_skew_ok(&v("1.28.0")).is_err(),
            "never older than 1.25 from 1.28"
        );
    }
}
