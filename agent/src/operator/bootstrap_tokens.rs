//! The operator's side of bootstrap tokens: create, list and delete `bootstrap-token-<id>`
//! Secrets exactly as `kubeadm token` does, and make sure the RBAC rules that let a token's
//! holder join exist — the bindings `kubeadm init` creates (§4.3 of docs/protocol notes), for the
//! token's groups, and never anything broader.

use crate::client::kube::{Kube, KubeError};
use crate::model::token::BootstrapToken;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// kubeadm's default token group.
pub const DEFAULT_GROUP: &str = "system:bootstrappers:kubeadm:default-node-token";

/// A token to create.
#[derive(Clone, Debug)]
pub struct NewToken {
    /// The token.
    pub token: BootstrapToken,
    /// Time to live; None never expires.
    pub ttl: Option<Duration>,
    /// Usages (`signing`, `authentication`).
    pub usages: Vec<String>,
    /// Extra groups.
    pub groups: Vec<String>,
    /// Description.
    pub description: Option<String>,
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The Secret kubeadm writes for a token (`BootstrapTokenToSecret`).
pub fn secret_for(t: &NewToken, now: time::OffsetDateTime) -> Value {
    let mut data = BTreeMap::new();
    data.insert("token-id".to_owned(), t.token.id().to_owned());
    data.insert(
        "token-secret".to_owned(),
        t.token.secret().expose().to_owned(),
    );
    if let Some(d) = t.description.as_ref().filter(|d| !d.is_empty()) {
        data.insert("description".into(), d.clone());
    }
    if let Some(ttl) = t.ttl {
        data.insert("expiration".into(), rfc3339(now + ttl));
    }
    for u in &t.usages {
        data.insert(format!("usage-bootstrap-{u}"), "true".into());
    }
    if !t.groups.is_empty() {
        data.insert("auth-extra-groups".into(), t.groups.join(","));
    }
    let encoded: serde_json::Map<String, Value> = data
        .into_iter()
        .map(|(k, v)| (k, json!(STANDARD.encode(v))))
        .collect();
    let name = format!("bootstrap-token-{}", t.token.id());
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": "kube-system"},
        "type": "bootstrap.kubernetes.io/token",
        "data": encoded,
    })
}

/// Validates a group name (`system:bootstrappers:[a-z0-9:-]{0,255}[a-z0-9]`).
pub fn valid_group(g: &str) -> bool {
    g.strip_prefix("system:bootstrappers:").is_some_and(|rest| {
        !rest.is_empty()
            && rest.len() <= 256
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b':' || b == b'-')
            && rest
                .bytes()
                .last()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

fn group_subject(name: &str) -> Value {
    json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": name})
}

/// Creates `obj` at `collection`, or adds missing subjects to the existing object at `item`.
async fn ensure_binding(
    kube: &Kube,
    collection: &str,
    name: &str,
    obj: Value,
    log: &mut Vec<String>,
) -> Result<(), KubeError> {
    let item = format!("{collection}/{name}");
    let mut existing = match kube.get(&item).await? {
        Some(e) => e,
        None if create(kube, collection, &obj).await? => {
            log.push(format!("created {name}"));
            return Ok(());
        }
        // Another replica created it meanwhile: add what it lacks, as to any existing one.
        None => kube.get(&item).await?.unwrap_or(obj.clone()),
    };
    let want = obj["subjects"].as_array().cloned().unwrap_or_default();
    let mut have = existing["subjects"].as_array().cloned().unwrap_or_default();
    let mut changed = false;
    for s in want {
        if !have
            .iter()
            .any(|h| h["kind"] == s["kind"] && h["name"] == s["name"])
        {
            have.push(s);
            changed = true;
        }
    }
    if changed {
        existing["subjects"] = Value::Array(have);
        kube.merge_patch(&item, &json!({"subjects": existing["subjects"]}))
            .await?;
        log.push(format!("added the token's groups to {name}"));
    }
    Ok(())
}

/// Creates the token's Secret ([`secret_for`]) in kube-system. A 409 for a Secret holding this
/// very token is ours: an earlier attempt of this create that reached the API server before
/// its answer was lost (a connection reset, an etcd timeout after the write), then retried.
pub async fn create_token(
    kube: &Kube,
    t: &NewToken,
    now: time::OffsetDateTime,
) -> Result<(), KubeError> {
    use crate::client::kube::paths;
    match kube
        .post(&paths::secrets("kube-system"), &secret_for(t, now))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.status() == Some(409) => {
            let name = format!("bootstrap-token-{}", t.token.id());
            let existing = kube.get(&paths::secret("kube-system", &name)).await?;
            let stored = existing
                .as_ref()
                .and_then(|s| s["data"]["token-secret"].as_str())
                .and_then(|b| STANDARD.decode(b).ok())
                .unwrap_or_default();
            let ours: bool = subtle::ConstantTimeEq::ct_eq(
                stored.as_slice(),
                t.token.secret().expose().as_bytes(),
            )
            .into();
            if !ours {
                return Err(e);
            }
            tracing::info!(
                id = t.token.id(),
                "the token's Secret was created by an attempt whose answer was lost"
            );
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Creates `obj` in `collection`; `false` when it exists already (409: another replica of the
/// values service, or an operator, created it between our read and our create).
async fn create(kube: &Kube, collection: &str, obj: &Value) -> Result<bool, KubeError> {
    match kube.post(collection, obj).await {
        Ok(_) => Ok(true),
        Err(e) if e.status() == Some(409) => Ok(false),
        Err(e) => Err(e),
    }
}

/// [`ensure_rbac`] for the cluster's own version, read from kubeadm-config (else `/version`).
pub async fn ensure_cluster_rbac(
    kube: &Kube,
    groups: &[String],
) -> Result<Vec<String>, crate::join::kubelet::ClusterConfigError> {
    let api = |source| crate::join::kubelet::ClusterConfigError::Api {
        what: "the cluster's RBAC for joining".into(),
        source,
    };
    let facts = crate::join::kubelet::read_kubeadm_facts(kube).await?;
    let cluster = match facts.version {
        Some(v) => v,
        None => kube.version().await.map_err(api)?.0,
    };
    ensure_rbac(kube, groups, &cluster, facts.unversioned_kubelet_config)
        .await
        .map_err(api)
}

/// Makes sure the RBAC rules kubeadm sets up for joining exist for `groups`: CSR creation
/// (`system:node-bootstrapper`), auto-approval (`…:nodeclient`), rotation for nodes
/// (`…:selfnodeclient`), reading Nodes, kubeadm-config and kubelet-config, and anonymous reads
/// of cluster-info. Returns what it changed.
/// The kubelet-config Role follows the cluster's kubeadm version (see
/// [`crate::model::compat::kubelet_config_names`]), and `kubeadm:get-nodes` exists from 1.18, so an
/// older cluster gets exactly what its own kubeadm would have made.
pub async fn ensure_rbac(
    kube: &Kube,
    groups: &[String],
    cluster: &crate::model::version::KubeVersion,
    unversioned_gate: Option<bool>,
) -> Result<Vec<String>, KubeError> {
    let mut log = Vec::new();
    let kubelet_config =
        crate::model::compat::kubelet_config_names(cluster, unversioned_gate)[0].clone();
    let kubelet_config_role = format!("kubeadm:{kubelet_config}");
    let crb = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings";
    let cr = "/apis/rbac.authorization.k8s.io/v1/clusterroles";
    let subjects: Vec<Value> = groups.iter().map(|g| group_subject(g)).collect();
    let get_nodes = "kubeadm:get-nodes";
    let with_get_nodes = crate::model::compat::has_get_nodes_role(cluster);
    if with_get_nodes
        && kube.get(&format!("{cr}/{get_nodes}")).await?.is_none()
        && create(kube, cr, &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": get_nodes},
            "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]})).await?
    {
        log.push(format!("created ClusterRole {get_nodes}"));
    }
    let mut bindings = vec![
        (
            "kubeadm:kubelet-bootstrap",
            "system:node-bootstrapper",
            subjects.clone(),
        ),
        (
            "kubeadm:node-autoapprove-bootstrap",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            subjects.clone(),
        ),
        (
            "kubeadm:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            vec![group_subject("system:nodes")],
        ),
    ];
    if with_get_nodes {
        bindings.push((get_nodes, get_nodes, subjects.clone()));
    }
    for (name, role, subjects) in bindings {
        let crb_obj = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role}, "subjects": subjects});
        ensure_binding(kube, crb, name, crb_obj, &mut log).await?;
    }
    let mut readers = subjects.clone();
    readers.push(group_subject("system:nodes"));
    for (ns, name, resource_name, subjects) in [
        (
            "kube-system",
            "kubeadm:nodes-kubeadm-config",
            "kubeadm-config",
            readers.clone(),
        ),
        (
            "kube-system",
            kubelet_config_role.as_str(),
            kubelet_config.as_str(),
            readers.clone(),
        ),
        (
            "kube-public",
            "kubeadm:bootstrap-signer-clusterinfo",
            "cluster-info",
            vec![
                json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:anonymous"}),
            ],
        ),
    ] {
        let roles = format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles");
        if kube.get(&format!("{roles}/{name}")).await?.is_none()
            && create(kube, &roles, &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name, "namespace": ns},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [resource_name], "verbs": ["get"]}]})).await?
        {
            log.push(format!("created Role {ns}/{name}"));
        }
        let rbs = format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings");
        let rb = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": name, "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}, "subjects": subjects});
        ensure_binding(kube, &rbs, name, rb, &mut log).await?;
    }
    Ok(log)
}

/// One token, as listed (the secret is shown only on request).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Listed {
    /// Token id.
    pub id: String,
    /// The full token, only with `--show-secret`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Expiration (RFC 3339), if any.
    pub expires: Option<String>,
    /// Usages.
    pub usages: Vec<String>,
    /// Extra groups.
    pub groups: Vec<String>,
    /// Description.
    pub description: Option<String>,
}

/// Lists bootstrap tokens.
pub async fn list(kube: &Kube, show_secret: bool) -> Result<Vec<Listed>, KubeError> {
    let all = kube
        .get("/api/v1/namespaces/kube-system/secrets")
        .await?
        .unwrap_or_default();
    let mut out = Vec::new();
    for s in all["items"].as_array().cloned().unwrap_or_default() {
        if s["type"] != "bootstrap.kubernetes.io/token" {
            continue;
        }
        let mut data = BTreeMap::new();
        if let Some(d) = s["data"].as_object() {
            for (k, v) in d {
                if let Some(b) = v.as_str().and_then(|b| STANDARD.decode(b).ok()) {
                    data.insert(k.clone(), String::from_utf8_lossy(&b).into_owned());
                }
            }
        }
        let Some(id) = data.get("token-id").cloned() else {
            continue;
        };
        out.push(Listed {
            token: show_secret.then(|| {
                format!(
                    "{id}.{}",
                    data.get("token-secret").cloned().unwrap_or_default()
                )
            }),
            id,
            expires: data.get("expiration").cloned(),
            usages: data
                .iter()
                .filter(|(k, v)| k.starts_with("usage-bootstrap-") && *v == "true")
                .map(|(k, _)| k.trim_start_matches("usage-bootstrap-").to_owned())
                .collect(),
            groups: data
                .get("auth-extra-groups")
                .map(|g| g.split(',').map(str::to_owned).collect())
                .unwrap_or_default(),
            description: data.get("description").cloned(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_has_kubeadm_s_shape() {
        let t = NewToken {
            token: "abcdef.0123456789abcdef".parse().expect("token"),
            ttl: Some(Duration::from_secs(3600)),
            usages: vec!["signing".into(), "authentication".into()],
            groups: vec![DEFAULT_GROUP.into()],
            description: None,
        };
        let now = time::macros::datetime!(2026-01-02 03:04:05 UTC);
        let s = secret_for(&t, now);
        assert_eq!(s["metadata"]["name"], "bootstrap-token-abcdef");
        assert_eq!(s["type"], "bootstrap.kubernetes.io/token");
        let get = |k: &str| {
            String::from_utf8(
                STANDARD
                    .decode(s["data"][k].as_str().expect(k))
                    .expect("b64"),
            )
            .expect("utf8")
        };
        assert_eq!(get("expiration"), "2026-01-02T04:04:05Z");
        assert_eq!(get("usage-bootstrap-signing"), "true");
        assert_eq!(get("auth-extra-groups"), DEFAULT_GROUP);
        assert!(s["data"].get("description").is_none());
        assert!(valid_group(DEFAULT_GROUP));
        assert!(!valid_group("system:masters"));
        assert!(!valid_group("system:bootstrappers:"));
    }
}
