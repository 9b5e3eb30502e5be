//! The cluster phase: what the trusted API server says about itself before anything changes —
//! its version and clock, the installed kubelet's skew against it, whether a Ready Node already
//! has this name, and kubeadm's ClusterConfiguration and kubelet ConfigMap, parsed here.

use super::{identity::Identity, kubelet, preflight};
use crate::client::kube::Kube;
use crate::effects::Effects;
use crate::error::{Code, Failure};
use crate::model::version::KubeVersion;
use crate::sources::settings::Settings;
use std::time::{Duration, SystemTime};

/// What join knows of the cluster.
pub struct ClusterFacts {
    /// The API server's version.
    pub version: KubeVersion,
    /// The installed kubelet's version, when there is one to ask.
    pub kubelet_version: Option<KubeVersion>,
    /// kubeadm's configuration and the kubelet ConfigMap.
    pub config: kubelet::ClusterConfig,
}

impl ClusterFacts {
    /// The kubelet's version for version-dependent flags: the installed one, else the
    /// cluster's (a scratch root has none to ask).
    pub fn kubelet(&self) -> &KubeVersion {
        self.kubelet_version.as_ref().unwrap_or(&self.version)
    }
}

/// Reads and checks what the cluster says; nothing on the node changes.
pub async fn check(
    settings: &Settings,
    effects: &Effects,
    kube: &Kube,
    identity: &Identity,
    joined_before: bool,
) -> Result<ClusterFacts, Failure> {
    let (version, date) = kube.version().await.map_err(|e| {
        e.failure(
            Code::DiscoveryUnreachable,
            "reading the API server's version",
        )
    })?;
    let kubelet_version = effects
        .host
        .then(|| effects.probe.kubelet_version())
        .flatten();
    let checks = skew_checks(&version, date, kubelet_version.as_ref());
    for w in preflight::evaluate(&checks, &settings.ignore_preflight_errors)? {
        tracing::warn!("preflight (ignored): {w}");
    }
    refuse_a_ready_namesake(settings, kube, identity, joined_before).await?;
    let config = kubelet::fetch_cluster_config(kube, &version)
        .await
        .map_err(|e| match &e {
            kubelet::ClusterConfigError::Api { what, source } => {
                source.failure(Code::ClusterConfig, &format!("reading {what}"))
            }
            _ => Failure::new(Code::ClusterConfig, e.to_string()),
        })?;
    Ok(ClusterFacts {
        version,
        kubelet_version,
        config,
    })
}

/// The clock against the API server's `Date`, and the kubelet against the skew policy.
fn skew_checks(
    server: &KubeVersion,
    server_time: Option<SystemTime>,
    kubelet: Option<&KubeVersion>,
) -> Vec<preflight::Check> {
    let mut checks = Vec::new();
    if let Some(t) = server_time {
        let skew = SystemTime::now()
            .duration_since(t)
            .unwrap_or_else(|e| e.duration());
        checks.push(preflight::Check {
            id: "clock",
            ok: skew < Duration::from_secs(300),
            message: format!("local clock differs from the API server's by {}s", skew.as_secs()),
            hint: "synchronise the clock (chrony/systemd-timesyncd); certificates are rejected when clocks disagree",
        });
    }
    if let Some(kv) = kubelet {
        let skew = kv.kubelet_skew_ok(server);
        checks.push(preflight::Check {
            id: "kubelet-version",
            ok: skew.is_ok(),
            message: skew
                .err()
                .unwrap_or_else(|| format!("kubelet {kv} fits API server {server}")),
            hint: "install a kubelet no newer than the API server and at most three minor versions older",
        });
    }
    checks
}

/// kubeadm refuses to join over a Ready Node of the same name (kubernetes PR #81056).
async fn refuse_a_ready_namesake(
    settings: &Settings,
    kube: &Kube,
    identity: &Identity,
    joined_before: bool,
) -> Result<(), Failure> {
    let ignored = settings
        .ignore_preflight_errors
        .iter()
        .any(|i| i == "all" || i == "node-exists");
    if joined_before || ignored {
        return Ok(());
    }
    let Ok(Some(node)) = kube.node(&identity.node_name).await else {
        return Ok(());
    };
    if !node.is_ready() {
        return Ok(());
    }
    let name = &identity.node_name;
    Err(Failure::new(
        Code::NodeExists,
        format!(
            "a Ready Node named {name:?} already exists in the cluster: another machine uses this name. If that machine is gone, delete the Node (kubectl delete node {name}) and rerun; otherwise give this one another name with --node-name"
        ),
    ))
}
