//! deploy/: the values service's manifests against the real Kubernetes 1.20.2 API server. They
//! pass its validation (`kubectl apply --dry-run=server`), and their RBAC is enough for
//! `node-attach serve` to do its whole job with that ServiceAccount's token alone: values for
//! an openapi token, a bootstrap token minted per use, the join report handled and the
//! restricted label applied, the reset report handled and the Node deleted, and the RBAC it
//! would create where kubeadm's is missing allowed (server dry runs as the ServiceAccount) —
//! while what it does not need stays forbidden.

use crate::join::Node;
use crate::metrics::{scrape, value};
use crate::real_cluster::{real_cluster, RealCluster};
use crate::support::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `kubectl --kubeconfig K ARGS` with `stdin`, from `cwd` (the kubectl on PATH).
fn kubectl_as(kubeconfig: &Path, cwd: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cwd.join("kube-cache"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl is installed");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("kubectl")
}

fn admin_ok(rc: &RealCluster, args: &[&str]) -> String {
    let out = rc.kubectl(args);
    assert!(out.status.success(), "kubectl {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Applies deploy/'s Namespace, ServiceAccount and RBAC once per test run, for every test here
/// that needs them. Two `kubectl apply` of one new object at the same time both find it missing
/// and both create it, and the second fails AlreadyExists: the tests ran in parallel did that.
fn apply_shared_objects(rc: &RealCluster) {
    static APPLIED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    APPLIED.get_or_init(|| {
        for f in ["namespace.yaml", "serviceaccount.yaml", "rbac.yaml"] {
            admin_ok(
                rc,
                &["apply", "-f", &repo("deploy").join(f).display().to_string()],
            );
        }
    });
}

fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_deploy_manifests_pass_the_real_api_server_s_validation() {
    let Some(rc) = real_cluster() else { return };
    let deploy = repo("deploy");
    // Namespaced objects are validated in an existing namespace; the Namespace itself is then
    // validated as an update.
    apply_shared_objects(rc);
    let out = admin_ok(
        rc,
        &[
            "apply",
            "--dry-run=server",
            "-f",
            &deploy.display().to_string(),
            "-f",
            &deploy.join("pdb/policy-v1beta1.yaml").display().to_string(),
        ],
    );
    for object in [
        "namespace/node-attach",
        "serviceaccount/node-attach-serve",
        "clusterrole.rbac.authorization.k8s.io/node-attach-serve",
        "clusterrolebinding.rbac.authorization.k8s.io/node-attach-serve",
        "role.rbac.authorization.k8s.io/node-attach-serve",
        "rolebinding.rbac.authorization.k8s.io/node-attach-serve",
        "configmap/node-attach-serve-kubeconfig",
        "deployment.apps/node-attach-serve",
        "service/node-attach-serve",
        "poddisruptionbudget.policy/node-attach-serve",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(object) && l.ends_with("(server dry run)")),
            "{object} not validated:\n{out}"
        );
    }
    // 1.20 serves PodDisruptionBudget only as policy/v1beta1: the policy/v1 file (the same
    // budget) is for 1.21 and later.
    let v1 = rc.kubectl(&[
        "apply",
        "--dry-run=server",
        "-f",
        &deploy.join("pdb/policy-v1.yaml").display().to_string(),
    ]);
    assert!(!v1.status.success(), "{}", text(&v1));
    assert!(text(&v1).contains("policy/v1"), "{}", text(&v1));
    let body = |f: &str| {
        std::fs::read_to_string(deploy.join(f))
            .expect("pdb")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("apiVersion:"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(body("pdb/policy-v1.yaml"), body("pdb/policy-v1beta1.yaml"));
    let replicas = admin_ok(
        rc,
        &[
            "apply",
            "--dry-run=server",
            "-f",
            &deploy.join("deployment.yaml").display().to_string(),
            "-o",
            "jsonpath={.spec.replicas} {.spec.template.spec.serviceAccountName}",
        ],
    );
    assert_eq!(replicas.trim(), "2 node-attach-serve");
}

/// Applies the Namespace, ServiceAccount and RBAC for real and writes a kubeconfig for the
/// ServiceAccount in `dir/admin.conf`: its token and the cluster CA as files next to it, named
/// relatively (`sa/token`, `sa/ca.crt`).
fn service_account_kubeconfig(rc: &RealCluster, dir: &Path) -> PathBuf {
    apply_shared_objects(rc);
    // 1.20's token controller gives the ServiceAccount a token Secret.
    let mut secret = String::new();
    assert!(
        eventually(Duration::from_secs(30), || {
            let out = rc.kubectl(&[
                "-n",
                "node-attach",
                "get",
                "serviceaccount",
                "node-attach-serve",
                "-o",
                "jsonpath={.secrets[0].name}",
            ]);
            secret = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            !secret.is_empty()
        }),
        "no token Secret for the ServiceAccount"
    );
    let b64 = admin_ok(
        rc,
        &[
            "-n",
            "node-attach",
            "get",
            "secret",
            &secret,
            "-o",
            "jsonpath={.data.token}",
        ],
    );
    let token = {
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .expect("base64 token");
        String::from_utf8(raw).expect("token text")
    };
    std::fs::create_dir_all(dir.join("sa")).expect("mkdir");
    let ca = std::fs::read_to_string(rc.env_value("CA_CERT").expect("CA_CERT")).expect("ca");
    write(dir, "sa/ca.crt", &ca);
    write(dir, "sa/token", &format!("{token}\n"));
    write(
        dir,
        "admin.conf",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: real\n  cluster:\n    server: https://{}\n    certificate-authority: sa/ca.crt\nusers:\n- name: node-attach-serve\n  user:\n    tokenFile: sa/token\ncontexts:\n- name: serve\n  context: {{cluster: real, user: node-attach-serve}}\ncurrent-context: serve\n",
            rc.endpoint()
        ),
    )
}

/// What the ServiceAccount may and may not do, as kubectl reads the same kubeconfig (its CA
/// and token files relative to it), and the RBAC objects serve creates where kubeadm's are
/// missing, created in server dry runs as the ServiceAccount (the API server's escalation
/// checks run in a dry run too).
fn check_rights(sa: &Path, cwd: &Path) {
    let can = |args: &[&str]| {
        let out = kubectl_as(sa, cwd, &[&["auth", "can-i"], args].concat(), "");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    for (args, want) in [
        (
            &["list", "certificatesigningrequests.certificates.k8s.io"][..],
            "yes",
        ),
        (&["create", "secrets", "-n", "kube-system"], "yes"),
        (&["patch", "nodes"], "yes"),
        (&["get", "secrets", "-n", "kube-system"], "no"),
        // A use is a Secret of its own: created, listed once per token, deleted when given back.
        (&["list", "secrets", "-n", "node-attach"], "yes"),
        (&["create", "secrets", "-n", "node-attach"], "yes"),
        (&["delete", "secrets", "-n", "node-attach"], "yes"),
        (
            &["get", "certificatesigningrequests.certificates.k8s.io"],
            "yes",
        ),
        (&["list", "secrets", "-n", "kube-system"], "no"),
        (&["delete", "secrets", "-n", "kube-system"], "no"),
        (&["get", "secrets", "-n", "default"], "no"),
        (&["create", "pods", "-n", "kube-system"], "no"),
        (&["update", "certificatesigningrequests/approval"], "no"),
    ] {
        assert_eq!(can(args), want, "can-i {args:?}");
    }
    // The watch on cluster-info (by name, as serve opens it) is allowed.
    let watched = kubectl_as(
        sa,
        cwd,
        &[
            "-n",
            "kube-public",
            "get",
            "configmap",
            "cluster-info",
            "--watch",
            "--request-timeout=3s",
        ],
        "",
    );
    assert!(
        !text(&watched).to_lowercase().contains("forbidden"),
        "{}",
        text(&watched)
    );
    let rbac = "apiVersion: rbac.authorization.k8s.io/v1";
    let objects = [
        format!("{rbac}\nkind: ClusterRole\nmetadata: {{name: node-attach-test-get-nodes}}\nrules:\n- {{apiGroups: [''], resources: [nodes], verbs: [get]}}\n"),
        format!("{rbac}\nkind: ClusterRoleBinding\nmetadata: {{name: node-attach-test-bootstrap}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:node-bootstrapper}}\nsubjects:\n- {{apiGroup: rbac.authorization.k8s.io, kind: Group, name: 'system:bootstrappers:kubeadm:default-node-token'}}\n"),
        format!("{rbac}\nkind: ClusterRoleBinding\nmetadata: {{name: node-attach-test-autoapprove}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: 'system:certificates.k8s.io:certificatesigningrequests:nodeclient'}}\nsubjects:\n- {{apiGroup: rbac.authorization.k8s.io, kind: Group, name: 'system:bootstrappers:kubeadm:default-node-token'}}\n"),
        format!("{rbac}\nkind: Role\nmetadata: {{name: node-attach-test-kubeadm-config, namespace: kube-system}}\nrules:\n- {{apiGroups: [''], resources: [configmaps], resourceNames: [kubeadm-config], verbs: [get]}}\n"),
        format!("{rbac}\nkind: RoleBinding\nmetadata: {{name: node-attach-test-kubelet-config, namespace: kube-system}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: 'kubeadm:kubelet-config-1.20'}}\nsubjects:\n- {{apiGroup: rbac.authorization.k8s.io, kind: Group, name: 'system:nodes'}}\n"),
        format!("{rbac}\nkind: Role\nmetadata: {{name: node-attach-test-cluster-info, namespace: kube-public}}\nrules:\n- {{apiGroups: [''], resources: [configmaps], resourceNames: [cluster-info], verbs: [get]}}\n"),
        format!("{rbac}\nkind: RoleBinding\nmetadata: {{name: node-attach-test-cluster-info, namespace: kube-public}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: 'kubeadm:bootstrap-signer-clusterinfo'}}\nsubjects:\n- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: 'system:anonymous'}}\n"),
    ];
    for obj in &objects {
        let out = kubectl_as(sa, cwd, &["create", "--dry-run=server", "-f", "-"], obj);
        assert!(out.status.success(), "{obj}\n{}", text(&out));
    }
    // Least privilege: what it may bind is only what joining needs.
    let escalation = format!("{rbac}\nkind: ClusterRoleBinding\nmetadata: {{name: node-attach-test-admin}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}}\nsubjects:\n- {{kind: ServiceAccount, name: node-attach-serve, namespace: node-attach}}\n");
    let out = kubectl_as(
        sa,
        cwd,
        &["create", "--dry-run=server", "-f", "-"],
        &escalation,
    );
    assert!(!out.status.success(), "bound cluster-admin: {}", text(&out));
    assert!(text(&out).contains("forbidden"), "{}", text(&out));
}

#[test]
fn serve_does_its_whole_job_with_the_deploy_rbac_alone() {
    let Some(rc) = real_cluster() else { return };
    let name = "real-deploy-rbac-1";
    let _ = rc.kubectl(&["delete", "node", name, "--ignore-not-found"]);
    let dir = tempfile::tempdir().expect("tmp");
    let svc = dir.path().join("svc");
    std::fs::create_dir_all(&svc).expect("mkdir");
    let sa = service_account_kubeconfig(rc, &svc);
    check_rights(&sa, dir.path());

    // The service with the ServiceAccount's kubeconfig only (svc/admin.conf is the SA's).
    let ca = test_control_plane::pki::Ca::new("values-service-ca");
    let cert = ca.issue_server(&["127.0.0.1".into()]);
    write(&svc, "svc.crt", &cert.cert_pem);
    write(&svc, "svc.key", &cert.key_pem);
    let ca_file = write(dir.path(), "ca.pem", ca.cert_pem());
    let service = replica(&svc, free_port());
    let values = r#"{"apiVersion": "node-attach.io/v1", "kind": "ClusterValues", "clusterDNS": ["10.96.0.10"],
        "labels": {"workload_type": "cpu", "k8s.io/cluster-autoscaler": "true"}}"#;
    let values = write(dir.path(), "values.json", values)
        .display()
        .to_string();
    let admin = rc.admin_kubeconfig_path().display().to_string();
    let created = run(&[
        "token",
        "openapi",
        "--kubeconfig",
        &admin,
        "--values",
        &values,
        "--uses",
        "1",
        "--public-url",
        &service.url,
    ]);
    created.expect_code(0);
    let token = created.stdout.split('\'').nth(1).expect("token").to_owned();

    let mut node = Node::new();
    node.kubelet();
    let url = format!("{}/v1/values/{{token}}", service.url);
    let ca_path = ca_file.display().to_string();
    let joined = run_with(
        &[
            "join",
            "--root",
            &node.root(),
            "--values-url",
            &url,
            "--values-ca-file",
            &ca_path,
            "--node-name",
            name,
            "--node-wait-timeout",
            "60s",
        ],
        &[("NODE_ATTACH_OPENAPI_TOKEN", &token)],
        Duration::from_secs(120),
    );
    joined.expect_code(0).expect_no_secret(&[&token]);
    let label = || {
        let out = rc.kubectl(&[
            "get",
            "node",
            name,
            "-o",
            "jsonpath={.metadata.labels.k8s\\.io/cluster-autoscaler}",
        ]);
        String::from_utf8_lossy(&out.stdout).trim() == "true"
    };
    assert!(
        eventually(Duration::from_secs(20), label),
        "the service did not apply the restricted label:\n{}",
        service.stderr.lock().expect("lock")
    );

    let reset = run_with(
        &["reset", "--root", &node.root(), "--delete-node"],
        &[],
        Duration::from_secs(60),
    );
    reset
        .expect_code(0)
        .expect_output(&format!("deleted {name} (by the values service)"));
    let gone = || !rc.kubectl(&["get", "node", name]).status.success();
    assert!(
        eventually(Duration::from_secs(10), gone),
        "the Node is still there"
    );

    let m = scrape(&service.url, &ca_file);
    let uses = "node_attach_serve_token_uses_total";
    assert_eq!(value(&m, uses, &[("outcome", "served")]), 1.0, "{m:?}");
    assert_eq!(value(&m, "node_attach_serve_mint_failures_total", &[]), 0.0);
    assert_eq!(
        value(&m, "node_attach_serve_labels_applied_total", &[]),
        1.0
    );
    let removals = "node_attach_serve_node_removals_total";
    assert_eq!(value(&m, removals, &[("outcome", "deleted")]), 1.0);
    let reports = "node_attach_serve_callback_reports_total";
    assert_eq!(
        value(&m, reports, &[("status", "success"), ("code", "")]),
        1.0
    );
    assert_eq!(
        value(&m, reports, &[("status", "removed"), ("code", "")]),
        1.0
    );
    let (code, _) = crate::metrics::get(&format!("{}/readyz", service.url), &ca_file);
    assert_eq!(code, 200);
    // The log is whole once the process has exited and its reader thread let go of it.
    let stderr = service.stderr.clone();
    drop(service);
    assert!(eventually(Duration::from_secs(10), || {
        std::sync::Arc::strong_count(&stderr) == 1
    }));
    let log = stderr.lock().expect("lock").clone();
    assert!(!log.contains(&token), "{log}");
    assert!(!log.to_lowercase().contains("forbidden"), "{log}");
    assert!(
        log.contains("tokenFile") || log.contains("a token file"),
        "{log}"
    );
}

/// Two replicas starting together both find a joining binding missing and both create it: the
/// second create answers 409 AlreadyExists, which is no failure (here the 409 is injected for
/// the first binding, so the run also shows nothing else is created twice or lost).
#[test]
fn a_create_conflict_in_the_joining_rbac_is_another_replica_s_create() {
    let cp = control_plane_with(Options {
        kubeadm_rbac: false,
        ..Options::default()
    });
    cp.set_faults(|f| {
        f.api.push_back(test_control_plane::ApiFault {
            method: "POST".into(),
            path_contains: "/clusterrolebindings".into(),
            query_contains: String::new(),
            kind: test_control_plane::ApiFaultKind::Echo(409, "already exists".into()),
        })
    });
    let dir = tempfile::tempdir().expect("tmp");
    let admin = write(dir.path(), "admin.conf", &cp.admin_kubeconfig());
    let created = run(&[
        "token",
        "create",
        "--kubeconfig",
        &admin.display().to_string(),
    ]);
    created
        .expect_code(0)
        .expect_output("created kubeadm:node-autoapprove-bootstrap");
    assert!(
        !created.all().contains("created kubeadm:kubelet-bootstrap"),
        "{}",
        created.all()
    );
}
