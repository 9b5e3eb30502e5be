//! Artifacts from a signed mirror: the kubelet, crictl, the CNI plugins, static container
//! runtimes and air-gap image archives, for a machine that has none of them.
//!
//! A mirror is a plain HTTPS folder (`node-attach artifacts publish` builds one from local
//! files; any static server or object store serves it): `manifest.json` ([`manifest`]) lists
//! each file's path, size and SHA-256 per Kubernetes version and architecture, and
//! `manifest.json.sig` is its Ed25519 signature ([`signature`]). Join verifies the signature
//! with a public key pinned in the one-liner, the values or `join --config` before it reads a
//! byte of the manifest, so a mirror that serves a matching binary and digest but no valid
//! signature is refused; it then picks the release the version skew policy allows, downloads
//! what is missing into a private scratch directory with bounded retries, timeouts and size
//! caps ([`fetch`]), checks each file against the signed digest, and only then installs
//! anything — each file atomically and journaled, so reset removes exactly what was installed
//! and restores what was there before.

pub mod fetch;
pub mod manifest;
pub mod publish;
pub mod signature;

use crate::client::http::{HttpError, RetryError};
use crate::effects::fs::FsError;
use crate::error::{Code, Coded};

/// Why artifacts could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The source is unusable (not https, no key…).
    #[error("invalid artifact source: {0}")]
    Source(String),
    /// The mirror kept failing.
    #[error("cannot fetch {what}: {source}")]
    Unreachable {
        /// What was being fetched (and its URL).
        what: String,
        /// The last failure.
        #[source]
        source: RetryError<HttpError>,
    },
    /// The manifest's signature is missing or does not verify.
    #[error("the mirror's manifest {url} is refused: {reason}")]
    Signature {
        /// The manifest's URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The manifest is malformed.
    #[error("the mirror's manifest is invalid: {0}")]
    Manifest(#[source] manifest::ManifestError),
    /// No release fits.
    #[error("{0}")]
    Select(#[source] manifest::SelectError),
    /// A file does not match the signed manifest.
    #[error("{what} from {url} does not match the signed manifest ({detail}); refusing it")]
    Digest {
        /// Which artifact.
        what: String,
        /// Its URL.
        url: String,
        /// Size or digest, expected and found.
        detail: String,
    },
    /// A local file could not be written or read.
    #[error(transparent)]
    Fs(#[from] FsError),
}

impl Coded for ArtifactError {
    fn code(&self) -> Code {
        match self {
            ArtifactError::Source(_) => Code::Usage,
            ArtifactError::Unreachable { .. } => Code::ArtifactsUnreachable,
            ArtifactError::Signature { .. } => Code::ArtifactsSignature,
            ArtifactError::Manifest(_) => Code::ArtifactsManifest,
            ArtifactError::Select(manifest::SelectError::Skew(_)) => Code::ArtifactsVersion,
            ArtifactError::Select(_) => Code::ArtifactsManifest,
            ArtifactError::Digest { .. } => Code::ArtifactsDigest,
            ArtifactError::Fs(_) => Code::Filesystem,
        }
    }
}
