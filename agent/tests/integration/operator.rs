//! The operator flow: `token create` on a cluster without kubeadm's RBAC rules, the printed
//! join command joining a node, `token list`, `token delete` ending the token's use.

use crate::join::{join, Node};
use crate::support::*;
use std::time::Duration;

#[test]
fn token_create_join_list_delete() {
    let cp = control_plane_with(Options {
        kubeadm_rbac: false,
        ..Options::default()
    });
    let dir = tempfile::tempdir().expect("tmp");
    let admin = write(dir.path(), "admin.conf", &cp.admin_kubeconfig());
    let admin = admin.display().to_string();
    let created = run(&[
        "token",
        "create",
        "--kubeconfig",
        &admin,
        "--print-join-command",
        "--ttl",
        "1h",
    ]);
    created
        .expect_code(0)
        .expect_output("RBAC: created kubeadm:node-autoapprove-bootstrap");
    let line = created
        .stdout
        .lines()
        .find(|l| l.contains("node-attach join"))
        .expect("join command")
        .to_owned();
    let token = line.split('\'').nth(1).expect("quoted token").to_owned();
    assert!(
        token
            .parse::<node_attach::model::token::BootstrapToken>()
            .is_ok(),
        "{line}"
    );
    assert!(
        line.contains(&format!("--discovery-token-ca-cert-hash {}", cp.ca_pin())),
        "{line}"
    );
    let secret = cp
        .get(
            Kind::Secret,
            "kube-system",
            &format!("bootstrap-token-{}", &token[..6]),
        )
        .expect("secret");
    assert_eq!(secret["type"], "bootstrap.kubernetes.io/token");
    assert!(cp.wait_signed(&token[..6], Duration::from_secs(5)));

    // The printed command joins a node (CSR auto-approved through the bindings just created).
    let mut node = Node::new();
    node.kubelet();
    let endpoint = line
        .split("--endpoint ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("endpoint")
        .to_owned();
    let args: Vec<String> = [
        "join",
        "--root",
        &node.root(),
        "--endpoint",
        &endpoint,
        "--discovery-token-ca-cert-hash",
        &cp.ca_pin(),
        "--node-name",
        "operator-node",
        "--node-wait-timeout",
        "30s",
        "--csr-timeout",
        "10s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    join(&args, &[("NODE_ATTACH_TOKEN", &token)]).expect_code(0);
    assert!(cp.get(Kind::Node, "", "operator-node").is_some());

    // A second create changes no RBAC.
    let again = run(&["token", "create", "--kubeconfig", &admin]);
    again.expect_code(0);
    assert!(!again.all().contains("RBAC:"), "{}", again.all());
    let list = run(&["token", "list", "--kubeconfig", &admin]);
    list.expect_code(0)
        .expect_output(&format!("{}.<hidden>", &token[..6]));
    assert!(
        !list.stdout.contains(&token),
        "list shows secrets only with --show-secret"
    );
    run(&["token", "list", "--kubeconfig", &admin, "--show-secret"])
        .expect_code(0)
        .expect_output(&token);

    run(&["token", "delete", "--kubeconfig", &admin, &token[..6]])
        .expect_code(0)
        .expect_output("deleted");
    assert!(
        cp.wait_unsigned(&token[..6], Duration::from_secs(10)),
        "the bootstrap signer did not remove the deleted token's signature"
    );
    let pin = cp.ca_pin();
    let ep = cp.endpoint();
    run_with(
        &[
            "discover",
            "--endpoint",
            &ep,
            "--discovery-token-ca-cert-hash",
            &pin,
            "--discovery-timeout",
            "2s",
        ],
        &[("NODE_ATTACH_TOKEN", &token)],
        Duration::from_secs(30),
    )
    .expect_code(22);
}

#[test]
fn userdata_is_printed_ready_to_use() {
    let cp = control_plane();
    let dir = tempfile::tempdir().expect("tmp");
    let admin = write(dir.path(), "admin.conf", &cp.admin_kubeconfig());
    let admin = admin.display().to_string();
    let bash = run(&[
        "token",
        "create",
        "--kubeconfig",
        &admin,
        "--print-userdata",
        "bash",
        "--base-url",
        "https://files.example/na",
    ]);
    bash.expect_code(0).expect_output("#!/bin/bash").expect_output("curl -fsSL --retry 5 --retry-connrefused https://files.example/na/attach.sh | NODE_ATTACH_TOKEN=");
    let cc = run(&[
        "token",
        "create",
        "--kubeconfig",
        &admin,
        "--print-userdata",
        "cloud-config",
        "--base-url",
        "https://files.example/na",
    ]);
    cc.expect_code(0)
        .expect_output("#cloud-config")
        .expect_output("permissions: \"0600\"");
    let yaml_start = cc.stdout.find("#cloud-config").expect("start");
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&cc.stdout[yaml_start..]).expect("valid YAML");
    assert!(doc["write_files"][0]["content"]
        .as_str()
        .expect("content")
        .contains("discovery-token-ca-cert-hash"));
}
