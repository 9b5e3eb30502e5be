//! Authentication (anonymous, client certificates, bootstrap tokens) and authorization (the
//! Node authorizer, then RBAC over the stored roles and bindings), as kube-apiserver does them.

use crate::store::{Key, Kind, Store};
use serde_json::Value;
use subtle::ConstantTimeEq;

/// Who is asking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// User name.
    pub name: String,
    /// Groups.
    pub groups: Vec<String>,
}

impl User {
    /// `system:anonymous`.
    pub fn anonymous() -> User {
        User {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
        }
    }

    /// Whether this is the anonymous user.
    pub fn is_anonymous(&self) -> bool {
        self.name == "system:anonymous"
    }

    /// The node name, when this is a node identity (`system:node:<name>` in `system:nodes`).
    pub fn node_name(&self) -> Option<&str> {
        if self.groups.iter().any(|g| g == "system:nodes") {
            self.name.strip_prefix("system:node:")
        } else {
            None
        }
    }

    fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g)
    }
}

/// A user from a verified client certificate: CN is the name, O the groups.
pub fn from_certificate(cn: String, orgs: Vec<String>) -> User {
    let mut groups = orgs;
    groups.push("system:authenticated".into());
    User { name: cn, groups }
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// The bootstrap token authenticator (kubernetes `plugin/pkg/auth/authenticator/token/bootstrap`):
/// `None` means "not authenticated by this authenticator".
pub fn bootstrap_token(store: &Store, token: &str) -> Option<User> {
    let (id, secret) = token.split_once('.')?;
    if id.len() != 6
        || secret.len() != 16
        || !id.bytes().all(is_token_char)
        || !secret.bytes().all(is_token_char)
    {
        return None;
    }
    let obj = store.get(&Key::new(
        Kind::Secret,
        "kube-system",
        &format!("bootstrap-token-{id}"),
    ))?;
    if !obj["metadata"]["deletionTimestamp"].is_null() {
        return None;
    }
    if obj["type"] != "bootstrap.kubernetes.io/token" {
        return None;
    }
    let data = crate::secret_data(obj);
    let stored = data.get("token-secret")?;
    if !bool::from(stored.as_bytes().ct_eq(secret.as_bytes())) {
        return None;
    }
    if data.get("token-id").map(String::as_str) != Some(id) {
        return None;
    }
    if crate::token_expired(&data) {
        return None;
    }
    if data
        .get("usage-bootstrap-authentication")
        .map(String::as_str)
        != Some("true")
    {
        return None;
    }
    let mut groups = vec!["system:bootstrappers".to_owned()];
    if let Some(extra) = data.get("auth-extra-groups") {
        for g in extra.split(',').map(str::trim).filter(|g| !g.is_empty()) {
            let valid = g.strip_prefix("system:bootstrappers:").is_some_and(|rest| {
                !rest.is_empty()
                    && rest.len() <= 256
                    && rest
                        .bytes()
                        .all(|b| is_token_char(b) || b == b':' || b == b'-')
                    && rest.bytes().last().is_some_and(is_token_char)
            });
            if !valid {
                return None;
            }
            groups.push(g.to_owned());
        }
    }
    groups.sort();
    groups.dedup();
    groups.push("system:authenticated".into());
    Some(User {
        name: format!("system:bootstrap:{id}"),
        groups,
    })
}

/// What a request wants to do.
#[derive(Clone, Debug, Default)]
pub struct Attributes {
    /// get, list, watch, create, update, patch, delete.
    pub verb: String,
    /// API group.
    pub group: String,
    /// Plural resource.
    pub resource: String,
    /// Subresource, if any.
    pub subresource: String,
    /// Namespace.
    pub namespace: String,
    /// Object name.
    pub name: String,
    /// For non-resource requests: the path.
    pub path: Option<String>,
}

/// Whether `user` may do `attrs`.
pub fn authorize(store: &Store, user: &User, attrs: &Attributes) -> bool {
    decide(store, user, attrs).is_some()
}

/// Whether `user` may do `attrs`, with the reason an allowing authorizer gives (what a
/// SubjectAccessReview's `status.reason` says): empty for `system:masters` and the Node
/// authorizer, `RBAC: allowed by ...` naming the binding for RBAC (v1.20.2
/// `plugin/pkg/auth/authorizer/rbac/rbac.go` `authorizingVisitor`).
pub fn decide(store: &Store, user: &User, attrs: &Attributes) -> Option<String> {
    if user.in_group("system:masters") || node_authorizer(user, attrs) {
        return Some(String::new());
    }
    rbac(store, user, attrs)
}

/// The Node authorizer's share: a node may read and write Nodes (NodeRestriction narrows the
/// writes to its own), and create and read CSRs.
fn node_authorizer(user: &User, a: &Attributes) -> bool {
    if user.node_name().is_none() || a.path.is_some() {
        return false;
    }
    match (
        a.group.as_str(),
        a.resource.as_str(),
        a.subresource.as_str(),
    ) {
        // As bootstrappolicy NodeRules (v1.20.2, plugin/pkg/auth/authorizer/rbac/
        // bootstrappolicy/policy.go): create, get, list, watch, update and patch on nodes, and
        // never delete: a node cannot delete its own Node object.
        ("", "nodes", "") => matches!(
            a.verb.as_str(),
            "get" | "list" | "watch" | "create" | "update" | "patch"
        ),
        ("", "nodes", "status") => matches!(a.verb.as_str(), "get" | "update" | "patch"),
        ("", "pods", "") => matches!(
            a.verb.as_str(),
            "get" | "list" | "watch" | "create" | "delete"
        ),
        ("", "pods", "status") => matches!(a.verb.as_str(), "update" | "patch"),
        ("certificates.k8s.io", "certificatesigningrequests", "") => {
            matches!(a.verb.as_str(), "create" | "get" | "list" | "watch")
        }
        _ => false,
    }
}

fn subject_matches(subject: &Value, user: &User) -> bool {
    let name = subject["name"].as_str().unwrap_or_default();
    match subject["kind"].as_str() {
        Some("User") => name == user.name,
        Some("Group") => user.in_group(name),
        _ => false,
    }
}

fn str_list(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn rule_matches(rule: &Value, a: &Attributes) -> bool {
    let verbs = str_list(&rule["verbs"]);
    if !verbs.iter().any(|v| *v == "*" || *v == a.verb) {
        return false;
    }
    if let Some(path) = &a.path {
        return str_list(&rule["nonResourceURLs"]).iter().any(|u| {
            *u == "*" || *u == path || u.strip_suffix('*').is_some_and(|p| path.starts_with(p))
        });
    }
    let groups = str_list(&rule["apiGroups"]);
    if !groups.iter().any(|g| *g == "*" || *g == a.group) {
        return false;
    }
    let wanted = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let resources = str_list(&rule["resources"]);
    if !resources.iter().any(|r| *r == "*" || *r == wanted) {
        return false;
    }
    let names = str_list(&rule["resourceNames"]);
    names.is_empty() || names.contains(&a.name.as_str())
}

fn role_allows(store: &Store, role_ref: &Value, binding_ns: &str, a: &Attributes) -> bool {
    let name = role_ref["name"].as_str().unwrap_or_default();
    let role = match role_ref["kind"].as_str() {
        Some("ClusterRole") => store.get(&Key::new(Kind::ClusterRole, "", name)),
        Some("Role") => store.get(&Key::new(Kind::Role, binding_ns, name)),
        _ => None,
    };
    role.and_then(|r| r["rules"].as_array())
        .is_some_and(|rules| rules.iter().any(|rule| rule_matches(rule, a)))
}

/// `KIND "NAME" to User|Group "SUBJECT"` of the first binding subject that matches.
fn matching_subject(binding: &Value, user: &User) -> Option<String> {
    let subjects = binding["subjects"].as_array()?;
    let s = subjects.iter().find(|s| subject_matches(s, user))?;
    Some(format!(
        "{} \"{}\"",
        s["kind"].as_str().unwrap_or_default(),
        s["name"].as_str().unwrap_or_default()
    ))
}

fn rbac(store: &Store, user: &User, a: &Attributes) -> Option<String> {
    let role_of = |b: &Value| {
        let r = &b["roleRef"];
        format!(
            "{} \"{}\"",
            r["kind"].as_str().unwrap_or_default(),
            r["name"].as_str().unwrap_or_default()
        )
    };
    for crb in store.list(Kind::ClusterRoleBinding, None) {
        if let Some(subject) = matching_subject(crb, user) {
            if role_allows(store, &crb["roleRef"], "", a) {
                let name = crb["metadata"]["name"].as_str().unwrap_or_default();
                return Some(format!(
                    "RBAC: allowed by ClusterRoleBinding \"{name}\" of {} to {subject}",
                    role_of(crb)
                ));
            }
        }
    }
    if a.namespace.is_empty() || a.path.is_some() {
        return None;
    }
    for rb in store.list(Kind::RoleBinding, Some(&a.namespace)) {
        if let Some(subject) = matching_subject(rb, user) {
            if role_allows(store, &rb["roleRef"], &a.namespace, a) {
                let name = rb["metadata"]["name"].as_str().unwrap_or_default();
                return Some(format!(
                    "RBAC: allowed by RoleBinding \"{name}/{}\" of {} to {subject}",
                    a.namespace,
                    role_of(rb)
                ));
            }
        }
    }
    None
}

/// The labels a node may set on itself (NodeRestriction / the kubelet's `IsKubeletLabel`).
pub fn node_may_set_label(key: &str) -> bool {
    const ALLOWED: &[&str] = &[
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "kubernetes.io/os",
        "kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/arch",
    ];
    let ns = key.split_once('/').map(|(n, _)| n).unwrap_or_default();
    let within = |d: &str| ns == d || ns.ends_with(&format!(".{d}"));
    if within("node-restriction.kubernetes.io") {
        return false;
    }
    if !(within("kubernetes.io") || within("k8s.io")) {
        return true;
    }
    ALLOWED.contains(&key) || within("kubelet.kubernetes.io") || within("node.kubernetes.io")
}
