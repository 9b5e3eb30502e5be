//! What changes with the Kubernetes version, in one place: every behaviour node-attach picks by
//! the API server's (or the kubelet's) version, with the upstream change it follows.
//! `docs/upstream-versions.md` holds the evidence (files and PRs at exact tags).

use crate::model::version::KubeVersion;

/// Usages for an ECDSA key from 1.25, in the kubelet's order.
pub const USAGES: [&str; 2] = ["digital signature", "client auth"];
/// Usages before 1.25, when the approver and the signer also wanted `key encipherment`.
pub const LEGACY_USAGES: [&str; 3] = ["digital signature", "key encipherment", "client auth"];

/// The usages a kubelet client CSR must ask for: before 1.25 the csrapproving controller and
/// the kubelet-client signer want `key encipherment` too (`pkg/apis/certificates/helpers.go`
/// `IsKubeletClientCSR` at v1.20.2; relaxed for ECDSA keys by kubernetes#111061 in 1.25, which
/// accepts both sets, as every later release does). The legacy set is kept through 1.25: a
/// cluster whose kubeadm-config says 1.25 may still run a 1.24 controller manager until its
/// upgrade finishes (the version is one minor ahead of some control-plane nodes at most), and
/// only the legacy set is approved and signed on both sides.
pub fn csr_usages(cluster: &KubeVersion) -> &'static [&'static str] {
    if cluster.minor_key() < (1, 26) {
        &LEGACY_USAGES
    } else {
        &USAGES
    }
}

/// The certificates.k8s.io version to create CSRs with: `v1` from 1.19, `v1beta1` before.
pub fn csr_api_version(server: &KubeVersion) -> &'static str {
    if server.minor_key() < (1, 19) {
        "v1beta1"
    } else {
        "v1"
    }
}

/// The name of the kubelet ConfigMap a cluster of this version keeps, and the other one to try.
/// kubeadm named it `kubelet-config-1.X` until the `UnversionedKubeletConfigMap` gate (alpha in
/// 1.23, on by default in 1.24, locked in 1.25: kubernetes#105741, #108027, #110327); `gate`
/// is the gate as the cluster's ClusterConfiguration sets it. A bootstrap token may read only
/// the one its cluster made, so the other answers 403, not 404.
pub fn kubelet_config_names(cluster: &KubeVersion, gate: Option<bool>) -> [String; 2] {
    let versioned = format!("kubelet-config-{}.{}", cluster.major, cluster.minor);
    let unversioned = "kubelet-config".to_owned();
    let use_unversioned = match cluster.minor_key() {
        (1, 0..=22) => false,
        (1, 23) => gate == Some(true),
        (1, 24) => gate != Some(false),
        _ => true,
    };
    if use_unversioned {
        [unversioned, versioned]
    } else {
        [versioned, unversioned]
    }
}

/// Whether kubeadm of this version binds bootstrap tokens to `kubeadm:get-nodes` (from 1.18,
/// kubernetes#81056, for the "a Ready Node of this name exists" check).
pub fn has_get_nodes_role(cluster: &KubeVersion) -> bool {
    cluster.minor_key() >= (1, 18)
}

/// The pause image tag kubeadm of this minor version uses (`constants.PauseVersion`).
pub fn pause_version(cluster: &KubeVersion) -> &'static str {
    match cluster.minor_key() {
        (1, 0..=17) => "3.1",
        (1, 18..=20) => "3.2",
        (1, 21) => "3.4.1",
        (1, 22) => "3.5",
        (1, 23) => "3.6",
        (1, 24) => "3.7",
        (1, 25) => "3.8",
        (1, 26..=30) => "3.9",
        (1, 31..=33) => "3.10",
        _ => "3.10.1",
    }
}

/// kubeadm's default `imageRepository` for this version: `k8s.gcr.io` until the move to
/// `registry.k8s.io` (kubeadm 1.25, kubernetes#109938), backported to 1.23.15 (#113393) and to
/// late 1.22 and 1.24 patches (#113388, #113395; 1.22.17 and 1.24.9 taken here).
pub fn default_image_repository(cluster: &KubeVersion) -> &'static str {
    let moved = match cluster.minor_key() {
        (1, 0..=21) => false,
        (1, 22) => cluster.patch >= 17,
        (1, 23) => cluster.patch >= 15,
        (1, 24) => cluster.patch >= 9,
        _ => true,
    };
    if moved {
        "registry.k8s.io"
    } else {
        "k8s.gcr.io"
    }
}

/// The sandbox image a kubeadm cluster of this version runs: `<imageRepository>/pause:<tag>`
/// (kubeadm `cmd/kubeadm/app/images` `GetPauseImage`).
pub fn pause_image(image_repository: Option<&str>, cluster: &KubeVersion) -> String {
    let repo = image_repository
        .map(|r| r.trim_end_matches('/'))
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| default_image_repository(cluster));
    format!("{repo}/pause:{}", pause_version(cluster))
}

/// Kubelet flags whose need depends on the kubelet's version (kubeadm
/// `cmd/kubeadm/app/phases/kubelet/flags.go` `buildKubeletArgMap` at each release).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KubeletFlagGates {
    /// `--container-runtime=remote`: before 1.24 a kubelet without it runs dockershim (even on
    /// containerd's socket); the flag is gone in 1.27.
    pub container_runtime_remote: bool,
    /// `--network-plugin=cni`: the dockershim's network plugin, removed with it in 1.24.
    pub network_plugin_cni: bool,
    /// `--pod-infra-container-image`: the sandbox image, until 1.27 (later only for image GC).
    pub pod_infra_container_image: bool,
}

impl KubeletFlagGates {
    /// The gates for a kubelet of version `kubelet`; `dockershim` when docker is the runtime
    /// through the kubelet's built-in shim (no CRI endpoint).
    pub fn for_kubelet(kubelet: &KubeVersion, dockershim: bool) -> KubeletFlagGates {
        let before_124 = kubelet.minor_key() < (1, 24);
        KubeletFlagGates {
            container_runtime_remote: before_124 && !dockershim,
            network_plugin_cni: before_124 && dockershim,
            pod_infra_container_image: kubelet.minor_key() < (1, 27),
        }
    }
}

/// The Node annotation kubeadm join writes with the CRI socket
/// (`kubeadm.alpha.kubernetes.io/cri-socket`, `patchnode.AnnotateCRISocket`); `kubeadm upgrade
/// node` reads it.
pub const CRI_SOCKET_ANNOTATION: &str = "kubeadm.alpha.kubernetes.io/cri-socket";

/// Whether kubeadm of this version keeps the node's CRI socket on the node itself
/// (`NodeLocalCRISocket`): join then writes `/var/lib/kubelet/instance-config.yaml`
/// (`containerRuntimeEndpoint`, merged into the kubelet's config.yaml), passes no
/// `--container-runtime-endpoint` flag and no longer annotates the Node. `gate` is the gate as
/// the cluster's ClusterConfiguration sets it. Alpha (off) in 1.32 (kubernetes#128031), beta
/// and on in 1.34 (#131981), GA and locked in 1.36 (#135742). `kubeadm upgrade node` reads the
/// instance configuration when the gate is on, and falls back to the annotation only while the
/// file is missing (`GetNodeRegistration`), so a node must have one or the other: when this is
/// false, join annotates the Node as kubeadm does (`patchnode.AnnotateCRISocket`).
pub fn node_local_cri_socket(cluster: &KubeVersion, gate: Option<bool>) -> bool {
    match cluster.minor_key() {
        (1, 0..=31) => false,
        (1, 32..=33) => gate == Some(true),
        (1, 34..=35) => gate != Some(false),
        _ => true,
    }
}

/// The annotation's value as kubeadm of this version writes it: a bare path before 1.24, a
/// `unix://` URL from then on (kubernetes#107295).
pub fn cri_socket_annotation_value(endpoint: &str, cluster: &KubeVersion) -> String {
    if cluster.minor_key() < (1, 24) {
        endpoint.trim_start_matches("unix://").to_owned()
    } else if endpoint.starts_with("unix://") {
        endpoint.to_owned()
    } else {
        format!("unix://{endpoint}")
    }
}

/// The eviction API group-version: `policy/v1` from 1.22, `policy/v1beta1` before.
pub fn eviction_version(cluster: &KubeVersion) -> &'static str {
    if cluster.minor_key() < (1, 22) {
        "policy/v1beta1"
    } else {
        "policy/v1"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> KubeVersion {
        s.parse().expect("version")
    }

    #[test]
    fn csr_usages_and_api_follow_the_server() {
        assert_eq!(csr_usages(&v("v1.20.2")).len(), 3);
        assert_eq!(csr_usages(&v("v1.24.17")).len(), 3);
        // 1.25 may still run a 1.24 controller manager mid-upgrade.
        assert_eq!(csr_usages(&v("v1.25.0")).len(), 3);
        assert_eq!(
            csr_usages(&v("v1.26.0")),
            ["digital signature", "client auth"]
        );
        assert_eq!(csr_api_version(&v("v1.18.20")), "v1beta1");
        assert_eq!(csr_api_version(&v("v1.19.0")), "v1");
    }

    #[test]
    fn kubelet_config_name_follows_the_cluster() {
        assert_eq!(
            kubelet_config_names(&v("v1.20.2"), None),
            ["kubelet-config-1.20", "kubelet-config"]
        );
        assert_eq!(
            kubelet_config_names(&v("v1.24.0"), None),
            ["kubelet-config", "kubelet-config-1.24"]
        );
        assert_eq!(
            kubelet_config_names(&v("v1.23.5"), Some(true))[0],
            "kubelet-config"
        );
        assert_eq!(
            kubelet_config_names(&v("v1.24.5"), Some(false))[0],
            "kubelet-config-1.24"
        );
        assert_eq!(
            kubelet_config_names(&v("v1.26.0"), Some(false))[0],
            "kubelet-config"
        );
    }

    #[test]
    fn pause_image_from_repository_and_version() {
        assert_eq!(pause_image(None, &v("v1.20.2")), "k8s.gcr.io/pause:3.2");
        assert_eq!(
            pause_image(Some("registry.cn-hangzhou.aliyuncs.com/acs/"), &v("1.12.6")),
            "registry.cn-hangzhou.aliyuncs.com/acs/pause:3.1"
        );
        assert_eq!(
            pause_image(None, &v("v1.31.2")),
            "registry.k8s.io/pause:3.10"
        );
    }

    #[test]
    fn kubelet_flags_by_version() {
        let old = KubeletFlagGates::for_kubelet(&v("v1.20.2"), false);
        assert!(old.container_runtime_remote && !old.network_plugin_cni);
        let docker = KubeletFlagGates::for_kubelet(&v("v1.20.2"), true);
        assert!(!docker.container_runtime_remote && docker.network_plugin_cni);
        let new = KubeletFlagGates::for_kubelet(&v("v1.31.0"), false);
        assert_eq!(
            new,
            KubeletFlagGates {
                container_runtime_remote: false,
                network_plugin_cni: false,
                pod_infra_container_image: false
            }
        );
    }

    #[test]
    fn the_cri_socket_moves_onto_the_node_with_kubeadms_gate() {
        let on_node = |s: &str, gate| node_local_cri_socket(&v(s), gate);
        assert!(!on_node("v1.20.2", None));
        assert!(!on_node("v1.31.4", Some(true)), "no such gate before 1.32");
        assert!(!on_node("v1.33.1", None));
        assert!(on_node("v1.32.0", Some(true)));
        assert!(on_node("v1.34.0", None));
        assert!(!on_node("v1.35.2", Some(false)));
        assert!(on_node("v1.36.0", Some(false)), "locked from 1.36");
    }

    #[test]
    fn cri_socket_annotation_shape() {
        let e = "unix:///run/containerd/containerd.sock";
        assert_eq!(
            cri_socket_annotation_value(e, &v("v1.20.2")),
            "/run/containerd/containerd.sock"
        );
        assert_eq!(cri_socket_annotation_value(e, &v("v1.28.0")), e);
    }
}
