//! One validated [`Settings`] value for a join, merged from flags, environment, files and the
//! cluster values, before anything runs.
//!
//! Precedence: an explicit flag (or its environment variable or file) wins over the cluster
//! values, which win over defaults. Labels and taints are merged (a flag label overrides a value
//! label of the same key, with a notice). Every conflict or missing input is reported here, with
//! the flag or field to fix, so a bad command line never leaves a half-configured machine.

use crate::artifacts::signature::PublicKey;
use crate::cli::join::JoinArgs;
use crate::client::http::Limits;
use crate::error::{Code, Failure};
use crate::model::token::BootstrapToken;
use crate::model::validate::{
    check_dns_subdomain, check_node_name, parse_ip_list, push_taint, Endpoint, Labels, Taint,
};
use crate::model::version::KubeVersion;
use crate::sources::values::{
    check_identifier, check_package_version, redact_url_path, ClusterValues, KubeletValues,
    NodeNameMode, RuntimeKind, RuntimeSource, RuntimeValues,
};
use crate::trust::pin::PinSet;
use serde::Serialize;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How the node's name is decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeNaming {
    /// Given with `--node-name`.
    Explicit(String),
    /// Derived by a mode once host facts are known.
    Mode(NodeNameMode),
}

/// Who performs the kubelet's TLS bootstrap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsBootstrapMode {
    /// node-attach creates the CSR, waits for the certificate and writes kubelet.conf.
    NodeAttach,
    /// The kubelet does it with bootstrap-kubelet.conf, as after `kubeadm join`.
    Kubelet,
}

/// Timeouts of a join.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Timeouts {
    /// Fetching values.
    #[serde(with = "millis")]
    pub values: Duration,
    /// Discovery.
    #[serde(with = "millis")]
    pub discovery: Duration,
    /// CSR approval.
    #[serde(with = "millis")]
    pub csr: Duration,
    /// Node registration.
    #[serde(with = "millis")]
    pub node_wait: Duration,
}

mod millis {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

/// Where the node's artifacts come from, merged from flags and values.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactSettings {
    /// The mirror, when one is named (its URL and the key its manifest must verify with).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorSettings>,
    /// The kubelet version asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubelet_version: Option<KubeVersion>,
    /// Import the release's image archives from the mirror.
    pub air_gap: bool,
    /// Local image archives to import.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub image_archives: Vec<PathBuf>,
    /// Where a missing runtime comes from.
    pub runtime_source: RuntimeSource,
}

/// An artifact mirror.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MirrorSettings {
    /// Its base URL.
    #[serde(serialize_with = "plain_url")]
    pub url: url::Url,
    /// The key its manifest must verify with.
    pub key: PublicKey,
    /// Extra CA bundle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Overall deadline.
    #[serde(with = "millis")]
    pub timeout: Duration,
}

fn plain_url<S: serde::Serializer>(u: &url::Url, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(u.as_str())
}

/// Merges the artifact flags with the values' `artifacts`: a flag wins.
fn artifact_settings(
    a: &crate::cli::join::ArtifactArgs,
    v: &crate::sources::values::ArtifactValues,
) -> Result<ArtifactSettings, Failure> {
    let url = match &a.artifacts_url {
        Some(u) => Some(
            crate::artifacts::fetch::check_base(u)
                .map_err(|e| usage(format!("invalid --artifacts-url: {e}")))?,
        ),
        None => v.url.clone(),
    };
    let key = match &a.artifacts_key {
        Some(k) => {
            Some(PublicKey::parse(k).map_err(|e| usage(format!("invalid --artifacts-key: {e}")))?)
        }
        None => v.public_key.clone(),
    };
    let kubelet_version = match &a.kubelet_version {
        Some(k) => Some(
            k.parse()
                .map_err(|e: crate::model::version::VersionError| {
                    usage(format!("invalid --kubelet-version: {e}"))
                })?,
        ),
        None => v.kubelet_version.clone(),
    };
    let runtime_source = match &a.runtime_source {
        Some(r) => RuntimeSource::parse("--runtime-source", r).map_err(syntax)?,
        None => v.runtime_source.unwrap_or_default(),
    };
    let air_gap = a.air_gap || v.air_gap == Some(true);
    for p in &a.image_archive {
        if !p.is_absolute() {
            return Err(usage(format!(
                "invalid --image-archive {}: expected an absolute path",
                p.display()
            )));
        }
    }
    let mirror = match (url, key) {
        (Some(url), Some(key)) => Some(MirrorSettings {
            url,
            key,
            ca_file: a.artifacts_ca_file.clone(),
            timeout: a.artifacts_timeout,
        }),
        (Some(url), None) => {
            return Err(usage(format!(
                "the artifact mirror {url} needs the public key its manifest is signed with: pass --artifacts-key ed25519:<base64> (or set artifacts.publicKey in the values); unsigned mirrors are never used"
            )))
        }
        (None, _) => None,
    };
    if mirror.is_none()
        && (air_gap || runtime_source == RuntimeSource::Mirror || kubelet_version.is_some())
    {
        return Err(usage(
            "--air-gap, --runtime-source mirror and --kubelet-version need an artifact mirror: pass --artifacts-url and --artifacts-key (or set artifacts in the values)",
        ));
    }
    Ok(ArtifactSettings {
        mirror,
        kubelet_version,
        air_gap,
        image_archives: a.image_archive.clone(),
        runtime_source,
    })
}

/// An ESS lifecycle action, and where to complete it.
#[derive(Clone, Debug)]
pub struct EssLifecycle {
    /// The hook and the action's token.
    pub action: crate::client::ess::LifecycleAction,
    /// The ESS endpoint (None: the region's).
    pub endpoint: Option<url::Url>,
    /// The metadata service (None: the provider's own), for the RAM role's credentials.
    pub metadata_endpoint: Option<String>,
}

/// Everything a join needs, validated.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    /// Root prefix of every filesystem effect.
    pub root: PathBuf,
    /// Plan only.
    pub dry_run: bool,
    /// API server endpoints for discovery, in order.
    pub endpoints: Vec<Endpoint>,
    /// Bootstrap token (redacted when printed); None only in bake mode (`--phase prepare`).
    #[serde(serialize_with = "redacted")]
    pub token: Option<BootstrapToken>,
    /// Accepted CA pins.
    #[serde(serialize_with = "pins")]
    pub pins: PinSet,
    /// Trust the API server without a pin.
    pub unsafe_skip_ca_verification: bool,
    /// Cluster DNS addresses (empty: take the cluster's kubelet-config).
    pub cluster_dns: Vec<IpAddr>,
    /// Cluster domain (None: take the cluster's kubelet-config, else cluster.local).
    pub cluster_domain: Option<String>,
    /// Control-plane version, when the values say.
    pub kubernetes_version: Option<KubeVersion>,
    /// The runtime to configure.
    pub runtime: RuntimeKind,
    /// Runtime details (version, pause image, mirrors).
    pub runtime_values: RuntimeValues,
    /// All requested labels (split later into kubelet-set and control-plane-applied).
    pub labels: Labels,
    /// Taints to register with.
    pub taints: Vec<Taint>,
    /// Autoscaled pool.
    pub ess: bool,
    /// Node name rule.
    pub node_naming: NodeNaming,
    /// Explicit node IPs: one address, or an IPv4 and IPv6 pair for dual-stack clusters.
    pub node_ips: Vec<IpAddr>,
    /// Explicit providerID.
    pub provider_id: Option<String>,
    /// Instance id (for names and providerID).
    pub instance_id: Option<String>,
    /// Region id.
    pub region: Option<String>,
    /// The ESS lifecycle action join completes when it ends, if one was given.
    #[serde(skip)]
    pub ess_lifecycle: Option<EssLifecycle>,
    /// Node pool id.
    pub node_pool_id: Option<String>,
    /// Turn swap off.
    pub disable_swap: bool,
    /// Kubelet settings from the values and flags.
    pub kubelet: KubeletValues,
    /// Where to report the outcome.
    #[serde(serialize_with = "callback")]
    pub callback_url: Option<url::Url>,
    /// Extra CA file for the values URL and callback.
    pub values_ca_file: Option<PathBuf>,
    /// Preflight checks downgraded to warnings.
    pub ignore_preflight_errors: Vec<String>,
    /// TLS bootstrap mode.
    pub tls_bootstrap: TlsBootstrapMode,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Per-request limits.
    #[serde(skip)]
    pub limits: Limits,
    /// Where missing artifacts come from.
    pub artifacts: ArtifactSettings,
    /// Which part of the join to run.
    pub phase: crate::cli::join::Phase,
    /// Things the user should know (ignored compatibility flags, overridden values…).
    pub notices: Vec<String>,
    /// This binary's path, for the reset unit join installs (None: not installed).
    #[serde(skip)]
    pub agent_path: Option<PathBuf>,
}

fn redacted<S: serde::Serializer>(t: &Option<BootstrapToken>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.collect_str(t),
        None => s.serialize_none(),
    }
}

fn pins<S: serde::Serializer>(p: &PinSet, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(p.pins().len()))?;
    for pin in p.pins() {
        seq.serialize_element(pin)?;
    }
    seq.end()
}

fn callback<S: serde::Serializer>(u: &Option<url::Url>, s: S) -> Result<S::Ok, S::Error> {
    match u {
        Some(u) => s.serialize_str(&redact_url_path(u)),
        None => s.serialize_none(),
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure::new(Code::Usage, message)
}

fn syntax(e: crate::model::validate::SyntaxError) -> Failure {
    usage(e.to_string())
}

/// `--node-ip`: one address, or two of different families (`10.0.0.5,fd00::5`), as the
/// kubelet's own flag takes them.
fn parse_node_ips(text: &str) -> Result<Vec<IpAddr>, Failure> {
    let bad = || {
        usage(format!(
            "invalid --node-ip {text:?}: expected an IP address, or an IPv4 and an IPv6 address separated by a comma"
        ))
    };
    let ips = text
        .split(',')
        .map(|p| p.trim().parse::<IpAddr>().map_err(|_| bad()))
        .collect::<Result<Vec<_>, _>>()?;
    match ips.as_slice() {
        [_] => Ok(ips),
        [a, b] if a.is_ipv4() != b.is_ipv4() => Ok(ips),
        _ => Err(bad()),
    }
}

/// The trust group: the bootstrap token, the endpoints, the CA pins.
struct Trust {
    token: Option<BootstrapToken>,
    endpoints: Vec<Endpoint>,
    pins: PinSet,
}

fn trust(
    args: &JoinArgs,
    flag_token: Option<BootstrapToken>,
    v: &ClusterValues,
) -> Result<Trust, Failure> {
    // Bake mode contacts no cluster: it needs no token, endpoint or pin.
    let prepare = args.phase == crate::cli::join::Phase::Prepare;
    let token = flag_token.or_else(|| v.bootstrap_token.clone());
    if token.is_none() && !prepare {
        return Err(usage("no bootstrap token: pass --openapi-token (values from the control plane), or --token ID.SECRET / NODE_ATTACH_TOKEN / --token-file"));
    }
    let endpoints = match &args.endpoint {
        Some(e) => vec![Endpoint::parse("--endpoint", e).map_err(syntax)?],
        None => v.api_server_endpoints.clone(),
    };
    if endpoints.is_empty() && !prepare {
        return Err(usage(
            "no API server endpoint: pass --endpoint HOST:PORT, or --openapi-token so the control plane provides it",
        ));
    }
    let pins = match args.pins.ca_cert_hashes.is_empty() {
        true => PinSet::new(v.ca_cert_hashes.iter().cloned()),
        false => PinSet::new(args.pins.ca_cert_hashes.iter().cloned()),
    };
    if pins.is_empty() && !args.pins.unsafe_skip_ca_verification && !prepare {
        return Err(Failure::new(
            Code::DiscoveryNoPins,
            "refusing to join without a CA pin: neither --discovery-token-ca-cert-hash nor the cluster values give one",
        ));
    }
    Ok(Trust {
        token,
        endpoints,
        pins,
    })
}

/// Cluster DNS addresses and domain.
fn dns(args: &JoinArgs, v: &ClusterValues) -> Result<(Vec<IpAddr>, Option<String>), Failure> {
    let cluster_dns = match &args.cluster_dns {
        Some(d) => parse_ip_list("--cluster-dns", d).map_err(syntax)?,
        None => v.cluster_dns.clone(),
    };
    let cluster_domain = match &args.cluster_domain {
        Some(d) => {
            check_dns_subdomain("--cluster-domain", d).map_err(syntax)?;
            Some(d.clone())
        }
        None => v.cluster_domain.clone(),
    };
    Ok((cluster_dns, cluster_domain))
}

/// The runtime and its values: a flag (or `--docker-version`) wins over the values, and a
/// version the values give for another runtime is dropped.
fn runtime(args: &JoinArgs, v: &ClusterValues) -> Result<(RuntimeKind, RuntimeValues), Failure> {
    let mut values = v.runtime.clone();
    let flag = args
        .runtime
        .as_deref()
        .map(|r| RuntimeKind::parse("--runtime", r))
        .transpose()
        .map_err(syntax)?;
    if flag == Some(RuntimeKind::Containerd) && args.docker_version.is_some() {
        return Err(usage(
            "--runtime containerd conflicts with --docker-version; drop one of them",
        ));
    }
    let kind = flag
        .or(args.docker_version.as_ref().map(|_| RuntimeKind::Docker))
        .or(v.runtime.name)
        .unwrap_or(RuntimeKind::Containerd);
    match args
        .runtime_version
        .as_ref()
        .or(args.docker_version.as_ref())
    {
        Some(ver) => {
            check_package_version("--runtime-version", ver).map_err(|e| usage(e.to_string()))?;
            values.version = Some(ver.clone());
        }
        // The values' version belongs to another runtime.
        None if v.runtime.name.is_some_and(|n| n != kind) => values.version = None,
        None => {}
    }
    values.name = Some(kind);
    Ok((kind, values))
}

/// Labels (a flag label overrides a value label of the same key, with a notice) and taints.
fn labels_taints(
    args: &JoinArgs,
    v: &ClusterValues,
    notices: &mut Vec<String>,
) -> Result<(Labels, Vec<Taint>), Failure> {
    let mut labels = v.labels.clone();
    if let Some(text) = &args.labels {
        for (k, val) in Labels::parse_list("--labels", text).map_err(syntax)?.0 {
            match labels.0.insert(k.clone(), val.clone()) {
                Some(old) if old != val => notices.push(format!(
                    "--labels {k}={val} overrides the cluster values' {k}={old}"
                )),
                _ => {}
            }
        }
    }
    let mut taints = v.taints.clone();
    if let Some(text) = &args.taints {
        for t in Taint::parse_list("--taints", text).map_err(syntax)? {
            push_taint("--taints", &mut taints, t).map_err(syntax)?;
        }
    }
    Ok((labels, taints))
}

/// How the node is named, and the identifiers naming it uses.
fn naming(args: &JoinArgs, v: &ClusterValues) -> Result<NodeNaming, Failure> {
    for (flag, value) in [
        ("--instance-id", &args.instance_id),
        ("--region", &args.region),
    ] {
        if let Some(val) = value {
            check_identifier(flag, val).map_err(syntax)?;
        }
    }
    if let Some(p) = &args.provider_id {
        let ok = !p.is_empty()
            && p.len() <= 256
            && p.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
        if !ok {
            return Err(usage(format!(
                "invalid --provider-id {p:?}: expected printable characters without quotes, such as cn-hangzhou.i-abc or aws:///us-east-1a/i-123"
            )));
        }
    }
    let naming = match &args.node_name {
        Some(name) => {
            check_node_name(name).map_err(syntax)?;
            NodeNaming::Explicit(name.clone())
        }
        None => NodeNaming::Mode(match &args.node_name_mode {
            Some(m) => NodeNameMode::parse("--node-name-mode", m).map_err(syntax)?,
            None => v.node_name_mode.unwrap_or(NodeNameMode::Hostname),
        }),
    };
    if naming == NodeNaming::Mode(NodeNameMode::InstanceId) && args.instance_id.is_none() {
        return Err(usage(
            "node name mode instanceid needs the instance id: pass --instance-id (and --region), or --node-name",
        ));
    }
    Ok(naming)
}

/// The kubelet's settings: the values', with `--cpu-policy` over them.
fn kubelet(args: &JoinArgs, v: &ClusterValues) -> Result<KubeletValues, Failure> {
    let mut kubelet = v.kubelet.clone();
    if let Some(policy) = &args.cpu_policy {
        if policy != "none" && policy != "static" {
            return Err(usage(format!(
                "invalid --cpu-policy {policy:?}: expected none or static"
            )));
        }
        kubelet.cpu_manager_policy = Some(policy.clone());
    }
    Ok(kubelet)
}

fn tls_bootstrap(args: &JoinArgs) -> Result<TlsBootstrapMode, Failure> {
    match args.tls_bootstrap.as_str() {
        "node-attach" => Ok(TlsBootstrapMode::NodeAttach),
        "kubelet" => Ok(TlsBootstrapMode::Kubelet),
        other => Err(usage(format!(
            "invalid --tls-bootstrap {other:?}: expected node-attach or kubelet"
        ))),
    }
}

/// The values' callback, unless it is plain http and that was not allowed.
fn callback_url(args: &JoinArgs, v: &ClusterValues, notices: &mut Vec<String>) -> Option<url::Url> {
    let url = v.callback_url.clone()?;
    if url.scheme() == "http" && !args.allow_insecure_values_url {
        notices.push(format!(
            "not reporting to the callback {}: it is plain http (pass --allow-insecure-values-url to allow)",
            redact_url_path(&url)
        ));
        return None;
    }
    Some(url)
}

/// Notices about the inputs themselves.
fn input_notices(args: &JoinArgs, v: &ClusterValues, pins: &PinSet) -> Vec<String> {
    let mut notices = args.compat.notices();
    if !v.ignored_keys.is_empty() {
        notices.push(format!(
            "the control plane sent keys this agent does not know, ignored: {}",
            v.ignored_keys.join(", ")
        ));
    }
    if args.pins.unsafe_skip_ca_verification && pins.is_empty() {
        notices.push("--discovery-token-unsafe-skip-ca-verification: the API server is trusted on the token's signature alone".into());
    }
    notices
}

impl Settings {
    /// The bootstrap token (always there outside bake mode).
    pub fn bootstrap_token(&self) -> Result<&BootstrapToken, Failure> {
        self.token
            .as_ref()
            .ok_or_else(|| usage("no bootstrap token (bake mode joins no cluster)"))
    }

    /// Merges the join flags with the (already validated) cluster values, group by group.
    /// Precedence: a flag (or its environment variable or file) over the values over defaults.
    pub fn resolve(
        args: &JoinArgs,
        token_from_flags: Option<BootstrapToken>,
        values: Option<&ClusterValues>,
    ) -> Result<Settings, Failure> {
        let empty = ClusterValues::empty(crate::sources::values::ValuesFormat::Json);
        let v = values.unwrap_or(&empty);
        let Trust {
            token,
            endpoints,
            pins,
        } = trust(args, token_from_flags, v)?;
        let mut notices = input_notices(args, v, &pins);
        let (cluster_dns, cluster_domain) = dns(args, v)?;
        let (runtime, runtime_values) = runtime(args, v)?;
        let (labels, taints) = labels_taints(args, v, &mut notices)?;
        let node_naming = naming(args, v)?;
        let node_ips = match args.node_ip.as_deref() {
            Some(text) => parse_node_ips(text)?,
            None => Vec::new(),
        };
        Ok(Settings {
            root: args.root.clone(),
            dry_run: args.dry_run,
            endpoints,
            token,
            pins,
            unsafe_skip_ca_verification: args.pins.unsafe_skip_ca_verification,
            cluster_dns,
            cluster_domain,
            kubernetes_version: v.kubernetes_version.clone(),
            runtime,
            runtime_values,
            labels,
            taints,
            ess: args.ess.or(v.ess).unwrap_or(false),
            node_naming,
            node_ips,
            provider_id: args.provider_id.clone(),
            instance_id: args.instance_id.clone(),
            region: args.region.clone(),
            node_pool_id: v.node_pool_id.clone(),
            disable_swap: args.disable_swap,
            kubelet: kubelet(args, v)?,
            callback_url: callback_url(args, v, &mut notices),
            values_ca_file: args.values_ca_file.clone(),
            ignore_preflight_errors: args.ignore_preflight_errors.clone(),
            tls_bootstrap: tls_bootstrap(args)?,
            timeouts: Timeouts {
                values: args.values_timeout,
                discovery: args.network.discovery_timeout,
                csr: args.csr_timeout,
                node_wait: args.node_wait_timeout,
            },
            limits: args.network.limits(),
            artifacts: artifact_settings(&args.artifacts, &v.artifacts)?,
            phase: args.phase,
            ess_lifecycle: ess_lifecycle(args)?,
            notices,
            agent_path: None,
        })
    }
}

/// The ESS lifecycle action to complete, validated before anything changes.
fn ess_lifecycle(args: &JoinArgs) -> Result<Option<EssLifecycle>, Failure> {
    let (Some(hook_id), Some(token)) = (
        &args.ess_lifecycle_hook_id,
        &args.ess_lifecycle_action_token,
    ) else {
        return Ok(None);
    };
    let plain = |s: &str, max: usize| {
        !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !hook_id.starts_with("ash-") || !plain(hook_id, 64) {
        return Err(usage(format!(
            "--ess-lifecycle-hook-id {hook_id:?}: not an ESS lifecycle hook id (ash-…)"
        )));
    }
    if !plain(token, 128) {
        return Err(usage("--ess-lifecycle-action-token: not a lifecycle action token (letters, digits and dashes)"));
    }
    if let Some(u) = &args.ess_endpoint {
        if u.scheme() != "https" && u.host_str() != Some("127.0.0.1") {
            return Err(usage(format!("--ess-endpoint {u}: not an https URL")));
        }
    }
    Ok(Some(EssLifecycle {
        action: crate::client::ess::LifecycleAction {
            hook_id: hook_id.clone(),
            token: crate::model::secret::Secret::new(token.clone()),
        },
        endpoint: args.ess_endpoint.clone(),
        metadata_endpoint: args.metadata_endpoint.clone(),
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    const PIN: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    fn args(extra: &[&str]) -> JoinArgs {
        let mut argv = vec!["node-attach", "join"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).expect("flags").command {
            Command::Join(a) => *a,
            _ => panic!("join"),
        }
    }

    fn values(json: &str) -> ClusterValues {
        crate::sources::values::parse(json.as_bytes(), Some("application/json")).expect("values")
    }

    fn token() -> Option<BootstrapToken> {
        "abcdef.0123456789abcdef".parse().ok()
    }

    /// Settings from the fewest flags a scale-out join takes.
    pub fn minimal() -> Settings {
        let a = args(&[
            "--endpoint",
            "10.0.0.1:6443",
            "--discovery-token-ca-cert-hash",
            PIN,
        ]);
        Settings::resolve(&a, token(), None).expect("settings")
    }

    const VALUES: &str = r#"{"apiVersion": "node-attach.io/v1", "kind": "ClusterValues",
        "apiServerEndpoints": ["10.9.9.9:6443"], "caCertHashes": ["sha256:1111111111111111111111111111111111111111111111111111111111111111"],
        "bootstrapToken": "zyxwvu.0123456789abcdef", "clusterDNS": ["10.96.0.10"],
        "labels": {"workload_type": "gpu", "team": "a"}, "runtime": {"name": "docker", "version": "20.10.24"}}"#;

    #[test]
    fn flags_win_over_values_which_win_over_defaults() {
        struct Case {
            flags: &'static [&'static str],
            check: fn(&Settings) -> bool,
            what: &'static str,
        }
        let cases = [
            Case {
                flags: &[],
                check: |s| s.endpoints[0].to_string() == "10.9.9.9:6443",
                what: "endpoint from values",
            },
            Case {
                flags: &["--endpoint", "10.0.0.1:6443"],
                check: |s| s.endpoints.len() == 1 && s.endpoints[0].to_string() == "10.0.0.1:6443",
                what: "endpoint flag wins",
            },
            Case {
                flags: &[],
                check: |s| s.cluster_dns == ["10.96.0.10".parse::<IpAddr>().expect("ip")],
                what: "DNS from values",
            },
            Case {
                flags: &["--cluster-dns", "10.0.0.10"],
                check: |s| s.cluster_dns == ["10.0.0.10".parse::<IpAddr>().expect("ip")],
                what: "DNS flag wins",
            },
            Case {
                flags: &[],
                check: |s| {
                    s.runtime == RuntimeKind::Docker
                        && s.runtime_values.version.as_deref() == Some("20.10.24")
                },
                what: "runtime from values",
            },
            Case {
                flags: &["--runtime", "containerd"],
                check: |s| {
                    s.runtime == RuntimeKind::Containerd && s.runtime_values.version.is_none()
                },
                what: "runtime flag wins and drops the other runtime's version",
            },
            Case {
                flags: &["--labels", "workload_type=cpu"],
                check: |s| {
                    s.labels.0.get("workload_type").map(String::as_str) == Some("cpu")
                        && s.labels.0.contains_key("team")
                        && s.notices.iter().any(|n| n.contains("overrides"))
                },
                what: "label flag overrides one key, with a notice",
            },
            Case {
                flags: &["--discovery-token-ca-cert-hash", PIN],
                check: |s| s.pins.pins().len() == 1 && s.pins.pins()[0].to_string() == PIN,
                what: "pin flag replaces the values' pins",
            },
            Case {
                flags: &["--node-ip", "10.0.0.5,fd00::5"],
                check: |s| s.node_ips.len() == 2,
                what: "dual-stack node IPs",
            },
        ];
        let v = values(VALUES);
        for c in cases {
            let s = Settings::resolve(&args(c.flags), None, Some(&v)).expect(c.what);
            assert!((c.check)(&s), "{}", c.what);
        }
        // The flag token wins over the values' token.
        let s = Settings::resolve(&args(&[]), token(), Some(&v)).expect("token");
        assert_eq!(s.token.as_ref().map(|t| t.id()), Some("abcdef"));
    }

    #[test]
    fn missing_or_conflicting_inputs_are_refused_before_anything_runs() {
        let cases: [(&[&str], &str); 5] = [
            (&["--endpoint", "10.0.0.1:6443"], "CA pin"),
            (&["--discovery-token-ca-cert-hash", PIN], "endpoint"),
            (
                &[
                    "--endpoint",
                    "10.0.0.1:6443",
                    "--discovery-token-ca-cert-hash",
                    PIN,
                    "--runtime",
                    "containerd",
                    "--docker-version",
                    "20.10",
                ],
                "conflicts",
            ),
            (
                &[
                    "--endpoint",
                    "10.0.0.1:6443",
                    "--discovery-token-ca-cert-hash",
                    PIN,
                    "--node-ip",
                    "10.0.0.5,10.0.0.6",
                ],
                "--node-ip",
            ),
            (
                &[
                    "--endpoint",
                    "10.0.0.1:6443",
                    "--discovery-token-ca-cert-hash",
                    PIN,
                    "--tls-bootstrap",
                    "later",
                ],
                "--tls-bootstrap",
            ),
        ];
        for (flags, expect) in cases {
            let err = Settings::resolve(&args(flags), token(), None).expect_err(expect);
            assert!(err.message.contains(expect), "{flags:?}: {}", err.message);
        }
    }
}
