//! The cluster phase: what the trusted API server says about itself before anything changes —
//! kubeadm's ClusterConfiguration, the cluster's version and clock, the installed kubelet's
//! skew against it, whether a Ready Node already has this name, and the kubelet ConfigMap.
//!
//! **Which version, and what a cluster mid-upgrade means for it.** On a kubeadm cluster the
//! version is ClusterConfiguration's `kubernetesVersion` (kube-system/kubeadm-config), the one
//! `kubeadm join` itself reads and configures the node for (its kubelet ConfigMap's name, its
//! feature gates); `GET /version` is asked only when there is no such configuration (a cluster
//! kubeadm did not make, or a kubeadm-config the token may not read), and the clock comes from
//! the `Date` of cluster-info's verified answer (`/version`'s when that is missing). So a join
//! makes one request fewer, and its gates follow what kubeadm wrote rather than whichever API
//! server a load balancer happened to pick.
//!
//! `kubeadm upgrade apply` uploads the new `kubernetesVersion` once the first control-plane
//! node runs the new release; the other control-plane nodes follow with `kubeadm upgrade
//! node`. In between, some API servers and controller managers are one minor older than
//! kubeadm-config says (never more: kubeadm upgrades one minor at a time), and `/version`
//! answered with either, depending on the server asked. What each gate does with that:
//! * the kubelet skew check accepts a kubelet of the new minor, which the older servers would
//!   not (the skew policy's bound is the oldest API server), until the upgrade finishes; a
//!   kubelet of the old minor is accepted by both;
//! * the CSR's API version falls back from `v1` to `v1beta1` on a 404, and both exist on
//!   either side of every boundary (1.19, 1.22); the CSR's usages follow the oldest minor the
//!   cluster may still run ([`crate::model::compat::csr_usages`]);
//! * the kubelet ConfigMap's name is the one kubeadm-config's own kubeadm wrote, and the other
//!   name is tried on 403/404;
//! * the CRI socket's place (annotation or the node's instance configuration) follows the
//!   kubeadm that will run `kubeadm upgrade node` here: the new one.

use super::{identity::Identity, kubelet, preflight};
use crate::client::http::ServerClock;
use crate::client::kube::Kube;
use crate::effects::Effects;
use crate::error::{Code, Failure};
use crate::model::version::KubeVersion;
use crate::sources::settings::Settings;
use std::time::{Duration, SystemTime};

/// What join knows of the cluster.
pub struct ClusterFacts {
    /// The cluster's version: kubeadm-config's `kubernetesVersion`, else the API server's.
    pub version: KubeVersion,
    /// Where [`ClusterFacts::version`] was read.
    pub version_source: &'static str,
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

/// Reads and checks what the cluster says; nothing on the node changes. `server_clock` is the
/// API server's clock from discovery's verified answer, if it had one.
pub async fn check(
    settings: &Settings,
    effects: &Effects,
    kube: &Kube,
    server_clock: Option<ServerClock>,
    identity: &Identity,
    joined_before: bool,
) -> Result<ClusterFacts, Failure> {
    let facts = kubelet::read_kubeadm_facts(kube)
        .await
        .map_err(config_failure)?;
    // The server's clock as it is now (the read above may have waited out a loaded server).
    let known = Known {
        version: facts.version.clone(),
        date: server_clock.map(|c| c.now()),
    };
    let (version, date, version_source) = known.complete(kube).await?;
    let kubelet_version = effects
        .host
        .then(|| effects.probe.kubelet_version())
        .flatten();
    let checks = skew_checks(&version, date, kubelet_version.as_ref());
    for w in preflight::evaluate(&checks, &settings.ignore_preflight_errors)? {
        tracing::warn!("preflight (ignored): {w}");
    }
    // kubeadm before 1.18 lets bootstrap tokens read no Node: its join makes no such check,
    // and the read could only answer 403.
    let kubeadm_checks =
        version_source != KUBEADM_CONFIG || crate::model::compat::has_get_nodes_role(&version);
    if kubeadm_checks {
        refuse_a_ready_namesake(settings, kube, identity, joined_before).await?;
    }
    let config = kubelet::fetch_kubelet_config(kube, facts, version.clone())
        .await
        .map_err(config_failure)?;
    Ok(ClusterFacts {
        version,
        version_source,
        kubelet_version,
        config,
    })
}

/// Where the version came from when kubeadm-config named it.
const KUBEADM_CONFIG: &str = "kubeadm-config";

/// What the cluster phase knows before asking `/version`.
struct Known {
    /// kubeadm-config's `kubernetesVersion`.
    version: Option<KubeVersion>,
    /// The API server's clock, from discovery.
    date: Option<SystemTime>,
}

impl Known {
    /// The version, the clock and where the version came from; `GET /version` only for what
    /// is missing (its `Date` is the clock then).
    async fn complete(
        self,
        kube: &Kube,
    ) -> Result<(KubeVersion, Option<SystemTime>, &'static str), Failure> {
        if let (Some(version), Some(date)) = (&self.version, self.date) {
            return Ok((version.clone(), Some(date), KUBEADM_CONFIG));
        }
        let (server, date) = kube.version().await.map_err(|e| {
            e.failure(
                Code::DiscoveryUnreachable,
                "reading the API server's version",
            )
        })?;
        let date = self.date.or(date);
        Ok(match self.version {
            Some(version) => (version, date, KUBEADM_CONFIG),
            None => (server, date, "/version"),
        })
    }
}

fn config_failure(e: kubelet::ClusterConfigError) -> Failure {
    match &e {
        kubelet::ClusterConfigError::Api { what, source } => {
            source.failure(Code::ClusterConfig, &format!("reading {what}"))
        }
        _ => Failure::new(Code::ClusterConfig, e.to_string()),
    }
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
