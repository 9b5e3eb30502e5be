//! Fetching cluster values by openapi token over real TLS: both formats, retries that honour
//! Retry-After, refusals, and errors that never show the token.

use crate::support::*;
use node_attach::client::http::{Http, Limits};
use node_attach::error::{Code, Coded};
use node_attach::sources::values::{fetch, ValuesError, ValuesFormat, ValuesSource};
use std::time::{Duration, Instant};

const OPENAPI: &str = "values-token-0001";

fn entry(cp: &TestControlPlane) -> ValuesEntry {
    ValuesEntry {
        json: serde_json::json!({
            "apiVersion": "node-attach.io/v1",
            "kind": "ClusterValues",
            "apiServerEndpoints": [cp.endpoint()],
            "bootstrapToken": TOKEN,
            "caCertHashes": [cp.ca_pin()],
            "clusterDNS": ["10.96.0.10"],
            "labels": {"workload_type": "cpu"},
        }),
        ack_text: format!(
            "docker_version=20.10.24\ncluster_dns=10.96.0.10\ntoken={TOKEN}\nendpoint={}\nname_mode=nodeip\n",
            cp.endpoint()
        ),
    }
}

struct Fixture {
    cp: TestControlPlane,
    http: Http,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let cp = control_plane();
    cp.add_values(OPENAPI, entry(&cp));
    let dir = tempfile::tempdir().expect("tmp");
    let ca = write(dir.path(), "ca.pem", &cp.ca_pem());
    node_attach::trust::tls::install_provider();
    let tls = node_attach::trust::tls::system_roots(Some(&ca)).expect("roots");
    let http = Http::new(
        tls,
        Limits {
            request_timeout: Duration::from_secs(3),
            ..Limits::default()
        },
    )
    .expect("client");
    Fixture {
        cp,
        http,
        _dir: dir,
    }
}

fn source(f: &Fixture, template: &str) -> ValuesSource {
    ValuesSource {
        template: template.replace("URL", f.cp.url()),
        token: OPENAPI.parse().expect("token"),
        instance_id: Some("i-0001".into()),
        region: Some("cn-test".into()),
        allow_insecure: false,
    }
}

fn block<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt")
        .block_on(fut)
}

fn value_requests(cp: &TestControlPlane) -> usize {
    cp.requests()
        .iter()
        .filter(|r| r.path.starts_with("/v1/values/") || r.path.starts_with("/token/"))
        .count()
}

fn no_token(err: &ValuesError) {
    let text = node_attach::error::chain(err);
    assert!(!text.contains(OPENAPI), "the openapi token leaked: {text}");
}

#[test]
fn json_and_ack_formats() {
    let f = fixture();
    let v = block(fetch(
        &f.http,
        &source(&f, "URL/v1/values/{token}"),
        Duration::from_secs(10),
    ))
    .expect("json values");
    assert_eq!(v.format, ValuesFormat::Json);
    assert_eq!(v.api_server_endpoints[0].to_string(), f.cp.endpoint());
    assert_eq!(v.ca_cert_hashes[0].to_string(), f.cp.ca_pin());
    let v = block(fetch(
        &f.http,
        &source(&f, "URL/token/{token}/instance/{instance_id}/node_info"),
        Duration::from_secs(10),
    ))
    .expect("ack values");
    assert_eq!(v.format, ValuesFormat::AckText);
    assert_eq!(v.runtime.version.as_deref(), Some("20.10.24"));
    assert!(f
        .cp
        .requests()
        .iter()
        .any(|r| r.path == "/token/values-token-0001/instance/i-0001/node_info"));
}

#[test]
fn retries_honour_retry_after_then_succeed() {
    let f = fixture();
    f.cp.set_faults(|x| {
        x.values_script.push_back(Scripted {
            status: 503,
            retry_after: Some("1".into()),
            body: "busy".into(),
        });
        x.values_script.push_back(Scripted {
            status: 429,
            retry_after: None,
            body: "slow down".into(),
        });
    });
    let start = Instant::now();
    block(fetch(
        &f.http,
        &source(&f, "URL/v1/values/{token}"),
        Duration::from_secs(20),
    ))
    .expect("values after retries");
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured"
    );
    assert_eq!(value_requests(&f.cp), 3);
}

#[test]
fn persistent_server_errors_give_up_at_the_deadline() {
    let f = fixture();
    f.cp.set_faults(|x| {
        for _ in 0..100 {
            x.values_script.push_back(Scripted {
                status: 500,
                retry_after: None,
                body: String::new(),
            });
        }
    });
    let start = Instant::now();
    let err = block(fetch(
        &f.http,
        &source(&f, "URL/v1/values/{token}"),
        Duration::from_secs(2),
    ))
    .expect_err("5xx");
    assert!(start.elapsed() < Duration::from_secs(6));
    assert_eq!(err.code(), Code::ValuesUnreachable);
    assert!(err.to_string().contains("gave up after"), "{err}");
    assert!(value_requests(&f.cp) >= 2, "no retry happened");
    no_token(&err);
}

#[test]
fn unknown_token_is_refused_without_retrying() {
    let f = fixture();
    let mut s = source(&f, "URL/v1/values/{token}");
    s.token = "some-other-token".parse().expect("token");
    let err = block(fetch(&f.http, &s, Duration::from_secs(10))).expect_err("404");
    assert_eq!(err.code(), Code::ValuesRefused);
    assert_eq!(value_requests(&f.cp), 1);
    assert!(!node_attach::error::chain(&err).contains("some-other-token"));
}

#[test]
fn redirects_and_plain_http_are_refused() {
    let f = fixture();
    f.cp.set_faults(|x| x.values_redirect = Some("http://127.0.0.1:1/values".into()));
    let err = block(fetch(
        &f.http,
        &source(&f, "URL/v1/values/{token}"),
        Duration::from_secs(5),
    ))
    .expect_err("redirect");
    assert!(err.to_string().contains("redirects are refused"), "{err}");
    no_token(&err);
    let s = source(&f, "http://127.0.0.1:1/v1/values/{token}");
    let err = block(fetch(&f.http, &s, Duration::from_secs(5))).expect_err("http");
    assert!(matches!(err, ValuesError::Insecure(_)));
    assert_eq!(err.code(), Code::Usage);
    no_token(&err);
}

#[test]
fn malformed_and_oversized_values_are_invalid() {
    let f = fixture();
    let mut bad = entry(&f.cp);
    bad.json["clusterDNS"] = serde_json::json!(["10.96.0"]);
    f.cp.add_values(OPENAPI, bad);
    let err = block(fetch(
        &f.http,
        &source(&f, "URL/v1/values/{token}"),
        Duration::from_secs(5),
    ))
    .expect_err("invalid");
    assert_eq!(err.code(), Code::ValuesInvalid);
    assert!(err.to_string().contains("clusterDNS"), "{err}");

    let mut big = entry(&f.cp);
    big.json["labels"] = serde_json::json!({"x": "y".repeat(10)});
    big.ack_text = format!("network={}\n", "a".repeat(2 * 1024 * 1024));
    f.cp.add_values(OPENAPI, big);
    let err = block(fetch(
        &f.http,
        &source(&f, "URL/token/{token}/instance/{instance_id}/node_info"),
        Duration::from_secs(5),
    ))
    .expect_err("too large");
    assert_eq!(err.code(), Code::ValuesInvalid);
    assert!(err.to_string().contains("larger than"), "{err}");
    no_token(&err);
}

#[test]
fn a_values_service_echoing_the_openapi_token_never_gets_it_printed() {
    let f = fixture();
    f.cp.set_faults(|x| {
        x.values_script.push_back(Scripted {
            status: 403,
            retry_after: None,
            body: format!(r#"{{"message": "token {OPENAPI} is not allowed here"}}"#),
        });
    });
    let err = block(fetch(
        &f.http,
        &source(&f, "URL/v1/values/{token}"),
        Duration::from_secs(5),
    ))
    .expect_err("refused");
    assert!(
        err.to_string().contains("[redacted] is not allowed"),
        "{err}"
    );
    no_token(&err);
}
