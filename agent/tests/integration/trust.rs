//! Trust only what a pin names: an extra CA in cluster-info's bundle is neither trusted nor
//! written; a pinned CA that is expired, not yet valid or not a CA is refused; credentials in
//! the server URL are refused; a serving certificate swapped after discovery is a trust failure
//! with its own code. Each refusal leaves the node's tree untouched.

use crate::join::{join, scale_out, tree_with_bytes, Node};
use crate::support::*;
use serde_yaml_ng::Value;
use test_control_plane::store::Kind;
use test_control_plane::Faults;

/// Rewrites cluster-info's kubeconfig (the signer re-signs it, as the real one does).
pub fn rewrite_cluster_info(cp: &TestControlPlane, edit: impl Fn(&mut Value)) {
    rewrite_cluster_info_text(cp, |text| {
        let mut doc: Value = serde_yaml_ng::from_str(text).expect("yaml");
        edit(&mut doc);
        serde_yaml_ng::to_string(&doc).expect("yaml")
    })
}

/// Rewrites cluster-info's kubeconfig as text (so it can hold what no YAML library writes),
/// and waits until the signer has signed the new bytes.
pub fn rewrite_cluster_info_text(cp: &TestControlPlane, edit: impl Fn(&str) -> String) {
    let mut cm = cp
        .get(Kind::ConfigMap, "kube-public", "cluster-info")
        .expect("cluster-info");
    let text = cm["data"]["kubeconfig"].as_str().expect("kubeconfig");
    cm["data"]["kubeconfig"] = serde_json::json!(edit(text));
    if let Some(m) = cm["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    cp.put(Kind::ConfigMap, "kube-public", "cluster-info", cm);
    // Wait until the signer has signed the new bytes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let cm = cp
            .get(Kind::ConfigMap, "kube-public", "cluster-info")
            .expect("cm");
        let content = cm["data"]["kubeconfig"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let want =
            test_control_plane::controllers::detached_jws(&content, "abcdef", "0123456789abcdef");
        if cm["data"]["jws-kubeconfig-abcdef"] == want.as_str() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the signer did not re-sign cluster-info"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

pub fn set_cluster_field(doc: &mut Value, key: &str, value: String) {
    doc["clusters"][0]["cluster"][key] = Value::String(value);
}

pub fn b64(pem: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(pem)
}

/// A self-signed certificate: its PEM and its pin.
pub fn self_signed(
    ca: bool,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kubernetes");
    params.not_before = not_before;
    params.not_after = not_after;
    if ca {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
    }
    let cert = params.self_signed(&key).expect("cert");
    let pin = node_attach::trust::pin::CaPin::of_certificate_der(cert.der())
        .expect("pin")
        .to_string();
    (cert.pem(), pin)
}

#[test]
fn an_extra_ca_in_cluster_info_is_neither_trusted_nor_written() {
    let cp = control_plane();
    let attacker = test_control_plane::pki::Ca::new("kubernetes");
    let bundle = format!("{}{}", cp.ca_pem(), attacker.cert_pem());
    rewrite_cluster_info(&cp, |doc| {
        set_cluster_field(doc, "certificate-authority-data", b64(&bundle))
    });
    let mut node = Node::new();
    node.kubelet();
    join(&scale_out(&cp, &node, "extra-ca-1"), &[]).expect_code(0);
    let written = std::fs::read_to_string(node.path("/etc/kubernetes/pki/ca.crt")).expect("ca.crt");
    let certs = node_attach::trust::pin::certificates_from_pem(written.as_bytes()).expect("pem");
    assert_eq!(certs.len(), 1, "only the pinned CA is written");
    assert_eq!(
        node_attach::trust::pin::CaPin::of_certificate_der(&certs[0])
            .expect("pin")
            .to_string(),
        cp.ca_pin()
    );
    let kubelet_conf =
        std::fs::read_to_string(node.path("/etc/kubernetes/kubelet.conf")).expect("conf");
    assert!(
        !kubelet_conf.contains(&b64(attacker.cert_pem())),
        "the extra CA reached kubelet.conf"
    );
}

#[test]
fn a_serving_certificate_swapped_after_discovery_is_a_trust_failure() {
    let cp = control_plane();
    // Discovery's handshake sees the real certificate; every later one sees a certificate from
    // another CA. The join reuses discovery's connection where it can: the server closes each
    // connection after one answer (as some balancers do), so the next request makes a new one.
    cp.set_faults(|f: &mut Faults| {
        f.foreign_serving_cert_after = Some(1);
        f.close_connections = true;
    });
    let node = Node::new();
    let before = tree_with_bytes(node.dir.path());
    join(&scale_out(&cp, &node, "swapped-cert-1"), &[])
        .expect_code(35)
        .expect_output("trust.server-changed");
    assert_eq!(
        tree_with_bytes(node.dir.path()),
        before,
        "nothing may be written"
    );
}

#[test]
fn a_pinned_ca_that_cannot_be_a_ca_is_refused() {
    let now = time::OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    let cases = [
        (
            "expired",
            self_signed(true, now - 10 * day, now - day),
            "expired",
        ),
        (
            "not yet valid",
            self_signed(true, now + day, now + 10 * day),
            "not valid before",
        ),
        (
            "not a CA",
            self_signed(false, now - day, now + day),
            "not a CA",
        ),
    ];
    for (what, (pem, pin), message) in cases {
        let cp = control_plane();
        rewrite_cluster_info(&cp, |doc| {
            set_cluster_field(doc, "certificate-authority-data", b64(&pem))
        });
        let node = Node::new();
        let before = tree_with_bytes(node.dir.path());
        let mut args = scale_out(&cp, &node, "bad-ca-1");
        let at = args
            .iter()
            .position(|a| a == "--discovery-token-ca-cert-hash")
            .expect("pin flag")
            + 1;
        args[at] = pin;
        join(&args, &[])
            .expect_code(29)
            .expect_output(message)
            .expect_output("discovery.pinned-ca-invalid");
        assert_eq!(
            tree_with_bytes(node.dir.path()),
            before,
            "{what}: nothing may be written"
        );
    }
}

#[test]
fn credentials_or_plain_http_in_the_server_url_are_refused() {
    for (server, message) in [
        ("https://admin:secret@{host}", "carries credentials"),
        ("http://{host}", "https"),
    ] {
        let cp = control_plane();
        let host = cp.url().trim_start_matches("https://").to_owned();
        rewrite_cluster_info(&cp, |doc| {
            set_cluster_field(doc, "server", server.replace("{host}", &host))
        });
        let node = Node::new();
        let before = tree_with_bytes(node.dir.path());
        let run = join(&scale_out(&cp, &node, "url-1"), &[]);
        run.expect_code(27).expect_output(message);
        assert!(
            !run.all().contains("secret@"),
            "the credentials were echoed"
        );
        assert_eq!(tree_with_bytes(node.dir.path()), before);
    }
}
