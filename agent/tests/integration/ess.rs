//! An autoscaled instance completes its ESS lifecycle action itself: ABANDON when the join
//! failed (so ESS replaces the instance now), CONTINUE once it joined. Against loopback
//! stand-ins of the ECS metadata service (the RAM role's credentials) and the ESS endpoint
//! (signature version 1.0 checked, nonces and timestamps too).

use crate::join::{join, Node};
use crate::support::*;
use test_control_plane::ess::{EssCredentials, EssServer};
use test_control_plane::metadata::{MetadataMode, MetadataServer};

const HOOK: &str = "ash-bp1lifecyclehook";
const ACTION: &str = "3c9a-41f7-action-token";

fn ess_join(
    cp: &TestControlPlane,
    node: &Node,
    md: &MetadataServer,
    ess: &EssServer,
    pin: &str,
) -> Run {
    let endpoint = cp.endpoint();
    let args = [
        "join",
        "--root",
        &node.root(),
        "--token",
        TOKEN,
        "--endpoint",
        &endpoint,
        "--discovery-token-ca-cert-hash",
        pin,
        "--cluster-dns",
        "10.96.0.10",
        "--metadata",
        "aliyun",
        "--metadata-endpoint",
        &md.url(),
        "--ess",
        "true",
        "--ess-lifecycle-hook-id",
        HOOK,
        "--ess-endpoint",
        &ess.url(),
        "--node-wait-timeout",
        "30s",
    ];
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    join(&args, &[("NODE_ATTACH_ESS_LIFECYCLE_ACTION_TOKEN", ACTION)])
}

fn no_credential_in(run: &Run) {
    let creds = EssCredentials::default();
    run.expect_no_secret(&[ACTION, &creds.access_key_secret, &creds.security_token]);
}

#[test]
fn a_failed_join_abandons_the_lifecycle_action() {
    let cp = control_plane();
    let md = MetadataServer::start(MetadataMode::AliyunHardened);
    let ess = EssServer::start(EssCredentials::default());
    ess.add_pending(HOOK, ACTION);
    let node = Node::new();
    let wrong_pin = format!("sha256:{}", "0".repeat(64));
    let run = ess_join(&cp, &node, &md, &ess, &wrong_pin);
    run.expect_output("completed the ESS lifecycle action: ABANDON");
    assert_ne!(run.code, 0);
    no_credential_in(&run);
    let done = ess.completed();
    assert_eq!(done.len(), 1, "{done:?} (refused: {:?})", ess.refusals());
    assert_eq!(
        (done[0].hook_id.as_str(), done[0].result.as_str()),
        (HOOK, "ABANDON")
    );
    assert_eq!(done[0].region, "cn-hangzhou");
}

#[test]
fn a_joined_node_continues_the_lifecycle_action() {
    let cp = control_plane();
    let md = MetadataServer::start(MetadataMode::AliyunHardened);
    let ess = EssServer::start(EssCredentials::default());
    ess.add_pending(HOOK, ACTION);
    let mut node = Node::new();
    node.kubelet();
    let run = ess_join(&cp, &node, &md, &ess, &cp.ca_pin());
    run.expect_code(0)
        .expect_output("completed the ESS lifecycle action: CONTINUE");
    no_credential_in(&run);
    let results: Vec<String> = ess.completed().into_iter().map(|c| c.result).collect();
    assert_eq!(results, ["CONTINUE"]);
}

/// ESS refuses (the action is not pending, or the credentials are not the role's): the join's
/// own outcome stands, and the refusal is said.
#[test]
fn a_refused_completion_is_reported_and_changes_nothing_else() {
    let cp = control_plane();
    let md = MetadataServer::start(MetadataMode::AliyunHardened);
    let other_role = EssCredentials {
        access_key_secret: "another-secret".into(),
        ..EssCredentials::default()
    };
    let ess = EssServer::start(other_role);
    ess.add_pending(HOOK, ACTION);
    let mut node = Node::new();
    node.kubelet();
    let run = ess_join(&cp, &node, &md, &ess, &cp.ca_pin());
    run.expect_code(0)
        .expect_output("could not complete the ESS lifecycle action (CONTINUE)");
    no_credential_in(&run);
    assert!(ess.completed().is_empty());
    assert_eq!(ess.refusals(), ["SignatureDoesNotMatch"]);
}
