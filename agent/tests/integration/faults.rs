//! Transient faults after discovery: a 503, a 429 with Retry-After, a connection reset
//! mid-body and a truncated JSON answer on each request a join makes after trusting the API
//! server (/version, kubeadm-config, kubelet-config, the CSR POST and its watch, the Node GET).
//! Each is retried with backoff and the join succeeds; a refusal that cannot heal fails at once
//! with its code.

use crate::join::{join, scale_out, Node};
use crate::support::*;
use test_control_plane::{ApiFault, ApiFaultKind};

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
        ("GET", "/version", ""),
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
