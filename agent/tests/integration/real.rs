//! node-attach against the real Kubernetes 1.20.2 control plane made by the real kubeadm
//! (`tests/kubernetes/cluster.sh`): discovery, join in both TLS-bootstrap modes, kubelet.conf as
//! the real API server sees it, registration through NodeRestriction, restricted labels,
//! `token create`'s RBAC and one-liner, `serve` with the real API server as its store,
//! `reset --delete-node` and `--drain` through the real eviction API and a real
//! PodDisruptionBudget, and a pending and a denied CSR as the real controllers handle them.
//!
//! The Node's kubelet here is the stand-in (`kubelet-standin`, a kubelet of the API server's
//! version for what joining needs); the end-to-end test runs the real kubelet. Tests share the
//! one cluster, so each uses its own node names (`real-<test>`).

use crate::join::{tree_with_bytes, Node};
use crate::real_cluster::{real_cluster, RealCluster};
use crate::support::*;
use std::process::Output;
use std::time::{Duration, Instant};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn kubectl_ok(rc: &RealCluster, args: &[&str]) -> String {
    let out = rc.kubectl(args);
    assert!(out.status.success(), "kubectl {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `cond` every 50 ms until it holds or `limit` passes.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn secret_of(token: &str) -> &str {
    token.split_once('.').map(|(_, s)| s).unwrap_or(token)
}

/// The scale-out form against the real cluster, for node `name`.
fn join_args(rc: &RealCluster, node: &Node, name: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "join",
        "--root",
        &node.root(),
        "--endpoint",
        rc.endpoint(),
        "--cluster-dns",
        "10.96.0.10",
        "--discovery-token-ca-cert-hash",
        rc.ca_pin(),
        "--node-name",
        name,
        "--node-wait-timeout",
        "60s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn join_real(args: &[String], token: &str) -> Run {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_with(
        &a,
        &[("NODE_ATTACH_TOKEN", token)],
        Duration::from_secs(120),
    );
    run.expect_no_secret(&[secret_of(token)]);
    run
}

/// A kubelet stand-in that keeps running (and plays the kubelet's part for bound Pods).
fn long_running_kubelet(node: &Node) -> std::process::Child {
    std::process::Command::new(crate::join::standin_binary())
        .args([
            "--root",
            &node.root(),
            "--run-pods",
            "--wait-seconds",
            "120",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kubelet-standin")
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// kubelet.conf with the client pair's real path (it names the node's own /var/lib/kubelet),
/// written outside the node's tree.
fn node_kubeconfig(node: &Node, scratch: &std::path::Path) -> std::path::PathBuf {
    let conf =
        std::fs::read_to_string(node.path("/etc/kubernetes/kubelet.conf")).expect("kubelet.conf");
    let link = std::fs::read_link(node.path("/var/lib/kubelet/pki/kubelet-client-current.pem"))
        .expect("current pair");
    let pair = node.path(&link.display().to_string());
    let rewritten = conf.replace(
        "/var/lib/kubelet/pki/kubelet-client-current.pem",
        &pair.display().to_string(),
    );
    write(scratch, "node.conf", &rewritten)
}

fn reset_with_admin(rc: &RealCluster, node: &Node, extra: &[&str]) -> Run {
    let admin = rc.admin_kubeconfig_path().display().to_string();
    let root = node.root();
    let mut args = vec![
        "reset",
        "--root",
        root.as_str(),
        "--delete-node",
        "--kubeconfig",
        admin.as_str(),
    ];
    args.extend_from_slice(extra);
    run_with(&args, &[], Duration::from_secs(90))
}

fn node_exists(rc: &RealCluster, name: &str) -> bool {
    rc.kubectl(&["get", "node", name]).status.success()
}

fn delete_node(rc: &RealCluster, name: &str) {
    let _ = rc.kubectl(&["delete", "node", name, "--ignore-not-found"]);
}

#[test]
fn discovery_verifies_the_real_cluster_info() {
    let Some(rc) = real_cluster() else { return };
    let run = run_with(
        &[
            "discover",
            "--endpoint",
            rc.endpoint(),
            "--discovery-token-ca-cert-hash",
            rc.ca_pin(),
            "--output",
            "json",
        ],
        &[("NODE_ATTACH_TOKEN", rc.token())],
        Duration::from_secs(60),
    );
    run.expect_no_secret(&[secret_of(rc.token())]);
    let result = run.expect_code(0).json_result();
    assert_eq!(result["api_server"], format!("https://{}", rc.endpoint()));
    assert_eq!(result["ca_pin"], rc.ca_pin());
    assert_eq!(result["ca_verified"], true);
}

#[test]
fn join_with_node_attach_bootstrap_registers_through_node_restriction_and_resets() {
    let Some(rc) = real_cluster() else { return };
    let name = "real-join-1";
    delete_node(rc, name);
    let mut node = Node::new();
    let before = tree_with_bytes(node.dir.path());
    node.kubelet();
    join_real(
        &join_args(rc, &node, name, &["--docker-version", "20.10.24"]),
        rc.token(),
    )
    .expect_code(0)
    .expect_output("registered");
    // The CSR the real approver approved and the real signer signed.
    let csrs = kubectl_ok(rc, &["get", "csr", "-o", "jsonpath={range .items[*]}{.spec.username} {.status.conditions[0].type} {.spec.usages}{\"\\n\"}{end}"]);
    let token_id = rc.token().split('.').next().unwrap_or_default();
    assert!(
        csrs.lines().any(
            |l| l.starts_with(&format!("system:bootstrap:{token_id} Approved"))
                && l.contains("key encipherment")
        ),
        "{csrs}"
    );
    // kubelet.conf is the node itself to the real API server, and NodeRestriction holds it to
    // its own objects; the Node authorizer grants it no delete.
    let scratch = tempfile::tempdir().expect("scratch");
    let conf = node_kubeconfig(&node, scratch.path());
    let as_node = |args: &[&str]| kubectl(&conf, scratch.path(), args);
    let (code, out, err) = as_node(&["get", "node", name, "-o", "name"]);
    assert_eq!(
        (code, out.trim()),
        (0, format!("node/{name}").as_str()),
        "{err}"
    );
    let (code, _, err) = as_node(&["get", "secrets", "-n", "kube-system"]);
    assert_ne!(code, 0);
    assert!(err.contains(&format!("system:node:{name}")), "{err}");
    let (code, _, err) = as_node(&["label", "node", "real-drain-1", "x=y"]);
    assert_ne!(code, 0, "a node may not touch another Node: {err}");
    let (code, _, err) = as_node(&["delete", "node", name]);
    assert_ne!(code, 0, "a node may not delete itself: {err}");
    // The CRI socket annotation kubeadm join writes, with the node's own credentials.
    let annotation = kubectl_ok(
        rc,
        &[
            "get",
            "node",
            name,
            "-o",
            "jsonpath={.metadata.annotations.kubeadm\\.alpha\\.kubernetes\\.io/cri-socket}",
        ],
    );
    assert_eq!(
        annotation, "/var/run/dockershim.sock",
        "docker before 1.24: the dockershim socket"
    );
    reset_with_admin(rc, &node, &[]).expect_code(0);
    assert!(!node_exists(rc, name), "reset --delete-node left the Node");
    assert_eq!(tree_with_bytes(node.dir.path()), before);
}

#[test]
fn join_where_the_kubelet_bootstraps_itself() {
    let Some(rc) = real_cluster() else { return };
    let name = "real-kubelet-mode-1";
    delete_node(rc, name);
    let mut node = Node::new();
    node.kubelet();
    join_real(
        &join_args(
            rc,
            &node,
            name,
            &["--tls-bootstrap", "kubelet", "--runtime", "containerd"],
        ),
        rc.token(),
    )
    .expect_code(0)
    .expect_output("registered");
    assert!(!node.path("/etc/kubernetes/bootstrap-kubelet.conf").exists());
    assert!(node_exists(rc, name));
    let flags =
        std::fs::read_to_string(node.path("/var/lib/kubelet/kubeadm-flags.env")).expect("flags");
    assert!(
        flags.contains("--container-runtime=remote"),
        "kubelet 1.20 needs it: {flags}"
    );
    assert!(
        flags.contains("--pod-infra-container-image=k8s.gcr.io/pause:3.2"),
        "{flags}"
    );
    let config =
        std::fs::read_to_string(node.path("/etc/containerd/config.toml")).expect("containerd");
    assert!(
        config.contains("sandbox_image = \"k8s.gcr.io/pause:3.2\""),
        "{config}"
    );
    // Without an admin kubeconfig the real API server refuses the node deleting itself:
    // reset says so, does everything else, and exits 80.
    run_with(
        &["reset", "--root", &node.root(), "--delete-node"],
        &[],
        Duration::from_secs(60),
    )
    .expect_code(80)
    .expect_output("may not delete its own Node");
    assert!(node_exists(rc, name));
    assert!(!node.path("/etc/kubernetes/kubelet.conf").exists());
    delete_node(rc, name);
}

#[test]
fn restricted_labels_are_refused_to_the_node_and_not_self_set() {
    let Some(rc) = real_cluster() else { return };
    let name = "real-labels-1";
    delete_node(rc, name);
    let mut node = Node::new();
    node.kubelet();
    join_real(
        &join_args(
            rc,
            &node,
            name,
            &[
                "--labels",
                "k8s.io/cluster-autoscaler=true,workload_type=cpu",
            ],
        ),
        rc.token(),
    )
    .expect_code(0)
    .expect_output("labels for the control plane to apply")
    .expect_output("k8s.io/cluster-autoscaler=true");
    let labels = kubectl_ok(
        rc,
        &["get", "node", name, "-o", "jsonpath={.metadata.labels}"],
    );
    assert!(labels.contains("workload_type"), "{labels}");
    assert!(!labels.contains("cluster-autoscaler"), "{labels}");
    // The real NodeRestriction refuses the node setting it itself.
    let scratch = tempfile::tempdir().expect("scratch");
    let conf = node_kubeconfig(&node, scratch.path());
    let (code, _, err) = kubectl(
        &conf,
        scratch.path(),
        &[
            "label",
            "node",
            name,
            "node-restriction.kubernetes.io/pool=a",
        ],
    );
    assert_ne!(
        code, 0,
        "NodeRestriction let the node set a restricted label"
    );
    assert!(
        err.contains("forbidden") || err.contains("Forbidden"),
        "{err}"
    );
    delete_node(rc, name);
}

#[test]
fn token_create_adds_no_rbac_to_a_kubeadm_cluster_and_its_command_joins() {
    let Some(rc) = real_cluster() else { return };
    let admin = rc.admin_kubeconfig_path().display().to_string();
    let run = run_with(
        &[
            "token",
            "create",
            "--kubeconfig",
            &admin,
            "--ttl",
            "10m",
            "--print-join-command",
        ],
        &[],
        Duration::from_secs(60),
    );
    run.expect_code(0);
    assert!(
        !run.all().contains("RBAC:"),
        "kubeadm 1.20 made every rule already; token create must add nothing: {}",
        run.all()
    );
    let line = run
        .stdout
        .lines()
        .find(|l| l.contains("node-attach join"))
        .expect("join command");
    let token = line
        .split("NODE_ATTACH_TOKEN=")
        .nth(1)
        .or_else(|| line.split("--token ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .map(|s| s.trim_matches('\'').to_owned())
        .expect("token in the command");
    assert!(line.contains(rc.ca_pin()), "{line}");
    let name = "real-token-create-1";
    delete_node(rc, name);
    let mut node = Node::new();
    node.kubelet();
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = token.split('.').next().unwrap_or_default().to_owned();
    assert!(
        eventually(deadline - Instant::now(), || kubectl_ok(
            rc,
            &[
                "get",
                "cm",
                "-n",
                "kube-public",
                "cluster-info",
                "-o",
                "jsonpath={.data}"
            ]
        )
        .contains(&format!("jws-kubeconfig-{id}"))),
        "the real bootstrap signer did not sign the new token"
    );
    join_real(&join_args(rc, &node, name, &[]), &token).expect_code(0);
    assert!(node_exists(rc, name));
    delete_node(rc, name);
    run_with(
        &["token", "delete", "--kubeconfig", &admin, &id],
        &[],
        Duration::from_secs(30),
    )
    .expect_code(0);
}

/// A bootstrap token whose only group has no auto-approval binding: its CSRs stay pending.
fn unbound_token(rc: &RealCluster, id: &str) -> String {
    let token = format!("{id}.0123456789abcdef");
    let _ = rc.kubectl(&[
        "delete",
        "secret",
        "-n",
        "kube-system",
        &format!("bootstrap-token-{id}"),
        "--ignore-not-found",
    ]);
    kubectl_ok(
        rc,
        &[
            "create",
            "secret",
            "generic",
            &format!("bootstrap-token-{id}"),
            "-n",
            "kube-system",
            "--type",
            "bootstrap.kubernetes.io/token",
            &format!("--from-literal=token-id={id}"),
            "--from-literal=token-secret=0123456789abcdef",
            "--from-literal=usage-bootstrap-authentication=true",
            "--from-literal=usage-bootstrap-signing=true",
            "--from-literal=auth-extra-groups=system:bootstrappers:node-attach-unbound",
        ],
    );
    assert!(
        eventually(Duration::from_secs(30), || kubectl_ok(
            rc,
            &[
                "get",
                "cm",
                "-n",
                "kube-public",
                "cluster-info",
                "-o",
                "jsonpath={.data}"
            ]
        )
        .contains(&format!("jws-kubeconfig-{id}"))),
        "the real signer did not sign {id}"
    );
    token
}

#[test]
fn a_pending_and_a_denied_csr_as_the_real_controllers_leave_them() {
    let Some(rc) = real_cluster() else { return };
    // The token's group may create CSRs (the bootstrappers binding covers only kubeadm's
    // default group, so bind node-bootstrapper for this one) but not have them auto-approved.
    let group = "system:bootstrappers:node-attach-unbound";
    let _ = rc.kubectl(&[
        "delete",
        "clusterrolebinding",
        "real-unbound-bootstrap",
        "--ignore-not-found",
    ]);
    kubectl_ok(
        rc,
        &[
            "create",
            "clusterrolebinding",
            "real-unbound-bootstrap",
            "--clusterrole",
            "system:node-bootstrapper",
            "--group",
            group,
        ],
    );
    // It may read the cluster's configuration, as kubeadm's default group may.
    for role in [
        "kubeadm:kubelet-config-1.20",
        "kubeadm:nodes-kubeadm-config",
    ] {
        let binding = format!("real-unbound-{}", role.trim_start_matches("kubeadm:"));
        let _ = rc.kubectl(&[
            "delete",
            "rolebinding",
            "-n",
            "kube-system",
            &binding,
            "--ignore-not-found",
        ]);
        kubectl_ok(
            rc,
            &[
                "create",
                "rolebinding",
                "-n",
                "kube-system",
                &binding,
                "--role",
                role,
                "--group",
                group,
            ],
        );
    }
    let token = unbound_token(rc, "rlpend");
    let node = Node::new();
    let before = tree_with_bytes(node.dir.path());
    let run = join_real(
        &join_args(rc, &node, "real-pending-1", &["--csr-timeout", "5s"]),
        &token,
    );
    run.expect_code(51)
        .expect_output("may not have node CSRs auto-approved");
    // The real controller leaves it pending; clear it for the next case.
    let leftover = kubectl_ok(
        rc,
        &[
            "get",
            "csr",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.username}{\"\\n\"}{end}",
        ],
    );
    for line in leftover
        .lines()
        .filter(|l| l.ends_with(" system:bootstrap:rlpend"))
    {
        let name = line.split_whitespace().next().unwrap_or_default();
        kubectl_ok(rc, &["delete", "csr", name]);
    }
    let _ = before;
    // Denied while join waits: the real API server's Denied condition ends the wait.
    let node = Node::new();
    let args = join_args(rc, &node, "real-denied-1", &["--csr-timeout", "60s"]);
    let a: Vec<String> = args.clone();
    let token2 = token.clone();
    let waiter = std::thread::spawn(move || join_real(&a, &token2));
    // The pending CSRs this token's user made (the first join's was deleted above).
    let pending = || -> Vec<String> {
        let list = kubectl_ok(rc, &["get", "csr", "-o", "jsonpath={range .items[*]}{.metadata.name} {.spec.username} {.status.conditions[0].type}{\"\\n\"}{end}"]);
        list.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f.len() == 2 && f[1] == "system:bootstrap:rlpend")
            .map(|f| f[0].to_owned())
            .collect()
    };
    assert!(
        eventually(Duration::from_secs(30), || pending().len() == 1),
        "no pending CSR appeared: {:?}",
        pending()
    );
    let csr = pending().remove(0);
    kubectl_ok(rc, &["certificate", "deny", &csr]);
    let run = waiter.join().expect("join thread");
    run.expect_code(50).expect_output("was denied");
    let _ = rc.kubectl(&["delete", "clusterrolebinding", "real-unbound-bootstrap"]);
    for binding in [
        "real-unbound-kubelet-config-1.20",
        "real-unbound-nodes-kubeadm-config",
    ] {
        let _ = rc.kubectl(&["delete", "rolebinding", "-n", "kube-system", binding]);
    }
    let _ = rc.kubectl(&[
        "delete",
        "secret",
        "-n",
        "kube-system",
        "bootstrap-token-rlpend",
    ]);
}

#[test]
fn reset_drains_through_the_real_eviction_api_and_honours_a_pdb() {
    let Some(rc) = real_cluster() else { return };
    let name = "real-drain-1";
    let ns = "real-drain";
    delete_node(rc, name);
    let _ = rc.kubectl(&[
        "delete",
        "namespace",
        ns,
        "--ignore-not-found",
        "--wait=true",
    ]);
    let node = Node::new();
    let _kubelet = Killed(long_running_kubelet(&node));
    join_real(&join_args(rc, &node, name, &[]), rc.token()).expect_code(0);
    kubectl_ok(rc, &["create", "namespace", ns]);
    for pod in ["drain-a", "drain-b"] {
        let manifest = format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{pod}","namespace":"{ns}","labels":{{"app":"drain"}}}},
               "spec":{{"nodeName":"{name}","terminationGracePeriodSeconds":0,"containers":[{{"name":"c","image":"e2e.node-attach.test/busybox:1"}}]}}}}"#
        );
        let file = node.dir.path().with_extension(format!("{pod}.json"));
        std::fs::write(&file, manifest).expect("manifest");
        kubectl_ok(rc, &["create", "-f", &file.display().to_string()]);
        let _ = std::fs::remove_file(file);
    }
    let pdb = node.dir.path().with_extension("pdb.json");
    std::fs::write(&pdb, format!(r#"{{"apiVersion":"policy/v1beta1","kind":"PodDisruptionBudget","metadata":{{"name":"drain","namespace":"{ns}"}},"spec":{{"minAvailable":1,"selector":{{"matchLabels":{{"app":"drain"}}}}}}}}"#)).expect("pdb");
    kubectl_ok(rc, &["create", "-f", &pdb.display().to_string()]);
    let _ = std::fs::remove_file(&pdb);
    let allowed = || {
        kubectl_ok(
            rc,
            &[
                "get",
                "pdb",
                "-n",
                ns,
                "drain",
                "-o",
                "jsonpath={.status.disruptionsAllowed}",
            ],
        )
    };
    assert!(
        eventually(Duration::from_secs(30), || allowed() == "1"),
        "the PDB never allowed a disruption: {}",
        allowed()
    );
    let admin = rc.admin_kubeconfig_path().display().to_string();
    // One pod may go; the other is protected until the drain gives up, and nothing is removed.
    let run = run_with(
        &[
            "reset",
            "--root",
            &node.root(),
            "--drain",
            "--kubeconfig",
            &admin,
            "--drain-timeout",
            "6s",
        ],
        &[],
        Duration::from_secs(60),
    );
    run.expect_code(81)
        .expect_output("PodDisruptionBudgets still protect");
    assert!(
        node.path("/etc/kubernetes/kubelet.conf").exists(),
        "a failed drain must remove nothing"
    );
    let left = kubectl_ok(rc, &["get", "pods", "-n", ns, "-o", "name"]);
    assert_eq!(
        left.lines().count(),
        1,
        "exactly one pod was evicted: {left}"
    );
    // Without the budget, the drain finishes and reset goes on.
    kubectl_ok(rc, &["delete", "pdb", "-n", ns, "drain"]);
    run_with(
        &[
            "reset",
            "--root",
            &node.root(),
            "--drain",
            "--kubeconfig",
            &admin,
            "--delete-node",
        ],
        &[],
        Duration::from_secs(90),
    )
    .expect_code(0);
    assert!(eventually(Duration::from_secs(20), || kubectl_ok(
        rc,
        &["get", "pods", "-n", ns, "-o", "name"]
    )
    .trim()
    .is_empty()));
    assert!(!node_exists(rc, name));
    let _ = rc.kubectl(&["delete", "namespace", ns, "--wait=false"]);
}

/// `node-attach serve` on the real cluster: a node joins through an openapi token, and its
/// reset, with no admin kubeconfig, has the service delete its Node. The service trusts the
/// real API server's client CAs (`extension-apiserver-authentication`) for the kubelet's
/// certificate the real signer issued.
#[test]
fn the_values_service_deletes_the_node_of_a_reset_on_the_real_cluster() {
    let Some(rc) = real_cluster() else { return };
    let name = "real-serve-removal-1";
    delete_node(rc, name);
    let dir = tempfile::tempdir().expect("tmp");
    let admin = std::fs::read_to_string(rc.admin_kubeconfig_path()).expect("admin.conf");
    write(dir.path(), "admin.conf", &admin);
    let ca = test_control_plane::pki::Ca::new("values-service-ca");
    let cert = ca.issue_server(&["127.0.0.1".into()]);
    write(dir.path(), "svc.crt", &cert.cert_pem);
    write(dir.path(), "svc.key", &cert.key_pem);
    let ca_file = write(dir.path(), "ca.pem", ca.cert_pem());
    let values = r#"{"apiVersion": "node-attach.io/v1", "kind": "ClusterValues", "clusterDNS": ["10.96.0.10"],
        "labels": {"k8s.io/cluster-autoscaler": "true", "workload_type": "cpu"}}"#;
    let values = write(dir.path(), "values.json", values)
        .display()
        .to_string();
    let service = replica(dir.path(), free_port());
    let admin = dir.path().join("admin.conf").display().to_string();
    let args = [
        "token",
        "openapi",
        "--kubeconfig",
        &admin,
        "--values",
        &values,
    ];
    let created = run(&[&args[..], &["--uses", "1", "--public-url", &service.url]].concat());
    created.expect_code(0);
    let token = created.stdout.split('\'').nth(1).expect("token").to_owned();

    let mut node = Node::new();
    node.kubelet();
    let url = format!("{}/v1/values/{{token}}", service.url);
    let ca_path = ca_file.display().to_string();
    let args = ["join", "--root", &node.root(), "--values-url", &url];
    let args = [
        &args[..],
        &["--values-ca-file", &ca_path, "--node-name", name],
    ]
    .concat();
    let args = [&args[..], &["--node-wait-timeout", "60s"]].concat();
    let joined = run_with(
        &args,
        &[("NODE_ATTACH_OPENAPI_TOKEN", &token)],
        Duration::from_secs(120),
    );
    joined.expect_code(0).expect_no_secret(&[&token]);
    assert!(node_exists(rc, name));
    // Registered with the startup taint (NodeRestriction lets a kubelet register taints, not
    // restricted labels); the service applied the label and removed the taint in one JSON
    // Patch the real API server accepted.
    let flags =
        std::fs::read_to_string(node.path("/var/lib/kubelet/kubeadm-flags.env")).expect("flags");
    let startup = "--register-with-taints=node.node-attach.io/labels-pending:NoSchedule";
    assert!(flags.contains(startup), "{flags}");
    let jsonpath = "jsonpath={.metadata.labels.k8s\\.io/cluster-autoscaler} {.spec.taints}";
    let seen = kubectl_ok(rc, &["get", "node", name, "-o", jsonpath]);
    assert!(seen.starts_with("true"), "{seen}");
    assert!(!seen.contains("labels-pending"), "{seen}");

    let reset = run_with(
        &["reset", "--root", &node.root(), "--delete-node"],
        &[],
        Duration::from_secs(60),
    );
    reset
        .expect_code(0)
        .expect_output(&format!("deleted {name} (by the values service)"));
    assert!(
        eventually(Duration::from_secs(10), || !node_exists(rc, name)),
        "the Node is still there"
    );
    assert!(!service.stderr.lock().expect("lock").contains(&token));
}
