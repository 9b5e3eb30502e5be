//! The cluster's side, with the kubelet's own kubeconfig: the API server answers over TLS
//! trusting only the CA in kubelet.conf (which must be the CA pinned at join), and the Node is
//! registered and Ready. One `GET /version` and one `GET` of the Node, each within the
//! timeout, not retried.

use super::{Check, Joined, Node, Options, Status};
use crate::client::http::Limits;
use crate::client::kube::Kube;
use crate::model::kubeconfig::Kubeconfig;
use crate::model::paths;
use crate::trust::pin::{certificates_from_pem, CaPin};
use std::path::Path;

/// The cluster checks, in order.
pub async fn checks(node: &Node<'_>, options: &Options) -> Vec<Check> {
    let skip = |why: &str| vec![Check::skip("api-server", why), Check::skip("node", why)];
    if node.joined == Joined::NotJoined {
        return skip("not joined");
    }
    if !options.cluster {
        return skip("--no-cluster: the API server is not asked");
    }
    let kube = match client(node, options) {
        Ok(k) => k,
        Err(check) => return vec![check, Check::skip("node", "no usable kubelet.conf")],
    };
    let (server, kube) = kube;
    let reach = match kube.reachable(options.timeout).await {
        Ok(version) => Check::new(
            "api-server",
            Status::Ok,
            format!("{server} answers ({version}) with a certificate from the pinned CA"),
        ),
        Err(e) if e.is_tls() => {
            let c = Check::new(
                "api-server",
                Status::Fail,
                format!("{server}: {}", crate::error::chain(&e)),
            );
            return vec![c.fix("the API server's certificate is not from the cluster CA the node trusts: check the endpoint (an interception?), or the control plane's certificates"), Check::skip("node", "the API server is not trusted")];
        }
        Err(e) => {
            let c = Check::new(
                "api-server",
                Status::Fail,
                format!("{server}: {}", crate::error::chain(&e)),
            );
            return vec![
                c.fix("check routes, security groups and proxies to the API server (port 6443)"),
                Check::skip("node", "the API server does not answer"),
            ];
        }
    };
    vec![reach, registered(node, &kube).await]
}

/// A client as the kubelet: kubelet.conf's server and CA, the current client pair.
fn client(node: &Node<'_>, options: &Options) -> Result<(String, Kube), Check> {
    let fail = |m: String| {
        Check::new("api-server", Status::Fail, m)
            .fix("rerun the join to rewrite kubelet.conf, or reset and join again")
    };
    let root = &node.effects.root;
    let text = root
        .read(Path::new(paths::KUBELET_CONF))
        .ok()
        .flatten()
        .ok_or_else(|| fail(format!("{} is missing", paths::KUBELET_CONF)))?;
    let config = Kubeconfig::parse(&String::from_utf8_lossy(&text))
        .map_err(|e| fail(format!("{}: {e}", paths::KUBELET_CONF)))?;
    let info = config
        .current_cluster()
        .map_err(|e| fail(format!("{}: {e}", paths::KUBELET_CONF)))?;
    let cas = certificates_from_pem(&info.ca_pem)
        .map_err(|e| fail(format!("{}: the CA: {e}", paths::KUBELET_CONF)))?;
    if let Some(pinned) = node.state.as_ref().and_then(|s| s.ca_pin.clone()) {
        let pins: Vec<String> = cas
            .iter()
            .filter_map(|c| CaPin::of_certificate_der(c).ok())
            .map(|p| p.to_string())
            .collect();
        if !pins.contains(&pinned) {
            return Err(Check::new(
                "api-server",
                Status::Fail,
                format!(
                    "the CA in {} is not the one pinned at join ({pinned})",
                    paths::KUBELET_CONF
                ),
            )
            .fix("something replaced kubelet.conf: check it, then rerun the join"));
        }
    }
    let pair = super::host::current_pair(root)
        .ok_or_else(|| fail(format!("{} is missing", paths::CURRENT)))?;
    let limits = Limits {
        connect_timeout: options.timeout,
        request_timeout: options.timeout,
        ..Limits::default()
    };
    let kube = Kube::with_certificate(&info.server, &cas, &pair, limits)
        .map_err(|e| fail(format!("the kubelet's client pair: {e}")))?;
    Ok((info.server, kube))
}

async fn registered(node: &Node<'_>, kube: &Kube) -> Check {
    let Some(name) = node.state.as_ref().map(|s| s.node_name.clone()) else {
        return Check::skip("node", "join recorded no node name");
    };
    match kube.node(&name).await {
        Ok(Some(n)) if n.is_ready() => Check::new("node", Status::Ok, format!("Node {name} is registered and Ready")),
        Ok(Some(n)) => {
            let why = n
                .status
                .conditions
                .iter()
                .find(|c| c.kind == "Ready")
                .map_or("no Ready condition yet".to_owned(), |c| format!("Ready={}: {} {}", c.status, c.reason, c.message));
            Check::new("node", Status::Fail, format!("Node {name} is registered but not Ready ({})", why.trim())).fix("journalctl -u kubelet; kubectl describe node (CNI not installed yet is the usual cause)")
        }
        Ok(None) => Check::new("node", Status::Fail, format!("Node {name} is not registered")).fix("journalctl -u kubelet (certificates, CRI socket, cgroup driver); if it was deleted, restart the kubelet to register again"),
        Err(e) => Check::new("node", Status::Fail, format!("reading Node {name}: {}", crate::error::chain(&e))).fix("check the node's RBAC (system:nodes) and the NodeRestriction admission"),
    }
}
