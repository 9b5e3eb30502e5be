//! node-attach's versioned JSON values format (`apiVersion: node-attach.io/v1`,
//! `kind: ClusterValues`), documented field by field in `docs/values.md`.
//!
//! Unknown fields are refused: a field this agent does not understand could be one that matters
//! (a pin, a taint), and silently dropping it would join the node wrongly.

use super::{
    check_artifacts_url, check_callback, check_identifier, check_image, check_package_version,
    check_public_key, check_quantity, invalid, ArtifactValues, ClusterValues, KubeletValues,
    NodeNameMode, RuntimeKind, RuntimeSource, RuntimeValues, ValuesError, ValuesFormat,
};
use crate::model::token::BootstrapToken;
use crate::model::validate::{check_dns_subdomain, push_taint, Endpoint, Labels, Taint};
use crate::trust::pin::CaPin;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The only `apiVersion` this agent reads.
pub const API_VERSION: &str = "node-attach.io/v1";
/// The `kind` of the document.
pub const KIND: &str = "ClusterValues";

/// The wire form, before validation.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Document {
    /// Must be [`API_VERSION`].
    pub api_version: String,
    /// Must be [`KIND`].
    pub kind: String,
    /// `host:port` of the API server(s).
    #[serde(default)]
    pub api_server_endpoints: Vec<String>,
    /// `id.secret`.
    #[serde(default)]
    pub bootstrap_token: Option<String>,
    /// `sha256:` pins.
    #[serde(default)]
    pub ca_cert_hashes: Vec<String>,
    /// DNS service IPs.
    #[serde(default, rename = "clusterDNS")]
    pub cluster_dns: Vec<String>,
    /// e.g. `cluster.local`.
    #[serde(default)]
    pub cluster_domain: Option<String>,
    /// e.g. `v1.31.2`.
    #[serde(default)]
    pub kubernetes_version: Option<String>,
    /// Runtime settings.
    #[serde(default)]
    pub runtime: Option<RuntimeDoc>,
    /// Node labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `key[=value]:Effect` strings.
    #[serde(default)]
    pub taints: Vec<String>,
    /// Autoscaler pool.
    #[serde(default)]
    pub ess: Option<bool>,
    /// `hostname`, `nodeip`, `instanceid`.
    #[serde(default)]
    pub node_name_mode: Option<String>,
    /// Where to report the outcome.
    #[serde(default, rename = "callbackURL")]
    pub callback_url: Option<String>,
    /// Kubelet settings.
    #[serde(default)]
    pub kubelet: Option<KubeletDoc>,
    /// CNI plugin name.
    #[serde(default)]
    pub network: Option<String>,
    /// Node pool id.
    #[serde(default, rename = "nodePoolID")]
    pub node_pool_id: Option<String>,
    /// Artifact source.
    #[serde(default)]
    pub artifacts: Option<ArtifactsDoc>,
}

/// `artifacts` in the wire form.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArtifactsDoc {
    /// The mirror's base URL.
    #[serde(default)]
    pub url: Option<String>,
    /// `ed25519:<base64>`.
    #[serde(default)]
    pub public_key: Option<String>,
    /// The kubelet version to install.
    #[serde(default)]
    pub kubelet_version: Option<String>,
    /// Import the mirror's images.
    #[serde(default)]
    pub air_gap: Option<bool>,
    /// `auto`, `package` or `mirror`.
    #[serde(default)]
    pub runtime_source: Option<String>,
}

/// `runtime` in the wire form.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuntimeDoc {
    /// `containerd` or `docker`.
    #[serde(default)]
    pub name: Option<String>,
    /// Package version.
    #[serde(default)]
    pub version: Option<String>,
    /// Sandbox image.
    #[serde(default)]
    pub pause_image: Option<String>,
    /// Registry host → mirrors.
    #[serde(default)]
    pub registry_mirrors: BTreeMap<String, Vec<String>>,
    /// Insecure registries.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// Data directory.
    #[serde(default)]
    pub data_root: Option<String>,
}

/// `kubelet` in the wire form.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeletDoc {
    /// `maxPods`.
    #[serde(default)]
    pub max_pods: Option<u32>,
    /// `systemReserved`.
    #[serde(default)]
    pub system_reserved: BTreeMap<String, String>,
    /// `kubeReserved`.
    #[serde(default)]
    pub kube_reserved: BTreeMap<String, String>,
    /// `evictionHard`.
    #[serde(default)]
    pub eviction_hard: BTreeMap<String, String>,
    /// `failSwapOn`.
    #[serde(default)]
    pub fail_swap_on: Option<bool>,
    /// `cpuManagerPolicy`.
    #[serde(default)]
    pub cpu_manager_policy: Option<String>,
}

/// Parses and validates a JSON values document.
pub fn parse(text: &str) -> Result<ClusterValues, ValuesError> {
    let doc: Document = crate::model::strict::json(text.as_bytes()).map_err(|e| {
        invalid(
            "document",
            format!("not a valid {API_VERSION} {KIND} document: {e}"),
        )
    })?;
    if doc.api_version != API_VERSION {
        return Err(invalid(
            "apiVersion",
            format!(
                "{:?} is not supported; this agent reads {API_VERSION}",
                doc.api_version
            ),
        ));
    }
    if doc.kind != KIND {
        return Err(invalid("kind", format!("expected {KIND}")));
    }
    let mut v = ClusterValues::empty(ValuesFormat::Json);
    trust(&doc, &mut v)?;
    if !doc.cluster_dns.is_empty() {
        v.cluster_dns =
            crate::model::validate::parse_ip_list("clusterDNS", &doc.cluster_dns.join(","))?;
    }
    if let Some(d) = &doc.cluster_domain {
        check_dns_subdomain("clusterDomain", d)?;
        v.cluster_domain = Some(d.clone());
    }
    if let Some(k) = &doc.kubernetes_version {
        v.kubernetes_version = Some(k.parse().map_err(
            |e: crate::model::version::VersionError| invalid("kubernetesVersion", e.to_string()),
        )?);
    }
    if let Some(r) = doc.runtime {
        v.runtime = runtime(r)?;
    }
    let mut labels = Labels::default();
    for (k, val) in &doc.labels {
        labels.insert("labels", k, val)?;
    }
    v.labels = labels;
    for (i, t) in doc.taints.iter().enumerate() {
        let taint = Taint::parse(&format!("taints[{i}]"), t)?;
        push_taint("taints", &mut v.taints, taint)?;
    }
    v.ess = doc.ess;
    if let Some(m) = &doc.node_name_mode {
        v.node_name_mode = Some(NodeNameMode::parse("nodeNameMode", m)?);
    }
    if let Some(c) = &doc.callback_url {
        v.callback_url = Some(check_callback("callbackURL", c)?);
    }
    if let Some(k) = doc.kubelet {
        v.kubelet = kubelet(k)?;
    }
    if let Some(n) = &doc.network {
        check_identifier("network", n)?;
        v.network = Some(n.clone());
    }
    if let Some(p) = &doc.node_pool_id {
        check_identifier("nodePoolID", p)?;
        v.node_pool_id = Some(p.clone());
    }
    if let Some(a) = doc.artifacts {
        v.artifacts = artifacts(a)?;
    }
    Ok(v)
}

/// The trust fields: endpoints, the bootstrap token, the CA pins.
fn trust(doc: &Document, v: &mut ClusterValues) -> Result<(), ValuesError> {
    for (i, e) in doc.api_server_endpoints.iter().enumerate() {
        v.api_server_endpoints
            .push(Endpoint::parse(&format!("apiServerEndpoints[{i}]"), e)?);
    }
    if let Some(t) = &doc.bootstrap_token {
        v.bootstrap_token = Some(
            t.parse::<BootstrapToken>()
                .map_err(|e| invalid("bootstrapToken", e.to_string()))?,
        );
    }
    for (i, h) in doc.ca_cert_hashes.iter().enumerate() {
        v.ca_cert_hashes.push(
            h.parse::<CaPin>()
                .map_err(|e| invalid(format!("caCertHashes[{i}]"), e.to_string()))?,
        );
    }
    Ok(())
}

fn artifacts(a: ArtifactsDoc) -> Result<ArtifactValues, ValuesError> {
    let mut out = ArtifactValues::default();
    if let Some(u) = &a.url {
        out.url = Some(check_artifacts_url("artifacts.url", u)?);
    }
    if let Some(k) = &a.public_key {
        out.public_key = Some(check_public_key("artifacts.publicKey", k)?);
    }
    if let Some(v) = &a.kubelet_version {
        out.kubelet_version = Some(v.parse().map_err(
            |e: crate::model::version::VersionError| {
                invalid("artifacts.kubeletVersion", e.to_string())
            },
        )?);
    }
    out.air_gap = a.air_gap;
    if let Some(r) = &a.runtime_source {
        out.runtime_source = Some(RuntimeSource::parse("artifacts.runtimeSource", r)?);
    }
    Ok(out)
}

fn runtime(r: RuntimeDoc) -> Result<RuntimeValues, ValuesError> {
    let mut out = RuntimeValues::default();
    if let Some(n) = &r.name {
        out.name = Some(RuntimeKind::parse("runtime.name", n)?);
    }
    if let Some(v) = &r.version {
        check_package_version("runtime.version", v)?;
        out.version = Some(v.clone());
    }
    if let Some(p) = &r.pause_image {
        check_image("runtime.pauseImage", p)?;
        out.pause_image = Some(p.clone());
    }
    for (host, mirrors) in r.registry_mirrors {
        check_registry_host(&format!("runtime.registryMirrors[{host:?}]"), &host)?;
        for m in &mirrors {
            // The URL parser drops tabs and newlines and escapes quotes; the string as given is
            // what goes into hosts.toml and daemon.json, so it must need none of that.
            if m.chars().any(|c| {
                c.is_control() || c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | '`')
            }) {
                return Err(invalid(
                    format!("runtime.registryMirrors[{host:?}]"),
                    "a mirror must be a plain URL: no spaces, control characters, quotes or backslashes",
                ));
            }
            let u = url::Url::parse(m).map_err(|e| {
                invalid(
                    format!("runtime.registryMirrors[{host:?}]"),
                    format!("{m:?} is not a URL: {e}"),
                )
            })?;
            if !matches!(u.scheme(), "https" | "http") {
                return Err(invalid(
                    format!("runtime.registryMirrors[{host:?}]"),
                    "mirrors must be http(s) URLs",
                ));
            }
        }
        out.registry_mirrors.insert(host, mirrors);
    }
    for (i, reg) in r.insecure_registries.iter().enumerate() {
        check_registry_host(&format!("runtime.insecureRegistries[{i}]"), reg)?;
    }
    out.insecure_registries = r.insecure_registries;
    if let Some(d) = &r.data_root {
        check_absolute_path("runtime.dataRoot", d)?;
        out.data_root = Some(d.clone());
    }
    Ok(out)
}

fn kubelet(k: KubeletDoc) -> Result<KubeletValues, ValuesError> {
    const RESERVABLE: &[&str] = &["cpu", "memory", "ephemeral-storage", "pid"];
    const EVICTION: &[&str] = &[
        "memory.available",
        "nodefs.available",
        "nodefs.inodesFree",
        "imagefs.available",
        "imagefs.inodesFree",
        "pid.available",
    ];
    for (field, map) in [
        ("kubelet.systemReserved", &k.system_reserved),
        ("kubelet.kubeReserved", &k.kube_reserved),
    ] {
        for (res, q) in map {
            if !RESERVABLE.contains(&res.as_str()) {
                return Err(invalid(
                    format!("{field}.{res}"),
                    format!(
                        "unknown resource; expected one of {}",
                        RESERVABLE.join(", ")
                    ),
                ));
            }
            check_quantity(&format!("{field}.{res}"), q, false)?;
        }
    }
    for (signal, q) in &k.eviction_hard {
        if !EVICTION.contains(&signal.as_str()) {
            return Err(invalid(
                format!("kubelet.evictionHard.{signal}"),
                format!("unknown signal; expected one of {}", EVICTION.join(", ")),
            ));
        }
        check_quantity(&format!("kubelet.evictionHard.{signal}"), q, true)?;
    }
    if let Some(p) = k.max_pods {
        if !(1..=1024).contains(&p) {
            return Err(invalid("kubelet.maxPods", "must be between 1 and 1024"));
        }
    }
    if let Some(p) = &k.cpu_manager_policy {
        if p != "none" && p != "static" {
            return Err(invalid(
                "kubelet.cpuManagerPolicy",
                "expected none or static",
            ));
        }
    }
    Ok(KubeletValues {
        max_pods: k.max_pods,
        system_reserved: k.system_reserved,
        kube_reserved: k.kube_reserved,
        eviction_hard: k.eviction_hard,
        fail_swap_on: k.fail_swap_on,
        cpu_manager_policy: k.cpu_manager_policy,
    })
}

/// A registry host, optionally with a port: `registry.example.com[:5000]`.
pub fn check_registry_host(field: &str, host: &str) -> Result<(), ValuesError> {
    let (name, port) = host.rsplit_once(':').unwrap_or((host, ""));
    let port_ok = port.is_empty() || port.parse::<u16>().is_ok_and(|p| p > 0);
    let name_ok = name.parse::<std::net::IpAddr>().is_ok()
        || check_dns_subdomain(field, &name.to_ascii_lowercase()).is_ok();
    if port_ok && name_ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{host:?} is not a registry host (expected HOST[:PORT])"),
        ))
    }
}

fn check_absolute_path(field: &str, p: &str) -> Result<(), ValuesError> {
    let ok = p.starts_with('/')
        && p.len() < 4096
        && !p.split('/').any(|c| c == "..")
        && !p.bytes().any(|b| b.is_ascii_control());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{p:?} is not a clean absolute path"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const FULL: &str = r#"{
      "apiVersion": "node-attach.io/v1",
      "kind": "ClusterValues",
      "apiServerEndpoints": ["10.0.0.10:6443", "api.example.com:6443"],
      "bootstrapToken": "abcdef.0123456789abcdef",
      "caCertHashes": ["sha256:98be2e6d4d8a89aa308fb15de0c07e2531ce549c68dec1687cdd5c06f0826658"],
      "clusterDNS": ["10.96.0.10"],
      "clusterDomain": "cluster.local",
      "kubernetesVersion": "v1.31.2",
      "runtime": {"name": "containerd", "version": "1.7.22", "pauseImage": "registry.k8s.io/pause:3.10",
                  "registryMirrors": {"docker.io": ["https://mirror.example.com"]},
                  "insecureRegistries": ["10.0.0.5:5000"], "dataRoot": "/var/lib/containerd"},
      "labels": {"workload_type": "cpu", "k8s.io/cluster-autoscaler": "true"},
      "taints": ["dedicated=gpu:NoSchedule"],
      "ess": true,
      "nodeNameMode": "nodeip",
      "callbackURL": "https://cs.example.com/callback/x",
      "kubelet": {"maxPods": 64, "systemReserved": {"cpu": "100m", "memory": "512Mi"},
                  "evictionHard": {"memory.available": "5%"}, "failSwapOn": false,
                  "cpuManagerPolicy": "static"},
      "network": "flannel",
      "nodePoolID": "np-123",
      "artifacts": {"url": "https://mirror.example.com/k8s", "publicKey": "ed25519:bSctQPDsCU9/H4QoQylJg2/A5mK5N5kvpEXpOaEsS2s=",
                    "kubeletVersion": "v1.31.2", "airGap": true, "runtimeSource": "mirror"}
    }"#;

    #[test]
    fn parses_every_field() {
        let v = parse(FULL).expect("valid");
        assert_eq!(v.api_server_endpoints.len(), 2);
        assert_eq!(
            v.bootstrap_token.as_ref().map(|t| t.id().to_owned()),
            Some("abcdef".into())
        );
        assert_eq!(v.ca_cert_hashes.len(), 1);
        assert_eq!(v.runtime.name, Some(RuntimeKind::Containerd));
        assert_eq!(v.kubelet.max_pods, Some(64));
        assert_eq!(v.node_name_mode, Some(NodeNameMode::NodeIp));
        assert_eq!(v.node_pool_id.as_deref(), Some("np-123"));
        assert_eq!(
            v.artifacts.url.as_ref().map(url::Url::as_str),
            Some("https://mirror.example.com/k8s/")
        );
        assert!(v.artifacts.public_key.is_some());
        assert_eq!(v.artifacts.air_gap, Some(true));
        assert_eq!(v.artifacts.runtime_source, Some(RuntimeSource::Mirror));
        let printed = serde_json::to_string(&v).expect("json");
        assert!(!printed.contains("0123456789abcdef"), "{printed}");
        assert!(!printed.contains("callback/x"), "{printed}");
    }

    fn with(field: &str, value: &str) -> String {
        let mut doc: serde_json::Value = serde_json::from_str(FULL).expect("json");
        let mut target = &mut doc;
        let parts: Vec<&str> = field.split('.').collect();
        for p in &parts[..parts.len() - 1] {
            target = &mut target[*p];
        }
        target[parts[parts.len() - 1]] = serde_json::from_str(value).expect("value json");
        doc.to_string()
    }

    #[test]
    fn each_bad_field_is_named() {
        for (field, value, named) in [
            ("apiVersion", r#""node-attach.io/v2""#, "apiVersion"),
            ("kind", r#""Other""#, "kind"),
            (
                "apiServerEndpoints",
                r#"["a b:6443"]"#,
                "apiServerEndpoints[0]",
            ),
            ("bootstrapToken", r#""abcdef.short""#, "bootstrapToken"),
            ("caCertHashes", r#"["md5:00"]"#, "caCertHashes[0]"),
            ("clusterDNS", r#"["10.96.0"]"#, "clusterDNS"),
            ("clusterDomain", r#""Cluster.Local""#, "clusterDomain"),
            ("kubernetesVersion", r#""one""#, "kubernetesVersion"),
            ("runtime.name", r#""crio""#, "runtime.name"),
            ("runtime.version", r#""$(id)""#, "runtime.version"),
            ("runtime.pauseImage", r#""a b""#, "runtime.pauseImage"),
            ("runtime.dataRoot", r#""relative""#, "runtime.dataRoot"),
            ("labels", r#"{"bad key": "x"}"#, "labels key"),
            ("taints", r#"["x:Never"]"#, "taints[0]"),
            ("nodeNameMode", r#""weird""#, "nodeNameMode"),
            ("callbackURL", r#""not a url""#, "callbackURL"),
            ("kubelet.maxPods", "0", "kubelet.maxPods"),
            (
                "kubelet.systemReserved",
                r#"{"gpu": "1"}"#,
                "kubelet.systemReserved.gpu",
            ),
            (
                "kubelet.evictionHard",
                r#"{"memory.available": "lots"}"#,
                "kubelet.evictionHard.memory.available",
            ),
            ("nodePoolID", r#""np 1""#, "nodePoolID"),
            (
                "artifacts.url",
                r#""http://mirror.example""#,
                "artifacts.url",
            ),
            (
                "artifacts.publicKey",
                r#""rsa:AAAA""#,
                "artifacts.publicKey",
            ),
            (
                "artifacts.kubeletVersion",
                r#""latest""#,
                "artifacts.kubeletVersion",
            ),
            (
                "artifacts.runtimeSource",
                r#""tarball""#,
                "artifacts.runtimeSource",
            ),
        ] {
            let err = parse(&with(field, value)).expect_err(field);
            assert!(err.to_string().contains(named), "{field}: {err}");
        }
    }

    #[test]
    fn unknown_fields_and_bad_json_are_refused() {
        let err = parse(&with("surprise", "1")).expect_err("unknown");
        assert!(err.to_string().contains("surprise"), "{err}");
        assert!(parse("{").is_err());
        assert!(parse("[]").is_err());
    }
}
