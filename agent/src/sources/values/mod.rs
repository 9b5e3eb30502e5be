//! Cluster values, fetched from the control plane with an openapi token.
//!
//! The control plane keeps the cluster's values (API endpoint, bootstrap token, CA pins, DNS,
//! runtime, labels…) under an openapi token; the node reads them anonymously with it. Two answer
//! formats are accepted, both parsed strictly as data: node-attach's versioned JSON
//! ([`schema`], documented in `docs/values.md`) and ACK's `key=value` text ([`ack`]). Both become
//! one validated [`ClusterValues`].

pub mod ack;
pub mod schema;

use crate::client::http::{retry, Http, HttpError, Request, RetryError, RetryPolicy, Target};
use crate::error::{Code, Coded};
use crate::model::token::{BootstrapToken, OpenApiToken};
use crate::model::validate::{Endpoint, Labels, SyntaxError, Taint};
use crate::model::version::KubeVersion;
use crate::trust::pin::CaPin;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

/// The values URL node-attach uses when `--values-url` is not given: ACK's anonymous node_info
/// endpoint, over https.
pub const DEFAULT_VALUES_URL: &str =
    "https://cs-anony-vpc.{region}.aliyuncs.com/token/{token}/instance/{instance_id}/node_info";

/// Which format the control plane answered in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ValuesFormat {
    /// node-attach's JSON schema.
    Json,
    /// ACK's `key=value` text.
    AckText,
}

/// How the node's name is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeNameMode {
    /// The host name, lowercased.
    Hostname,
    /// ACK's `nodeip`: `<region-id>.<node-ip>`, or the bare IP when no region is known.
    NodeIp,
    /// ACK's classic `<region-id>.<instance-id>`.
    InstanceId,
}

impl NodeNameMode {
    /// Parses the flag or value spelling (`hostname`, `nodeip`, `instanceid`, and aliases).
    pub fn parse(what: &str, s: &str) -> Result<NodeNameMode, SyntaxError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "hostname" => Ok(NodeNameMode::Hostname),
            "nodeip" | "node-ip" | "ip" => Ok(NodeNameMode::NodeIp),
            "instanceid" | "instance-id" | "instance" => Ok(NodeNameMode::InstanceId),
            _ => Err(SyntaxError {
                what: what.into(),
                value: s.chars().take(64).collect(),
                reason: "expected hostname, nodeip or instanceid".into(),
            }),
        }
    }
}

/// The container runtime to configure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeKind {
    /// containerd with its CRI plugin.
    Containerd,
    /// Docker Engine (with cri-dockerd from Kubernetes 1.24).
    Docker,
}

impl RuntimeKind {
    /// Parses `containerd` or `docker`.
    pub fn parse(what: &str, s: &str) -> Result<RuntimeKind, SyntaxError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "containerd" => Ok(RuntimeKind::Containerd),
            "docker" => Ok(RuntimeKind::Docker),
            _ => Err(SyntaxError {
                what: what.into(),
                value: s.chars().take(64).collect(),
                reason: "expected containerd or docker".into(),
            }),
        }
    }
}

/// Kubelet settings the control plane may set for its nodes.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeletValues {
    /// `maxPods`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pods: Option<u32>,
    /// `systemReserved` (cpu, memory, ephemeral-storage, pid).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub system_reserved: BTreeMap<String, String>,
    /// `kubeReserved`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub kube_reserved: BTreeMap<String, String>,
    /// `evictionHard`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub eviction_hard: BTreeMap<String, String>,
    /// `failSwapOn`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail_swap_on: Option<bool>,
    /// `cpuManagerPolicy` (`none` or `static`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_manager_policy: Option<String>,
}

/// Container runtime settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeValues {
    /// Which runtime.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<RuntimeKind>,
    /// Package version to install when missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The sandbox (pause) image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_image: Option<String>,
    /// Registry host → mirror endpoints.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub registry_mirrors: BTreeMap<String, Vec<String>>,
    /// Registries reached over plain http or without TLS verification.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub insecure_registries: Vec<String>,
    /// The runtime's data directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_root: Option<String>,
}

/// Where a missing container runtime comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeSource {
    /// The host's package manager when there is one, else the mirror's static runtime.
    #[default]
    Auto,
    /// The host's package manager only.
    Package,
    /// The mirror's static runtime only.
    Mirror,
}

impl RuntimeSource {
    /// Parses `auto`, `package` or `mirror`.
    pub fn parse(what: &str, s: &str) -> Result<RuntimeSource, SyntaxError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(RuntimeSource::Auto),
            "package" => Ok(RuntimeSource::Package),
            "mirror" => Ok(RuntimeSource::Mirror),
            _ => Err(SyntaxError {
                what: what.into(),
                value: s.chars().take(64).collect(),
                reason: "expected auto, package or mirror".into(),
            }),
        }
    }
}

/// Where the node's artifacts (kubelet, CNI plugins, static runtime, images) come from.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactValues {
    /// The mirror's base URL (https).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "plain_url")]
    pub url: Option<url::Url>,
    /// The Ed25519 key its manifest is signed with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<crate::artifacts::signature::PublicKey>,
    /// The kubelet version to install (default: the API server's, or the newest allowed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubelet_version: Option<KubeVersion>,
    /// Import the release's image archives from the mirror (no registry needed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub air_gap: Option<bool>,
    /// Where a missing runtime comes from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_source: Option<RuntimeSource>,
}

/// Validates an artifact mirror URL (https, a host, no credentials).
pub fn check_artifacts_url(field: &str, text: &str) -> Result<url::Url, ValuesError> {
    crate::artifacts::fetch::check_base(text).map_err(|e| invalid(field, e))
}

/// Validates an artifact signing public key (`ed25519:<base64>`).
pub fn check_public_key(
    field: &str,
    text: &str,
) -> Result<crate::artifacts::signature::PublicKey, ValuesError> {
    crate::artifacts::signature::PublicKey::parse(text).map_err(|e| invalid(field, e.to_string()))
}

/// Validated cluster values, whichever format they came in.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterValues {
    /// The format of the answer.
    pub format: ValuesFormat,
    /// API server endpoints, in order of preference.
    pub api_server_endpoints: Vec<Endpoint>,
    /// The bootstrap token (redacted when printed).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "redacted_token"
    )]
    pub bootstrap_token: Option<BootstrapToken>,
    /// CA pins.
    pub ca_cert_hashes: Vec<CaPin>,
    /// Cluster DNS addresses.
    pub cluster_dns: Vec<IpAddr>,
    /// Cluster domain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_domain: Option<String>,
    /// Kubernetes version of the control plane.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<KubeVersion>,
    /// Runtime settings.
    pub runtime: RuntimeValues,
    /// Node labels.
    pub labels: Labels,
    /// Node taints.
    pub taints: Vec<Taint>,
    /// Whether nodes join an autoscaled pool (`--ess`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ess: Option<bool>,
    /// How to name the node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name_mode: Option<NodeNameMode>,
    /// Where to report the join's outcome.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "shown_url")]
    pub callback_url: Option<url::Url>,
    /// Kubelet settings.
    pub kubelet: KubeletValues,
    /// The cluster network plugin's name (informational).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The node pool this node belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_pool_id: Option<String>,
    /// Where the node's artifacts come from.
    #[serde(skip_serializing_if = "is_default_artifacts")]
    pub artifacts: ArtifactValues,
    /// Keys of the answer node-attach did not recognise and ignored (ACK text only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignored_keys: Vec<String>,
}

fn plain_url<S: serde::Serializer>(u: &Option<url::Url>, s: S) -> Result<S::Ok, S::Error> {
    match u {
        Some(u) => s.serialize_str(u.as_str()),
        None => s.serialize_none(),
    }
}

fn is_default_artifacts(a: &ArtifactValues) -> bool {
    *a == ArtifactValues::default()
}

fn redacted_token<S: serde::Serializer>(
    t: &Option<BootstrapToken>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.collect_str(t),
        None => s.serialize_none(),
    }
}

fn shown_url<S: serde::Serializer>(u: &Option<url::Url>, s: S) -> Result<S::Ok, S::Error> {
    match u {
        Some(u) => s.serialize_str(&redact_url_path(u)),
        None => s.serialize_none(),
    }
}

pub use crate::model::secret::redact_url_path;

impl ClusterValues {
    /// Empty values of the given format, to be filled by a parser.
    pub fn empty(format: ValuesFormat) -> ClusterValues {
        ClusterValues {
            format,
            api_server_endpoints: Vec::new(),
            bootstrap_token: None,
            ca_cert_hashes: Vec::new(),
            cluster_dns: Vec::new(),
            cluster_domain: None,
            kubernetes_version: None,
            runtime: RuntimeValues::default(),
            labels: Labels::default(),
            taints: Vec::new(),
            ess: None,
            node_name_mode: None,
            callback_url: None,
            kubelet: KubeletValues::default(),
            network: None,
            node_pool_id: None,
            artifacts: ArtifactValues::default(),
            ignored_keys: Vec::new(),
        }
    }
}

/// Why values could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum ValuesError {
    /// The values URL template is unusable.
    #[error("invalid --values-url: {0}")]
    Template(String),
    /// The values URL is plain http and `--allow-insecure-values-url` was not given.
    #[error("the values URL {0} is plain http; the answer carries a bootstrap token, so it must come over https. Use an https URL, or pass --allow-insecure-values-url to accept the risk")]
    Insecure(String),
    /// The endpoint kept failing.
    #[error("cannot fetch cluster values: {0}")]
    Unreachable(#[source] RetryError<HttpError>),
    /// The endpoint refused the token.
    #[error("the control plane refused the openapi token ({0})")]
    Refused(#[source] HttpError),
    /// The answer failed validation.
    #[error("invalid cluster values: {field}: {reason}")]
    Invalid {
        /// The field (JSON path or ACK key).
        field: String,
        /// What is wrong.
        reason: String,
    },
}

impl Coded for ValuesError {
    fn code(&self) -> Code {
        match self {
            ValuesError::Template(_) | ValuesError::Insecure(_) => Code::Usage,
            ValuesError::Unreachable(e) => match e.inner() {
                HttpError::TooLarge { .. } => Code::ValuesInvalid,
                _ => Code::ValuesUnreachable,
            },
            ValuesError::Refused(_) => Code::ValuesRefused,
            ValuesError::Invalid { .. } => Code::ValuesInvalid,
        }
    }

    fn network_cause(&self) -> Option<crate::model::cause::Cause> {
        match self {
            ValuesError::Unreachable(e) => Some(e.inner().cause()),
            ValuesError::Refused(e) => Some(e.cause()),
            _ => None,
        }
    }
}

pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ValuesError {
    ValuesError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

impl From<SyntaxError> for ValuesError {
    fn from(e: SyntaxError) -> Self {
        invalid(e.what.clone(), e.to_string())
    }
}

/// Where the values come from.
#[derive(Clone, Debug)]
pub struct ValuesSource {
    /// URL template with `{token}` and optionally `{instance_id}`, `{region}`.
    pub template: String,
    /// The openapi token.
    pub token: OpenApiToken,
    /// This instance's id, for `{instance_id}`.
    pub instance_id: Option<String>,
    /// This instance's region, for `{region}`.
    pub region: Option<String>,
    /// Whether plain http is allowed.
    pub allow_insecure: bool,
}

impl ValuesSource {
    /// The URL to fetch, and its printable form (token hidden).
    pub fn target(&self) -> Result<Target, ValuesError> {
        let mut real = String::new();
        let mut shown = String::new();
        let mut rest = self.template.as_str();
        let mut saw_token = false;
        while let Some(open) = rest.find('{') {
            real.push_str(&rest[..open]);
            shown.push_str(&rest[..open]);
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| ValuesError::Template("a '{' is not closed".into()))?
                + open;
            let name = &rest[open + 1..close];
            let (value, public) = match name {
                "token" => {
                    saw_token = true;
                    (self.token.expose().to_owned(), false)
                }
                "instance_id" => (
                    self.instance_id.clone().ok_or_else(|| {
                        ValuesError::Template(
                            "it needs {instance_id}, and no instance id is known: pass --instance-id (or use --metadata on a cloud instance)".into(),
                        )
                    })?,
                    true,
                ),
                "region" => (
                    self.region.clone().ok_or_else(|| {
                        ValuesError::Template(
                            "it needs {region}, and no region is known: pass --region (or use --metadata on a cloud instance)".into(),
                        )
                    })?,
                    true,
                ),
                other => {
                    return Err(ValuesError::Template(format!(
                        "unknown placeholder {{{other}}}; known are {{token}}, {{instance_id}}, {{region}}"
                    )))
                }
            };
            real.push_str(&value);
            shown.push_str(if public {
                &value
            } else {
                crate::model::secret::REDACTED
            });
            rest = &rest[close + 1..];
        }
        real.push_str(rest);
        shown.push_str(rest);
        if !saw_token {
            return Err(ValuesError::Template(
                "it has no {token} placeholder; the openapi token must be part of the URL".into(),
            ));
        }
        let url = url::Url::parse(&real)
            .map_err(|e| ValuesError::Template(format!("{shown} is not a URL: {e}")))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_insecure => {
                tracing::warn!(url = %shown, "fetching cluster values over plain http (--allow-insecure-values-url): anyone on the path can read the bootstrap token and alter the values");
            }
            "http" => return Err(ValuesError::Insecure(shown)),
            other => {
                return Err(ValuesError::Template(format!(
                    "scheme {other} is not supported; use https"
                )))
            }
        }
        if url.host_str().is_none() || url.username() != "" || url.password().is_some() {
            return Err(ValuesError::Template(format!(
                "{shown} must name a host and carry no user or password"
            )));
        }
        Ok(Target { url, shown })
    }
}

/// Fetches and validates the values, retrying what can succeed later until `deadline`.
pub async fn fetch(
    http: &Http,
    source: &ValuesSource,
    deadline: Duration,
) -> Result<ClusterValues, ValuesError> {
    let target = source.target()?;
    tracing::info!(url = %target.shown, "fetching cluster values");
    let policy = RetryPolicy::until(deadline, Duration::from_secs(10));
    let scrub = [source.token.secret()];
    // Every attempt carries one id: a values service that took a use for an attempt whose
    // answer was lost (a timeout under load) gives a retry that same use, not another.
    let mut nonce = [0u8; 16];
    let request_id: String = match getrandom::fill(&mut nonce) {
        Ok(()) => nonce.iter().map(|b| format!("{b:02x}")).collect(),
        Err(_) => String::new(),
    };
    let reply = retry(policy, "fetching cluster values", |_| {
        let mut req = Request::get(&target);
        req.accept = "application/json, text/plain;q=0.9";
        req.scrub = scrub.to_vec();
        req.request_id = Some(request_id.as_str()).filter(|id| !id.is_empty());
        http.send(req)
    })
    .await
    .map_err(|e| match e {
        RetryError::Fatal(
            e @ HttpError::Status {
                status: 400 | 401 | 403 | 404 | 410,
                ..
            },
        ) => ValuesError::Refused(e),
        other => ValuesError::Unreachable(other),
    })?;
    parse(&reply.body, reply.content_type().as_deref())
}

/// Parses an answer body: JSON when the media type says so or the body is a JSON object,
/// ACK's `key=value` text otherwise.
pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<ClusterValues, ValuesError> {
    let text = std::str::from_utf8(body).map_err(|_| invalid("body", "not UTF-8 text"))?;
    let looks_json = text.trim_start().starts_with('{');
    if content_type.is_some_and(|c| c == "application/json" || c.ends_with("+json")) || looks_json {
        schema::parse(text)
    } else {
        ack::parse(text)
    }
}

/// Validates a container image reference loosely: registry/name[:tag][@digest], no spaces or
/// shell characters.
pub fn check_image(field: &str, image: &str) -> Result<(), ValuesError> {
    let ok = !image.is_empty()
        && image.len() <= 255
        && image.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'/' | b':' | b'_' | b'@' | b'-')
        })
        && image
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{image:?} is not an image reference (expected registry/name:tag)"),
        ))
    }
}

/// Validates a package version string (Debian/RPM version characters only).
pub fn check_package_version(field: &str, v: &str) -> Result<(), ValuesError> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'~' | b':' | b'-' | b'_')
        })
        && v.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{v:?} is not a package version (for example 1.7.22 or 20.10.24)"),
        ))
    }
}

/// Validates a resource quantity such as `100m`, `512Mi`, `1.5Gi` or `10%` (percent only where
/// `allow_percent`).
pub fn check_quantity(field: &str, q: &str, allow_percent: bool) -> Result<(), ValuesError> {
    let (num, unit) = match q.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => q.split_at(i),
        None => (q, ""),
    };
    let num_ok = !num.is_empty()
        && num.matches('.').count() <= 1
        && !num.starts_with('.')
        && !num.ends_with('.');
    let unit_ok = matches!(
        unit,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || (allow_percent && unit == "%");
    if num_ok && unit_ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!(
                "{q:?} is not a quantity (for example 100m, 512Mi, 1Gi{})",
                if allow_percent { " or 10%" } else { "" }
            ),
        ))
    }
}

/// Validates a URL the node will POST its outcome to. Plain http needs `allow_insecure`.
pub fn check_callback(field: &str, text: &str) -> Result<url::Url, ValuesError> {
    let url =
        url::Url::parse(text.trim()).map_err(|e| invalid(field, format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
        return Err(invalid(field, "expected an http(s) URL with a host"));
    }
    Ok(url)
}

/// Validates an opaque identifier (region, instance id, node pool id): `[A-Za-z0-9._-]{1,128}`.
pub fn check_identifier(field: &str, v: &str) -> Result<(), SyntaxError> {
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(SyntaxError {
            what: field.into(),
            value: v.chars().take(64).collect(),
            reason: "expected 1 to 128 characters of [A-Za-z0-9._-]".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(template: &str) -> ValuesSource {
        ValuesSource {
            template: template.into(),
            token: "tok-0123456789".parse().expect("token"),
            instance_id: Some("i-abc".into()),
            region: Some("cn-hangzhou".into()),
            allow_insecure: false,
        }
    }

    #[test]
    fn template_rendering_hides_the_token() {
        let t = source(DEFAULT_VALUES_URL).target().expect("target");
        assert_eq!(
            t.url.as_str(),
            "https://cs-anony-vpc.cn-hangzhou.aliyuncs.com/token/tok-0123456789/instance/i-abc/node_info"
        );
        assert!(!t.shown.contains("tok-0123456789"));
        assert!(t.shown.contains("i-abc"));
    }

    #[test]
    fn template_errors() {
        assert!(matches!(
            source("https://x/{token").target(),
            Err(ValuesError::Template(_))
        ));
        assert!(matches!(
            source("https://x/{nope}/{token}").target(),
            Err(ValuesError::Template(_))
        ));
        assert!(matches!(
            source("https://x/values").target(),
            Err(ValuesError::Template(_))
        ));
        assert!(matches!(
            source("http://x/{token}").target(),
            Err(ValuesError::Insecure(_))
        ));
        let mut s = source("http://x/{token}");
        s.allow_insecure = true;
        assert!(s.target().is_ok());
        let mut s = source("https://x/{token}/{region}");
        s.region = None;
        let err = s.target().expect_err("no region");
        assert!(err.to_string().contains("--region"), "{err}");
        assert!(source("ftp://x/{token}").target().is_err());
        assert!(source("https://u:p@x/{token}").target().is_err());
    }

    #[test]
    fn quantities() {
        for ok in ["100m", "512Mi", "1.5Gi", "1", "20Gi"] {
            assert!(check_quantity("q", ok, false).is_ok(), "{ok}");
        }
        assert!(check_quantity("q", "10%", true).is_ok());
        for bad in ["", "10%", "1..5Gi", "Mi", "1 Gi", "-1", "1Gb"] {
            assert!(check_quantity("q", bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn images_and_versions() {
        assert!(check_image("i", "registry.k8s.io/pause:3.10").is_ok());
        assert!(check_image("i", "reg:5000/p@sha256:abc").is_ok());
        assert!(check_image("i", "pause; rm -rf /").is_err());
        assert!(check_package_version("v", "1.7.22-1").is_ok());
        assert!(check_package_version("v", "5:20.10.24~3-0~debian-bookworm").is_ok());
        assert!(check_package_version("v", "$(id)").is_err());
    }

    #[test]
    fn callback_urls_are_redacted_when_shown() {
        let u = check_callback("c", "https://cs.example.com:8443/callback/secret-token?x=1")
            .expect("url");
        assert_eq!(redact_url_path(&u), "https://cs.example.com:8443/…");
    }
}
