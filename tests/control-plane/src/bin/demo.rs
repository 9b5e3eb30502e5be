//! `make demo`: starts the test control plane on loopback and runs the real node-attach binary
//! against it, showing each step as it goes.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;
use test_control_plane::store::Kind;
use test_control_plane::{ClusterInfoFault, Options, TestControlPlane, TokenSpec, ValuesEntry};

const TOKEN: &str = "abcdef.0123456789abcdef";

fn node_attach() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let bin = exe.with_file_name("node-attach");
    if !bin.exists() {
        eprintln!(
            "demo: {} is missing; run `cargo build --workspace` first (make demo does)",
            bin.display()
        );
        std::process::exit(1);
    }
    bin
}

fn step(n: u32, title: &str) {
    println!("\n\x1b[1m{n}) {title}\x1b[0m");
}

/// Runs node-attach, echoing the command (secret hidden) and its output.
fn run(args: &[&str], env: &[(&str, &str)]) -> ExitStatus {
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.replace("0123456789abcdef", "<secret>"))
        .collect();
    println!("$ node-attach {}", shown.join(" "));
    let mut cmd = Command::new(node_attach());
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let status = cmd.status().expect("run node-attach");
    println!("(exit code {})", status.code().unwrap_or(-1));
    status
}

fn check(ok: bool, what: &str) {
    if ok {
        println!("\x1b[32m✓ {what}\x1b[0m");
    } else {
        println!("\x1b[31m✗ {what}\x1b[0m");
        std::process::exit(1);
    }
}

fn scratch() -> PathBuf {
    let base = std::env::temp_dir().join(format!("node-attach-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("scratch dir");
    base
}

fn main() {
    println!("\x1b[1m== node-attach demo ==\x1b[0m");
    let cp = TestControlPlane::start(Options::default());
    cp.create_token(&TokenSpec::new(TOKEN));
    cp.wait_signed("abcdef", Duration::from_secs(5));
    let dir = scratch();
    let pin = cp.ca_pin();
    let endpoint = cp.endpoint();
    println!(
        "test control plane: {} (kube-apiserver stand-in, its own CA)",
        cp.url()
    );
    println!("cluster CA pin:     {pin}");
    println!("scratch directory:  {}", dir.display());

    let discover = || {
        run(
            &[
                "discover",
                "--endpoint",
                &endpoint,
                "--discovery-token-ca-cert-hash",
                &pin,
            ],
            &[("NODE_ATTACH_TOKEN", TOKEN)],
        )
    };
    step(1, "discovery: read cluster-info anonymously, check its JWS with the token, pin the CA, re-fetch over pinned TLS");
    let status = discover();
    check(status.success(), "the API server is trusted");

    step(
        2,
        "discovery against a tampered cluster-info (server URL changed after signing)",
    );
    cp.set_faults(|f| f.cluster_info = ClusterInfoFault::Tamper);
    let status = discover();
    check(
        status.code() == Some(23),
        "the tampered answer is refused (exit 23, discovery.signature-mismatch)",
    );
    cp.set_faults(|f| f.cluster_info = ClusterInfoFault::None);

    step(3, "discovery with the pin of another CA");
    let foreign = cp.foreign_pin();
    let status = run(
        &[
            "discover",
            "--endpoint",
            &endpoint,
            "--discovery-token-ca-cert-hash",
            &foreign,
        ],
        &[("NODE_ATTACH_TOKEN", TOKEN)],
    );
    check(
        status.code() == Some(24),
        "a CA that does not match the pin is refused (exit 24)",
    );

    step(4, "join a scratch root: values by openapi token → discovery → runtime and kubelet config → CSR → kubelet.conf → Node registered");
    cp.add_values(
        "demo-openapi-token",
        ValuesEntry {
            json: serde_json::json!({
                "apiVersion": "node-attach.io/v1", "kind": "ClusterValues",
                "apiServerEndpoints": [endpoint], "bootstrapToken": TOKEN, "caCertHashes": [pin],
                "clusterDNS": ["10.96.0.10"], "labels": {"workload_type": "cpu", "k8s.io/cluster-autoscaler": "true"},
                "taints": ["dedicated=demo:NoSchedule"],
            }),
            ack_text: String::new(),
        },
    );
    let root = dir.join("node");
    std::fs::create_dir_all(root.join("etc")).expect("scratch root");
    std::fs::write(root.join("etc/fstab"), "UUID=demo / ext4 defaults 0 1\n").expect("fstab");
    let before = snapshot(&root);
    let ca_file = dir.join("values-ca.pem");
    std::fs::write(&ca_file, cp.ca_pem()).expect("ca file");
    println!("(a kubelet stand-in plays the kubelet: it registers the Node once kubelet.conf exists — no kubelet binary is packaged here)");
    let mut kubelet = Command::new(node_attach().with_file_name("kubelet-standin"))
        .args([
            "--root",
            &root.display().to_string(),
            "--once",
            "--wait-seconds",
            "60",
        ])
        .spawn()
        .expect("kubelet stand-in");
    let values_url = format!("{}/v1/values/{{token}}", cp.url());
    let root_arg = root.display().to_string();
    let ca_arg = ca_file.display().to_string();
    let join_demo = || {
        run(
            &[
                "join",
                "--root",
                &root_arg,
                "--values-url",
                &values_url,
                "--values-ca-file",
                &ca_arg,
                "--node-name",
                "demo-node",
                "--node-wait-timeout",
                "30s",
            ],
            &[("NODE_ATTACH_OPENAPI_TOKEN", "demo-openapi-token")],
        )
    };
    let status = join_demo();
    let _ = kubelet.wait();
    check(status.success(), "the node joined");
    let node = cp.get(Kind::Node, "", "demo-node");
    check(
        node.is_some(),
        "Node demo-node is registered in the test control plane",
    );
    if let Some(n) = node {
        println!("   labels: {}", n["metadata"]["labels"]);
        println!("   taints: {}", n["spec"]["taints"]);
    }

    step(5, "join again: idempotent");
    let status = join_demo();
    check(status.success(), "nothing changed the second time");

    step(6, "status");
    run(&["status", "--root", &root_arg], &[]);

    step(
        7,
        "reset --delete-node --kubeconfig ADMIN: the control plane's admin deletes the Node (a node may not delete its own), and the tree goes back to its pre-join state",
    );
    let admin = dir.join("admin.conf");
    std::fs::write(&admin, cp.admin_kubeconfig()).expect("admin kubeconfig");
    let admin_arg = admin.display().to_string();
    let status = run(
        &[
            "reset",
            "--root",
            &root_arg,
            "--delete-node",
            "--kubeconfig",
            &admin_arg,
        ],
        &[],
    );
    check(status.success(), "reset finished");
    check(
        cp.get(Kind::Node, "", "demo-node").is_none(),
        "the Node is gone from the API",
    );
    check(
        snapshot(&root) == before,
        "the scratch root equals its pre-join snapshot (paths, modes, bytes)",
    );

    cleanup(&dir);
    println!("\n\x1b[1mdemo finished\x1b[0m");
}

/// Every path under `dir` with its mode and bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u32, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).expect("stat");
            let bytes = if meta.is_file() {
                std::fs::read(&p).unwrap_or_default()
            } else {
                Vec::new()
            };
            if meta.is_dir() {
                stack.push(p.clone());
            }
            out.push((p, meta.permissions().mode(), bytes));
        }
    }
    out.sort();
    out
}

fn cleanup(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}
