//! The values service's /metrics (Prometheus text, parsed here strictly: every sample of a
//! family declared by # HELP and # TYPE, names and labels well formed), /healthz and /readyz
//! (which fails while the API server cannot be reached, and recovers).

use crate::join::{join, Node};
use crate::support::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use test_control_plane::{ApiFault, ApiFaultKind};

/// One sample: the metric name and its labels, sorted.
pub type Series = (String, BTreeMap<String, String>);

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses the Prometheus text format (version 0.0.4) strictly; panics on anything malformed.
pub fn parse_exposition(text: &str) -> BTreeMap<Series, f64> {
    let mut declared: BTreeMap<String, (bool, Option<String>)> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(valid_name(name) && !help.is_empty(), "{line}");
            declared.entry(name.into()).or_default().0 = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            let entry = declared.entry(name.into()).or_default();
            assert!(entry.1.is_none(), "TYPE twice: {line}");
            entry.1 = Some(kind.into());
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("sample value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').expect("closing brace")),
            None => (series, ""),
        };
        assert!(valid_name(name), "{line}");
        let family = declared
            .get(name)
            .unwrap_or_else(|| panic!("{name} has no HELP/TYPE before it"));
        assert!(family.0 && family.1.is_some(), "{line}");
        if family.1.as_deref() == Some("counter") {
            assert!(name.ends_with("_total") && value >= 0.0, "{line}");
        }
        let mut map = BTreeMap::new();
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').expect("label=value");
            assert!(valid_name(k), "{line}");
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .expect("quoted value");
            assert!(!v.contains(['"', '\\', '\n']), "{line}");
            map.insert(k.to_owned(), v.to_owned());
        }
        assert!(
            samples.insert((name.to_owned(), map), value).is_none(),
            "the same series twice: {line}"
        );
    }
    samples
}

/// The value of `name{labels}` (0 when absent).
pub fn value(samples: &BTreeMap<Series, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let key = (
        name.to_owned(),
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    samples.get(&key).copied().unwrap_or(0.0)
}

/// `GET url` with curl trusting `ca`: (status, body).
pub fn get(url: &str, ca: &Path) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(ca)
        .arg(url)
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("status"), body.to_owned())
}

fn post(url: &str, ca: &Path, body: &str) -> u16 {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
        ])
        .arg(ca)
        .args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
            url,
        ])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("status")
}

/// Scrapes `base/metrics` and parses it.
pub fn scrape(base: &str, ca: &Path) -> BTreeMap<Series, f64> {
    let (code, text) = get(&format!("{base}/metrics"), ca);
    assert_eq!(code, 200, "{text}");
    parse_exposition(&text)
}

const REQ: &str = "node_attach_serve_requests_total";
const USES: &str = "node_attach_serve_token_uses_total";

#[test]
fn metrics_count_what_the_service_did_and_readyz_follows_the_api_server() {
    let cp = control_plane();
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    write(d, "admin.conf", &cp.admin_kubeconfig());
    let cert = cp.issue_server(&["127.0.0.1".into()]);
    write(d, "svc.crt", &cert.cert_pem);
    write(d, "svc.key", &cert.key_pem);
    let ca = write(d, "ca.pem", &cp.ca_pem());
    let values = write(
        d,
        "values.json",
        r#"{"apiVersion": "node-attach.io/v1", "kind": "ClusterValues", "clusterDNS": ["10.96.0.10"],
            "labels": {"workload_type": "cpu", "k8s.io/cluster-autoscaler": "true"}}"#,
    );
    // Many requests from one address: a rate limit the test stays under.
    let service = replica_with(d, free_port(), &["--rate-per-minute", "60000"]);
    let admin = d.join("admin.conf").display().to_string();
    let created = run(&[
        "token",
        "openapi",
        "--kubeconfig",
        &admin,
        "--values",
        &values.display().to_string(),
        "--uses",
        "2",
        "--public-url",
        &service.url,
    ]);
    created.expect_code(0);
    let token = created.stdout.split('\'').nth(1).expect("token").to_owned();

    assert_eq!(get(&format!("{}/healthz", service.url), &ca).0, 200);
    let (code, body) = get(&format!("{}/readyz", service.url), &ca);
    assert_eq!(code, 200, "{body}");

    // One join through the service: a use served, its report, the restricted label applied.
    let mut node = Node::new();
    node.kubelet();
    let url = format!("{}/v1/values/{{token}}", service.url);
    let args: Vec<String> = [
        "join",
        "--root",
        &node.root(),
        "--values-url",
        &url,
        "--values-ca-file",
        &ca.display().to_string(),
        "--node-name",
        "metered-1",
        "--node-wait-timeout",
        "30s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    join(&args, &[("NODE_ATTACH_OPENAPI_TOKEN", &token)]).expect_code(0);

    // A mint failure: the API server refuses the bootstrap token Secret once.
    cp.set_faults(|f| {
        f.api.push_back(ApiFault {
            method: "POST".into(),
            path_contains: "/namespaces/kube-system/secrets".into(),
            query_contains: String::new(),
            kind: ApiFaultKind::Echo(403, "forbidden by the test".into()),
        })
    });
    let values_url = format!("{}/v1/values/{token}", service.url);
    assert_eq!(get(&values_url, &ca).0, 503);
    // The last use, then one too many, and an unknown token.
    assert_eq!(get(&values_url, &ca).0, 200);
    assert_eq!(get(&values_url, &ca).0, 410);
    assert_eq!(
        get(
            &format!("{}/v1/values/no-such-token-0000", service.url),
            &ca
        )
        .0,
        404
    );
    // A failure report, and one whose status and code are not ones the service knows.
    let cb = format!("{}/v1/callback/{token}", service.url);
    assert_eq!(
        post(
            &cb,
            &ca,
            r#"{"status":"failure","code":"bootstrap.csr-denied"}"#
        ),
        200
    );
    assert_eq!(post(&cb, &ca, r#"{"status":"<x>","code":"made-up"}"#), 200);

    let deadline = Instant::now() + Duration::from_secs(15);
    let m = loop {
        let m = scrape(&service.url, &ca);
        if value(&m, "node_attach_serve_labels_applied_total", &[]) >= 1.0
            || Instant::now() > deadline
        {
            break m;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        value(&m, REQ, &[("route", "values"), ("code", "200")]),
        2.0,
        "{m:?}"
    );
    assert_eq!(value(&m, REQ, &[("route", "values"), ("code", "503")]), 1.0);
    assert_eq!(value(&m, REQ, &[("route", "values"), ("code", "410")]), 1.0);
    assert_eq!(value(&m, REQ, &[("route", "values"), ("code", "404")]), 1.0);
    assert_eq!(
        value(&m, REQ, &[("route", "healthz"), ("code", "200")]),
        1.0
    );
    assert_eq!(value(&m, REQ, &[("route", "readyz"), ("code", "200")]), 1.0);
    assert!(value(&m, REQ, &[("route", "callback"), ("code", "200")]) >= 3.0);
    assert!(value(&m, REQ, &[("route", "metrics"), ("code", "200")]) >= 1.0);
    assert_eq!(value(&m, USES, &[("outcome", "served")]), 2.0);
    assert_eq!(value(&m, USES, &[("outcome", "used_up")]), 1.0);
    assert_eq!(value(&m, USES, &[("outcome", "unknown")]), 1.0);
    assert_eq!(value(&m, USES, &[("outcome", "failed")]), 1.0);
    assert_eq!(value(&m, "node_attach_serve_mint_failures_total", &[]), 1.0);
    assert_eq!(
        value(&m, "node_attach_serve_labels_applied_total", &[]),
        1.0
    );
    assert_eq!(
        value(&m, "node_attach_serve_nodes_labelled_total", &[]),
        1.0
    );
    let reports = "node_attach_serve_callback_reports_total";
    assert_eq!(
        value(&m, reports, &[("status", "success"), ("code", "")]),
        1.0
    );
    assert_eq!(
        value(
            &m,
            reports,
            &[("status", "failure"), ("code", "bootstrap.csr-denied")]
        ),
        1.0
    );
    assert_eq!(
        value(&m, reports, &[("status", "other"), ("code", "other")]),
        1.0
    );

    // Not ready while the API server fails, ready again after, not ready once it is gone.
    cp.set_faults(|f| {
        f.api.push_back(ApiFault {
            method: "GET".into(),
            path_contains: "/version".into(),
            query_contains: String::new(),
            kind: ApiFaultKind::Status(503, None),
        })
    });
    let (code, body) = get(&format!("{}/readyz", service.url), &ca);
    assert_eq!(code, 503, "{body}");
    assert_eq!(get(&format!("{}/readyz", service.url), &ca).0, 200);
    drop(cp);
    let (code, body) = get(&format!("{}/readyz", service.url), &ca);
    assert_eq!(code, 503, "{body}");
    assert_eq!(get(&format!("{}/healthz", service.url), &ca).0, 200);
    let m = scrape(&service.url, &ca);
    assert_eq!(value(&m, REQ, &[("route", "readyz"), ("code", "503")]), 2.0);
    // The log is whole once the process has exited and its reader thread let go of it.
    let stderr = service.stderr.clone();
    drop(service);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::sync::Arc::strong_count(&stderr) > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = stderr.lock().expect("lock").clone();
    assert!(log.contains("openapi token used"), "{log}");
    assert!(!log.contains(&token), "{log}");
}
