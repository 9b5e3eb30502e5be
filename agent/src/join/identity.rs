//! Who this node is: its name (explicit, or by name mode), its IP, and its providerID.

use crate::error::{Code, Failure};
use crate::model::validate::{check_node_name, Endpoint};
use crate::sources::settings::{NodeNaming, Settings};
use crate::sources::values::NodeNameMode;
use serde::Serialize;
use std::net::{IpAddr, ToSocketAddrs, UdpSocket};

/// The node's identity.
#[derive(Clone, Debug, Serialize)]
pub struct Identity {
    /// The Node object's name.
    pub node_name: String,
    /// The machine's host name (lowercased).
    pub hostname: String,
    /// The node's IP address.
    pub node_ip: IpAddr,
    /// The other family's address on a dual-stack node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secondary_ip: Option<IpAddr>,
    /// providerID, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
}

/// The local address the kernel would use to reach `endpoint` (no packet is sent).
pub fn route_source(endpoint: &Endpoint) -> Option<IpAddr> {
    let addr = (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()
        .ok()?
        .next()?;
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = UdpSocket::bind(bind).ok()?;
    socket.connect(addr).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// The host name, lowercased.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn fail(message: String) -> Failure {
    Failure::new(Code::Identity, message)
}

/// Decides the node's identity from the settings and host facts.
pub fn resolve(
    settings: &Settings,
    endpoint: &Endpoint,
    hostname: &str,
) -> Result<Identity, Failure> {
    let node_ip = match settings.node_ips.first() {
        Some(ip) => *ip,
        None => route_source(endpoint).ok_or_else(|| {
            fail(format!(
                "cannot tell which local address reaches {endpoint}; pass --node-ip"
            ))
        })?,
    };
    let region = settings.region.as_deref();
    let node_name = match &settings.node_naming {
        NodeNaming::Explicit(n) => n.clone(),
        NodeNaming::Mode(NodeNameMode::Hostname) => hostname.to_owned(),
        NodeNaming::Mode(NodeNameMode::NodeIp) => {
            if node_ip.is_ipv6() {
                return Err(fail(format!(
                    "node name mode nodeip cannot use the IPv6 address {node_ip} in a node name; pass --node-name"
                )));
            }
            match region {
                Some(r) => format!("{r}.{node_ip}"),
                None => node_ip.to_string(),
            }
        }
        NodeNaming::Mode(NodeNameMode::InstanceId) => {
            let id = settings
                .instance_id
                .as_deref()
                .unwrap_or_default()
                .to_ascii_lowercase();
            match region {
                Some(r) => format!("{r}.{id}"),
                None => {
                    return Err(fail(
                        "node name mode instanceid needs the region: pass --region".into(),
                    ))
                }
            }
        }
    };
    check_node_name(&node_name).map_err(|e| {
        fail(format!(
            "{e}; pass a valid --node-name or choose another --node-name-mode"
        ))
    })?;
    let provider_id = settings.provider_id.clone().or_else(|| {
        match (region, settings.instance_id.as_deref()) {
            // The Alibaba Cloud format the cloud controller manager and the autoscaler read.
            (Some(r), Some(i)) => Some(format!("{r}.{i}")),
            _ => None,
        }
    });
    if settings.ess && provider_id.is_none() {
        return Err(Failure::new(
            Code::NoProviderId,
            "an autoscaled node (--ess true) needs a providerID from its first heartbeat, or the cluster autoscaler cannot map it to its scaling group: pass --provider-id, or --region and --instance-id",
        ));
    }
    Ok(Identity {
        node_name,
        hostname: hostname.to_owned(),
        node_ip,
        secondary_ip: settings.node_ips.get(1).copied(),
        provider_id,
    })
}

impl Identity {
    /// The kubelet's `--node-ip` value: the address, or the dual-stack pair.
    pub fn node_ip_flag(&self) -> String {
        match self.secondary_ip {
            Some(second) => format!("{},{second}", self.node_ip),
            None => self.node_ip.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_source_finds_loopback() {
        let e = Endpoint::parse("e", "127.0.0.1:6443").expect("endpoint");
        assert_eq!(route_source(&e), Some("127.0.0.1".parse().expect("ip")));
    }
}
