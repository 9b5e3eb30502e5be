//! The values service: openapi tokens with a use limit, a fresh bootstrap token per use,
//! restricted labels applied to exactly the node that used the token, two replicas and a
//! restart sharing state kept in the cluster.

use crate::join::{join, Node};
use crate::support::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn wait_label(cp: &TestControlPlane, node: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if cp
            .get(Kind::Node, "", node)
            .is_some_and(|n| n["metadata"]["labels"]["k8s.io/cluster-autoscaler"] == "true")
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn openapi_tokens_mint_bootstrap_tokens_and_apply_restricted_labels() {
    let cp = control_plane();
    let dir = tempfile::tempdir().expect("tmp");
    write(dir.path(), "admin.conf", &cp.admin_kubeconfig());
    let cert = cp.issue_server(&["127.0.0.1".into()]);
    write(dir.path(), "svc.crt", &cert.cert_pem);
    write(dir.path(), "svc.key", &cert.key_pem);
    let ca = write(dir.path(), "ca.pem", &cp.ca_pem());
    write(
        dir.path(),
        "values.json",
        r#"{"apiVersion": "node-attach.io/v1", "kind": "ClusterValues", "clusterDNS": ["10.96.0.10"],
            "labels": {"workload_type": "cpu", "k8s.io/cluster-autoscaler": "true"}}"#,
    );
    let (pa, pb) = (free_port(), free_port());
    let mut a = replica(dir.path(), pa);
    let b = replica(dir.path(), pb);
    let admin = dir.path().join("admin.conf").display().to_string();
    let values = dir.path().join("values.json").display().to_string();
    let created = run(&[
        "token",
        "openapi",
        "--kubeconfig",
        &admin,
        "--values",
        &values,
        "--uses",
        "2",
        "--public-url",
        &a.url,
    ]);
    created.expect_code(0);
    let token = created
        .stdout
        .split('\'')
        .nth(1)
        .expect("token in the printed command")
        .to_owned();

    let node_join = |url: &str, name: &str| {
        let mut node = Node::new();
        node.kubelet();
        let args: Vec<String> = [
            "join",
            "--root",
            &node.root(),
            "--values-url",
            &format!("{url}/v1/values/{{token}}"),
            "--values-ca-file",
            &ca.display().to_string(),
            "--node-name",
            name,
            "--node-wait-timeout",
            "30s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let run = join(&args, &[("NODE_ATTACH_OPENAPI_TOKEN", &token)]);
        (node, run)
    };
    let (_n1, r1) = node_join(&a.url, "served-1");
    r1.expect_code(0)
        .expect_output("k8s.io/cluster-autoscaler=true")
        .expect_no_secret(&[&token]);
    assert!(
        wait_label(&cp, "served-1"),
        "the service did not apply the restricted label"
    );
    // The node registered with the startup taint; the service removed it with the label.
    let flags =
        std::fs::read_to_string(_n1.path("/var/lib/kubelet/kubeadm-flags.env")).expect("flags");
    assert!(
        flags.contains("node.node-attach.io/labels-pending:NoSchedule"),
        "{flags}"
    );
    let taints = cp.get(Kind::Node, "", "served-1").expect("node")["spec"]["taints"].clone();
    assert!(!taints.to_string().contains("labels-pending"), "{taints}");

    // Restart replica A; use the other replica: state lives in the cluster.
    let _ = a.child.kill();
    let _ = a.child.wait();
    a = replica(dir.path(), pa);
    let (_n2, r2) = node_join(&b.url, "served-2");
    r2.expect_code(0);
    assert!(wait_label(&cp, "served-2"));
    let (_n3, r3) = node_join(&a.url, "served-3");
    r3.expect_code(11).expect_output("used up");

    // Each use minted its own bootstrap token; the service never logged the openapi token.
    let minted = cp
        .list(Kind::Secret)
        .into_iter()
        .filter(|s| {
            s["type"] == "bootstrap.kubernetes.io/token"
                && s["metadata"]["name"] != "bootstrap-token-abcdef"
        })
        .count();
    assert_eq!(minted, 2);

    // Each use is a slot Secret of its own, created once; the token's record is never written
    // again, and the callbacks read the one CSR each report names, never the list.
    let slots: Vec<_> = cp
        .list(Kind::Secret)
        .into_iter()
        .filter(|s| s["metadata"]["labels"]["node-attach.io/kind"] == "openapi-use")
        .collect();
    assert_eq!(slots.len(), 2, "{slots:?}");
    let admin_requests: Vec<_> = cp
        .requests()
        .into_iter()
        .filter(|r| r.user == "kubernetes-admin")
        .collect();
    let record_writes = admin_requests
        .iter()
        .filter(|r| r.method != "GET" && r.path.contains("/secrets/node-attach-openapi-"))
        .count();
    assert_eq!(record_writes, 0, "{admin_requests:?}");
    let csr_lists = admin_requests
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/certificatesigningrequests"))
        .count();
    assert_eq!(csr_lists, 0, "{admin_requests:?}");
    // ... and read the use its callback URL names, by name: no list of the token's uses by
    // bootstrap id or node (the only lists are each replica learning which slots are taken).
    let use_lookups = admin_requests
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/secrets"))
        .filter(|r| r.query.contains("bootstrap-id") || r.query.contains("io%2Fnode"))
        .count();
    assert_eq!(use_lookups, 0, "{admin_requests:?}");
    let slot_reads = admin_requests
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/secrets/node-attach-use-"))
        .count();
    assert_eq!(
        slot_reads, 2,
        "one read of its slot per report: {admin_requests:?}"
    );
}

#[test]
fn the_anonymous_endpoint_is_rate_limited_and_refuses_unknown_tokens() {
    let cp = control_plane();
    let dir = tempfile::tempdir().expect("tmp");
    write(dir.path(), "admin.conf", &cp.admin_kubeconfig());
    let cert = cp.issue_server(&["127.0.0.1".into()]);
    write(dir.path(), "svc.crt", &cert.cert_pem);
    write(dir.path(), "svc.key", &cert.key_pem);
    let port = free_port();
    let r = replica(dir.path(), port);
    node_attach::trust::tls::install_provider();
    let roots = node_attach::trust::pin::certificates_from_pem(cp.ca_pem().as_bytes()).expect("ca");
    let http = node_attach::client::http::Http::new(
        node_attach::trust::tls::trusting_only(&roots).expect("tls"),
        node_attach::client::http::Limits::default(),
    )
    .expect("client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let mut statuses = Vec::new();
    for _ in 0..15 {
        let target = node_attach::client::http::Target::public(
            url::Url::parse(&format!("{}/v1/values/unknown-token-0000", r.url)).expect("url"),
        );
        let status = match rt.block_on(http.send(node_attach::client::http::Request::get(&target)))
        {
            Ok(_) => 200,
            Err(e) => e.status().unwrap_or(0),
        };
        statuses.push(status);
    }
    assert_eq!(statuses[0], 404, "{statuses:?}");
    assert!(statuses.contains(&429), "no rate limit: {statuses:?}");
    let log = r.stderr.lock().expect("lock").clone();
    assert!(!log.contains("unknown-token-0000"), "{log}");
}

#[test]
fn acks_node_info_form_is_served_too() {
    let cp = control_plane();
    let dir = tempfile::tempdir().expect("tmp");
    write(dir.path(), "admin.conf", &cp.admin_kubeconfig());
    let cert = cp.issue_server(&["127.0.0.1".into()]);
    write(dir.path(), "svc.crt", &cert.cert_pem);
    write(dir.path(), "svc.key", &cert.key_pem);
    write(
        dir.path(),
        "values.json",
        r#"{"apiVersion": "node-attach.io/v1", "kind": "ClusterValues", "clusterDNS": ["10.96.0.10"], "nodeNameMode": "nodeip"}"#,
    );
    let r = replica(dir.path(), free_port());
    let admin = dir.path().join("admin.conf").display().to_string();
    let values = dir.path().join("values.json").display().to_string();
    let created = run(&[
        "token",
        "openapi",
        "--kubeconfig",
        &admin,
        "--values",
        &values,
    ]);
    let token = created.expect_code(0).stdout.trim().to_owned();
    node_attach::trust::tls::install_provider();
    let roots = node_attach::trust::pin::certificates_from_pem(cp.ca_pem().as_bytes()).expect("ca");
    let http = node_attach::client::http::Http::new(
        node_attach::trust::tls::trusting_only(&roots).expect("tls"),
        node_attach::client::http::Limits::default(),
    )
    .expect("client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let source = node_attach::sources::values::ValuesSource {
        template: format!(
            "{}/token/{{token}}/instance/{{instance_id}}/node_info",
            r.url
        ),
        token: token.parse().expect("token"),
        instance_id: Some("i-0001".into()),
        region: None,
        allow_insecure: false,
    };
    let v = rt
        .block_on(node_attach::sources::values::fetch(
            &http,
            &source,
            Duration::from_secs(10),
        ))
        .expect("ack values");
    assert_eq!(
        v.format,
        node_attach::sources::values::ValuesFormat::AckText
    );
    assert!(v.bootstrap_token.is_some());
    assert_eq!(v.api_server_endpoints[0].to_string(), cp.endpoint());
    assert_eq!(
        v.node_name_mode,
        Some(node_attach::sources::values::NodeNameMode::NodeIp)
    );
}

/// The largest resident set `pid` has had, in KiB (VmHWM).
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[test]
fn files_are_served_read_only_streamed_and_confined_to_their_directory() {
    let cp = control_plane();
    let dir = tempfile::tempdir().expect("tmp");
    write(dir.path(), "admin.conf", &cp.admin_kubeconfig());
    let cert = cp.issue_server(&["127.0.0.1".into()]);
    write(dir.path(), "svc.crt", &cert.cert_pem);
    write(dir.path(), "svc.key", &cert.key_pem);
    let ca = write(dir.path(), "ca.pem", &cp.ca_pem());
    let www = dir.path().join("www");
    std::fs::create_dir_all(www.join("sub")).expect("mkdir");
    write(&www, "attach.sh", "#!/bin/sh\necho attach\n");
    write(&www.join("sub"), "n.sha256", "abc  n\n");
    write(dir.path(), "secret.txt", "outside the served directory");
    std::os::unix::fs::symlink("../secret.txt", www.join("escape")).expect("symlink");
    // A 200 MiB sparse file: served whole, yet never held in memory.
    let big = std::fs::File::create(www.join("big")).expect("big");
    big.set_len(200 << 20).expect("set_len");
    drop(big);
    let www_arg = www.display().to_string();
    // Many requests from one address: lift the rate limit for this test.
    let r = replica_with(
        dir.path(),
        free_port(),
        &["--files", &www_arg, "--rate-per-minute", "100000"],
    );
    let curl = |args: &[&str]| -> (String, String) {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "60", "--cacert"])
            .arg(&ca)
            .args(args)
            .output()
            .expect("curl");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let status = |method: &str, path: &str| -> String {
        curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--path-as-is",
            "-X",
            method,
            &format!("{}{path}", r.url),
        ])
        .0
    };

    let (body, _) = curl(&[&format!("{}/files/attach.sh", r.url)]);
    assert_eq!(body, "#!/bin/sh\necho attach\n");
    assert_eq!(
        curl(&[&format!("{}/files/sub/n.sha256", r.url)]).0,
        "abc  n\n"
    );
    // HEAD: the headers a download would get, no body.
    let (head, _) = curl(&["-I", &format!("{}/files/big", r.url)]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-length: 209715200"),
        "{head}"
    );
    // Only GET and HEAD; no listing; no way out; no symlinks; no hidden files.
    assert_eq!(status("POST", "/files/attach.sh"), "405");
    assert_eq!(status("PUT", "/files/attach.sh"), "405");
    assert_eq!(status("GET", "/files/"), "400");
    assert_eq!(status("GET", "/files/sub"), "404");
    assert_eq!(status("GET", "/files/../secret.txt"), "400");
    assert_eq!(status("GET", "/files/sub/../../secret.txt"), "400");
    assert_eq!(status("GET", "/files/%2e%2e/secret.txt"), "400");
    assert_eq!(status("GET", "/files/sub%2f..%2f..%2fsecret.txt"), "400");
    assert_eq!(status("GET", "/files/escape"), "404");
    assert_eq!(status("GET", "/files/.hidden"), "400");
    assert_eq!(status("GET", "/files/missing"), "404");

    let before = peak_rss_kib(r.child.id());
    let (size, err) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{size_download} %{http_code}",
        &format!("{}/files/big", r.url),
    ]);
    assert_eq!(size, "209715200 200", "{err}");
    let grown = peak_rss_kib(r.child.id()).saturating_sub(before);
    assert!(
        grown < 64 * 1024,
        "serving a 200 MiB file grew the peak RSS by {grown} KiB: not streamed"
    );
    let log = r.stderr.lock().expect("lock").clone();
    assert!(!log.contains("outside the served directory"), "{log}");
}

/// The service in `dir` (admin.conf, svc.crt/key, ca.pem written; `extra` flags) and an
/// openapi token for `uses` joins.
fn service_with_token(
    cp: &TestControlPlane,
    dir: &std::path::Path,
    uses: u32,
    extra: &[&str],
) -> (Replica, String) {
    write(dir, "admin.conf", &cp.admin_kubeconfig());
    let cert = cp.issue_server(&["127.0.0.1".into()]);
    write(dir, "svc.crt", &cert.cert_pem);
    write(dir, "svc.key", &cert.key_pem);
    write(dir, "ca.pem", &cp.ca_pem());
    let values = r#"{"apiVersion": "node-attach.io/v1", "kind": "ClusterValues", "clusterDNS": ["10.96.0.10"]}"#;
    let values = write(dir, "values.json", values).display().to_string();
    let service = replica_with(dir, free_port(), extra);
    let admin = dir.join("admin.conf").display().to_string();
    let uses = uses.to_string();
    let args = [
        "token",
        "openapi",
        "--kubeconfig",
        &admin,
        "--values",
        &values,
    ];
    let created = run(&[&args[..], &["--uses", &uses, "--public-url", &service.url]].concat());
    created.expect_code(0);
    let token = created.stdout.split('\'').nth(1).expect("token").to_owned();
    (service, token)
}

/// A node joined through the service as `name`.
fn join_through(service: &Replica, token: &str, ca: &std::path::Path, name: &str) -> Node {
    let mut node = Node::new();
    node.kubelet();
    let url = format!("{}/v1/values/{{token}}", service.url);
    let args = [
        "join",
        "--root",
        &node.root(),
        "--values-url",
        &url,
        "--values-ca-file",
    ];
    let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    args.extend([ca.display().to_string(), "--node-name".into(), name.into()]);
    args.extend(["--node-wait-timeout".into(), "30s".into()]);
    join(&args, &[("NODE_ATTACH_OPENAPI_TOKEN", token)]).expect_code(0);
    node
}

/// POSTs a removal report for `node` to the callback with curl, presenting `cert` if given;
/// returns the service's JSON answer.
fn removal_report(
    service: &Replica,
    token: &str,
    ca: &std::path::Path,
    node: &str,
    cert: Option<&std::path::Path>,
) -> serde_json::Value {
    let body =
        serde_json::json!({"status": "removed", "node": node, "problems": 0, "delete_node": true});
    let mut curl = Command::new("curl");
    curl.args(["-sS", "--max-time", "20", "--cacert"]).arg(ca);
    if let Some(cert) = cert {
        curl.arg("--cert").arg(cert);
    }
    let url = format!("{}/v1/callback/{token}", service.url);
    let out = curl
        .args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            &body.to_string(),
            &url,
        ])
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON answer")
}

#[test]
fn the_service_deletes_the_node_of_a_reset_that_proves_it_is_that_node() {
    removal_through_the_service(control_plane());
}

/// On a 1.18 cluster CSRs are certificates.k8s.io/v1beta1: the service finds the node's CSR
/// there.
#[test]
fn the_service_finds_the_nodes_csr_in_the_api_of_a_1_18_cluster() {
    removal_through_the_service(control_plane_with(Options {
        kubernetes_version: "v1.18.20".into(),
        ..Options::default()
    }));
}

fn removal_through_the_service(cp: TestControlPlane) {
    let dir = tempfile::tempdir().expect("tmp");
    let (service, token) = service_with_token(&cp, dir.path(), 2, &[]);
    let ca = dir.path().join("ca.pem");
    let n1 = join_through(&service, &token, &ca, "removed-1");
    let _n2 = join_through(&service, &token, &ca, "removed-2");

    // Neither an anonymous report nor another node's certificate deletes a Node.
    let anonymous = removal_report(&service, &token, &ca, "removed-2", None);
    assert_eq!(anonymous["node"], "refused", "{anonymous}");
    assert!(
        anonymous["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not authenticated")),
        "{anonymous}"
    );
    // The kubelet's "current" link is absolute inside the node's root.
    let link = n1.path("/var/lib/kubelet/pki/kubelet-client-current.pem");
    let target = std::fs::read_link(&link).expect("the current link");
    let n1_cert = n1.path(&target.display().to_string());
    let other = removal_report(&service, &token, &ca, "removed-2", Some(&n1_cert));
    assert_eq!(other["node"], "refused", "{other}");
    assert!(
        cp.get(Kind::Node, "", "removed-2").is_some(),
        "removed-2 was deleted"
    );

    // The node's own reset, with no admin kubeconfig: the service deletes exactly its Node.
    let reset = run(&["reset", "--root", &n1.root(), "--delete-node"]);
    reset
        .expect_code(0)
        .expect_output("deleted removed-1 (by the values service)")
        .expect_no_secret(&[&token]);
    assert!(
        cp.get(Kind::Node, "", "removed-1").is_none(),
        "removed-1 is still there"
    );
    assert!(
        cp.get(Kind::Node, "", "removed-2").is_some(),
        "removed-2 was deleted"
    );
    assert!(
        !service.stderr.lock().expect("lock").contains(&token),
        "the service logged the token"
    );
}

#[test]
fn a_service_that_keeps_removed_nodes_says_so_and_reset_names_the_fix() {
    let cp = control_plane();
    let dir = tempfile::tempdir().expect("tmp");
    let (service, token) = service_with_token(&cp, dir.path(), 1, &["--keep-removed-nodes"]);
    let ca = dir.path().join("ca.pem");
    let node = join_through(&service, &token, &ca, "kept-1");
    let reset = run(&["reset", "--root", &node.root(), "--delete-node"]);
    reset
        .expect_code(80)
        .expect_output("--keep-removed-nodes")
        .expect_output("kubectl delete node kept-1");
    assert!(cp.get(Kind::Node, "", "kept-1").is_some());
}

/// A retry of one values request (the same `X-Node-Attach-Request` id, as node-attach sends on
/// every attempt of one fetch) gets the answer of the first attempt, not a second use; another
/// id takes another use, and then the token is used up.
#[test]
fn a_retried_values_request_gets_the_same_use() {
    let cp = control_plane();
    let dir = tempfile::tempdir().expect("tmp");
    let (service, token) = service_with_token(&cp, dir.path(), 2, &[]);
    node_attach::trust::tls::install_provider();
    let roots = node_attach::trust::pin::certificates_from_pem(cp.ca_pem().as_bytes()).expect("ca");
    let http = node_attach::client::http::Http::new(
        node_attach::trust::tls::trusting_only(&roots).expect("tls"),
        node_attach::client::http::Limits::default(),
    )
    .expect("client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let target = node_attach::client::http::Target::public(
        url::Url::parse(&format!("{}/v1/values/{token}", service.url)).expect("url"),
    );
    let ask = |id: &str| {
        let mut req = node_attach::client::http::Request::get(&target);
        req.request_id = Some(id);
        match rt.block_on(http.send(req)) {
            Ok(reply) => {
                let v: serde_json::Value = serde_json::from_slice(&reply.body).expect("json");
                Ok(v["bootstrapToken"].as_str().expect("token").to_owned())
            }
            Err(e) => Err(e.status().unwrap_or(0)),
        }
    };
    let (first, second) = ("0".repeat(32), "1".repeat(32));
    let a = ask(&first).expect("first use");
    assert_eq!(ask(&first), Ok(a.clone()), "a retry took another use");
    let b = ask(&second).expect("second use");
    assert_ne!(a, b);
    assert_eq!(ask(&"2".repeat(32)), Err(410), "a third use of two");
    let slots = cp
        .list(Kind::Secret)
        .into_iter()
        .filter(|s| s["metadata"]["labels"]["node-attach.io/kind"] == "openapi-use")
        .count();
    assert_eq!(slots, 2);
}

/// A use's bootstrap token is signed into cluster-info some time after it is minted: the values
/// answer waits for that (one watch of cluster-info per replica), so the node's discovery finds
/// the signature at its first read instead of reading again until it appears.
#[test]
fn a_values_answer_waits_until_its_token_signs_cluster_info() {
    let cp = control_plane_with(Options {
        signing_delay: Duration::from_millis(1500),
        ..Options::default()
    });
    let dir = tempfile::tempdir().expect("tmp");
    let (service, token) = service_with_token(&cp, dir.path(), 1, &[]);
    let ca = dir.path().join("ca.pem");
    let before = cp.requests().len();
    let _node = join_through(&service, &token, &ca, "signed-first-1");
    let anonymous_reads = cp.requests()[before..]
        .iter()
        .filter(|r| r.user == "system:anonymous" && r.path.ends_with("/configmaps/cluster-info"))
        .count();
    assert_eq!(
        anonymous_reads, 1,
        "one read of cluster-info, already signed"
    );
    let watches = cp
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/kube-public/configmaps") && r.query.contains("watch=true"))
        .count();
    assert!(watches >= 1, "the service watches cluster-info");
}

/// A replica that may read cluster-info but not watch it (RBAC from before the watch was
/// needed) cannot learn when a new token is signed: its values answers do not wait for that.
#[test]
fn a_values_answer_does_not_wait_when_cluster_info_cannot_be_watched() {
    use test_control_plane::{ApiFault, ApiFaultKind};
    let cp = control_plane();
    cp.set_faults(|f| {
        f.api.push_back(ApiFault {
            method: "GET".into(),
            path_contains: "/kube-public/configmaps".into(),
            query_contains: "watch=true".into(),
            kind: ApiFaultKind::Status(403, None),
        })
    });
    let dir = tempfile::tempdir().expect("tmp");
    let (service, token) = service_with_token(&cp, dir.path(), 1, &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !cp.shared().lock().faults.api.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the replica never watched cluster-info"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    node_attach::trust::tls::install_provider();
    let roots = node_attach::trust::pin::certificates_from_pem(cp.ca_pem().as_bytes()).expect("ca");
    let http = node_attach::client::http::Http::new(
        node_attach::trust::tls::trusting_only(&roots).expect("tls"),
        node_attach::client::http::Limits::default(),
    )
    .expect("client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let target = node_attach::client::http::Target::public(
        url::Url::parse(&format!("{}/v1/values/{token}", service.url)).expect("url"),
    );
    let asked = std::time::Instant::now();
    rt.block_on(http.send(node_attach::client::http::Request::get(&target)))
        .expect("values");
    assert!(
        asked.elapsed() < Duration::from_secs(4),
        "the answer waited {:?} for a signature the replica cannot see",
        asked.elapsed()
    );
}

/// A use's bootstrap token Secret created by an attempt whose answer was lost (a connection
/// reset mid-answer, an API server timing out after its write) is that use's: the retry's 409
/// is not a failure, and the node gets its values at the first ask.
#[test]
fn a_minted_token_whose_create_answer_was_lost_is_served() {
    use test_control_plane::{ApiFault, ApiFaultKind};
    let cp = control_plane();
    let dir = tempfile::tempdir().expect("tmp");
    let (service, token) = service_with_token(&cp, dir.path(), 1, &[]);
    cp.set_faults(|f| {
        f.api.push_back(ApiFault {
            method: "POST".into(),
            path_contains: "/namespaces/kube-system/secrets".into(),
            query_contains: String::new(),
            kind: ApiFaultKind::CutShort,
        })
    });
    node_attach::trust::tls::install_provider();
    let roots = node_attach::trust::pin::certificates_from_pem(cp.ca_pem().as_bytes()).expect("ca");
    let http = node_attach::client::http::Http::new(
        node_attach::trust::tls::trusting_only(&roots).expect("tls"),
        node_attach::client::http::Limits::default(),
    )
    .expect("client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let target = node_attach::client::http::Target::public(
        url::Url::parse(&format!("{}/v1/values/{token}", service.url)).expect("url"),
    );
    let reply = rt
        .block_on(http.send(node_attach::client::http::Request::get(&target)))
        .expect("values at the first ask");
    assert!(
        cp.shared().lock().faults.api.is_empty(),
        "the fault was never hit"
    );
    let v: serde_json::Value = serde_json::from_slice(&reply.body).expect("json");
    let minted = v["bootstrapToken"].as_str().expect("token").to_owned();
    let (id, secret) = minted.split_once('.').expect("id.secret");
    let stored = cp
        .get(
            Kind::Secret,
            "kube-system",
            &format!("bootstrap-token-{id}"),
        )
        .expect("the minted token's Secret");
    assert_eq!(
        test_control_plane::secret_data(&stored)["token-secret"],
        secret
    );
    let log = service.stderr.lock().expect("lock").clone();
    assert!(!log.contains("minting a bootstrap token failed"), "{log}");
}

/// Connections beyond `--max-connections` wait a few seconds for a free slot, then are closed;
/// a slot freed is taken by the next one.
#[test]
fn connections_beyond_the_bound_are_closed_after_a_short_wait() {
    let cp = control_plane();
    let dir = tempfile::tempdir().expect("tmp");
    let (service, _) = service_with_token(&cp, dir.path(), 1, &["--max-connections", "2"]);
    node_attach::trust::tls::install_provider();
    let roots = node_attach::trust::pin::certificates_from_pem(cp.ca_pem().as_bytes()).expect("ca");
    let http = node_attach::client::http::Http::new(
        node_attach::trust::tls::trusting_only(&roots).expect("tls"),
        node_attach::client::http::Limits::default(),
    )
    .expect("client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let target = node_attach::client::http::Target::public(
        url::Url::parse(&format!("{}/v1/values/unknown-token-0000", service.url)).expect("url"),
    );
    let ask = || match rt.block_on(http.send(node_attach::client::http::Request::get(&target))) {
        Ok(_) => Some(200),
        Err(e) => e.status(),
    };
    // Two connections that never say anything hold both slots (until the TLS handshake's
    // 10 s timeout).
    let addr = service.url.trim_start_matches("https://").to_owned();
    let quiet: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect(&addr).expect("connect"))
        .collect();
    let started = Instant::now();
    assert_eq!(ask(), None, "a third connection was served");
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
    drop(quiet);
    assert_eq!(ask(), Some(404), "a freed slot was not taken");
    let log = service.stderr.lock().expect("lock").clone();
    assert!(!log.contains("unknown-token-0000"), "{log}");
}

/// Headers sent a byte a second (slowloris) are cut off at the 10 s header deadline, and a
/// report's body sent so gets 408 at the body deadline, 20 s after its headers.
#[test]
fn requests_trickling_in_are_cut_off_at_their_read_deadlines() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cp = control_plane();
    let dir = tempfile::tempdir().expect("tmp");
    let (service, token) = service_with_token(&cp, dir.path(), 1, &[]);
    node_attach::trust::tls::install_provider();
    let roots = node_attach::trust::pin::certificates_from_pem(cp.ca_pem().as_bytes()).expect("ca");
    let tls = node_attach::trust::tls::trusting_only(&roots).expect("tls");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let addr = service.url.trim_start_matches("https://").to_owned();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    // Sends `head`, then a byte a second until the server answers or closes (at most 40 s):
    // what it answered, and when.
    let trickle = |head: String| {
        rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect");
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
            let mut tls = connector.connect(name, tcp).await.expect("handshake");
            tls.write_all(head.as_bytes()).await.expect("write");
            let started = Instant::now();
            let mut answer = Vec::new();
            let mut buf = [0u8; 4096];
            while started.elapsed() < Duration::from_secs(40) {
                tokio::select! {
                    n = tls.read(&mut buf) => match n {
                        Ok(0) | Err(_) => break,
                        Ok(n) => answer.extend_from_slice(&buf[..n]),
                    },
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        if tls.write_all(b"x").await.is_err() {
                            break;
                        }
                    }
                }
            }
            (
                String::from_utf8_lossy(&answer).into_owned(),
                started.elapsed(),
            )
        })
    };
    let (answer, after) = trickle("GET /v1/values/x HTTP/1.1\r\nhost: a\r\nx-slow: ".into());
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        after >= Duration::from_secs(9) && after < Duration::from_secs(20),
        "headers trickled for {after:?}"
    );
    let head = format!(
        "POST /v1/callback/{token} HTTP/1.1\r\nhost: a\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n"
    );
    let (answer, after) = trickle(head);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        after >= Duration::from_secs(19) && after < Duration::from_secs(35),
        "a body trickled for {after:?}"
    );
}
