//! Alibaba Cloud ECS instance metadata (`http://100.100.100.200/latest/`).
//!
//! Security-hardened mode first: `PUT /latest/api/token` with
//! `X-aliyun-ecs-metadata-token-ttl-seconds`, then every GET carries
//! `X-aliyun-ecs-metadata-token`. When the PUT is not answered with a token (an older image or
//! a normal-mode instance), plain GETs are used. Items: `meta-data/instance-id`, `region-id`,
//! `zone-id`, `private-ipv4`, `hostname`, `instance/instance-type`.

use super::{client, InstanceMetadata, MetadataError, MetadataLimits, Session};

/// The metadata service's address.
pub const ENDPOINT: &str = "http://100.100.100.200";
const TOKEN_HEADER: &str = "X-aliyun-ecs-metadata-token";
const TTL_HEADER: &str = "X-aliyun-ecs-metadata-token-ttl-seconds";

/// Reads the instance's metadata.
pub async fn fetch(
    endpoint: &str,
    limits: MetadataLimits,
) -> Result<InstanceMetadata, MetadataError> {
    let base = endpoint.trim_end_matches('/');
    let unavailable = |detail: String| MetadataError::Unavailable {
        provider: "aliyun",
        endpoint: base.to_owned(),
        detail,
    };
    let http = client(limits).map_err(unavailable)?;
    // Hardened mode: a session token, kept only in memory.
    let token = match http
        .put(format!("{base}/latest/api/token"))
        .header(TTL_HEADER, "300")
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => r
            .text()
            .await
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty() && t.len() < 1024),
        Ok(_) => None,
        Err(e) if e.is_connect() || e.is_timeout() => {
            return Err(unavailable(e.without_url().to_string()))
        }
        Err(_) => None,
    };
    if token.is_none() {
        tracing::info!("Alibaba Cloud metadata: no session token (normal mode)");
    }
    let s = Session {
        provider: "aliyun",
        http,
        base,
        header: token.map(|t| (TOKEN_HEADER, t)),
    };
    Ok(InstanceMetadata {
        provider: "aliyun",
        instance_id: s.ident("instance-id", "meta-data/instance-id").await?,
        region: s.ident("region-id", "meta-data/region-id").await?,
        zone: s.item("meta-data/zone-id").await?.unwrap_or_default(),
        private_ipv4: s.ipv4("meta-data/private-ipv4").await?,
        hostname: s.item("meta-data/hostname").await?,
        instance_type: s.item("meta-data/instance/instance-type").await?,
    })
}
