//! Alibaba Cloud ECS instance metadata (`http://100.100.100.200/latest/`).
//!
//! Security-hardened mode first: `PUT /latest/api/token` with
//! `X-aliyun-ecs-metadata-token-ttl-seconds`, then every GET carries
//! `X-aliyun-ecs-metadata-token`. When the PUT is not answered with a token (an older image or
//! a normal-mode instance), plain GETs are used. Items: `meta-data/instance-id`, `region-id`,
//! `zone-id`, `private-ipv4`, `hostname`, `instance/instance-type`.

use super::{client, get_text, ident, InstanceMetadata, MetadataError, MetadataLimits};

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
    let header = token.as_deref().map(|t| (TOKEN_HEADER, t));
    let get = |item: &'static str| {
        let http = http.clone();
        let url = format!("{base}/latest/{item}");
        async move { get_text(&http, &url, header).await }
    };
    let instance_id = ident(
        "aliyun",
        "instance-id",
        get("meta-data/instance-id").await.map_err(unavailable)?,
    )?;
    let region = ident(
        "aliyun",
        "region-id",
        get("meta-data/region-id").await.map_err(unavailable)?,
    )?;
    let zone = get("meta-data/zone-id")
        .await
        .map_err(unavailable)?
        .unwrap_or_default();
    let private_ipv4 = get("meta-data/private-ipv4")
        .await
        .map_err(unavailable)?
        .filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok());
    let hostname = get("meta-data/hostname").await.map_err(unavailable)?;
    let instance_type = get("meta-data/instance/instance-type")
        .await
        .map_err(unavailable)?;
    Ok(InstanceMetadata {
        provider: "aliyun",
        instance_id,
        region,
        zone,
        private_ipv4,
        hostname,
        instance_type,
    })
}
