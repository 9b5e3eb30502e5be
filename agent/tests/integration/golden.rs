//! Golden files: every file join renders, for a few representative joins, compared byte for
//! byte (after masking what differs per run: the endpoint's port, certificates and keys, the
//! binary's path, dated names) with `agent/tests/golden/<case>/`. A change in output is then a
//! visible diff in review. `NODE_ATTACH_UPDATE_GOLDEN=1 cargo test --test integration golden`
//! rewrites them.

use crate::join::{join, tree_with_bytes, Node};
use crate::support::*;
use std::path::{Path, PathBuf};

fn golden_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(case)
}

/// Masks what differs between runs and machines.
fn normalize(text: &str, cp: &TestControlPlane) -> String {
    let mut out = Vec::new();
    let mut in_pem = false;
    for line in text.lines() {
        if line.starts_with("-----BEGIN ") {
            in_pem = true;
            out.push(line.to_owned());
            continue;
        }
        if line.starts_with("-----END ") {
            in_pem = false;
            out.push("<base64>".to_owned());
            out.push(line.to_owned());
            continue;
        }
        if in_pem {
            continue;
        }
        let mut line = line.replace(&cp.endpoint(), "ENDPOINT");
        line = line.replace(&cp.ca_pin(), "sha256:PIN");
        line = line.replace(
            binary().to_str().unwrap_or("-"),
            "/usr/local/bin/node-attach",
        );
        for key in [
            "certificate-authority-data: ",
            "client-certificate-data: ",
            "client-key-data: ",
        ] {
            if let Some(i) = line.find(key) {
                line = format!("{}{key}<base64>", &line[..i]);
            }
        }
        out.push(mask_dates(&line));
    }
    let mut joined = out.join("\n");
    if text.ends_with('\n') {
        joined.push('\n');
    }
    joined
}

/// `kubelet-client-2026-12-01-21-53-43.pem` → `kubelet-client-DATE.pem`.
fn mask_dates(line: &str) -> String {
    let Some(i) = line.find("kubelet-client-20") else {
        return line.to_owned();
    };
    let start = i + "kubelet-client-".len();
    let end = start + "2026-12-01-21-53-43".len();
    if line.len() < end {
        return line.to_owned();
    }
    format!("{}DATE{}", &line[..start], &line[end..])
}

/// Compares the rendered files under `root` with the case's golden files (or rewrites them).
fn check(case: &str, root: &Path, cp: &TestControlPlane) {
    let update = std::env::var_os("NODE_ATTACH_UPDATE_GOLDEN").is_some();
    let dir = golden_dir(case);
    let mut seen = Vec::new();
    let mut failures = Vec::new();
    for (rel, mode, bytes) in tree_with_bytes(root) {
        let path = root.join(&rel);
        if rel.starts_with("var/lib/node-attach/backup") || !path.is_file() || path.is_symlink() {
            continue;
        }
        let Ok(text) = String::from_utf8(bytes) else {
            continue;
        };
        let name = mask_dates(&rel);
        let actual = format!("# mode {mode:04o}\n{}", normalize(&text, cp));
        let file = dir.join(&name);
        seen.push(name.clone());
        if update {
            std::fs::create_dir_all(file.parent().expect("parent")).expect("golden dir");
            std::fs::write(&file, &actual).expect("write golden");
            continue;
        }
        let expected = std::fs::read_to_string(&file).unwrap_or_default();
        if expected != actual {
            let diff = similar::TextDiff::from_lines(&expected, &actual);
            failures.push(format!(
                "{name}:\n{}",
                diff.unified_diff().context_radius(2)
            ));
        }
    }
    let mut stale = Vec::new();
    collect(&dir, &dir, &mut stale);
    stale.retain(|g| !seen.contains(g));
    if update {
        for g in &stale {
            std::fs::remove_file(dir.join(g)).expect("remove stale golden");
        }
        return;
    }
    assert!(
        stale.is_empty(),
        "golden files no longer rendered: {stale:?}"
    );
    assert!(
        failures.is_empty(),
        "rendered files differ from agent/tests/golden/{case} (NODE_ATTACH_UPDATE_GOLDEN=1 rewrites them):\n{}",
        failures.join("\n")
    );
}

fn collect(base: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(base, &p, out);
        } else if let Ok(rel) = p.strip_prefix(base) {
            out.push(rel.display().to_string());
        }
    }
}

/// The cluster values spelled out, as the scale-out form gives them.
fn token_flags(cp: &TestControlPlane) -> Vec<String> {
    let pin = cp.ca_pin();
    let flags = [
        "--token",
        TOKEN,
        "--endpoint",
        &cp.endpoint(),
        "--cluster-dns",
        "10.96.0.10",
    ];
    let mut out: Vec<String> = flags.map(String::from).to_vec();
    out.extend(["--discovery-token-ca-cert-hash".to_owned(), pin]);
    out
}

fn joined(cp: &TestControlPlane, node: &Node, name: &str, extra: &[&str]) {
    let mut args: Vec<String> = ["join", "--root", &node.root()].map(String::from).to_vec();
    args.extend(token_flags(cp));
    args.extend(["--node-name", name, "--node-ip", "10.0.0.21"].map(String::from));
    args.extend(["--node-wait-timeout", "30s"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    join(&args, &[]).expect_code(0);
}

#[test]
fn containerd_join_renders_its_golden_files() {
    let cp = control_plane();
    let mut node = Node::new();
    node.kubelet();
    let labels = [
        "--labels",
        "workload_type=cpu",
        "--taints",
        "dedicated=gpu:NoSchedule",
    ];
    joined(&cp, &node, "golden-containerd", &labels);
    check("containerd", node.dir.path(), &cp);
}

#[test]
fn docker_join_renders_its_golden_files() {
    let cp = control_plane();
    let mut node = Node::new();
    node.kubelet();
    joined(
        &cp,
        &node,
        "golden-docker",
        &["--docker-version", "20.10.24"],
    );
    check("docker", node.dir.path(), &cp);
}

/// An existing containerd configuration (an nvidia runtime, a proxy's registry CA, a debug
/// level) merged, and registry mirrors from the values rendered as hosts.toml files.
#[test]
fn a_merged_containerd_configuration_and_mirrors_render_their_golden_files() {
    let cp = control_plane();
    cp.add_values(
        "golden-openapi-token",
        ValuesEntry {
            json: serde_json::json!({
                "apiVersion": "node-attach.io/v1", "kind": "ClusterValues",
                "apiServerEndpoints": [cp.endpoint()], "bootstrapToken": TOKEN,
                "caCertHashes": [cp.ca_pin()], "clusterDNS": ["10.96.0.10"],
                "runtime": {"name": "containerd",
                            "registryMirrors": {"docker.io": ["https://mirror.example.com"]},
                            "insecureRegistries": ["10.0.0.5:5000"]},
                "kubelet": {"maxPods": 64, "systemReserved": {"cpu": "100m"}},
            }),
            ack_text: String::new(),
        },
    );
    let mut node = Node::new();
    let existing = "version = 2\n[debug]\n  level = \"info\"\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.nvidia]\n  runtime_type = \"io.containerd.runc.v2\"\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.nvidia.options]\n    BinaryName = \"/usr/bin/nvidia-container-runtime\"\n";
    std::fs::create_dir_all(node.path("/etc/containerd")).expect("dir");
    std::fs::write(node.path("/etc/containerd/config.toml"), existing).expect("config");
    node.kubelet();
    let ca = write(node.dir.path(), "values-ca.pem", &cp.ca_pem());
    let url = format!("{}/v1/values/{{token}}", cp.url());
    let args = [
        "join",
        "--root",
        &node.root(),
        "--openapi-token",
        "golden-openapi-token",
    ];
    let mut args: Vec<String> = args.map(String::from).to_vec();
    args.extend([
        "--values-url".into(),
        url,
        "--values-ca-file".into(),
        ca.display().to_string(),
    ]);
    args.extend(["--node-name", "golden-merged", "--node-ip", "10.0.0.23"].map(String::from));
    args.extend(["--node-wait-timeout", "30s"].map(String::from));
    join(&args, &[]).expect_code(0);
    std::fs::remove_file(node.path("/values-ca.pem")).expect("not a rendered file");
    check("containerd-merged", node.dir.path(), &cp);
}

/// An existing daemon.json (an nvidia runtime as the default, a proxy, a registry mirror, a
/// storage driver) merged, not replaced; reset gives its bytes back.
#[test]
fn a_merged_docker_configuration_renders_its_golden_files_and_reset_restores_it() {
    let cp = control_plane();
    let mut node = Node::new();
    let existing = r#"{
  "default-runtime": "nvidia",
  "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "runtimeArgs": []}},
  "proxies": {"http-proxy": "http://proxy.example:3128", "no-proxy": "10.0.0.0/8"},
  "registry-mirrors": ["https://mirror.example.com"],
  "storage-driver": "overlay2",
  "log-level": "warn"
}
"#;
    std::fs::create_dir_all(node.path("/etc/docker")).expect("dir");
    std::fs::write(node.path("/etc/docker/daemon.json"), existing).expect("daemon.json");
    node.kubelet();
    joined(
        &cp,
        &node,
        "golden-docker-merged",
        &["--docker-version", "20.10.24"],
    );
    let merged: serde_json::Value = serde_json::from_slice(
        &std::fs::read(node.path("/etc/docker/daemon.json")).expect("merged"),
    )
    .expect("json");
    assert_eq!(merged["default-runtime"], "nvidia");
    assert_eq!(
        merged["runtimes"]["nvidia"]["path"],
        "nvidia-container-runtime"
    );
    assert_eq!(merged["proxies"]["http-proxy"], "http://proxy.example:3128");
    assert_eq!(
        merged["registry-mirrors"],
        serde_json::json!(["https://mirror.example.com"])
    );
    check("docker-merged", node.dir.path(), &cp);
    run(&["reset", "--root", &node.root()]).expect_code(0);
    assert_eq!(
        std::fs::read_to_string(node.path("/etc/docker/daemon.json")).expect("restored"),
        existing
    );
}
