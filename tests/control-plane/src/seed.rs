//! What `kubeadm init` leaves in a new cluster, and the built-in roles of the API server's
//! bootstrap policy that node joining depends on.

use crate::store::{Key, Kind, Store};
use crate::Options;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

/// The group kubeadm's default bootstrap tokens carry.
pub const BOOTSTRAP_GROUP: &str = "system:bootstrappers:kubeadm:default-node-token";

fn cluster_role(store: &mut Store, name: &str, rules: Value) {
    store.put(
        Key::new(Kind::ClusterRole, "", name),
        json!({"metadata": {"name": name}, "rules": rules}),
    );
}

fn cluster_binding(store: &mut Store, name: &str, role: &str, subjects: Value) {
    store.put(
        Key::new(Kind::ClusterRoleBinding, "", name),
        json!({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": subjects,
        }),
    );
}

fn role_and_binding(store: &mut Store, ns: &str, name: &str, rules: Value, subjects: Value) {
    store.put(
        Key::new(Kind::Role, ns, name),
        json!({"metadata": {"name": name, "namespace": ns}, "rules": rules}),
    );
    store.put(
        Key::new(Kind::RoleBinding, ns, name),
        json!({
            "metadata": {"name": name, "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": subjects,
        }),
    );
}

fn group(name: &str) -> Value {
    json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": name})
}

/// The API server's own bootstrap policy (the parts node joining touches).
pub fn builtin_policy(store: &mut Store) {
    cluster_role(
        store,
        "cluster-admin",
        json!([
            {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
            {"nonResourceURLs": ["*"], "verbs": ["*"]}
        ]),
    );
    cluster_binding(
        store,
        "cluster-admin",
        "cluster-admin",
        json!([group("system:masters")]),
    );
    cluster_role(
        store,
        "system:discovery",
        json!([
            {"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*", "/readyz", "/version", "/version/"], "verbs": ["get"]}
        ]),
    );
    cluster_binding(
        store,
        "system:discovery",
        "system:discovery",
        json!([group("system:authenticated")]),
    );
    cluster_role(
        store,
        "system:public-info-viewer",
        json!([
            {"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"], "verbs": ["get"]}
        ]),
    );
    cluster_binding(
        store,
        "system:public-info-viewer",
        "system:public-info-viewer",
        json!([
            group("system:authenticated"),
            group("system:unauthenticated")
        ]),
    );
    cluster_role(
        store,
        "system:node-bootstrapper",
        json!([
            {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests"], "verbs": ["create", "get", "list", "watch"]}
        ]),
    );
    cluster_role(
        store,
        "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
        json!([
            {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests/nodeclient"], "verbs": ["create"]}
        ]),
    );
    cluster_role(
        store,
        "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
        json!([
            {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests/selfnodeclient"], "verbs": ["create"]}
        ]),
    );
}

/// The RBAC objects `kubeadm init` of `opts`' release creates for joining nodes (v1.20.2
/// `cmd/kubeadm/app/phases/bootstraptoken/node/tlsbootstrap.go`, `phases/uploadconfig`,
/// `phases/kubelet/config.go`, `phases/bootstraptoken/clusterinfo`): `kubeadm:get-nodes` only
/// from 1.18, and the kubelet-config Role named after the ConfigMap of that release.
pub fn kubeadm_rbac(store: &mut Store, opts: &Options) {
    let bootstrappers = json!([group(BOOTSTRAP_GROUP)]);
    cluster_binding(
        store,
        "kubeadm:kubelet-bootstrap",
        "system:node-bootstrapper",
        bootstrappers.clone(),
    );
    cluster_binding(
        store,
        "kubeadm:node-autoapprove-bootstrap",
        "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
        bootstrappers.clone(),
    );
    cluster_binding(
        store,
        "kubeadm:node-autoapprove-certificate-rotation",
        "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
        json!([group("system:nodes")]),
    );
    if opts.release().kubeadm_get_nodes() {
        cluster_role(
            store,
            "kubeadm:get-nodes",
            json!([
                {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}
            ]),
        );
        cluster_binding(
            store,
            "kubeadm:get-nodes",
            "kubeadm:get-nodes",
            bootstrappers,
        );
    }
    let readers = json!([group(BOOTSTRAP_GROUP), group("system:nodes")]);
    role_and_binding(
        store,
        "kube-system",
        "kubeadm:nodes-kubeadm-config",
        json!([
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["kubeadm-config"], "verbs": ["get"]}
        ]),
        readers.clone(),
    );
    let kubelet_config = opts.kubelet_config_name();
    role_and_binding(
        store,
        "kube-system",
        &format!("kubeadm:{kubelet_config}"),
        json!([
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [kubelet_config], "verbs": ["get"]}
        ]),
        readers,
    );
    role_and_binding(
        store,
        "kube-public",
        "kubeadm:bootstrap-signer-clusterinfo",
        json!([
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cluster-info"], "verbs": ["get"]}
        ]),
        json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:anonymous"}]),
    );
}

/// cluster-info's kubeconfig, serialized as current client-go does (empty cluster name,
/// `contexts: null`, `users: null`, no `preferences`).
pub fn cluster_info_kubeconfig(server: &str, ca_pem: &str) -> String {
    format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: {server}\n  name: \"\"\ncontexts: null\ncurrent-context: \"\"\nkind: Config\nusers: null\n",
        STANDARD.encode(ca_pem)
    )
}

/// The kubelet configuration kubeadm of `release` uploads: before 1.21 the document kubeadm
/// v1.20.2 writes (read from a real 1.20.2 cluster: no `cgroupDriver` unless docker reports
/// one, `logging: {}`, none of the later fields), from 1.21 kubeadm v1.31's defaults (init
/// defaults `cgroupDriver` to systemd from 1.21, kubernetes#99471). Releases between 1.21 and
/// 1.30 get 1.31's field set: the fields added in between are not modelled.
pub fn kubelet_config_yaml(cluster_dns: &str, release: crate::version::Release) -> String {
    if release < crate::version::Release::parse("v1.21.0") {
        return kubelet_config_yaml_1_20(cluster_dns);
    }
    kubelet_config_yaml_1_31(cluster_dns)
}

fn kubelet_config_yaml_1_20(cluster_dns: &str) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
authentication:
  anonymous:
    enabled: false
  webhook:
    cacheTTL: 0s
    enabled: true
  x509:
    clientCAFile: /etc/kubernetes/pki/ca.crt
authorization:
  mode: Webhook
  webhook:
    cacheAuthorizedTTL: 0s
    cacheUnauthorizedTTL: 0s
clusterDNS:
- {cluster_dns}
clusterDomain: cluster.local
cpuManagerReconcilePeriod: 0s
evictionPressureTransitionPeriod: 0s
fileCheckFrequency: 0s
healthzBindAddress: 127.0.0.1
healthzPort: 10248
httpCheckFrequency: 0s
imageMinimumGCAge: 0s
kind: KubeletConfiguration
logging: {{}}
nodeStatusReportFrequency: 0s
nodeStatusUpdateFrequency: 0s
rotateCertificates: true
runtimeRequestTimeout: 0s
shutdownGracePeriod: 0s
shutdownGracePeriodCriticalPods: 0s
staticPodPath: /etc/kubernetes/manifests
streamingConnectionIdleTimeout: 0s
syncFrequency: 0s
volumeStatsAggPeriod: 0s
"#
    )
}

fn kubelet_config_yaml_1_31(cluster_dns: &str) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
authentication:
  anonymous:
    enabled: false
  webhook:
    cacheTTL: 0s
    enabled: true
  x509:
    clientCAFile: /etc/kubernetes/pki/ca.crt
authorization:
  mode: Webhook
  webhook:
    cacheAuthorizedTTL: 0s
    cacheUnauthorizedTTL: 0s
cgroupDriver: systemd
clusterDNS:
- {cluster_dns}
clusterDomain: cluster.local
containerRuntimeEndpoint: ""
cpuManagerReconcilePeriod: 0s
evictionPressureTransitionPeriod: 0s
fileCheckFrequency: 0s
healthzBindAddress: 127.0.0.1
healthzPort: 10248
httpCheckFrequency: 0s
imageMaximumGCAge: 0s
imageMinimumGCAge: 0s
kind: KubeletConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
memorySwap: {{}}
nodeStatusReportFrequency: 0s
nodeStatusUpdateFrequency: 0s
rotateCertificates: true
runtimeRequestTimeout: 0s
shutdownGracePeriod: 0s
shutdownGracePeriodCriticalPods: 0s
staticPodPath: /etc/kubernetes/manifests
streamingConnectionIdleTimeout: 0s
syncFrequency: 0s
volumeStatsAggPeriod: 0s
"#
    )
}

/// kubeadm's ClusterConfiguration as kubeadm init of `opts`' release stores it: its newest API
/// version (see [`crate::version::Release::kubeadm_api_version`]) with that version's fields
/// (v1beta2 and older carry `dns.type`, v1beta3 and older `apiServer.timeoutForControlPlane`,
/// v1beta4 the validity periods and `encryptionAlgorithm`; v1.20.2
/// `cmd/kubeadm/app/apis/kubeadm/v1beta2/types.go`, K#125029), the default `imageRepository`
/// of that release, `certificatesDir: /etc/kubernetes/pki` and the feature gates of `opts`.
pub fn cluster_configuration_yaml(endpoint: &str, opts: &Options) -> String {
    let release = opts.release();
    let api_version = release.kubeadm_api_version();
    let v1beta4 = api_version.ends_with("v1beta4");
    let old_dns = !v1beta4 && !api_version.ends_with("v1beta3");
    let api_server = if v1beta4 {
        "apiServer: {}\n".to_owned()
    } else {
        "apiServer:\n  timeoutForControlPlane: 4m0s\n".to_owned()
    };
    let validity = if v1beta4 {
        "caCertificateValidityPeriod: 87600h0m0s\ncertificateValidityPeriod: 8760h0m0s\n"
    } else {
        ""
    };
    let dns = if old_dns {
        "dns:\n  type: CoreDNS\n"
    } else {
        "dns: {}\n"
    };
    let encryption = if v1beta4 {
        "encryptionAlgorithm: RSA-2048\n"
    } else {
        ""
    };
    let mut gates = String::new();
    if !opts.kubeadm_feature_gates.is_empty() {
        gates.push_str("featureGates:\n");
        for (name, on) in &opts.kubeadm_feature_gates {
            gates.push_str(&format!("  {name}: {on}\n"));
        }
    }
    let proxy = if v1beta4 { "proxy: {}\n" } else { "" };
    format!(
        "{api_server}apiVersion: {api_version}\n{validity}certificatesDir: /etc/kubernetes/pki\nclusterName: kubernetes\ncontrolPlaneEndpoint: {endpoint}\ncontrollerManager: {{}}\n{dns}{encryption}etcd:\n  local:\n    dataDir: /var/lib/etcd\n{gates}imageRepository: {}\nkind: ClusterConfiguration\nkubernetesVersion: {}\nnetworking:\n  dnsDomain: cluster.local\n  podSubnet: 10.244.0.0/16\n  serviceSubnet: 10.96.0.0/12\n{proxy}scheduler: {{}}\n",
        release.kubeadm_image_repository(),
        opts.kubernetes_version,
    )
}

/// kubeadm's ClusterStatus (clusters before 1.22): the control-plane endpoint of the one
/// control-plane node (v1.20.2 `phases/uploadconfig/uploadconfig.go`).
pub fn cluster_status_yaml(endpoint: &str, opts: &Options) -> String {
    let (host, port) = endpoint.rsplit_once(':').unwrap_or((endpoint, "6443"));
    format!(
        "apiEndpoints:\n  control-plane:\n    advertiseAddress: {}\n    bindPort: {port}\napiVersion: {}\nkind: ClusterStatus\n",
        host.trim_start_matches('[').trim_end_matches(']'),
        opts.release().kubeadm_api_version(),
    )
}

/// Seeds a store with what a fresh kubeadm cluster of `opts`' release has.
pub fn seed(store: &mut Store, opts: &Options, server_url: &str, ca_pem: &str) {
    builtin_policy(store);
    if opts.kubeadm_rbac {
        kubeadm_rbac(store, opts);
    }
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        store.put(
            Key::new(Kind::Namespace, "", ns),
            json!({"metadata": {"name": ns}, "status": {"phase": "Active"}}),
        );
    }
    store.put(
        Key::new(Kind::ConfigMap, "kube-public", "cluster-info"),
        json!({"metadata": {"name": "cluster-info", "namespace": "kube-public"},
               "data": {"kubeconfig": cluster_info_kubeconfig(server_url, ca_pem)}}),
    );
    // The API server publishes the CAs it verifies client certificates with (1.20.2
    // `pkg/controlplane/controller/clusterauthenticationtrust`; `pkg/master/client_ca_hook.go`
    // before 1.17), readable by `extension-apiserver-authentication-reader`.
    store.put(
        Key::new(Kind::ConfigMap, "kube-system", "extension-apiserver-authentication"),
        json!({"metadata": {"name": "extension-apiserver-authentication", "namespace": "kube-system"},
               "data": {"client-ca-file": ca_pem}}),
    );
    let endpoint = server_url.trim_start_matches("https://");
    let mut kubeadm = json!({"ClusterConfiguration": cluster_configuration_yaml(endpoint, opts)});
    if opts.release().kubeadm_cluster_status() {
        kubeadm["ClusterStatus"] = json!(cluster_status_yaml(endpoint, opts));
    }
    store.put(
        Key::new(Kind::ConfigMap, "kube-system", "kubeadm-config"),
        json!({"metadata": {"name": "kubeadm-config", "namespace": "kube-system"}, "data": kubeadm}),
    );
    let kubelet_name = opts.kubelet_config_name();
    let kubelet = kubelet_config_yaml(&opts.cluster_dns, opts.release());
    store.put(
        Key::new(Kind::ConfigMap, "kube-system", &kubelet_name),
        json!({"metadata": {"name": kubelet_name, "namespace": "kube-system",
                            "annotations": {COMPONENT_CONFIG_HASH: component_config_hash(&kubelet)}},
               "data": {"kubelet": kubelet}}),
    );
    let keys: Vec<Key> = Kind::ALL.into_iter().flat_map(|k| store.keys(k)).collect();
    for key in keys {
        if let Some(mut obj) = store.get(&key).cloned() {
            crate::store::record_manager(&mut obj, "kubeadm", &key.kind.api_version("v1"));
            store.put(key, obj);
        }
    }
}

/// The annotation kubeadm signs the component configs it generates with (v1.20.2
/// `cmd/kubeadm/app/componentconfigs/checksums.go` `SignConfigMap`, constant
/// `ComponentConfigHashAnnotationKey`; seen on the real 1.20 kubelet-config-1.20; the release
/// that introduced it is not checked, so every release gets it here).
pub const COMPONENT_CONFIG_HASH: &str = "kubeadm.kubernetes.io/component-config.hash";

/// `sha256:<hex>` over the ConfigMap's data, as `ChecksumForConfigMap` does for one key.
fn component_config_hash(kubelet: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"kubelet");
    h.update(kubelet.as_bytes());
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded(version: &str, gates: &[(&str, bool)]) -> Store {
        let opts = Options {
            kubernetes_version: version.into(),
            kubeadm_feature_gates: gates.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
            ..Options::default()
        };
        let mut store = Store::new();
        seed(&mut store, &opts, "https://10.0.0.1:6443", "CA");
        store
    }

    fn has(store: &Store, kind: Kind, ns: &str, name: &str) -> bool {
        store.get(&Key::new(kind, ns, name)).is_some()
    }

    #[test]
    fn kubelet_config_and_its_role_follow_the_release() {
        for (version, gates, name) in [
            ("v1.20.2", &[][..], "kubelet-config-1.20"),
            ("v1.23.17", &[][..], "kubelet-config-1.23"),
            (
                "v1.23.17",
                &[("UnversionedKubeletConfigMap", true)][..],
                "kubelet-config",
            ),
            ("v1.24.17", &[][..], "kubelet-config"),
            (
                "v1.24.17",
                &[("UnversionedKubeletConfigMap", false)][..],
                "kubelet-config-1.24",
            ),
            ("v1.31.2", &[][..], "kubelet-config"),
        ] {
            let store = seeded(version, gates);
            let other = if name == "kubelet-config" {
                format!("kubelet-config-{}", &version[1..5])
            } else {
                "kubelet-config".to_owned()
            };
            assert!(
                has(&store, Kind::ConfigMap, "kube-system", name),
                "{version} {name}"
            );
            let role = format!("kubeadm:{name}");
            assert!(
                has(&store, Kind::Role, "kube-system", &role),
                "{version} {role}"
            );
            assert!(has(&store, Kind::RoleBinding, "kube-system", &role));
            assert!(
                !has(&store, Kind::ConfigMap, "kube-system", &other),
                "{version} {other}"
            );
            let other_role = format!("kubeadm:{other}");
            assert!(
                !has(&store, Kind::Role, "kube-system", &other_role),
                "{version}"
            );
        }
    }

    #[test]
    fn kubelet_config_document_by_release() {
        let doc = |version: &str, name: &str| -> serde_yaml_ng::Value {
            let store = seeded(version, &[]);
            let cm = store
                .get(&Key::new(Kind::ConfigMap, "kube-system", name))
                .expect("kubelet config");
            serde_yaml_ng::from_str(cm["data"]["kubelet"].as_str().expect("text")).expect("YAML")
        };
        let old = doc("v1.20.2", "kubelet-config-1.20");
        assert!(old.get("cgroupDriver").is_none());
        assert!(old.get("containerRuntimeEndpoint").is_none());
        let new = doc("v1.21.0", "kubelet-config-1.21");
        assert_eq!(new["cgroupDriver"].as_str(), Some("systemd"));
    }

    #[test]
    fn get_nodes_from_1_18() {
        let old = seeded("v1.17.17", &[]);
        assert!(!has(&old, Kind::ClusterRole, "", "kubeadm:get-nodes"));
        assert!(!has(
            &old,
            Kind::ClusterRoleBinding,
            "",
            "kubeadm:get-nodes"
        ));
        let new = seeded("v1.18.0", &[]);
        assert!(has(&new, Kind::ClusterRole, "", "kubeadm:get-nodes"));
        assert!(has(&new, Kind::ClusterRoleBinding, "", "kubeadm:get-nodes"));
    }

    fn kubeadm_config(store: &Store) -> (serde_yaml_ng::Value, Value) {
        let cm = store
            .get(&Key::new(Kind::ConfigMap, "kube-system", "kubeadm-config"))
            .expect("kubeadm-config")
            .clone();
        let text = cm["data"]["ClusterConfiguration"].as_str().expect("text");
        (
            serde_yaml_ng::from_str(text).expect("YAML"),
            cm["data"].clone(),
        )
    }

    #[test]
    fn kubeadm_config_follows_the_release() {
        for (version, api, status, repo) in [
            ("v1.12.10", "kubeadm.k8s.io/v1alpha3", true, "k8s.gcr.io"),
            ("v1.14.10", "kubeadm.k8s.io/v1beta1", true, "k8s.gcr.io"),
            ("v1.20.2", "kubeadm.k8s.io/v1beta2", true, "k8s.gcr.io"),
            ("v1.21.14", "kubeadm.k8s.io/v1beta2", true, "k8s.gcr.io"),
            ("v1.22.16", "kubeadm.k8s.io/v1beta3", false, "k8s.gcr.io"),
            (
                "v1.22.17",
                "kubeadm.k8s.io/v1beta3",
                false,
                "registry.k8s.io",
            ),
            ("v1.24.8", "kubeadm.k8s.io/v1beta3", false, "k8s.gcr.io"),
            (
                "v1.24.9",
                "kubeadm.k8s.io/v1beta3",
                false,
                "registry.k8s.io",
            ),
            (
                "v1.30.0",
                "kubeadm.k8s.io/v1beta3",
                false,
                "registry.k8s.io",
            ),
            (
                "v1.31.2",
                "kubeadm.k8s.io/v1beta4",
                false,
                "registry.k8s.io",
            ),
        ] {
            let (cfg, data) = kubeadm_config(&seeded(version, &[]));
            assert_eq!(cfg["apiVersion"].as_str(), Some(api), "{version}");
            assert_eq!(cfg["kubernetesVersion"].as_str(), Some(version));
            assert_eq!(cfg["imageRepository"].as_str(), Some(repo), "{version}");
            assert_eq!(cfg["certificatesDir"].as_str(), Some("/etc/kubernetes/pki"));
            assert_eq!(!data["ClusterStatus"].is_null(), status, "{version}");
        }
        let (cfg, _) = kubeadm_config(&seeded(
            "v1.23.17",
            &[("UnversionedKubeletConfigMap", true)],
        ));
        assert_eq!(
            cfg["featureGates"]["UnversionedKubeletConfigMap"].as_bool(),
            Some(true)
        );
    }
}
