//! The confirm phase: with `--tls-bootstrap=kubelet`, the kubelet's own bootstrap finished and
//! its token off the disk; the Node registered (and Ready, when it becomes so soon), read with
//! the node's own credentials; and the CRI socket annotation kubeadm join writes.

use super::bootstrap::{BOOTSTRAP_CONF, CURRENT, KUBELET_CONF};
use super::Context;
use crate::apply::Applier;
use crate::client::kube::Kube;
use crate::error::{Code, Failure};
use crate::sources::settings::TlsBootstrapMode;
use std::path::Path;
use std::time::{Duration, Instant};

/// Whether the Node was seen, and Ready.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Registration {
    /// Seen in the API.
    pub registered: bool,
    /// Its Ready condition True.
    pub ready: bool,
}

/// Runs the confirm phase (after the kubelet was started).
pub async fn phase(
    applier: &mut Applier<'_>,
    ctx: &Context<'_>,
    cri_endpoint: &str,
) -> Result<Registration, Failure> {
    let settings = ctx.settings;
    if settings.dry_run {
        let what = format!("GET /api/v1/nodes/{}", ctx.identity.node_name);
        applier.api(&what, "wait until the Node is registered", false);
        return Ok(Registration::default());
    }
    if settings.tls_bootstrap == TlsBootstrapMode::Kubelet {
        finish_kubelet_bootstrap(applier, settings.timeouts.csr).await?;
    }
    if settings.timeouts.node_wait.is_zero() {
        return Ok(Registration::default());
    }
    // One client as the node for the wait and the annotation: its second connection resumes
    // the first's TLS session instead of a full handshake.
    let node = node_client(ctx);
    let seen = wait_for_node(ctx, node.as_ref()).await?;
    // kubeadm keeps the socket in the Node's annotation unless its instance configuration,
    // written in the kubelet phase, holds it (NodeLocalCRISocket).
    if let (true, false, Some(node)) = (
        seen.registered,
        ctx.cluster.config.cri_socket_on_node,
        &node,
    ) {
        annotate_cri_socket(ctx, node, cri_endpoint).await;
    }
    Ok(seen)
}

/// As kubeadm's kubelet-start phase does: waits until the kubelet has finished its own TLS
/// bootstrap (it writes kubelet.conf), then removes bootstrap-kubelet.conf and the token in
/// it. When the kubelet does not finish in time the token leaves the disk all the same, and
/// join fails.
async fn finish_kubelet_bootstrap(
    applier: &mut Applier<'_>,
    timeout: Duration,
) -> Result<(), Failure> {
    let root = applier.effects().root.clone();
    let deadline = Instant::now() + timeout;
    let bootstrapped = loop {
        if root.read(Path::new(KUBELET_CONF)).ok().flatten().is_some() {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    applier
        .remove_own(Path::new(BOOTSTRAP_CONF))
        .map_err(|e| Failure::new(Code::Filesystem, e.to_string()))?;
    if bootstrapped {
        return Ok(());
    }
    Err(Failure::new(
        Code::CsrTimeout,
        format!(
            "the kubelet did not finish its TLS bootstrap within {timeout:?} (no {KUBELET_CONF}); the bootstrap kubeconfig was removed. Look at the kubelet's log (journalctl -u kubelet) and at the cluster's CSRs (kubectl get csr)"
        ),
    ))
}

/// A client that is the node itself, once its certificate is there.
fn node_client(ctx: &Context<'_>) -> Option<Kube> {
    let pair = ctx.effects.root.read_following(Path::new(CURRENT)).ok()??;
    let found = &ctx.found;
    Kube::with_certificate(
        &found.api_server,
        &found.ca_ders,
        &pair,
        ctx.settings.limits,
    )
    .ok()
}

/// How long a Node that registered may take to turn Ready before the join stops waiting (a
/// CNI plugin may still be starting). It covers one missed status as well: a kubelet before
/// 1.26 writes its status when it registers, once more when its podCIDR appears
/// (`fastStatusUpdateOnce`, pkg/kubelet/kubelet.go v1.20.2), and then every
/// `nodeStatusUpdateFrequency` (10 s by default); when its CSINode, its runtime check or its
/// first PLEG relist is not done by those two early writes, Ready waits for the next tick.
/// From 1.26 the kubelet retries the fast update every 100 ms until Ready
/// (kubernetes/kubernetes#112618).
const READY_GRACE: Duration = Duration::from_secs(20);

/// What the wait has seen of the Node.
#[derive(Default)]
struct Seen {
    registered_at: Option<Instant>,
    ready: bool,
    resource_version: String,
}

impl Seen {
    /// When to stop waiting: the deadline, or the end of the grace once registered.
    fn until(&self, deadline: Instant) -> Instant {
        self.registered_at
            .map_or(deadline, |at| (at + READY_GRACE).min(deadline))
    }

    fn note(&mut self, node: &crate::client::kube::objects::Node) {
        self.registered_at.get_or_insert_with(Instant::now);
        self.ready = node.is_ready();
        if !node.metadata.resource_version.is_empty() {
            self.resource_version
                .clone_from(&node.metadata.resource_version);
        }
    }

    fn registration(&self) -> Registration {
        Registration {
            registered: self.registered_at.is_some(),
            ready: self.ready,
        }
    }
}

/// Waits until the Node is registered, and then until it is Ready for up to 20 s more, within
/// `--node-wait-timeout`: one watch on that Node as the node itself (the Node authorizer lets a
/// node watch Nodes), lasting to that deadline, opened again from the last resourceVersion
/// when the server or a proxy closes it early, and ended by the grace when the Node registers
/// not Ready. A client that may not watch (the bootstrap
/// token, or an authorizer that refuses) reads the Node instead, backing off from 300 ms to 2 s.
async fn wait_for_node(
    ctx: &Context<'_>,
    node_client: Option<&Kube>,
) -> Result<Registration, Failure> {
    let name = &ctx.identity.node_name;
    let wait = ctx.settings.timeouts.node_wait;
    let deadline = Instant::now() + wait;
    let mut seen = Seen::default();
    let watched = match node_client {
        Some(client) => watch_node(client, name, deadline, &mut seen).await,
        None => false,
    };
    match (watched, node_client) {
        (false, _) => {
            poll_node(node_client.unwrap_or(&ctx.kube), name, deadline, &mut seen).await;
        }
        // One read before reporting the Node missing: a watch whose connection was dropped
        // without a word (a NAT, a load balancer) brings no event and no error before then.
        (true, Some(client)) if seen.registered_at.is_none() => {
            if let Ok(Some(node)) = client.node(name).await {
                seen.note(&node);
            }
        }
        _ => {}
    }
    if seen.registered_at.is_some() {
        return Ok(seen.registration());
    }
    Err(Failure::new(
        Code::NodeNotRegistered,
        format!("the Node {name} did not appear in the API within {wait:?}"),
    ))
}

/// The watch; false when this client may not watch Nodes (then nothing was seen).
async fn watch_node(client: &Kube, name: &str, deadline: Instant, seen: &mut Seen) -> bool {
    use crate::client::kube::objects::{Node, WatchEvent};
    let mut rewatch = crate::client::http::Rewatch::default();
    loop {
        let until = seen.until(deadline);
        let Some(left) = until.checked_duration_since(Instant::now()) else {
            return true;
        };
        let opened = Instant::now();
        let path = crate::client::kube::paths::node_watch(
            name,
            &seen.resource_version,
            left.as_secs().max(1),
        );
        let registered = tokio::sync::Notify::new();
        let watching = client.watch(&path, left, |e: &WatchEvent<Node>| match e.kind.as_str() {
            "ADDED" | "MODIFIED" => {
                if seen.registered_at.is_none() {
                    registered.notify_one();
                }
                seen.note(&e.object);
                seen.ready.then_some(true)
            }
            // Gone again (deleted meanwhile), or 410 Gone: watched afresh.
            "DELETED" | "ERROR" => Some(false),
            _ => None,
        });
        // Registered during this watch and not Ready: the grace ends this watch too (it was
        // opened to last to the whole deadline).
        let grace = async {
            registered.notified().await;
            tokio::time::sleep(READY_GRACE).await;
        };
        let watched = tokio::select! {
            watched = watching => watched,
            () = grace => Ok(None),
        };
        match watched {
            Ok(Some(true)) => return true,
            Ok(Some(false)) => seen.resource_version.clear(),
            Ok(None) => {}
            Err(e) if seen.registered_at.is_none() && matches!(e.status(), Some(401 | 403)) => {
                tracing::info!("watching the Node {name}: {e}; reading it instead");
                return false;
            }
            Err(e) if e.status() == Some(410) => seen.resource_version.clear(),
            Err(e) => tracing::info!("the watch on the Node {name} ended ({e}); watching again"),
        }
        // Closed early (the server, a proxy) or refused: opened again from the last
        // resourceVersion, paced so that a server closing every watch is not asked in a loop.
        let pause = rewatch.pause(opened.elapsed());
        tokio::time::sleep(
            pause.min(
                seen.until(deadline)
                    .saturating_duration_since(Instant::now()),
            ),
        )
        .await;
    }
}

/// Reads the Node until it is Ready (or the grace after its registration ends).
async fn poll_node(client: &Kube, name: &str, deadline: Instant, seen: &mut Seen) {
    let mut pause = Duration::from_millis(300);
    while Instant::now() < seen.until(deadline) {
        if let Ok(Some(node)) = client.node(name).await {
            seen.note(&node);
            if seen.ready {
                return;
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 3 / 2).min(Duration::from_secs(2));
    }
}

/// Annotates the Node with its CRI socket as `kubeadm join` does (`kubeadm upgrade node` reads
/// it), with the node's own credentials. Best effort: a failure is logged, the join stands.
async fn annotate_cri_socket(ctx: &Context<'_>, node: &Kube, endpoint: &str) {
    use crate::model::compat::{cri_socket_annotation_value, CRI_SOCKET_ANNOTATION};
    let value = cri_socket_annotation_value(endpoint, &ctx.cluster.config.version);
    let patch = serde_json::json!({"metadata": {"annotations": {CRI_SOCKET_ANNOTATION: value}}});
    let path = crate::client::kube::paths::node(&ctx.identity.node_name);
    if let Err(e) = node.merge_patch(&path, &patch).await {
        tracing::warn!(
            "could not annotate the Node with its CRI socket ({CRI_SOCKET_ANNOTATION}): {e}"
        );
    }
}
