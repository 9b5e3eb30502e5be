//! The differential test: the stand-in must answer as the real Kubernetes 1.20.2 API server does.
//!
//! 1. Capture: a real `node-attach join` (scale-out form, the kubelet stand-in registering the
//!    Node and running its pods) against the stand-in set to v1.20.2, then a pod on the node and
//!    `node-attach reset --drain` (the agent's own eviction path); the stand-in's request log is
//!    the sequence, each request with its method, path, query, credentials (anonymous,
//!    bootstrap token, node certificate, admin) and body.
//! 2. Between the join and the drain come the requests whose answers differ by version:
//!    discovery, the unversioned `kubelet-config` (403 before 1.24), v1 CSRs with and without
//!    key encipherment and what the controllers then do (approve and sign; leave pending; after
//!    a manual approval, `Failed`), a manual denial, v1beta1 CSRs with signerName defaulting, v1
//!    validation, SelfSubjectAccessReviews, NodeRestriction, and the eviction subresource
//!    (policy/v1 and policy/v1beta1 bodies, a pod marked for deletion, a PodDisruptionBudget's
//!    429). Where controllers act (CSR approval and signing, the node controllers after
//!    registration and after the cordon) the replay polls until they have, on both servers.
//! 3. Replay: the same sequence goes to the real API server (`real_cluster()`) and to a fresh
//!    stand-in at v1.20.2, with per-test names (token, node), each request with the right
//!    credentials (the node's certificate is the one each server issues for the join's own CSR,
//!    with the key the join generated), resourceVersions mapped to each server's own.
//! 4. Compare, request by request: status codes and response shapes (see [`shape`]), and that
//!    the real server gave the answer each added step is there for. Any difference fails the
//!    test with the list of them.
//!
//! Without the real cluster (not root) the test skips, loudly.

mod shape;

use crate::join::{join, scale_out, Node};
use crate::real_cluster::{real_cluster, RealCluster};
use crate::support::*;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use test_control_plane::RequestRecord;

/// The release the stand-in plays here: the real cluster's.
const VERSION: &str = "v1.20.2";

/// Whose credentials a request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Anonymous,
    Token,
    Node,
    Admin,
}

/// What of the two answers is compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    /// Status code and shape.
    Shape,
    /// Status code only (test setup the agent never does).
    Status,
    /// Status code and the shapes at these JSON pointers (objects the stand-in keeps only as
    /// far as joining needs, such as Pods without their defaulted spec).
    Only(&'static [&'static str]),
}

/// A GET repeated until `done` holds of the answer or `seconds` pass.
#[derive(Clone, Copy, Debug)]
struct Wait {
    done: fn(&Value) -> bool,
    seconds: u64,
    /// `done` must hold of the real server's last answer (else it is a state not to come).
    must_hold: bool,
}

/// One request of the sequence.
#[derive(Clone, Debug)]
struct Step {
    label: String,
    method: String,
    path: String,
    query: String,
    who: Who,
    content_type: String,
    body: String,
    check: Check,
    /// Repeat a GET until the controllers' work shows in the answer.
    until: Option<Wait>,
    /// The stand-in's answer during the capture, for mapping resourceVersions.
    captured: Value,
    /// For a PUT to `/approval`: the condition to add to the CSR as it is then.
    decide: Option<&'static str>,
    /// The status the real server must answer (so that a step does test what it is for): the
    /// code a label ends with, as in "(403)".
    expect: Option<u16>,
}

impl Step {
    fn new(label: &str, method: &str, path: &str, who: Who) -> Step {
        let expect = label
            .strip_suffix(')')
            .and_then(|l| l.get(l.len().saturating_sub(3)..))
            .and_then(|code| code.parse::<u16>().ok());
        Step {
            label: label.into(),
            method: method.into(),
            path: path.into(),
            query: String::new(),
            who,
            content_type: "application/json".into(),
            body: String::new(),
            check: Check::Shape,
            until: None,
            captured: Value::Null,
            decide: None,
            expect,
        }
    }

    fn query(mut self, query: &str) -> Step {
        self.query = query.into();
        self
    }

    fn decide(mut self, kind: &'static str) -> Step {
        self.decide = Some(kind);
        self
    }

    fn json(mut self, body: Value) -> Step {
        self.body = body.to_string();
        self
    }

    fn until(mut self, f: fn(&Value) -> bool, seconds: u64) -> Step {
        self.until = Some(Wait {
            done: f,
            seconds,
            must_hold: true,
        });
        self
    }

    /// Like `until`, for a state that is expected not to come (the GET is compared as it is).
    fn unless(mut self, f: fn(&Value) -> bool, seconds: u64) -> Step {
        self.until = Some(Wait {
            done: f,
            seconds,
            must_hold: false,
        });
        self
    }

    fn only(mut self, pointers: &'static [&'static str]) -> Step {
        self.check = Check::Only(pointers);
        self
    }

    fn setup(mut self) -> Step {
        self.check = Check::Status;
        self
    }

    fn is_watch(&self) -> bool {
        self.query
            .split('&')
            .any(|kv| kv == "watch=true" || kv == "watch=1")
    }

    fn describe(&self) -> String {
        let q = if self.query.is_empty() {
            String::new()
        } else {
            format!("?{}", self.query)
        };
        format!(
            "{} — {} {}{q} as {:?}",
            self.label, self.method, self.path, self.who
        )
    }
}

/// What a server answered.
#[derive(Debug, Default)]
struct Answer {
    status: u16,
    body: Value,
    /// Watch events (JSON lines), for a watch.
    events: Vec<Value>,
}

fn random_name(len: usize) -> String {
    let mut b = vec![0u8; len];
    getrandom::fill(&mut b).expect("random");
    b.iter()
        .map(|x| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[usize::from(*x) % 36]))
        .collect()
}

// --- capture -------------------------------------------------------------------------------

/// The per-test names: a bootstrap token and a node.
struct Names {
    token: String,
    token_id: String,
    node: String,
}

impl Names {
    fn new() -> Names {
        let token_id = random_name(6);
        Names {
            token: format!("{token_id}.{}", random_name(16)),
            token_id,
            node: format!("diff-{}", random_name(6)),
        }
    }
}

/// A stand-in at v1.20.2 with the test's token created and signed.
fn standin(names: &Names) -> TestControlPlane {
    let cp = TestControlPlane::start(Options {
        kubernetes_version: VERSION.into(),
        ..Options::default()
    });
    cp.create_token(&TokenSpec::new(&names.token));
    assert!(
        cp.wait_signed(&names.token_id, Duration::from_secs(5)),
        "signer did not run"
    );
    cp
}

/// What the capture recorded: a join's requests, then a drain's; and the key the join made
/// for the node (read before reset removes it).
struct Captured {
    join: Vec<RequestRecord>,
    drain: Vec<RequestRecord>,
    key: String,
}

/// Joins `names.node` into a v1.20.2 stand-in (its kubelet stand-in running pods), then drains
/// it with `node-attach reset --drain`; the stand-in's request log is what they sent.
fn capture(names: &Names) -> Captured {
    let cp = standin(names);
    let mut node = Node::new();
    node.kubelet_running_pods();
    let mut args = scale_out(&cp, &node, &names.node);
    let at = args.iter().position(|a| a == "--token").expect("--token") + 1;
    args[at] = names.token.clone();
    let run = join(&args, &[]);
    run.expect_no_secret(&[names.token.split_once('.').map_or("", |t| t.1)]);
    run.expect_code(0);
    let joined = cp.requests().len();
    let key = node_key(&node);
    capture_drain(&cp, &node, names);
    let all = cp.requests();
    Captured {
        join: all[..joined].to_vec(),
        drain: all[joined..].to_vec(),
        key,
    }
}

/// A pod on the node, created through the API as an admin (so that the replay creates it
/// too) and run by the kubelet stand-in, then `reset --drain` with the admin's kubeconfig: the
/// agent's own eviction path.
fn capture_drain(cp: &TestControlPlane, node: &Node, names: &Names) {
    let name = format!("{}-drained", names.node);
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                     "spec": {"nodeName": names.node, "containers": [{"name": "c", "image": "busybox"}]}});
    let create = Step::new(
        "a pod to drain",
        "POST",
        "/api/v1/namespaces/default/pods",
        Who::Admin,
    )
    .json(pod);
    let mut admin = Target::standin(cp, names, "", "");
    assert_eq!(admin.send(&create, &create.body).status, 201);
    let deadline = Instant::now() + Duration::from_secs(15);
    while cp
        .get(Kind::Pod, "default", &name)
        .is_some_and(|p| p["status"]["phase"] != "Running")
    {
        assert!(
            Instant::now() < deadline,
            "the kubelet stand-in did not run {name}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let dir = tempfile::tempdir().expect("tmp");
    let kubeconfig = write(dir.path(), "admin.conf", &cp.admin_kubeconfig());
    let kubeconfig = kubeconfig.display().to_string();
    let root = node.root();
    let args = [
        "reset",
        "--root",
        &root,
        "--drain",
        "--kubeconfig",
        &kubeconfig,
        "--drain-timeout",
        "20s",
    ];
    run_with(&args, &[], Duration::from_secs(60)).expect_code(0);
}

fn who_of(user: &str) -> Who {
    if user.starts_with("system:bootstrap:") {
        Who::Token
    } else if user.starts_with("system:node:") {
        Who::Node
    } else if user == "system:anonymous" {
        Who::Anonymous
    } else {
        Who::Admin
    }
}

/// Whether kube-controller-manager's node controllers are done with a new Node (ttl
/// annotation, pod CIDR, beta labels, no not-ready taint).
fn settled(node: &Value) -> bool {
    let not_ready = node["spec"]["taints"]
        .as_array()
        .is_some_and(|t| t.iter().any(|t| t["key"] == "node.kubernetes.io/not-ready"));
    !node["metadata"]["annotations"]["node.alpha.kubernetes.io/ttl"].is_null()
        && !node["spec"]["podCIDR"].is_null()
        && !node["metadata"]["labels"]["beta.kubernetes.io/os"].is_null()
        && !not_ready
}

/// Whether the node lifecycle controller has tainted a cordoned Node.
fn cordoned(node: &Value) -> bool {
    node["spec"]["taints"].as_array().is_some_and(|t| {
        t.iter()
            .any(|t| t["key"] == "node.kubernetes.io/unschedulable")
    })
}

/// The captured requests as steps, labelled by who sent them. After the Node's registration
/// the replay waits until the node controllers are done with it, on both servers: their
/// timing is the controllers', not the API's, and the answers after it would otherwise depend
/// on it.
fn steps_from(records: &[RequestRecord], node: &str) -> Vec<Step> {
    let mut out = Vec::new();
    for step in captured_steps(records, "join") {
        let registration = step.method == "POST" && step.path == "/api/v1/nodes";
        out.push(step);
        if registration {
            let path = format!("/api/v1/nodes/{node}");
            out.push(
                Step::new("the node controllers are done", "GET", &path, Who::Admin)
                    .until(settled, 30),
            );
        }
    }
    out
}

fn captured_steps(records: &[RequestRecord], phase: &str) -> Vec<Step> {
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let agent = r.user_agent.split('/').next().unwrap_or("?");
            let mut step = Step::new(
                &format!("{phase} #{i} ({agent})"),
                &r.method,
                &r.path,
                who_of(&r.user),
            );
            step.query = r.query.clone();
            step.content_type = r.content_type.clone();
            step.body = r.body.clone();
            step.captured = serde_json::from_str(&r.response).unwrap_or(Value::Null);
            step
        })
        .collect()
}

// --- the requests that differ by version --------------------------------------------------

fn csr_pem(cn: &str) -> String {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "system:nodes");
    dn.push(rcgen::DnType::CommonName, cn);
    params.distinguished_name = dn;
    params
        .serialize_request(&key)
        .expect("CSR")
        .pem()
        .expect("PEM")
}

const KE: [&str; 3] = ["digital signature", "key encipherment", "client auth"];
const NO_KE: [&str; 2] = ["digital signature", "client auth"];
const KUBELET_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";

fn csr_body(api: &str, name: &str, usages: &[&str], signer: Option<&str>) -> Value {
    let mut spec = json!({"request": STANDARD.encode(csr_pem(&format!("system:node:{name}"))), "usages": usages});
    if let Some(s) = signer {
        spec["signerName"] = json!(s);
    }
    json!({"apiVersion": format!("certificates.k8s.io/{api}"), "kind": "CertificateSigningRequest",
           "metadata": {"name": name}, "spec": spec})
}

fn csr_path(api: &str, name: &str) -> String {
    let base = format!("/apis/certificates.k8s.io/{api}/certificatesigningrequests");
    if name.is_empty() {
        base
    } else {
        format!("{base}/{name}")
    }
}

fn conditions(v: &Value) -> usize {
    v["status"]["conditions"].as_array().map_or(0, Vec::len)
}

fn issued(v: &Value) -> bool {
    !v["status"]["certificate"].is_null()
}

fn failed(v: &Value) -> bool {
    v["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Failed"))
}

fn has_any_condition(v: &Value) -> bool {
    conditions(v) > 0
}

/// The condition `kubectl certificate approve|deny` adds.
fn decision(kind: &str) -> Value {
    let (reason, message) = match kind {
        "Approved" => (
            "KubectlApprove",
            "This CSR was approved by kubectl certificate approve.",
        ),
        _ => (
            "KubectlDeny",
            "This CSR was denied by kubectl certificate deny.",
        ),
    };
    json!({"type": kind, "status": "True", "reason": reason, "message": message})
}

fn discovery_steps() -> Vec<Step> {
    let mut out = vec![
        Step::new("anonymous /version", "GET", "/version", Who::Anonymous),
        Step::new("anonymous /apis", "GET", "/apis", Who::Anonymous),
        Step::new("anonymous /healthz", "GET", "/healthz", Who::Anonymous),
    ];
    for path in [
        "/api",
        "/api/v1",
        "/apis",
        "/apis/certificates.k8s.io",
        "/apis/certificates.k8s.io/v1",
        "/apis/certificates.k8s.io/v1beta1",
        "/apis/policy",
        "/apis/policy/v1beta1",
        "/apis/policy/v1",
        "/apis/rbac.authorization.k8s.io",
        "/apis/authorization.k8s.io",
        "/apis/authorization.k8s.io/v1",
    ] {
        out.push(Step::new(
            &format!("discovery {path}"),
            "GET",
            path,
            Who::Token,
        ));
    }
    out
}

fn kubelet_config_steps() -> Vec<Step> {
    let cm = |n: &str| format!("/api/v1/namespaces/kube-system/configmaps/{n}");
    vec![
        Step::new(
            "unversioned kubelet-config (no Role: 403)",
            "GET",
            &cm("kubelet-config"),
            Who::Token,
        ),
        Step::new(
            "kubelet-config-1.20",
            "GET",
            &cm("kubelet-config-1.20"),
            Who::Token,
        ),
        Step::new(
            "kubelet-config-1.19 (no Role: 403)",
            "GET",
            &cm("kubelet-config-1.19"),
            Who::Token,
        ),
        Step::new("kubeadm-config", "GET", &cm("kubeadm-config"), Who::Token),
        Step::new(
            "kube-proxy (no Role here: 403)",
            "GET",
            &cm("kube-proxy"),
            Who::Token,
        ),
        Step::new(
            "cluster-info",
            "GET",
            "/api/v1/namespaces/kube-public/configmaps/cluster-info",
            Who::Anonymous,
        ),
        Step::new(
            "kubeadm-config as anonymous (403)",
            "GET",
            &cm("kubeadm-config"),
            Who::Anonymous,
        ),
    ]
}

fn csr_steps(node: &str) -> Vec<Step> {
    let (ke, no_ke, beta, beta2, deny) = (
        format!("{node}-ke"),
        format!("{node}-noke"),
        format!("{node}-beta"),
        format!("{node}-beta2"),
        format!("{node}-deny"),
    );
    let approval = |n: &str| format!("{}/approval", csr_path("v1", n));
    vec![
        Step::new(
            "v1 CSR with key encipherment",
            "POST",
            &csr_path("v1", ""),
            Who::Token,
        )
        .json(csr_body("v1", &ke, &KE, Some(KUBELET_SIGNER))),
        Step::new(
            "… approved and signed",
            "GET",
            &csr_path("v1", &ke),
            Who::Token,
        )
        .until(issued, 20),
        Step::new(
            "v1 CSR without key encipherment",
            "POST",
            &csr_path("v1", ""),
            Who::Token,
        )
        .json(csr_body("v1", &no_ke, &NO_KE, Some(KUBELET_SIGNER))),
        Step::new(
            "… the approver leaves it pending",
            "GET",
            &csr_path("v1", &no_ke),
            Who::Token,
        )
        .unless(has_any_condition, 5),
        Step::new("… approved by hand", "PUT", &approval(&no_ke), Who::Admin).decide("Approved"),
        Step::new(
            "… the signer marks it Failed",
            "GET",
            &csr_path("v1", &no_ke),
            Who::Token,
        )
        .until(failed, 20),
        Step::new(
            "v1beta1 CSR, no signerName (defaulted)",
            "POST",
            &csr_path("v1beta1", ""),
            Who::Token,
        )
        .json(csr_body("v1beta1", &beta, &KE, None)),
        Step::new(
            "… approved and signed",
            "GET",
            &csr_path("v1beta1", &beta),
            Who::Token,
        )
        .until(issued, 20),
        Step::new(
            "v1beta1 CSR, no signerName, no key encipherment",
            "POST",
            &csr_path("v1beta1", ""),
            Who::Token,
        )
        .json(csr_body("v1beta1", &beta2, &NO_KE, None)),
        Step::new(
            "v1 CSR without signerName (422)",
            "POST",
            &csr_path("v1", ""),
            Who::Token,
        )
        .json(csr_body("v1", &format!("{node}-nosigner"), &KE, None)),
        Step::new(
            "v1 CSR for legacy-unknown (422)",
            "POST",
            &csr_path("v1", ""),
            Who::Token,
        )
        .json(csr_body(
            "v1",
            &format!("{node}-legacy"),
            &KE,
            Some("kubernetes.io/legacy-unknown"),
        )),
        Step::new("v1 CSR to deny", "POST", &csr_path("v1", ""), Who::Token).json(csr_body(
            "v1",
            &deny,
            &NO_KE,
            Some(KUBELET_SIGNER),
        )),
        Step::new("… denied by hand", "PUT", &approval(&deny), Who::Admin).decide("Denied"),
        Step::new("… denied", "GET", &csr_path("v1", &deny), Who::Token),
        Step::new(
            "the token lists CSRs by name",
            "GET",
            &csr_path("v1", ""),
            Who::Token,
        )
        .query(&format!("fieldSelector=metadata.name%3D{ke}")),
    ]
}

fn review_steps(node: &str) -> Vec<Step> {
    let ssar = |sub: &str| {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
               "spec": {"resourceAttributes": {"group": "certificates.k8s.io", "resource": "certificatesigningrequests", "subresource": sub, "verb": "create"}}})
    };
    let path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
    let node_path = format!("/api/v1/nodes/{node}");
    let mut other = Step::new(
        "NodeRestriction: another node (403)",
        "PATCH",
        &format!("{node_path}-other"),
        Who::Node,
    )
    .json(json!({"metadata": {"annotations": {"x": "y"}}}));
    other.content_type = "application/merge-patch+json".into();
    let mut label = Step::new(
        "NodeRestriction: a node-restriction label (403)",
        "PATCH",
        &node_path,
        Who::Node,
    )
    .json(json!({"metadata": {"labels": {"node-restriction.kubernetes.io/x": "y"}}}));
    label.content_type = "application/merge-patch+json".into();
    let another =
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("{node}-other")}});
    vec![
        Step::new("another Node", "POST", "/api/v1/nodes", Who::Admin)
            .json(another)
            .setup(),
        Step::new("SSAR nodeclient (token)", "POST", path, Who::Token).json(ssar("nodeclient")),
        Step::new("SSAR selfnodeclient (token)", "POST", path, Who::Token)
            .json(ssar("selfnodeclient")),
        Step::new("SSAR selfnodeclient (node)", "POST", path, Who::Node)
            .json(ssar("selfnodeclient")),
        Step::new(
            "SSAR v1beta1 (token)",
            "POST",
            "/apis/authorization.k8s.io/v1beta1/selfsubjectaccessreviews",
            Who::Token,
        )
        .json({
            let mut r = ssar("nodeclient");
            r["apiVersion"] = json!("authorization.k8s.io/v1beta1");
            r
        }),
        Step::new("the node reads its Node", "GET", &node_path, Who::Node),
        Step::new(
            "the token reads the Node (kubeadm:get-nodes)",
            "GET",
            &node_path,
            Who::Token,
        ),
        other,
        label,
    ]
}

/// Marks a Pod Running and Ready, as its kubelet would (a Pending pod ignores its budget).
fn running(status_path: &str) -> Step {
    let mut s = Step::new("… running and ready", "PATCH", status_path, Who::Admin)
        .json(json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}))
        .setup();
    s.content_type = "application/merge-patch+json".into();
    s
}

fn eviction_steps(node: &str) -> Vec<Step> {
    let pods = "/api/v1/namespaces/default/pods";
    let pod = |name: &str, app: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": app}},
               "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}})
    };
    let eviction = |api: &str, name: &str| json!({"apiVersion": api, "kind": "Eviction", "metadata": {"name": name, "namespace": "default"}});
    let (free, kept) = (format!("{node}-free"), format!("{node}-kept"));
    let evict = |name: &str| format!("{pods}/{name}/eviction");
    let pdb = json!({"apiVersion": "policy/v1beta1", "kind": "PodDisruptionBudget",
        "metadata": {"name": kept.clone()},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": kept.clone()}}}});
    vec![
        Step::new("a Pod on the node", "POST", pods, Who::Admin)
            .json(pod(&free, &free))
            .setup(),
        Step::new("a Pod a PDB protects", "POST", pods, Who::Admin)
            .json(pod(&kept, &kept))
            .setup(),
        running(&format!("{pods}/{kept}/status")),
        Step::new(
            "its PDB (policy/v1beta1)",
            "POST",
            "/apis/policy/v1beta1/namespaces/default/poddisruptionbudgets",
            Who::Admin,
        )
        .json(pdb)
        .setup(),
        Step::new(
            "PDBs as policy/v1 (not served: 404)",
            "GET",
            "/apis/policy/v1/namespaces/default/poddisruptionbudgets",
            Who::Admin,
        ),
        Step::new("the node's pods", "GET", "/api/v1/pods", Who::Admin).setup(),
        Step::new(
            "evict with a policy/v1 body (400)",
            "POST",
            &evict(&free),
            Who::Admin,
        )
        .json(eviction("policy/v1", &free)),
        Step::new(
            "evict with a policy/v1beta1 body",
            "POST",
            &evict(&free),
            Who::Admin,
        )
        .json(eviction("policy/v1beta1", &free)),
        Step::new(
            "… the evicted pod, marked for deletion",
            "GET",
            &format!("{pods}/{free}"),
            Who::Admin,
        )
        .only(&[
            "/kind",
            "/metadata/deletionTimestamp",
            "/metadata/deletionGracePeriodSeconds",
        ]),
        Step::new(
            "evict a PDB-protected pod (429)",
            "POST",
            &evict(&kept),
            Who::Admin,
        )
        .json(eviction("policy/v1beta1", &kept)),
        Step::new(
            "evict a missing pod (404)",
            "POST",
            &evict(&format!("{node}-none")),
            Who::Admin,
        )
        .json(eviction("policy/v1beta1", &format!("{node}-none"))),
    ]
}

/// The added requests, after the join's.
fn extra_steps(node: &str) -> Vec<Step> {
    let mut out = discovery_steps();
    out.extend(kubelet_config_steps());
    out.extend(csr_steps(node));
    out.extend(review_steps(node));
    out.extend(eviction_steps(node));
    out
}

// --- the servers ----------------------------------------------------------------------------

/// A client certificate and its key, PEM.
type Pair = (String, String);

/// One server the sequence is replayed against.
struct Target {
    name: &'static str,
    base: String,
    ca_pem: String,
    token: String,
    admin: Pair,
    /// The node's certificate (issued by this server for the join's CSR) and key.
    node: Option<Pair>,
    /// The join's CSR name and the node's key, to get `node` when first needed.
    node_csr: String,
    node_key: String,
    /// Captured resourceVersion → this server's.
    versions: BTreeMap<String, String>,
    rt: tokio::runtime::Runtime,
}

/// Client certificate and key from a kubeconfig's first user.
fn kubeconfig_pair(text: &str) -> Pair {
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).expect("kubeconfig YAML");
    let user = &doc["users"][0]["user"];
    let field = |k: &str| {
        let b64 = user[k]
            .as_str()
            .unwrap_or_else(|| panic!("kubeconfig lacks {k}"));
        String::from_utf8(STANDARD.decode(b64).expect("base64")).expect("PEM text")
    };
    (field("client-certificate-data"), field("client-key-data"))
}

/// The private key the join generated for the node (the dated kubelet-client file).
fn node_key(node: &Node) -> String {
    let dir = node.path("/var/lib/kubelet/pki");
    let file = std::fs::read_dir(&dir)
        .expect("the node's pki directory")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.starts_with("kubelet-client-2") && !p.is_symlink()
        })
        .expect("a kubelet-client-<date>.pem");
    let text = std::fs::read_to_string(file).expect("read the node's key pair");
    let mut key = String::new();
    let mut inside = false;
    for line in text.lines() {
        inside |= line.starts_with("-----BEGIN") && line.contains("PRIVATE KEY");
        if inside {
            key.push_str(line);
            key.push('\n');
        }
        if inside && line.starts_with("-----END") {
            return key;
        }
    }
    panic!("no private key in the node's key pair");
}

/// The join's own CSR: the first one the token created.
fn join_csr(steps: &[Step]) -> String {
    steps
        .iter()
        .find(|s| {
            s.method == "POST"
                && s.path.ends_with("/certificatesigningrequests")
                && s.who == Who::Token
        })
        .and_then(|s| s.captured["metadata"]["name"].as_str())
        .expect("the join created a CSR")
        .to_owned()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

impl Target {
    fn real(rc: &RealCluster, names: &Names, csr: &str, key: &str) -> Target {
        let admin = std::fs::read_to_string(rc.admin_kubeconfig_path()).expect("admin.conf");
        let ca = rc.env_value("CA_CERT").expect("CA_CERT");
        Target {
            name: "real",
            base: format!("https://{}", rc.endpoint()),
            ca_pem: std::fs::read_to_string(ca).expect("ca.crt"),
            token: names.token.clone(),
            admin: kubeconfig_pair(&admin),
            node: None,
            node_csr: csr.into(),
            node_key: key.into(),
            versions: BTreeMap::new(),
            rt: runtime(),
        }
    }

    fn standin(cp: &TestControlPlane, names: &Names, csr: &str, key: &str) -> Target {
        Target {
            name: "stand-in",
            base: format!("https://{}", cp.endpoint()),
            ca_pem: cp.ca_pem(),
            token: names.token.clone(),
            admin: kubeconfig_pair(&cp.admin_kubeconfig()),
            node: None,
            node_csr: csr.into(),
            node_key: key.into(),
            versions: BTreeMap::new(),
            rt: runtime(),
        }
    }

    fn client(&self, pair: Option<&Pair>) -> reqwest::Client {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c.expect("CA PEM")).expect("CA root");
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots);
        let config = match pair {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .expect("client certificate");
                let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("client key");
                builder
                    .with_client_auth_cert(chain, key)
                    .expect("client auth")
            }
            None => builder.with_no_client_auth(),
        };
        reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .user_agent("node-attach-differential")
            .build()
            .expect("HTTP client")
    }

    /// Sends one request as `who` (the node's credentials fetched first when needed).
    fn send(&mut self, step: &Step, body: &str) -> Answer {
        if step.who == Who::Node && self.node.is_none() {
            self.node = Some(self.node_identity());
        }
        let pair = match step.who {
            Who::Admin => Some(&self.admin),
            Who::Node => self.node.as_ref(),
            Who::Anonymous | Who::Token => None,
        };
        let client = self.client(pair);
        let url = if step.query.is_empty() {
            format!("{}{}", self.base, step.path)
        } else {
            format!("{}{}?{}", self.base, step.path, step.query)
        };
        let method = reqwest::Method::from_bytes(step.method.as_bytes()).expect("method");
        let mut req = client
            .request(method, url)
            .header("Accept", "application/json");
        if step.who == Who::Token {
            req = req.bearer_auth(&self.token);
        }
        if !body.is_empty() {
            req = req
                .header("Content-Type", &step.content_type)
                .body(body.to_owned());
        }
        let watch = step.is_watch();
        self.rt.block_on(async move { answer(req, watch).await })
    }

    /// The node's client certificate: this server's certificate for the join's CSR, with the
    /// key the join generated.
    fn node_identity(&mut self) -> Pair {
        let get = Step::new(
            "node identity",
            "GET",
            &csr_path("v1", &self.node_csr),
            Who::Admin,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let a = self.send(&get, "");
            if let Some(b64) = a.body["status"]["certificate"].as_str() {
                let cert = String::from_utf8(STANDARD.decode(b64).expect("base64")).expect("PEM");
                return (cert, self.node_key.clone());
            }
            assert!(
                Instant::now() < deadline,
                "{}: the join's CSR {} was not issued: {}",
                self.name,
                self.node_csr,
                a.body
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Reads an answer: the JSON body, or for a watch the events that arrive within 10 s (until
/// one shows a CSR issued, denied or failed).
async fn answer(req: reqwest::RequestBuilder, watch: bool) -> Answer {
    let resp = tokio::time::timeout(Duration::from_secs(20), req.send())
        .await
        .expect("the server answers within 20 s")
        .expect("the request goes through");
    let status = resp.status().as_u16();
    if !watch || status != 200 {
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        return Answer {
            status,
            body,
            events: Vec::new(),
        };
    }
    Answer {
        status,
        body: Value::Null,
        events: watch_events(resp).await,
    }
}

async fn watch_events(mut resp: reqwest::Response) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (mut buf, mut events) = (Vec::new(), Vec::new());
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, resp.chunk()).await {
        buf.extend_from_slice(&chunk);
        while let Some(at) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=at).collect();
            if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                let done = issued(&v["object"])
                    || conditions(&v["object"]) > 0
                        && v["object"]["status"]["conditions"]
                            .as_array()
                            .is_some_and(|c| c.iter().any(|c| c["type"] != "Approved"));
                events.push(v);
                if done {
                    return events;
                }
            }
        }
    }
    events
}

// --- replay ---------------------------------------------------------------------------------

/// Records captured resourceVersion → this server's, from two answers to the same request.
fn learn(versions: &mut BTreeMap<String, String>, captured: &Value, mine: &Value) {
    match (captured, mine) {
        (Value::Object(c), Value::Object(m)) => {
            for (k, cv) in c {
                let Some(mv) = m.get(k) else { continue };
                match (k.as_str(), cv.as_str(), mv.as_str()) {
                    ("resourceVersion", Some(a), Some(b)) => {
                        versions.insert(a.to_owned(), b.to_owned());
                    }
                    _ => learn(versions, cv, mv),
                }
            }
        }
        (Value::Array(c), Value::Array(m)) => {
            for (cv, mv) in c.iter().zip(m) {
                learn(versions, cv, mv);
            }
        }
        _ => {}
    }
}

/// Replaces captured resourceVersions in a JSON body with this server's.
fn map_versions(versions: &BTreeMap<String, String>, v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match (k.as_str(), x.as_str().and_then(|s| versions.get(s))) {
                    ("resourceVersion", Some(mapped)) => *x = json!(mapped),
                    _ => map_versions(versions, x),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| map_versions(versions, x)),
        _ => {}
    }
}

impl Target {
    /// The step as this server gets it: resourceVersions mapped, an approval's body built from
    /// the CSR as it is now.
    fn prepare(&mut self, step: &Step) -> (Step, String) {
        let mut step = step.clone();
        step.query = step
            .query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some(("resourceVersion", rv)) => match self.versions.get(rv) {
                    Some(mapped) => format!("resourceVersion={mapped}"),
                    None => kv.to_owned(),
                },
                _ => kv.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&");
        let body = match step.decide {
            Some(kind) => {
                let csr = step.path.trim_end_matches("/approval").to_owned();
                let mut current = self
                    .send(&Step::new("current", "GET", &csr, Who::Admin), "")
                    .body;
                let mut list = current["status"]["conditions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                list.push(decision(kind));
                current["status"]["conditions"] = Value::Array(list);
                current.to_string()
            }
            None => match serde_json::from_str::<Value>(&step.body) {
                Ok(mut v) => {
                    map_versions(&self.versions, &mut v);
                    v.to_string()
                }
                Err(_) => step.body.clone(),
            },
        };
        (step, body)
    }

    /// Sends the step (a polled GET until its condition holds or its time is up).
    fn run(&mut self, step: &Step) -> Answer {
        let (step, body) = self.prepare(step);
        let deadline = step
            .until
            .map(|w| Instant::now() + Duration::from_secs(w.seconds));
        loop {
            let a = self.send(&step, &body);
            learn(&mut self.versions, &step.captured, &a.body);
            let done = match (step.until, deadline) {
                (Some(w), Some(d)) => (w.done)(&a.body) || Instant::now() >= d || a.status != 200,
                _ => true,
            };
            if done {
                return a;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

// --- comparison -----------------------------------------------------------------------------

fn short(a: &Answer) -> String {
    let text = if a.body["kind"] == "Status" {
        a.body["message"].as_str().unwrap_or_default().to_owned()
    } else {
        a.body.to_string()
    };
    text.chars().take(200).collect()
}

/// Whether the real server's answer is the one the step is there to see.
fn unexpected(step: &Step, real: &Answer) -> Option<String> {
    if let Some(code) = step.expect.filter(|c| *c != real.status) {
        return Some(format!(
            "the real server answered {} ({}), the step expects {code}",
            real.status,
            short(real)
        ));
    }
    match step.until {
        Some(w) if w.must_hold && !(w.done)(&real.body) => Some(format!(
            "the real server never reached the state the step waits for: {}",
            shape::csr_state(&real.body)
        )),
        _ => None,
    }
}

/// The differences between the two answers to one step.
fn compare(step: &Step, real: &Answer, standin: &Answer) -> Vec<String> {
    let mut out: Vec<String> = unexpected(step, real).into_iter().collect();
    if real.status != standin.status {
        out.push(format!(
            "status: real {} ({}), stand-in {} ({})",
            real.status,
            short(real),
            standin.status,
            short(standin)
        ));
    }
    match step.check {
        Check::Status => return out,
        Check::Only(pointers) => {
            for p in pointers {
                let pick = |a: &Answer| a.body.pointer(p).cloned().unwrap_or(Value::Null);
                out.extend(shape::differences(p, &pick(real), &pick(standin)));
            }
            return out;
        }
        Check::Shape => {}
    }
    out.extend(shape::differences(&step.path, &real.body, &standin.body));
    let types = |a: &Answer| -> Vec<String> {
        let mut t: Vec<String> = a.events.iter().map(|e| e["type"].to_string()).collect();
        t.dedup();
        t
    };
    if types(real) != types(standin) {
        out.push(format!(
            "watch events: real {:?}, stand-in {:?}",
            types(real),
            types(standin)
        ));
    }
    if let (Some(r), Some(s)) = (real.events.last(), standin.events.last()) {
        out.extend(shape::differences(
            &format!("{} (last event)", step.path),
            r,
            s,
        ));
    }
    out
}

// --- the real cluster's side ----------------------------------------------------------------

/// Creates the test's bootstrap token in the real cluster as kubeadm does, and waits for the
/// bootstrap signer to sign cluster-info with it.
fn real_token(rc: &RealCluster, names: &Names) {
    let (id, secret) = names.token.split_once('.').expect("id.secret");
    let expires = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let expires = expires
        .replace_nanosecond(0)
        .expect("seconds")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339");
    let name = format!("bootstrap-token-{id}");
    let literal = |k: &str, v: &str| format!("--from-literal={k}={v}");
    let out = rc.kubectl(&[
        "-n",
        "kube-system",
        "create",
        "secret",
        "generic",
        &name,
        "--type",
        "bootstrap.kubernetes.io/token",
        &literal("token-id", id),
        &literal("token-secret", secret),
        &literal("usage-bootstrap-authentication", "true"),
        &literal("usage-bootstrap-signing", "true"),
        &literal(
            "auth-extra-groups",
            test_control_plane::seed::BOOTSTRAP_GROUP,
        ),
        &literal("expiration", &expires),
    ]);
    assert!(
        out.status.success(),
        "creating the token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let jsonpath = format!("jsonpath={{.data.jws-kubeconfig-{id}}}");
    while rc
        .kubectl(&[
            "-n",
            "kube-public",
            "get",
            "cm",
            "cluster-info",
            "-o",
            &jsonpath,
        ])
        .stdout
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the real bootstrap signer did not sign for {id}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Removes what the test made in the real cluster, however the test ends.
struct Cleanup<'a> {
    rc: &'a RealCluster,
    token_id: String,
    node: String,
    csrs: Vec<String>,
}

impl Cleanup<'_> {
    /// One cleanup command, tried up to three times (kubectl runs share a cache directory with
    /// the other tests'); a last failure is only reported.
    fn kubectl(&self, args: &[&str]) {
        for attempt in 1..=3 {
            let out = self.rc.kubectl(args);
            if out.status.success() {
                return;
            }
            if attempt == 3 {
                eprintln!(
                    "differential cleanup: kubectl {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let n = &self.node;
        let secret = format!("bootstrap-token-{}", self.token_id);
        self.kubectl(&[
            "-n",
            "kube-system",
            "delete",
            "secret",
            &secret,
            "--ignore-not-found",
        ]);
        let pods = [
            format!("{n}-free"),
            format!("{n}-kept"),
            format!("{n}-drained"),
        ];
        let mut args = vec![
            "-n",
            "default",
            "delete",
            "pod",
            "--ignore-not-found",
            "--grace-period=0",
            "--force",
        ];
        args.extend(pods.iter().map(String::as_str));
        self.kubectl(&args);
        let pdb = format!("{n}-kept");
        self.kubectl(&["-n", "default", "delete", "pdb", &pdb, "--ignore-not-found"]);
        self.kubectl(&[
            "delete",
            "node",
            n,
            &format!("{n}-other"),
            "--ignore-not-found",
        ]);
        let mut args = vec!["delete", "csr", "--ignore-not-found"];
        args.extend(self.csrs.iter().map(String::as_str));
        self.kubectl(&args);
    }
}

fn csr_names(steps: &[Step]) -> Vec<String> {
    let mut names: Vec<String> = steps
        .iter()
        .filter(|s| s.method == "POST" && s.path.ends_with("/certificatesigningrequests"))
        .filter_map(|s| {
            let body: Value = serde_json::from_str(&s.body).ok()?;
            body["metadata"]["name"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| s.captured["metadata"]["name"].as_str().map(str::to_owned))
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The whole sequence: the join's requests, the version-specific ones, the drain's, and a last
/// look at the cordoned Node; with the key the join made for the node.
fn sequence(names: &Names) -> (Vec<Step>, String) {
    let Captured { join, drain, key } = capture(names);
    let mut steps = steps_from(&join, &names.node);
    steps.extend(extra_steps(&names.node));
    steps.extend(captured_steps(&drain, "drain"));
    let node_path = format!("/api/v1/nodes/{}", names.node);
    steps.push(
        Step::new("the cordoned Node, tainted", "GET", &node_path, Who::Admin).until(cordoned, 30),
    );
    (steps, key)
}

/// Sends every step to both servers, in turn; returns the differences, one entry per step.
fn replay(steps: &[Step], real: &mut Target, standin: &mut Target) -> Vec<String> {
    let mut report = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let (a, b) = (real.run(step), standin.run(step));
        eprintln!(
            "differential #{i} {}: real {}, stand-in {}",
            step.describe(),
            a.status,
            b.status
        );
        let found = compare(step, &a, &b);
        if !found.is_empty() {
            report.push(format!(
                "#{i} {}\n    {}",
                step.describe(),
                found.join("\n    ")
            ));
        }
    }
    report
}

#[test]
fn the_stand_in_answers_a_join_as_the_real_1_20_api_server_does() {
    let Some(rc) = real_cluster() else {
        eprintln!(
            "######## SKIPPED: the differential test needs the real Kubernetes cluster ########"
        );
        return;
    };
    let names = Names::new();
    let mut cleanup = Cleanup {
        rc,
        token_id: names.token_id.clone(),
        node: names.node.clone(),
        csrs: Vec::new(),
    };
    real_token(rc, &names);
    let (steps, key) = sequence(&names);
    cleanup.csrs = csr_names(&steps);
    let csr = join_csr(&steps);
    let fresh = standin(&names);
    let mut real = Target::real(rc, &names, &csr, &key);
    let mut standin = Target::standin(&fresh, &names, &csr, &key);
    let report = replay(&steps, &mut real, &mut standin);
    assert!(
        report.is_empty(),
        "the stand-in (v1.20.2) and the real v1.20.2 API server answered {} of {} requests differently:\n{}",
        report.len(),
        steps.len(),
        report.join("\n")
    );
}
