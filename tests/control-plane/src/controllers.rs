//! The kube-controller-manager controllers node joining depends on: `bootstrapsigner`
//! (cluster-info JWS), `csrapproving` (SubjectAccessReview-based auto-approval of kubelet client
//! CSRs) and `csrsigning` (signing approved CSRs with the cluster CA).

use crate::auth::{authorize, Attributes, User};
use crate::store::{Key, Kind};
use crate::version::Release;
use crate::{secret_data, token_expired, Approval, CsrReply, Shared, State};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The kubelet client signer.
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";

/// Starts the controllers; they run every 50 ms until the runtime stops.
pub fn spawn(shared: Arc<Shared>) {
    tokio::spawn(async move {
        loop {
            {
                let mut state = shared.lock();
                sign_cluster_info(&mut state, shared.options.signing_delay);
                approve_csrs(&mut state, shared.release);
                sign_csrs(&mut state, &shared);
                node_controllers(&mut state);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// The detached JWS the bootstrap signer computes (cluster-bootstrap `token/jws`).
pub fn detached_jws(content: &str, id: &str, secret: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"HS256","kid":"{id}"}}"#));
    let payload = URL_SAFE_NO_PAD.encode(content);
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac key");
    mac.update(format!("{header}.{payload}").as_bytes());
    format!(
        "{header}..{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

/// `(id, secret)` of every token the signer may sign with (`validateSecretForSigning`).
fn signing_tokens(state: &mut State, delay: Duration) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let now = Instant::now();
    for obj in state.store.list(Kind::Secret, Some("kube-system")) {
        if obj["type"] != "bootstrap.kubernetes.io/token" {
            continue;
        }
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let Some(id) = name.strip_prefix("bootstrap-token-") else {
            continue;
        };
        if id.len() != 6
            || !id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            continue;
        }
        let data = secret_data(obj);
        let Some(secret) = data.get("token-secret").filter(|s| !s.is_empty()) else {
            continue;
        };
        if data.get("token-id").map(String::as_str) != Some(id)
            || token_expired(&data)
            || data.get("usage-bootstrap-signing").map(String::as_str) != Some("true")
        {
            continue;
        }
        let seen = *state.token_seen.entry(id.to_owned()).or_insert(now);
        if now.duration_since(seen) >= delay {
            out.push((id.to_owned(), secret.clone()));
        }
    }
    out
}

/// Recomputes cluster-info's signatures; writes only when they changed.
pub fn sign_cluster_info(state: &mut State, delay: Duration) {
    let key = Key::new(Kind::ConfigMap, "kube-public", "cluster-info");
    let Some(cm) = state.store.get(&key).cloned() else {
        return;
    };
    let Some(content) = cm["data"]["kubeconfig"].as_str().map(str::to_owned) else {
        return;
    };
    let tokens = signing_tokens(state, delay);
    let mut data = serde_json::Map::new();
    for (k, v) in cm["data"].as_object().cloned().unwrap_or_default() {
        if !k.starts_with("jws-kubeconfig-") {
            data.insert(k, v);
        }
    }
    for (id, secret) in tokens {
        data.insert(
            format!("jws-kubeconfig-{id}"),
            json!(detached_jws(&content, &id, &secret)),
        );
    }
    if Value::Object(data.clone()) != cm["data"] {
        let mut updated = cm;
        updated["data"] = Value::Object(data);
        write_back(state, key, updated);
    }
}

fn has_condition(csr: &Value, kind: &str) -> bool {
    csr["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == kind))
}

/// Appends a condition of `kind` as the controllers and the API server's CSR strategy write it:
/// `status: "True"` and `lastTransitionTime` only from 1.19 (see
/// [`Release::csr_condition_status`]); `lastUpdateTime` always.
pub fn add_condition(csr: &mut Value, kind: &str, reason: &str, message: &str, release: Release) {
    let now = crate::store::now_rfc3339();
    if !csr["status"].is_object() {
        csr["status"] = json!({});
    }
    let mut conditions = csr["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut condition =
        json!({"type": kind, "reason": reason, "message": message, "lastUpdateTime": now});
    if release.csr_condition_status() {
        condition["status"] = json!("True");
        condition["lastTransitionTime"] = json!(now);
    }
    conditions.push(condition);
    csr["status"]["conditions"] = Value::Array(conditions);
}

/// Subject (CN, O) of the CSR's request, if it parses.
fn request_subject(csr: &Value) -> Option<(String, Vec<String>, bool)> {
    let pem_b64 = csr["spec"]["request"].as_str()?;
    let pem = STANDARD.decode(pem_b64).ok()?;
    let der = pem_to_der(&pem)?;
    crate::pki::csr_subject(&der).ok()
}

/// The DER inside a `CERTIFICATE REQUEST` PEM block.
pub fn pem_to_der(pem: &[u8]) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::{SectionKind, SliceIter};
    let mut it = SliceIter::<(SectionKind, Vec<u8>)>::new(pem);
    match it.next()? {
        Ok((SectionKind::Csr, der)) => Some(der),
        _ => None,
    }
}

fn usages(csr: &Value) -> Vec<String> {
    let mut u: Vec<String> = csr["spec"]["usages"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    u.sort();
    u
}

/// Why the CSR is not a kubelet client certificate request, in the words of v1.20.2
/// `pkg/apis/certificates/helpers.go` `ValidateKubeletClientCSR` (subject, SANs, CN, then the
/// usages of [`Release::kubelet_client_usages`]); `None` when it is one. The signerName is
/// checked by the callers (there is none before 1.18).
pub fn kubelet_client_error(csr: &Value, release: Release) -> Option<String> {
    let Some((cn, orgs, sans)) = request_subject(csr) else {
        return Some("the request is not a PEM certificate request".into());
    };
    if orgs != ["system:nodes"] {
        return Some("subject organization is not system:nodes".into());
    }
    if sans {
        return Some("DNS subjectAltNames are not allowed".into());
    }
    if !cn.starts_with("system:node:") {
        return Some("subject common name does not begin with system:node:".into());
    }
    if !release.kubelet_client_usages(&usages(csr)) {
        return Some(format!(
            "usages did not match {}",
            release.kubelet_client_usages_text()
        ));
    }
    None
}

/// Whether the CSR names the kubelet client signer; before 1.18 there are no signer names and
/// every CSR is judged by its content alone.
fn for_kubelet_client_signer(csr: &Value, release: Release) -> bool {
    !release.csr_signer_name() || csr["spec"]["signerName"] == KUBELET_CLIENT_SIGNER
}

/// Whether the CSR is a kubelet client certificate request (v1.20.2
/// `pkg/controller/certificates/approver/sarapprove.go` `isNodeClientCert`).
pub fn is_node_client_cert(csr: &Value, release: Release) -> bool {
    for_kubelet_client_signer(csr, release) && kubelet_client_error(csr, release).is_none()
}

fn requester(csr: &Value) -> User {
    User {
        name: csr["spec"]["username"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        groups: csr["spec"]["groups"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|g| g.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The approval message of the first recognizer whose SubjectAccessReview allows the CSR
/// (v1.20.2 `sarapprove.go` `recognizers`: selfnodeclient when the requester is the CSR's CN,
/// then nodeclient), if any.
fn auto_approval(state: &State, csr: &Value) -> Option<&'static str> {
    let user = requester(csr);
    let cn = request_subject(csr).map(|s| s.0).unwrap_or_default();
    let recognizers = [
        (
            "selfnodeclient",
            user.name == cn,
            "Auto approving self kubelet client certificate after SubjectAccessReview.",
        ),
        (
            "nodeclient",
            true,
            "Auto approving kubelet client certificate after SubjectAccessReview.",
        ),
    ];
    recognizers
        .into_iter()
        .filter(|(_, applies, _)| *applies)
        .find(|(sub, _, _)| {
            authorize(
                &state.store,
                &user,
                &Attributes {
                    verb: "create".into(),
                    group: "certificates.k8s.io".into(),
                    resource: "certificatesigningrequests".into(),
                    subresource: (*sub).into(),
                    ..Attributes::default()
                },
            )
        })
        .map(|(_, _, message)| message)
}

/// The csrapproving controller (v1.20.2 `sarapprove.go` `handle`): skips CSRs already issued,
/// approved or denied, and approves kubelet client CSRs on the first allowed recognizer.
pub fn approve_csrs(state: &mut State, release: Release) {
    for key in state.store.keys(Kind::Csr) {
        let Some(csr) = state.store.get(&key).cloned() else {
            continue;
        };
        let done = !csr["status"]["certificate"].is_null()
            || has_condition(&csr, "Approved")
            || has_condition(&csr, "Denied");
        if done || !is_node_client_cert(&csr, release) {
            continue;
        }
        let mut updated = csr.clone();
        match state.approval {
            Approval::Pending => continue,
            Approval::Deny => add_condition(
                &mut updated,
                "Denied",
                "TestDenied",
                "denied by the test control plane",
                release,
            ),
            Approval::Auto => {
                let Some(message) = auto_approval(state, &csr) else {
                    continue;
                };
                add_condition(&mut updated, "Approved", "AutoApproved", message, release);
            }
        }
        write_back(state, key, updated);
    }
}

/// The csrsigning controller for the kubelet client signer (v1.20.2
/// `pkg/controller/certificates/signer/signer.go` `handle`): approved, not failed, not yet
/// issued CSRs of that signer. One it refuses gets `Failed` from 1.19; on 1.18 it stays
/// approved without a certificate; before 1.18 every approved CSR is signed (see
/// [`Release::csr_signer_validates`]).
pub fn sign_csrs(state: &mut State, shared: &Shared) {
    let reply = state.faults.csr_reply;
    for key in state.store.keys(Kind::Csr) {
        let Some(csr) = state.store.get(&key).cloned() else {
            continue;
        };
        if let Some(updated) = signed(&csr, shared, reply) {
            write_back(state, key, updated);
        }
    }
}

/// The CSR after the signer's turn, or `None` when it leaves it alone; `reply` crafts what it
/// issues (see [`CsrReply`]).
fn signed(csr: &Value, shared: &Shared, reply: CsrReply) -> Option<Value> {
    let release = shared.release;
    let approved = has_condition(csr, "Approved") && !has_condition(csr, "Denied");
    if !approved
        || has_condition(csr, "Failed")
        || !csr["status"]["certificate"].is_null()
        || !for_kubelet_client_signer(csr, release)
    {
        return None;
    }
    let refused = kubelet_client_error(csr, release).filter(|_| release.csr_signer_validates());
    let result = match refused {
        Some(why) => Err(why),
        None => csr["spec"]["request"]
            .as_str()
            .and_then(|b| STANDARD.decode(b).ok())
            .and_then(|pem| pem_to_der(&pem))
            .ok_or_else(|| "the request is not a PEM certificate request".to_string())
            .and_then(|der| {
                let (usages, ttl) = (usages(csr), time::Duration::days(365));
                match reply {
                    CsrReply::Sign => shared.ca.sign_client_csr(&der, &usages, ttl),
                    CsrReply::Failed => Err("refused by the test's CsrReply::Failed".into()),
                    CsrReply::OtherKey => shared
                        .ca
                        .sign_client_csr_crafted(&der, &usages, ttl, None, true),
                    CsrReply::OtherName => shared.ca.sign_client_csr_crafted(
                        &der,
                        &usages,
                        ttl,
                        Some("system:node:someone-else"),
                        false,
                    ),
                    CsrReply::OtherCa => shared.foreign_ca.sign_client_csr(&der, &usages, ttl),
                    CsrReply::Garbage => Ok("not a certificate".into()),
                }
            }),
    };
    let mut updated = csr.clone();
    match result {
        Ok(pem) => updated["status"]["certificate"] = json!(STANDARD.encode(pem)),
        Err(why) if release.csr_failed_condition() => add_condition(
            &mut updated,
            "Failed",
            "SignerValidationFailure",
            &why,
            release,
        ),
        Err(_) => return None,
    }
    Some(updated)
}

/// A controller's unconditional write of an object it changed (field manager
/// `kube-controller-manager`).
fn write_back(state: &mut State, key: Key, mut updated: Value) {
    if let Some(m) = updated["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    let api_version = updated["apiVersion"].as_str().unwrap_or("v1").to_owned();
    crate::store::record_manager(&mut updated, "kube-controller-manager", &api_version);
    let _ = state.store.update(key, updated);
}

/// What kube-controller-manager's node controllers do to a new Node (v1.20.2, with kubeadm's
/// `--allocate-node-cidrs` and the pod subnet 10.244.0.0/16): the ttl controller's
/// `node.alpha.kubernetes.io/ttl` (0 below 100 nodes, `pkg/controller/ttl`), the nodeipam
/// controller's `podCIDR`/`podCIDRs` (a /24 each), and the node lifecycle controller's beta
/// os/arch labels from the stable ones (`labelReconcileInfo`) and removal of the not-ready
/// NoSchedule taint once the Node is Ready (`doNoScheduleTaintingPass`).
pub fn node_controllers(state: &mut State) {
    let keys = state.store.keys(Kind::Node);
    let mut next_cidr = keys.len() + 1;
    for key in keys {
        let Some(node) = state.store.get(&key).cloned() else {
            continue;
        };
        let mut updated = node.clone();
        reconcile_node(&mut updated, &mut next_cidr);
        if updated != node {
            write_back(state, key, updated);
        }
    }
}

fn reconcile_node(node: &mut Value, next_cidr: &mut usize) {
    if node["metadata"]["annotations"]["node.alpha.kubernetes.io/ttl"].is_null() {
        node["metadata"]["annotations"]["node.alpha.kubernetes.io/ttl"] = json!("0");
    }
    if node["spec"]["podCIDR"].is_null() {
        let cidr = format!("10.244.{}.0/24", *next_cidr % 256);
        *next_cidr += 1;
        node["spec"]["podCIDR"] = json!(cidr);
        node["spec"]["podCIDRs"] = json!([cidr]);
    }
    for (stable, beta) in [
        ("kubernetes.io/os", "beta.kubernetes.io/os"),
        ("kubernetes.io/arch", "beta.kubernetes.io/arch"),
    ] {
        let value = node["metadata"]["labels"][stable].clone();
        if value.is_string() && node["metadata"]["labels"][beta].is_null() {
            node["metadata"]["labels"][beta] = value;
        }
    }
    no_schedule_taints(node);
}

/// The node lifecycle controller's `doNoScheduleTaintingPass` (v1.20.2
/// `pkg/controller/nodelifecycle/node_lifecycle_controller.go`): the NoSchedule taints a Node
/// should have are those of its conditions (`nodeConditionToTaintKeyStatusMap`) and, when
/// cordoned, `node.kubernetes.io/unschedulable`; the ones it has of those keys are made to
/// match, added ones with `timeAdded` (`SwapNodeControllerTaint`).
fn no_schedule_taints(node: &mut Value) {
    const BY_CONDITION: [(&str, &str, &str); 6] = [
        ("Ready", "False", "node.kubernetes.io/not-ready"),
        ("Ready", "Unknown", "node.kubernetes.io/unreachable"),
        (
            "MemoryPressure",
            "True",
            "node.kubernetes.io/memory-pressure",
        ),
        ("DiskPressure", "True", "node.kubernetes.io/disk-pressure"),
        (
            "NetworkUnavailable",
            "True",
            "node.kubernetes.io/network-unavailable",
        ),
        ("PIDPressure", "True", "node.kubernetes.io/pid-pressure"),
    ];
    const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
    let conditions = node["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut wanted: Vec<&str> = BY_CONDITION
        .iter()
        .filter(|(t, st, _)| {
            conditions
                .iter()
                .any(|c| c["type"] == *t && c["status"] == *st)
        })
        .map(|(_, _, key)| *key)
        .collect();
    if node["spec"]["unschedulable"] == true {
        wanted.push(UNSCHEDULABLE);
    }
    let managed = |t: &Value| {
        t["effect"] == "NoSchedule"
            && (t["key"] == UNSCHEDULABLE || BY_CONDITION.iter().any(|(_, _, k)| t["key"] == *k))
    };
    let mut taints = node["spec"]["taints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let before = taints.clone();
    taints.retain(|t| !managed(t) || wanted.iter().any(|k| t["key"] == *k));
    for key in wanted {
        if !taints.iter().any(|t| managed(t) && t["key"] == key) {
            let now = crate::store::now_rfc3339();
            taints.push(json!({"key": key, "effect": "NoSchedule", "timeAdded": now}));
        }
    }
    if taints == before {
        return;
    }
    if taints.is_empty() {
        if let Some(spec) = node["spec"].as_object_mut() {
            spec.remove("taints");
        }
    } else {
        node["spec"]["taints"] = Value::Array(taints);
    }
}
