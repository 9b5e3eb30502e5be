//! Fetching from a mirror: the signed manifest (verified before it is parsed) and files,
//! streamed into a [`Scratch`] directory with a size cap (the manifest's size), a stall
//! timeout, an overall deadline and bounded, jittered retries ([`crate::client::http::retry`]);
//! each file's SHA-256 is computed as it arrives and compared with the signed manifest's.

use super::manifest::{self, FileRef, Manifest};
use super::signature::PublicKey;
use super::ArtifactError;
use crate::client::http::{
    retry, Http, HttpError, Limits, Request, RetryPolicy, Retryable, Target,
};
use crate::effects::fs::Scratch;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The manifest's name below the base URL.
pub const MANIFEST: &str = "manifest.json";
/// Its signature's name.
pub const SIGNATURE: &str = "manifest.json.sig";
/// How long a download may go without receiving a byte before it is retried.
pub const STALL: Duration = Duration::from_secs(30);

/// A mirror to fetch from.
#[derive(Clone, Debug)]
pub struct Mirror {
    http: Http,
    base: url::Url,
    deadline: Duration,
}

/// Why one download attempt failed.
#[derive(Debug, thiserror::Error)]
enum Attempt {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("no data from {0} for {STALL:?}")]
    Stall(String),
    #[error("{0}")]
    Mismatch(String),
    #[error("{0}")]
    Local(String),
}

impl Retryable for Attempt {
    fn is_transient(&self) -> bool {
        match self {
            Attempt::Http(e) => e.is_transient(),
            Attempt::Stall(_) => true,
            Attempt::Mismatch(_) | Attempt::Local(_) => false,
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Attempt::Http(e) => e.retry_after(),
            _ => None,
        }
    }
    fn out_of_time(what: &str, left: Duration) -> Self {
        Attempt::Http(HttpError::out_of_time(what, left))
    }
}

/// Checks a mirror's base URL: https, a host, no credentials; made to end with `/`.
pub fn check_base(text: &str) -> Result<url::Url, String> {
    let mut url =
        url::Url::parse(text.trim()).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if url.scheme() != "https" {
        return Err(format!(
            "{text:?} must be an https URL (the manifest is signed, but https keeps a replayed old manifest out)"
        ));
    }
    if url.host_str().is_none() || !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{text:?} must name a host and carry no user or password"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{text:?} must have no query or fragment"));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

impl Mirror {
    /// A mirror at `base` (see [`check_base`]), trusting the system roots plus `ca_file`.
    pub fn new(
        base: &url::Url,
        ca_file: Option<&Path>,
        limits: Limits,
        deadline: Duration,
    ) -> Result<Mirror, ArtifactError> {
        let tls = crate::trust::tls::system_roots(ca_file)
            .map_err(|e| ArtifactError::Source(e.to_string()))?;
        let http = Http::new(tls, limits).map_err(|e| ArtifactError::Source(e.to_string()))?;
        Ok(Mirror {
            http,
            base: base.clone(),
            deadline,
        })
    }

    /// The URL of a (validated) path below the base.
    pub fn target(&self, path: &str) -> Result<Target, ArtifactError> {
        manifest::check_path("path", path).map_err(ArtifactError::Manifest)?;
        let url = self
            .base
            .join(path)
            .map_err(|e| ArtifactError::Source(format!("{path}: {e}")))?;
        Ok(Target::public(url))
    }

    async fn get_small(&self, path: &str) -> Result<Vec<u8>, ArtifactError> {
        let target = self.target(path)?;
        let policy = RetryPolicy::until(
            self.deadline.min(Duration::from_secs(120)),
            Duration::from_secs(10),
        );
        retry(policy, &format!("fetching {}", target.shown), |_| {
            let mut req = Request::get(&target);
            req.accept = "application/json, text/plain;q=0.9, */*;q=0.1";
            self.http.send(req)
        })
        .await
        .map(|r| r.body.to_vec())
        .map_err(|source| ArtifactError::Unreachable {
            what: target.shown.clone(),
            source,
        })
    }

    /// Fetches `manifest.json` and `manifest.json.sig`, verifies the signature with `key` over
    /// the manifest's exact bytes, and only then parses and validates it.
    pub async fn manifest(&self, key: &PublicKey) -> Result<Manifest, ArtifactError> {
        let shown = self.target(MANIFEST)?.shown;
        let body = self.get_small(MANIFEST).await?;
        let sig = match self.get_small(SIGNATURE).await {
            Ok(s) => s,
            Err(ArtifactError::Unreachable { source, .. })
                if matches!(source.inner().status(), Some(403 | 404 | 410)) =>
            {
                return Err(ArtifactError::Signature {
                    url: shown,
                    reason: format!(
                        "the mirror serves no {SIGNATURE} ({}); unsigned manifests are never used",
                        source.inner()
                    ),
                })
            }
            Err(e) => return Err(e),
        };
        key.verify(&body, &sig)
            .map_err(|e| ArtifactError::Signature {
                url: shown.clone(),
                reason: e.to_string(),
            })?;
        tracing::info!(url = %shown, key = %key, "the manifest's signature verifies");
        manifest::parse(&body).map_err(ArtifactError::Manifest)
    }

    /// Downloads `file` into `scratch` as `name`, checking its size and digest; returns the
    /// staged file's real path. Nothing outside `scratch` is touched.
    pub async fn download(
        &self,
        what: &str,
        file: &FileRef,
        scratch: &Scratch,
        name: &str,
    ) -> Result<PathBuf, ArtifactError> {
        let target = self.target(&file.path)?;
        let real = scratch.create(name)?.1;
        let started = Instant::now();
        let policy = RetryPolicy::until(self.deadline, Duration::from_secs(10));
        let outcome = retry(policy, &format!("downloading {what}"), |_| {
            let remaining = self
                .deadline
                .saturating_sub(started.elapsed())
                .max(Duration::from_secs(1));
            self.attempt(&target, file, scratch, name, remaining)
        })
        .await;
        match outcome {
            Ok(()) => {
                tracing::info!(url = %target.shown, sha256 = %file.sha256, bytes = file.size, "downloaded {what}");
                Ok(real)
            }
            Err(e) => Err(match e.into_inner() {
                Attempt::Mismatch(detail) => ArtifactError::Digest {
                    what: what.to_owned(),
                    url: target.shown.clone(),
                    detail,
                },
                Attempt::Http(h) => ArtifactError::Unreachable {
                    what: format!("{what} from {}", target.shown),
                    source: crate::client::http::RetryError::Fatal(h),
                },
                other => ArtifactError::Unreachable {
                    what: format!("{what} from {}", target.shown),
                    source: crate::client::http::RetryError::Fatal(HttpError::Other {
                        url: target.shown.clone(),
                        detail: other.to_string(),
                    }),
                },
            }),
        }
    }

    async fn attempt(
        &self,
        target: &Target,
        file: &FileRef,
        scratch: &Scratch,
        name: &str,
        timeout: Duration,
    ) -> Result<(), Attempt> {
        let local = |e: std::io::Error| Attempt::Local(format!("writing the download: {e}"));
        let mut out = scratch
            .create(name)
            .map_err(|e| Attempt::Local(e.to_string()))?
            .0;
        let mut response = self.http.open_stream(target, None, timeout).await?;
        if let Some(len) = response.content_length() {
            if len != file.size {
                return Err(Attempt::Mismatch(format!(
                    "the server announces {len} bytes, the manifest {}",
                    file.size
                )));
            }
        }
        let mut hasher = Sha256::new();
        let mut got = 0u64;
        loop {
            let next =
                tokio::time::timeout(STALL, self.http.next_chunk(&target.shown, &mut response));
            let chunk = match next.await {
                Err(_) => return Err(Attempt::Stall(target.shown.clone())),
                Ok(r) => r?,
            };
            let Some(chunk) = chunk else { break };
            got += chunk.len() as u64;
            if got > file.size {
                return Err(Attempt::Mismatch(format!(
                    "more than the manifest's {} bytes",
                    file.size
                )));
            }
            hasher.update(&chunk);
            out.write_all(&chunk).map_err(local)?;
        }
        if got != file.size {
            return Err(Attempt::Mismatch(format!(
                "{got} bytes, the manifest says {}",
                file.size
            )));
        }
        let sha: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if sha != file.sha256 {
            return Err(Attempt::Mismatch(format!(
                "sha256 {sha}, the manifest says {}",
                file.sha256
            )));
        }
        out.sync_all().map_err(local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_https_and_end_with_a_slash() {
        assert_eq!(
            check_base("https://m.example/mirror").expect("ok").as_str(),
            "https://m.example/mirror/"
        );
        assert_eq!(
            check_base("https://m.example").expect("ok").as_str(),
            "https://m.example/"
        );
        for bad in [
            "http://m.example/",
            "ftp://m.example/",
            "https://u:p@m.example/",
            "https://m.example/?x=1",
            "not a url",
        ] {
            assert!(check_base(bad).is_err(), "{bad}");
        }
    }
}
