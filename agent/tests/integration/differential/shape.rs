//! Comparing two API answers by shape: the JSON key structure and value types, the `kind` and
//! `apiVersion` of every object, `Status` reason and code, and the few values whose meaning
//! differs by version (CSR conditions, discovery's group versions, kubeadm-config's embedded
//! documents); never values that differ between any two servers (uids, timestamps,
//! resourceVersions, generated names, certificates).

use serde_json::{Map, Value};

/// Where the two answers differ, one line per difference (empty when they agree).
pub fn differences(path: &str, real: &Value, standin: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let (real, standin) = (normalized(real), normalized(standin));
    compare(path, &real, &standin, &mut out);
    meaning(&real, &standin, &mut out);
    if is_discovery(path) {
        discovery(&real, &standin, &mut out);
    }
    out
}

/// Keys that are data rather than structure get one placeholder: `jws-kubeconfig-<token id>`.
fn normalized(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = if k.starts_with("jws-kubeconfig-") {
                        "jws-kubeconfig-<id>".to_owned()
                    } else {
                        k.clone()
                    };
                    (key, normalized(v))
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalized).collect()),
        other => other.clone(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_discovery(path: &str) -> bool {
    let p = path.trim_end_matches('/');
    p == "/api"
        || p == "/apis"
        || p == "/api/v1"
        || (p.starts_with("/apis/") && p.matches('/').count() <= 3)
}

fn compare(at: &str, real: &Value, standin: &Value, out: &mut Vec<String>) {
    match (real, standin) {
        (Value::Object(r), Value::Object(s)) => compare_objects(at, r, s, out),
        (Value::Array(r), Value::Array(s)) => compare_arrays(at, r, s, out),
        (r, s) if type_name(r) != type_name(s) => out.push(format!(
            "{at}: real is {}, stand-in is {}",
            describe(r),
            describe(s)
        )),
        _ => {}
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) if s.len() <= 60 => format!("string {s:?}"),
        other => type_name(other).to_owned(),
    }
}

fn compare_objects(
    at: &str,
    r: &Map<String, Value>,
    s: &Map<String, Value>,
    out: &mut Vec<String>,
) {
    for (k, rv) in r {
        let here = format!("{at}.{k}");
        match s.get(k) {
            None => out.push(format!(
                "{here}: only the real server has it ({})",
                describe(rv)
            )),
            // The managed-fields set mirrors the object itself, which is compared already.
            Some(_) if k == "fieldsV1" => {}
            Some(sv) => compare(&here, rv, sv, out),
        }
        // The type of an object (a managedFields entry's apiVersion is the writer's).
        if (k == "kind" || k == "apiVersion") && r.contains_key("kind") {
            if let (Some(a), Some(b)) = (rv.as_str(), s.get(k).and_then(Value::as_str)) {
                if a != b {
                    out.push(format!("{here}: real {a:?}, stand-in {b:?}"));
                }
            }
        }
    }
    for (k, sv) in s {
        if !r.contains_key(k) {
            out.push(format!(
                "{at}.{k}: only the stand-in has it ({})",
                describe(sv)
            ));
        }
    }
}

/// Arrays compare by the union of their elements' shapes (counts and order are values), and
/// by emptiness: one side empty and the other not is a difference.
fn compare_arrays(at: &str, r: &[Value], s: &[Value], out: &mut Vec<String>) {
    if r.is_empty() != s.is_empty() {
        out.push(format!(
            "{at}: real has {} element(s), stand-in {}",
            r.len(),
            s.len()
        ));
        return;
    }
    if is_discovery_list(at) {
        return; // discovery() compares these entry by entry
    }
    compare(&format!("{at}[]"), &union(r), &union(s), out);
}

fn is_discovery_list(at: &str) -> bool {
    at.ends_with(".groups") || at.ends_with(".resources")
}

/// One value with every key any element has (objects merged recursively; first type wins).
fn union(items: &[Value]) -> Value {
    let mut acc = Value::Null;
    for item in items {
        merge(&mut acc, item);
    }
    acc
}

fn merge(acc: &mut Value, v: &Value) {
    if acc.is_null() {
        *acc = v.clone();
        return;
    }
    if let (Some(a), Value::Object(m)) = (acc.as_object_mut(), v) {
        for (k, x) in m {
            merge(a.entry(k.clone()).or_insert(Value::Null), x);
        }
    }
}

/// Values that carry meaning: Status reason and code, and a CSR's conditions and certificate.
fn meaning(real: &Value, standin: &Value, out: &mut Vec<String>) {
    if real["kind"] == "Status" || standin["kind"] == "Status" {
        for k in ["status", "reason", "code"] {
            if real[k] != standin[k] {
                out.push(format!(
                    "Status.{k}: real {}, stand-in {}",
                    real[k], standin[k]
                ));
            }
        }
    }
    let real_csrs = csr_objects(real);
    for s in csr_objects(standin) {
        let name = &s["metadata"]["name"];
        let Some(r) = real_csrs.iter().find(|r| r["metadata"]["name"] == *name) else {
            out.push(format!("CSR {name}: the real server's answer lacks it"));
            continue;
        };
        let (rc, sc) = (csr_state(r), csr_state(&s));
        if rc != sc {
            out.push(format!("CSR {name} state: real {rc}, stand-in {sc}"));
        }
    }
    embedded_documents(real, standin, out);
}

fn csr_objects(v: &Value) -> Vec<Value> {
    if v["kind"] == "CertificateSigningRequest" {
        return vec![v.clone()];
    }
    if v["object"]["kind"] == "CertificateSigningRequest" {
        return vec![v["object"].clone()];
    }
    v["items"].as_array().cloned().unwrap_or_default()
}

/// `signerName usages | type/status/reason... | issued`.
pub fn csr_state(csr: &Value) -> String {
    let conditions: Vec<String> = csr["status"]["conditions"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    let s = |k: &str| c[k].as_str().unwrap_or("-").to_owned();
                    format!("{}/{}/{}", s("type"), s("status"), s("reason"))
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "{} {} | {} | {}",
        csr["spec"]["signerName"].as_str().unwrap_or("-"),
        csr["spec"]["usages"],
        if conditions.is_empty() {
            "no conditions".to_owned()
        } else {
            conditions.join(",")
        },
        if csr["status"]["certificate"].is_null() {
            "not issued"
        } else {
            "issued"
        }
    )
}

/// ConfigMap values that are YAML documents (kubeadm-config's ClusterConfiguration and
/// ClusterStatus, kubelet-config's KubeletConfiguration): same apiVersion, kind and top-level
/// keys.
fn embedded_documents(real: &Value, standin: &Value, out: &mut Vec<String>) {
    let (Some(r), Some(s)) = (real["data"].as_object(), standin["data"].as_object()) else {
        return;
    };
    for (key, rv) in r {
        let (Some(a), Some(b)) = (
            rv.as_str().and_then(yaml_map),
            s.get(key).and_then(Value::as_str).and_then(yaml_map),
        ) else {
            continue;
        };
        for field in ["apiVersion", "kind"] {
            if a.get(field) != b.get(field) {
                out.push(format!(
                    "data.{key}.{field}: real {:?}, stand-in {:?}",
                    a.get(field),
                    b.get(field)
                ));
            }
        }
        let kubeadm = a.get("apiVersion").is_some_and(|v| {
            v.starts_with("kubeadm.k8s.io/") || v.starts_with("kubelet.config.k8s.io/")
        });
        let (ka, kb): (Vec<&String>, Vec<&String>) = (a.keys().collect(), b.keys().collect());
        if kubeadm && ka != kb {
            out.push(format!(
                "data.{key} top-level keys: real {ka:?}, stand-in {kb:?}"
            ));
        }
    }
}

/// A YAML mapping with an `apiVersion`, top-level scalars as text.
fn yaml_map(text: &str) -> Option<std::collections::BTreeMap<String, String>> {
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).ok()?;
    let map = doc.as_mapping()?;
    map.get("apiVersion")?;
    Some(
        map.iter()
            .filter_map(|(k, v)| {
                let k = k.as_str()?.to_owned();
                let v = v.as_str().map(str::to_owned).unwrap_or_default();
                Some((k, v))
            })
            .collect(),
    )
}

/// Discovery: every group the stand-in lists must be listed by the real server with the same
/// versions and preferred version; every resource it lists must be there with the same kind,
/// scope, group and version, and the same entry shape.
fn discovery(real: &Value, standin: &Value, out: &mut Vec<String>) {
    for (list, key) in [("groups", "name"), ("resources", "name")] {
        let (Some(r), Some(s)) = (real[list].as_array(), standin[list].as_array()) else {
            continue;
        };
        for entry in s {
            let name = entry[key].as_str().unwrap_or_default();
            let Some(found) = r.iter().find(|e| e[key] == entry[key]) else {
                out.push(format!(
                    "{list}: the stand-in lists {name:?}, the real server does not"
                ));
                continue;
            };
            compare(&format!(".{list}[{name}]"), found, entry, out);
            for field in [
                "versions",
                "preferredVersion",
                "kind",
                "namespaced",
                "group",
                "version",
            ] {
                if found[field] != entry[field] {
                    out.push(format!(
                        "{list}[{name}].{field}: real {}, stand-in {}",
                        found[field], entry[field]
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_do_not_count_keys_and_types_do() {
        let a = json!({"kind": "ConfigMap", "metadata": {"uid": "1", "resourceVersion": "5"}, "data": {"jws-kubeconfig-abc": "x"}});
        let b = json!({"kind": "ConfigMap", "metadata": {"uid": "2", "resourceVersion": "9"}, "data": {"jws-kubeconfig-zzz": "y"}});
        assert!(differences("/x", &a, &b).is_empty());
        let c = json!({"kind": "ConfigMap", "metadata": {"uid": 2}, "data": {}});
        let d = differences("/x", &a, &c);
        assert!(d.iter().any(|l| l.contains("metadata.uid")), "{d:?}");
        assert!(d.iter().any(|l| l.contains("resourceVersion")), "{d:?}");
    }

    #[test]
    fn status_reason_and_csr_conditions_count() {
        let real =
            json!({"kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403});
        let standin =
            json!({"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404});
        assert_eq!(differences("/x", &real, &standin).len(), 2);
        let csr = |t: &str| json!({"kind": "CertificateSigningRequest", "spec": {}, "status": {"conditions": [{"type": t}]}});
        assert!(!differences("/x", &csr("Approved"), &csr("Failed")).is_empty());
    }
}
