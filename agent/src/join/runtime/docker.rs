//! Docker's `daemon.json`, merged into what the machine had: runtimes (nvidia), proxies,
//! registry CAs, a chosen storage or log driver stay. The cgroup driver is set to systemd (the
//! kubelet's); mirrors and insecure registries are added to any already there; log and storage
//! defaults are filled only where the file says nothing. A file that is not a JSON object is
//! replaced, with a notice; the journal keeps its bytes for reset.

use crate::sources::values::RuntimeValues;
use serde_json::{json, Map, Value};

/// The merged file and why the original was replaced, when it was.
#[derive(Clone, Debug)]
pub struct Merged {
    /// The new daemon.json.
    pub bytes: Vec<u8>,
    /// Set when the original could not be merged into.
    pub notice: Option<String>,
}

/// Merges node-attach's settings into `original` (None: no file yet).
pub fn merge(original: Option<&[u8]>, values: &RuntimeValues) -> Merged {
    let (mut doc, notice) = match original.map(serde_json::from_slice::<Value>) {
        None => (Map::new(), None),
        Some(Ok(Value::Object(m))) => (m, None),
        Some(_) if original.is_some_and(|b| b.iter().all(u8::is_ascii_whitespace)) => {
            (Map::new(), None)
        }
        Some(_) => (
            Map::new(),
            Some("/etc/docker/daemon.json was replaced (it is not a JSON object); its bytes are kept in the journal and reset restores them".to_owned()),
        ),
    };
    let mut opts: Vec<Value> = doc
        .get("exec-opts")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    opts.retain(|o| {
        !o.as_str()
            .is_some_and(|s| s.starts_with("native.cgroupdriver="))
    });
    opts.push(json!("native.cgroupdriver=systemd"));
    doc.insert("exec-opts".into(), Value::Array(opts));
    for (key, default) in [
        ("log-driver", json!("json-file")),
        ("log-opts", json!({"max-size": "100m", "max-file": "5"})),
        ("storage-driver", json!("overlay2")),
    ] {
        doc.entry(key).or_insert(default);
    }
    let mirrors: Vec<&String> = values
        .registry_mirrors
        .iter()
        .filter(|(host, _)| *host == "docker.io")
        .flat_map(|(_, m)| m)
        .collect();
    union(&mut doc, "registry-mirrors", mirrors);
    union(
        &mut doc,
        "insecure-registries",
        values.insecure_registries.iter().collect(),
    );
    if let Some(root) = &values.data_root {
        doc.insert("data-root".into(), json!(root));
    }
    let mut text = serde_json::to_string_pretty(&Value::Object(doc)).unwrap_or_default();
    text.push('\n');
    Merged {
        bytes: text.into_bytes(),
        notice,
    }
}

fn union(doc: &mut Map<String, Value>, key: &str, add: Vec<&String>) {
    if add.is_empty() {
        return;
    }
    let list = doc.entry(key).or_insert_with(|| json!([]));
    if !list.is_array() {
        *list = json!([]);
    }
    if let Value::Array(items) = list {
        for a in add {
            if !items.iter().any(|i| i == a.as_str()) {
                items.push(json!(a));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_settings_stay_and_the_driver_becomes_systemd() {
        let original = br#"{"exec-opts": ["native.cgroupdriver=cgroupfs", "other=1"],
            "runtimes": {"nvidia": {"path": "nvidia-container-runtime"}}, "default-runtime": "nvidia",
            "storage-driver": "devicemapper", "registry-mirrors": ["https://a.example"],
            "proxies": {"http-proxy": "http://proxy:3128"}}"#;
        let mut v = RuntimeValues::default();
        v.registry_mirrors.insert(
            "docker.io".into(),
            vec!["https://b.example".into(), "https://a.example".into()],
        );
        let m = merge(Some(original), &v);
        let doc: Value = serde_json::from_slice(&m.bytes).expect("json");
        assert_eq!(
            doc["exec-opts"],
            json!(["other=1", "native.cgroupdriver=systemd"])
        );
        assert_eq!(doc["default-runtime"], "nvidia");
        assert_eq!(
            doc["runtimes"]["nvidia"]["path"],
            "nvidia-container-runtime"
        );
        assert_eq!(doc["storage-driver"], "devicemapper");
        assert_eq!(
            doc["registry-mirrors"],
            json!(["https://a.example", "https://b.example"])
        );
        assert_eq!(doc["proxies"]["http-proxy"], "http://proxy:3128");
        assert!(m.notice.is_none());
        assert_eq!(
            merge(Some(&m.bytes), &v).bytes,
            m.bytes,
            "merging again changes nothing"
        );
    }

    #[test]
    fn a_broken_file_is_replaced_with_a_notice() {
        let m = merge(Some(b"{not json"), &RuntimeValues::default());
        assert!(m.notice.is_some());
        let doc: Value = serde_json::from_slice(&m.bytes).expect("json");
        assert_eq!(doc["exec-opts"], json!(["native.cgroupdriver=systemd"]));
    }
}
