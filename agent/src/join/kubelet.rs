//! The kubelet's configuration, in kubeadm's layout: `/var/lib/kubelet/config.yaml` (the
//! cluster's `kubelet-config` merged with node-local settings), `/var/lib/kubelet/kubeadm-flags.env`,
//! `/etc/kubernetes/pki/ca.crt`, and the kubelet unit with its `10-kubeadm.conf` drop-in.

use crate::client::kube::{Kube, KubeError};
use crate::join::identity::Identity;
use crate::model::validate::{Labels, Taint};
use crate::model::version::KubeVersion;
use crate::sources::settings::Settings;
use serde_yaml_ng::{Mapping, Value};

/// The kubelet configuration file.
pub const CONFIG_PATH: &str = "/var/lib/kubelet/config.yaml";
/// The flags environment file.
pub const FLAGS_PATH: &str = "/var/lib/kubelet/kubeadm-flags.env";
/// The node's own kubelet configuration (`NodeLocalCRISocket`: the CRI socket).
pub const INSTANCE_PATH: &str = "/var/lib/kubelet/instance-config.yaml";
/// The cluster CA as the kubelet reads it.
pub const CA_PATH: &str = "/etc/kubernetes/pki/ca.crt";
/// The kubelet unit node-attach installs when the host has none.
pub const UNIT_PATH: &str = "/etc/systemd/system/kubelet.service";
/// The drop-in that starts the kubelet with kubeadm's files.
pub const DROPIN_PATH: &str = "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf";
/// Directories systemd reads units from, where a packaged kubelet.service may already live.
pub const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// The unit file, shipped in `systemd/kubelet.service`.
pub const UNIT: &str = include_str!("../../../systemd/kubelet.service");
/// The reset unit, shipped in `systemd/node-attach-reset.service`; join installs it (pointing at
/// the running binary) so `systemctl start node-attach-reset` works however node-attach came.
pub const RESET_UNIT: &str = include_str!("../../../systemd/node-attach-reset.service");
/// Where join installs the reset unit.
pub const RESET_UNIT_PATH: &str = "/etc/systemd/system/node-attach-reset.service";

/// The drop-in, shipped in `systemd/10-kubeadm.conf`.
pub const DROPIN: &str = include_str!("../../../systemd/10-kubeadm.conf");

/// What the cluster says about kubelets.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The `kubelet` key of the kubelet ConfigMap, parsed (a mapping).
    pub kubelet: Mapping,
    /// Which ConfigMap it came from.
    pub source: String,
    /// `clusterName` from kubeadm's ClusterConfiguration (default `kubernetes`).
    pub cluster_name: String,
    /// The cluster's Kubernetes version (`kubernetesVersion`, else the API server's).
    pub version: KubeVersion,
    /// `imageRepository`, when kubeadm-config names one.
    pub image_repository: Option<String>,
    /// `certificatesDir` (kubeadm's default `/etc/kubernetes/pki`).
    pub certificates_dir: String,
    /// Whether this cluster's kubeadm keeps the CRI socket on the node
    /// ([`crate::model::compat::node_local_cri_socket`]): in `instance-config.yaml` and the
    /// kubelet's configuration, rather than a flag and the Node's annotation.
    pub cri_socket_on_node: bool,
}

/// Why the cluster's configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClusterConfigError {
    /// An API error.
    #[error("reading {what}: {source}")]
    Api {
        /// What was being read.
        what: String,
        /// The error.
        #[source]
        source: KubeError,
    },
    /// Neither kubelet ConfigMap could be read.
    #[error("the cluster's kubelet configuration could not be read: {tried}. A kubeadm cluster of this version keeps kube-system/{expected} readable by bootstrap tokens (Role and RoleBinding kubeadm:{expected}); recreate it with `kubeadm init phase upload-config kubelet`")]
    Missing {
        /// What each name answered.
        tried: String,
        /// The name a cluster of this version should have.
        expected: String,
    },
    /// The YAML is unusable.
    #[error("{what} is not valid YAML: {reason}")]
    Yaml {
        /// Which document.
        what: String,
        /// Parser message.
        reason: String,
    },
}

/// The ClusterConfiguration fields node-attach uses.
#[derive(Clone, Debug)]
pub struct KubeadmFacts {
    /// `clusterName` (default `kubernetes`).
    pub cluster_name: String,
    /// `kubernetesVersion`.
    pub version: Option<KubeVersion>,
    /// `imageRepository`.
    pub image_repository: Option<String>,
    /// `certificatesDir`.
    pub certificates_dir: String,
    /// `featureGates.UnversionedKubeletConfigMap`.
    pub unversioned_kubelet_config: Option<bool>,
    /// `featureGates.NodeLocalCRISocket`.
    pub node_local_cri_socket: Option<bool>,
}

/// Reads kube-system/kubeadm-config; defaults when the cluster has none or keeps it from this
/// client (403).
pub async fn read_kubeadm_facts(kube: &Kube) -> Result<KubeadmFacts, ClusterConfigError> {
    match kube
        .get("/api/v1/namespaces/kube-system/configmaps/kubeadm-config")
        .await
    {
        Ok(cm) => kubeadm_facts(cm.as_ref()),
        Err(e) if e.status() == Some(403) => kubeadm_facts(None),
        Err(source) => Err(ClusterConfigError::Api {
            what: "kube-system/kubeadm-config".into(),
            source,
        }),
    }
}

fn kubeadm_facts(cm: Option<&serde_json::Value>) -> Result<KubeadmFacts, ClusterConfigError> {
    let mut facts = KubeadmFacts {
        cluster_name: "kubernetes".into(),
        version: None,
        image_repository: None,
        certificates_dir: DEFAULT_CERTIFICATES_DIR.into(),
        unversioned_kubelet_config: None,
        node_local_cri_socket: None,
    };
    let Some(text) = cm.and_then(|cm| cm["data"]["ClusterConfiguration"].as_str()) else {
        return Ok(facts);
    };
    let doc: Value = crate::model::strict::yaml(text).map_err(|e| ClusterConfigError::Yaml {
        what: "kubeadm-config ClusterConfiguration".into(),
        reason: e.to_string(),
    })?;
    // Anything but a mapping (or a blank document) would read as "no fields" and join with
    // defaults.
    if !doc.is_mapping() && !doc.is_null() {
        return Err(ClusterConfigError::Yaml {
            what: "kubeadm-config ClusterConfiguration".into(),
            reason: "not a mapping".into(),
        });
    }
    let field = |k: &str| doc.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    if let Some(n) = field("clusterName") {
        facts.cluster_name = n.to_owned();
    }
    facts.version = field("kubernetesVersion").and_then(|v| v.parse().ok());
    facts.image_repository = field("imageRepository").map(str::to_owned);
    if let Some(d) = field("certificatesDir") {
        facts.certificates_dir = d.trim_end_matches('/').to_owned();
    }
    let gate = |name: &str| {
        doc.get("featureGates")
            .and_then(|g| g.get(name))
            .and_then(Value::as_bool)
    };
    facts.unversioned_kubelet_config = gate("UnversionedKubeletConfigMap");
    facts.node_local_cri_socket = gate("NodeLocalCRISocket");
    Ok(facts)
}

/// kubeadm's default certificatesDir.
pub const DEFAULT_CERTIFICATES_DIR: &str = "/etc/kubernetes/pki";

/// Reads the kubelet ConfigMap of the cluster's `version` with the bootstrap token: the name
/// kubeadm of that version made first, the other on 403 or 404 (see
/// [`crate::model::compat::kubelet_config_names`]), parsed here before join changes anything.
/// `facts` are kubeadm-config's, read before ([`read_kubeadm_facts`]).
pub async fn fetch_kubelet_config(
    kube: &Kube,
    facts: KubeadmFacts,
    version: KubeVersion,
) -> Result<ClusterConfig, ClusterConfigError> {
    let names =
        crate::model::compat::kubelet_config_names(&version, facts.unversioned_kubelet_config);
    let cri_socket_on_node =
        crate::model::compat::node_local_cri_socket(&version, facts.node_local_cri_socket);
    let mut tried = Vec::new();
    for name in &names {
        let path = format!("/api/v1/namespaces/kube-system/configmaps/{name}");
        match kube.get(&path).await {
            Ok(Some(cm)) => {
                let yaml = cm["data"]["kubelet"].as_str().unwrap_or_default();
                return Ok(ClusterConfig {
                    kubelet: parse_kubelet_yaml(yaml)?,
                    source: format!("kube-system/{name}"),
                    cluster_name: facts.cluster_name,
                    version,
                    image_repository: facts.image_repository,
                    certificates_dir: facts.certificates_dir,
                    cri_socket_on_node,
                });
            }
            Ok(None) => tried.push(format!("{name}: not found")),
            Err(e) if e.status() == Some(403) => tried.push(format!("{name}: forbidden")),
            Err(source) => {
                return Err(ClusterConfigError::Api {
                    what: format!("kube-system/{name}"),
                    source,
                })
            }
        }
    }
    Err(ClusterConfigError::Missing {
        tried: tried.join(", "),
        expected: names[0].clone(),
    })
}

/// The `kubelet` document of the ConfigMap as a mapping (empty when blank).
pub fn parse_kubelet_yaml(yaml: &str) -> Result<Mapping, ClusterConfigError> {
    let what = || "the cluster's kubelet configuration".to_owned();
    if yaml.trim().is_empty() {
        return Ok(Mapping::new());
    }
    match crate::model::strict::yaml::<Value>(yaml) {
        Ok(Value::Mapping(m)) => Ok(m),
        Ok(_) => Err(ClusterConfigError::Yaml {
            what: what(),
            reason: "not a mapping".into(),
        }),
        Err(e) => Err(ClusterConfigError::Yaml {
            what: what(),
            reason: e.to_string(),
        }),
    }
}

/// Host facts the kubelet configuration depends on.
#[derive(Clone, Debug, Default)]
pub struct HostFacts {
    /// Whether systemd-resolved serves this host: its stub (`127.0.0.53`) is unreachable from
    /// pods, so the kubelet hands them `/run/systemd/resolve/resolv.conf` instead (kubeadm's
    /// `mutateResolverConfig`).
    pub systemd_resolved: bool,
    /// The runtime's CRI endpoint (None: docker through the kubelet's dockershim).
    pub cri_endpoint: Option<String>,
}

/// systemd-resolved's real upstream list.
pub const RESOLVED_RESOLV_CONF: &str = "/run/systemd/resolve/resolv.conf";

fn set(map: &mut Mapping, key: &str, value: Value) {
    map.insert(Value::String(key.to_owned()), value);
}

fn set_default(map: &mut Mapping, key: &str, value: Value) {
    if !map.contains_key(key) {
        set(map, key, value);
    }
}

fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap_or(Value::Null)
}

/// `resolvConf` for this node. kubeadm up to 1.30 bakes the control-plane node's choice into
/// the ConfigMap (1.19 to 1.30) or sets it by flag (before 1.19); from 1.31 it decides per
/// node. node-attach always decides per node: the systemd-resolved file when resolved runs
/// here and the ConfigMap names the kubelet's default or nothing, `/etc/resolv.conf` when the
/// ConfigMap names resolved's file on a node without it. Anything else the cluster chose stays.
fn resolv_conf_for_this_node(map: &mut Mapping, host: &HostFacts) {
    let current = map
        .get("resolvConf")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let wanted = match (current.as_deref(), host.systemd_resolved) {
        (None | Some("/etc/resolv.conf"), true) => RESOLVED_RESOLV_CONF,
        (Some(RESOLVED_RESOLV_CONF), false) => "/etc/resolv.conf",
        _ => return,
    };
    set(map, "resolvConf", Value::String(wanted.into()));
}

/// kubeadm's defaults for fields a sparse ConfigMap leaves out. The CA the kubelet checks
/// client certificates with is the one join writes ([`CA_PATH`]): a cluster whose
/// `certificatesDir` is elsewhere names `<certificatesDir>/ca.crt`, which is rewritten.
fn fill_kubeadm_defaults(map: &mut Mapping, certificates_dir: &str) {
    set_default(
        map,
        "staticPodPath",
        Value::String("/etc/kubernetes/manifests".into()),
    );
    set_default(map, "healthzBindAddress", Value::String("127.0.0.1".into()));
    set_default(map, "healthzPort", Value::Number(10248.into()));
    set_default(
        map,
        "authorization",
        yaml("mode: Webhook\nwebhook:\n  cacheAuthorizedTTL: 5m0s\n  cacheUnauthorizedTTL: 30s\n"),
    );
    let auth = map
        .entry(Value::String("authentication".into()))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if let Value::Mapping(auth) = auth {
        set_default(auth, "anonymous", yaml("enabled: false\n"));
        set_default(auth, "webhook", yaml("enabled: true\ncacheTTL: 2m0s\n"));
        let x509 = auth
            .entry(Value::String("x509".into()))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        if let Value::Mapping(x509) = x509 {
            let cluster_ca = format!("{certificates_dir}/ca.crt");
            let current = x509.get("clientCAFile").and_then(Value::as_str);
            if current.is_none_or(|c| c == cluster_ca) {
                set(x509, "clientCAFile", Value::String(CA_PATH.into()));
            }
        }
    }
}

fn string_map(m: &std::collections::BTreeMap<String, String>) -> Value {
    let mut out = Mapping::new();
    for (k, v) in m {
        out.insert(Value::String(k.clone()), Value::String(v.clone()));
    }
    Value::Mapping(out)
}

/// The cluster's KubeletConfiguration with node-local settings merged in, and kubeadm's
/// defaults filled where a sparse ConfigMap leaves them out (kubeadm `componentconfigs`
/// `kubeletConfig.Default`): without them the kubelet would serve anonymous, unauthorised
/// requests.
pub fn render_config(
    cluster: &ClusterConfig,
    settings: &Settings,
    identity: &Identity,
    host: &HostFacts,
) -> Result<String, ClusterConfigError> {
    let mut map = cluster.kubelet.clone();
    fill_kubeadm_defaults(&mut map, &cluster.certificates_dir);
    resolv_conf_for_this_node(&mut map, host);
    set(
        &mut map,
        "apiVersion",
        Value::String("kubelet.config.k8s.io/v1beta1".into()),
    );
    set(
        &mut map,
        "kind",
        Value::String("KubeletConfiguration".into()),
    );
    // The runtime is configured with the systemd cgroup driver; they must match.
    set(&mut map, "cgroupDriver", Value::String("systemd".into()));
    set(&mut map, "rotateCertificates", Value::Bool(true));
    if !settings.cluster_dns.is_empty() {
        let dns = settings
            .cluster_dns
            .iter()
            .map(|ip| Value::String(ip.to_string()))
            .collect();
        set(&mut map, "clusterDNS", Value::Sequence(dns));
    }
    if let Some(d) = &settings.cluster_domain {
        set(&mut map, "clusterDomain", Value::String(d.clone()));
    } else if !map.contains_key("clusterDomain") {
        set(
            &mut map,
            "clusterDomain",
            Value::String("cluster.local".into()),
        );
    }
    if let Some(p) = &identity.provider_id {
        set(&mut map, "providerID", Value::String(p.clone()));
    }
    // What kubeadm merges in from instance-config.yaml ([`instance_config`]).
    if let (true, Some(e)) = (cluster.cri_socket_on_node, &host.cri_endpoint) {
        set(
            &mut map,
            "containerRuntimeEndpoint",
            Value::String(e.clone()),
        );
    }
    let k = &settings.kubelet;
    if let Some(m) = k.max_pods {
        set(&mut map, "maxPods", Value::Number(m.into()));
    }
    if !k.system_reserved.is_empty() {
        set(&mut map, "systemReserved", string_map(&k.system_reserved));
    }
    if !k.kube_reserved.is_empty() {
        set(&mut map, "kubeReserved", string_map(&k.kube_reserved));
    }
    if !k.eviction_hard.is_empty() {
        set(&mut map, "evictionHard", string_map(&k.eviction_hard));
    }
    if let Some(f) = k.fail_swap_on {
        set(&mut map, "failSwapOn", Value::Bool(f));
    }
    if let Some(p) = &k.cpu_manager_policy {
        set(&mut map, "cpuManagerPolicy", Value::String(p.clone()));
    }
    let mut text =
        serde_yaml_ng::to_string(&Value::Mapping(map)).map_err(|e| ClusterConfigError::Yaml {
            what: "the merged kubelet configuration".into(),
            reason: e.to_string(),
        })?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// Go's `%q` for the flag values node-attach produces (validated: no control characters).
fn go_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The node's own kubelet configuration, where a cluster whose kubeadm keeps the CRI socket on
/// the node has it (`NodeLocalCRISocket`): kubeadm join writes `containerRuntimeEndpoint:
/// "<socket>"` (Go `%q`) and merges it into config.yaml; `kubeadm upgrade node` reads the
/// socket from here. None when the cluster keeps it in the Node's annotation, or there is no
/// CRI endpoint (the kubelet's dockershim).
pub fn instance_config(cluster: &ClusterConfig, endpoint: Option<&str>) -> Option<String> {
    let endpoint = endpoint.filter(|_| cluster.cri_socket_on_node)?;
    Some(format!(
        "containerRuntimeEndpoint: {}\n",
        go_quote(endpoint)
    ))
}

/// What the flags file is made of.
pub struct FlagInputs<'a> {
    /// Labels the kubelet registers with.
    pub labels: &'a Labels,
    /// Taints it registers with.
    pub taints: &'a [Taint],
    /// The node's name, IP and hostname.
    pub identity: &'a Identity,
    /// The CRI endpoint (None: docker through the kubelet's dockershim).
    pub endpoint: Option<&'a str>,
    /// The sandbox image.
    pub pause_image: &'a str,
    /// The kubelet's version (flags come and go with it).
    pub kubelet: &'a KubeVersion,
}

/// `KUBELET_KUBEADM_ARGS="--k=v …"`, arguments sorted by name as kubeadm writes them, with the
/// flags the kubelet's version needs ([`crate::model::compat::KubeletFlagGates`]).
pub fn render_flags(f: &FlagInputs<'_>) -> String {
    let gates =
        crate::model::compat::KubeletFlagGates::for_kubelet(f.kubelet, f.endpoint.is_none());
    let mut args: Vec<(String, String)> = Vec::new();
    if let Some(e) = f.endpoint {
        args.push(("container-runtime-endpoint".into(), e.to_owned()));
    }
    if gates.container_runtime_remote {
        args.push(("container-runtime".into(), "remote".into()));
    }
    if gates.network_plugin_cni {
        args.push(("network-plugin".into(), "cni".into()));
    }
    if f.identity.node_name != f.identity.hostname {
        args.push(("hostname-override".into(), f.identity.node_name.clone()));
    }
    args.push(("node-ip".into(), f.identity.node_ip_flag()));
    if !f.labels.is_empty() {
        args.push(("node-labels".into(), f.labels.to_flag_value()));
    }
    if gates.pod_infra_container_image {
        args.push(("pod-infra-container-image".into(), f.pause_image.to_owned()));
    }
    if !f.taints.is_empty() {
        let t: Vec<String> = f.taints.iter().map(ToString::to_string).collect();
        args.push(("register-with-taints".into(), t.join(",")));
    }
    args.sort();
    let joined: Vec<String> = args.iter().map(|(k, v)| format!("--{k}={v}")).collect();
    format!("KUBELET_KUBEADM_ARGS={}\n", go_quote(&joined.join(" ")))
}

/// The kubelet's files for this node, rendered before anything changes.
#[derive(Clone, Debug)]
pub struct KubeletFiles {
    /// `/var/lib/kubelet/config.yaml`.
    pub config: String,
    /// `/var/lib/kubelet/kubeadm-flags.env`.
    pub flags: String,
    /// The cluster CA for `/etc/kubernetes/pki/ca.crt` (only the pinned certificates).
    pub ca: Vec<u8>,
    /// `/var/lib/kubelet/instance-config.yaml`, when the cluster keeps the CRI socket on the
    /// node ([`instance_config`]).
    pub instance: Option<String>,
    /// The reset unit, pointing at this binary (None when its path is unknown).
    pub reset_unit: Option<String>,
}

/// What writing them changed.
#[derive(Clone, Copy, Debug, Default)]
pub struct KubeletChanges {
    /// A unit file (daemon-reload needed).
    pub units: bool,
    /// Anything the kubelet reads (restart needed).
    pub config: bool,
}

/// The reset unit for the binary at `agent`.
pub fn reset_unit(agent: &std::path::Path) -> Option<String> {
    let exe = agent.to_str()?;
    Some(RESET_UNIT.replace("/usr/local/bin/node-attach", exe))
}

/// Writes the kubelet's files and units (the packaged kubelet.service is kept when there is
/// one); says what changed.
pub fn apply(
    applier: &mut crate::apply::Applier<'_>,
    files: &KubeletFiles,
) -> Result<KubeletChanges, crate::apply::ApplyError> {
    use std::path::Path;
    for (dir, mode) in [
        ("/etc/kubernetes/pki", 0o755),
        ("/etc/kubernetes/manifests", 0o755),
        ("/var/lib/kubelet", 0o700),
    ] {
        applier.dir(Path::new(dir), mode)?;
    }
    let mut config: Vec<crate::apply::FileSpec<'_>> = Vec::new();
    let instance = files
        .instance
        .as_ref()
        .map(|i| (INSTANCE_PATH, i.as_bytes()));
    for (path, bytes) in [
        (CA_PATH, files.ca.as_slice()),
        (CONFIG_PATH, files.config.as_bytes()),
        (FLAGS_PATH, files.flags.as_bytes()),
    ]
    .into_iter()
    .chain(instance)
    {
        config.push((Path::new(path), 0o644, bytes));
    }
    let config = applier.files(&config)?;
    let unit_changed = units(applier, files.reset_unit.as_deref())?;
    Ok(KubeletChanges {
        units: unit_changed,
        config: config || unit_changed,
    })
}

/// The kubelet's unit (unless a package installed one), kubeadm's drop-in and the reset unit
/// (bake mode writes these too); returns whether any changed.
pub fn units(
    applier: &mut crate::apply::Applier<'_>,
    reset_unit: Option<&str>,
) -> Result<bool, crate::apply::ApplyError> {
    use std::path::{Path, PathBuf};
    let root = &applier.effects().root;
    let packaged_unit = UNIT_DIRS.iter().any(|d| {
        let p = PathBuf::from(d).join("kubelet.service");
        p != Path::new(UNIT_PATH) && root.read(&p).ok().flatten().is_some()
    });
    let mut units: Vec<(&str, &[u8])> = Vec::new();
    if !packaged_unit {
        units.push((UNIT_PATH, UNIT.as_bytes()));
    }
    units.push((DROPIN_PATH, DROPIN.as_bytes()));
    if let Some(unit) = reset_unit {
        units.push((RESET_UNIT_PATH, unit.as_bytes()));
    }
    let units: Vec<crate::apply::FileSpec<'_>> = units
        .into_iter()
        .map(|(path, bytes)| (Path::new(path), 0o644, bytes))
        .collect();
    applier.files(&units)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            node_name: "cn-test.10.0.0.5".into(),
            hostname: "vm-1".into(),
            node_ip: "10.0.0.5".parse().expect("ip"),
            secondary_ip: None,
            provider_id: Some("cn-test.i-abc".into()),
        }
    }

    #[test]
    fn flags_are_sorted_and_quoted_like_kubeadm() {
        let labels =
            Labels::parse_list("l", "workload_type=cpu,node.kubernetes.io/pool=a").expect("labels");
        let taints = Taint::parse_list("t", "dedicated=gpu:NoSchedule").expect("taints");
        let id = identity();
        let new: KubeVersion = "v1.31.0".parse().expect("v");
        let flags = render_flags(&FlagInputs {
            labels: &labels,
            taints: &taints,
            identity: &id,
            endpoint: Some("unix:///run/containerd/containerd.sock"),
            pause_image: "p:1",
            kubelet: &new,
        });
        assert_eq!(
            flags,
            "KUBELET_KUBEADM_ARGS=\"--container-runtime-endpoint=unix:///run/containerd/containerd.sock --hostname-override=cn-test.10.0.0.5 --node-ip=10.0.0.5 --node-labels=node.kubernetes.io/pool=a,workload_type=cpu --register-with-taints=dedicated=gpu:NoSchedule\"\n"
        );
    }

    #[test]
    fn kubelets_before_1_24_get_the_runtime_flags_they_need() {
        let id = identity();
        let old: KubeVersion = "v1.20.2".parse().expect("v");
        let none = Labels::default();
        let inputs = |endpoint| FlagInputs {
            labels: &none,
            taints: &[],
            identity: &id,
            endpoint,
            pause_image: "k8s.gcr.io/pause:3.2",
            kubelet: &old,
        };
        let containerd = render_flags(&inputs(Some("unix:///run/containerd/containerd.sock")));
        assert!(
            containerd.contains("--container-runtime=remote "),
            "{containerd}"
        );
        assert!(!containerd.contains("network-plugin"), "{containerd}");
        assert!(containerd.contains("--pod-infra-container-image=k8s.gcr.io/pause:3.2"));
        let docker = render_flags(&inputs(None));
        assert!(docker.contains("--network-plugin=cni"), "{docker}");
        assert!(!docker.contains("container-runtime"), "{docker}");
    }

    fn cluster(kubelet: &str, certificates_dir: &str) -> ClusterConfig {
        ClusterConfig {
            kubelet: parse_kubelet_yaml(kubelet).expect("yaml"),
            source: "kube-system/kubelet-config-1.20".into(),
            cluster_name: "kubernetes".into(),
            version: "v1.20.2".parse().expect("v"),
            image_repository: None,
            certificates_dir: certificates_dir.into(),
            cri_socket_on_node: false,
        }
    }

    #[test]
    fn the_cri_socket_goes_into_the_instance_configuration_when_kubeadm_keeps_it_there() {
        let settings = crate::sources::settings::tests::minimal();
        let endpoint = "unix:///run/containerd/containerd.sock";
        let host = HostFacts {
            cri_endpoint: Some(endpoint.into()),
            ..HostFacts::default()
        };
        let annotated = cluster("", DEFAULT_CERTIFICATES_DIR);
        assert_eq!(instance_config(&annotated, Some(endpoint)), None);
        let text = render_config(&annotated, &settings, &identity(), &host).expect("render");
        assert!(!text.contains("containerRuntimeEndpoint"), "{text}");
        let on_node = ClusterConfig {
            cri_socket_on_node: true,
            ..annotated
        };
        assert_eq!(
            instance_config(&on_node, Some(endpoint)).as_deref(),
            Some("containerRuntimeEndpoint: \"unix:///run/containerd/containerd.sock\"\n")
        );
        assert_eq!(instance_config(&on_node, None), None, "dockershim");
        let text = render_config(&on_node, &settings, &identity(), &host).expect("render");
        assert!(
            text.contains("containerRuntimeEndpoint: unix:///run/containerd/containerd.sock"),
            "{text}"
        );
    }

    #[test]
    fn sparse_configs_get_kubeadm_defaults_and_our_ca_path() {
        let settings = crate::sources::settings::tests::minimal();
        let host = HostFacts::default();
        let text = render_config(
            &cluster("", DEFAULT_CERTIFICATES_DIR),
            &settings,
            &identity(),
            &host,
        )
        .expect("render");
        let doc: Value = serde_yaml_ng::from_str(&text).expect("yaml");
        assert_eq!(
            doc["authentication"]["anonymous"]["enabled"],
            Value::Bool(false)
        );
        assert_eq!(
            doc["authentication"]["webhook"]["enabled"],
            Value::Bool(true)
        );
        assert_eq!(
            doc["authorization"]["mode"],
            Value::String("Webhook".into())
        );
        assert_eq!(
            doc["authentication"]["x509"]["clientCAFile"],
            Value::String(CA_PATH.into())
        );
        // A cluster with another certificatesDir: the CA path is where join writes it.
        let elsewhere = cluster(
            "authentication:\n  x509:\n    clientCAFile: /srv/pki/ca.crt\n  anonymous:\n    enabled: true\n",
            "/srv/pki",
        );
        let doc: Value = serde_yaml_ng::from_str(
            &render_config(&elsewhere, &settings, &identity(), &host).expect("render"),
        )
        .expect("yaml");
        assert_eq!(
            doc["authentication"]["x509"]["clientCAFile"],
            Value::String(CA_PATH.into())
        );
        assert_eq!(
            doc["authentication"]["anonymous"]["enabled"],
            Value::Bool(true),
            "what the cluster says stays"
        );
    }

    #[test]
    fn systemd_resolved_hosts_get_its_real_resolv_conf() {
        let settings = crate::sources::settings::tests::minimal();
        let host = HostFacts {
            systemd_resolved: true,
            ..HostFacts::default()
        };
        for given in ["", "resolvConf: /etc/resolv.conf\n"] {
            let text = render_config(
                &cluster(given, DEFAULT_CERTIFICATES_DIR),
                &settings,
                &identity(),
                &host,
            )
            .expect("render");
            assert!(
                text.contains("resolvConf: /run/systemd/resolve/resolv.conf"),
                "{text}"
            );
        }
        let custom = cluster(
            "resolvConf: /etc/k8s-resolv.conf\n",
            DEFAULT_CERTIFICATES_DIR,
        );
        let text = render_config(&custom, &settings, &identity(), &host).expect("render");
        assert!(text.contains("resolvConf: /etc/k8s-resolv.conf"), "{text}");
    }
}
