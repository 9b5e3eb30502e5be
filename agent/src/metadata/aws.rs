//! AWS EC2 instance metadata, IMDSv2 (`http://169.254.169.254/latest/`): a session token from
//! `PUT /latest/api/token` (`X-aws-ec2-metadata-token-ttl-seconds`) on every GET
//! (`X-aws-ec2-metadata-token`). Items: `meta-data/instance-id`, `placement/region`,
//! `placement/availability-zone`, `local-ipv4`, `local-hostname`, `instance-type`.

use super::{client, get_text, ident, InstanceMetadata, MetadataError, MetadataLimits};

/// The metadata service's address.
pub const ENDPOINT: &str = "http://169.254.169.254";

/// Reads the instance's metadata.
pub async fn fetch(
    endpoint: &str,
    limits: MetadataLimits,
) -> Result<InstanceMetadata, MetadataError> {
    let base = endpoint.trim_end_matches('/');
    let unavailable = |detail: String| MetadataError::Unavailable {
        provider: "aws",
        endpoint: base.to_owned(),
        detail,
    };
    let http = client(limits).map_err(unavailable)?;
    let resp = http
        .put(format!("{base}/latest/api/token"))
        .header("X-aws-ec2-metadata-token-ttl-seconds", "300")
        .send()
        .await
        .map_err(|e| unavailable(e.without_url().to_string()))?;
    if !resp.status().is_success() {
        return Err(unavailable(format!(
            "IMDSv2 token request answered HTTP {}",
            resp.status().as_u16()
        )));
    }
    let token = resp
        .text()
        .await
        .map_err(|e| unavailable(e.without_url().to_string()))?;
    let token = token.trim().to_owned();
    if token.is_empty() || token.len() > 1024 {
        return Err(unavailable("IMDSv2 gave no usable token".into()));
    }
    let header = Some(("X-aws-ec2-metadata-token", token.as_str()));
    let get = |item: &'static str| {
        let http = http.clone();
        let url = format!("{base}/latest/meta-data/{item}");
        async move { get_text(&http, &url, header).await }
    };
    let instance_id = ident(
        "aws",
        "instance-id",
        get("instance-id").await.map_err(unavailable)?,
    )?;
    let region = ident(
        "aws",
        "placement/region",
        get("placement/region").await.map_err(unavailable)?,
    )?;
    let zone = ident(
        "aws",
        "placement/availability-zone",
        get("placement/availability-zone")
            .await
            .map_err(unavailable)?,
    )?;
    let private_ipv4 = get("local-ipv4")
        .await
        .map_err(unavailable)?
        .filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok());
    let hostname = get("local-hostname").await.map_err(unavailable)?;
    let instance_type = get("instance-type").await.map_err(unavailable)?;
    Ok(InstanceMetadata {
        provider: "aws",
        instance_id,
        region,
        zone,
        private_ipv4,
        hostname,
        instance_type,
    })
}
