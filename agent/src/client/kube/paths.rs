//! Every API path node-attach asks for, in one place (as kube-core's `Resource::url_path`
//! does): callers name what they want, never format a path. Names are validated DNS names or
//! fixed strings before they get here; the URL layer percent-encodes what it must.

/// `/version`.
pub const VERSION: &str = "/version";
/// cluster-info, read anonymously during discovery.
pub const CLUSTER_INFO: &str = "/api/v1/namespaces/kube-public/configmaps/cluster-info";
/// The SelfSubjectAccessReview collection.
pub const SELF_SUBJECT_ACCESS_REVIEWS: &str =
    "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
/// The Namespace collection.
pub const NAMESPACES: &str = "/api/v1/namespaces";
/// The ClusterRole collection.
pub const CLUSTER_ROLES: &str = "/apis/rbac.authorization.k8s.io/v1/clusterroles";
/// The ClusterRoleBinding collection.
pub const CLUSTER_ROLE_BINDINGS: &str = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings";

/// One Node.
pub fn node(name: &str) -> String {
    format!("/api/v1/nodes/{name}")
}

/// A watch on one Node, from a resourceVersion when given, ending server-side after `seconds`.
pub fn node_watch(name: &str, resource_version: &str, seconds: u64) -> String {
    let mut path = format!(
        "/api/v1/nodes?watch=true&fieldSelector=metadata.name%3D{name}&timeoutSeconds={seconds}"
    );
    if !resource_version.is_empty() {
        path.push_str(&format!("&resourceVersion={resource_version}"));
    }
    path
}

/// One Namespace.
pub fn namespace(name: &str) -> String {
    format!("{NAMESPACES}/{name}")
}

/// One ConfigMap.
pub fn config_map(namespace: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/configmaps/{name}")
}

/// A watch on one ConfigMap, from a resourceVersion, ending server-side after `seconds`.
pub fn config_map_watch(
    namespace: &str,
    name: &str,
    resource_version: &str,
    seconds: u64,
) -> String {
    format!(
        "/api/v1/namespaces/{namespace}/configmaps?watch=true&fieldSelector=metadata.name%3D{name}&resourceVersion={resource_version}&timeoutSeconds={seconds}"
    )
}

/// The Secrets of a namespace.
pub fn secrets(namespace: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/secrets")
}

/// One Secret.
pub fn secret(namespace: &str, name: &str) -> String {
    format!("{}/{name}", secrets(namespace))
}

/// The Roles of a namespace.
pub fn roles(namespace: &str) -> String {
    format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles")
}

/// The RoleBindings of a namespace.
pub fn role_bindings(namespace: &str) -> String {
    format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings")
}

/// One object of a collection.
pub fn item(collection: &str, name: &str) -> String {
    format!("{collection}/{name}")
}

/// The CSR collection in a certificates.k8s.io version (v1, v1beta1).
pub fn csrs(version: &str) -> String {
    format!("/apis/certificates.k8s.io/{version}/certificatesigningrequests")
}

/// One CSR.
pub fn csr(version: &str, name: &str) -> String {
    item(&csrs(version), name)
}

/// A watch on one CSR, from a resourceVersion when given, ending server-side after `seconds`.
pub fn csr_watch(version: &str, name: &str, resource_version: &str, seconds: u64) -> String {
    let mut path = format!(
        "{}?watch=true&fieldSelector=metadata.name%3D{name}&timeoutSeconds={seconds}",
        csrs(version)
    );
    if !resource_version.is_empty() {
        path.push_str(&format!("&resourceVersion={resource_version}"));
    }
    path
}

/// The Pods bound to a Node.
pub fn pods_on(node: &str) -> String {
    format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{node}")
}

/// A Pod's eviction subresource.
pub fn eviction(namespace: &str, pod: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/pods/{pod}/eviction")
}
