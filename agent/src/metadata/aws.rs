//! AWS EC2 instance metadata, IMDSv2 (`http://169.254.169.254/latest/`): a session token from
//! `PUT /latest/api/token` (`X-aws-ec2-metadata-token-ttl-seconds`) on every GET
//! (`X-aws-ec2-metadata-token`). Items: `meta-data/instance-id`, `placement/region`,
//! `placement/availability-zone`, `local-ipv4`, `local-hostname`, `instance-type`.

use super::{client, InstanceMetadata, MetadataError, MetadataLimits, Session};

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
    let s = Session {
        provider: "aws",
        http,
        base,
        header: Some(("X-aws-ec2-metadata-token", token)),
    };
    Ok(InstanceMetadata {
        provider: "aws",
        instance_id: s.ident("instance-id", "meta-data/instance-id").await?,
        region: s
            .ident("placement/region", "meta-data/placement/region")
            .await?,
        zone: s
            .ident(
                "placement/availability-zone",
                "meta-data/placement/availability-zone",
            )
            .await?,
        private_ipv4: s.ipv4("meta-data/local-ipv4").await?,
        hostname: s.item("meta-data/local-hostname").await?,
        instance_type: s.item("meta-data/instance-type").await?,
    })
}
