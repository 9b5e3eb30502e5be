//! `reset --report FILE`: every path reset restored, removed or kept, with its SHA-256 before
//! and after and the reason, checked against the tree itself: each file join changed is listed
//! as restored with the pre-join digest after and the joined digest before, each path join or
//! the kubelet added is listed as removed (or lies under a listed removed directory), nothing
//! untouched is listed, and the report to the callback carries the same audit's counts and
//! digest. A dry run lists what it would do and changes nothing.

use crate::join::{join, Node};
use crate::support::*;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// Path → (kind, sha256 for files / link target / "") of every path under `dir`.
fn tree(dir: &Path) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let rel = format!("/{}", p.strip_prefix(dir).expect("prefix").display());
            let meta = std::fs::symlink_metadata(&p).expect("stat");
            let entry = if meta.file_type().is_symlink() {
                let to = std::fs::read_link(&p).expect("link");
                ("symlink".to_owned(), to.display().to_string())
            } else if meta.is_file() {
                let sha: String = Sha256::digest(std::fs::read(&p).expect("read"))
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                ("file".to_owned(), sha)
            } else if meta.is_dir() {
                stack.push(p.clone());
                ("dir".to_owned(), String::new())
            } else {
                ("special".to_owned(), String::new())
            };
            out.insert(rel, entry);
        }
    }
    out
}

fn plant(node: &Node, path: &str, text: &str, mode: u32) {
    let real = node.path(path);
    std::fs::create_dir_all(real.parent().expect("parent")).expect("mkdir");
    std::fs::write(&real, text).expect("write");
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn sha_of(v: &serde_json::Value) -> Option<&str> {
    v["sha256"].as_str()
}

/// The report's entries by path.
fn entries(report: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    report["paths"]
        .as_array()
        .expect("paths")
        .iter()
        .map(|e| (e["path"].as_str().expect("path").to_owned(), e.clone()))
        .collect()
}

#[test]
fn the_reset_report_lists_every_path_with_its_digests_and_reason() {
    let cp = control_plane();
    cp.add_values(
        "audit-token",
        ValuesEntry {
            json: serde_json::json!({
                "apiVersion": "node-attach.io/v1", "kind": "ClusterValues",
                "apiServerEndpoints": [cp.endpoint()], "bootstrapToken": TOKEN,
                "caCertHashes": [cp.ca_pin()],
                "callbackURL": format!("{}/callback/audit-path", cp.url()),
            }),
            ack_text: String::new(),
        },
    );
    let mut node = Node::new();
    plant(
        &node,
        "/etc/containerd/config.toml",
        "# the image's own\n",
        0o644,
    );
    plant(&node, "/etc/kubernetes/pki/ca.crt", "an older CA\n", 0o644);
    plant(
        &node,
        "/etc/sysctl.d/10-image.conf",
        "vm.swappiness = 10\n",
        0o644,
    );
    // The CNI state directory is the image's (a plugin fills it later): reset empties it.
    std::fs::create_dir_all(node.path("/var/lib/cni")).expect("mkdir");
    let pre = tree(node.dir.path());
    node.kubelet();
    let ca = write(
        &std::env::temp_dir(),
        &format!("audit-ca-{}.pem", std::process::id()),
        &cp.ca_pem(),
    );
    let url = format!("{}/v1/values/{{token}}", cp.url());
    let args: Vec<String> = [
        "join",
        "--root",
        &node.root(),
        "--openapi-token",
        "audit-token",
        "--values-url",
        &url,
        "--values-ca-file",
        &ca.display().to_string(),
        "--node-name",
        "audited-1",
        "--node-wait-timeout",
        "30s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    join(&args, &[]).expect_code(0);
    // What the kubelet and a CNI plugin leave at the documented paths.
    plant(
        &node,
        "/var/lib/kubelet/pods/p1/volumes/empty-dir/data",
        "pod data\n",
        0o644,
    );
    plant(
        &node,
        "/var/lib/cni/networks/bridge/10.0.0.2",
        "c1\n",
        0o644,
    );
    let joined = tree(node.dir.path());
    let reports = tempfile::tempdir().expect("tmp");

    // A dry run first: what it would do, and nothing changes.
    let dry = reports.path().join("dry.json");
    let root = node.root();
    let dry_run = run_with(
        &[
            "reset",
            "--root",
            &root,
            "--dry-run",
            "--report",
            &dry.display().to_string(),
        ],
        &[],
        Duration::from_secs(60),
    );
    dry_run.expect_code(0);
    assert_eq!(tree(node.dir.path()), joined, "a dry run changed the tree");
    let would: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&dry).expect("dry report")).expect("JSON");
    let would = entries(&would);
    let config = &would["/etc/containerd/config.toml"];
    assert_eq!(config["action"], "would-restore", "{config}");
    assert_eq!(
        sha_of(&config["after"]),
        Some(pre["/etc/containerd/config.toml"].1.as_str())
    );
    assert_eq!(
        would["/var/lib/cni/networks/bridge/10.0.0.2"]["action"],
        "would-remove"
    );

    let file = reports.path().join("report.json");
    let reset = run_with(
        &[
            "reset",
            "--root",
            &root,
            "--report",
            &file.display().to_string(),
        ],
        &[],
        Duration::from_secs(60),
    );
    reset.expect_code(0);
    assert_eq!(tree(node.dir.path()), pre, "reset did not restore the tree");
    let meta = std::fs::metadata(&file).expect("report");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("report")).expect("JSON");
    let listed = entries(&report);

    // Every changed pre-existing file: restored, joined digest before, pre-join digest after.
    for (path, (kind, sha)) in &pre {
        let changed = joined.get(path) != Some(&(kind.clone(), sha.clone()));
        match (changed, listed.get(path)) {
            (true, Some(e)) => {
                assert_eq!(e["action"], "restored", "{path}: {e}");
                if kind == "file" {
                    assert_eq!(
                        sha_of(&e["before"]),
                        Some(joined[path].1.as_str()),
                        "{path}"
                    );
                    assert_eq!(sha_of(&e["after"]), Some(sha.as_str()), "{path}");
                }
                assert!(!e["reason"].as_str().unwrap_or("").is_empty(), "{path}");
            }
            (true, None) => panic!("{path} was restored but is not listed"),
            (false, Some(e)) => assert_eq!(e["action"], "kept", "{path} untouched: {e}"),
            (false, None) => {}
        }
    }
    // Every path join or the kubelet added: removed (itself, or a listed removed directory
    // above it), its digest before as it was, gone after.
    let removed_dirs: Vec<&String> = listed
        .iter()
        .filter(|(_, e)| e["action"] == "removed" && e["before"]["type"] == "dir")
        .map(|(p, _)| p)
        .collect();
    for (path, (kind, sha)) in joined.iter().filter(|(p, _)| !pre.contains_key(*p)) {
        match listed.get(path) {
            Some(e) => {
                assert_eq!(e["action"], "removed", "{path}: {e}");
                assert_eq!(e["after"]["type"], "absent", "{path}");
                assert_eq!(e["before"]["type"], kind.as_str(), "{path}");
                if kind == "file" {
                    assert_eq!(sha_of(&e["before"]), Some(sha.as_str()), "{path}");
                }
            }
            None => assert!(
                removed_dirs
                    .iter()
                    .any(|d| path.starts_with(&format!("{d}/"))),
                "{path} was removed but is not listed"
            ),
        }
    }
    let pod = &listed["/var/lib/kubelet/pods/p1/volumes/empty-dir/data"];
    assert!(
        pod["reason"]
            .as_str()
            .unwrap_or("")
            .contains("kubelet's state"),
        "{pod}"
    );
    let state = &listed["/var/lib/node-attach"];
    assert_eq!(state["action"], "removed");
    assert!(!listed.contains_key("/etc/sysctl.d/10-image.conf"));

    // The callback got the audit's counts and the digest of the same list.
    let calls = cp.callbacks();
    let body = &calls
        .iter()
        .rev()
        .find(|c| c.path.ends_with("audit-path") && c.body.contains("\"removed\""))
        .expect("the reset report reached the callback")
        .body;
    let sent: serde_json::Value = serde_json::from_str(body).expect("JSON");
    let audit = &sent["audit"];
    let paths = report["paths"].as_array().expect("paths");
    assert_eq!(audit["paths_total"], paths.len(), "{audit}");
    let digest: String = Sha256::digest(serde_json::to_vec(paths).expect("json"))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(audit["paths_sha256"], digest.as_str());
    let restored = paths.iter().filter(|e| e["action"] == "restored").count();
    assert_eq!(audit["counts"]["restored"], restored);
    assert!(audit["paths"].as_array().is_some_and(|a| !a.is_empty()));
}
