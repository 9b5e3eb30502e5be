//! Fidelity of the test control plane, checked with the real kubectl and openssl.

use crate::support::*;
use std::process::Command;

fn setup(cp: &TestControlPlane) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tmp");
    write(dir.path(), "admin.conf", &cp.admin_kubeconfig());
    dir
}

#[test]
fn kubectl_reads_cluster_info_and_a_bootstrap_token_secret() {
    let cp = control_plane();
    let dir = setup(&cp);
    let kc = dir.path().join("admin.conf");
    let (code, version, err) = kubectl(&kc, dir.path(), &["version", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    assert!(version.contains("\"gitVersion\": \"v1.31.2\""), "{version}");

    let (code, kubeconfig, err) = kubectl(
        &kc,
        dir.path(),
        &[
            "get",
            "configmap",
            "cluster-info",
            "-n",
            "kube-public",
            "-o",
            "jsonpath={.data.kubeconfig}",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        kubeconfig.contains(&format!("server: {}", cp.url())),
        "{kubeconfig}"
    );
    let (code, jws, err) = kubectl(
        &kc,
        dir.path(),
        &[
            "get",
            "configmap",
            "cluster-info",
            "-n",
            "kube-public",
            "-o",
            "jsonpath={.data.jws-kubeconfig-abcdef}",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(node_attach::trust::jws::verify_detached(
        &jws,
        kubeconfig.as_bytes(),
        "abcdef",
        SECRET
    ));

    let (code, secret, err) = kubectl(
        &kc,
        dir.path(),
        &[
            "get",
            "secret",
            "bootstrap-token-abcdef",
            "-n",
            "kube-system",
            "-o",
            "jsonpath={.type} {.data.token-id} {.data.usage-bootstrap-signing}",
        ],
    );
    assert_eq!(code, 0, "{err}");
    // base64 of "abcdef" and "true"
    assert_eq!(secret, "bootstrap.kubernetes.io/token YWJjZGVm dHJ1ZQ==");

    let (code, table, err) = kubectl(&kc, dir.path(), &["get", "secrets", "-n", "kube-system"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        table.contains("bootstrap-token-abcdef") && table.contains("TYPE"),
        "{table}"
    );
}

#[test]
fn kubectl_creates_and_reads_back_an_approved_csr() {
    let cp = control_plane();
    let dir = setup(&cp);
    let kc = dir.path().join("admin.conf");
    let key = dir.path().join("key.pem");
    let csr = dir.path().join("req.csr");
    assert!(Command::new("openssl")
        .args([
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out"
        ])
        .arg(&key)
        .status()
        .expect("openssl")
        .success());
    assert!(Command::new("openssl")
        .args([
            "req",
            "-new",
            "-subj",
            "/O=system:nodes/CN=system:node:kubectl-test",
            "-key"
        ])
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .status()
        .expect("openssl")
        .success());
    use base64::Engine;
    let request =
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&csr).expect("csr"));
    let manifest = write(
        dir.path(),
        "csr.yaml",
        &format!(
            "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata:\n  name: kubectl-test\nspec:\n  request: {request}\n  signerName: kubernetes.io/kube-apiserver-client-kubelet\n  usages: [\"digital signature\", \"client auth\"]\n"
        ),
    );
    let manifest = manifest.to_string_lossy().to_string();
    let (code, out, err) = kubectl(
        &kc,
        dir.path(),
        &["create", "--validate=false", "-f", &manifest],
    );
    assert_eq!(code, 0, "{out}{err}");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let cert_b64 = loop {
        let (_, cert, _) = kubectl(
            &kc,
            dir.path(),
            &[
                "get",
                "csr",
                "kubectl-test",
                "-o",
                "jsonpath={.status.certificate}",
            ],
        );
        if !cert.is_empty() {
            break cert;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the CSR was never signed"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let (code, table, err) = kubectl(&kc, dir.path(), &["get", "csr"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        table.contains("Approved,Issued") && table.contains("kubernetes-admin"),
        "{table}"
    );
    let (_, reason, _) = kubectl(
        &kc,
        dir.path(),
        &[
            "get",
            "csr",
            "kubectl-test",
            "-o",
            "jsonpath={.status.conditions[0].reason}",
        ],
    );
    assert_eq!(reason, "AutoApproved");

    let pem = base64::engine::general_purpose::STANDARD
        .decode(cert_b64)
        .expect("b64");
    let cert = write(
        dir.path(),
        "issued.pem",
        std::str::from_utf8(&pem).expect("pem"),
    );
    let ca = write(dir.path(), "ca.pem", &cp.ca_pem());
    let verify = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&ca)
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let subject = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-in"])
        .arg(&cert)
        .output()
        .expect("openssl");
    let subject = String::from_utf8_lossy(&subject.stdout);
    assert!(
        subject.contains("CN = system:node:kubectl-test") && subject.contains("O = system:nodes"),
        "{subject}"
    );
}

#[test]
fn errors_are_kubernetes_status_objects() {
    let cp = control_plane();
    let dir = setup(&cp);
    let kc = dir.path().join("admin.conf");
    let (code, _, err) = kubectl(&kc, dir.path(), &["get", "node", "nope"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("Error from server (NotFound): nodes \"nope\" not found"),
        "{err}"
    );
    // A bootstrap token may read what kubeadm's roles allow, and nothing else.
    let bootstrap = write(
        dir.path(),
        "bootstrap.conf",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: {}\n  name: c\ncontexts:\n- context:\n    cluster: c\n    user: u\n  name: x\ncurrent-context: x\nusers:\n- name: u\n  user:\n    token: {TOKEN}\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, cp.ca_pem()),
            cp.url()
        ),
    );
    let (code, _, err) = kubectl(
        &bootstrap,
        dir.path(),
        &["get", "secrets", "-n", "kube-system"],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("User \"system:bootstrap:abcdef\" cannot list resource \"secrets\""),
        "{err}"
    );
    let (code, out, err) = kubectl(
        &bootstrap,
        dir.path(),
        &[
            "get",
            "configmap",
            "kubelet-config",
            "-n",
            "kube-system",
            "-o",
            "jsonpath={.data.kubelet}",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("kind: KubeletConfiguration"), "{out}");
}
