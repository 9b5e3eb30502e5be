//! `node-attach join` into scratch roots against the test control plane: the three forms from
//! the field, idempotence, interruption at every phase, file modes, secrets, kubectl with the
//! bootstrapped kubelet.conf, restricted labels, CSR refusals, and the dry-run plan.

use crate::support::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// A scratch root with a kubelet stand-in waiting to register the node once join writes its
/// kubelet.conf.
pub struct Node {
    pub dir: tempfile::TempDir,
    standin: Option<std::process::Child>,
}

impl Node {
    pub fn new() -> Node {
        Node {
            dir: tempfile::tempdir().expect("tmp"),
            standin: None,
        }
    }

    pub fn root(&self) -> String {
        self.dir.path().display().to_string()
    }

    pub fn path(&self, p: &str) -> std::path::PathBuf {
        self.dir.path().join(p.trim_start_matches('/'))
    }

    /// Starts the kubelet stand-in (once) so the Node registers.
    pub fn kubelet(&mut self) {
        self.start_kubelet(&[]);
    }

    /// Starts the kubelet stand-in so the Node registers, and to play the kubelet's part for
    /// Pods bound to it (`--run-pods`: they run, and a deletion the API server only marks is
    /// finished), as drains need.
    pub fn kubelet_running_pods(&mut self) {
        self.start_kubelet(&["--run-pods"]);
    }

    fn start_kubelet(&mut self, extra: &[&str]) {
        if let Some(c) = &mut self.standin {
            if c.try_wait().ok().flatten().is_none() {
                return;
            }
        }
        self.standin = Some(
            std::process::Command::new(standin_binary())
                .args(["--root", &self.root(), "--once", "--wait-seconds", "60"])
                .args(extra)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("kubelet-standin"),
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = &mut self.standin {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn standin_binary() -> std::path::PathBuf {
    let p = binary().with_file_name("kubelet-standin");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` (make test does)",
        p.display()
    );
    p
}

/// The scale-out form's arguments for a node named `name`.
pub fn scale_out(cp: &TestControlPlane, node: &Node, name: &str) -> Vec<String> {
    vec![
        "join".into(),
        "--root".into(),
        node.root(),
        "--docker-version".into(),
        "20.10.24".into(),
        "--token".into(),
        TOKEN.into(),
        "--endpoint".into(),
        cp.endpoint(),
        "--cluster-dns".into(),
        "10.96.0.10".into(),
        "--discovery-token-ca-cert-hash".into(),
        cp.ca_pin(),
        "--node-name".into(),
        name.into(),
        "--node-wait-timeout".into(),
        "30s".into(),
    ]
}

pub fn join(args: &[String], env: &[(&str, &str)]) -> Run {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_with(&a, env, Duration::from_secs(90));
    run.expect_no_secret(&[SECRET]);
    run
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .expect("stat")
        .permissions()
        .mode()
        & 0o7777
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_symlink() {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn node_object(cp: &TestControlPlane, name: &str) -> Option<serde_json::Value> {
    cp.get(Kind::Node, "", name)
}

#[test]
fn scale_out_form_joins_with_docker() {
    let cp = control_plane();
    let mut node = Node::new();
    node.kubelet();
    let args = scale_out(&cp, &node, "scale-out-1");
    let mut args2 = args.clone();
    args2.extend(["--taints".into(), "dedicated=gpu:NoSchedule".into()]);
    let run = join(&args2, &[]);
    run.expect_code(0).expect_output("node scale-out-1 joined");
    let n = node_object(&cp, "scale-out-1").expect("registered");
    assert_eq!(n["spec"]["taints"][0]["key"], "dedicated");
    let daemon =
        std::fs::read_to_string(node.path("/etc/docker/daemon.json")).expect("daemon.json");
    assert!(daemon.contains("native.cgroupdriver=systemd"));
    let flags =
        std::fs::read_to_string(node.path("/var/lib/kubelet/kubeadm-flags.env")).expect("flags");
    assert!(
        flags.contains("--container-runtime-endpoint=unix:///run/cri-dockerd.sock"),
        "{flags}"
    );
    assert!(
        flags.contains("--register-with-taints=dedicated=gpu:NoSchedule"),
        "{flags}"
    );
    // Modes, as the kubelet and kubeadm leave them.
    for (p, m) in [
        ("/etc/kubernetes/kubelet.conf", 0o600),
        ("/etc/kubernetes/pki/ca.crt", 0o644),
        ("/var/lib/kubelet/config.yaml", 0o644),
        ("/var/lib/kubelet/kubeadm-flags.env", 0o644),
        ("/var/lib/kubelet", 0o700),
        ("/var/lib/node-attach", 0o700),
        ("/var/lib/node-attach/journal.jsonl", 0o600),
    ] {
        assert_eq!(mode(&node.path(p)), m, "{p}");
    }
    let pairs: Vec<_> = std::fs::read_dir(node.path("/var/lib/kubelet/pki"))
        .expect("pki")
        .flatten()
        .map(|e| e.path())
        .filter(|p| !p.is_symlink())
        .collect();
    assert_eq!(pairs.len(), 1, "{pairs:?}");
    assert_eq!(mode(&pairs[0]), 0o600);
    let link = std::fs::read_link(node.path("/var/lib/kubelet/pki/kubelet-client-current.pem"))
        .expect("symlink");
    assert!(
        link.to_string_lossy()
            .starts_with("/var/lib/kubelet/pki/kubelet-client-20"),
        "{link:?}"
    );
    // No bootstrap token anywhere on disk.
    for f in files_under(node.dir.path()) {
        let bytes = std::fs::read(&f).expect("read");
        assert!(
            !String::from_utf8_lossy(&bytes).contains(SECRET),
            "the token secret is in {}",
            f.display()
        );
    }
    assert!(!node.path("/etc/kubernetes/bootstrap-kubelet.conf").exists());
    assert!(!node
        .path("/var/lib/kubelet/pki/kubelet-client.key.tmp")
        .exists());
}

#[test]
fn a_second_run_changes_nothing() {
    let cp = control_plane();
    let mut node = Node::new();
    node.kubelet();
    let args = scale_out(&cp, &node, "idempotent-1");
    join(&args, &[]).expect_code(0);
    let before = tree_with_bytes(node.dir.path());
    let csrs = cp.list(Kind::Csr).len();
    join(&args, &[])
        .expect_code(0)
        .expect_output("already joined")
        .expect_output("nothing changed");
    assert_eq!(
        tree_with_bytes(node.dir.path()),
        before,
        "a second run changed files"
    );
    assert_eq!(
        cp.list(Kind::Csr).len(),
        csrs,
        "a second run created another CSR"
    );
}

/// Every path with its mode and bytes (the journal excluded: it grows with phase markers).
pub fn tree_with_bytes(dir: &Path) -> Vec<(String, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(dir).expect("prefix").display().to_string();
            if rel.ends_with("journal.jsonl") {
                continue;
            }
            let meta = std::fs::symlink_metadata(&p).expect("stat");
            let bytes = if meta.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .expect("link")
                    .display()
                    .to_string()
                    .into_bytes()
            } else if meta.is_file() {
                std::fs::read(&p).expect("read")
            } else {
                stack.push(p.clone());
                Vec::new()
            };
            out.push((rel, meta.permissions().mode() & 0o7777, bytes));
        }
    }
    out.sort();
    out
}

#[test]
fn manual_form_takes_every_value_from_the_openapi_token() {
    let cp = control_plane();
    cp.add_values(
        "manual-openapi-token",
        ValuesEntry {
            json: serde_json::json!({
                "apiVersion": "node-attach.io/v1", "kind": "ClusterValues",
                "apiServerEndpoints": [cp.endpoint()], "bootstrapToken": TOKEN,
                "caCertHashes": [cp.ca_pin()], "clusterDNS": ["10.96.0.10"],
                "labels": {"workload_type": "cpu"},
                "kubelet": {"maxPods": 64},
            }),
            ack_text: String::new(),
        },
    );
    let mut node = Node::new();
    node.kubelet();
    let ca = write(node.dir.path(), "values-ca.pem", &cp.ca_pem());
    let values_url = format!("{}/v1/values/{{token}}", cp.url());
    let run = join(
        &[
            "join".into(),
            "--root".into(),
            node.root(),
            "--openapi-token".into(),
            "manual-openapi-token".into(),
            "--values-url".into(),
            values_url,
            "--values-ca-file".into(),
            ca.display().to_string(),
            "--node-name".into(),
            "manual-1".into(),
            "--node-wait-timeout".into(),
            "30s".into(),
        ],
        &[],
    );
    run.expect_code(0)
        .expect_output("values")
        .expect_no_secret(&["manual-openapi-token"]);
    let config =
        std::fs::read_to_string(node.path("/var/lib/kubelet/config.yaml")).expect("config");
    assert!(
        config.contains("maxPods: 64") && config.contains("cgroupDriver: systemd"),
        "{config}"
    );
    assert!(
        std::fs::read_to_string(node.path("/etc/containerd/config.toml"))
            .expect("containerd")
            .contains("SystemdCgroup = true")
    );
    assert_eq!(
        node_object(&cp, "manual-1").expect("registered")["metadata"]["labels"]["workload_type"],
        "cpu"
    );
}

#[test]
fn autoscaler_form_splits_restricted_labels_and_requires_a_provider_id() {
    let cp = control_plane();
    let mut node = Node::new();
    let root = node.root();
    let base = |extra: &[&str]| {
        let mut a: Vec<String> = [
            "join",
            "--root",
            &root,
            "--token",
            TOKEN,
            "--endpoint",
            &cp.endpoint(),
            "--discovery-token-ca-cert-hash",
            &cp.ca_pin(),
            "--node-name",
            "pool-1",
            "--ess",
            "true",
            // Never probe a real cloud metadata address from a test.
            "--metadata",
            "none",
            "--labels",
            "k8s.io/cluster-autoscaler=true,workload_type=cpu",
            "--node-wait-timeout",
            "30s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    join(&base(&[]), &[])
        .expect_code(32)
        .expect_output("providerID");
    assert!(
        std::fs::read_dir(node.dir.path())
            .expect("ls")
            .next()
            .is_none(),
        "a refused join wrote files"
    );
    node.kubelet();
    let run = join(
        &base(&["--provider-id", "cn-test.i-0123", "--output", "json"]),
        &[],
    );
    let result = run.expect_code(0).json_result();
    assert_eq!(
        result["pending_labels"]["k8s.io/cluster-autoscaler"],
        "true"
    );
    assert!(result["labels"].get("k8s.io/cluster-autoscaler").is_none());
    let flags =
        std::fs::read_to_string(node.path("/var/lib/kubelet/kubeadm-flags.env")).expect("flags");
    assert!(
        flags.contains("--node-labels=workload_type=cpu\"")
            || flags.contains("--node-labels=workload_type=cpu "),
        "{flags}"
    );
    assert!(!flags.contains("cluster-autoscaler"), "{flags}");
    let n = node_object(&cp, "pool-1").expect("registered");
    assert_eq!(n["spec"]["providerID"], "cn-test.i-0123");
    // The JSON lines carry phase, status and duration.
    assert!(run
        .stdout
        .lines()
        .any(|l| l.contains("\"phase\":\"bootstrap\"") && l.contains("\"duration_ms\"")));
}

#[test]
fn interrupted_at_every_phase_a_rerun_finishes() {
    let cp = control_plane();
    for (i, phase) in ["host", "runtime", "kubelet", "bootstrap", "start"]
        .iter()
        .enumerate()
    {
        let mut node = Node::new();
        let name = format!("crash-{i}");
        let args = scale_out(&cp, &node, &name);
        let crashed = join(&args, &[("NODE_ATTACH_TEST_CRASH_AFTER", phase)]);
        assert_ne!(crashed.code, 0, "the crash hook did not fire after {phase}");
        node.kubelet();
        join(&args, &[]).expect_code(0);
        let pairs = std::fs::read_dir(node.path("/var/lib/kubelet/pki"))
            .expect("pki")
            .flatten()
            .filter(|e| !e.path().is_symlink())
            .count();
        assert_eq!(pairs, 1, "after a crash in {phase}");
        assert!(node_object(&cp, &name).is_some());
        let csrs = cp
            .list(Kind::Csr)
            .into_iter()
            .filter(|c| c["spec"]["username"] == "system:bootstrap:abcdef")
            .count();
        assert!(csrs >= 1);
    }
}

#[test]
fn kubectl_uses_the_bootstrapped_kubelet_conf() {
    let cp = control_plane();
    let mut node = Node::new();
    node.kubelet();
    join(&scale_out(&cp, &node, "kubectl-node"), &[]).expect_code(0);
    // The kubeconfig names node paths; point them into the scratch root for kubectl here.
    let conf = std::fs::read_to_string(node.path("/etc/kubernetes/kubelet.conf")).expect("conf");
    let real_pair = node.path(
        &std::fs::read_link(node.path("/var/lib/kubelet/pki/kubelet-client-current.pem"))
            .expect("link")
            .display()
            .to_string(),
    );
    let rewritten = conf.replace(
        "/var/lib/kubelet/pki/kubelet-client-current.pem",
        &real_pair.display().to_string(),
    );
    let kc = write(node.dir.path(), "kubelet-test.conf", &rewritten);
    let (code, out, err) = kubectl(
        &kc,
        node.dir.path(),
        &[
            "config",
            "view",
            "-o",
            "jsonpath={.users[0].name} {.contexts[0].context.namespace}",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "default-auth default");
    let (code, out, err) = kubectl(
        &kc,
        node.dir.path(),
        &["get", "node", "kubectl-node", "-o", "name"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "node/kubectl-node");
    let (code, _, err) = kubectl(
        &kc,
        node.dir.path(),
        &["get", "secrets", "-n", "kube-system"],
    );
    assert_ne!(code, 0, "a node must not read secrets");
    assert!(err.contains("system:node:kubectl-node"), "{err}");
}

#[test]
fn a_csr_watch_lasts_to_the_deadline_and_one_closed_early_is_reopened_without_a_read() {
    use test_control_plane::{ApiFault, ApiFaultKind};
    let cp = control_plane();
    // The first watch on the CSR ends at once, as a proxy or a restarting server would end it.
    cp.set_faults(|f| {
        f.api.push_back(ApiFault {
            method: "GET".into(),
            path_contains: "/certificatesigningrequests".into(),
            query_contains: "watch=true".into(),
            kind: ApiFaultKind::Body(200, String::new()),
        })
    });
    let mut node = Node::new();
    node.kubelet();
    let mut args = scale_out(&cp, &node, "rewatch-1");
    args.extend(["--csr-timeout".into(), "120s".into()]);
    let before = cp.requests().len();
    join(&args, &[]).expect_code(0).expect_output("registered");
    let requests = cp.requests()[before..].to_vec();
    let on_csrs = |r: &&test_control_plane::RequestRecord| {
        r.path.contains("certificatesigningrequests") && r.method == "GET"
    };
    let watches: Vec<_> = requests
        .iter()
        .filter(on_csrs)
        .filter(|r| r.query.contains("watch=true"))
        .collect();
    assert_eq!(
        cp.shared().lock().faults.api.len(),
        0,
        "the first watch was opened (and closed at once)"
    );
    // The stand-in logs the requests it handles: the closed one was answered before.
    assert_eq!(watches.len(), 1, "one watch reopened: {watches:?}");
    let seconds = |q: &str| -> u64 {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("timeoutSeconds="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(
        seconds(&watches[0].query) >= 110,
        "the watch asks to last to the CSR deadline, not 30 s: {}",
        watches[0].query
    );
    assert!(
        watches[0].query.contains("resourceVersion="),
        "reopened from the last resourceVersion: {}",
        watches[0].query
    );
    assert!(
        !requests
            .iter()
            .filter(on_csrs)
            .any(|r| !r.query.contains("watch=true")),
        "no read of the CSR between the watches"
    );
}

#[test]
fn a_csr_watch_that_goes_silent_is_answered_by_a_read_at_the_deadline() {
    use test_control_plane::{ApiFault, ApiFaultKind};
    // The watch's connection stays open and says nothing (dropped without a word by a NAT or a
    // load balancer) while the CSR is approved and signed at once: the join must not fail
    // with a certificate waiting for it.
    let cp = control_plane();
    cp.set_faults(|f| {
        f.api.push_back(ApiFault {
            method: "GET".into(),
            path_contains: "/certificatesigningrequests".into(),
            query_contains: "watch=true".into(),
            kind: ApiFaultKind::Stall,
        })
    });
    let mut node = Node::new();
    node.kubelet();
    let mut args = scale_out(&cp, &node, "silent-1");
    args.extend(["--csr-timeout".into(), "6s".into()]);
    join(&args, &[]).expect_code(0).expect_output("registered");
}

#[test]
fn a_node_watch_that_goes_silent_is_answered_by_a_read_at_the_deadline() {
    use test_control_plane::{ApiFault, ApiFaultKind};
    // The Node watch's connection stays open and says nothing while the kubelet registers the
    // Node Ready: the join must not report a registered Node as missing.
    let cp = control_plane();
    cp.set_faults(|f| {
        f.api.push_back(ApiFault {
            method: "GET".into(),
            path_contains: "/api/v1/nodes".into(),
            query_contains: "watch=true".into(),
            kind: ApiFaultKind::Stall,
        })
    });
    let mut node = Node::new();
    node.kubelet();
    let mut args = scale_out(&cp, &node, "silent-2");
    let wait = args
        .iter()
        .position(|a| a == "--node-wait-timeout")
        .expect("a node wait");
    args[wait + 1] = "8s".into();
    join(&args, &[]).expect_code(0).expect_output("registered");
}

#[test]
fn pending_and_denied_csrs_have_their_own_messages() {
    let cp = control_plane();
    cp.set_approval(Approval::Pending);
    let mut node = Node::new();
    let mut args = scale_out(&cp, &node, "pending-1");
    args.extend(["--csr-timeout".into(), "2s".into()]);
    // The binding is there: the hint names the approver, not RBAC.
    join(&args, &[])
        .expect_code(51)
        .expect_output("RBAC is in place")
        .expect_output("csrapproving controller")
        .expect_output("kubectl certificate approve node-csr-");
    // Approved and signed while nobody waited: the rerun takes the certificate at once,
    // without watching.
    cp.set_approval(Approval::Auto);
    let issued = || {
        cp.list(Kind::Csr).iter().any(|c| {
            c["spec"]["username"] == "system:bootstrap:abcdef"
                && c["status"]["certificate"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty())
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !issued() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(issued(), "the controllers did not sign the pending CSR");
    let before = cp.requests().len();
    node.kubelet();
    let mut rerun = scale_out(&cp, &node, "pending-1");
    rerun.extend(["--csr-timeout".into(), "60s".into()]);
    join(&rerun, &[]).expect_code(0);
    assert!(
        !cp.requests()[before..]
            .iter()
            .any(|r| r.path.contains("certificatesigningrequests") && r.query.contains("watch")),
        "the rerun watched a CSR that was already issued"
    );
    cp.set_approval(Approval::Deny);
    let node = Node::new();
    let args = scale_out(&cp, &node, "denied-1");
    join(&args, &[]).expect_code(50).expect_output("was denied");
    // Without the auto-approval binding, CSRs stay pending, as with a real controller manager.
    cp.set_approval(Approval::Auto);
    cp.delete(
        Kind::ClusterRoleBinding,
        "",
        "kubeadm:node-autoapprove-bootstrap",
    );
    let node = Node::new();
    let mut args = scale_out(&cp, &node, "unbound-1");
    args.extend(["--csr-timeout".into(), "2s".into()]);
    join(&args, &[])
        .expect_code(51)
        .expect_output("may not have node CSRs auto-approved")
        .expect_output("kubeadm:node-autoapprove-bootstrap");
}

#[test]
fn the_dry_run_plan_lists_what_a_real_run_does() {
    let cp = control_plane();
    let mut node = Node::new();
    std::fs::create_dir_all(node.path("/etc")).expect("etc");
    std::fs::write(node.path("/etc/fstab"), "/swap none swap sw 0 0\n").expect("fstab");
    let mut args = scale_out(&cp, &node, "plan-1");
    args.extend(["--disable-swap".into(), "--output".into(), "json".into()]);
    let mut dry = args.clone();
    dry.push("--dry-run".into());
    let planned = join(&dry, &[]).expect_code(0).json_result();
    assert_eq!(
        tree(node.dir.path()),
        ["etc", "etc/fstab"],
        "a dry run wrote files"
    );
    node.kubelet();
    let done = join(&args, &[]).expect_code(0).json_result();
    let norm = |v: &serde_json::Value, want: &[&str]| -> Vec<String> {
        let mut out: Vec<String> = v["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .filter(|s| want.contains(&s["outcome"].as_str().unwrap_or_default()))
            .filter(|s| s["kind"] != "api")
            .map(|s| {
                let target = s["target"].as_str().unwrap_or_default();
                let target = if target.contains("/kubelet-client-20") {
                    "kubelet-client-<timestamp>.pem"
                } else {
                    target
                };
                format!("{} {} {}", s["phase"], s["kind"], target)
            })
            .filter(|s| !s.contains("state.json"))
            .collect();
        out.sort();
        out
    };
    let plan = norm(&planned, &["would-change", "skipped"]);
    let real = norm(&done, &["changed", "skipped"]);
    assert_eq!(plan, real);
    let text = serde_json::to_string(&planned).expect("json");
    assert!(
        text.contains("#node-attach# /swap none swap sw 0 0"),
        "the fstab diff is shown"
    );
}

/// Every path under `dir`, relative, sorted.
pub fn tree(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = tree_with_bytes(dir)
        .into_iter()
        .map(|(p, _, _)| p)
        .collect();
    out.sort();
    out
}

#[test]
fn bad_input_writes_nothing() {
    let cp = control_plane();
    let node = Node::new();
    let foreign = cp.foreign_pin();
    let mut args = scale_out(&cp, &node, "bad-1");
    let pin_at = args
        .iter()
        .position(|a| a == "--discovery-token-ca-cert-hash")
        .expect("pin flag")
        + 1;
    args[pin_at] = foreign;
    join(&args, &[]).expect_code(24);
    let mut args = scale_out(&cp, &node, "bad-1");
    args.extend(["--labels".into(), "bad label=x".into()]);
    join(&args, &[]).expect_code(2).expect_output("--labels");
    let mut args = scale_out(&cp, &node, "Bad_Name");
    args.push("--dry-run".into());
    join(&args, &[]).expect_code(2).expect_output("node name");
    assert!(
        std::fs::read_dir(node.dir.path())
            .expect("ls")
            .next()
            .is_none(),
        "a refused join wrote files"
    );
}

#[test]
fn the_outcome_is_reported_to_the_callback_on_success_and_failure() {
    let cp = control_plane();
    let values = |callback: &str| ValuesEntry {
        json: serde_json::json!({
            "apiVersion": "node-attach.io/v1", "kind": "ClusterValues",
            "apiServerEndpoints": [cp.endpoint()], "bootstrapToken": TOKEN,
            "caCertHashes": [cp.ca_pin()], "callbackURL": format!("{}/callback/{callback}", cp.url()),
        }),
        ack_text: String::new(),
    };
    cp.add_values("callback-token-ok", values("ok-secret-path"));
    cp.add_values("callback-token-ko", values("ko-secret-path"));
    let mut node = Node::new();
    node.kubelet();
    let ca = write(node.dir.path(), "values-ca.pem", &cp.ca_pem());
    let args = |token: &str, name: &str, extra: &[&str]| {
        let mut a: Vec<String> = vec![
            "join".into(),
            "--root".into(),
            node.root(),
            "--openapi-token".into(),
            token.into(),
            "--values-url".into(),
            format!("{}/v1/values/{{token}}", cp.url()),
            "--values-ca-file".into(),
            ca.display().to_string(),
            "--node-name".into(),
            name.into(),
            "--node-wait-timeout".into(),
            "30s".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = join(&args("callback-token-ok", "callback-1", &[]), &[]);
    run.expect_code(0).expect_no_secret(&["ok-secret-path"]);
    let calls = cp.callbacks();
    let ok = calls
        .iter()
        .find(|c| c.path.ends_with("ok-secret-path"))
        .expect("success reported");
    assert!(
        ok.body.contains("\"status\":\"success\"") && ok.body.contains("callback-1"),
        "{}",
        ok.body
    );
    // reset reports the removal to the same callback.
    let reset = run_with(
        &["reset", "--root", &node.root()],
        &[],
        Duration::from_secs(60),
    );
    reset.expect_code(0);
    let removed = cp
        .callbacks()
        .into_iter()
        .filter(|c| c.path.ends_with("ok-secret-path"))
        .count();
    assert_eq!(removed, 2, "reset did not report to the callback");
    cp.set_approval(Approval::Pending);
    let other = Node::new();
    let mut a = args("callback-token-ko", "callback-2", &["--csr-timeout", "1s"]);
    let root_at = a.iter().position(|x| x == "--root").expect("root") + 1;
    a[root_at] = other.root();
    join(&a, &[]).expect_code(51);
    let calls = cp.callbacks();
    let ko = calls
        .iter()
        .find(|c| c.path.ends_with("ko-secret-path"))
        .expect("failure reported");
    assert!(
        ko.body.contains("\"status\":\"failure\"") && ko.body.contains("bootstrap.csr-timeout"),
        "{}",
        ko.body
    );
}

#[test]
fn the_version_is_kubeadm_configs_and_the_clock_cluster_infos_date() {
    let cp = control_plane();
    let asked_version = |from: usize| cp.requests()[from..].iter().any(|r| r.path == "/version");
    let mut node = Node::new();
    node.kubelet();
    let before = cp.requests().len();
    join(&scale_out(&cp, &node, "version-1"), &[])
        .expect_code(0)
        .expect_output("from kubeadm-config");
    assert!(
        !asked_version(before),
        "a kubeadm cluster's join asks no /version"
    );
    // An hour between the clocks: refused before anything changes, by cluster-info's Date.
    cp.set_faults(|f| f.clock_offset = Some(-3600));
    let skewed = Node::new();
    let before = cp.requests().len();
    let run = join(&scale_out(&cp, &skewed, "version-2"), &[]);
    run.expect_code(30);
    // The Date header has whole seconds, and the answer takes its time to arrive: an hour
    // behind reads as 3600 s, or 3601 s on a loaded machine (CI run 12, under stress-ng).
    let said = "local clock differs from the API server's by ";
    let all = run.all();
    let seconds: Option<u64> = all
        .split(said)
        .nth(1)
        .and_then(|rest| rest.split('s').next())
        .and_then(|n| n.parse().ok());
    assert!(
        seconds.is_some_and(|s| (3600..=3602).contains(&s)),
        "{seconds:?} in {all}"
    );
    assert!(!asked_version(before));
    assert!(
        !skewed.path("/var/lib/kubelet/config.yaml").exists(),
        "nothing written"
    );
    cp.set_faults(|f| f.clock_offset = None);
    // A cluster kubeadm did not make: /version says the version.
    cp.delete(Kind::ConfigMap, "kube-system", "kubeadm-config");
    let mut other = Node::new();
    other.kubelet();
    let before = cp.requests().len();
    join(&scale_out(&cp, &other, "version-3"), &[])
        .expect_code(0)
        .expect_output("from /version");
    assert!(asked_version(before));
}

#[test]
fn the_clock_check_does_not_count_the_time_since_cluster_info_was_read() {
    use test_control_plane::{ApiFault, ApiFaultKind};
    // The server's clock is 290 s behind (within the 300 s bound), and the kubeadm-config read
    // that comes between cluster-info's answer and the check is told to come back in 12 s:
    // the Date read before that wait is 12 s older than the check, not 12 s more skewed.
    let cp = control_plane();
    cp.set_faults(|f| {
        f.clock_offset = Some(-290);
        f.api.push_back(ApiFault {
            method: "GET".into(),
            path_contains: "/configmaps/kubeadm-config".into(),
            query_contains: String::new(),
            kind: ApiFaultKind::Status(429, Some(12)),
        });
    });
    let mut node = Node::new();
    node.kubelet();
    let run = join(&scale_out(&cp, &node, "clock-1"), &[]);
    run.expect_code(0).expect_output("from kubeadm-config");
    assert!(run.elapsed >= Duration::from_secs(12), "{:?}", run.elapsed);
}

#[test]
fn a_ready_namesake_refuses_the_join_before_anything_changes() {
    let cp = control_plane();
    let ready = serde_json::json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "twin-1"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    });
    cp.put(Kind::Node, "", "twin-1", ready);
    let node = Node::new();
    join(&scale_out(&cp, &node, "twin-1"), &[])
        .expect_code(33)
        .expect_output("a Ready Node named \"twin-1\" already exists");
    assert!(!node.path("/var/lib/kubelet/config.yaml").exists());
}

#[test]
fn a_node_that_registers_but_never_turns_ready_ends_the_wait_after_the_grace() {
    // The Node is there but NotReady (no CNI plugin, say) when the watch opens, and stays so:
    // the join waits the 20 s grace after registration, not the whole --node-wait-timeout
    // (the watch opened before the registration must not outlast the grace).
    let cp = control_plane();
    let not_ready = serde_json::json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "grace-1"},
        "status": {"conditions": [{"type": "Ready", "status": "False"}]},
    });
    cp.put(Kind::Node, "", "grace-1", not_ready);
    let node = Node::new();
    let mut args = scale_out(&cp, &node, "grace-1");
    let wait = args
        .iter()
        .position(|a| a == "--node-wait-timeout")
        .expect("a node wait");
    args[wait + 1] = "85s".into();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_with(&a, &[], Duration::from_secs(120));
    run.expect_code(0).expect_output("not Ready yet");
    assert!(
        run.elapsed < Duration::from_secs(60),
        "waited {:?} for a Node registered at once (grace 20 s, node wait 85 s)",
        run.elapsed
    );
    let watches = cp
        .requests()
        .iter()
        .filter(|r| r.path == "/api/v1/nodes" && r.query.contains("watch=true"))
        .count();
    assert_eq!(watches, 1, "the grace ends the one watch: none reopened");
}

#[test]
fn kubeadm_1_34_keeps_the_cri_socket_on_the_node_and_earlier_ones_in_the_annotation() {
    let patched = |cp: &test_control_plane::TestControlPlane, name: &str| {
        cp.requests()
            .iter()
            .any(|r| r.method == "PATCH" && r.path == format!("/api/v1/nodes/{name}"))
    };
    // 1.34: NodeLocalCRISocket on by default, as kubeadm join writes it.
    let cp = control_plane_with(Options {
        kubernetes_version: "v1.34.1".into(),
        ..Options::default()
    });
    let mut node = Node::new();
    node.kubelet();
    join(&scale_out(&cp, &node, "local-cri-1"), &[]).expect_code(0);
    let read = |p: &str| std::fs::read_to_string(node.path(p)).unwrap_or_default();
    let instance = read("/var/lib/kubelet/instance-config.yaml");
    assert!(
        instance.starts_with("containerRuntimeEndpoint: \"unix://"),
        "{instance}"
    );
    let endpoint = instance
        .trim()
        .trim_start_matches("containerRuntimeEndpoint: ")
        .trim_matches('"')
        .to_owned();
    assert!(read("/var/lib/kubelet/config.yaml")
        .contains(&format!("containerRuntimeEndpoint: {endpoint}")));
    let flags = read("/var/lib/kubelet/kubeadm-flags.env");
    assert!(!flags.contains("--container-runtime-endpoint"), "{flags}");
    assert!(!patched(&cp, "local-cri-1"), "no annotation on 1.34");
    // 1.34 with the gate turned off in ClusterConfiguration: the annotation, no file.
    let cp = control_plane_with(Options {
        kubernetes_version: "v1.34.1".into(),
        kubeadm_feature_gates: vec![("NodeLocalCRISocket".into(), false)],
        ..Options::default()
    });
    let mut node = Node::new();
    node.kubelet();
    join(&scale_out(&cp, &node, "local-cri-2"), &[]).expect_code(0);
    assert!(!node.path("/var/lib/kubelet/instance-config.yaml").exists());
    assert!(
        patched(&cp, "local-cri-2"),
        "annotated when the gate is off"
    );
    let node_object = cp.get(Kind::Node, "", "local-cri-2").expect("node");
    assert!(
        node_object["metadata"]["annotations"]["kubeadm.alpha.kubernetes.io/cri-socket"]
            .as_str()
            .is_some_and(|s| s.starts_with("unix://"))
    );
}

#[test]
fn kubeadm_before_1_18_is_not_asked_for_a_namesake() {
    // kubeadm 1.17 binds no kubeadm:get-nodes: its join checks no namesake, and the bootstrap
    // token could only be refused the read.
    let cp = control_plane_with(Options {
        kubernetes_version: "v1.17.17".into(),
        ..Options::default()
    });
    let mut node = Node::new();
    node.kubelet();
    join(&scale_out(&cp, &node, "old-1"), &[]).expect_code(0);
    let node_reads = cp
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == "/api/v1/nodes/old-1")
        .count();
    assert_eq!(node_reads, 0, "no namesake read on kubeadm 1.17");
}

#[test]
fn older_clusters_versioned_kubelet_config_and_v1beta1_csrs() {
    // v1.18: the stand-in serves CSRs as v1beta1 only and names the kubelet ConfigMap
    // kubelet-config-1.18, as a kubeadm 1.18 cluster does.
    let cp = control_plane_with(Options {
        kubernetes_version: "v1.18.20".into(),
        ..Options::default()
    });
    assert!(cp
        .get(Kind::ConfigMap, "kube-system", "kubelet-config-1.18")
        .is_some());
    let mut node = Node::new();
    node.kubelet();
    let run = join(&scale_out(&cp, &node, "legacy-1"), &[]);
    run.expect_code(0).expect_output("kubelet-config-1.18");
    let flags =
        std::fs::read_to_string(node.path("/var/lib/kubelet/kubeadm-flags.env")).expect("flags");
    assert!(flags.contains("--pod-infra-container-image="), "{flags}");
    assert!(cp.requests().iter().any(|r| r.method == "POST"
        && r.path == "/apis/certificates.k8s.io/v1beta1/certificatesigningrequests"
        && r.status == 201));
}

#[test]
fn tls_bootstrap_by_the_kubelet_never_leaves_the_bootstrap_kubeconfig() {
    // No kubelet runs: join writes bootstrap-kubelet.conf (checked with kubectl while join
    // waits), the kubelet never finishes, and join fails with the token gone from the disk.
    let cp = control_plane();
    let node = Node::new();
    let mut args = scale_out(&cp, &node, "kubelet-bootstrap-1");
    let wait_at = args
        .iter()
        .position(|a| a == "--node-wait-timeout")
        .expect("flag")
        + 1;
    args[wait_at] = "0".into();
    args.extend(["--tls-bootstrap", "kubelet", "--csr-timeout", "10s"].map(String::from));
    let conf = node.path("/etc/kubernetes/bootstrap-kubelet.conf");
    let copy = node.dir.path().with_extension("bootstrap-copy.conf");
    let watcher = {
        let (conf, copy) = (conf.clone(), copy.clone());
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while std::time::Instant::now() < deadline {
                if let Ok(bytes) = std::fs::read(&conf) {
                    let mode = mode(&conf);
                    std::fs::write(&copy, bytes).expect("copy");
                    return Some(mode);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            None
        })
    };
    let run = join(&args, &[]);
    run.expect_code(51)
        .expect_output("did not finish its TLS bootstrap");
    assert_eq!(
        watcher.join().expect("watcher"),
        Some(0o600),
        "written 0600 while join waited"
    );
    assert!(
        !conf.exists(),
        "the bootstrap kubeconfig (and its token) stayed on disk"
    );
    let (code, out, err) = kubectl(
        &copy,
        node.dir.path(),
        &[
            "config",
            "view",
            "-o",
            "jsonpath={.contexts[0].name} {.clusters[0].cluster.server}",
        ],
    );
    let _ = std::fs::remove_file(&copy);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!("tls-bootstrap-token-user@kubernetes {}", cp.url())
    );
    assert!(
        !node.path("/etc/kubernetes/kubelet.conf").exists(),
        "the kubelet writes kubelet.conf itself"
    );
}

#[test]
fn status_reports_phase_node_and_certificate() {
    let cp = control_plane();
    let mut node = Node::new();
    run(&["status", "--root", &node.root()])
        .expect_code(0)
        .expect_output("not joined");
    node.kubelet();
    join(&scale_out(&cp, &node, "status-1"), &[]).expect_code(0);
    let s = run(&["status", "--root", &node.root(), "--output", "json"])
        .expect_code(0)
        .json_result();
    assert_eq!(s["joined"], true);
    assert_eq!(s["node"]["node_name"], "status-1");
    assert!(
        s["certificate_days_left"].as_i64().is_some_and(|d| d > 300),
        "{s}"
    );
    let crashed = Node::new();
    let args = scale_out(&cp, &crashed, "status-2");
    join(&args, &[("NODE_ATTACH_TEST_CRASH_AFTER", "runtime")]);
    run(&["status", "--root", &crashed.root()])
        .expect_code(0)
        .expect_output("interrupted")
        .expect_output("runtime");
}

#[test]
fn kill_9_at_arbitrary_moments_then_rerun_converges() {
    // SIGKILL at staggered moments of a join (mid-phase, not only between phases): every rerun
    // finishes, and reset then restores the pre-join tree.
    let cp = control_plane();
    for (i, delay_ms) in [15u64, 40, 70, 110, 160, 230].iter().enumerate() {
        let mut node = Node::new();
        std::fs::create_dir_all(node.path("/etc")).expect("etc");
        std::fs::write(node.path("/etc/fstab"), "/swap none swap sw 0 0\n").expect("fstab");
        let before = tree_with_bytes(node.dir.path());
        let mut args = scale_out(&cp, &node, &format!("killed-{i}"));
        args.push("--disable-swap".into());
        let mut child = std::process::Command::new(binary())
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(*delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        // What a kill between an atomic write's create and its rename leaves behind; the
        // timing above only sometimes hits that window, so make it certain.
        std::fs::write(node.path("/etc/.fstab.node-attach-00112233aabb"), "partial")
            .expect("plant temp");
        // And what a kill inside the journal's own first creation leaves: a staging directory.
        if !node.path("/var").exists() {
            std::fs::create_dir_all(node.path("/.var.node-attach-stage-00112233aabb/lib"))
                .expect("plant stage");
        }
        node.kubelet();
        join(&args, &[]).expect_code(0);
        let pairs = std::fs::read_dir(node.path("/var/lib/kubelet/pki"))
            .expect("pki")
            .flatten()
            .filter(|e| !e.path().is_symlink())
            .count();
        assert_eq!(pairs, 1, "killed after {delay_ms} ms");
        let reset = run_with(
            &["reset", "--root", &node.root()],
            &[],
            Duration::from_secs(60),
        );
        reset.expect_code(0);
        assert_eq!(
            tree_with_bytes(node.dir.path()),
            before,
            "killed after {delay_ms} ms: reset did not restore the tree"
        );
    }
}

#[test]
fn when_the_kubelet_bootstraps_itself_the_bootstrap_kubeconfig_goes_afterwards() {
    let cp = control_plane();
    let mut node = Node::new();
    let before = tree_with_bytes(node.dir.path());
    node.kubelet();
    let mut args = scale_out(&cp, &node, "self-bootstrap-1");
    args.extend(["--tls-bootstrap".into(), "kubelet".into()]);
    join(&args, &[]).expect_code(0).expect_output("registered");
    assert!(
        !node.path("/etc/kubernetes/bootstrap-kubelet.conf").exists(),
        "the token stayed on disk"
    );
    assert!(node.path("/etc/kubernetes/kubelet.conf").exists());
    assert!(cp.list(Kind::Csr).iter().any(|c| c["metadata"]["name"]
        .as_str()
        .is_some_and(|n| n.starts_with("node-csr-standin-self-bootstrap-1-"))
        && c["spec"]["username"] == "system:bootstrap:abcdef"));
    for f in files_under(node.dir.path()) {
        let bytes = std::fs::read(&f).expect("read");
        assert!(
            !String::from_utf8_lossy(&bytes).contains(SECRET),
            "the token secret is in {}",
            f.display()
        );
    }
    // Reset removes what the kubelet made too (documented paths), and the tree is as before.
    let (_admin_dir, admin) = admin_kubeconfig_file(&cp);
    run_with(
        &[
            "reset",
            "--root",
            &node.root(),
            "--delete-node",
            "--kubeconfig",
            &admin,
        ],
        &[],
        Duration::from_secs(60),
    )
    .expect_code(0);
    assert_eq!(tree_with_bytes(node.dir.path()), before);
    assert!(cp.get(Kind::Node, "", "self-bootstrap-1").is_none());
}

#[test]
fn a_second_run_on_the_same_root_is_refused_while_the_first_holds_the_lock() {
    let cp = control_plane();
    let mut node = Node::new();
    let before = tree_with_bytes(node.dir.path());
    // Stand in for a join in progress: hold the run lock the way node-attach does.
    let dir = std::fs::File::open(node.dir.path()).expect("open root");
    let held = nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .expect("lock");
    let args = scale_out(&cp, &node, "locked-1");
    join(&args, &[])
        .expect_code(71)
        .expect_output("another node-attach join or reset");
    run_with(
        &["reset", "--root", &node.root()],
        &[],
        Duration::from_secs(60),
    )
    .expect_code(71);
    assert_eq!(
        tree_with_bytes(node.dir.path()),
        before,
        "a refused run changed the tree"
    );
    // A dry run changes nothing, so it does not need the lock.
    let mut dry = args.clone();
    dry.push("--dry-run".into());
    join(&dry, &[]).expect_code(0);
    drop(held);
    node.kubelet();
    join(&args, &[]).expect_code(0);
}
