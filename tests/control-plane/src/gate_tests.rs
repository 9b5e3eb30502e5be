//! The version gates of [`crate::version::Release`] as the running stand-in applies them, each at
//! the releases on both sides of it (requests go straight to [`crate::api::handle`]).

use crate::api::{handle, Reply, Req};
use crate::auth::User;
use crate::seed::BOOTSTRAP_GROUP;
use crate::{Options, TestControlPlane};
use bytes::Bytes;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn start(version: &str) -> TestControlPlane {
    TestControlPlane::start(Options {
        kubernetes_version: version.into(),
        ..Options::default()
    })
}

fn admin() -> User {
    User {
        name: "kubernetes-admin".into(),
        groups: vec!["system:masters".into(), "system:authenticated".into()],
    }
}

fn bootstrap() -> User {
    User {
        name: "system:bootstrap:abcdef".into(),
        groups: vec![
            "system:bootstrappers".into(),
            BOOTSTRAP_GROUP.into(),
            "system:authenticated".into(),
        ],
    }
}

/// Sends one request; returns the status and the JSON body (Null when not JSON).
fn call(cp: &TestControlPlane, user: User, method: &str, path: &str, body: Value) -> (u16, Value) {
    let req = Req {
        method: method.into(),
        path: path.into(),
        query: String::new(),
        accept: "application/json".into(),
        content_type: "application/json".into(),
        user_agent: "gate-tests".into(),
        body: Bytes::from(if body.is_null() {
            String::new()
        } else {
            body.to_string()
        }),
        user,
        bad_credentials: false,
    };
    match handle(cp.shared(), req) {
        Reply::Full { status, body, .. } => {
            (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
        }
        Reply::Stream(_) => (200, Value::Null),
    }
}

fn csr_pem(node: &str) -> String {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "system:nodes");
    dn.push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    params.distinguished_name = dn;
    params
        .serialize_request(&key)
        .expect("CSR")
        .pem()
        .expect("PEM")
}

const THREE: [&str; 3] = ["digital signature", "key encipherment", "client auth"];
const TWO: [&str; 2] = ["digital signature", "client auth"];

/// Posts a kubelet client CSR named `name` as the bootstrap token.
fn post_csr(cp: &TestControlPlane, api: &str, name: &str, usages: &[&str]) -> (u16, Value) {
    let mut spec = json!({"request": base64_pem(&csr_pem(name)), "usages": usages});
    if api == "v1" {
        spec["signerName"] = json!("kubernetes.io/kube-apiserver-client-kubelet");
    }
    let body = json!({"apiVersion": format!("certificates.k8s.io/{api}"),
                      "kind": "CertificateSigningRequest", "metadata": {"name": name}, "spec": spec});
    let path = format!("/apis/certificates.k8s.io/{api}/certificatesigningrequests");
    call(cp, bootstrap(), "POST", &path, body)
}

fn base64_pem(pem: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(pem)
}

/// The CSR once `done` holds for it, or as it is after 1.5 s.
fn csr_after(cp: &TestControlPlane, name: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_millis(1500);
    loop {
        let csr = cp
            .get(crate::store::Kind::Csr, "", name)
            .expect("the CSR exists");
        if done(&csr) || Instant::now() >= deadline {
            return csr;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn condition_types(csr: &Value) -> Vec<String> {
    csr["status"]["conditions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["type"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn issued(csr: &Value) -> bool {
    !csr["status"]["certificate"].is_null()
}

#[test]
fn csr_api_versions_are_those_of_the_release() {
    for (version, v1, v1beta1) in [
        ("v1.18.20", false, true),
        ("v1.19.0", true, true),
        ("v1.21.14", true, true),
        ("v1.22.0", true, false),
    ] {
        let cp = start(version);
        for (api, want) in [("v1", v1), ("v1beta1", v1beta1)] {
            let path = format!("/apis/certificates.k8s.io/{api}/certificatesigningrequests");
            let (status, _) = call(&cp, admin(), "GET", &path, Value::Null);
            assert_eq!(status, if want { 200 } else { 404 }, "{version} {api}");
        }
        let (_, group) = call(
            &cp,
            admin(),
            "GET",
            "/apis/certificates.k8s.io",
            Value::Null,
        );
        let listed: Vec<&str> = group["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .filter_map(|v| v["version"].as_str())
            .collect();
        assert_eq!(listed, cp.shared().release.csr_versions(), "{version}");
    }
}

#[test]
fn key_encipherment_is_required_before_1_25() {
    let old = start("v1.24.17");
    assert_eq!(post_csr(&old, "v1", "two", &TWO).0, 201);
    assert_eq!(post_csr(&old, "v1", "three", &THREE).0, 201);
    assert!(issued(&csr_after(&old, "three", issued)));
    let two = csr_after(&old, "two", |c| !condition_types(c).is_empty());
    assert!(condition_types(&two).is_empty(), "{two}");
    let new = start("v1.25.0");
    assert_eq!(post_csr(&new, "v1", "two", &TWO).0, 201);
    let two = csr_after(&new, "two", issued);
    assert!(issued(&two), "{two}");
    assert_eq!(condition_types(&two), ["Approved"]);
}

/// Approves a CSR by hand, as `kubectl certificate approve` does.
fn approve(cp: &TestControlPlane, api: &str, name: &str) -> u16 {
    let mut csr = cp
        .get(crate::store::Kind::Csr, "", name)
        .expect("the CSR exists");
    csr["status"]["conditions"] = json!([{"type": "Approved", "status": "True",
        "reason": "KubectlApprove", "message": "This CSR was approved by kubectl certificate approve."}]);
    let path =
        format!("/apis/certificates.k8s.io/{api}/certificatesigningrequests/{name}/approval");
    call(cp, admin(), "PUT", &path, csr).0
}

#[test]
fn refused_csrs_fail_from_1_19_and_stay_unsigned_on_1_18() {
    let cp = start("v1.19.0");
    post_csr(&cp, "v1", "two", &TWO);
    assert_eq!(approve(&cp, "v1", "two"), 200);
    let csr = csr_after(&cp, "two", |c| condition_types(c).len() > 1);
    let failed = &csr["status"]["conditions"][1];
    assert_eq!(failed["type"], "Failed", "{csr}");
    assert_eq!(failed["status"], "True");
    assert_eq!(failed["reason"], "SignerValidationFailure");
    assert_eq!(
        failed["message"],
        "usages did not match [client auth digital signature key encipherment]"
    );
    assert!(!failed["lastTransitionTime"].is_null());
    let cp = start("v1.18.20");
    post_csr(&cp, "v1beta1", "two", &TWO);
    assert_eq!(approve(&cp, "v1beta1", "two"), 200);
    let csr = csr_after(&cp, "two", |c| issued(c) || condition_types(c).len() > 1);
    assert_eq!(condition_types(&csr), ["Approved"], "{csr}");
    assert!(!issued(&csr));
}

#[test]
fn condition_status_and_auto_approval_by_release() {
    let cp = start("v1.18.20");
    post_csr(&cp, "v1beta1", "three", &THREE);
    let csr = csr_after(&cp, "three", issued);
    let approved = &csr["status"]["conditions"][0];
    assert_eq!(approved["reason"], "AutoApproved", "{csr}");
    assert!(approved["status"].is_null() && approved["lastTransitionTime"].is_null());
    let cp = start("v1.19.0");
    post_csr(&cp, "v1", "three", &THREE);
    let csr = csr_after(&cp, "three", issued);
    let approved = &csr["status"]["conditions"][0];
    assert_eq!(approved["status"], "True", "{csr}");
    assert!(!approved["lastTransitionTime"].is_null());
}

#[test]
fn signer_name_from_1_18_and_signing_without_checks_before() {
    let cp = start("v1.17.17");
    let (status, body) = post_csr(&cp, "v1beta1", "two", &TWO);
    assert_eq!(status, 201, "{body}");
    assert!(body["spec"]["signerName"].is_null(), "{body}");
    approve(&cp, "v1beta1", "two");
    assert!(issued(&csr_after(&cp, "two", issued)));
    let cp = start("v1.18.20");
    let (_, three) = post_csr(&cp, "v1beta1", "three", &THREE);
    assert_eq!(
        three["spec"]["signerName"],
        "kubernetes.io/kube-apiserver-client-kubelet"
    );
    let (_, two) = post_csr(&cp, "v1beta1", "two", &TWO);
    assert_eq!(two["spec"]["signerName"], "kubernetes.io/legacy-unknown");
}

#[test]
fn v1_requires_a_signer_name_and_refuses_legacy_unknown() {
    let cp = start("v1.20.2");
    let csr = |signer: Option<&str>| {
        let mut spec = json!({"request": base64_pem(&csr_pem("x")), "usages": THREE});
        if let Some(s) = signer {
            spec["signerName"] = json!(s);
        }
        json!({"metadata": {"name": format!("csr-{}", signer.unwrap_or("none").len())}, "spec": spec})
    };
    let path = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
    let (status, body) = call(&cp, bootstrap(), "POST", path, csr(None));
    assert_eq!((status, body["reason"].as_str()), (422, Some("Invalid")));
    let legacy = Some("kubernetes.io/legacy-unknown");
    assert_eq!(call(&cp, bootstrap(), "POST", path, csr(legacy)).0, 422);
}

#[test]
fn bootstrap_tokens_read_only_the_kubelet_config_of_their_release() {
    for (version, granted, other) in [
        ("v1.23.17", "kubelet-config-1.23", "kubelet-config"),
        ("v1.24.0", "kubelet-config", "kubelet-config-1.24"),
    ] {
        let cp = start(version);
        let path = |n: &str| format!("/api/v1/namespaces/kube-system/configmaps/{n}");
        let (status, body) = call(&cp, bootstrap(), "GET", &path(other), Value::Null);
        assert_eq!((status, body["reason"].as_str()), (403, Some("Forbidden")));
        assert_eq!(
            call(&cp, bootstrap(), "GET", &path(granted), Value::Null).0,
            200
        );
        cp.delete(crate::store::Kind::ConfigMap, "kube-system", granted);
        let (status, body) = call(&cp, bootstrap(), "GET", &path(granted), Value::Null);
        assert_eq!((status, body["reason"].as_str()), (404, Some("NotFound")));
    }
    let gated = TestControlPlane::start(Options {
        kubernetes_version: "v1.23.17".into(),
        kubeadm_feature_gates: vec![("UnversionedKubeletConfigMap".into(), true)],
        ..Options::default()
    });
    let path = "/api/v1/namespaces/kube-system/configmaps/kubelet-config";
    assert_eq!(call(&gated, bootstrap(), "GET", path, Value::Null).0, 200);
}

fn put_pod(cp: &TestControlPlane, name: &str) {
    cp.put(
        crate::store::Kind::Pod,
        "default",
        name,
        json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"nodeName": "n"}}),
    );
}

#[test]
fn eviction_versions_by_release() {
    let body = |v: &str| json!({"apiVersion": v, "kind": "Eviction", "metadata": {"name": "p", "namespace": "default"}});
    let path = "/api/v1/namespaces/default/pods/p/eviction";
    let old = start("v1.21.14");
    put_pod(&old, "p");
    let (status, reply) = call(&old, admin(), "POST", path, body("policy/v1"));
    assert_eq!(
        (status, reply["reason"].as_str()),
        (400, Some("BadRequest"))
    );
    assert_eq!(
        call(&old, admin(), "POST", path, body("policy/v1beta1")).0,
        201
    );
    let new = start("v1.22.0");
    put_pod(&new, "p");
    assert_eq!(call(&new, admin(), "POST", path, body("policy/v1")).0, 201);
    for (cp, want) in [(&old, "v1beta1"), (&new, "v1")] {
        let (_, core) = call(cp, admin(), "GET", "/api/v1", Value::Null);
        let eviction = core["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .find(|r| r["name"] == "pods/eviction")
            .cloned()
            .expect("pods/eviction listed");
        assert_eq!(eviction["version"], want);
    }
}

#[test]
fn policy_and_rbac_groups_by_release() {
    for (version, policy, rbac_v1beta1) in [
        ("v1.20.2", vec!["v1beta1"], true),
        ("v1.21.0", vec!["v1", "v1beta1"], true),
        ("v1.22.0", vec!["v1", "v1beta1"], false),
        ("v1.25.0", vec!["v1"], false),
    ] {
        let cp = start(version);
        let (_, apis) = call(&cp, admin(), "GET", "/apis", Value::Null);
        let versions = |g: &str| -> Vec<String> {
            apis["groups"]
                .as_array()
                .expect("groups")
                .iter()
                .find(|x| x["name"] == g)
                .and_then(|x| x["versions"].as_array())
                .map(|vs| {
                    vs.iter()
                        .filter_map(|v| v["version"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        assert_eq!(versions("policy"), policy, "{version}");
        let rbac = versions("rbac.authorization.k8s.io");
        assert_eq!(
            rbac.contains(&"v1beta1".to_owned()),
            rbac_v1beta1,
            "{version}"
        );
        let pdbs = "/apis/policy/v1/namespaces/default/poddisruptionbudgets";
        let want = if policy.contains(&"v1") { 200 } else { 404 };
        assert_eq!(
            call(&cp, admin(), "GET", pdbs, Value::Null).0,
            want,
            "{version}"
        );
    }
}

#[test]
fn evictions_of_pending_pods_skip_budgets_from_1_17() {
    for (version, want) in [("v1.16.15", 429), ("v1.17.0", 201)] {
        let cp = start(version);
        let pod =
            json!({"metadata": {"name": "p", "labels": {"app": "a"}}, "spec": {"nodeName": "n"}});
        let (status, created) = call(&cp, admin(), "POST", "/api/v1/namespaces/default/pods", pod);
        assert_eq!(
            (status, created["status"]["phase"].as_str()),
            (201, Some("Pending"))
        );
        let pdb = json!({"metadata": {"name": "a", "namespace": "default"},
                         "spec": {"selector": {"matchLabels": {"app": "a"}}}});
        cp.put(crate::store::Kind::Pdb, "default", "a", pdb);
        let body =
            json!({"apiVersion": "policy/v1beta1", "kind": "Eviction", "metadata": {"name": "p"}});
        let path = "/api/v1/namespaces/default/pods/p/eviction";
        assert_eq!(call(&cp, admin(), "POST", path, body).0, want, "{version}");
    }
}

#[test]
fn new_nodes_as_the_api_server_and_the_node_controllers_leave_them() {
    let cp = start("v1.20.2");
    let node = json!({"metadata": {"name": "n", "labels": {"kubernetes.io/os": "linux"}},
                      "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
    let (status, created) = call(&cp, admin(), "POST", "/api/v1/nodes", node);
    assert_eq!(status, 201);
    assert_eq!(
        created["spec"]["taints"][0]["key"],
        "node.kubernetes.io/not-ready"
    );
    assert_eq!(created["status"]["nodeInfo"]["bootID"], "");
    assert_eq!(
        created["metadata"]["managedFields"][0]["manager"],
        "gate-tests"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    let settled = loop {
        let n = cp.get(crate::store::Kind::Node, "", "n").expect("node");
        if n["spec"]["taints"].is_null() || Instant::now() >= deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(settled["spec"]["taints"].is_null(), "{settled}");
    assert_eq!(
        settled["metadata"]["labels"]["beta.kubernetes.io/os"],
        "linux"
    );
    assert_eq!(
        settled["metadata"]["annotations"]["node.alpha.kubernetes.io/ttl"],
        "0"
    );
    assert!(settled["spec"]["podCIDR"].is_string());
}

#[test]
fn reviews_give_the_rbac_reason_and_lists_untyped_items() {
    let cp = start("v1.20.2");
    let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"group": "certificates.k8s.io", "resource": "certificatesigningrequests", "subresource": "nodeclient", "verb": "create"}}});
    let path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
    let (_, answer) = call(&cp, bootstrap(), "POST", path, review);
    assert_eq!(answer["status"]["allowed"], true);
    let reason = answer["status"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with(
            "RBAC: allowed by ClusterRoleBinding \"kubeadm:node-autoapprove-bootstrap\""
        ),
        "{reason}"
    );
    let (_, list) = call(
        &cp,
        admin(),
        "GET",
        "/api/v1/namespaces/kube-system/configmaps",
        Value::Null,
    );
    let item = &list["items"][0];
    assert!(
        item["kind"].is_null() && item["apiVersion"].is_null(),
        "{item}"
    );
    let (_, missing) = call(&cp, admin(), "GET", "/api/v1/nodes/none", Value::Null);
    assert_eq!(missing["details"], json!({"name": "none", "kind": "nodes"}));
}

#[test]
fn version_shape_by_release() {
    let (_, old) = call(&start("v1.32.4"), admin(), "GET", "/version", Value::Null);
    assert_eq!(old["minor"], "32");
    assert!(old["emulationMinor"].is_null(), "{old}");
    let (_, new) = call(&start("v1.33.1"), admin(), "GET", "/version", Value::Null);
    assert_eq!(new["emulationMinor"], "33");
    assert_eq!(new["minCompatibilityMinor"], "32");
}

#[test]
fn scheduled_pods_are_only_marked_for_deletion() {
    let cp = start("v1.20.2");
    for (name, node) in [("bound", json!("n")), ("loose", Value::Null)] {
        let mut pod = json!({"metadata": {"name": name}, "spec": {}});
        if !node.is_null() {
            pod["spec"]["nodeName"] = node;
        }
        call(&cp, admin(), "POST", "/api/v1/namespaces/default/pods", pod);
    }
    let path = |n: &str| format!("/api/v1/namespaces/default/pods/{n}");
    let (status, marked) = call(&cp, admin(), "DELETE", &path("bound"), Value::Null);
    assert_eq!(status, 200);
    assert_eq!(
        marked["metadata"]["deletionGracePeriodSeconds"], 30,
        "{marked}"
    );
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(
        call(&cp, admin(), "GET", &path("bound"), Value::Null).0,
        200
    );
    call(
        &cp,
        admin(),
        "DELETE",
        &path("bound"),
        json!({"gracePeriodSeconds": 0}),
    );
    assert_eq!(
        call(&cp, admin(), "GET", &path("bound"), Value::Null).0,
        404
    );
    call(&cp, admin(), "DELETE", &path("loose"), Value::Null);
    assert_eq!(
        call(&cp, admin(), "GET", &path("loose"), Value::Null).0,
        404
    );
}

#[test]
fn pods_as_a_1_20_api_server_stores_them() {
    let cp = start("v1.20.2");
    let pod = json!({"metadata": {"name": "p"},
                     "spec": {"nodeName": "n", "containers": [{"name": "c", "image": "busybox"}]}});
    let (_, created) = call(&cp, admin(), "POST", "/api/v1/namespaces/default/pods", pod);
    let spec = &created["spec"];
    assert_eq!(spec["serviceAccountName"], "default");
    assert_eq!(spec["tolerations"].as_array().map(Vec::len), Some(2));
    assert_eq!(spec["containers"][0]["imagePullPolicy"], "Always");
    assert_eq!(
        spec["containers"][0]["volumeMounts"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(created["status"]["qosClass"], "BestEffort");
    let status = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
    let req = Req {
        method: "PATCH".into(),
        path: "/api/v1/namespaces/default/pods/p/status".into(),
        query: String::new(),
        accept: "application/json".into(),
        content_type: "application/merge-patch+json".into(),
        user_agent: "gate-tests".into(),
        body: Bytes::from(status.to_string()),
        user: admin(),
        bad_credentials: false,
    };
    let Reply::Full { body, .. } = handle(cp.shared(), req) else {
        panic!("a full answer");
    };
    let patched: Value = serde_json::from_slice(&body).expect("JSON");
    let ready = &patched["status"]["conditions"][0];
    assert!(
        ready.get("lastProbeTime").is_some_and(Value::is_null),
        "{patched}"
    );
    assert!(ready.get("lastTransitionTime").is_some_and(Value::is_null));
}

#[test]
fn cordoned_nodes_get_the_unschedulable_taint() {
    let cp = start("v1.20.2");
    let node = json!({"metadata": {"name": "c"}, "spec": {"unschedulable": true},
                      "status": {"conditions": [{"type": "Ready", "status": "False"}]}});
    call(&cp, admin(), "POST", "/api/v1/nodes", node);
    let deadline = Instant::now() + Duration::from_secs(2);
    let keys = loop {
        let n = cp.get(crate::store::Kind::Node, "", "c").expect("node");
        let keys: Vec<String> = n["spec"]["taints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| {
                t["key"] != "node.kubernetes.io/unschedulable" || t["timeAdded"].is_string()
            })
            .filter_map(|t| t["key"].as_str().map(str::to_owned))
            .collect();
        if keys.len() == 2 || Instant::now() >= deadline {
            break keys;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        keys,
        [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unschedulable"
        ]
    );
}
