//! The few Kubernetes objects node-attach reads, as serde types with only the fields it uses
//! (unknown fields are ignored, missing ones default), instead of indexing JSON by hand.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `metadata`, as far as node-attach reads it.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ObjectMeta {
    /// Name.
    pub name: String,
    /// Namespace (namespaced kinds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// UID.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// resourceVersion.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    /// Labels.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Owners.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<OwnerReference>,
    /// Set once deletion began.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
}

/// An owner of an object.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct OwnerReference {
    /// Its kind (`DaemonSet`, …).
    pub kind: String,
    /// Its name.
    pub name: String,
}

/// A status condition (Nodes, CSRs).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Condition {
    /// Ready, Approved, Denied, Failed…
    #[serde(rename = "type")]
    pub kind: String,
    /// True, False, Unknown (absent before 1.19 on CSRs).
    pub status: String,
    /// A machine-readable reason.
    pub reason: String,
    /// A message for people.
    pub message: String,
}

/// A Node.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Node {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Spec.
    pub spec: NodeSpec,
    /// Status.
    pub status: NodeStatus,
}

/// A Node's spec.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NodeSpec {
    /// The cloud provider's id of the instance.
    #[serde(rename = "providerID")]
    pub provider_id: Option<String>,
    /// Its taints.
    pub taints: Vec<NodeTaint>,
}

/// A taint on a Node.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct NodeTaint {
    /// Key.
    pub key: String,
    /// Value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// NoSchedule, PreferNoSchedule, NoExecute.
    pub effect: String,
}

/// A Node's status.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct NodeStatus {
    /// Its conditions.
    pub conditions: Vec<Condition>,
}

impl Node {
    /// Whether its Ready condition is True.
    pub fn is_ready(&self) -> bool {
        self.status
            .conditions
            .iter()
            .any(|c| c.kind == "Ready" && c.status == "True")
    }
}

/// A CertificateSigningRequest.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Csr {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// What was asked.
    pub spec: CsrSpec,
    /// What became of it.
    pub status: CsrStatus,
}

/// A CSR's spec.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CsrSpec {
    /// The PKCS#10 request, PEM, base64.
    pub request: String,
    /// The signer (absent before 1.18).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signer_name: Option<String>,
    /// Key usages.
    pub usages: Vec<String>,
    /// Who asked (set by the API server).
    #[serde(skip_serializing)]
    pub username: String,
}

/// A CSR's status.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct CsrStatus {
    /// Approved, Denied, Failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The issued certificate, PEM, base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

impl Csr {
    /// The first condition of this type.
    pub fn condition(&self, kind: &str) -> Option<&Condition> {
        self.status.conditions.iter().find(|c| c.kind == kind)
    }
}

/// A ConfigMap.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct ConfigMap {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Its data.
    pub data: BTreeMap<String, String>,
}

/// A Pod.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Pod {
    /// Metadata.
    pub metadata: ObjectMeta,
}

impl Pod {
    /// Pods a drain leaves: owned by a DaemonSet, or mirror pods of static manifests.
    pub fn survives_drain(&self) -> bool {
        let daemon = self
            .metadata
            .owner_references
            .iter()
            .any(|r| r.kind == "DaemonSet");
        let mirror = self
            .metadata
            .annotations
            .contains_key("kubernetes.io/config.mirror");
        daemon || mirror
    }
}

/// A list of objects.
#[derive(Clone, Debug, Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de> + Default"))]
pub struct List<T> {
    /// The items.
    #[serde(default)]
    pub items: Vec<T>,
}

/// One event of a watch stream.
#[derive(Clone, Debug, Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de> + Default"))]
pub struct WatchEvent<T> {
    /// ADDED, MODIFIED, DELETED, BOOKMARK, ERROR.
    #[serde(rename = "type")]
    pub kind: String,
    /// The object (a Status for ERROR).
    #[serde(default)]
    pub object: T,
}

/// `/version`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Version {
    /// `v1.20.2`.
    pub git_version: String,
}
