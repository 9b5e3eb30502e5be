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

/// The RBAC objects `kubeadm init` creates for joining nodes.
pub fn kubeadm_rbac(store: &mut Store) {
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
    role_and_binding(
        store,
        "kube-system",
        "kubeadm:kubelet-config",
        json!([
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["kubelet-config"], "verbs": ["get"]}
        ]),
        readers.clone(),
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

/// The kubelet configuration kubeadm uploads (kubeadm v1.31 defaults).
pub fn kubelet_config_yaml(cluster_dns: &str) -> String {
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

/// kubeadm's ClusterConfiguration.
pub fn cluster_configuration_yaml(endpoint: &str, version: &str) -> String {
    format!(
        r#"apiServer: {{}}
apiVersion: kubeadm.k8s.io/v1beta4
caCertificateValidityPeriod: 87600h0m0s
certificateValidityPeriod: 8760h0m0s
certificatesDir: /etc/kubernetes/pki
clusterName: kubernetes
controlPlaneEndpoint: {endpoint}
controllerManager: {{}}
dns: {{}}
encryptionAlgorithm: RSA-2048
etcd:
  local:
    dataDir: /var/lib/etcd
imageRepository: registry.k8s.io
kind: ClusterConfiguration
kubernetesVersion: {version}
networking:
  dnsDomain: cluster.local
  podSubnet: 10.244.0.0/16
  serviceSubnet: 10.96.0.0/12
proxy: {{}}
scheduler: {{}}
"#
    )
}

/// Seeds a store with what a fresh kubeadm cluster has.
pub fn seed(store: &mut Store, opts: &Options, server_url: &str, ca_pem: &str) {
    builtin_policy(store);
    if opts.kubeadm_rbac {
        kubeadm_rbac(store);
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
    let endpoint = server_url.trim_start_matches("https://");
    store.put(
        Key::new(Kind::ConfigMap, "kube-system", "kubeadm-config"),
        json!({"metadata": {"name": "kubeadm-config", "namespace": "kube-system"},
               "data": {"ClusterConfiguration": cluster_configuration_yaml(endpoint, &opts.kubernetes_version)}}),
    );
    let kubelet_name = if opts.legacy_kubelet_config_name {
        let v = opts.kubernetes_version.trim_start_matches('v');
        let minor: Vec<&str> = v.split('.').take(2).collect();
        format!("kubelet-config-{}", minor.join("."))
    } else {
        "kubelet-config".to_owned()
    };
    if opts.legacy_kubelet_config_name && opts.kubeadm_rbac {
        // The 1.20-era role name follows the ConfigMap's.
        role_and_binding(
            store,
            "kube-system",
            &format!("kubeadm:{kubelet_name}"),
            json!([
                {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [kubelet_name.clone()], "verbs": ["get"]}
            ]),
            json!([group(BOOTSTRAP_GROUP), group("system:nodes")]),
        );
    }
    store.put(
        Key::new(Kind::ConfigMap, "kube-system", &kubelet_name),
        json!({"metadata": {"name": kubelet_name, "namespace": "kube-system"},
               "data": {"kubelet": kubelet_config_yaml(&opts.cluster_dns)}}),
    );
}
