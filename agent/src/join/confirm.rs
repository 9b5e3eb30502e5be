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
    let seen = wait_for_node(ctx).await?;
    if seen.registered
        && crate::model::compat::writes_cri_socket_annotation(&ctx.cluster.config.version)
    {
        annotate_cri_socket(ctx, cri_endpoint).await;
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

/// Polls the Node until it is registered, and then until it is Ready for up to 20 s more
/// (a CNI plugin may still be starting), within `--node-wait-timeout`.
async fn wait_for_node(ctx: &Context<'_>) -> Result<Registration, Failure> {
    let node_client = node_client(ctx);
    let client = node_client.as_ref().unwrap_or(&ctx.kube);
    let name = &ctx.identity.node_name;
    let wait = ctx.settings.timeouts.node_wait;
    let deadline = Instant::now() + wait;
    let mut registered_at: Option<Instant> = None;
    loop {
        let until =
            registered_at.map_or(deadline, |at| (at + Duration::from_secs(20)).min(deadline));
        if Instant::now() >= until {
            break;
        }
        if let Ok(Some(node)) = client.node(name).await {
            registered_at.get_or_insert_with(Instant::now);
            if node.is_ready() {
                return Ok(Registration {
                    registered: true,
                    ready: true,
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    if registered_at.is_some() {
        return Ok(Registration {
            registered: true,
            ready: false,
        });
    }
    Err(Failure::new(
        Code::NodeNotRegistered,
        format!("the Node {name} did not appear in the API within {wait:?}"),
    ))
}

/// Annotates the Node with its CRI socket as `kubeadm join` does (`kubeadm upgrade node` reads
/// it), with the node's own credentials. Best effort: a failure is logged, the join stands.
async fn annotate_cri_socket(ctx: &Context<'_>, endpoint: &str) {
    use crate::model::compat::{cri_socket_annotation_value, CRI_SOCKET_ANNOTATION};
    let Some(node) = node_client(ctx) else { return };
    let value = cri_socket_annotation_value(endpoint, &ctx.cluster.config.version);
    let patch = serde_json::json!({"metadata": {"annotations": {CRI_SOCKET_ANNOTATION: value}}});
    let path = crate::client::kube::paths::node(&ctx.identity.node_name);
    if let Err(e) = node.merge_patch(&path, &patch).await {
        tracing::warn!(
            "could not annotate the Node with its CRI socket ({CRI_SOCKET_ANNOTATION}): {e}"
        );
    }
}
