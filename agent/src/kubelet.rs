//! The kubelet's configuration, in kubeadm's layout: `/var/lib/kubelet/config.yaml` (the
//! cluster's `kubelet-config` merged with node-local settings), `/var/lib/kubelet/kubeadm-flags.env`,
//! `/etc/kubernetes/pki/ca.crt`, and the kubelet unit with its `10-kubeadm.conf` drop-in.

use crate::identity::Identity;
use crate::kube::{Kube, KubeError};
use crate::kube_version::KubeVersion;
use crate::settings::Settings;
use crate::validate::{Labels, Taint};
use serde_yaml_ng::{Mapping, Value};

/// The kubelet configuration file.
pub const CONFIG_PATH: &str = "/var/lib/kubelet/config.yaml";
/// The flags environment file.
pub const FLAGS_PATH: &str = "/var/lib/kubelet/kubeadm-flags.env";
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
pub const UNIT: &str = include_str!("../../systemd/kubelet.service");
/// The reset unit, shipped in `systemd/node-attach-reset.service`; join installs it (pointing at
/// the running binary) so `systemctl start node-attach-reset` works however node-attach came.
pub const RESET_UNIT: &str = include_str!("../../systemd/node-attach-reset.service");
/// Where join installs the reset unit.
pub const RESET_UNIT_PATH: &str = "/etc/systemd/system/node-attach-reset.service";

/// The drop-in, shipped in `systemd/10-kubeadm.conf`.
pub const DROPIN: &str = include_str!("../../systemd/10-kubeadm.conf");

/// What the cluster says about kubelets.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The `kubelet` key of the kubelet ConfigMap (YAML).
    pub kubelet_yaml: String,
    /// Which ConfigMap it came from.
    pub source: String,
    /// `clusterName` from kubeadm's ClusterConfiguration (default `kubernetes`).
    pub cluster_name: String,
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
        source: KubeError,
    },
    /// Neither kubelet ConfigMap exists.
    #[error("the cluster has neither kube-system/kubelet-config nor kube-system/{legacy}")]
    Missing {
        /// The versioned name tried.
        legacy: String,
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

/// Reads kubeadm-config and kubelet-config (falling back to `kubelet-config-<major>.<minor>`,
/// as clusters before 1.24 name it) with the bootstrap token.
pub async fn fetch_cluster_config(
    kube: &Kube,
    server: &KubeVersion,
) -> Result<ClusterConfig, ClusterConfigError> {
    let api = |what: &str| {
        let what = what.to_owned();
        move |source| ClusterConfigError::Api { what, source }
    };
    let kubeadm = kube
        .get("/api/v1/namespaces/kube-system/configmaps/kubeadm-config")
        .await
        .map_err(api("kube-system/kubeadm-config"))?;
    let mut cluster_name = "kubernetes".to_owned();
    let mut version = server.clone();
    if let Some(cm) = &kubeadm {
        if let Some(text) = cm["data"]["ClusterConfiguration"].as_str() {
            let doc: Value =
                serde_yaml_ng::from_str(text).map_err(|e| ClusterConfigError::Yaml {
                    what: "kubeadm-config ClusterConfiguration".into(),
                    reason: e.to_string(),
                })?;
            if let Some(n) = doc.get("clusterName").and_then(Value::as_str) {
                cluster_name = n.to_owned();
            }
            if let Some(v) = doc
                .get("kubernetesVersion")
                .and_then(Value::as_str)
                .and_then(|v| v.parse().ok())
            {
                version = v;
            }
        }
    }
    let legacy = format!("kubelet-config-{}.{}", version.major, version.minor);
    for name in ["kubelet-config", legacy.as_str()] {
        let path = format!("/api/v1/namespaces/kube-system/configmaps/{name}");
        if let Some(cm) = kube
            .get(&path)
            .await
            .map_err(api(&format!("kube-system/{name}")))?
        {
            let yaml = cm["data"]["kubelet"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            return Ok(ClusterConfig {
                kubelet_yaml: yaml,
                source: format!("kube-system/{name}"),
                cluster_name,
            });
        }
    }
    Err(ClusterConfigError::Missing { legacy })
}

fn set(map: &mut Mapping, key: &str, value: Value) {
    map.insert(Value::String(key.to_owned()), value);
}

fn string_map(m: &std::collections::BTreeMap<String, String>) -> Value {
    let mut out = Mapping::new();
    for (k, v) in m {
        out.insert(Value::String(k.clone()), Value::String(v.clone()));
    }
    Value::Mapping(out)
}

/// The cluster's KubeletConfiguration with node-local settings merged in.
pub fn render_config(
    cluster_yaml: &str,
    settings: &Settings,
    identity: &Identity,
) -> Result<String, ClusterConfigError> {
    let doc: Value = if cluster_yaml.trim().is_empty() {
        Value::Mapping(Mapping::new())
    } else {
        serde_yaml_ng::from_str(cluster_yaml).map_err(|e| ClusterConfigError::Yaml {
            what: "the cluster's kubelet configuration".into(),
            reason: e.to_string(),
        })?
    };
    let Value::Mapping(mut map) = doc else {
        return Err(ClusterConfigError::Yaml {
            what: "the cluster's kubelet configuration".into(),
            reason: "not a mapping".into(),
        });
    };
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

/// `KUBELET_KUBEADM_ARGS="--k=v …"`, arguments sorted by name as kubeadm writes them.
pub fn render_flags(
    own_labels: &Labels,
    taints: &[Taint],
    identity: &Identity,
    endpoint: Option<&str>,
    pause_image: &str,
    server: &KubeVersion,
) -> String {
    let mut args: Vec<(String, String)> = Vec::new();
    if let Some(e) = endpoint {
        args.push(("container-runtime-endpoint".into(), e.to_owned()));
    }
    if identity.node_name != identity.hostname {
        args.push(("hostname-override".into(), identity.node_name.clone()));
    }
    args.push(("node-ip".into(), identity.node_ip.to_string()));
    if !own_labels.is_empty() {
        args.push(("node-labels".into(), own_labels.to_flag_value()));
    }
    if server.minor_key() < (1, 27) {
        args.push(("pod-infra-container-image".into(), pause_image.to_owned()));
    }
    if !taints.is_empty() {
        let t: Vec<String> = taints.iter().map(ToString::to_string).collect();
        args.push(("register-with-taints".into(), t.join(",")));
    }
    args.sort();
    let joined: Vec<String> = args.iter().map(|(k, v)| format!("--{k}={v}")).collect();
    format!("KUBELET_KUBEADM_ARGS={}\n", go_quote(&joined.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            node_name: "cn-test.10.0.0.5".into(),
            hostname: "vm-1".into(),
            node_ip: "10.0.0.5".parse().expect("ip"),
            provider_id: Some("cn-test.i-abc".into()),
        }
    }

    #[test]
    fn flags_are_sorted_and_quoted_like_kubeadm() {
        let labels =
            Labels::parse_list("l", "workload_type=cpu,node.kubernetes.io/pool=a").expect("labels");
        let taints = Taint::parse_list("t", "dedicated=gpu:NoSchedule").expect("taints");
        let flags = render_flags(
            &labels,
            &taints,
            &identity(),
            Some("unix:///run/containerd/containerd.sock"),
            "p:1",
            &"v1.31.0".parse().expect("v"),
        );
        assert_eq!(
            flags,
            "KUBELET_KUBEADM_ARGS=\"--container-runtime-endpoint=unix:///run/containerd/containerd.sock --hostname-override=cn-test.10.0.0.5 --node-ip=10.0.0.5 --node-labels=node.kubernetes.io/pool=a,workload_type=cpu --register-with-taints=dedicated=gpu:NoSchedule\"\n"
        );
        let old = render_flags(
            &Labels::default(),
            &[],
            &identity(),
            None,
            "p:1",
            &"v1.20.0".parse().expect("v"),
        );
        assert!(old.contains("--pod-infra-container-image=p:1"), "{old}");
    }
}
