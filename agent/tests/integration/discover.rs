//! `node-attach discover` against the test control plane over real TLS: success, and each way
//! trust can fail, each with its own message and exit code.

use crate::support::*;
use std::time::Duration;

fn discover(cp: &TestControlPlane, extra: &[&str]) -> Run {
    let endpoint = cp.endpoint();
    let mut args = vec![
        "discover",
        "--endpoint",
        &endpoint,
        "--token",
        TOKEN,
        "-vvv",
    ];
    args.extend_from_slice(extra);
    let run = run(&args);
    run.expect_no_secret(&[SECRET]);
    run
}

fn pinned(cp: &TestControlPlane, extra: &[&str]) -> Run {
    let pin = cp.ca_pin();
    let mut args = vec!["--discovery-token-ca-cert-hash", pin.as_str()];
    args.extend_from_slice(extra);
    discover(cp, &args)
}

#[test]
fn verified_discovery_prints_the_api_server_and_pin() {
    let cp = control_plane();
    let run = pinned(&cp, &[]);
    run.expect_code(0)
        .expect_output(&format!("API server: {}", cp.url()))
        .expect_output(&format!("CA pin:     {}", cp.ca_pin()))
        .expect_output("JWS signature, CA pin, pinned TLS");
    let json = pinned(&cp, &["--output", "json"]);
    let result = json.expect_code(0).json_result();
    assert_eq!(result["api_server"], cp.url());
    assert_eq!(result["ca_pin"], cp.ca_pin());
    assert_eq!(result["ca_verified"], true);
    // One anonymous read of cluster-info per run: its connection's certificate chain is
    // verified against the pinned CA afterwards, so no pinned re-read is needed.
    let reads: Vec<_> = cp
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/configmaps/cluster-info"))
        .collect();
    assert_eq!(reads.len(), 2, "{reads:?}");
    assert!(reads.iter().all(|r| r.user == "system:anonymous"));
}

#[test]
fn any_of_several_pins_may_match() {
    let cp = control_plane();
    let foreign = cp.foreign_pin();
    pinned(&cp, &["--discovery-token-ca-cert-hash", &foreign]).expect_code(0);
}

#[test]
fn waits_for_the_signer() {
    let cp = control_plane_with(Options {
        signing_delay: Duration::from_millis(1500),
        ..Options::default()
    });
    let run = pinned(&cp, &["--discovery-timeout", "20s"]);
    run.expect_code(0);
    assert!(
        run.elapsed >= Duration::from_millis(1000),
        "{:?}",
        run.elapsed
    );
}

#[test]
fn token_that_never_signs() {
    let cp = control_plane();
    let pin = cp.ca_pin();
    let endpoint = cp.endpoint();
    let run = run(&[
        "discover",
        "--endpoint",
        &endpoint,
        "--token",
        "zzzzzz.0123456789abcdef",
        "--discovery-token-ca-cert-hash",
        &pin,
        "--discovery-timeout",
        "2s",
    ]);
    run.expect_code(22)
        .expect_output("token id \"zzzzzz\" is invalid for this cluster or it has expired")
        .expect_output("discovery.token-not-signing");
}

#[test]
fn expired_token_loses_its_signature() {
    let cp = control_plane();
    // The expiration is written in whole seconds, so a 1 s TTL could leave the signer (a 50 ms
    // tick) less than a tick to sign before the token expired: 3 s leaves at least 2.
    cp.create_token(&TokenSpec {
        ttl: Some(Duration::from_secs(3)),
        ..TokenSpec::new("expire.0123456789abcdef")
    });
    assert!(cp.wait_signed("expire", Duration::from_secs(5)));
    // The signer drops an expired token's signature on its own schedule: wait for that (a
    // fixed sleep raced it on a loaded machine), then discovery must refuse the token.
    assert!(cp.wait_unsigned("expire", Duration::from_secs(30)));
    let pin = cp.ca_pin();
    let endpoint = cp.endpoint();
    run(&[
        "discover",
        "--endpoint",
        &endpoint,
        "--token",
        "expire.0123456789abcdef",
        "--discovery-token-ca-cert-hash",
        &pin,
        "--discovery-timeout",
        "2s",
    ])
    .expect_code(22);
}

#[test]
fn token_without_signing_usage_never_signs() {
    let cp = control_plane();
    cp.create_token(&TokenSpec {
        usages: vec!["authentication"],
        ..TokenSpec::new("nosign.0123456789abcdef")
    });
    let pin = cp.ca_pin();
    let endpoint = cp.endpoint();
    run(&[
        "discover",
        "--endpoint",
        &endpoint,
        "--token",
        "nosign.0123456789abcdef",
        "--discovery-token-ca-cert-hash",
        &pin,
        "--discovery-timeout",
        "1s",
    ])
    .expect_code(22);
}

#[test]
fn wrong_secret_is_a_signature_mismatch() {
    let cp = control_plane();
    let pin = cp.ca_pin();
    let endpoint = cp.endpoint();
    let run = run(&[
        "discover",
        "--endpoint",
        &endpoint,
        "--token",
        "abcdef.ffffffffffffffff",
        "--discovery-token-ca-cert-hash",
        &pin,
    ]);
    run.expect_code(23)
        .expect_output("discovery.signature-mismatch");
    assert!(!run.all().contains("ffffffffffffffff"));
}

#[test]
fn forged_cluster_info_is_refused() {
    let cp = control_plane();
    for fault in [
        ClusterInfoFault::Tamper,
        ClusterInfoFault::Reserialize,
        ClusterInfoFault::WrongKid,
        ClusterInfoFault::AlgNone,
    ] {
        cp.set_faults(|f| f.cluster_info = fault.clone());
        pinned(&cp, &[])
            .expect_code(23)
            .expect_output("failed to verify the JWS signature of cluster-info");
        // Without a pin the signature is all there is: still refused.
        discover(&cp, &["--discovery-token-unsafe-skip-ca-verification"]).expect_code(23);
    }
}

#[test]
fn pin_of_another_ca_is_refused() {
    let cp = control_plane();
    let foreign = cp.foreign_pin();
    discover(&cp, &["--discovery-token-ca-cert-hash", &foreign])
        .expect_code(24)
        .expect_output(&format!("the CA bundle pins to {}", cp.ca_pin()))
        .expect_output(&foreign);
}

#[test]
fn right_pin_but_server_certificate_from_another_ca() {
    let cp = control_plane();
    cp.set_faults(|f| f.foreign_serving_cert = true);
    pinned(&cp, &["--discovery-timeout", "60s"])
        .expect_code(25)
        .expect_output("does not present a certificate issued by the pinned cluster CA");
}

#[test]
fn no_pin_is_refused_unless_explicitly_unsafe() {
    let cp = control_plane();
    discover(&cp, &[])
        .expect_code(28)
        .expect_output("--discovery-token-unsafe-skip-ca-verification");
    let run = discover(&cp, &["--discovery-token-unsafe-skip-ca-verification"]);
    run.expect_code(0)
        .expect_output("NOT verified")
        .expect_output("anyone holding the token can impersonate it");
}

#[test]
fn oversized_cluster_info_is_refused() {
    let cp = control_plane();
    cp.set_faults(|f| f.cluster_info = ClusterInfoFault::Oversized);
    pinned(&cp, &[])
        .expect_code(27)
        .expect_output("larger than the 1048576-byte limit");
    let json = pinned(&cp, &["--output", "json"]);
    let error = json.expect_code(27).json_error();
    assert_eq!(error["code"], "discovery.malformed");
    assert_eq!(error["exit_code"], 27);
    assert!(error["hint"].as_str().is_some_and(|h| !h.is_empty()));
}

#[test]
fn redirects_are_refused() {
    let cp = control_plane();
    cp.set_faults(|f| {
        f.cluster_info = ClusterInfoFault::Redirect("http://127.0.0.1:1/cluster-info".into())
    });
    pinned(&cp, &["--discovery-timeout", "60s"])
        .expect_code(20)
        .expect_output("redirects are refused");
}

#[test]
fn missing_cluster_info() {
    let cp = control_plane();
    cp.delete(Kind::ConfigMap, "kube-public", "cluster-info");
    pinned(&cp, &["--discovery-timeout", "1s"])
        .expect_code(21)
        .expect_output("404");
}

#[test]
fn a_server_that_never_answers_is_bounded() {
    // Accepts TCP connections and never says a word.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    let endpoint = addr.to_string();
    let run = run_with(
        &[
            "discover",
            "--endpoint",
            &endpoint,
            "--token",
            TOKEN,
            "--discovery-token-unsafe-skip-ca-verification",
            "--request-timeout",
            "500ms",
            "--discovery-timeout",
            "2s",
        ],
        &[],
        Duration::from_secs(20),
    );
    run.expect_code(20).expect_output("gave up after");
    assert!(run.elapsed < Duration::from_secs(10), "{:?}", run.elapsed);
}

#[test]
fn connection_refused_is_unreachable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let endpoint = format!("127.0.0.1:{port}");
    run(&[
        "discover",
        "--endpoint",
        &endpoint,
        "--token",
        TOKEN,
        "--discovery-token-unsafe-skip-ca-verification",
        "--discovery-timeout",
        "1s",
    ])
    .expect_code(20)
    .expect_output("cannot reach the API server");
}

#[test]
fn malformed_token_and_pin_are_usage_errors() {
    let cp = control_plane();
    let endpoint = cp.endpoint();
    let run1 = run(&[
        "discover",
        "--endpoint",
        &endpoint,
        "--token",
        "abcdef.NOTVALIDSECRET0",
        "--discovery-token-unsafe-skip-ca-verification",
    ]);
    run1.expect_code(2)
        .expect_output("malformed bootstrap token");
    assert!(!run1.all().contains("NOTVALIDSECRET0"), "{}", run1.all());
    run(&[
        "discover",
        "--endpoint",
        &endpoint,
        "--token",
        TOKEN,
        "--discovery-token-ca-cert-hash",
        "sha256:1234",
    ])
    .expect_code(2)
    .expect_output("malformed CA certificate hash");
    // Nothing reached the server.
    assert!(cp
        .requests()
        .iter()
        .all(|r| !r.path.contains("cluster-info")));
}

#[test]
fn token_from_environment_and_file() {
    let cp = control_plane();
    let pin = cp.ca_pin();
    let endpoint = cp.endpoint();
    run_with(
        &[
            "discover",
            "--endpoint",
            &endpoint,
            "--discovery-token-ca-cert-hash",
            &pin,
        ],
        &[("NODE_ATTACH_TOKEN", TOKEN)],
        Duration::from_secs(30),
    )
    .expect_code(0);
    let dir = tempfile::tempdir().expect("tmp");
    let file = write(dir.path(), "token", &format!("{TOKEN}\n"));
    let file = file.to_string_lossy().to_string();
    run(&[
        "discover",
        "--endpoint",
        &endpoint,
        "--token-file",
        &file,
        "--discovery-token-ca-cert-hash",
        &pin,
    ])
    .expect_code(0)
    .expect_output("readable by other users");
}
