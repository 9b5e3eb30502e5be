//! Stored API objects with resource versions, and the watch event stream.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use tokio::sync::broadcast;

/// The resources this stand-in serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// core/v1 ConfigMap.
    ConfigMap,
    /// core/v1 Secret.
    Secret,
    /// core/v1 Node.
    Node,
    /// core/v1 Namespace.
    Namespace,
    /// certificates.k8s.io CertificateSigningRequest.
    Csr,
    /// rbac ClusterRole.
    ClusterRole,
    /// rbac ClusterRoleBinding.
    ClusterRoleBinding,
    /// rbac Role.
    Role,
    /// rbac RoleBinding.
    RoleBinding,
    /// core/v1 Pod.
    Pod,
    /// policy/v1 PodDisruptionBudget.
    Pdb,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 11] = [
        Kind::ConfigMap,
        Kind::Secret,
        Kind::Node,
        Kind::Namespace,
        Kind::Csr,
        Kind::ClusterRole,
        Kind::ClusterRoleBinding,
        Kind::Role,
        Kind::RoleBinding,
        Kind::Pod,
        Kind::Pdb,
    ];

    /// The `kind` field.
    pub fn name(self) -> &'static str {
        match self {
            Kind::ConfigMap => "ConfigMap",
            Kind::Secret => "Secret",
            Kind::Node => "Node",
            Kind::Namespace => "Namespace",
            Kind::Csr => "CertificateSigningRequest",
            Kind::ClusterRole => "ClusterRole",
            Kind::ClusterRoleBinding => "ClusterRoleBinding",
            Kind::Role => "Role",
            Kind::RoleBinding => "RoleBinding",
            Kind::Pod => "Pod",
            Kind::Pdb => "PodDisruptionBudget",
        }
    }

    /// The URL plural.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmaps",
            Kind::Secret => "secrets",
            Kind::Node => "nodes",
            Kind::Namespace => "namespaces",
            Kind::Csr => "certificatesigningrequests",
            Kind::ClusterRole => "clusterroles",
            Kind::ClusterRoleBinding => "clusterrolebindings",
            Kind::Role => "roles",
            Kind::RoleBinding => "rolebindings",
            Kind::Pod => "pods",
            Kind::Pdb => "poddisruptionbudgets",
        }
    }

    /// The API group ("" for core).
    pub fn group(self) -> &'static str {
        match self {
            Kind::ConfigMap | Kind::Secret | Kind::Node | Kind::Namespace | Kind::Pod => "",
            Kind::Pdb => "policy",
            Kind::Csr => "certificates.k8s.io",
            Kind::ClusterRole | Kind::ClusterRoleBinding | Kind::Role | Kind::RoleBinding => {
                "rbac.authorization.k8s.io"
            }
        }
    }

    /// Whether objects live in a namespace.
    pub fn namespaced(self) -> bool {
        matches!(
            self,
            Kind::ConfigMap | Kind::Secret | Kind::Role | Kind::RoleBinding | Kind::Pod | Kind::Pdb
        )
    }

    /// `apiVersion` for a version of the group.
    pub fn api_version(self, version: &str) -> String {
        if self.group().is_empty() {
            version.to_owned()
        } else {
            format!("{}/{version}", self.group())
        }
    }

    /// The kind serving a (group, plural) pair.
    pub fn from_plural(group: &str, plural: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.group() == group && k.plural() == plural)
    }

    /// Short names, as kubectl expects them in discovery.
    pub fn short_names(self) -> &'static [&'static str] {
        match self {
            Kind::ConfigMap => &["cm"],
            Kind::Node => &["no"],
            Kind::Namespace => &["ns"],
            Kind::Csr => &["csr"],
            Kind::Pod => &["po"],
            Kind::Pdb => &["pdb"],
            _ => &[],
        }
    }
}

/// Where an object lives.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// Its kind.
    pub kind: Kind,
    /// Namespace ("" when cluster-scoped).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl Key {
    /// A key.
    pub fn new(kind: Kind, namespace: &str, name: &str) -> Key {
        Key {
            kind,
            namespace: if kind.namespaced() {
                namespace.to_owned()
            } else {
                String::new()
            },
            name: name.to_owned(),
        }
    }
}

/// A change, as a watch sees it.
#[derive(Clone, Debug)]
pub struct Event {
    /// ADDED, MODIFIED or DELETED.
    pub kind: &'static str,
    /// Where.
    pub key: Key,
    /// The object after the change (before, for DELETED).
    pub object: Value,
    /// Resource version of the change.
    pub rv: u64,
}

/// Why a write failed.
#[derive(Debug, PartialEq, Eq)]
pub enum StoreError {
    /// No such object.
    NotFound,
    /// Create of an existing name.
    AlreadyExists,
    /// Update with a stale resourceVersion.
    Conflict,
}

/// All objects.
pub struct Store {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    events: broadcast::Sender<std::sync::Arc<Event>>,
    /// Recent changes, oldest first, so a watch from a resourceVersion replays what it missed
    /// (the API server's watch cache); older ones answer 410 Gone.
    history: std::collections::VecDeque<Event>,
    uid_counter: u64,
}

/// How many changes the history keeps (the real watch cache keeps a bounded window too).
pub const HISTORY: usize = 8192;

/// A watch asked for changes older than the history keeps (the API server answers 410).
#[derive(Debug, PartialEq, Eq)]
pub struct TooOld;

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

/// The current time in whole seconds, RFC 3339 (the API server's timestamp form).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Store {
    /// An empty store.
    pub fn new() -> Store {
        let (events, _) = broadcast::channel(65536);
        Store {
            objects: BTreeMap::new(),
            rv: 1000,
            events,
            history: std::collections::VecDeque::new(),
            uid_counter: 0,
        }
    }

    /// Subscribes to changes.
    pub fn subscribe(&self) -> broadcast::Receiver<std::sync::Arc<Event>> {
        self.events.subscribe()
    }

    /// The current resource version.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// One object.
    pub fn get(&self, key: &Key) -> Option<&Value> {
        self.objects.get(key)
    }

    /// Objects of a kind, optionally in one namespace.
    pub fn list(&self, kind: Kind, namespace: Option<&str>) -> Vec<&Value> {
        self.objects
            .iter()
            .filter(|(k, _)| {
                k.kind == kind && namespace.is_none_or(|ns| k.namespace == ns || !kind.namespaced())
            })
            .map(|(_, v)| v)
            .collect()
    }

    /// Keys of a kind.
    pub fn keys(&self, kind: Kind) -> Vec<Key> {
        self.objects
            .keys()
            .filter(|k| k.kind == kind)
            .cloned()
            .collect()
    }

    fn stamp(&mut self, key: &Key, obj: &mut Value, version: &str) {
        self.rv += 1;
        obj["kind"] = json!(key.kind.name());
        obj["apiVersion"] = json!(key.kind.api_version(version));
        let meta = &mut obj["metadata"];
        if !meta.is_object() {
            *meta = json!({});
        }
        meta["name"] = json!(key.name);
        if key.kind.namespaced() {
            meta["namespace"] = json!(key.namespace);
        } else if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
        }
        meta["resourceVersion"] = json!(self.rv.to_string());
    }

    fn emit(&mut self, kind: &'static str, key: &Key, object: &Value) {
        let event = Event {
            kind,
            key: key.clone(),
            object: object.clone(),
            rv: self.rv,
        };
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(event.clone());
        // Shared, not copied, by each watcher (a burst has a thousand).
        let _ = self.events.send(std::sync::Arc::new(event));
    }

    /// The changes after resourceVersion `since`, oldest first; [`TooOld`] when the history no
    /// longer reaches back that far.
    pub fn events_since(&self, since: u64) -> Result<Vec<Event>, TooOld> {
        match self.history.front() {
            Some(first) if first.rv > since + 1 && self.history.len() == HISTORY => Err(TooOld),
            _ => Ok(self
                .history
                .iter()
                .filter(|e| e.rv > since)
                .cloned()
                .collect()),
        }
    }

    /// Creates an object; fails when the name exists.
    pub fn create(&mut self, key: Key, mut obj: Value) -> Result<Value, StoreError> {
        if self.objects.contains_key(&key) {
            return Err(StoreError::AlreadyExists);
        }
        self.stamp(&key, &mut obj, "v1");
        self.uid_counter += 1;
        obj["metadata"]["uid"] =
            json!(format!("00000000-0000-4000-8000-{:012x}", self.uid_counter));
        obj["metadata"]["creationTimestamp"] = json!(now_rfc3339());
        self.objects.insert(key.clone(), obj.clone());
        self.emit("ADDED", &key, &obj);
        Ok(obj)
    }

    /// Replaces an object. A non-empty `metadata.resourceVersion` in `obj` must match.
    pub fn update(&mut self, key: Key, mut obj: Value) -> Result<Value, StoreError> {
        let old = self.objects.get(&key).ok_or(StoreError::NotFound)?;
        if let Some(rv) = obj["metadata"]["resourceVersion"].as_str() {
            if !rv.is_empty() && Some(rv) != old["metadata"]["resourceVersion"].as_str() {
                return Err(StoreError::Conflict);
            }
        }
        obj["metadata"]["uid"] = old["metadata"]["uid"].clone();
        obj["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
        self.stamp(&key, &mut obj, "v1");
        self.objects.insert(key.clone(), obj.clone());
        self.emit("MODIFIED", &key, &obj);
        Ok(obj)
    }

    /// Creates or replaces an object, ignoring resource versions (for seeding and controllers).
    pub fn put(&mut self, key: Key, mut obj: Value) -> Value {
        if self.objects.contains_key(&key) {
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            self.update(key, obj)
                .unwrap_or_else(|_| unreachable!("present, unversioned"))
        } else {
            self.create(key, obj)
                .unwrap_or_else(|_| unreachable!("absent"))
        }
    }

    /// Deletes an object.
    pub fn delete(&mut self, key: &Key) -> Result<Value, StoreError> {
        let obj = self.objects.remove(key).ok_or(StoreError::NotFound)?;
        self.rv += 1;
        self.emit("DELETED", key, &obj);
        Ok(obj)
    }
}

/// Records a write by `manager` in `metadata.managedFields`, as the API server's field manager
/// does for every write since 1.18 (server-side apply's bookkeeping, operation `Update`): one
/// entry per manager and API version, its time the write's. The field set itself is left
/// empty.
pub fn record_manager(obj: &mut Value, manager: &str, api_version: &str) {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    let mut entries = obj["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    entries.retain(|e| !(e["manager"] == manager && e["apiVersion"] == api_version));
    entries.push(json!({
        "manager": manager, "operation": "Update", "apiVersion": api_version,
        "time": now_rfc3339(), "fieldsType": "FieldsV1", "fieldsV1": {},
    }));
    obj["metadata"]["managedFields"] = Value::Array(entries);
}

/// Applies a JSON merge patch (RFC 7386) to `target`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target
                .as_object_mut()
                .unwrap_or_else(|| unreachable!("made an object"));
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Applies a JSON Patch (RFC 6902: add, remove, replace, test) to `target`, all or nothing,
/// as the API server does for `application/json-patch+json`; the error says which operation
/// failed.
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    let mut doc = target.clone();
    for (i, op) in ops
        .as_array()
        .ok_or("a JSON Patch is an array")?
        .iter()
        .enumerate()
    {
        let path = op["path"]
            .as_str()
            .ok_or(format!("operation {i} has no path"))?;
        let tokens: Vec<String> = path
            .split('/')
            .skip(1)
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect();
        let (last, parents) = tokens
            .split_last()
            .ok_or(format!("operation {i}: empty path"))?;
        let mut parent = &mut doc;
        for t in parents {
            parent = match parent {
                Value::Object(m) => m.get_mut(t),
                Value::Array(a) => t.parse::<usize>().ok().and_then(|n| a.get_mut(n)),
                _ => None,
            }
            .ok_or(format!("operation {i}: {path}: no such path"))?;
        }
        let value = op["value"].clone();
        let done = match (op["op"].as_str(), parent) {
            (Some("test"), p) => {
                let found = match p {
                    Value::Object(m) => m.get(last),
                    Value::Array(a) => last.parse::<usize>().ok().and_then(|n| a.get(n)),
                    _ => None,
                };
                found == Some(&value)
            }
            (Some("add"), Value::Object(m)) => {
                m.insert(last.clone(), value);
                true
            }
            (Some("add"), Value::Array(a)) if last == "-" => {
                a.push(value);
                true
            }
            (Some("add"), Value::Array(a)) => match last.parse::<usize>() {
                Ok(n) if n <= a.len() => {
                    a.insert(n, value);
                    true
                }
                _ => false,
            },
            (Some("remove"), Value::Object(m)) => m.remove(last).is_some(),
            (Some("remove"), Value::Array(a)) => match last.parse::<usize>() {
                Ok(n) if n < a.len() => {
                    a.remove(n);
                    true
                }
                _ => false,
            },
            (Some("replace"), Value::Object(m)) if m.contains_key(last) => {
                m.insert(last.clone(), value);
                true
            }
            _ => false,
        };
        if !done {
            return Err(format!("operation {i} ({}) on {path} failed", op["op"]));
        }
    }
    *target = doc;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_patch_is_all_or_nothing() {
        let mut obj = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"taints": [{"key": "x"}, {"key": "y"}]}});
        let ops = json!([
            {"op": "add", "path": "/metadata/labels/k8s.io~1pool", "value": "p"},
            {"op": "test", "path": "/spec/taints/1/key", "value": "y"},
            {"op": "remove", "path": "/spec/taints/1"},
        ]);
        json_patch(&mut obj, &ops).expect("applies");
        assert_eq!(obj["metadata"]["labels"]["k8s.io/pool"], "p");
        assert_eq!(obj["spec"]["taints"], json!([{"key": "x"}]));
        let stale = json!([
            {"op": "add", "path": "/metadata/labels/b", "value": "2"},
            {"op": "test", "path": "/spec/taints/1/key", "value": "y"},
        ]);
        assert!(json_patch(&mut obj, &stale).is_err());
        assert!(obj["metadata"]["labels"]["b"].is_null(), "nothing applied");
    }

    #[test]
    fn create_update_conflict_delete() {
        let mut s = Store::new();
        let key = Key::new(Kind::ConfigMap, "kube-system", "a");
        let obj = s
            .create(key.clone(), json!({"data": {"x": "1"}}))
            .expect("create");
        assert_eq!(obj["kind"], "ConfigMap");
        assert_eq!(
            s.create(key.clone(), json!({})),
            Err(StoreError::AlreadyExists)
        );
        let mut stale = obj.clone();
        stale["metadata"]["resourceVersion"] = json!("1");
        assert_eq!(
            s.update(key.clone(), stale).err(),
            Some(StoreError::Conflict)
        );
        s.update(key.clone(), obj).expect("fresh update");
        s.delete(&key).expect("delete");
        assert_eq!(s.delete(&key).err(), Some(StoreError::NotFound));
    }

    #[test]
    fn merge_patch_rules() {
        let mut v = json!({"a": {"b": 1, "c": 2}, "d": [1]});
        merge_patch(&mut v, &json!({"a": {"b": null, "e": 3}, "d": [2]}));
        assert_eq!(v, json!({"a": {"c": 2, "e": 3}, "d": [2]}));
    }
}
