//! Instance metadata providers against loopback stand-ins: hardened mode, normal-mode
//! fallback, IMDSv2, a silent service, and auto-detection that asks only when needed.

use crate::join::Node;
use crate::support::*;
use std::time::{Duration, Instant};
use test_control_plane::metadata::{MetadataMode, MetadataServer};

fn dry_join(cp: &TestControlPlane, node: &Node, md: &MetadataServer, extra: &[&str]) -> Run {
    let endpoint = cp.endpoint();
    let pin = cp.ca_pin();
    let root = node.root();
    let url = md.url();
    let mut args = vec![
        "join",
        "--root",
        &root,
        "--token",
        TOKEN,
        "--endpoint",
        &endpoint,
        "--discovery-token-ca-cert-hash",
        &pin,
        "--metadata-endpoint",
        &url,
        "--dry-run",
        "--output",
        "json",
    ];
    args.extend_from_slice(extra);
    run_with(&args, &[], Duration::from_secs(60))
}

#[test]
fn aliyun_hardened_mode_names_the_node_and_sets_the_provider_id() {
    let cp = control_plane();
    let md = MetadataServer::start(MetadataMode::AliyunHardened);
    let node = Node::new();
    let result = dry_join(
        &cp,
        &node,
        &md,
        &["--metadata", "aliyun", "--node-name-mode", "instanceid"],
    )
    .expect_code(0)
    .json_result();
    assert_eq!(result["node_name"], "cn-hangzhou.i-bp1abc");
    assert_eq!(result["provider_id"], "cn-hangzhou.i-bp1abc");
    let seen = md.seen();
    assert_eq!(seen[0].method, "PUT", "{seen:?}");
    assert!(
        seen.iter()
            .filter(|s| s.method == "GET")
            .all(|s| s.with_token),
        "{seen:?}"
    );
}

#[test]
fn a_named_provider_briefly_unavailable_is_asked_again() {
    let cp = control_plane();
    let md = MetadataServer::start(MetadataMode::AliyunFlaky);
    let node = Node::new();
    let result = dry_join(
        &cp,
        &node,
        &md,
        &["--metadata", "aliyun", "--node-name-mode", "instanceid"],
    )
    .expect_code(0)
    .json_result();
    assert_eq!(result["provider_id"], "cn-hangzhou.i-bp1abc");
    let seen = md.seen();
    // The token, and each item asked, twice: a 503 first, then the answer.
    let asked = |method: &str, path: &str| {
        seen.iter()
            .filter(|s| s.method == method && s.path == path)
            .count()
    };
    assert_eq!(asked("PUT", "/latest/api/token"), 2, "{seen:?}");
    assert_eq!(asked("GET", "/latest/meta-data/instance-id"), 2, "{seen:?}");
    assert_eq!(asked("GET", "/latest/meta-data/region-id"), 2, "{seen:?}");
}

#[test]
fn aliyun_normal_mode_is_the_fallback() {
    let cp = control_plane();
    let md = MetadataServer::start(MetadataMode::AliyunNormal);
    let node = Node::new();
    let result = dry_join(
        &cp,
        &node,
        &md,
        &["--metadata", "aliyun", "--node-name-mode", "nodeip"],
    )
    .expect_code(0)
    .json_result();
    assert_eq!(
        result["node_name"], "cn-hangzhou.192.168.0.7",
        "nodeip mode with the region prefix"
    );
    assert!(md
        .seen()
        .iter()
        .filter(|s| s.method == "GET")
        .all(|s| !s.with_token));
}

#[test]
fn aws_imdsv2_gives_the_aws_provider_id() {
    let cp = control_plane();
    let md = MetadataServer::start(MetadataMode::Aws);
    let node = Node::new();
    let result = dry_join(
        &cp,
        &node,
        &md,
        &["--metadata", "aws", "--node-name", "aws-node"],
    )
    .expect_code(0)
    .json_result();
    assert_eq!(result["provider_id"], "aws:///us-east-1a/i-0abc123def");
}

#[test]
fn an_oversized_session_token_is_refused_not_used() {
    let cp = control_plane();
    let md = MetadataServer::start(MetadataMode::OversizedToken);
    let node = Node::new();
    let run = dry_join(
        &cp,
        &node,
        &md,
        &["--metadata", "aws", "--node-name", "aws-node"],
    );
    run.expect_output("no usable token");
    assert_eq!(run.code, 31, "{}", run.stderr);
    assert!(
        md.seen().iter().all(|s| s.method == "PUT"),
        "a metadata item was read with an unusable token: {:?}",
        md.seen()
    );
}

#[test]
fn a_silent_service_is_bounded_and_auto_never_stalls() {
    let cp = control_plane();
    let md = MetadataServer::start(MetadataMode::Silent);
    let node = Node::new();
    let start = Instant::now();
    dry_join(
        &cp,
        &node,
        &md,
        &["--metadata", "aliyun", "--node-name", "n"],
    )
    .expect_code(31)
    .expect_output("--instance-id");
    // A named provider is asked again for 15 s; the last try may take its 5 s request limit.
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    // auto: probes fail fast, then the autoscaled node is refused for lack of a providerID.
    let start = Instant::now();
    dry_join(&cp, &node, &md, &["--ess", "true", "--node-name", "n"]).expect_code(32);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "auto-detection stalled: {:?}",
        start.elapsed()
    );
}

#[test]
fn auto_asks_nothing_when_nothing_is_missing() {
    let cp = control_plane();
    let md = MetadataServer::start(MetadataMode::AliyunHardened);
    let node = Node::new();
    dry_join(&cp, &node, &md, &["--node-name", "plain"]).expect_code(0);
    assert!(
        md.seen().is_empty(),
        "auto-detection asked although nothing was missing"
    );
    // An autoscaled node without a providerID asks, and gets its instance-id label.
    let result = dry_join(
        &cp,
        &node,
        &md,
        &["--ess", "true", "--node-name", "pool-node"],
    )
    .expect_code(0)
    .json_result();
    assert_eq!(result["provider_id"], "cn-hangzhou.i-bp1abc");
    assert_eq!(result["labels"]["alibabacloud.com/instance-id"], "i-bp1abc");
}
