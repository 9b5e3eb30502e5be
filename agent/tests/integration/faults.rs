//! Transient faults after discovery: a 503, a 429 with Retry-After, a connection reset
//! mid-body and a truncated JSON answer on each request a join makes after trusting the API
//! server (kubeadm-config, kubelet-config, the CSR POST and its watch, the Node GET).
//! Each is retried with backoff and the join succeeds; a refusal that cannot heal fails at once
//! with its code.

use crate::join::{join, scale_out, Node};
use crate::support::*;
use std::time::{Duration, Instant};
use test_control_plane::{ApiFault, ApiFaultKind, Callback};

fn fault(method: &str, path: &str, query: &str, kind: ApiFaultKind) -> ApiFault {
    ApiFault {
        method: method.into(),
        path_contains: path.into(),
        query_contains: query.into(),
        kind,
    }
}

#[test]
fn each_request_after_discovery_survives_each_transient_fault() {
    let targets = [
        ("GET", "/configmaps/kubeadm-config", ""),
        ("GET", "/configmaps/kubelet-config", ""),
        ("POST", "/certificatesigningrequests", ""),
        ("GET", "/certificatesigningrequests", "watch=true"),
        ("GET", "/api/v1/nodes/", ""),
    ];
    let kinds = [
        ApiFaultKind::Status(503, None),
        ApiFaultKind::Status(429, Some(1)),
        ApiFaultKind::CutShort,
        ApiFaultKind::TruncatedJson,
    ];
    let cp = control_plane();
    for (i, (method, path, query)) in targets.iter().enumerate() {
        for (j, kind) in kinds.iter().enumerate() {
            if *query == "watch=true" && matches!(kind, ApiFaultKind::TruncatedJson) {
                continue; // a watch is a stream of lines; cut short covers it
            }
            cp.set_faults(|f| f.api.push_back(fault(method, path, query, kind.clone())));
            let mut node = Node::new();
            node.kubelet();
            let name = format!("fault-{i}-{j}");
            join(&scale_out(&cp, &node, &name), &[])
                .expect_code(0)
                .expect_output("registered");
            let left = cp.shared().lock().faults.api.len();
            assert_eq!(left, 0, "{method} {path} {kind:?}: the fault was never hit");
        }
    }
}

#[test]
fn a_server_echoing_the_token_secret_alone_never_gets_it_printed() {
    let cp = control_plane();
    cp.set_faults(|f| {
        f.api.push_back(fault(
            "GET",
            "/configmaps/kubeadm-config",
            "",
            ApiFaultKind::Echo(400, format!("token secret {SECRET} is not acceptable")),
        ))
    });
    let node = Node::new();
    // join() itself asserts that the secret appears nowhere in the output.
    join(&scale_out(&cp, &node, "echo-1"), &[])
        .expect_code(34)
        .expect_output("token secret [redacted] is not acceptable");
}

#[test]
fn a_refusal_that_cannot_heal_fails_at_once_with_its_code() {
    let cp = control_plane();
    for status in [400, 403, 501] {
        cp.set_faults(|f| {
            f.api.push_back(fault(
                "GET",
                "/configmaps/kubeadm-config",
                "",
                ApiFaultKind::Status(status, None),
            ))
        });
        let mut node = Node::new();
        node.kubelet();
        let before = cp.requests().len();
        let run = join(&scale_out(&cp, &node, &format!("refused-{status}")), &[]);
        if status == 403 {
            // A cluster that keeps kubeadm-config from bootstrap tokens: defaults apply.
            run.expect_code(0);
            continue;
        }
        run.expect_code(34).expect_output(&format!("HTTP {status}"));
        let asked = cp.requests()[before..]
            .iter()
            .filter(|r| r.path.ends_with("/configmaps/kubeadm-config"))
            .count();
        assert_eq!(asked, 0, "HTTP {status} was retried");
    }
}

/// An API server that refuses connections: join names the class (TCP connection refused) and
/// the retry deadline on stderr at its first failure, and tells the callback at once (status
/// `retrying`, cause `tcp-refused`), long before its discovery deadline.
#[test]
fn an_unreachable_api_server_is_named_and_reported_while_join_still_retries() {
    let cp = control_plane();
    let closed = crate::support::free_port();
    cp.add_values(
        "stall-openapi-token",
        ValuesEntry {
            json: serde_json::json!({
                "apiVersion": "node-attach.io/v1", "kind": "ClusterValues",
                "apiServerEndpoints": [format!("127.0.0.1:{closed}")], "bootstrapToken": TOKEN,
                "caCertHashes": [cp.ca_pin()],
                "callbackURL": format!("{}/callback/stall-secret-path", cp.url()),
            }),
            ack_text: String::new(),
        },
    );
    let node = crate::join::Node::new();
    let ca = write(node.dir.path(), "values-ca.pem", &cp.ca_pem());
    let url = format!("{}/v1/values/{{token}}", cp.url());
    let stderr = node.dir.path().join("stderr.txt");
    let mut child = std::process::Command::new(binary())
        .args([
            "join",
            "--root",
            &node.root(),
            "--openapi-token",
            "stall-openapi-token",
        ])
        .args(["--values-url", &url, "--values-ca-file"])
        .arg(&ca)
        .args(["--node-name", "stall-1", "--discovery-timeout", "5m"])
        .env_clear()
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("join");
    let retrying = |c: &Callback| c.body.contains("\"status\":\"retrying\"");
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        if let Some(c) = cp.callbacks().into_iter().find(retrying) {
            break Some(c);
        }
        if Instant::now() > deadline || child.try_wait().expect("wait").is_some() {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let still_retrying = child.try_wait().expect("wait").is_none();
    let _ = child.kill();
    let _ = child.wait();
    let report = report.expect("no `retrying` report within 30 s");
    assert!(still_retrying, "join ended before its discovery deadline");
    assert!(
        report.body.contains("\"cause\":\"tcp-refused\""),
        "{}",
        report.body
    );
    assert!(report.body.contains("\"retry_until\""), "{}", report.body);
    let text = std::fs::read_to_string(&stderr).expect("stderr");
    assert!(
        text.contains("TCP connection refused") && text.contains("retrying until"),
        "{text}"
    );
    assert!(
        !text.contains(crate::support::SECRET) && !report.body.contains(crate::support::SECRET)
    );
}
