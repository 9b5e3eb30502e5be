//! What reset asks of the API server: a drain (cordon, then evictions that honour
//! PodDisruptionBudgets) with an admin's kubeconfig, and the deletion of this node's Node.

use super::{Ctx, Outcome};
use crate::apply::records::CallbackRecord;
use crate::client::kube::objects::{List, Pod};
use crate::client::kube::{paths, Kube};
use crate::effects::fs::Root;
use crate::error::{Code, Failure};
use crate::model::kubeconfig::Kubeconfig;
use crate::model::paths::{CURRENT, KUBELET_CONF};
use crate::trust::tls::ClientIdentity;
use std::path::Path;
use std::time::Duration;

/// How this node's Node object is deleted.
pub enum Deletion {
    /// Settled now (deleted, absent, refused or skipped): the summary for the report.
    Settled(String),
    /// The values service deletes it when reset's last report, authenticated with the node's
    /// client certificate (read now: cleanup removes the file), reaches it.
    ByService {
        /// The Node's name.
        name: String,
        /// The kubelet's client pair.
        identity: ClientIdentity,
        /// Where join reported.
        callback: CallbackRecord,
    },
}

/// Deletes this node's Node object, or says who will. With the admin kubeconfig when given;
/// else through the values service join reported to (`callback`), which deletes the Node of
/// a node proving its identity with its client certificate; else with the node's own
/// credentials, which a real API server refuses (its Node authorizer grants nodes create,
/// get, update and patch on Nodes, never delete: `plugin/pkg/auth/authorizer/rbac/
/// bootstrappolicy` `NodeRules`), a failed step saying what to do.
pub async fn delete_node(ctx: &mut Ctx<'_>, callback: Option<&CallbackRecord>) -> Deletion {
    let Some(name) = own_node_name(&ctx.fx.root) else {
        let why = "the node's name is unknown (no certificate, no state file)";
        ctx.step("api", "DELETE node", Outcome::Skipped, why);
        return Deletion::Settled("skipped: the node's name is unknown".into());
    };
    let identity = match (&ctx.opts.admin_kubeconfig, callback) {
        (None, Some(cb)) => node_identity(&ctx.fx.root).map(|id| (id, cb.clone())),
        _ => None,
    };
    if ctx.opts.dry_run {
        let (target, how) = match (&ctx.opts.admin_kubeconfig, &identity) {
            (None, Some(_)) => (by_service(&name), "on reset's report"),
            (Some(_), _) => (direct(&name), "with the admin kubeconfig"),
            (None, None) => (direct(&name), "as the node itself"),
        };
        ctx.step("api", target, Outcome::WouldDo, how);
        return Deletion::Settled(format!("would delete {name}"));
    }
    if let Some((identity, callback)) = identity {
        return Deletion::ByService {
            name,
            identity,
            callback,
        };
    }
    Deletion::Settled(delete_directly(ctx, &name).await)
}

fn direct(name: &str) -> String {
    format!("DELETE /api/v1/nodes/{name}")
}

fn by_service(name: &str) -> String {
    format!("DELETE node {name} (by the values service)")
}

/// `DELETE` the Node with the admin kubeconfig, or as the node itself.
async fn delete_directly(ctx: &mut Ctx<'_>, name: &str) -> String {
    let target = direct(name);
    let limits = crate::client::http::Limits {
        request_timeout: Duration::from_secs(10),
        ..crate::client::http::Limits::default()
    };
    let (client, how) = match &ctx.opts.admin_kubeconfig {
        Some(admin) => (
            Kube::from_admin(admin, limits).map_err(|e| e.to_string()),
            "with the admin kubeconfig",
        ),
        None => (
            node_client(&ctx.fx.root, limits),
            "with the node's own credentials",
        ),
    };
    let outcome = match client {
        Ok(kube) => kube
            .delete(&paths::node(name))
            .await
            .map_err(|e| (e.status(), e.to_string())),
        Err(e) => Err((None, e)),
    };
    match outcome {
        Ok(true) => {
            ctx.step("api", target, Outcome::Done, how);
            format!("deleted {name}")
        }
        Ok(false) => {
            ctx.step("api", target, Outcome::Done, "already absent");
            format!("{name} was already absent")
        }
        Err((Some(403), e)) => {
            ctx.step("api", target, Outcome::Failed, format!("{e}. A node may not delete its own Node object on a real cluster: pass --kubeconfig with an admin's kubeconfig, join through a values service (node-attach serve deletes the Node on reset's report), or delete it from the control plane (kubectl delete node {name})"));
            format!("not deleted: the API server refused ({name} stays until the control plane deletes it)")
        }
        Err((_, e)) => {
            let detail = format!("API server unreachable or refused: {e}");
            ctx.step("api", target, Outcome::Skipped, detail);
            format!("skipped: {e}")
        }
    }
}

/// Sends reset's last report to the values service with the node's client certificate and
/// records whether the service deleted the Node.
pub async fn delete_through_service(
    ctx: &mut Ctx<'_>,
    callback: &CallbackRecord,
    name: &str,
    identity: &ClientIdentity,
) -> String {
    let target = by_service(name);
    let answer = super::report(callback, name, ctx.problems(), &ctx.audit, Some(identity)).await;
    let said = |key: &str| {
        answer
            .as_ref()
            .and_then(|a| a[key].as_str())
            .map(str::to_owned)
    };
    let manual = format!("delete it from the control plane (kubectl delete node {name})");
    match said("node").as_deref() {
        Some("deleted") => {
            ctx.step(
                "api",
                target,
                Outcome::Done,
                "the values service deleted it",
            );
            format!("deleted {name} (by the values service)")
        }
        Some("absent") => {
            ctx.step("api", target, Outcome::Done, "already absent");
            format!("{name} was already absent")
        }
        Some(_) => {
            let reason = said("reason").unwrap_or_else(|| "no reason given".into());
            let detail = format!("the values service refused: {reason}; {manual}");
            ctx.step("api", target, Outcome::Failed, detail);
            format!("not deleted: the values service refused ({reason})")
        }
        None => {
            let detail = format!("the values service did not confirm a deletion; {manual}");
            ctx.step("api", target, Outcome::Failed, detail);
            "not deleted: no answer from the values service".to_owned()
        }
    }
}

/// The kubelet's current client pair, for authenticating reset's report.
fn node_identity(root: &Root) -> Option<ClientIdentity> {
    let pair = root.read_following(Path::new(CURRENT)).ok().flatten()?;
    ClientIdentity::from_pem(&pair).ok()
}

/// A client authenticating as the node (kubelet.conf's cluster, the current client pair).
fn node_client(root: &Root, limits: crate::client::http::Limits) -> Result<Kube, String> {
    let conf = root
        .read(Path::new(KUBELET_CONF))
        .ok()
        .flatten()
        .ok_or("no /etc/kubernetes/kubelet.conf: no node credentials")?;
    let pair = root
        .read_following(Path::new(CURRENT))
        .ok()
        .flatten()
        .ok_or("no client certificate")?;
    let cluster = Kubeconfig::parse(&String::from_utf8_lossy(&conf))
        .and_then(|k| k.current_cluster())
        .map_err(|e| format!("kubelet.conf is unreadable: {e}"))?;
    let ca = crate::trust::pin::certificates_from_pem(&cluster.ca_pem).unwrap_or_default();
    Kube::with_certificate(&cluster.server, &ca, &pair, limits).map_err(|e| e.to_string())
}

/// The node's name, from its client certificate, or from join's state file.
pub fn own_node_name(root: &Root) -> Option<String> {
    if let Some(name) = root
        .read_following(Path::new(CURRENT))
        .ok()
        .flatten()
        .and_then(|p| node_name_of(&p))
    {
        return Some(name);
    }
    crate::apply::records::read::<crate::apply::records::NodeState>(
        root,
        crate::apply::records::STATE_FILE,
    )
    .map(|s| s.node_name)
    .filter(|n| !n.is_empty())
}

/// `kubectl drain` with an admin's credentials: cordon, then evict every pod but DaemonSet and
/// mirror pods through the eviction API (which honours PodDisruptionBudgets: a 429 is retried
/// until the timeout), then wait until they are gone. A drain that cannot finish stops reset
/// before anything is removed.
pub async fn drain(
    ctx: &mut Ctx<'_>,
    admin: &crate::client::kube::kubeconfig::AdminKubeconfig,
) -> Result<(), Failure> {
    let Some(name) = own_node_name(&ctx.fx.root) else {
        let why = "the node's name is unknown (no certificate, no state file)";
        ctx.step("drain", "node", Outcome::Skipped, why);
        return Ok(());
    };
    if ctx.opts.dry_run {
        ctx.step(
            "drain",
            format!("cordon and evict pods of {name}"),
            Outcome::WouldDo,
            "",
        );
        return Ok(());
    }
    let limits = crate::client::http::Limits {
        request_timeout: Duration::from_secs(15),
        ..crate::client::http::Limits::default()
    };
    let kube =
        Kube::from_admin(admin, limits).map_err(|e| drain_failed(format!("--kubeconfig: {e}")))?;
    // Evictions answer 429 while a budget protects the pod: the drain loop waits those out
    // itself, so each call is asked once.
    let evictor = Kube::from_admin(admin, limits)
        .map_err(|e| drain_failed(format!("--kubeconfig: {e}")))?
        .with_retry_deadline(Duration::ZERO);
    let cordon = serde_json::json!({"spec": {"unschedulable": true}});
    kube.merge_patch(&paths::node(&name), &cordon)
        .await
        .map_err(|e| drain_failed(format!("cordoning {name}: {e}")))?;
    ctx.step("drain", format!("cordon {name}"), Outcome::Done, "");
    // The Eviction's group-version follows the cluster: policy/v1 from 1.22, v1beta1 before.
    let version = match kube.version().await {
        Ok((v, _)) => crate::model::compat::eviction_version(&v),
        Err(e) => {
            return Err(drain_failed(format!(
                "reading the API server's version: {e}"
            )))
        }
    };
    let deadline = std::time::Instant::now() + ctx.opts.drain_timeout;
    loop {
        let pods = pods_to_evict(&kube, &name).await?;
        if pods.is_empty() {
            ctx.step("drain", format!("evict pods of {name}"), Outcome::Done, "");
            return Ok(());
        }
        let blocked = evict(ctx, &evictor, version, &pods).await?;
        if std::time::Instant::now() >= deadline {
            return Err(drain_failed(format!(
                "the drain of {name} did not finish within {:?}: PodDisruptionBudgets still protect {}; nothing was removed. Rerun with a longer --drain-timeout, or without --drain",
                ctx.opts.drain_timeout,
                blocked.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn drain_failed(m: String) -> Failure {
    Failure::new(Code::DrainFailed, m)
}

/// The pods on the node a drain moves (not DaemonSet or mirror pods).
async fn pods_to_evict(kube: &Kube, node: &str) -> Result<Vec<Pod>, Failure> {
    let list: List<Pod> = kube
        .get_as(&paths::pods_on(node))
        .await
        .map_err(|e| drain_failed(format!("listing the pods on {node}: {e}")))?
        .unwrap_or(List { items: Vec::new() });
    Ok(list
        .items
        .into_iter()
        .filter(|p| !p.survives_drain())
        .collect())
}

/// One round of evictions; returns the pods still protected (or to be asked again).
async fn evict(
    ctx: &mut Ctx<'_>,
    evictor: &Kube,
    version: &str,
    pods: &[Pod],
) -> Result<Vec<String>, Failure> {
    let mut blocked = Vec::new();
    for p in pods {
        let ns = p.metadata.namespace.as_deref().unwrap_or("default");
        let pod = p.metadata.name.as_str();
        let eviction = serde_json::json!({"apiVersion": version, "kind": "Eviction", "metadata": {"name": pod, "namespace": ns}});
        match evictor.post(&paths::eviction(ns, pod), &eviction).await {
            Ok(_) => ctx.step("evict", format!("{ns}/{pod}"), Outcome::Done, ""),
            Err(e) if e.status() == Some(404) => {}
            Err(e) if e.status() == Some(429) => blocked.push(format!("{ns}/{pod}")),
            // Asked again on the next round, within the drain's deadline.
            Err(e) if e.is_transient() => blocked.push(format!("{ns}/{pod} ({e})")),
            Err(e) => return Err(drain_failed(format!("evicting {ns}/{pod}: {e}"))),
        }
    }
    Ok(blocked)
}

fn node_name_of(pair: &[u8]) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(pair)
        .next()?
        .ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    cn.strip_prefix("system:node:").map(str::to_owned)
}
